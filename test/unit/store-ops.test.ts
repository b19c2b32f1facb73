import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isVnsnapError } from '../../proto/core/errors';
import { ManualClock } from '../../proto/core/clock';
import { encodeManifest } from '../../proto/artefacts/manifest';
import { chunkKey, decodeIndex, indexKey } from '../../proto/store/cas-index';
import { CasStore } from '../../proto/store/cas-store';
import { LocalDirStore } from '../../proto/store/local-dir';
import { LocalObjects } from '../../proto/store/local-objects';
import { DIGEST_ATTRIBUTE, DIGEST_CHUNK_LIST, type SnapshotStore, type StoredArtefact } from '../../proto/store/snapshot-store';
import { packKey } from '../../proto/store/pack-format';
import type { Artefact__Output } from '../../proto/gen/vnsnap/v1/Artefact';
import type { GcEvent } from '../../proto/gen/vnsnap/v1/GcEvent';
import type { SnapshotEvent } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import { Catalog, storedBytesOf } from '../../coordinator/catalog';
import { StoreOps } from '../../coordinator/store-ops';
import { withGcProgress } from '../../coordinator/gc-progress';
import { addedBytes, renderSnapshot, verifiedLine } from '../../coordinator/cli/format';
import { parseGrace, renderGcResult, renderStoreStats } from '../../coordinator/cli/store';
import { log, MemoryManifestStore } from './coordinator-fakes';
import { failureOf, MemoryObjects, pseudoRandomBytes as bytes } from '../support/memory-objects';
import { vneRecord } from '../support/vne-record';

const KiB = 1024;
const SMALL = { min: 1 * KiB, avg: 4 * KiB, max: 16 * KiB };
const T0 = 1_800_000_000_000;

/** A catalog, a store and a manifest store, with helpers to put a COMPLETE snapshot in them. */
function rig(store: SnapshotStore) {
  const clock = new ManualClock(T0);
  const catalog = new Catalog(':memory:', { now: () => clock.now() });
  const manifests = new MemoryManifestStore();
  const ops = new StoreOps({ catalog, store, manifests, clock, log });
  /** A snapshot `id` whose artefacts hold `data` (name → bytes), written through the store. */
  const snapshot = async (id: string, data: Record<string, Buffer>): Promise<Artefact__Output[]> => {
    const written: StoredArtefact[] = [];
    for (const [name, b] of Object.entries(data)) written.push({ ...(await store.put(`snapshots/${id}/${name}`, b)), attributes: {} });
    return record(id, written);
  };
  /** A COMPLETE snapshot `id` of the artefacts written, as its manifest records them (their attributes too). */
  const record = async (id: string, written: readonly StoredArtefact[]): Promise<Artefact__Output[]> => {
    const artefacts = written.map((a): Artefact__Output => ({ path: a.path, size: a.size, sha256: a.sha256, kind: 'ARTEFACT_KIND_MEMORY', owner: 'vm1', attributes: a.attributes ?? {}, storedBytes: a.storedBytes ?? 0 }));
    const manifestPath = `snapshots/${id}/manifest.pb`;
    await manifests.write(manifestPath, encodeManifest({ snapshotId: id, vne: { name: 'blue', vni: 100, vms: [] }, epoch: 1, mode: 'SNAPSHOT_MODE_PRECOPY', artefacts, vms: [] }));
    const vneDefinition = vneRecord({ generation: 1, epoch: 1, state: 'VNE_STATE_RUNNING', createdUnixMs: T0, updatedUnixMs: T0 });
    catalog.insertSnapshot({ id, vne: 'blue', epoch: 1, generation: 1, mode: 'SNAPSHOT_MODE_PRECOPY', description: '', storePrefix: `snapshots/${id}/`, agents: ['h1'], vneDefinition, createdUnixMs: T0 });
    catalog.completeSnapshot(id, { completedUnixMs: T0 + 1, manifestPath, artefacts, vms: [], lostFrames: 0, sizeBytes: artefacts.reduce((n, a) => n + a.size, 0) });
    return artefacts;
  };
  return { clock, catalog, manifests, ops, snapshot, record };
}

