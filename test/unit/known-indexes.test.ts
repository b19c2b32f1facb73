import { strict as assert } from 'node:assert';
import { decodeIndex, encodeIndex, encodeIndexAs, indexKey, INDEX_FORMAT, INDEX_FORMAT_1, INDEX_FORMAT_2, INDEX_FORMAT_BLOCKS, type ArtefactIndex, type ChunkRef } from '../../proto/store/cas-index';
import { CasStore, type PackOptions } from '../../proto/store/cas-store';
import { KnownIndexes } from '../../proto/store/known-indexes';
import type { BlockImageOptions } from '../../proto/store/snapshot-store';
import { MemoryObjects, pseudoRandomBytes as bytes } from '../support/memory-objects';

const KiB = 1024;
const BS = 4 * KiB;
const BLOCKS = 32;
const OPTS: BlockImageOptions = { size: BLOCKS * BS, blockSize: BS };
const PACK: PackOptions = { targetBytes: 64 * KiB, rangeBytes: 32 * KiB, aheadBytes: 64 * KiB, compress: 'zstd' };

const sha = (n: number): string => n.toString(16).padStart(64, '0');
const pack = (n: number): string => `a${n}`.padEnd(64, 'b');

function blockIndex(path: string, chunks: ChunkRef[]): ArtefactIndex {
  return { path, size: chunks.reduce((n, c) => n + c.size, 0), sha256: sha(999), chunker: { algo: 'blocks', blockSize: BS, blocks: chunks.length - 1 }, chunks };
}

/** Refs as a packed, compressing store's sink makes them: plain, compressed, in two packs; the last is the tail. */
const refs = (): ChunkRef[] => [
  { sha256: sha(1), size: BS, pack: pack(1), offset: 0 },
  { sha256: sha(2), size: BS, pack: pack(1), offset: BS, codec: 'zstd', stored: 100 },
  { sha256: sha(3), size: BS, pack: pack(2), offset: 0 },
  { sha256: sha(4), size: 10, pack: pack(2), offset: BS, codec: 'zstd', stored: 7 },
];

/** A KnownIndexes that counts its hits. */
class Watched extends KnownIndexes {
  hits = 0;
  override lookup(path: string, bytes: Buffer): ArtefactIndex | undefined {
    const got = super.lookup(path, bytes);
    if (got) this.hits++;
    return got;
  }
}

describe('KnownIndexes', () => {
  it('gives an index only for the very bytes it was remembered with', () => {
    const k = new KnownIndexes();
    const idx = blockIndex('b/vm.mem', refs());
    const bytes = encodeIndex(idx);
    k.remember('b/vm.mem', bytes, idx);
    assert.equal(k.lookup('b/vm.mem', Buffer.from(bytes)), idx);
    const changed = Buffer.from(bytes);
    changed.writeUInt8(changed.readUInt8(changed.length - 3) ^ 1, changed.length - 3);
    assert.equal(k.lookup('b/vm.mem', changed), undefined);
    assert.equal(k.lookup('c/vm.mem', bytes), undefined);
    k.forget('b/vm.mem');
    assert.equal(k.lookup('b/vm.mem', bytes), undefined);
  });

  it('keeps at most maxEntries chunk entries, dropping the least recently used index first; a larger index is not kept', () => {
    const k = new KnownIndexes(10);
    const idx = (p: string): ArtefactIndex => blockIndex(p, refs()); // 4 entries each
    const put = (p: string): void => k.remember(p, encodeIndex(idx(p)), idx(p));
    put('a');
    put('b');
    assert.ok(k.lookup('a', encodeIndex(idx('a'))), 'a is now the most recent');
    put('c'); // 12 > 10: b goes
    assert.deepEqual(k.paths, ['a', 'c']);
    put('a'); // replaces a: 8 entries
    assert.deepEqual(k.paths, ['c', 'a']);
    const big = blockIndex('big', [...refs(), ...refs(), ...refs()]);
    k.remember('big', encodeIndex(big), big);
    assert.deepEqual(k.paths, ['c', 'a']);
    k.remember('a', encodeIndex(big), big); // a too large index in place of a: a is dropped
    assert.deepEqual(k.paths, ['c']);
  });
});

