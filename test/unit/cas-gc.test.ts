import { strict as assert } from 'node:assert';
import { chunkKey, decodeIndex, indexKey } from '../../proto/store/cas-index';
import { GC_LOCK, REFRESH_MS, STALE_MS } from '../../proto/store/cas-locks';
import { CasStore } from '../../proto/store/cas-store';
import { GENERATION_KEY } from '../../proto/store/gc-generation';
import { failEveryGcStep, KiB, MIN, rig, SMALL } from '../support/cas-rig';
import type { GcOptions } from '../../proto/store/cas-gc';
import { failureOf as failure, MemoryObjects, pseudoRandomBytes as bytes } from '../support/memory-objects';

const chunksOf = (m: MemoryObjects): string[] => m.keys().filter((k) => k.startsWith('chunks/'));
/** Lock objects (the sweep generation is not one). */
const locksOf = (m: MemoryObjects): string[] => m.keys().filter((k) => k.startsWith('locks/') && k !== GENERATION_KEY);

async function namedChunks(m: MemoryObjects, path: string): Promise<string[]> {
  return decodeIndex(await m.get(indexKey(path)), path).chunks.map((c) => chunkKey(c.sha256));
}

/** Every chunk some index names is there, and every artefact reads back whole. */
async function nothingNamedMissing(r: ReturnType<typeof rig>): Promise<void> {
  const have = new Set(chunksOf(r.objects));
  for (const p of await r.store.list('')) {
    for (const k of await namedChunks(r.objects, p)) assert.ok(have.has(k), `${p} names ${k}, which is gone`);
  }
  for (const v of await r.store.verifyAll('')) assert.equal(v.ok, true, JSON.stringify(v));
}

describe('object times in the memory backend', () => {
  it('head and listInfo give size and the time of the last put, sorted like list', async () => {
    const r = rig();
    await r.objects.put('b/1', Buffer.from('abc'));
    r.now += 5;
    await r.objects.put('a/1', Buffer.from('xy'));
    r.now += 5;
    await r.objects.put('b/1', Buffer.from('abcd'));
    assert.deepEqual(await r.objects.head('b/1'), { key: 'b/1', size: 4, modifiedMs: r.now });
    assert.deepEqual(await r.objects.listInfo(''), [
      { key: 'a/1', size: 2, modifiedMs: r.now - 5 },
      { key: 'b/1', size: 4, modifiedMs: r.now },
    ]);
    assert.deepEqual((await r.objects.listInfo('b/')).map((i) => i.key), await r.objects.list('b/'));
  });
});

