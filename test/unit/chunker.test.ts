import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { isVnsnapError } from '../../proto/core/errors';
import { Chunker, DEFAULT_CHUNKER, FixedChunker, GEAR, type ChunkSplitter } from '../../proto/store/chunker';
import { pseudoRandomBytes as bytes } from '../support/memory-objects';

const KiB = 1024;
const SMALL = { min: 1 * KiB, avg: 4 * KiB, max: 16 * KiB };

/** Every chunk of `data` pushed in pieces of the given sizes (cycled), plus end(). */
function chunkAll(s: ChunkSplitter, data: Uint8Array, pieces: readonly number[] = [data.length]): Buffer[] {
  const out: Buffer[] = [];
  let off = 0;
  for (let k = 0; off < data.length; k++) {
    const n = pieces[k % pieces.length] as number;
    out.push(...s.push(data.subarray(off, off + n)));
    off += n;
  }
  out.push(...s.end());
  return out;
}

const sizes = (cs: Buffer[]): number[] => cs.map((c) => c.length);
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

describe('Chunker (FastCDC)', () => {
  it('gives exactly the same chunks however the stream is split into pushes', () => {
    const data = bytes(300 * KiB, 7);
    const whole = chunkAll(new Chunker(SMALL), data);
    assert.ok(whole.length > 30, `expected many chunks, got ${whole.length}`);
    assert.deepEqual(Buffer.concat(whole), data);
    let seed = 99;
    const rnd = (): number => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) % 9000;
    const splits: number[][] = [[1], [7], [1023, 1], [4096], [SMALL.max], [SMALL.max + 1], Array.from({ length: 50 }, () => 1 + rnd())];
    for (const pieces of splits) {
      const cs = chunkAll(new Chunker(SMALL), data, pieces);
      assert.deepEqual(sizes(cs), sizes(whole), `pieces ${pieces.slice(0, 5).join(',')}…`);
      assert.deepEqual(Buffer.concat(cs), data);
    }
  });

  it('keeps every chunk within min and max except the last, and sizes bunch around avg', () => {
    const cs = chunkAll(new Chunker(SMALL), bytes(2 * 1024 * KiB, 3));
    for (const c of cs.slice(0, -1)) assert.ok(c.length >= SMALL.min && c.length <= SMALL.max, `chunk of ${c.length}`);
    const mean = (2 * 1024 * KiB) / cs.length;
    assert.ok(mean > 3 * KiB && mean < 7 * KiB, `mean ${mean}`);
    // A stream of one constant byte is cut at max (or at one fixed point): all chunks alike.
    const zeros = chunkAll(new Chunker(SMALL), Buffer.alloc(100 * KiB));
    assert.equal(new Set(zeros.slice(0, -1).map(sha)).size, 1);
  });

  it('re-finds the same chunks after bytes are inserted or removed before them', () => {
    const data = bytes(512 * KiB, 11);
    const base = new Set(chunkAll(new Chunker(SMALL), data).map(sha));
    for (const shifted of [Buffer.concat([bytes(123, 5), data]), data.subarray(777)]) {
      const cs = chunkAll(new Chunker(SMALL), shifted);
      const reused = cs.filter((c) => base.has(sha(c))).reduce((n, c) => n + c.length, 0);
      assert.ok(reused > shifted.length - 3 * SMALL.max, `only ${reused} of ${shifted.length} bytes re-used`);
    }
    // Fixed blocks re-use nothing once the layout shifts by a byte.
    const fixedBase = new Set(chunkAll(new FixedChunker(4 * KiB), data).map(sha));
    assert.equal(chunkAll(new FixedChunker(4 * KiB), data.subarray(1)).filter((c) => fixedBase.has(sha(c))).length, 0);
  });

  it('is stable: the gear table and the cut points of a known stream are part of the store format', () => {
    assert.deepEqual([GEAR[0], GEAR[1], GEAR[255]], [GEAR_PIN[0], GEAR_PIN[1], GEAR_PIN[2]]);
    assert.deepEqual(DEFAULT_CHUNKER, { min: 16 * KiB, avg: 64 * KiB, max: 256 * KiB });
    assert.deepEqual(sizes(chunkAll(new Chunker(SMALL), bytes(40 * KiB, 1))), CUTS_PIN);
  });

  it('returns fresh copies: reusing the pushed buffer does not change the chunks', () => {
    const buf = bytes(64 * KiB, 2);
    const copy = Buffer.from(buf);
    const c = new Chunker(SMALL);
    const got = c.push(buf);
    buf.fill(0);
    got.push(...c.end());
    assert.deepEqual(Buffer.concat(got), copy);
    assert.deepEqual(c.end(), [], 'end() again: nothing left');
    assert.deepEqual(chunkAll(new Chunker(SMALL), new Uint8Array(0)), []);
  });

  for (const engine of ['native', 'js'] as const) {
    it(`pushOwned (${engine}): the same chunks as push; those inside one pushed buffer are views of it at their place, the others fresh`, () => {
      const data = bytes(200 * KiB, 3);
      const pieces = [50 * KiB, 70 * KiB, 80 * KiB];
      const expected = chunkAll(new Chunker(SMALL, engine), data, pieces);
      const c = new Chunker(SMALL, engine);
      const got: { chunk: Buffer; view: number | undefined }[] = [];
      let off = 0;
      for (const n of pieces) {
        const buf = Buffer.from(data.subarray(off, off + n)); // owns its memory, handed over
        for (const chunk of c.pushOwned(buf)) got.push({ chunk, view: chunk.buffer === buf.buffer ? off + chunk.byteOffset - buf.byteOffset : undefined });
        off += n;
      }
      for (const chunk of c.end()) got.push({ chunk, view: undefined });
      assert.deepEqual(got.map((g) => sha(g.chunk)), expected.map(sha));
      // Where each chunk starts, and whether it lies inside one piece (then, but for the last, it is a view there).
      const bounds = [0, 50 * KiB, 120 * KiB, 200 * KiB];
      let at = 0;
      const want = expected.map((ch, i) => {
        const inside = bounds.some((b, k) => k < 3 && at >= b && at + ch.length <= (bounds[k + 1] as number));
        const v = inside && i < expected.length - 1 ? at : undefined;
        at += ch.length;
        return v;
      });
      assert.deepEqual(got.map((g) => g.view), want);
      assert.ok(want.filter((v) => v !== undefined).length >= expected.length - 4, 'most chunks are views');
    });
  }

  it('refuses bad parameters with ERR_INVALID_ARGUMENT', () => {
    const bad: [object, string][] = [
      [{ min: 0, avg: 64, max: 128 }, 'chunker sizes must be positive integers with min <= avg <= max, got 0/64/128'],
      [{ min: 128, avg: 64, max: 256 }, 'chunker sizes must be positive integers with min <= avg <= max, got 128/64/256'],
      [{ min: 16, avg: 100, max: 256 }, 'chunker average 100 must be a power of two from 64 to 64 MiB'],
    ];
    for (const [p, message] of bad) {
      assert.throws(() => new Chunker(p as typeof SMALL), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && (e as Error).message === message);
    }
    assert.throws(() => new FixedChunker(0), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'));
  });
});

describe('FixedChunker', () => {
  it('cuts every `size` bytes however the stream is pushed; the last block may be short', () => {
    const data = bytes(10_000, 4);
    for (const pieces of [[10_000], [1], [999], [4096, 1]]) {
      const cs = chunkAll(new FixedChunker(4096), data, pieces);
      assert.deepEqual(sizes(cs), [4096, 4096, 1808]);
      assert.deepEqual(Buffer.concat(cs), data);
    }
  });
});

const GEAR_PIN = [-1885233159, 710655878, -1645308894];
const CUTS_PIN = [4596, 5878, 5042, 4938, 7541, 6746, 5105, 1114];
