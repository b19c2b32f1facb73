import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import type { ErrorCode } from '../../proto/core/errors';
import { chunkKey, chunkListSha256, decodeIndex, indexKey } from '../../proto/store/cas-index';
import { CasStore } from '../../proto/store/cas-store';
import { CHUNK_LIST_ATTRIBUTE } from '../../proto/store/snapshot-store';
import { snapshotStoreCompliance } from '../support/compliance/store';
import { failureOf as failure, MemoryObjects, pseudoRandomBytes as bytes } from '../support/memory-objects';

const KiB = 1024;
const SMALL = { min: 1 * KiB, avg: 4 * KiB, max: 16 * KiB };
const sha = (b: Uint8Array | string): string => createHash('sha256').update(b).digest('hex');

const chunkKeys = (m: MemoryObjects): string[] => m.keys().filter((k) => k.startsWith('chunks/'));

snapshotStoreCompliance('CasStore over memory objects', {
  dedup: true,
  blockImages: true,
  open: async () => new CasStore(new MemoryObjects(), { chunker: SMALL }),
  close: async () => undefined,
});

snapshotStoreCompliance('CasStore in packs over memory objects', {
  dedup: true,
  blockImages: true,
  open: async () => new CasStore(new MemoryObjects(), { chunker: SMALL, pack: { targetBytes: 32 * KiB, rangeBytes: 16 * KiB, aheadBytes: 48 * KiB } }),
  close: async () => undefined,
});