describe('CAS writer locks', () => {
  it('open writers of one store share one lock, refreshed by the timer and deleted when the last ends', async () => {
    const r = rig();
    const w1 = await r.store.create('s1/a');
    const w2 = await r.store.create('s1/b');
    const locks = locksOf(r.objects);
    assert.equal(locks.length, 1);
    assert.match(locks[0] as string, /^locks\/w-[0-9a-f]{16}$/);
    assert.equal(r.refreshers.length, 1);
    r.now += REFRESH_MS;
    (r.refreshers[0] as () => void)();
    await w1.write(bytes(20 * KiB, 1));
    assert.equal((await r.objects.head(locks[0] as string))?.modifiedMs, r.now);
    await w1.commit();
    assert.deepEqual(locksOf(r.objects), locks, 'held while w2 is open');
    await w2.abort();
    assert.deepEqual(locksOf(r.objects), []);
    assert.equal(r.refreshers.length, 0);
    // The next writer starts a new session with a new lock.
    await r.store.put('s2/a', Buffer.from('x'));
    assert.deepEqual(locksOf(r.objects), []);
  });

  it('a writer whose lock went stale or is gone fails its commit with one line and writes no index', async () => {
    const r = rig();
    const w = await r.store.create('s1/vm.mem');
    await w.write(bytes(30 * KiB, 2));
    const lock = locksOf(r.objects)[0] as string;
    r.now += STALE_MS - REFRESH_MS; // no refresh ran
    assert.equal(await failure(w.commit()), `ERR_FAILED_PRECONDITION: artefact s1/vm.mem not committed: writer lock ${lock} was last refreshed 240 s ago, so garbage collection may have freed its chunks; write it again`);
    assert.deepEqual(await r.store.list(''), []);
    assert.deepEqual(locksOf(r.objects), [], 'the session ended with its writer');

    const w2 = await r.store.create('s1/vm.mem');
    await w2.write(bytes(30 * KiB, 2));
    const lock2 = locksOf(r.objects)[0] as string;
    await r.objects.delete(lock2);
    assert.equal(await failure(w2.commit()), `ERR_FAILED_PRECONDITION: artefact s1/vm.mem not committed: writer lock ${lock2} is gone, so garbage collection may have freed its chunks; write it again`);
    assert.deepEqual(await r.store.list(''), []);

    // Refreshed in time, the same wait is fine.
    const w3 = await r.store.create('s1/vm.mem');
    await w3.write(bytes(30 * KiB, 2));
    for (let i = 0; i < 4; i++) {
      r.now += REFRESH_MS;
      (r.refreshers[0] as () => void)();
    }
    await w3.commit();
    assert.deepEqual(await r.store.list(''), ['s1/vm.mem']);
  });

  it('a writer that sees a live locks/gc waits for it to go, and gives up with ERR_UNAVAILABLE after the bound', async () => {
    const r = rig();
    await r.objects.put(GC_LOCK, Buffer.from('{}'));
    r.onSleep = async () => {
      if (r.sleeps === 3) await r.objects.delete(GC_LOCK);
    };
    const w = await r.store.create('s1/a');
    assert.equal(r.sleeps, 3);
    assert.equal(locksOf(r.objects).length, 1);
    await w.abort();

    const r2 = rig();
    r2.store = new CasStore(r2.objects, { chunker: SMALL, locks: { ...r2.timing, gcWaitMs: 10_000 } });
    r2.onSleep = async () => {
      await r2.objects.put(GC_LOCK, Buffer.from('{}')); // a GC that keeps its lock fresh
    };
    await r2.objects.put(GC_LOCK, Buffer.from('{}'));
    assert.equal(await failure(r2.store.create('s1/a')), 'ERR_UNAVAILABLE: store memory: garbage collection has held locks/gc for over 10 s; try again later');
    assert.equal(r2.sleeps, 10);
    assert.deepEqual(locksOf(r2.objects), [GC_LOCK], 'the writer took its lock back');
  });

  it('a stale locks/gc does not hold a writer back', async () => {
    const r = rig();
    await r.objects.put(GC_LOCK, Buffer.from('{}'));
    r.now += STALE_MS;
    await r.store.put('s1/a', Buffer.from('x'));
    assert.equal(r.sleeps, 0);
  });
});

