import { strict as assert } from 'node:assert';
import { decodeIndex, indexKey, INDEX_FORMAT_2, type ArtefactIndex } from '../../proto/store/cas-index';
import { STALE_MS } from '../../proto/store/cas-locks';
import { decodeTable, packIdOf, packKey, tableKey, type PackTable } from '../../proto/store/pack-format';
import { PackMap } from '../../proto/store/pack-map';
import { GENERATION_KEY } from '../../proto/store/gc-generation';
import { PackWriter } from '../../proto/store/pack-writer';
import { planRuns } from '../../proto/store/pack-reader';
import type { GcOptions } from '../../proto/store/cas-gc';
import { failEveryGcStep, KiB, MIN, rig, type Rig } from '../support/cas-rig';
import { failureOf as failure, MemoryObjects, pseudoRandomBytes as bytes } from '../support/memory-objects';

const PACK = { targetBytes: 64 * KiB, rangeBytes: 32 * KiB, aheadBytes: 64 * KiB };

const keysUnder = (r: Rig, prefix: string): string[] => r.objects.keys().filter((k) => k.startsWith(prefix));
const packIds = (r: Rig): string[] => keysUnder(r, 'packs/').map((k) => packIdOf(k) as string);

async function indexOf(r: Rig, path: string): Promise<ArtefactIndex> {
  return decodeIndex(await r.objects.get(indexKey(path)), path);
}

async function tableOf(r: Rig, id: string): Promise<PackTable> {
  return decodeTable(await r.objects.get(tableKey(id)), tableKey(id));
}

/** Every artefact reads back whole and checked. */
async function allReadable(r: Rig): Promise<void> {
  for (const v of await r.store.verifyAll('')) assert.equal(v.ok, true, JSON.stringify(v));
}

