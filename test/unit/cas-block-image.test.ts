import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { verifiedRead } from '../../agent/restore-verify';
import { readDigest } from '../../proto/store/artefact-digest';
import { chunkKey, chunkListSha256, decodeIndex, encodeIndex, indexKey, INDEX_FORMAT_BLOCKS, type ArtefactIndex } from '../../proto/store/cas-index';
import { CasStore, type PackOptions } from '../../proto/store/cas-store';
import { LocalObjects } from '../../proto/store/local-objects';
import { GENERATION_KEY } from '../../proto/store/gc-generation';
import { packKey } from '../../proto/store/pack-format';
import type { ObjectBackend } from '../../proto/store/object-backend';
import { CHUNK_LIST_ATTRIBUTE, DIGEST_ATTRIBUTE, DIGEST_CHUNK_LIST, type BlockImageOptions, type BlockImageWriter, type StoredArtefact } from '../../proto/store/snapshot-store';
import { KiB, MIN, rig } from '../support/cas-rig';
import { VnsnapError } from '../../proto/core/errors';
import { failureOf as failure, MemoryObjects, pseudoRandomBytes as bytes } from '../support/memory-objects';

const BS = 4 * KiB;
const BLOCKS = 64;
const OPTS: BlockImageOptions = { size: BLOCKS * BS, blockSize: BS };
const PACK: PackOptions = { targetBytes: 64 * KiB, rangeBytes: 32 * KiB, aheadBytes: 64 * KiB, compress: 'none' };

/** A guest's RAM: random blocks, every fourth one zero (stored once). */
function ram(seed: number): Buffer {
  const b = bytes(BLOCKS * BS, seed);
  for (let i = 0; i < BLOCKS; i += 4) b.fill(0, i * BS, (i + 1) * BS);
  return b;
}

const block = (image: Buffer, i: number): Buffer => image.subarray(i * BS, (i + 1) * BS);

/** Write a full block image of `image` and `tail`. */
async function full(store: CasStore, p: string, image: Buffer, tail: Buffer): Promise<StoredArtefact> {
  const w = await store.createBlockImage(p, OPTS);
  for (let i = 0; i < BLOCKS; i++) await w.putBlock(i, block(image, i));
  await w.setTail(tail);
  return w.commit();
}

async function indexOf(backend: ObjectBackend, p: string): Promise<ArtefactIndex> {
  return decodeIndex(await backend.get(indexKey(p)), p);
}

const resultOf = (idx: ArtefactIndex, storedBytes: number): StoredArtefact => {
  const list = chunkListSha256(idx.chunks);
  return { path: idx.path, size: idx.size, sha256: list, storedBytes, attributes: { [CHUNK_LIST_ATTRIBUTE]: list, [DIGEST_ATTRIBUTE]: DIGEST_CHUNK_LIST } };
};

async function readAll(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of src) parts.push(b);
  return Buffer.concat(parts);
}

