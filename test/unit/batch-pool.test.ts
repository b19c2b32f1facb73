/**
 * batch-pool.ts: slots made a slab at a time as they are first needed, up to the pool's size;
 * each slot out once; null when every slot is out; a slot given back is handed out again.
 */
import { strict as assert } from 'node:assert';
import { BatchPool, copyInto, type PoolSlot } from '../../proto/store/batch-pool';
import { nativeCopy } from '../../proto/store/store-native';
import { pseudoRandomBytes as bytes } from '../support/memory-objects';

describe('batch-pool: reused shared memory for stream batches', function () {
  it('makes slots a slab at a time up to its size, hands each out once, then null; a slot given back comes out again', function () {
    const pool = new BatchPool(1024, 5, 2);
    assert.equal(pool.made, 0, 'no memory before the first take');
    const out: PoolSlot[] = [];
    for (let i = 0; i < 5; i++) {
      const s = pool.take(1000);
      assert.ok(s);
      assert.equal(s.buf.length, 1000);
      assert.ok(s.buf.buffer instanceof SharedArrayBuffer);
      out.push(s);
      assert.equal(pool.made, Math.min(5, 2 * Math.ceil((i + 1) / 2)));
    }
    assert.deepEqual(out.map((s) => s.index).sort(), [0, 1, 2, 3, 4]);
    // Slots of one slab do not overlap: each keeps what was written into it.
    out.forEach((s, i) => s.buf.fill(i));
    out.forEach((s, i) => assert.ok(s.buf.every((b) => b === i), `slot ${s.index} overwritten`));
    assert.equal(pool.take(1), null, 'every slot is out');
    assert.equal(pool.take(1025), null, 'larger than a slot');
    assert.equal(pool.lent, 5);
    pool.give(out[3] as PoolSlot);
    assert.throws(() => pool.give(out[3] as PoolSlot), (e: Error & { code?: string }) => e.code === 'ERR_INTERNAL' && e.message === 'batch pool: slot 3 given back twice');
    assert.equal(pool.take(10)?.index, (out[3] as PoolSlot).index);
    assert.equal(pool.made, 5);
  });

  it('copyInto puts small and large pieces at their place in shared memory; the addon\'s copy refuses a piece that does not fit', function () {
    const slot = Buffer.from(new SharedArrayBuffer(64 * 1024)).fill(0xee);
    const want = Buffer.alloc(64 * 1024, 0xee);
    let at = 3;
    for (const [n, seed] of [[1, 1], [4095, 2], [4096, 3], [20_000, 4], [7, 5], [30_000, 6]] as const) {
      const piece = bytes(n, seed);
      copyInto(slot, at, piece);
      piece.copy(want, at);
      at += n;
    }
    assert.ok(slot.equals(want));
    const c = nativeCopy();
    if (!c) return; // no addon: set() copies
    assert.equal(c(slot, 10, Buffer.alloc(5)), 15);
    assert.throws(() => c(slot, slot.length - 4, Buffer.alloc(5)), /copyBytes: 5 bytes at 65532 do not fit in 65536/);
    assert.throws(() => c(slot, slot.length + 1, Buffer.alloc(0)), /copyBytes: at/);
  });
});