const collect = () => {
  const events: SnapshotEvent[] = [];
  return { events, sink: (e: SnapshotEvent) => events.push(e) };
};

const notes = (events: readonly { note?: string }[]): string[] => events.filter((e) => e.note !== undefined).map((e) => e.note as string);

describe('store ops: snapshot verify, store stats, store gc', () => {
  describe('verify, content-addressed store', () => {
    it('re-reads every chunk: ok is recorded with its time, progress goes from 0 to the total', async () => {
      const store = new CasStore(new MemoryObjects(), { chunker: SMALL });
      const r = rig(store);
      await r.snapshot('s1', { 'vm1.mem': bytes(40 * KiB, 1), 'vm1.0.chan': bytes(3 * KiB, 2) });
      r.clock.advance(5000);
      const { events, sink } = collect();
      const rec = await r.ops.verifySnapshot('s1', sink);
      assert.equal(rec.verifiedUnixMs, T0 + 5000);
      assert.deepEqual(rec.verifyProblems, []);
      assert.deepEqual(r.catalog.getSnapshot('s1')?.verifyProblems, []);
      assert.equal(r.catalog.getSnapshot('s1')?.verifiedUnixMs, T0 + 5000);
      const progress = events.filter((e) => e.vm).map((e) => e.vm);
      assert.deepEqual(progress[0], { vm: 'store', host: '', phase: 'PHASE_VERIFY', bytesDone: 0, bytesTotal: 43 * KiB, fraction: 0, phaseDone: false });
      assert.deepEqual(progress[progress.length - 1], { vm: 'store', host: '', phase: 'PHASE_VERIFY', bytesDone: 43 * KiB, bytesTotal: 43 * KiB, fraction: 1, phaseDone: true });
      assert.ok(progress.length > 3, 'progress while reading the chunks');
      assert.deepEqual(notes(events), ['verifying 2 artefacts (43.0 KiB) in the store', 'verified 2 artefacts (43.0 KiB) in 0.00 ms: ok']);
      assert.equal(events[events.length - 1]?.done?.id, 's1');
      assert.equal(verifiedLine(rec), '  verified: ok at 2027-01-15 08:00:05Z\n');
    });

    it('a corrupt chunk is a problem naming the artefact and the chunk; recorded, and shown by snapshot show', async () => {
      const objects = new MemoryObjects();
      const store = new CasStore(objects, { chunker: SMALL });
      const r = rig(store);
      await r.snapshot('s1', { 'vm1.mem': bytes(40 * KiB, 1), 'vm1.0.chan': bytes(3 * KiB, 2) });
      const idx = decodeIndex(await objects.get(indexKey('snapshots/s1/vm1.mem')), 'snapshots/s1/vm1.mem');
      const bad = idx.chunks[2]?.sha256 as string;
      objects.corrupt(chunkKey(bad));
      const { events, sink } = collect();
      const rec = await r.ops.verifySnapshot('s1', sink);
      assert.equal(rec.verifyProblems.length, 1);
      const p = rec.verifyProblems[0] as string;
      assert.match(p, new RegExp(`^artefact snapshots/s1/vm1\\.mem: chunk 3 of ${idx.chunks.length} \\(${bad}\\) is corrupt`));
      assert.deepEqual(notes(events).filter((n) => n.startsWith('problem: ')), [`problem: ${p}`]);
      assert.deepEqual(r.catalog.getSnapshot('s1')?.verifyProblems, [p]);
      assert.equal(verifiedLine(rec), `  verified: FAILED at 2027-01-15 08:00:00Z: ${p}\n`);
      assert.ok(renderSnapshot(rec).endsWith(`  manifest snapshots/s1/manifest.pb\n  verified: FAILED at 2027-01-15 08:00:00Z: ${p}\n`));
    });

    it('a missing chunk, a missing artefact and a corrupt manifest are each a problem, all reported', async () => {
      const objects = new MemoryObjects();
      const store = new CasStore(objects, { chunker: SMALL });
      const r = rig(store);
      await r.snapshot('s1', { 'a.mem': bytes(20 * KiB, 1), 'b.mem': bytes(20 * KiB, 3) });
      const idx = decodeIndex(await objects.get(indexKey('snapshots/s1/a.mem')), 'snapshots/s1/a.mem');
      await objects.delete(chunkKey(idx.chunks[0]?.sha256 as string));
      await store.delete('snapshots/s1/b.mem');
      const m = r.manifests.files.get('snapshots/s1/manifest.pb') as Buffer;
      m.writeUInt8(m.readUInt8(m.length - 1) ^ 0xff, m.length - 1);
      const rec = await r.ops.verifySnapshot('s1', () => undefined);
      assert.equal(rec.verifyProblems.length, 3);
      assert.match(rec.verifyProblems[0] as string, /^manifest snapshots\/s1\/manifest\.pb/);
      assert.match(rec.verifyProblems[1] as string, new RegExp(`^artefact snapshots/s1/a\\.mem: chunk 1 of ${idx.chunks.length} \\(${idx.chunks[0]?.sha256}\\) is missing from the store`));
      assert.equal(rec.verifyProblems[2], 'artefact snapshots/s1/b.mem is not in the store');
      assert.equal(verifiedLine(rec).split('\n').length, 4, 'one line, then "also:" for the others');
    });

    it("a block image is checked against its recorded digest, its chunk list's SHA-256: ok, then a changed chunk and a swapped index are problems", async () => {
      const objects = new MemoryObjects();
      const store = new CasStore(objects, { pack: { targetBytes: 32 * KiB, compress: 'none' } });
      const r = rig(store);
      const image = async (p: string, seed: number): Promise<StoredArtefact> => {
        const w = await store.createBlockImage(p, { size: 16 * 4 * KiB, blockSize: 4 * KiB });
        for (let i = 0; i < 16; i++) await w.putBlock(i, bytes(4 * KiB, seed + i));
        await w.setTail(bytes(KiB, seed));
        return w.commit();
      };
      const mem = await image('snapshots/s1/vm1.mem', 1);
      await r.record('s1', [mem, await store.put('snapshots/s1/vm1.0.chan', bytes(3 * KiB, 2))]);
      assert.deepEqual((await r.ops.verifySnapshot('s1', () => undefined)).verifyProblems, []);
      const other = await image('snapshots/s0/vm1.mem', 100);
      await store.link(other.path, mem.path);
      assert.deepEqual((await r.ops.verifySnapshot('s1', () => undefined)).verifyProblems, [
        `artefact ${mem.path}: its index lists other chunks than when it was written (chunk list SHA-256 ${other.sha256}, the manifest says ${mem.sha256}): the index was replaced or forged`,
      ]);
      // Without the chunk list recorded, the digest itself is compared.
      await r.record('s2', [{ ...mem, attributes: { [DIGEST_ATTRIBUTE]: DIGEST_CHUNK_LIST } }]);
      assert.deepEqual((await r.ops.verifySnapshot('s2', () => undefined)).verifyProblems, [`artefact ${mem.path}: chunk list SHA-256 ${other.sha256} in the store, the manifest says ${mem.sha256}`]);
      await r.record('s0', [other]);
      const idx = decodeIndex(await objects.get(indexKey(other.path)), other.path);
      objects.corrupt(packKey(idx.chunks[3]?.pack as string));
      const problems = (await r.ops.verifySnapshot('s0', () => undefined)).verifyProblems;
      assert.equal(problems.length, 1);
      assert.match(problems[0] as string, /^artefact snapshots\/s0\/vm1\.mem: chunk \d+ of 17 \([0-9a-f]{64}\) is corrupt/);
    });

    it('refuses a snapshot that is not complete, and names an unknown one', async () => {
      const r = rig(new CasStore(new MemoryObjects()));
      const vneDefinition = vneRecord({ generation: 1, epoch: 1, state: 'VNE_STATE_RUNNING', createdUnixMs: T0, updatedUnixMs: T0 });
      r.catalog.insertSnapshot({ id: 's9', vne: 'blue', epoch: 1, generation: 1, mode: 'SNAPSHOT_MODE_PRECOPY', description: '', storePrefix: 'snapshots/s9/', agents: [], vneDefinition, createdUnixMs: T0 });
      r.catalog.abortSnapshot('s9', 'boom', T0);
      assert.equal(await failureOf(r.ops.verifySnapshot('s9', () => undefined)), 'ERR_FAILED_PRECONDITION: snapshot s9 is aborted: only a complete snapshot can be verified');
      assert.equal(await failureOf(r.ops.verifySnapshot('nope', () => undefined)), 'ERR_NOT_FOUND: snapshot "nope" does not exist');
      assert.equal(r.catalog.getSnapshot('s9')?.verifiedUnixMs, 0);
    });

    it('a store that cannot be reached fails the verify and records nothing', async () => {
      const objects = new MemoryObjects();
      const store = new CasStore(objects, { chunker: SMALL });
      const r = rig(store);
      await r.snapshot('s1', { 'a.mem': bytes(8 * KiB, 1) });
      objects.get = async () => {
        throw new (await import('../../proto/core/errors')).VnsnapError('ERR_UNAVAILABLE', 'memory: down');
      };
      await assert.rejects(r.ops.verifySnapshot('s1', () => undefined), (e: unknown) => isVnsnapError(e, 'ERR_UNAVAILABLE'));
      assert.equal(r.catalog.getSnapshot('s1')?.verifiedUnixMs, 0);
    });
  });

  describe('verify, store of whole files', () => {
    let dir: string;
    beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-storeops-'))));
    afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

    it('ok, then a flipped byte in a file is a SHA-256 mismatch naming the artefact', async () => {
      const store = new LocalDirStore(dir);
      const r = rig(store);
      const arts = await r.snapshot('s1', { 'vm1.mem': bytes(10 * KiB, 5) });
      assert.deepEqual((await r.ops.verifySnapshot('s1', () => undefined)).verifyProblems, []);
      const f = path.join(dir, 'snapshots/s1/vm1.mem');
      const b = fs.readFileSync(f);
      b.writeUInt8(b.readUInt8(100) ^ 1, 100);
      fs.writeFileSync(f, b);
      const rec = await r.ops.verifySnapshot('s1', () => undefined);
      assert.equal(rec.verifyProblems.length, 1);
      assert.match(rec.verifyProblems[0] as string, new RegExp(`^artefact snapshots/s1/vm1\\.mem: SHA-256 [0-9a-f]{64} in the store, the manifest says ${arts[0]?.sha256}$`));
    });
  });

  describe('stats', () => {
    it('content-addressed: chunks, stored and logical bytes, dedup ratio; rendered exactly', async () => {
      const store = new CasStore(new MemoryObjects(), { chunker: SMALL });
      const r = rig(store);
      const same = bytes(32 * KiB, 7);
      await r.snapshot('s1', { 'a.mem': same });
      await r.snapshot('s2', { 'a.mem': same });
      const st = await r.ops.stats('local /srv/vnsnap');
      assert.equal(st.kind, 'memory');
      assert.equal(st.storedBytes, 32 * KiB);
      assert.equal(st.logicalBytes, 64 * KiB);
      assert.equal(st.artefacts, 2);
      assert.equal(st.dedupRatio, 2);
      assert.ok(Number(st.chunks) > 1);
      assert.equal(
        renderStoreStats({ ...st, storedBytes: 32 * KiB, logicalBytes: 64 * KiB, artefacts: 2, chunks: 9, dedupRatio: 2 } as never),
        'store        local /srv/vnsnap\nstored       32.0 KiB\nchunks       9\nartefacts    2\nlogical      64.0 KiB\ndedup ratio  2.00\n',
      );
    });

    it('whole files: logical = stored, ratio 1, no chunk count ("-")', async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-storeops-'));
      try {
        const r = rig(new LocalDirStore(dir));
        await r.snapshot('s1', { 'a.mem': bytes(3 * KiB, 1), 'b.mem': bytes(1 * KiB, 2) });
        const st = await r.ops.stats(`files ${dir}`);
        assert.deepEqual(st, { kind: 'files', store: `files ${dir}`, storedBytes: 4 * KiB, chunks: 0, artefacts: 2, logicalBytes: 4 * KiB, dedupRatio: 1 });
        assert.equal(renderStoreStats(st as never), `store        files ${dir}\nstored       4.0 KiB\nchunks       -\nartefacts    2\nlogical      4.0 KiB\ndedup ratio  1.00\n`);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('gc', () => {
    it('frees exactly the chunks only the deleted snapshot named; the other two still verify', async () => {
      const objects = new MemoryObjects();
      objects.clock = () => Date.now() - 60_000; // every object a minute old: past a grace of 0
      const store = new CasStore(objects, { chunker: SMALL });
      const r = rig(store);
      const shared = bytes(24 * KiB, 11);
      await r.snapshot('s1', { 'a.mem': Buffer.concat([shared, bytes(8 * KiB, 1)]) });
      await r.snapshot('s2', { 'a.mem': Buffer.concat([shared, bytes(16 * KiB, 2)]) });
      await r.snapshot('s3', { 'a.mem': Buffer.concat([shared, bytes(8 * KiB, 3)]) });
      const chunksOf = async (id: string): Promise<Set<string>> => new Set(decodeIndex(await objects.get(indexKey(`snapshots/${id}/a.mem`)), `snapshots/${id}/a.mem`).chunks.map((c) => chunkKey(c.sha256)));
      const [c1, c2, c3] = [await chunksOf('s1'), await chunksOf('s2'), await chunksOf('s3')];
      const only2 = [...c2].filter((k) => !c1.has(k) && !c3.has(k));
      assert.ok(only2.length > 0 && only2.length < c2.size, 's2 shares some chunks and has some of its own');
      const onlyBytes = (await Promise.all(only2.map((k) => objects.get(k)))).reduce((n, b) => n + b.length, 0);
      const totalBytes = (await objects.listInfo('chunks/')).reduce((n, o) => n + o.size, 0);
      await store.deleteByPrefix('snapshots/s2/');
      r.catalog.deleteSnapshot('s2');
      const events: GcEvent[] = [];
      const res = await r.ops.collectGarbage(0, '"alice"', (e) => events.push(e), 'local /x');
      assert.equal(res.chunksDeleted, only2.length);
      assert.equal(res.bytesFreed, onlyBytes);
      assert.equal(res.graceMs, 0);
      for (const k of only2) assert.equal(objects.keys().includes(k), false, `${k} freed`);
      for (const k of [...c1, ...c3]) assert.equal(objects.keys().includes(k), true, `${k} kept`);
      assert.deepEqual(notes(events), [
        'collecting garbage in local /x: chunks no snapshot names and older than 0.00 ms are freed',
        'marking: 2 indexes to read',
        `${c1.size + c3.size + only2.length - [...c1].filter((k) => c3.has(k)).length} chunks in the store (${(totalBytes / 1024).toFixed(1)} KiB)`,
        'sweeping: no writer left; reading the indexes written since the mark',
      ]);
      assert.equal(res.indexes, 2);
      assert.deepEqual(events[events.length - 1]?.done, res);
      assert.deepEqual((await r.ops.verifySnapshot('s1', () => undefined)).verifyProblems, []);
      assert.deepEqual((await r.ops.verifySnapshot('s3', () => undefined)).verifyProblems, []);
      assert.equal(renderGcResult({ ...res, elapsedMs: 1234 } as never), `freed ${only2.length} chunks (${(onlyBytes / 1024).toFixed(1)} KiB) in 1.234 s; kept ${res.chunksKept} (grace 0s)\n`);
    });

    it('on a local directory (real files): 3 snapshots, the middle deleted, gc --grace 0 frees only its own chunks', async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-storeops-'));
      try {
        const store = new CasStore(new LocalObjects(dir), { chunker: SMALL });
        const r = rig(store);
        const shared = bytes(24 * KiB, 21);
        for (const [id, seed] of [['s1', 1], ['s2', 2], ['s3', 3]] as const) await r.snapshot(id, { 'a.mem': Buffer.concat([shared, bytes(12 * KiB, seed)]) });
        const files = (sub: string): string[] => (fs.readdirSync(path.join(dir, sub), { recursive: true }) as string[]).filter((f) => fs.statSync(path.join(dir, sub, f)).isFile());
        // Every chunk written two minutes ago: past the grace, however fast this machine is.
        const old = new Date(Date.now() - 120_000);
        for (const f of files('chunks')) fs.utimesSync(path.join(dir, 'chunks', f), old, old);
        const before = new Set(files('chunks'));
        const named = async (id: string): Promise<Set<string>> => new Set(decodeIndex(fs.readFileSync(path.join(dir, indexKey(`snapshots/${id}/a.mem`))), `snapshots/${id}/a.mem`).chunks.map((c) => chunkKey(c.sha256).slice('chunks/'.length)));
        const [n1, n2, n3] = [await named('s1'), await named('s2'), await named('s3')];
        const own2 = [...n2].filter((k) => !n1.has(k) && !n3.has(k)).sort();
        await store.deleteByPrefix('snapshots/s2/');
        r.catalog.deleteSnapshot('s2');
        const res = await r.ops.collectGarbage(0, '"alice"', () => undefined, `local ${dir}`);
        assert.equal(res.chunksDeleted, own2.length);
        assert.deepEqual([...before].filter((f) => !files('chunks').includes(f)).sort(), own2);
        assert.deepEqual((await r.ops.verifySnapshot('s1', () => undefined)).verifyProblems, []);
        assert.deepEqual((await r.ops.verifySnapshot('s3', () => undefined)).verifyProblems, []);
        const st = await r.ops.stats(`local ${dir}`);
        assert.deepEqual([st.kind, st.artefacts, st.chunks], ['local', 2, before.size - own2.length]);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it('a second collection while one runs is refused, naming who runs it; after it, a new one runs', async () => {
      const store = new CasStore(new MemoryObjects());
      const r = rig(store);
      const first = r.ops.collectGarbage(undefined, '"alice"', () => undefined, 'local /x');
      assert.deepEqual(r.ops.gcRunning, { who: '"alice"', sinceMs: T0 });
      assert.equal(await failureOf(r.ops.collectGarbage(0, '"bob"', () => undefined, 'local /x')), 'ERR_FAILED_PRECONDITION: a garbage collection is already running (started by "alice" at 2027-01-15T08:00:00.000Z); try again when it is done');
      assert.equal((await first).graceMs, 60 * 60_000);
      assert.equal(r.ops.gcRunning, null);
      assert.equal((await r.ops.collectGarbage(0, '"bob"', () => undefined, 'local /x')).chunksDeleted, 0);
    });

    it('progress view: every call passes through; a note per 1000 chunks freed; none for a failed call', async () => {
      const objects = new MemoryObjects();
      for (let i = 0; i < 2001; i++) await objects.put(`chunks/aa/${String(i).padStart(64, '0')}`, Buffer.alloc(2));
      const seen: string[] = [];
      const view = withGcProgress(objects, (n) => seen.push(n));
      assert.equal((await view.listInfo('chunks/')).length, 2001);
      for (const k of await view.list('chunks/')) await view.delete(k);
      assert.deepEqual(seen, ['2001 chunks in the store (3.9 KiB)', 'freed 1000 chunks so far (2.0 KiB)', 'freed 2000 chunks so far (3.9 KiB)']);
      assert.deepEqual(await objects.list('chunks/'), []);
      objects.delete = async () => {
        throw new Error('boom');
      };
      await assert.rejects(view.delete('chunks/aa/x'), /boom/);
      assert.equal(seen.length, 3);
      // Packs: how many are stored, each pack a repack writes, every 10 deleted.
      const packs = new MemoryObjects();
      const ids = Array.from({ length: 21 }, (_, i) => String(i).padStart(64, '0'));
      for (const id of ids) await packs.put(`packs/00/${id}`, Buffer.alloc(1024));
      const pseen: string[] = [];
      const pview = withGcProgress(packs, (n) => pseen.push(n));
      await pview.listInfo('packs/');
      await pview.put(`packs/ff/${'f'.repeat(64)}`, Buffer.alloc(2048));
      await pview.put(`packtabs/ff/${'f'.repeat(64)}`, Buffer.alloc(10));
      for (const id of ids) await pview.delete(`packs/00/${id}`);
      assert.deepEqual(pseen, ['21 packs in the store (21.0 KiB)', 'repacking: wrote a pack of 2.0 KiB', 'deleted 10 packs so far (10.0 KiB)', 'deleted 20 packs so far (20.0 KiB)']);
      const none: string[] = [];
      await withGcProgress(new MemoryObjects(), (n) => none.push(n)).listInfo('packs/');
      assert.deepEqual(none, [], 'no packs: no note');
    });

    it('a store of whole files has nothing to collect: refused in one line', async () => {
      const r = rig(new LocalDirStore(path.join(os.tmpdir(), 'vnsnap-storeops-unused')));
      assert.equal(await failureOf(r.ops.collectGarbage(0, '"alice"', () => undefined, 'files /srv/s')), 'ERR_FAILED_PRECONDITION: the store keeps every artefact as a whole file (layout "files"): there is nothing to collect (deleting a snapshot frees its space at once)');
      assert.equal(r.ops.deleteNote(), '');
      assert.equal(rig(new CasStore(new MemoryObjects())).ops.deleteNote(), 'its chunks no other snapshot shares are freed by the next `vnsnap store gc`');
    });
  });

  describe('bytes added', () => {
    it('a snapshot stores the sum of its artefacts\' stored bytes; "-" when not known', () => {
      const a = (storedBytes: number): Artefact__Output => ({ path: 'p', size: 10, sha256: '', kind: 'ARTEFACT_KIND_MEMORY', owner: 'a', attributes: {}, storedBytes });
      assert.equal(storedBytesOf([a(3), a(0), a(7)]), 10);
      assert.equal(addedBytes({ storedBytes: 3 * KiB, storedBytesKnown: true }), '3.0 KiB');
      assert.equal(addedBytes({ storedBytes: 0, storedBytesKnown: true }), '0 B');
      assert.equal(addedBytes({ storedBytes: 0, storedBytesKnown: false }), '-');
    });

    it('the catalog keeps it (not known for a row older than migration 5)', async () => {
      const r = rig(new CasStore(new MemoryObjects(), { chunker: SMALL }));
      const same = bytes(20 * KiB, 4);
      await r.snapshot('s1', { 'a.mem': same });
      await r.snapshot('s2', { 'a.mem': same, 'b.mem': bytes(2 * KiB, 5) });
      assert.equal(r.catalog.getSnapshot('s1')?.storedBytes, 20 * KiB);
      assert.equal(r.catalog.getSnapshot('s2')?.storedBytes, 2 * KiB, 'only the new chunks');
      assert.equal(r.catalog.getSnapshot('s2')?.sizeBytes, 22 * KiB);
      r.catalog.db.prepare('UPDATE snapshots SET stored_bytes = NULL WHERE id = ?').run('s1');
      assert.deepEqual([r.catalog.getSnapshot('s1')?.storedBytes, r.catalog.getSnapshot('s1')?.storedBytesKnown], [0, false]);
      assert.equal(r.catalog.getSnapshot('s2')?.storedBytesKnown, true);
    });

    it('--grace takes 0 and durations; anything else is a usage error', () => {
      assert.equal(parseGrace('0'), 0);
      assert.equal(parseGrace('15m'), 15 * 60_000);
      assert.equal(parseGrace('1h30m'), 90 * 60_000);
      assert.throws(() => parseGrace('soon'), /--grace expects a duration such as 0, 30s, 15m or 1h, got "soon"/);
    });
  });
});