describe('CAS packs: writing', () => {
  it('an open pack copies its new chunks as they are placed: the writes they came in are free at once (a lent write is reused by its caller)', async () => {
    const objects = new MemoryObjects();
    const pw = new PackWriter(objects, new PackMap(), 64 * KiB);
    // Four writes of 64 KiB, one 1 KiB chunk of each new, the last write in shared memory (a pool slot).
    const writes = [1, 2, 3].map((seed) => bytes(64 * KiB, 100 + seed));
    const slot = Buffer.from(new SharedArrayBuffer(64 * KiB));
    bytes(64 * KiB, 104).copy(slot);
    writes.push(slot);
    const chunks = writes.map((w) => w.subarray(1 * KiB, 2 * KiB));
    const originals = chunks.map((c) => Buffer.from(c));
    chunks.forEach((c, i) => assert.equal(pw.place({ sha256: String(i).padStart(64, '0'), size: c.length }, c), null));
    for (const w of writes) w.fill(0xee); // the test's probe: a kept view would see this, a copy does not
    const job = pw.seal();
    assert.ok(job);
    await job();
    const pack = await objects.get(keysUnder({ objects } as Rig, 'packs/')[0] as string);
    const stored = [0, 1, 2, 3].map((i) => pack.subarray(i * KiB, (i + 1) * KiB));
    assert.deepEqual(stored.map((b, i) => b.equals(originals[i] as Buffer)), [true, true, true, true]);
  });

  it('stores new chunks in packs of about the target size, each with its table, and asks nothing per chunk', async () => {
    const r = rig({ pack: PACK });
    const data = bytes(300 * KiB, 1);
    const stored = await r.store.put('s1/a', data);
    const ids = packIds(r);
    assert.deepEqual(keysUnder(r, 'packtabs/').map((k) => packIdOf(k)), ids, 'one table per pack');
    assert.deepEqual(keysUnder(r, 'chunks/'), []);
    const idx = await indexOf(r, 's1/a');
    let total = 0;
    for (const id of ids) {
      const t = await tableOf(r, id);
      assert.equal((await r.objects.get(packKey(id))).length, t.size);
      total += t.size;
    }
    assert.equal(total, 300 * KiB);
    const sizes = await Promise.all(ids.map(async (id) => (await tableOf(r, id)).size));
    assert.equal(sizes.filter((s) => s < PACK.targetBytes).length, 1, `only the last pack is under the target: ${sizes.join(' ')}`);
    assert.ok(sizes.every((s) => s < PACK.targetBytes + 16 * KiB), `no pack over target + max chunk: ${sizes.join(' ')}`);
    assert.equal(stored.storedBytes, 300 * KiB);
    assert.equal(r.objects.heads, 2, 'heads: locks/gc at the session start and the writer lock before the index');
    assert.equal(r.objects.puts, 1 + 1 + 2 * ids.length + 1, 'puts: the writer lock, the sweep generation of a new store, each pack and its table, the index');
    const raw = JSON.parse((await r.objects.get(indexKey('s1/a'))).toString()) as { format: string };
    assert.equal(raw.format, INDEX_FORMAT_2, 'random bytes do not compress: every chunk plain');
    for (const c of idx.chunks) {
      const t = await tableOf(r, c.pack as string);
      assert.deepEqual(
        t.chunks.find((e) => e.sha256 === c.sha256),
        { sha256: c.sha256, offset: c.offset, size: c.size },
      );
    }
    assert.deepEqual(await r.store.get('s1/a'), data);
  });

  it('a chunk the store holds is not stored again, by this store or by another one over the same backend', async () => {
    const r = rig({ pack: PACK });
    const data = bytes(200 * KiB, 2);
    await r.store.put('s1/a', data);
    const before = r.objects.keys().filter((k) => !k.startsWith('artefacts/'));
    assert.equal((await r.store.put('s2/a', data)).storedBytes, 0);
    const other = r.another();
    const gets = r.objects.gets;
    assert.equal((await other.put('s3/a', data)).storedBytes, 0);
    assert.equal(r.objects.gets - gets, 1 + before.filter((k) => k.startsWith('packtabs/')).length, 'the other store read the sweep generation and each table once, no pack');
    assert.deepEqual(
      r.objects.keys().filter((k) => !k.startsWith('artefacts/')),
      before,
    );
    // Half old, half new: only the new chunks go into a new pack.
    const mixed = Buffer.concat([data.subarray(0, 100 * KiB), bytes(100 * KiB, 3)]);
    const st = await other.put('s4/a', mixed);
    const fresh = packIds(r).filter((id) => !before.includes(packKey(id)));
    const freshBytes = (await Promise.all(fresh.map(async (id) => (await tableOf(r, id)).size))).reduce((a, b) => a + b, 0);
    assert.equal(st.storedBytes, freshBytes);
    assert.ok(freshBytes > 100 * KiB && freshBytes < 130 * KiB, `new bytes ${freshBytes}`);
    assert.deepEqual(await r.store.get('s4/a'), mixed);
  });
});

