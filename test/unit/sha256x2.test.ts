/**
 * switch/native/sha256x2.c (through proto/store/store-native.ts): the two SHA-256s of a stream
 * in one pass are SHA-256 byte for byte — at every length around the block size, with the
 * stream in any pieces and the chunk ends anywhere (none, several in one piece, at its edges,
 * empty chunks) — and a bad argument is refused before anything is hashed.
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { SHA256_CTX_BYTES, sha256Pair, type Sha256Pair } from '../../proto/store/store-native';
import { pseudoRandomBytes as bytes } from '../support/memory-objects';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

describe('sha256x2: the artefact\'s and its chunks\' SHA-256s in one pass', function () {
  let n: Sha256Pair;
  before(function () {
    const p = sha256Pair();
    if (!p) this.skip(); // no SHA extensions on this CPU, or an addon built without them
    n = p as Sha256Pair;
  });

  const ctx = (): Uint8Array => {
    const c = new Uint8Array(SHA256_CTX_BYTES);
    n.sha256Reset(c);
    return c;
  };
  const digest = (c: Uint8Array): string => {
    const out = Buffer.alloc(32);
    n.sha256Final(c, out);
    return out.toString('hex');
  };

  it('is SHA-256 at every length from 0 to 300 bytes, the whole and the open chunk alike', function () {
    const data = bytes(300, 1);
    for (let len = 0; len <= 300; len++) {
      const whole = ctx();
      const open = ctx();
      n.sha256Pair(data.subarray(0, len), new Uint32Array(0), 0, whole, open, Buffer.alloc(0));
      const want = sha(data.subarray(0, len));
      assert.equal(digest(whole), want, `whole, ${len} bytes`);
      assert.equal(digest(open), want, `open, ${len} bytes`);
    }
  });

  it('splits the stream at the ends given, across pieces: each chunk its SHA-256, the whole stream the artefact\'s', function () {
    const data = bytes(64 * 1024 + 77, 2);
    for (let seed = 0; seed < 200; seed++) {
      let s = seed * 2654435761 + 1;
      const rnd = (m: number): number => ((s = (s * 1103515245 + 12345) >>> 0) % m);
      // Chunk ends over the whole stream (some empty chunks: repeated ends), and pieces cut elsewhere.
      const cuts = [...new Set(Array.from({ length: rnd(40) }, () => rnd(data.length + 1)))].sort((a, b) => a - b);
      if (seed % 7 === 0) cuts.push(cuts[cuts.length - 1] ?? 0); // an empty chunk
      const pieces = [...new Set([0, ...Array.from({ length: rnd(10) }, () => rnd(data.length)), data.length])].sort((a, b) => a - b);
      const whole = ctx();
      const open = ctx();
      const names: string[] = [];
      for (let i = 0; i + 1 < pieces.length; i++) {
        const [from, to] = [pieces[i] as number, pieces[i + 1] as number];
        const ends = cuts.filter((c, k) => (c > from || (c === from && from === 0 && k === 0)) && c <= to).map((c) => c - from);
        const out = Buffer.alloc(32 * ends.length);
        n.sha256Pair(data.subarray(from, to), Uint32Array.from(ends), ends.length, whole, open, out);
        for (let k = 0; k < ends.length; k++) names.push(out.toString('hex', 32 * k, 32 * k + 32));
      }
      const placed = names.length;
      names.push(digest(open));
      const bounds = [0, ...cuts.slice(0, placed), data.length];
      const want = bounds.slice(1).map((e, k) => sha(data.subarray(bounds[k] as number, e)));
      assert.deepEqual(names, want, `seed ${seed}`);
      assert.equal(digest(whole), sha(data), `seed ${seed}`);
    }
  });

  it('refuses ends beyond the data or going back, a short context or a short out, hashing nothing', function () {
    const whole = ctx();
    const open = ctx();
    const before = Buffer.from(whole);
    const data = bytes(100, 3);
    assert.throws(() => n.sha256Pair(data, Uint32Array.from([101]), 1, whole, open, Buffer.alloc(32)), /RangeError|sha256Pair: end 101/);
    assert.throws(() => n.sha256Pair(data, Uint32Array.from([50, 40]), 2, whole, open, Buffer.alloc(64)), /sha256Pair: end 40/);
    assert.throws(() => n.sha256Pair(data, Uint32Array.from([50]), 1, whole, open, Buffer.alloc(31)), /sha256Pair: out holds 31 bytes, 32 needed/);
    assert.throws(() => n.sha256Pair(data, Uint32Array.from([50]), 1, new Uint8Array(8), open, Buffer.alloc(32)), /sha256Pair: whole holds 8 bytes/);
    assert.ok(Buffer.from(whole).equals(before), 'nothing hashed');
  });
});