describe('CAS garbage collection', () => {
  /** Two snapshots sharing most chunks: s2 is s1 with a region changed. */
  async function twoSnapshots(r: ReturnType<typeof rig>): Promise<{ shared: string[]; onlyS1: string[]; onlyS2: string[] }> {
    const data = bytes(200 * KiB, 3);
    await r.store.put('snapshots/s1/vm.mem', data);
    await r.store.put('snapshots/s1/disk', bytes(40 * KiB, 4));
    const changed = Buffer.concat([data.subarray(0, 90 * KiB), bytes(10 * KiB, 5), data.subarray(100 * KiB)]);
    await r.store.put('snapshots/s2/vm.mem', changed);
    const s1 = new Set([...(await namedChunks(r.objects, 'snapshots/s1/vm.mem')), ...(await namedChunks(r.objects, 'snapshots/s1/disk'))]);
    const s2 = new Set(await namedChunks(r.objects, 'snapshots/s2/vm.mem'));
    return { shared: [...s1].filter((k) => s2.has(k)), onlyS1: [...s1].filter((k) => !s2.has(k)).sort(), onlyS2: [...s2].filter((k) => !s1.has(k)) };
  }

  it('deleting one of two snapshots sharing chunks frees exactly the unshared ones', async () => {
    const r = rig();
    const { shared, onlyS1, onlyS2 } = await twoSnapshots(r);
    assert.ok(shared.length > 10 && onlyS1.length > 2 && onlyS2.length > 0, `${shared.length} shared, ${onlyS1.length}/${onlyS2.length} not`);
    const before = chunksOf(r.objects);
    let freed = 0;
    for (const k of onlyS1) freed += (await r.objects.head(k))?.size ?? 0;
    assert.equal(await r.store.deleteByPrefix('snapshots/s1/'), 2);
    r.now += 61 * MIN;
    const res = await r.store.gc({ ...r.timing, graceMs: 60 * MIN });
    assert.deepEqual(res, { chunksDeleted: onlyS1.length, bytesFreed: freed, chunksKept: before.length - onlyS1.length, indexes: 1, packsDeleted: 0, packsWritten: 0 });
    assert.deepEqual(chunksOf(r.objects), before.filter((k) => !onlyS1.includes(k)));
    assert.deepEqual(locksOf(r.objects), []);
    await nothingNamedMissing(r);
    assert.deepEqual(await r.store.gc({ ...r.timing, graceMs: 60 * MIN }), { chunksDeleted: 0, bytesFreed: 0, chunksKept: before.length - onlyS1.length, indexes: 1, packsDeleted: 0, packsWritten: 0 });
  });

  it('a writer running during the mark keeps its chunks, also the old ones it found present', async () => {
    const r = rig();
    const data = bytes(120 * KiB, 6);
    await r.store.put('snapshots/s1/vm.mem', data);
    const old = await namedChunks(r.objects, 'snapshots/s1/vm.mem');
    await r.store.delete('snapshots/s1/vm.mem'); // its chunks are now unnamed and, later, old
    r.now += 61 * MIN;
    const w = await r.store.create('snapshots/s2/vm.mem');
    await w.write(Buffer.concat([data, bytes(30 * KiB, 7)])); // finds the old chunks present
    r.now += 61 * MIN; // even its new chunks are older than the grace now
    (r.refreshers[0] as () => void)(); // its lock was refreshed all along
    let committedAt = 0;
    r.onSleep = async () => {
      if (committedAt === 0) {
        committedAt = r.sleeps;
        await w.commit(); // the sweep waits for this writer's lock to go
      }
    };
    const res = await r.store.gc({ ...r.timing, graceMs: 60 * MIN });
    assert.equal(committedAt, 1, 'the sweep waited for the writer');
    await nothingNamedMissing(r);
    assert.deepEqual(await r.store.get('snapshots/s2/vm.mem'), Buffer.concat([data, bytes(30 * KiB, 7)]));
    const s2 = new Set(await namedChunks(r.objects, 'snapshots/s2/vm.mem'));
    const unnamed = old.filter((k) => !s2.has(k)); // s1's last chunk: s2 cuts on past it
    assert.ok(unnamed.length <= 1, 'it re-used the old chunks');
    assert.deepEqual({ deleted: res.chunksDeleted, indexes: res.indexes }, { deleted: unnamed.length, indexes: 1 });
    assert.deepEqual(chunksOf(r.objects), [...s2].sort());
  });

  it('the sweep gives up, deleting nothing, when a writer holds its lock past the bound', async () => {
    const r = rig();
    await r.store.put('x/a', bytes(20 * KiB, 8));
    await r.store.delete('x/a');
    r.now += 61 * MIN;
    const w = await r.store.create('x/b');
    r.onSleep = async () => (r.refreshers[0] as () => void)(); // the writer stays alive
    const before = chunksOf(r.objects);
    assert.equal(await failure(r.store.gc({ ...r.timing, graceMs: 60 * MIN, writerWaitMs: 5000 })), 'ERR_UNAVAILABLE: store memory: garbage collection waited 5 s for writers to finish; nothing was deleted, run it again later');
    assert.deepEqual(chunksOf(r.objects), before);
    assert.equal(await r.objects.head(GC_LOCK), null);
    await w.abort();
  });

  it('keeps locks/gc fresh through a long sweep, and stops before the next delete when it stalled past the margin', async () => {
    const r = rig();
    await r.store.put('x/a', bytes(60 * KiB, 17));
    await r.store.delete('x/a');
    r.now += 61 * MIN;
    const n = chunksOf(r.objects).length;
    const del = r.objects.delete.bind(r.objects);
    const lockAges: number[] = [];
    r.objects.delete = async (key) => {
      if (key.startsWith('chunks/')) {
        r.now += 30_000; // a slow backend
        lockAges.push(r.now - ((await r.objects.head(GC_LOCK))?.modifiedMs ?? 0));
      }
      await del(key);
    };
    const res = await r.store.gc({ ...r.timing, graceMs: 60 * MIN });
    assert.equal(res.chunksDeleted, n);
    assert.ok(n * 30_000 > STALE_MS, `${n} chunks`);
    assert.ok(Math.max(...lockAges) <= REFRESH_MS + 30_000, `lock ages ${lockAges.join(' ')}`);

    const r2 = rig();
    await r2.store.put('x/a', bytes(60 * KiB, 17));
    await r2.store.delete('x/a');
    r2.now += 61 * MIN;
    const del2 = r2.objects.delete.bind(r2.objects);
    let stalls = 0;
    r2.objects.delete = async (key) => {
      if (key.startsWith('chunks/') && stalls++ === 1) r2.now += STALE_MS - REFRESH_MS; // the GC host froze
      await del2(key);
    };
    assert.equal(await failure(r2.store.gc({ ...r2.timing, graceMs: 60 * MIN })), 'ERR_UNAVAILABLE: store memory: garbage collection stopped: locks/gc was last refreshed 240 s ago, writers may have started; run it again');
    assert.equal(chunksOf(r2.objects).length, chunksOf(r.objects).length + n - 2, 'two deleted, then it stopped');
    assert.equal(await r2.objects.head(GC_LOCK), null);
  });

  it('does not wait for the stale lock of a crashed writer', async () => {
    const r = rig();
    await r.store.put('x/a', bytes(20 * KiB, 18));
    await r.store.delete('x/a');
    await r.objects.put('locks/w-0123456789abcdef', Buffer.from('{}')); // its writer died
    r.now += 61 * MIN;
    const res = await r.store.gc({ ...r.timing, graceMs: 60 * MIN });
    assert.equal(r.sleeps, 0);
    assert.ok(res.chunksDeleted > 2);
    assert.deepEqual(r.objects.keys(), [GENERATION_KEY, 'locks/w-0123456789abcdef']);
  });

  it('frees the chunks of an aborted writer only once they are older than the grace period', async () => {
    const r = rig();
    await r.store.put('keep/a', bytes(30 * KiB, 9));
    const kept = chunksOf(r.objects);
    const w = await r.store.create('gone/b');
    await w.write(bytes(50 * KiB, 10));
    await w.abort();
    const orphans = chunksOf(r.objects).filter((k) => !kept.includes(k));
    assert.ok(orphans.length > 3);
    r.now += 59 * MIN;
    assert.deepEqual(await r.store.gc({ ...r.timing, graceMs: 60 * MIN }), { chunksDeleted: 0, bytesFreed: 0, chunksKept: kept.length + orphans.length, indexes: 1, packsDeleted: 0, packsWritten: 0 });
    r.now += 2 * MIN;
    const res = await r.store.gc({ ...r.timing, graceMs: 60 * MIN });
    assert.deepEqual({ ...res, bytesFreed: 0 }, { chunksDeleted: orphans.length, bytesFreed: 0, chunksKept: kept.length, indexes: 1, packsDeleted: 0, packsWritten: 0 });
    assert.ok(res.bytesFreed >= 50 * KiB - SMALL.max);
    assert.deepEqual(chunksOf(r.objects), kept);
  });

  it('refuses to run beside a live locks/gc and takes over a stale one', async () => {
    const r = rig();
    await r.store.put('x/a', bytes(20 * KiB, 11));
    await r.store.delete('x/a');
    r.now += 60 * MIN;
    await r.objects.put(GC_LOCK, Buffer.from('{}'));
    r.now += MIN;
    assert.equal(await failure(r.store.gc({ ...r.timing, graceMs: 60 * MIN })), 'ERR_UNAVAILABLE: store memory: another garbage collection holds locks/gc (put 60 s ago)');
    r.now += STALE_MS;
    const res = await r.store.gc({ ...r.timing, graceMs: 60 * MIN });
    assert.ok(res.chunksDeleted > 3);
    assert.deepEqual(r.objects.keys(), [GENERATION_KEY]);
  });

  it('stops before deleting anything when an index cannot be parsed, naming the artefact', async () => {
    const r = rig();
    await r.store.put('x/a', bytes(20 * KiB, 12));
    await r.store.delete('x/a');
    await r.objects.put(indexKey('x/bad'), Buffer.from('{'));
    r.now += 61 * MIN;
    const before = r.objects.keys();
    assert.equal(await failure(r.store.gc({ ...r.timing, graceMs: 60 * MIN })), 'ERR_DATA_LOSS: artefact x/bad: its index is damaged (not JSON)');
    assert.deepEqual(r.objects.keys(), before);
  });

  it('a failure at any step leaves nothing named missing, and the next run frees the rest', async () => {
    const scene = async (): Promise<{ r: ReturnType<typeof rig>; opts: GcOptions }> => {
      const r = rig();
      await twoSnapshots(r);
      await r.store.deleteByPrefix('snapshots/s1/');
      r.now += 61 * MIN;
      return { r, opts: { ...r.timing, graceMs: 60 * MIN } };
    };
    const clean = await scene(); // a clean run on a copy of the same store tells what the end state is
    await clean.r.store.gc(clean.opts);
    const steps = await failEveryGcStep(scene, clean.r.objects.keys(), nothingNamedMissing);
    assert.ok(steps > 10, `${steps} steps failed`);
  });
});