/** The scenario every backend must pass: a full image, then an incremental one from it. */
function fullThenIncremental(label: string, open: () => { store: CasStore; backend: ObjectBackend & { gets?: number }; cleanup: () => void }): void {
  it(`${label}: an incremental image is its base with the blocks put replaced, then its tail; only the new blocks are stored, no unchanged block is read`, async () => {
    const { store, backend, cleanup } = open();
    try {
      const base = ram(1);
      const a = await full(store, 'snapshots/s1/vm.mem', base, bytes(10 * KiB, 2));
      const idx1 = await indexOf(backend, a.path);
      // 48 distinct random blocks, one zero block, the tail in 3 pieces (4 + 4 + 2 KiB).
      assert.deepEqual(a, resultOf(idx1, 48 * BS + BS + 10 * KiB));
      assert.equal(JSON.parse((await backend.get(indexKey(a.path))).toString()).format, INDEX_FORMAT_BLOCKS);
      assert.deepEqual(await store.get(a.path), Buffer.concat([base, bytes(10 * KiB, 2)]));

      const changed = bytes(3 * BS, 3);
      const tail = bytes(9 * KiB, 4);
      const gets = backend.gets;
      const w = await store.createBlockImage('snapshots/s2/vm.mem', { ...OPTS, base: a.path });
      await Promise.all([w.putBlock(5, block(changed, 0)), w.putBlock(63, block(changed, 1)), w.putBlock(8, base.subarray(0, BS))]);
      await w.setTail(tail);
      const b = await w.commit();
      // A packed store's session start reads the sweep generation (gc-generation.ts), nothing else.
      const generation = (await backend.head(GENERATION_KEY)) !== null ? 1 : 0;
      if (gets !== undefined) assert.equal((backend.gets ?? 0) - gets, 1 + generation, 'the base index is the one object read, besides the sweep generation');
      const idx2 = await indexOf(backend, b.path);
      // Block 8 was already zero in the base: named again, not stored; the tail's three pieces are new.
      assert.deepEqual(b, resultOf(idx2, 2 * BS + 9 * KiB));
      const want = Buffer.from(base);
      block(changed, 0).copy(want, 5 * BS);
      block(changed, 1).copy(want, 63 * BS);
      assert.deepEqual(await store.get(b.path), Buffer.concat([want, tail]));
      assert.deepEqual(idx2.chunks.slice(0, BLOCKS).filter((c, i) => c.sha256 !== idx1.chunks[i]?.sha256).length, 2);
      assert.deepEqual(await store.verifyAll('snapshots/'), [
        { path: a.path, ok: true, bytes: a.size },
        { path: b.path, ok: true, bytes: b.size },
      ]);
      assert.equal(await store.verify(b), null);
    } finally {
      cleanup();
    }
  });
}