describe('CAS packs: reading', () => {
  it('takes neighbouring chunks of a pack in ranged requests of at most rangeBytes, each chunk checked', async () => {
    const r = rig({ pack: PACK });
    const data = bytes(300 * KiB, 4);
    await r.store.put('s1/a', data);
    const idx = await indexOf(r, 's1/a');
    const runs = planRuns(idx.chunks, PACK.rangeBytes);
    assert.ok(runs.every((run) => run.bytes <= PACK.rangeBytes || run.refs.length === 1));
    assert.ok(runs.length * 3 < idx.chunks.length, `${runs.length} requests for ${idx.chunks.length} chunks`);
    const [gets, ranges] = [r.objects.gets, r.objects.ranges];
    assert.deepEqual(await r.store.get('s1/a'), data);
    assert.equal(r.objects.ranges - ranges, runs.length);
    assert.equal(r.objects.gets - gets, 1 + runs.length, 'the index, then one ranged request per run');
  });

  it('a corrupt chunk in a pack is ERR_CHECKSUM and a lost pack ERR_DATA_LOSS, both naming the artefact and the chunk', async () => {
    const r = rig({ pack: PACK });
    await r.store.put('s1/a', bytes(200 * KiB, 5));
    const idx = await indexOf(r, 's1/a');
    const id = idx.chunks[0]?.pack as string;
    const size = (await tableOf(r, id)).size;
    r.objects.corrupt(packKey(id)); // the byte in the middle
    const i = idx.chunks.findIndex((c) => c.pack === id && (c.offset as number) <= size >> 1 && size >> 1 < (c.offset as number) + c.size);
    const c = idx.chunks[i] as { sha256: string; size: number };
    const got = await failure(r.store.get('s1/a'));
    assert.equal(got.slice(0, got.lastIndexOf(' ')), `ERR_CHECKSUM: artefact s1/a: chunk ${i + 1} of ${idx.chunks.length} (${c.sha256}) is corrupt (${c.size} bytes, SHA-256`);
    await r.objects.delete(packKey(id));
    await r.objects.delete(tableKey(id));
    assert.equal(await failure(r.store.get('s1/a')), `ERR_DATA_LOSS: artefact s1/a: chunk 1 of ${idx.chunks.length} (${idx.chunks[0]?.sha256}) is missing from the store`);
  });

  it('a store of format 1 (one object per chunk) stays readable, linkable and collectable beside packs', async () => {
    const r = rig();
    const old = bytes(100 * KiB, 6);
    await r.store.put('s1/a', old);
    const store = r.another(PACK);
    assert.deepEqual(await store.get('s1/a'), old);
    await store.link('s1/a', 's2/a');
    await store.put('s2/b', bytes(100 * KiB, 7));
    assert.equal(JSON.parse((await r.objects.get(indexKey('s2/a'))).toString()).format, 'vnsnap-cas-index/1', 'a link of a format-1 index stays format 1');
    assert.equal(JSON.parse((await r.objects.get(indexKey('s2/b'))).toString()).format, INDEX_FORMAT_2);
    const chunks = keysUnder(r, 'chunks/').length;
    await store.delete('s1/a');
    r.now += MIN;
    assert.equal((await store.gc({ ...r.timing, graceMs: 0 })).chunksDeleted, 0, 'the link still names every old chunk');
    await store.delete('s2/a');
    const res = await store.gc({ ...r.timing, graceMs: 0 });
    assert.deepEqual({ deleted: res.chunksDeleted, packsDeleted: res.packsDeleted }, { deleted: chunks, packsDeleted: 0 });
    assert.deepEqual(keysUnder(r, 'chunks/'), []);
    assert.deepEqual(await store.get('s2/b'), bytes(100 * KiB, 7));
  });
});

/**
 * s1/a and s2/b in one pack each (a 1 MiB target); s1/x repeats the first 60 % of s1/a. Deleting
 * s1/a and s2/b leaves s2/b's pack dead and about 40 % of s1/a's pack dead.
 */
async function repackScene(): Promise<{ r: Rig; a: string; b: string; x: Buffer }> {
  const r = rig({ pack: { ...PACK, targetBytes: 1024 * KiB } });
  const data = bytes(200 * KiB, 8);
  await r.store.put('s1/a', data);
  await r.store.put('s2/b', bytes(100 * KiB, 9));
  const a = (await indexOf(r, 's1/a')).chunks[0]?.pack as string;
  const b = (await indexOf(r, 's2/b')).chunks[0]?.pack as string;
  const x = Buffer.concat([data.subarray(0, 120 * KiB), bytes(5 * KiB, 10)]);
  await r.store.put('s1/x', x);
  await r.store.delete('s1/a');
  await r.store.delete('s2/b');
  r.now += 2 * MIN;
  return { r, a, b, x };
}

const GC = { graceMs: MIN, repackDeadFraction: 0.3, packTargetBytes: 1024 * KiB };

