/**
 * Compressed chunks in packs (proto/store/chunk-codec.ts): what is written (codec per chunk in
 * the pack table and the index, new formats only when needed), that it reads back checked, that
 * stores written before compression still read beside it, that a corrupt compressed chunk is
 * refused naming the artefact, that garbage collection repacks compressed chunks as they are, and
 * that an unknown codec is refused — for DEFLATE and zstd (the native addon), and a store mixing both.
 */
import { strict as assert } from 'node:assert';
import { decodeIndex, encodeIndex, indexKey, INDEX_FORMAT, INDEX_FORMAT_2, type ArtefactIndex } from '../../proto/store/cas-index';
import { decodeChunk, defaultCodec, encodeChunk } from '../../proto/store/chunk-codec';
import { storeNative } from '../../proto/store/store-native';
import { decodeTable, encodeTable, packIdOf, packKey, tableKey, TABLE_FORMAT, TABLE_FORMAT_1, type PackTable } from '../../proto/store/pack-format';
import { planRuns } from '../../proto/store/pack-reader';
import { KiB, MIN, rig, type Rig } from '../support/cas-rig';
import { failureOf as failure, pseudoRandomBytes } from '../support/memory-objects';

const PACK = { targetBytes: 64 * KiB, rangeBytes: 32 * KiB, aheadBytes: 64 * KiB, compress: 'deflate' as const };

/** Bytes that deflate to about half: pseudo-random, four bits of each byte cleared. */
const compressible = (n: number, seed: number): Buffer => Buffer.from(pseudoRandomBytes(n, seed).map((b) => b & 0x0f));

const keysUnder = (r: Rig, prefix: string): string[] => r.objects.keys().filter((k) => k.startsWith(prefix));
const rawFormat = async (r: Rig, key: string): Promise<string> => (JSON.parse((await r.objects.get(key)).toString()) as { format: string }).format;

async function indexOf(r: Rig, path: string): Promise<ArtefactIndex> {
  return decodeIndex(await r.objects.get(indexKey(path)), path);
}

async function tableOf(r: Rig, id: string): Promise<PackTable> {
  return decodeTable(await r.objects.get(tableKey(id)), tableKey(id));
}

