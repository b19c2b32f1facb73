import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { decodeIndex, indexKey } from '../../proto/store/cas-index';
import { CasStore } from '../../proto/store/cas-store';
import { GENERATION_KEY, newGeneration } from '../../proto/store/gc-generation';
import { LocalObjects } from '../../proto/store/local-objects';
import { packKey } from '../../proto/store/pack-format';
import { MAP_MAX_AGE_MS, PackMap } from '../../proto/store/pack-map';
import { KiB, rig, SMALL, type Rig } from '../support/cas-rig';
import { CountingObjects } from '../support/counting-objects';
import { pseudoRandomBytes as bytes } from '../support/memory-objects';

const PACK = { targetBytes: 64 * KiB, rangeBytes: 32 * KiB, aheadBytes: 64 * KiB };

/** A packed store over a counting backend on the rig's clock, after its first session (which lists). */
async function counted(r: Rig): Promise<{ store: CasStore; c: CountingObjects }> {
  const c = new CountingObjects(r.objects);
  const store = new CasStore(c, { chunker: SMALL, concurrency: 3, locks: r.timing, pack: PACK });
  await store.put('first/a', bytes(100 * KiB, 100));
  return { store, c };
}

/** The packs an artefact's index names, and whether each is still stored. */
async function packsNamed(r: Rig, path: string): Promise<Map<string, boolean>> {
  const out = new Map<string, boolean>();
  for (const ch of decodeIndex(await r.objects.get(indexKey(path)), path).chunks) {
    if (ch.pack !== undefined) out.set(ch.pack, (await r.objects.head(packKey(ch.pack))) !== null);
  }
  return out;
}

const lists = (c: CountingObjects, from: number): string[] => c.since(from, 'list', 'listInfo');
const anon = (calls: string[]): string[] => calls.map((k) => k.replace(/locks\/w-[0-9a-f]+/, 'locks/w-*'));