describe('CAS packs: garbage collection', () => {
  it('deletes a pack with no live chunk, repacks one with too many dead bytes, and the survivors still read', async () => {
    const { r, a, b, x } = await repackScene();
    const xIdx = await indexOf(r, 's1/x');
    const tail = packIds(r).filter((id) => id !== a && id !== b);
    assert.equal(tail.length, 1, 's1/x added one pack (its last chunks)');
    const sizeOf = async (id: string): Promise<number> => (await tableOf(r, id)).size;
    const [sa, sb] = [await sizeOf(a), await sizeOf(b)];
    const entries = (await tableOf(r, a)).chunks.length + (await tableOf(r, b)).chunks.length;
    const live = new Set(xIdx.chunks.filter((c) => c.pack === a).map((c) => c.sha256));
    const liveBytes = (await tableOf(r, a)).chunks.filter((c) => live.has(c.sha256)).reduce((n, c) => n + c.size, 0);
    assert.ok(liveBytes / sa > 0.5 && liveBytes / sa < 0.7, `live ${liveBytes} of ${sa}`);
    const res = await r.store.gc({ ...r.timing, ...GC });
    const fresh = packIds(r).filter((id) => !tail.includes(id));
    assert.equal(fresh.length, 1, 'one new pack');
    const newTable = await tableOf(r, fresh[0] as string);
    assert.deepEqual(new Set(newTable.chunks.map((c) => c.sha256)), live);
    assert.deepEqual(res, {
      chunksDeleted: entries - live.size,
      bytesFreed: sa + sb - liveBytes,
      chunksKept: (await tableOf(r, tail[0] as string)).chunks.length + newTable.chunks.length,
      indexes: 1,
      packsDeleted: 2,
      packsWritten: 1,
    });
    assert.equal(keysUnder(r, 'packtabs/').length, 2);
    assert.deepEqual(await r.store.get('s1/x'), x, 'read through the pack tables: its index still names the old pack');
    assert.deepEqual(await r.another().get('s1/x'), x, 'also by a store that never saw the old pack');
    const st = await r.store.stats();
    assert.deepEqual({ packs: st.packs, storedBytes: st.storedBytes, artefacts: st.artefacts }, { packs: 2, storedBytes: liveBytes + (await tableOf(r, tail[0] as string)).size, artefacts: 1 });
    r.now += 2 * MIN;
    const again = await r.store.gc({ ...r.timing, ...GC });
    assert.deepEqual({ deleted: again.packsDeleted, written: again.packsWritten, freed: again.bytesFreed }, { deleted: 0, written: 0, freed: 0 });
  });

  it('keeps packs younger than the grace period, and a pack a writer named during the mark', async () => {
    const { r, a, b } = await repackScene();
    assert.deepEqual((await r.store.gc({ ...r.timing, ...GC, graceMs: 60 * MIN })).packsDeleted, 0);
    // A writer naming all of s1/a again while the sweep waits for it: s1/a's pack stays whole.
    const w = await r.store.create('s3/a');
    let wrote = false;
    r.onSleep = async () => {
      if (wrote) return;
      wrote = true;
      await w.write(bytes(200 * KiB, 8));
      await w.commit();
    };
    const res = await r.store.gc({ ...r.timing, ...GC });
    assert.deepEqual({ deleted: res.packsDeleted, written: res.packsWritten }, { deleted: 1, written: 0 });
    assert.ok(packIds(r).includes(a) && !packIds(r).includes(b));
    await allReadable(r);
  });

  it('a failure at any step of a repacking run leaves everything named readable, and the next run ends where a clean one does', async () => {
    const clean = await repackScene();
    await clean.r.store.gc({ ...clean.r.timing, ...GC });
    const scene = async (): Promise<{ r: Rig; opts: GcOptions }> => {
      const { r } = await repackScene();
      return { r, opts: { ...r.timing, ...GC } };
    };
    const steps = await failEveryGcStep(scene, clean.r.objects.keys(), allReadable);
    assert.ok(steps > 12, `${steps} steps failed`);
  });

  it('a writer that fails at any step leaves no index, and garbage collection then removes every pack and table it wrote', async () => {
    let steps = 0;
    for (let k = 1; ; k++) {
      const r = rig({ pack: PACK });
      r.objects.failCall(k);
      const got = await failure(r.store.put('s1/a', bytes(300 * KiB, 11)));
      r.objects.failCall(0);
      if (got === 'resolved') break;
      steps++;
      assert.match(got, /^ERR_UNAVAILABLE: /);
      assert.deepEqual(await r.store.list(''), []);
      r.now += STALE_MS + MIN;
      await r.store.gc({ ...r.timing, graceMs: MIN });
      assert.deepEqual(
        r.objects.keys().filter((key) => !key.startsWith('locks/w-') && key !== GENERATION_KEY), // a lock its failed start left goes stale
        [],
        `after a failure at call ${k}: ${got}`,
      );
    }
    assert.ok(steps > 8, `${steps} steps failed`);
  });
});
