import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { countPages, imageVsUsed, pageBound } from '../bench/image-size';

describe('image size against the memory in use (test/bench/image-size.ts)', () => {
  it('pageBound: 4104 bytes per non-zero page (8-byte header + 4096), 9 per zero page (header + fill byte)', () => {
    assert.equal(pageBound({ zero: 0, nonZero: 1 }), 4104);
    assert.equal(pageBound({ zero: 1, nonZero: 0 }), 9);
    // 192 MiB all zero: 442 KiB; all in use: 192.4 MiB
    assert.equal(pageBound({ zero: 49152, nonZero: 0 }), 442368);
    assert.equal(pageBound({ zero: 0, nonZero: 49152 }), 201719808);
  });

  it('countPages: a page with one non-zero byte anywhere counts as non-zero; a trailing partial page is ignored', () => {
    const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vnim-unit-')), 'ram.bin');
    try {
      const b = Buffer.alloc(5 * 4096 + 100);
      b[4096 * 1 + 4095] = 1; // page 1, last byte
      b[4096 * 3] = 0x80; // page 3, first byte
      b[5 * 4096 + 5] = 7; // the partial tail
      fs.writeFileSync(f, b);
      assert.deepEqual(countPages(f), { zero: 3, nonZero: 2 });
    } finally {
      fs.rmSync(path.dirname(f), { recursive: true, force: true });
    }
  });

  it('imageVsUsed divides by MemTotal - MemFree', () => {
    assert.equal(imageVsUsed(110, { totalBytes: 300, freeBytes: 200, availableBytes: 250 }), 1.1);
  });
});
