/**
 * The native chunker (switch/native/cdc.c through proto/store/chunker.ts) cuts exactly where the
 * JavaScript reference does, byte for byte — the store's format: chunks cut by either engine
 * deduplicate against each other. Random data in random pieces, and the edges: pieces of 0 and 1
 * bytes, streams of zeros (every chunk cut at max), min = avg = max, cuts at the end of a piece,
 * the smallest and the default parameters.
 */
import { strict as assert } from 'node:assert';
import { Chunker, DEFAULT_CHUNKER, type ChunkerParams } from '../../proto/store/chunker';
import { storeNative } from '../../proto/store/store-native';
import { pseudoRandomBytes as bytes } from '../support/memory-objects';

const KiB = 1024;

/** The chunk sizes of `data` pushed in pieces of the given sizes (cycled), plus end(). */
function cut(c: Chunker, data: Uint8Array, pieces: readonly number[]): number[] {
  const out: number[] = [];
  let off = 0;
  for (let k = 0; off < data.length; k++) {
    const n = pieces[k % pieces.length] as number;
    for (const b of c.push(data.subarray(off, off + n))) out.push(b.length);
    off += n;
  }
  for (const b of c.end()) out.push(b.length);
  return out;
}

/** Both engines over the same stream: their sizes, checked equal, and that they add up. */
function same(p: ChunkerParams, data: Uint8Array, pieces: readonly number[] = [data.length]): number[] {
  const js = cut(new Chunker(p, 'js'), data, pieces);
  const native = new Chunker(p, 'native');
  assert.equal(native.engine, 'native');
  const n = cut(native, data, pieces);
  assert.deepEqual(n, js, `params ${p.min}/${p.avg}/${p.max}, pieces ${pieces.slice(0, 4).join(',')}`);
  assert.equal(
    n.reduce((a, b) => a + b, 0),
    data.length,
  );
  return n;
}

describe('Chunker: native and JavaScript engines', () => {
  it('the addon has the native chunker, and the default engine is it', () => {
    assert.ok(storeNative(), 'npm install builds it');
    assert.equal(new Chunker().engine, 'native');
    assert.equal(new Chunker(DEFAULT_CHUNKER, 'js').engine, 'js');
  });

  it('cut the same boundaries on random data, whole and in random pieces, for several parameter sets', () => {
    let seed = 7;
    const rnd = (m: number): number => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) % m;
    const sets: ChunkerParams[] = [DEFAULT_CHUNKER, { min: 1 * KiB, avg: 4 * KiB, max: 16 * KiB }, { min: 1, avg: 64, max: 100 }, { min: 2 * KiB, avg: 2 * KiB, max: 64 * KiB }, { min: 512, avg: 8 * KiB, max: 8 * KiB }];
    for (const [i, p] of sets.entries()) {
      const data = bytes(3 << 20, 100 + i);
      const whole = same(p, data);
      assert.ok(whole.length > 10, `${whole.length} chunks`);
      same(p, data, Array.from({ length: 40 }, () => 1 + rnd(200 * KiB)));
    }
  });

  it('cut the same at the edges: 0- and 1-byte pieces, zeros, min = avg = max, a cut at the end of a piece, tiny streams', () => {
    const p = { min: 1 * KiB, avg: 4 * KiB, max: 16 * KiB };
    const data = bytes(100 * KiB, 3);
    same(p, data, [1]);
    same(p, data, [0, 777, 0, 1]);
    assert.deepEqual(same(p, Buffer.alloc(50 * KiB)), [16 * KiB, 16 * KiB, 16 * KiB, 2 * KiB], 'zeros: cut at max');
    assert.deepEqual(same({ min: 4 * KiB, avg: 4 * KiB, max: 4 * KiB }, data), [...Array(25).fill(4 * KiB)]);
    const sizes = same(p, data);
    const first = sizes[0] as number;
    same(p, data, [first, 1]); // the first cut lands exactly at the end of the first piece
    same(p, data, [first - 1, 1, 5000]);
    assert.deepEqual(same(p, data.subarray(0, 10)), [10]);
    assert.deepEqual(same(p, data.subarray(0, 0)), []);
    assert.deepEqual(same(p, data.subarray(0, p.min)), [p.min]);
  });

  it('a native chunker is fresh again after end(): the next stream cuts as a new one', () => {
    const c = new Chunker(DEFAULT_CHUNKER, 'native');
    const a = bytes(300 * KiB, 5);
    c.push(a.subarray(0, 1000));
    c.end();
    assert.deepEqual(cut(c, a, [a.length]), cut(new Chunker(DEFAULT_CHUNKER, 'js'), a, [a.length]));
  });
});