describe('CAS packs: compressed chunks', () => {
  for (const codec of ['deflate', 'zstd'] as const) {
  it(`stores compressible chunks with ${codec}, records the codec per chunk in table and index, and reads them back checked`, async () => {
    const r = rig({ pack: { ...PACK, compress: codec } });
    const data = compressible(300 * KiB, 1);
    const stored = await r.store.put('s1/a', data);
    const idx = await indexOf(r, 's1/a');
    assert.equal(await rawFormat(r, indexKey('s1/a')), INDEX_FORMAT);
    assert.ok(idx.chunks.every((c) => c.codec === codec && (c.stored as number) < c.size * 0.75), 'every chunk compressed to under 3/4');
    let packBytes = 0;
    for (const k of keysUnder(r, 'packtabs/')) {
      const id = packIdOf(k) as string;
      assert.equal(await rawFormat(r, k), TABLE_FORMAT);
      const t = await tableOf(r, id);
      assert.equal((await r.objects.get(packKey(id))).length, t.size);
      packBytes += t.size;
    }
    assert.equal(stored.storedBytes, packBytes, 'the bytes added are the compressed ones');
    assert.ok(packBytes < 0.75 * data.length, `${packBytes} stored for ${data.length}`);
    for (const c of idx.chunks) {
      const e = (await tableOf(r, c.pack as string)).chunks.find((x) => x.sha256 === c.sha256);
      assert.deepEqual(e, { sha256: c.sha256, offset: c.offset, size: c.stored, codec, raw: c.size });
    }
    const runs = planRuns(idx.chunks, PACK.rangeBytes);
    assert.ok(runs.every((run) => run.bytes === run.refs.reduce((n, c) => n + (c.stored as number), 0)), 'runs count stored bytes');
    const ranges = r.objects.ranges;
    assert.deepEqual(await r.store.get('s1/a'), data);
    assert.equal(r.objects.ranges - ranges, runs.length);
    assert.deepEqual(await r.another().get('s1/a'), data, 'and by another store');
    assert.deepEqual((await r.store.verifyAll('')).map((v) => v.ok), [true]);
    // The same bytes again through a new store: found in the map, named compressed, nothing added.
    assert.equal((await r.another().put('s2/a', data)).storedBytes, 0);
    assert.deepEqual((await indexOf(r, 's2/a')).chunks, idx.chunks);
  });
  }

  it("compress 'none' writes every chunk plain in the formats of before (index 2, table 1)", async () => {
    const r = rig({ pack: { ...PACK, compress: 'none' } });
    const data = compressible(200 * KiB, 2);
    assert.equal((await r.store.put('s1/a', data)).storedBytes, data.length);
    assert.equal(await rawFormat(r, indexKey('s1/a')), INDEX_FORMAT_2);
    for (const k of keysUnder(r, 'packtabs/')) assert.equal(await rawFormat(r, k), TABLE_FORMAT_1);
    assert.ok((await indexOf(r, 's1/a')).chunks.every((c) => c.codec === undefined && c.stored === undefined));
  });

  it('a store written before compression reads, links and dedups beside compressed packs, and GC keeps both readable', async () => {
    const r = rig({ pack: { ...PACK, compress: 'none' } });
    const old = compressible(200 * KiB, 3);
    await r.store.put('s1/a', old);
    const store = r.another(PACK);
    assert.deepEqual(await store.get('s1/a'), old);
    assert.equal((await store.put('s2/a', old)).storedBytes, 0, 'plain chunks already stored are named, not stored again');
    assert.equal(await rawFormat(r, indexKey('s2/a')), INDEX_FORMAT_2);
    const mixed = Buffer.concat([old.subarray(0, 100 * KiB), compressible(100 * KiB, 4)]);
    await store.put('s3/a', mixed);
    const idx = await indexOf(r, 's3/a');
    assert.ok(idx.chunks.some((c) => c.codec === undefined) && idx.chunks.some((c) => c.codec === 'deflate'), 'old plain chunks and new deflated ones in one index');
    await store.delete('s1/a');
    await store.delete('s2/a');
    r.now += 2 * MIN;
    await store.gc({ ...r.timing, graceMs: MIN, repackDeadFraction: 0.1, packTargetBytes: PACK.targetBytes });
    assert.deepEqual(await store.get('s3/a'), mixed);
    assert.deepEqual(await r.another(PACK).get('s3/a'), mixed);
  });

  it('garbage collection repacks compressed chunks as they are stored (codec kept) and they still read', async () => {
    const r = rig({ pack: { ...PACK, targetBytes: 1024 * KiB } });
    const data = compressible(200 * KiB, 5);
    await r.store.put('s1/a', data);
    const x = Buffer.concat([data.subarray(0, 120 * KiB), compressible(5 * KiB, 6)]);
    await r.store.put('s1/x', x);
    const before = new Set(keysUnder(r, 'packs/'));
    await r.store.delete('s1/a');
    r.now += 2 * MIN;
    const res = await r.store.gc({ ...r.timing, graceMs: MIN, repackDeadFraction: 0.3, packTargetBytes: 1024 * KiB });
    assert.equal(res.packsWritten, 1);
    const fresh = keysUnder(r, 'packs/').filter((k) => !before.has(k));
    const t = await tableOf(r, packIdOf(fresh[0] as string) as string);
    assert.ok(t.chunks.length > 0 && t.chunks.every((c) => c.codec === 'deflate' && (c.raw as number) > c.size));
    assert.deepEqual(await r.another().get('s1/x'), x, 'read through the tables: the index names the old pack');
  });

  const corrupt = { deflate: (): string => 'it does not inflate: ', zstd: (size: number): string => `it does not decompress to ${size} bytes: ` };
  for (const codec of ['deflate', 'zstd'] as const) {
  it(`a corrupt ${codec} chunk is ERR_CHECKSUM naming the artefact and the chunk, in get and verify`, async () => {
    const r = rig({ pack: { ...PACK, compress: codec } });
    await r.store.put('s1/a', compressible(100 * KiB, 7));
    const idx = await indexOf(r, 's1/a');
    const c = idx.chunks[0] as { pack: string; offset: number; stored: number; sha256: string; size: number };
    const why = corrupt[codec](c.size);
    const pack = await r.objects.get(packKey(c.pack));
    for (let k = 0; k < c.stored; k++) pack[c.offset + k] = 0xff; // not DEFLATE any more
    await r.objects.put(packKey(c.pack), pack);
    const got = await failure(r.store.get('s1/a'));
    assert.ok(got.startsWith(`ERR_CHECKSUM: artefact s1/a: chunk 1 of ${idx.chunks.length} (${c.sha256}) is corrupt (${why}`), got);
    const v = await r.store.verifyAll('s1/');
    assert.equal(v[0]?.ok, false);
    assert.ok(!v[0]?.ok && v[0]?.problem.startsWith(`s1/a: chunk 1 of ${idx.chunks.length} (${c.sha256}) is corrupt (${why}`), JSON.stringify(v[0]));
  });
  }

  it('decodeChunk refuses bytes that inflate to another size; encodeChunk keeps incompressible chunks plain', async () => {
    const z = await encodeChunk(compressible(8 * KiB, 8), 'deflate');
    assert.equal(z.codec, 'deflate');
    assert.equal(await failure(decodeChunk(z.data, 'deflate', 8 * KiB + 1, 'chunk X')), 'ERR_CHECKSUM: chunk X is corrupt (it inflates to 8192 bytes, not 8193)');
    assert.match(await failure(decodeChunk(z.data, 'deflate', 8 * KiB - 1, 'chunk X')), /^ERR_CHECKSUM: chunk X is corrupt \(it does not inflate: /);
    const plain = pseudoRandomBytes(8 * KiB, 9);
    assert.deepEqual(await encodeChunk(plain, 'deflate'), { data: plain });
    assert.deepEqual(await encodeChunk(compressible(8 * KiB, 8), undefined), { data: compressible(8 * KiB, 8) });
  });

  it('a store of DEFLATE chunks reads, dedups and collects beside new zstd chunks (one index mixes both)', async () => {
    const r = rig({ pack: PACK });
    const old = compressible(200 * KiB, 10);
    await r.store.put('s1/a', old);
    const store = r.another({ ...PACK, compress: 'zstd' });
    assert.deepEqual(await store.get('s1/a'), old);
    assert.equal((await store.put('s2/a', old)).storedBytes, 0, 'DEFLATE chunks already stored are named, not stored again');
    const mixed = Buffer.concat([old.subarray(0, 100 * KiB), compressible(100 * KiB, 11)]);
    await store.put('s3/a', mixed);
    const codecs = new Set((await indexOf(r, 's3/a')).chunks.map((c) => c.codec));
    assert.deepEqual([...codecs].sort(), ['deflate', 'zstd']);
    await store.delete('s1/a');
    await store.delete('s2/a');
    r.now += 2 * MIN;
    await store.gc({ ...r.timing, graceMs: MIN, repackDeadFraction: 0.1, packTargetBytes: PACK.targetBytes });
    assert.deepEqual(await r.another().get('s3/a'), mixed);
    assert.deepEqual((await store.verifyAll('s3/')).map((v) => v.ok), [true]);
  });

  it('zstd: the default codec where the addon has it; a frame of another size is ERR_CHECKSUM; without the addon ERR_UNSUPPORTED_VERSION', async () => {
    assert.ok(storeNative(), 'the addon has zstd (npm install)');
    assert.equal(defaultCodec(), 'zstd');
    assert.equal(defaultCodec(null), 'deflate');
    const data = compressible(8 * KiB, 12);
    const z = await encodeChunk(data, 'zstd');
    assert.equal(z.codec, 'zstd');
    assert.ok(z.data.length < data.length * 0.75);
    assert.deepEqual(await decodeChunk(z.data, 'zstd', 8 * KiB, 'chunk X'), data);
    assert.equal(await failure(decodeChunk(z.data, 'zstd', 8 * KiB + 1, 'chunk X')), 'ERR_CHECKSUM: chunk X is corrupt (it decompresses to 8192 bytes, not 8193)');
    assert.equal(await failure(decodeChunk(z.data, 'zstd', 8 * KiB - 1, 'chunk X')), 'ERR_CHECKSUM: chunk X is corrupt (it does not decompress to 8191 bytes: Destination buffer is too small)');
    assert.equal(await failure(decodeChunk(z.data.subarray(0, 20), 'zstd', 8 * KiB, 'chunk X')), 'ERR_CHECKSUM: chunk X is corrupt (it does not decompress to 8192 bytes: Src size is incorrect)');
    const plain = pseudoRandomBytes(8 * KiB, 13);
    assert.deepEqual(await encodeChunk(plain, 'zstd'), { data: plain });
    const noAddon = "is stored with zstd, and this vnsnap's native addon is not built or has no zstd (rebuild it with `npm install`)";
    assert.equal(await failure(decodeChunk(z.data, 'zstd', 8 * KiB, 'chunk X', null)), `ERR_UNSUPPORTED_VERSION: chunk X ${noAddon}`);
    assert.equal(await failure(encodeChunk(data, 'zstd', null)), `ERR_UNSUPPORTED_VERSION: a new chunk ${noAddon}`);
    assert.deepEqual(await decodeChunk(data, undefined, data.length, 'chunk X', null), data, 'plain chunks need no addon');
  });

  it('an index or a table naming a codec this vnsnap does not know is ERR_UNSUPPORTED_VERSION', async () => {
    const sha = 'a'.repeat(64);
    const pack = 'b'.repeat(64);
    const idx = JSON.parse(encodeIndex({ path: 'p/a', size: 10, sha256: sha, chunker: { algo: 'fastcdc-gear32', min: 1, avg: 2, max: 4 }, chunks: [{ sha256: sha, size: 10, pack, offset: 0, codec: 'deflate', stored: 5 }] }).toString()) as { chunks: unknown[][] };
    assert.deepEqual(idx.chunks[0], [sha, 10, 0, 0, 'deflate', 5]);
    (idx.chunks[0] as unknown[])[4] = 'lz4';
    assert.throws(() => decodeIndex(Buffer.from(JSON.stringify(idx)), 'p/a'), { code: 'ERR_UNSUPPORTED_VERSION', message: 'artefact p/a: chunk 1 is stored with codec "lz4", unknown to this vnsnap; upgrade it' });
    const t = JSON.parse(encodeTable({ pack, size: 5, chunks: [{ sha256: sha, offset: 0, size: 5, codec: 'deflate', raw: 10 }] }).toString()) as { chunks: unknown[][] };
    (t.chunks[0] as unknown[])[3] = 'lz4';
    assert.throws(() => decodeTable(Buffer.from(JSON.stringify(t)), tableKey(pack)), { code: 'ERR_UNSUPPORTED_VERSION', message: `pack table ${tableKey(pack)}: chunk 1 is stored with codec "lz4", unknown to this vnsnap; upgrade it` });
  });
});