describe('encodeIndexAs', () => {
  const indexes: [string, ArtefactIndex][] = [
    [INDEX_FORMAT_1, { path: 'p/a', size: 20, sha256: sha(9), chunker: { algo: 'fastcdc-gear32', min: 1, avg: 2, max: 4 }, chunks: [{ sha256: sha(1), size: 10 }, { sha256: sha(2), size: 10 }] }],
    [INDEX_FORMAT_2, { path: 'p/a', size: 20, sha256: sha(9), chunker: { algo: 'fastcdc-gear32', min: 1, avg: 2, max: 4 }, chunks: [{ sha256: sha(1), size: 10, pack: pack(1), offset: 0 }, { sha256: sha(2), size: 10 }] }],
    [INDEX_FORMAT, { path: 'p/a', size: 20, sha256: sha(9), chunker: { algo: 'fastcdc-gear32', min: 1, avg: 2, max: 4 }, chunks: [{ sha256: sha(1), size: 10, pack: pack(1), offset: 0, codec: 'zstd', stored: 3 }, { sha256: sha(2), size: 10 }] }],
    [INDEX_FORMAT_BLOCKS, blockIndex('p/a', refs())],
  ];
  for (const [format, idx] of indexes) {
    it(`${format}: each buffer is encodeIndex's under that path, byte for byte`, () => {
      const got = encodeIndexAs(idx, ['p/a', 'bases/"quoted" é']);
      assert.deepEqual(got, [encodeIndex(idx), encodeIndex({ ...idx, path: 'bases/"quoted" é' })]);
      assert.equal(JSON.parse(got[1]?.toString() ?? '').format, format);
    });
  }

  it('decodeIndex gives back the block index encodeIndex was given, ref for ref (what KnownIndexes relies on)', () => {
    const idx = blockIndex('p/a', refs());
    assert.deepEqual(decodeIndex(encodeIndex(idx), 'p/a'), idx);
  });
});

describe('CasStore: a base index kept decoded', () => {
  /** Four snapshots of a VM, each over the base the previous one put (alsoAt), a few blocks changed each time. */
  async function chain(store: CasStore): Promise<Buffer[]> {
    const out: Buffer[] = [];
    for (let s = 1; s <= 4; s++) {
      const w = await store.createBlockImage(`snapshots/s${s}/vm.mem`, { ...OPTS, alsoAt: 'bases/vm.mem', ...(s > 1 ? { base: 'bases/vm.mem' } : {}) });
      const blocks = s === 1 ? [...Array(BLOCKS).keys()] : [s, s + 7, s * 5];
      for (const i of blocks) await w.putBlock(i, bytes(BS, 100 * s + i));
      await w.setTail(bytes(3 * KiB, s));
      const a = await w.commit();
      out.push(await store.get(a.path));
    }
    return out;
  }

  it('writes what a store that decodes every base writes, byte for byte, and decodes the base only once', async () => {
    const kept = new Watched();
    const a = new MemoryObjects();
    const b = new MemoryObjects();
    const images = await chain(new CasStore(a, { pack: PACK, knownIndexes: kept }));
    const again = await chain(new CasStore(b, { pack: PACK, knownIndexes: new Watched(0) }));
    assert.deepEqual(images, again);
    for (let s = 1; s <= 4; s++) assert.deepEqual(await a.get(indexKey(`snapshots/s${s}/vm.mem`)), await b.get(indexKey(`snapshots/s${s}/vm.mem`)));
    assert.equal(kept.hits, 3, 'snapshots 2, 3 and 4 found their base kept');
    const want = bytes(BLOCKS * BS, 0);
    for (let i = 0; i < BLOCKS; i++) bytes(BS, 100 + i).copy(want, i * BS);
    for (const s of [2, 3, 4]) for (const i of [s, s + 7, s * 5]) bytes(BS, 100 * s + i).copy(want, i * BS);
    assert.deepEqual(images[3], Buffer.concat([want, bytes(3 * KiB, 4)]));
  });

  it('a base another writer replaced (other bytes) is decoded again: the image names the replacement', async () => {
    const kept = new Watched();
    const backend = new MemoryObjects();
    const store = new CasStore(backend, { pack: PACK, knownIndexes: kept });
    const other = new CasStore(backend, { pack: PACK });
    const w1 = await store.createBlockImage('snapshots/s1/vm.mem', { ...OPTS, alsoAt: 'bases/vm.mem' });
    for (let i = 0; i < BLOCKS; i++) await w1.putBlock(i, bytes(BS, i));
    await w1.commit();
    const w2 = await other.createBlockImage('snapshots/x/vm.mem', { ...OPTS, alsoAt: 'bases/vm.mem' });
    for (let i = 0; i < BLOCKS; i++) await w2.putBlock(i, bytes(BS, 500 + i));
    await w2.commit();
    const w3 = await store.createBlockImage('snapshots/s2/vm.mem', { ...OPTS, base: 'bases/vm.mem' });
    await w3.putBlock(0, bytes(BS, 7));
    const c = await w3.commit();
    assert.equal(kept.hits, 0);
    const want = Buffer.concat([bytes(BS, 7), ...[...Array(BLOCKS - 1).keys()].map((i) => bytes(BS, 501 + i))]);
    assert.deepEqual(await store.get(c.path), want);
  });

  it('a deleted base is not found, kept or not (ERR_NOT_FOUND)', async () => {
    const store = new CasStore(new MemoryObjects(), { pack: PACK });
    const w1 = await store.createBlockImage('snapshots/s1/vm.mem', { ...OPTS, alsoAt: 'bases/vm.mem' });
    for (let i = 0; i < BLOCKS; i++) await w1.putBlock(i, bytes(BS, i));
    await w1.commit();
    await store.delete('bases/vm.mem');
    await assert.rejects(store.createBlockImage('snapshots/s2/vm.mem', { ...OPTS, base: 'bases/vm.mem' }), { code: 'ERR_NOT_FOUND', message: 'base bases/vm.mem of block image snapshots/s2/vm.mem is not in the store' });
  });
});
