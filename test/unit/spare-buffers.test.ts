import { strict as assert } from 'node:assert';
import { SpareBuffers } from '../../proto/store/spare-buffers';

describe('SpareBuffers', () => {
  it('hands out the smallest kept buffer that fits, else a new one of max(n, allocBytes)', () => {
    const s = new SpareBuffers(3);
    const a = s.take(100, 400);
    assert.equal(a.length, 400);
    const b = s.take(1000);
    assert.equal(b.length, 1000);
    s.give(b);
    s.give(a);
    assert.deepEqual(s.held, { buffers: 2, bytes: 1400 });
    assert.equal(s.take(300), a); // the smallest that fits
    assert.equal(s.take(300), b);
    assert.deepEqual(s.held, { buffers: 0, bytes: 0 });
    const c = s.take(2000);
    assert.notEqual(c, a);
    assert.notEqual(c, b);
    assert.equal(c.length, 2000);
  });

  it('keeps at most `keep` buffers, dropping the smallest for a larger one', () => {
    const s = new SpareBuffers(2);
    const [x, y, z, w] = [Buffer.alloc(10), Buffer.alloc(20), Buffer.alloc(30), Buffer.alloc(5)];
    s.give(x);
    s.give(y);
    s.give(z); // replaces x
    s.give(w); // smaller than both: not kept
    assert.deepEqual(s.held, { buffers: 2, bytes: 50 });
    assert.equal(s.take(1), y);
    assert.equal(s.take(1), z);
  });

  it('drops what it keeps once no take() came for idleMs', async () => {
    const s = new SpareBuffers(2, 20);
    s.give(Buffer.alloc(10));
    assert.deepEqual(s.held, { buffers: 1, bytes: 10 });
    await new Promise<void>((resolve) => {
      const t = setInterval(() => {
        if (s.held.buffers === 0) {
          clearInterval(t);
          resolve();
        }
      }, 5);
    });
    assert.deepEqual(s.held, { buffers: 0, bytes: 0 });
  });
});
