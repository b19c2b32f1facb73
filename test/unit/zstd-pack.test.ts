/**
 * The addon's zstdPack (switch/native/zstd.c) and the pack sealed through it (pack-format.ts
 * encodeAndSealPack): the same pack, id and table as compressing each chunk (zstdCompress and
 * chunk-codec.ts keepIfSmaller) and concatenating them — over random, compressible, constant and
 * tiny chunks, frames on both sides of the 1/16 rule and just inside it (where zstd given only the
 * kept size refuses a frame that fits), with and without room past the pack in the buffer, and
 * with the pack's SHA-256 left to JavaScript; its argument errors; and a local store whose packs
 * are written this way reading back checked.
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CasStore } from '../../proto/store/cas-store';
import { decodeChunks, ZSTD_LEVEL } from '../../proto/store/chunk-codec';
import { LocalObjects } from '../../proto/store/local-objects';
import { decodeTable, encodeAndSealPack, tableKey, type RawPackInput, type SealedPack } from '../../proto/store/pack-format';
import { storeNative, type StoreNative } from '../../proto/store/store-native';
import { pseudoRandomBytes } from '../support/memory-objects';

const KiB = 1024;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** The addon with zstdPack (the suite is skipped without it). */
const native = storeNative();
const pack = native?.zstdPack?.bind(native);

/** The same addon without zstdPack: the path of before (zstdCompress, then a copy). */
const withoutPack = (n: StoreNative): StoreNative => ({ zstdCompress: n.zstdCompress.bind(n), zstdDecompress: n.zstdDecompress.bind(n), cdcCuts: n.cdcCuts.bind(n) });

/** `n` bytes, the first `k` from 16 symbols, the rest uniformly random: zstd's frame grows smoothly with n - k. */
function mixed(n: number, k: number, seed: number): Buffer {
  const b = pseudoRandomBytes(n, seed);
  for (let i = 0; i < k; i++) b[i] = (b[i] as number) & 0x0f;
  return b;
}

const kept = (len: number): number => len - (len >> 4);

/**
 * Chunks of `len` bytes whose frames straddle the 1/16 rule: the k where the frame crosses
 * kept(len), found by bisection, and `spread` chunks either side of it.
 */
async function aroundThreshold(n: StoreNative, len: number, spread: number, seed: number): Promise<Buffer[]> {
  const frame = async (k: number): Promise<number> => ((await n.zstdCompress([mixed(len, k, seed)], ZSTD_LEVEL))[0] as Buffer).length;
  let lo = 0;
  let hi = len; // frame(lo) > kept, frame(hi) <= kept
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if ((await frame(mid)) <= kept(len)) hi = mid;
    else lo = mid;
  }
  const out: Buffer[] = [];
  for (let k = Math.max(0, hi - spread); k <= Math.min(len, hi + spread); k++) out.push(mixed(len, k, seed));
  return out;
}

const inputs = (chunks: Buffer[]): RawPackInput[] => chunks.map((data) => ({ sha256: sha(data), data }));

/** Both seals of `chunks` into buffers of `room` bytes past their total; asserts they are the same pack and returns it. */
async function bothWays(n: StoreNative, chunks: Buffer[], room: number, hashInC = true): Promise<SealedPack> {
  const total = chunks.reduce((s, c) => s + c.length, 0);
  let calls = 0;
  const direct: StoreNative = {
    ...withoutPack(n),
    zstdPack: async (cs, level, dest) => {
      calls++;
      const r = await (pack as NonNullable<StoreNative['zstdPack']>)(cs, level, dest);
      return hashInC ? r : { ...r, sha256: null };
    },
  };
  const a = await encodeAndSealPack(inputs(chunks), 'zstd', Buffer.alloc(total + room, 0xa5), direct);
  assert.equal(calls, 1, 'sealed through zstdPack');
  const b = await encodeAndSealPack(inputs(chunks), 'zstd', Buffer.alloc(total + room, 0x5a), withoutPack(n));
  assert.equal(a.id, b.id);
  assert.equal(a.id, sha(a.data), 'the id is the SHA-256 of the pack');
  assert.ok(a.data.equals(b.data), 'the same bytes');
  assert.deepEqual(a.table, b.table);
  return a;
}