describe('CAS verify and stats', () => {
  it('verifyAll re-reads every artefact under a prefix and reports each, with the bytes read', async () => {
    const r = rig();
    await r.store.put('snapshots/s1/a', bytes(40 * KiB, 13));
    await r.store.put('snapshots/s1/b', bytes(30 * KiB, 14));
    await r.store.put('snapshots/s2/a', bytes(10 * KiB, 15));
    const idx = decodeIndex(await r.objects.get(indexKey('snapshots/s1/b')), 'snapshots/s1/b');
    const chunks = (await namedChunks(r.objects, 'snapshots/s1/a')).length + idx.chunks.length;
    const gets = r.objects.gets;
    assert.deepEqual(await r.store.verifyAll('snapshots/s1/'), [
      { path: 'snapshots/s1/a', ok: true, bytes: 40 * KiB },
      { path: 'snapshots/s1/b', ok: true, bytes: 30 * KiB },
    ]);
    assert.equal(r.objects.gets - gets, 2 + chunks, 'each index and every chunk read once');
    const bad = idx.chunks[1] as { sha256: string; size: number };
    r.objects.corrupt(chunkKey(bad.sha256));
    const res = await r.store.verifyAll('snapshots/s1/');
    assert.deepEqual(res[0], { path: 'snapshots/s1/a', ok: true, bytes: 40 * KiB });
    assert.deepEqual(res[1], {
      path: 'snapshots/s1/b',
      ok: false,
      problem: `snapshots/s1/b: chunk 2 of ${idx.chunks.length} (${bad.sha256}) is corrupt (${bad.size} bytes, SHA-256 ${(res[1] as { problem: string }).problem.slice(-65, -1)})`,
      bytes: (idx.chunks[0] as { size: number }).size,
    });
  });

  it('stats count stored chunks and bytes, logical bytes of every artefact, and the dedup ratio', async () => {
    const r = rig();
    assert.deepEqual(await r.store.stats(), { chunks: 0, packs: 0, storedBytes: 0, artefacts: 0, logicalBytes: 0, dedupRatio: 1 });
    const data = bytes(100 * KiB, 16);
    await r.store.put('s1/a', data);
    await r.store.put('s2/a', data);
    await r.store.put('s3/a', data);
    const chunks = chunksOf(r.objects).length;
    assert.deepEqual(await r.store.stats(), { chunks, packs: 0, storedBytes: 100 * KiB, artefacts: 3, logicalBytes: 300 * KiB, dedupRatio: 3 });
  });
});