describe('CasStore block images', () => {
  fullThenIncremental('chunk objects over memory', () => {
    const backend = new MemoryObjects();
    return { store: new CasStore(backend, { concurrency: 3 }), backend, cleanup: () => undefined };
  });
  fullThenIncremental('packs over memory', () => {
    const backend = new MemoryObjects();
    return { store: new CasStore(backend, { pack: PACK }), backend, cleanup: () => undefined };
  });
  fullThenIncremental('packs over a local directory (deferred syncs)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-blockimg-'));
    const backend = new LocalObjects(dir);
    return { store: new CasStore(backend, { pack: PACK }), backend, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
  });

  it('compresses new blocks as configured: storedBytes counts the bytes stored', async () => {
    const backend = new MemoryObjects();
    const store = new CasStore(backend, { pack: { ...PACK, compress: 'deflate' } });
    const image = Buffer.alloc(BLOCKS * BS);
    for (let i = 0; i < BLOCKS; i++) image.fill(i + 1, i * BS, (i + 1) * BS);
    const a = await full(store, 'p/a', image, Buffer.alloc(0));
    const idx = await indexOf(backend, 'p/a');
    assert.ok(idx.chunks.every((c) => c.codec === 'deflate'));
    assert.ok((a.storedBytes ?? 0) < BLOCKS * 100, `${a.storedBytes} bytes stored for 64 one-byte-pattern blocks`);
    assert.deepEqual(await store.get('p/a'), image);
  });

  it('a block put twice: the later wins, awaited or not', async () => {
    const store = new CasStore(new MemoryObjects(), { pack: PACK });
    const image = ram(5);
    const w = await store.createBlockImage('p/a', OPTS);
    for (let i = 0; i < BLOCKS; i++) void w.putBlock(i, block(image, i));
    const later = bytes(BS, 6);
    void w.putBlock(7, bytes(BS, 7));
    void w.putBlock(7, later);
    await w.commit();
    const want = Buffer.from(image);
    later.copy(want, 7 * BS);
    assert.deepEqual(await store.get('p/a'), want);
  });

  it('without a base, a block never put fails the commit with ERR_FAILED_PRECONDITION naming it; nothing is left at the path and the writer lock is gone', async () => {
    const backend = new MemoryObjects();
    const store = new CasStore(backend, { pack: PACK });
    const w = await store.createBlockImage('p/a', OPTS);
    for (let i = 0; i < BLOCKS; i++) if (i !== 9 && i !== 20) await w.putBlock(i, bytes(BS, i + 1));
    assert.equal(await failure(w.commit()), 'ERR_FAILED_PRECONDITION: block image p/a not committed: block 9 was never put and there is no base to name it');
    assert.equal(await store.stat('p/a'), null);
    assert.deepEqual(backend.keys().filter((k) => k.startsWith('locks/w-') || k.startsWith('artefacts/')), []);
    assert.equal(await failure(w.putBlock(9, bytes(BS, 1))), 'ERR_STATE: artefact p/a is already aborted');
  });

  it('refuses bad options, blocks and tails with typed errors; a base that is absent or is not a block image of that shape', async () => {
    const backend = new MemoryObjects();
    const store = new CasStore(backend, { pack: PACK });
    assert.equal(await failure(store.createBlockImage('p/a', { size: BLOCKS * BS, blockSize: 3000 })), 'ERR_INVALID_ARGUMENT: block image p/a: block size 3000 is not a power of two from 4096 to 1048576');
    assert.equal(await failure(store.createBlockImage('p/a', { size: 2 << 20, blockSize: 2 << 20 })), 'ERR_INVALID_ARGUMENT: block image p/a: block size 2097152 is not a power of two from 4096 to 1048576');
    assert.equal(await failure(store.createBlockImage('p/a', { size: BS + 1, blockSize: BS })), 'ERR_INVALID_ARGUMENT: block image p/a: size 4097 is not a positive multiple of its block size 4096');
    assert.equal(await failure(store.createBlockImage('p/a', { size: 0, blockSize: BS })), 'ERR_INVALID_ARGUMENT: block image p/a: size 0 is not a positive multiple of its block size 4096');
    assert.equal(await failure(store.createBlockImage('p/a', { ...OPTS, base: 'p/none' })), 'ERR_NOT_FOUND: base p/none of block image p/a is not in the store');
    await store.put('p/plain', bytes(OPTS.size, 1));
    assert.equal(await failure(store.createBlockImage('p/a', { ...OPTS, base: 'p/plain' })), 'ERR_FAILED_PRECONDITION: base p/plain of block image p/a is not a block image');
    await full(store, 'p/base', ram(1), Buffer.alloc(0));
    assert.equal(await failure(store.createBlockImage('p/a', { size: 2 * OPTS.size, blockSize: BS, base: 'p/base' })), 'ERR_FAILED_PRECONDITION: base p/base of block image p/a has 64 blocks of 4096 bytes, not 128 of 4096');
    assert.equal(await failure(store.createBlockImage('p/a', { size: OPTS.size, blockSize: 2 * BS, base: 'p/base' })), 'ERR_FAILED_PRECONDITION: base p/base of block image p/a has 64 blocks of 4096 bytes, not 32 of 8192');
    assert.deepEqual(backend.keys().filter((k) => k.startsWith('locks/w-')), [], 'a refused writer leaves its session');

    const w = await store.createBlockImage('p/a', { ...OPTS, base: 'p/base' });
    assert.equal(await failure(w.putBlock(64, bytes(BS, 1))), 'ERR_INVALID_ARGUMENT: block image p/a: block 64 is outside 0..63');
    assert.equal(await failure(w.putBlock(-1, bytes(BS, 1))), 'ERR_INVALID_ARGUMENT: block image p/a: block -1 is outside 0..63');
    assert.equal(await failure(w.putBlock(1.5, bytes(BS, 1))), 'ERR_INVALID_ARGUMENT: block image p/a: block 1.5 is outside 0..63');
    assert.equal(await failure(w.putBlock(3, bytes(BS - 1, 1))), 'ERR_INVALID_ARGUMENT: block image p/a: block 3 is 4095 bytes, not 4096');
    await w.setTail(bytes(100, 1));
    assert.equal(await failure(w.setTail(bytes(100, 1))), 'ERR_STATE: block image p/a: its tail is already set');
    // The refused calls changed nothing: the base's blocks and the tail.
    assert.deepEqual(await store.get((await w.commit()).path), Buffer.concat([ram(1), bytes(100, 1)]));
    assert.equal(await failure(w.commit()), 'ERR_STATE: artefact p/a is already committed');
    await w.abort(); // a no-op after commit
    assert.notEqual(await store.stat('p/a'), null);
  });

  it('named puts (the SHA-256 computed by the caller) write the image byte for byte as hashing puts do, index included; a name that is no SHA-256 is refused', async () => {
    const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
    const write = async (named: boolean): Promise<{ backend: MemoryObjects; store: CasStore }> => {
      const backend = new MemoryObjects();
      const store = new CasStore(backend, { pack: PACK });
      const put = (w: BlockImageWriter, i: number, d: Buffer): Promise<void> => (named ? w.putNamedBlock(i, d, sha(d)) : w.putBlock(i, d));
      const base = ram(1);
      const w1 = await store.createBlockImage('s1/vm.mem', OPTS);
      await Promise.all(Array.from({ length: BLOCKS }, (_, i) => put(w1, i, block(base, i))));
      await w1.setTail(bytes(5 * KiB, 2));
      await w1.commit();
      const changed = bytes(4 * BS, 3);
      const w2 = await store.createBlockImage('s2/vm.mem', { ...OPTS, base: 's1/vm.mem' });
      // Block 9 twice (the later wins), block 12 made zero (already stored: only named).
      await Promise.all([put(w2, 9, block(changed, 0)), put(w2, 40, block(changed, 1)), put(w2, 9, block(changed, 2)), put(w2, 12, Buffer.alloc(BS))]);
      await w2.setTail(bytes(3 * KiB, 4));
      await w2.commit();
      return { backend, store };
    };
    const hashed = await write(false);
    const named = await write(true);
    for (const p of ['s1/vm.mem', 's2/vm.mem']) {
      assert.ok((await named.backend.get(indexKey(p))).equals(await hashed.backend.get(indexKey(p))), `${p}: the same index`);
      assert.deepEqual(await named.store.get(p), await hashed.store.get(p));
    }
    assert.deepEqual(named.backend.keys(), hashed.backend.keys(), 'the same objects');

    const w = await named.store.createBlockImage('p/a', { ...OPTS, base: 's2/vm.mem' });
    const d = bytes(BS, 5);
    for (const bad of [sha(d).toUpperCase(), sha(d).slice(1), `${sha(d)}0`, '', `${sha(d).slice(0, 63)}g`]) {
      assert.equal(await failure(w.putNamedBlock(1, d, bad)), `ERR_INVALID_ARGUMENT: block image p/a: block 1's name ${JSON.stringify(bad)} is not a SHA-256 in lower-case hex`);
    }
    assert.equal(await failure(w.putNamedBlock(64, d, sha(d))), 'ERR_INVALID_ARGUMENT: block image p/a: block 64 is outside 0..63');
    assert.equal(await failure(w.putNamedBlock(2, d.subarray(1), sha(d))), 'ERR_INVALID_ARGUMENT: block image p/a: block 2 is 4095 bytes, not 4096');
    await w.abort();
    assert.equal(await failure(w.putNamedBlock(1, d, sha(d))), 'ERR_STATE: artefact p/a is already aborted');
  });

  it('a full store fails the writer with ERR_STORE_FULL naming the image: no index, the session left', async () => {
    const backend = new MemoryObjects(100 * KiB);
    const store = new CasStore(backend, { pack: PACK });
    const w = await store.createBlockImage('p/a', OPTS);
    const puts = Array.from({ length: BLOCKS }, (_, i) => w.putBlock(i, bytes(BS, i + 1)).then(() => 'ok', (e: { code?: string }) => e.code));
    assert.match(await failure(w.commit()), /^ERR_STORE_FULL: store is full while writing p\/a; no index was written/);
    assert.ok((await Promise.all(puts)).includes('ERR_STORE_FULL'));
    assert.equal(await store.stat('p/a'), null);
    assert.deepEqual(backend.keys().filter((k) => k.startsWith('locks/w-') || k.startsWith('artefacts/')), []);
  });

  it('an aborted writer writes no index and leaves its session', async () => {
    const backend = new MemoryObjects();
    const store = new CasStore(backend, { pack: PACK });
    const w = await store.createBlockImage('p/a', OPTS);
    await w.putBlock(0, bytes(BS, 1));
    await w.abort();
    await w.abort();
    assert.equal(await store.stat('p/a'), null);
    assert.deepEqual(backend.keys().filter((k) => k.startsWith('locks/w-') || k.startsWith('artefacts/')), []);
  });

  describe('tampering', () => {
    const PATH = 'snapshots/s1/vm.mem';
    async function scene(): Promise<{ backend: MemoryObjects; store: CasStore; a: StoredArtefact; other: StoredArtefact }> {
      const backend = new MemoryObjects();
      const store = new CasStore(backend, { concurrency: 2 });
      const a = await full(store, PATH, ram(1), bytes(5 * KiB, 2));
      const other = await full(store, 'snapshots/s0/vm.mem', ram(3), bytes(5 * KiB, 2));
      return { backend, store, a, other };
    }
    const problemOf = async (src: AsyncIterable<Buffer>): Promise<string> => failure(readAll(src));

    it('a changed chunk is ERR_CHECKSUM on read, get and verify, naming the artefact and the chunk', async () => {
      const { backend, store, a } = await scene();
      const idx = await indexOf(backend, PATH);
      const victim = idx.chunks[1] as { sha256: string };
      backend.corrupt(chunkKey(victim.sha256));
      const problem = await failure(store.get(PATH));
      assert.match(problem, new RegExp(`^ERR_CHECKSUM: artefact ${PATH}: chunk 2 of 66 \\(${victim.sha256}\\) is corrupt`));
      assert.equal(await problemOf(store.read(PATH, { chunkList: a.attributes?.[CHUNK_LIST_ATTRIBUTE] as string })), problem);
      assert.equal(await store.verify(a), problem.replace(/^ERR_CHECKSUM: artefact /, ''));
      assert.match(await failure(readDigest(store, a)), /^ERR_CHECKSUM: /);
    });

    it('an index whose chunk list was changed, its digest kept, is ERR_CHECKSUM before any chunk is read', async () => {
      const { backend, store, a } = await scene();
      const idx = await indexOf(backend, PATH);
      const forged = { ...idx, chunks: [idx.chunks[1], idx.chunks[0], ...idx.chunks.slice(2)] as ArtefactIndex['chunks'] };
      await backend.put(indexKey(PATH), encodeIndex(forged));
      const want = `ERR_CHECKSUM: artefact ${PATH}: its index lists chunks whose chunk list SHA-256 is ${chunkListSha256(forged.chunks)}, its digest says ${a.sha256}: the index was changed`;
      const gets = backend.gets;
      assert.equal(await failure(store.get(PATH)), want);
      assert.equal(backend.gets - gets, 1, 'only the index was read');
      assert.equal(await store.verify(a), want.replace(/^ERR_CHECKSUM: artefact /, ''));
    });

    it("an index replaced by a consistent one listing other chunks: caught by the manifest's digest and chunk list", async () => {
      const { store, a, other } = await scene();
      await store.link('snapshots/s0/vm.mem', PATH); // another whole, consistent block image under its name
      assert.equal(await store.verify(a), `${PATH}: SHA-256 ${other.sha256}, expected ${a.sha256}`);
      const list = a.attributes?.[CHUNK_LIST_ATTRIBUTE] as string;
      assert.match(await problemOf(store.read(PATH, { chunkList: list })), /^ERR_CHECKSUM: artefact snapshots\/s1\/vm.mem: its index lists other chunks than when it was written/);
      assert.match(await failure(readDigest(store, a)), /^ERR_CHECKSUM: artefact snapshots\/s1\/vm.mem: its index lists other chunks/);
      // A restore without the chunk list: the store's claim is compared with the manifest's digest before a byte is passed on.
      const restore = { path: PATH, size: a.size, sha256: a.sha256, attributes: { [DIGEST_ATTRIBUTE]: DIGEST_CHUNK_LIST } };
      assert.match(await problemOf(verifiedRead(store.read(PATH), restore)), /^ERR_CHECKSUM: snapshots\/s1\/vm.mem: SHA-256 [0-9a-f]{64}, [0-9a-f]{64} expected$/);
      // The digest readDigest gives without a recorded chunk list is the other image's: a verifier's comparison fails.
      assert.notEqual((await readDigest(store, { path: PATH, attributes: { [DIGEST_ATTRIBUTE]: DIGEST_CHUNK_LIST } })).sha256, a.sha256);
    });

    it('a restore or a verifier checks a right block image without hashing its bytes, and refuses a read no store checked', async () => {
      const { store, a } = await scene();
      const image = Buffer.concat([ram(1), bytes(5 * KiB, 2)]);
      assert.deepEqual(await readAll(verifiedRead(store.read(PATH), a)), image);
      assert.deepEqual(await readDigest(store, a), { size: a.size, sha256: a.sha256 });
      async function* unchecked(): AsyncGenerator<Buffer> {
        yield image;
      }
      const want = `ERR_FAILED_PRECONDITION: artefact ${PATH}: its digest is its chunk list's SHA-256 (a block image), which only the content-addressed store holding it can check, and this read was not checked by one`;
      assert.equal(await problemOf(verifiedRead(unchecked(), a)), want);
      assert.equal(await failure(readDigest({ read: () => unchecked() }, a)), want);
    });
  });

  it('link keeps a block image: readable and verified after the original is deleted, its attributes say so', async () => {
    const backend = new MemoryObjects();
    const store = new CasStore(backend, { pack: PACK });
    const a = await full(store, 'snapshots/s1/vm.mem', ram(1), bytes(3 * KiB, 2));
    const l = await store.link(a.path, 'agent/vm1/base.mem');
    assert.deepEqual(l, { ...a, path: 'agent/vm1/base.mem', storedBytes: 0 });
    await store.delete(a.path);
    assert.deepEqual(await store.get(l.path), Buffer.concat([ram(1), bytes(3 * KiB, 2)]));
    assert.equal(await store.verify(l), null);
    // The link is a base like the original.
    const w = await store.createBlockImage('snapshots/s2/vm.mem', { ...OPTS, base: l.path });
    await w.putBlock(0, bytes(BS, 9));
    const b = await w.commit();
    assert.deepEqual((await store.get(b.path)).subarray(BS), ram(1).subarray(BS));
  });

  it('alsoAt: the commit makes the image visible under a second path too (replacing what is there, its own base included); a bad path is refused at creation', async () => {
    const backend = new MemoryObjects();
    const store = new CasStore(backend, { pack: PACK });
    const a = await full(store, 'snapshots/s1/vm.mem', ram(1), bytes(3 * KiB, 2));
    await store.link(a.path, 'bases/vm.mem');
    const w = await store.createBlockImage('snapshots/s2/vm.mem', { ...OPTS, base: 'bases/vm.mem', alsoAt: 'bases/vm.mem' });
    await w.putBlock(0, bytes(BS, 9));
    const b = await w.commit();
    await store.delete(a.path);
    await store.delete(b.path);
    assert.deepEqual(await store.get('bases/vm.mem'), Buffer.concat([bytes(BS, 9), ram(1).subarray(BS)])); // no tail set: none
    assert.equal(await store.verify({ ...b, path: 'bases/vm.mem', storedBytes: 0 }), null);
    const idx = await indexOf(backend, 'bases/vm.mem');
    assert.deepEqual([idx.path, chunkListSha256(idx.chunks)], ['bases/vm.mem', b.sha256]);
    assert.equal(await failure(store.createBlockImage('snapshots/s3/vm.mem', { ...OPTS, alsoAt: '../x' })), 'ERR_INVALID_ARGUMENT: bad artefact path "../x": no "." or ".." segments');
    assert.deepEqual(backend.keys().filter((k) => k.startsWith('locks/w-')), [], 'a refused writer holds no session');
  });

  it('alsoAt: when the second index cannot be put, the commit fails and the first index is deleted again', async () => {
    class RefusingAt extends MemoryObjects {
      override async put(key: string, data: Uint8Array): Promise<void> {
        if (key === indexKey('bases/vm.mem')) throw new VnsnapError('ERR_UNAVAILABLE', `put ${key} refused`);
        return super.put(key, data);
      }
    }
    const backend = new RefusingAt();
    const store = new CasStore(backend, { pack: PACK });
    const w = await store.createBlockImage('snapshots/s1/vm.mem', { ...OPTS, alsoAt: 'bases/vm.mem' });
    for (let i = 0; i < BLOCKS; i++) await w.putBlock(i, block(ram(1), i));
    assert.equal(await failure(w.commit()), `ERR_UNAVAILABLE: store ${backend.describe} failed while committing snapshots/s1/vm.mem: put ${indexKey('bases/vm.mem')} refused`);
    assert.equal(await store.stat('snapshots/s1/vm.mem'), null);
    assert.equal(await store.stat('bases/vm.mem'), null);
    assert.deepEqual(backend.keys().filter((k) => k.startsWith('locks/w-') || k.startsWith('artefacts/')), []);
  });

  it('rejects a format-4 index whose blocks are not of its block size (ERR_DATA_LOSS) and one without its digest', async () => {
    const backend = new MemoryObjects();
    const store = new CasStore(backend, { pack: PACK });
    await full(store, 'p/a', ram(1), bytes(3 * KiB, 2));
    const o = JSON.parse((await backend.get(indexKey('p/a'))).toString()) as { chunker: { blocks: number }; digest?: string };
    await backend.put(indexKey('p/b'), Buffer.from(JSON.stringify({ ...o, path: 'p/b', chunker: { ...o.chunker, blocks: 65 } })));
    assert.equal(await failure(store.get('p/b')), 'ERR_DATA_LOSS: artefact p/b: its index is damaged (block 64 is 3072 bytes, not 4096)');
    delete o.digest;
    await backend.put(indexKey('p/c'), Buffer.from(JSON.stringify({ ...o, path: 'p/c' })));
    assert.equal(await failure(store.get('p/c')), 'ERR_DATA_LOSS: artefact p/c: its index is damaged (digest undefined in a block image)');
  });

  describe('garbage collection', () => {
    it('keeps what a live block image needs once every other name of its base is gone, and frees what only the base named', async () => {
      const r = rig({ pack: PACK });
      const opts = { ...r.timing, graceMs: 0 };
      const base = ram(1);
      const a = await full(r.store, 'snapshots/s1/vm.mem', base, bytes(6 * KiB, 2));
      await r.store.link(a.path, 'agent/vm1/base.mem');
      const w = await r.store.createBlockImage('snapshots/s2/vm.mem', { ...OPTS, base: 'agent/vm1/base.mem' });
      for (let i = 1; i < BLOCKS; i += 2) await w.putBlock(i, bytes(BS, 100 + i));
      await w.setTail(bytes(6 * KiB, 3));
      const b = await w.commit();
      await r.store.delete(a.path);
      await r.store.delete('agent/vm1/base.mem');
      const before = r.objects.used;
      r.now += MIN;
      const res = await r.store.gc(opts);
      assert.ok(res.bytesFreed > 0 && r.objects.used < before, `freed ${res.bytesFreed} bytes`);
      const want = Buffer.from(base);
      for (let i = 1; i < BLOCKS; i += 2) bytes(BS, 100 + i).copy(want, i * BS);
      assert.deepEqual(await r.store.get(b.path), Buffer.concat([want, bytes(6 * KiB, 3)]));
      assert.equal(await r.store.verify(b), null);

      // The repack moved chunks b names; its index still names their old packs. An image from b
      // names them where they are now.
      const gone = (idx: ArtefactIndex): number => {
        const packs = new Set(r.objects.keys());
        return idx.chunks.filter((k) => !packs.has(packKey(k.pack as string))).length;
      };
      assert.ok(res.packsWritten > 0 && gone(await indexOf(r.objects, b.path)) > 0, 'the collection repacked chunks of b');
      const w3 = await r.store.createBlockImage('snapshots/s3/vm.mem', { ...OPTS, base: b.path });
      await w3.putBlock(0, bytes(BS, 50));
      const c = await w3.commit();
      assert.equal(gone(await indexOf(r.objects, c.path)), 0);
      bytes(BS, 50).copy(want, 0);
      assert.deepEqual(await r.store.get(c.path), want);
    });

    it("a writer's base chunks are not swept while it is open, though every name of the base is deleted: the sweep waits for its lock and reads its index", async () => {
      const r = rig({ pack: PACK });
      const base = ram(1);
      await full(r.store, 'agent/vm1/base.mem', base, Buffer.alloc(0));
      const w = await r.store.createBlockImage('snapshots/s2/vm.mem', { ...OPTS, base: 'agent/vm1/base.mem' });
      await w.putBlock(2, bytes(BS, 7));
      await r.store.delete('agent/vm1/base.mem');
      let committed: StoredArtefact | undefined;
      r.onSleep = async () => {
        committed ??= await w.commit(); // the sweep is waiting for this writer's lock
      };
      r.now += MIN;
      await r.store.gc({ ...r.timing, graceMs: 0 });
      assert.ok(committed, 'the sweep waited for the writer');
      const want = Buffer.from(base);
      bytes(BS, 7).copy(want, 2 * BS);
      assert.deepEqual(await r.store.get('snapshots/s2/vm.mem'), want);
      assert.ok(r.objects.keys().some((k) => k.startsWith('packs/')));
    });
  });
});