(pack ? describe : describe.skip)('zstdPack: a pack compressed and hashed in place', () => {
  const n = native as StoreNative;

  it('random, compressible, constant and tiny chunks: the pack, id and table of zstdCompress and a copy, with and without room past the pack', async () => {
    const chunks = [
      pseudoRandomBytes(64 * KiB, 1),
      Buffer.from(pseudoRandomBytes(64 * KiB, 2).map((b) => b & 0x0f)),
      Buffer.alloc(64 * KiB, 7),
      ...[0, 1, 63, 64, 65, 100, 1000].map((len, i) => Buffer.from(pseudoRandomBytes(len, 10 + i).map((b) => b & 0x03))),
      pseudoRandomBytes(64, 20),
      Buffer.alloc(37 * KiB + 5, 0),
      Buffer.from(pseudoRandomBytes(64 * KiB, 3).map((b) => b & 0x0f)), // last, compressible: made in the scratch when there is no room past it
    ];
    for (const room of [0, 1 * KiB, 1 * 1024 * KiB]) {
      const p = await bothWays(n, chunks, room);
      const codecs = p.table.chunks.map((e) => e.codec);
      assert.deepEqual(codecs.slice(0, 3), [undefined, 'zstd', 'zstd']);
      assert.deepEqual(codecs.slice(3, 6), [undefined, undefined, undefined], 'chunks under 64 bytes stay plain');
      assert.equal(codecs.at(-1), 'zstd');
    }
  });

  it('frames on both sides of the 1/16 rule, and just inside it, at several chunk sizes: the same pack either way', async () => {
    let inside = 0;
    for (const [len, seed] of [
      [64 * KiB, 31],
      [16 * KiB + 3, 32],
      [4 * KiB, 33],
      [1 * KiB + 1, 34],
    ] as const) {
      const chunks = await aroundThreshold(n, len, 24, seed);
      const frames = await n.zstdCompress(chunks, ZSTD_LEVEL);
      // Frames of at most 8 bytes under the kept size are the ones zstd given only that size refuses.
      inside += frames.filter((f) => f.length <= kept(len) && f.length > kept(len) - 8).length;
      const p = await bothWays(n, chunks, 0);
      const codecs = new Set(p.table.chunks.map((e) => e.codec));
      assert.deepEqual([...codecs].sort(), ['zstd', undefined].sort(), `chunks of ${len} bytes kept both ways`);
      p.table.chunks.forEach((e, i) => {
        const f = frames[i] as Buffer;
        if (f.length <= kept(len)) assert.deepEqual([e.size, e.codec, e.raw], [f.length, 'zstd', len]);
        else assert.deepEqual([e.size, e.codec], [len, undefined], 'a plain chunk is stored at its own length');
      });
    }
    assert.ok(inside > 0, 'some frame lies within 8 bytes under the kept size');
  });

  it("the pack's SHA-256 left to JavaScript (a CPU without SHA extensions) gives the same id", async () => {
    await bothWays(n, [pseudoRandomBytes(64 * KiB, 40), Buffer.alloc(64 * KiB, 1), pseudoRandomBytes(10, 41)], 0, false);
  });

  it('an empty list: nothing written, the SHA-256 of nothing', async () => {
    const dest = Buffer.alloc(16, 0xee);
    const r = await n.zstdPack!([], ZSTD_LEVEL, dest);
    assert.deepEqual([...r.sizes], []);
    assert.equal(r.sha256 && r.sha256.toString('hex'), sha(Buffer.alloc(0)));
    assert.ok(dest.equals(Buffer.alloc(16, 0xee)));
  });

  it('argument errors throw at once with code ERR_INVALID_ARGUMENT', () => {
    const zp = n.zstdPack!.bind(n);
    const c = [Buffer.alloc(100, 1), Buffer.alloc(28, 2)];
    const fails = (f: () => unknown, type: typeof TypeError | typeof RangeError, message: RegExp): void =>
      assert.throws(f, (e: unknown) => e instanceof type && (e as { code?: string }).code === 'ERR_INVALID_ARGUMENT' && message.test((e as Error).message));
    fails(() => zp(c, ZSTD_LEVEL, Buffer.alloc(127)), RangeError, /^zstdPack: dest holds 127 bytes, the chunks 128$/);
    const shared = Buffer.alloc(4 * KiB);
    fails(() => zp([Buffer.alloc(10), shared.subarray(100, 200)], ZSTD_LEVEL, shared.subarray(150)), RangeError, /^zstdPack: chunks\[1\] overlaps dest$/);
    fails(() => zp(c, 1000, Buffer.alloc(128)), RangeError, /^zstdPack: level must be an integer in /);
    fails(() => zp(c, 1.5, Buffer.alloc(128)), RangeError, /^zstdPack: level must be an integer in /);
    fails(() => zp('x' as unknown as Buffer[], ZSTD_LEVEL, Buffer.alloc(128)), TypeError, /^zstdPack: chunks must be an array$/);
    fails(() => zp([Buffer.alloc(1), 'x' as unknown as Buffer], ZSTD_LEVEL, Buffer.alloc(128)), TypeError, /^zstdPack: chunks must be a Buffer$/);
    fails(() => zp(c, ZSTD_LEVEL, [] as unknown as Buffer), TypeError, /^zstdPack: dest must be a Buffer$/);
  });

  // A local directory defers its flushes: its writers seal their packs into reused buffers, through zstdPack here.
  it('a local store whose packs are sealed through it reads back checked, and its packs are what the path of before writes', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-zpack-'));
    try {
      const objects = new LocalObjects(dir);
      await objects.init();
      const opts = { chunker: { min: 8 * KiB, avg: 16 * KiB, max: 64 * KiB }, pack: { targetBytes: 256 * KiB, compress: 'zstd' as const } };
      const store = new CasStore(objects, opts);
      const data = Buffer.concat([Buffer.from(pseudoRandomBytes(600 * KiB, 50).map((b) => b & 0x1f)), pseudoRandomBytes(300 * KiB, 51), Buffer.alloc(100 * KiB, 3)]);
      const stored = await store.put('s1/vm.mem', data);
      assert.ok((stored.storedBytes as number) < data.length, 'some chunks compressed');
      assert.ok((await store.get('s1/vm.mem')).equals(data));
      assert.ok((await new CasStore(objects, opts).get('s1/vm.mem')).equals(data), 'and by another store');
      assert.deepEqual((await store.verifyAll('')).map((v) => v.ok), [true]);
      // Each pack file: named by its SHA-256, and what encodeChunks and a copy make of its chunks.
      const tables = await objects.list('packtabs/');
      assert.ok(tables.length >= 3);
      for (const k of await objects.list('packs/')) {
        const bytes = await objects.get(k);
        const id = path.basename(k);
        assert.equal(id, sha(bytes));
        const t = decodeTable(await objects.get(tableKey(id)), tableKey(id));
        const own = await decodeChunks(t.chunks.map((e) => ({ stored: bytes.subarray(e.offset, e.offset + e.size), codec: e.codec, size: e.raw ?? e.size, what: e.sha256 })), n);
        const before = await encodeAndSealPack(inputs(own), 'zstd', undefined, withoutPack(n));
        assert.equal(before.id, id);
        assert.deepEqual(before.table, t);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