describe('CAS pack map at writer session start', () => {
  it('in the steady state a session starts with its lock, a look for locks/gc and one get of the sweep generation: no listing', async () => {
    const r = rig();
    const { store, c } = await counted(r);
    assert.equal(c.since(0, 'list').filter((k) => k === 'list packtabs/').length, 1, 'the first session lists the tables');
    assert.equal(await r.objects.head(GENERATION_KEY) !== null, true, 'a new store gets its first generation from its first session');
    const from = c.calls.length;
    await store.link('first/a', 'linked/a');
    assert.deepEqual(anon(c.calls.slice(from)), [
      'put locks/w-*',
      'head locks/gc',
      `get ${GENERATION_KEY}`,
      `get ${indexKey('first/a')}`,
      'head locks/w-*',
      `put ${indexKey('linked/a')}`,
      'delete locks/w-*',
    ]);
    const more = c.calls.length;
    assert.equal((await store.put('again/a', bytes(100 * KiB, 100))).storedBytes, 0, "this store's own packs are in its map without a listing");
    await store.put('new/a', bytes(100 * KiB, 101));
    assert.deepEqual(lists(c, from), []);
    assert.equal(c.since(more, 'get').filter((k) => k === `get ${GENERATION_KEY}`).length, 2, 'one get of the generation per session');
  });

  it('over a local directory (deferred syncs) too, the packs this store wrote are in its map without a listing', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-session-map-'));
    try {
      const c = new CountingObjects(new LocalObjects(dir));
      assert.ok(c.putUnsynced, 'the wrapper keeps deferred syncs');
      const store = new CasStore(c, { chunker: SMALL, concurrency: 3, pack: PACK });
      const data = bytes(150 * KiB, 40);
      await store.put('l/1', data);
      const from = c.calls.length;
      assert.equal((await store.put('l/2', data)).storedBytes, 0);
      assert.deepEqual(lists(c, from), []);
      assert.ok(c.since(0, 'putUnsynced').length > 0);
      assert.deepEqual(await store.get('l/2'), data);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a sweep between two sessions makes the next one list: the writer names no chunk of a deleted pack', async () => {
    const r = rig();
    const { store, c } = await counted(r);
    const data = bytes(120 * KiB, 1);
    await store.put('s1/a', data);
    const old = await packsNamed(r, 's1/a');
    await store.delete('s1/a');
    r.now += 1; // well within MAP_MAX_AGE_MS: only the generation can make the next session list
    const res = await r.store.gc({ ...r.timing, graceMs: 0 }); // another process's collection
    assert.ok(res.packsDeleted >= old.size, `${res.packsDeleted} packs deleted`);
    for (const id of old.keys()) assert.equal(await r.objects.head(packKey(id)), null);
    const from = c.calls.length;
    const st = await store.put('s2/a', data);
    assert.deepEqual(lists(c, from), ['list packtabs/']);
    assert.equal(st.storedBytes, data.length, 'stored again, not named from the swept packs');
    for (const [id, there] of await packsNamed(r, 's2/a')) assert.equal(there, true, `s2/a names pack ${id}, which is gone`);
    assert.deepEqual(await store.get('s2/a'), data);
    const next = c.calls.length;
    await store.put('s3/a', bytes(10 * KiB, 2));
    assert.deepEqual(lists(c, next), [], 'and the session after does not');
  });

  it('a sweep puts the new generation after the last writer left and before its first delete', async () => {
    const r = rig();
    const { store, c } = await counted(r);
    await store.put('gone/a', bytes(120 * KiB, 3));
    await store.delete('gone/a');
    r.now += 1;
    const w = await store.create('late/a');
    let committed = false;
    r.onSleep = async (): Promise<void> => {
      if (committed) return;
      committed = true;
      await w.write(bytes(30 * KiB, 4));
      await w.commit();
    };
    const from = c.calls.length;
    const gc = new CasStore(c, { locks: r.timing, pack: PACK });
    const res = await gc.gc({ ...r.timing, graceMs: 0 });
    assert.ok(committed && res.packsDeleted > 0);
    const calls = c.calls.slice(from);
    const at = calls.indexOf(`put ${GENERATION_KEY}`);
    const lastLook = calls.lastIndexOf('listInfo locks/w-');
    const writerGone = calls.findIndex((k) => /^delete locks\/w-/.test(k));
    const firstDelete = calls.findIndex((k) => /^delete (packs|packtabs|chunks)\//.test(k));
    assert.ok(at > lastLook && at > writerGone && lastLook > writerGone && at < firstDelete, JSON.stringify({ at, lastLook, writerGone, firstDelete }));
    const next = c.calls.length;
    await store.put('after/a', bytes(10 * KiB, 5));
    assert.deepEqual(lists(c, next), ['list packtabs/']);
    assert.deepEqual(await store.get('late/a'), bytes(30 * KiB, 4));
  });

  it('lists again once its last listing is MAP_MAX_AGE_MS old, and then finds the packs other processes wrote', async () => {
    const r = rig();
    const { store, c } = await counted(r);
    const seen = bytes(60 * KiB, 6);
    const later = bytes(60 * KiB, 7);
    const other = r.another(PACK);
    await other.put('b/1', seen);
    await other.put('b/2', later);
    r.now += MAP_MAX_AGE_MS - 1;
    let from = c.calls.length;
    assert.equal((await store.put('a/1', seen)).storedBytes, seen.length, "within the bound the other store's packs are not known: stored again");
    assert.deepEqual(lists(c, from), []);
    assert.deepEqual(await store.get('a/1'), seen);
    r.now += 1;
    from = c.calls.length;
    assert.equal((await store.put('a/2', later)).storedBytes, 0, "past it the other store's chunks are found");
    assert.deepEqual(lists(c, from), ['list packtabs/']);
    assert.deepEqual([...(await packsNamed(r, 'a/2')).keys()], [...(await packsNamed(r, 'b/2')).keys()]);
    from = c.calls.length;
    await store.put('a/3', bytes(10 * KiB, 8));
    assert.deepEqual(lists(c, from), [], 'the bound counts from the last listing');
  });

  it('a store without a generation (collected only by older versions) lists at every session until a sweep puts one', async () => {
    const r = rig();
    const { store, c } = await counted(r);
    await r.objects.delete(GENERATION_KEY);
    for (let i = 0; i < 3; i++) {
      const from = c.calls.length;
      await store.put(`old/${i}`, bytes(20 * KiB, 10 + i));
      assert.deepEqual(lists(c, from), ['list packtabs/'], `session ${i}`);
    }
    assert.equal(await r.objects.head(GENERATION_KEY), null, 'a writer puts no generation on a store that has tables');
    await store.delete('old/0');
    r.now += 1;
    await r.store.gc({ ...r.timing, graceMs: 0 });
    assert.notEqual(await r.objects.head(GENERATION_KEY), null);
    await store.put('new/0', bytes(20 * KiB, 20)); // lists: the generation changed
    const from = c.calls.length;
    await store.put('new/1', bytes(20 * KiB, 21));
    assert.deepEqual(lists(c, from), []);
  });

  it('a session refresh overlapped by another refresh (a reader) is not trusted: the next session lists again', async () => {
    const r = rig();
    await newGeneration(r.objects);
    await r.another(PACK).put('x/a', bytes(60 * KiB, 30));
    const c = new CountingObjects(r.objects);
    const map = new PackMap();
    const reading = map.refresh(c);
    assert.equal(await map.refreshForSession(c, r.now), true);
    await reading;
    assert.equal(await map.refreshForSession(c, r.now), true, 'overlapped: lists again');
    assert.equal(await map.refreshForSession(c, r.now), false, 'alone: trusted');
    assert.equal(c.since(0, 'list').length, 3);
  });

  it('with sessionLingerMs the next writers join the session their predecessors left: one lock put, deleted once the store is idle that long', async () => {
    const r = rig();
    const c = new CountingObjects(r.objects);
    const store = new CasStore(c, { chunker: SMALL, concurrency: 3, locks: r.timing, pack: PACK, sessionLingerMs: 30 });
    await store.put('a/1', bytes(100 * KiB, 1));
    const lock = r.objects.keys().filter((k) => k.startsWith('locks/w-'));
    assert.equal(lock.length, 1, 'the lock stays after the last writer ended');
    const from = c.calls.length;
    await store.put('a/2', bytes(100 * KiB, 2));
    await store.link('a/1', 'b/1');
    assert.deepEqual(anon(c.calls.slice(from)).filter((k) => k.includes('locks/')), ['head locks/gc', 'head locks/w-*', 'head locks/gc', 'head locks/w-*'], 'joiners look for a live sweep, put no lock of their own');
    assert.deepEqual(r.objects.keys().filter((k) => k.startsWith('locks/w-')), lock);
    await new Promise((res) => setTimeout(res, 80));
    assert.deepEqual(r.objects.keys().filter((k) => k.startsWith('locks/w-')), [], 'an idle store holds no lock');
    await store.put('a/3', bytes(100 * KiB, 3));
    store.close();
    await new Promise((res) => setTimeout(res, 10));
    assert.deepEqual(r.objects.keys().filter((k) => k.startsWith('locks/w-')), [], 'close() ends a lingering session');
  });

  it('a writer that finds a live sweep waits it out while the lingering session ends, so the sweep is not held off', async () => {
    const r = rig();
    const store = new CasStore(r.objects, { chunker: SMALL, concurrency: 3, locks: r.timing, pack: PACK, sessionLingerMs: 30 });
    await store.put('a/1', bytes(100 * KiB, 1));
    await r.objects.put('locks/gc', Buffer.from('{}'));
    let sawWriterLock = true;
    r.onSleep = async (): Promise<void> => {
      // The sweep's side: it waits for the writer locks to go, then ends.
      await new Promise((res) => setTimeout(res, 50));
      sawWriterLock = r.objects.keys().some((k) => k.startsWith('locks/w-'));
      if (!sawWriterLock) await r.objects.delete('locks/gc');
    };
    await store.put('a/2', bytes(100 * KiB, 2));
    assert.equal(sawWriterLock, false, 'the lingering session ended while the writer waited for the sweep');
    store.close();
  });
});