describe('CasStore', () => {
  let objects: MemoryObjects;
  let store: CasStore;
  beforeEach(() => {
    objects = new MemoryObjects();
    store = new CasStore(objects, { chunker: SMALL, concurrency: 3 });
  });

  it('lays an artefact out as chunks named by SHA-256 and an index listing them in order', async () => {
    const data = bytes(100 * KiB, 1);
    const a = await store.put('snapshots/s1/vm1.mem', data);
    const idx = decodeIndex(await objects.get('artefacts/snapshots/s1/vm1.mem.idx'), 'snapshots/s1/vm1.mem');
    assert.deepEqual(a, { path: 'snapshots/s1/vm1.mem', size: data.length, sha256: sha(data), storedBytes: data.length, attributes: { [CHUNK_LIST_ATTRIBUTE]: chunkListSha256(idx.chunks) } });
    assert.deepEqual({ size: idx.size, sha256: idx.sha256, chunker: idx.chunker }, { size: data.length, sha256: sha(data), chunker: { algo: 'fastcdc-gear32', ...SMALL } });
    let off = 0;
    for (const c of idx.chunks) {
      const part = data.subarray(off, off + c.size);
      assert.equal(c.sha256, sha(part));
      assert.deepEqual(await objects.get(`chunks/${c.sha256.slice(0, 2)}/${c.sha256}`), part);
      off += c.size;
    }
    assert.equal(off, data.length);
    assert.deepEqual(objects.keys(), ['artefacts/snapshots/s1/vm1.mem.idx', ...[...new Set(idx.chunks.map((c) => chunkKey(c.sha256)))].sort()]);
  });

  it('stores a chunk once: a second identical artefact adds no chunk and puts only its index (and its writer lock)', async () => {
    const data = bytes(200 * KiB, 2);
    const w1 = await store.create('snapshots/s1/a.mem');
    await w1.write(data);
    await w1.commit();
    const chunks = chunkKeys(objects);
    assert.equal(w1.stats.newChunks, chunks.length);
    assert.equal(w1.stats.newBytes, data.length);
    const puts = objects.puts;
    const w2 = await store.create('snapshots/s2/b.mem');
    for (let off = 0; off < data.length; off += 3000) await w2.write(data.subarray(off, off + 3000));
    await w2.commit();
    assert.deepEqual(chunkKeys(objects), chunks);
    assert.equal(objects.puts - puts, 2, 'only the writer lock and the index are put');
    assert.deepEqual(w2.stats, { chunks: w1.stats.chunks, newChunks: 0, newBytes: 0 });
    assert.deepEqual(await store.get('snapshots/s2/b.mem'), data);
    // Repeated content inside one artefact is uploaded once too.
    const w3 = await store.create('snapshots/s3/twice');
    const block = bytes(20 * KiB, 9);
    await w3.write(Buffer.concat([Buffer.alloc(SMALL.max), block, Buffer.alloc(SMALL.max), block]));
    await w3.commit();
    assert.ok(w3.stats.newChunks < w3.stats.chunks, `${w3.stats.newChunks} of ${w3.stats.chunks} chunks uploaded`);
  });

  it('a shifted stream re-uses the chunks of the earlier one: only the changed region is added', async () => {
    const data = bytes(400 * KiB, 3);
    await store.put('snapshots/s1/vm.mem', data);
    const before = objects.used;
    const shifted = Buffer.concat([data.subarray(0, 150 * KiB), bytes(300, 4), data.subarray(150 * KiB)]);
    const w = await store.create('snapshots/s2/vm.mem');
    await w.write(shifted);
    await w.commit();
    assert.ok(w.stats.newBytes <= 3 * SMALL.max, `added ${w.stats.newBytes} bytes for a 300-byte insertion`);
    assert.ok(objects.used - before < 3 * SMALL.max + 4 * KiB);
    assert.deepEqual(await store.get('snapshots/s2/vm.mem'), shifted);
    assert.deepEqual(await store.get('snapshots/s1/vm.mem'), data);
  });

  it('refuses a corrupted chunk on get and on verify, naming the artefact and the chunk', async () => {
    const data = bytes(60 * KiB, 5);
    const a = await store.put('snapshots/s1/vm1.mem', data);
    const idx = decodeIndex(await objects.get(indexKey(a.path)), a.path);
    const bad = idx.chunks[2];
    assert.ok(bad);
    assert.equal(await store.verify(a), null);
    objects.corrupt(chunkKey(bad.sha256));
    const got = await failure(store.get(a.path));
    assert.match(got, new RegExp(`^ERR_CHECKSUM: artefact snapshots/s1/vm1\\.mem: chunk 3 of ${idx.chunks.length} \\(${bad.sha256}\\) is corrupt \\(${bad.size} bytes, SHA-256 [0-9a-f]{64}\\)$`));
    assert.match((await store.verify(a)) ?? '', new RegExp(`^snapshots/s1/vm1\\.mem: chunk 3 of ${idx.chunks.length} \\(${bad.sha256}\\) is corrupt`));
    // read() hands out the good chunks before the bad one, never the bad one.
    const seen: number[] = [];
    await assert.rejects(async () => {
      for await (const b of store.read(a.path)) seen.push(b.length);
    });
    assert.deepEqual(seen, idx.chunks.slice(0, 2).map((c) => c.size));
    // A missing chunk is data loss, named the same way.
    await objects.delete(chunkKey(bad.sha256));
    assert.equal(await failure(store.get(a.path)), `ERR_DATA_LOSS: artefact snapshots/s1/vm1.mem: chunk 3 of ${idx.chunks.length} (${bad.sha256}) is missing from the store`);
    assert.equal(await store.verify(a), `snapshots/s1/vm1.mem: chunk 3 of ${idx.chunks.length} (${bad.sha256}) is missing from the store`);
  });

  it('an aborted writer leaves no index (its chunks may stay for GC); a later write of that path works', async () => {
    const w = await store.create('snapshots/s1/vm1.mem');
    await w.write(bytes(80 * KiB, 6));
    await w.abort();
    assert.deepEqual(objects.keys().filter((k) => !k.startsWith('chunks/')), []);
    assert.ok(chunkKeys(objects).length > 0, 'the chunks uploaded before the abort stay');
    assert.deepEqual(await store.list(''), []);
    assert.equal(await failure(w.write(Buffer.from('x'))), 'ERR_STATE: artefact snapshots/s1/vm1.mem is already aborted');
    const a = await store.put('snapshots/s1/vm1.mem', Buffer.from('fine'));
    assert.equal(await store.verify(a), null);
  });

  const faults: [ErrorCode, RegExp][] = [
    ['ERR_UNAVAILABLE', /^ERR_UNAVAILABLE: store memory failed while writing snapshots\/s1\/vm1\.mem: memory: put chunks\/.+ failed \(injected ERR_UNAVAILABLE\)$/],
    ['ERR_STORE_FULL', /^ERR_STORE_FULL: store is full while writing snapshots\/s1\/vm1\.mem; no index was written \(chunks already stored are left for garbage collection\)$/],
  ];
  for (const [code, message] of faults) {
    it(`a chunk upload failing with ${code} fails the write or the commit with that code, and no index is written`, async () => {
      const w = await store.create('snapshots/s1/vm1.mem');
      await w.write(bytes(10 * KiB, 7));
      objects.failPuts(1, code);
      let err = await failure(w.write(bytes(100 * KiB, 8)));
      if (err === 'resolved') err = await failure(w.commit());
      assert.match(err, message);
      assert.match(await failure(w.commit()), /^ERR_(STATE|UNAVAILABLE|STORE_FULL): /);
      await w.abort();
      assert.deepEqual(await store.list(''), []);
      assert.equal(objects.keys().filter((k) => k.startsWith('artefacts/')).length, 0);
    });
  }

  it('uploads with at most `concurrency` puts in flight, and puts the index last, after every chunk is stored', async () => {
    const w = await store.create('snapshots/s1/vm1.mem');
    const order: string[] = [];
    let active = 0;
    let most = 0;
    const put = objects.put.bind(objects);
    objects.put = async (key, data) => {
      most = Math.max(most, ++active);
      await new Promise((r) => setImmediate(r)); // let other uploads start if they may
      await put(key, data);
      active--;
      order.push(key.startsWith('chunks/') ? 'chunk' : key);
    };
    await w.write(bytes(120 * KiB, 10));
    await w.commit();
    assert.equal(most, 3);
    assert.ok(order.length > 10);
    assert.equal(order[order.length - 1], 'artefacts/snapshots/s1/vm1.mem.idx');
    assert.equal(order.filter((k) => k.startsWith('artefacts/')).length, 1);
  });

  it('refuses an index of another format or a damaged one, naming the artefact', async () => {
    await objects.put(indexKey('x/new'), Buffer.from(JSON.stringify({ format: 'vnsnap-cas-index/9' })));
    assert.equal(await failure(store.get('x/new')), 'ERR_UNSUPPORTED_VERSION: artefact x/new: index format "vnsnap-cas-index/9" is none of vnsnap-cas-index/4, vnsnap-cas-index/3, vnsnap-cas-index/2, vnsnap-cas-index/1; this vnsnap is older than the store, upgrade it');
    await objects.put(indexKey('x/bad'), Buffer.from('{'));
    assert.equal(await failure(store.stat('x/bad')), 'ERR_DATA_LOSS: artefact x/bad: its index is damaged (not JSON)');
  });
});
