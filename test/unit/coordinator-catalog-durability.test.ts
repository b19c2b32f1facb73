/**
 * The catalog's durability off the event loop (catalog-durability.ts) and the snapshot
 * sequencer's use of it: commits never fsync on the loop, a barrier covers every transaction
 * committed before it (concurrent barriers share fsyncs), checkpoints run in the worker, errors
 * are typed; the commit goes to every agent before the catalog's bookkeeping, waits for the
 * snapshot's record to be durable, and COMPLETE is reported only after a barrier.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { isVnsnapError, VnsnapError } from '../../proto/core/errors';
import type { SnapshotEvent } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import { ManualClock } from '../../proto/core/clock';
import { Catalog } from '../../coordinator/catalog';
import { CatalogDurability } from '../../coordinator/catalog-durability';
import { SnapshotSequencer } from '../../coordinator/snapshot-sequencer';
import { FakeAgents, flush, log, MemoryManifestStore, ok } from './coordinator-fakes';
import { sleep, until } from '../support/wait';

const T0 = 1_900_000_000_000;

function addVne(c: Catalog): void {
  c.insertVne({
    name: 'dur',
    vni: 31,
    vms: [
      { name: 'a1', host: 'h1', macs: ['52:54:00:00:31:01'], driver: { sim: { memoryMib: 1, dirtyRateMibS: 0, frameRateHz: 0, peers: [] }, kind: 'sim' } },
      { name: 'b1', host: 'h2', macs: ['52:54:00:00:31:02'], driver: { sim: { memoryMib: 1, dirtyRateMibS: 0, frameRateHz: 0, peers: [] }, kind: 'sim' } },
    ],
    generation: 1,
    epoch: 3,
    state: 'VNE_STATE_RUNNING',
    createdUnixMs: T0,
    updatedUnixMs: T0,
    placement: { a1: 'h1', b1: 'h2' },
  });
}

/** A sequencer over `catalog`; the fake agents answer Commit and Persist as real ones would. */
function sequencer(catalog: Catalog) {
  const clock = new ManualClock(T0);
  const agents = new FakeAgents(['h1', 'h2']);
  const manifests = new MemoryManifestStore();
  const seq = new SnapshotSequencer({ agents, catalog, manifests, clock, log, version: '0.1.0', newSnapshotId: (vne, e) => `${vne}-d${e}` });
  const events: SnapshotEvent[] = [];
  /** At each Commit sent: the catalog's state of the snapshot and the state events emitted so far. */
  const atCommit: { agent: string; catalogState: string; stateEvents: string[] }[] = [];
  agents
    .on('snapshotBegin', ok())
    .on('snapshotCommit', (agent, body) => {
      const id = body.snapshotCommit?.snapshotId as string;
      atCommit.push({ agent, catalogState: catalog.getSnapshot(id)?.state ?? '', stateEvents: events.filter((e) => e.state).map((e) => String(e.state)) });
      const vm = agent === 'h1' ? 'a1' : 'b1';
      return ok({ payload: 'commit', commit: { vms: [{ name: vm, host: '', pauseMs: 1, cutUnixUs: T0 * 1000, phases: [], memoryBytes: 0, diskBytes: 0, channelFrames: 0 }] } });
    })
    .on('snapshotPersist', (agent, body) => {
      const id = body.snapshotPersist?.snapshotId as string;
      const vm = agent === 'h1' ? 'a1' : 'b1';
      return ok({ payload: 'persist', persist: { artefacts: [{ path: `snapshots/${id}/${vm}.mem`, size: 10, sha256: 'cc'.repeat(32), kind: 'ARTEFACT_KIND_MEMORY', owner: vm, attributes: {}, storedBytes: 10 }], vms: [], lostFrames: 0 } });
    });
  return { seq, agents, manifests, events, atCommit, start: () => seq.start({ vne: 'dur', mode: 'SNAPSHOT_MODE_BACKGROUND' }, (e) => events.push(e)) };
}

describe('coordinator catalog durability', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-catdur-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('commits do not fsync (synchronous=NORMAL, no autocheckpoint); a barrier fsyncs the WAL once for every caller waiting', async () => {
    const c = new Catalog(path.join(dir, 'c.db'), { now: () => T0, syncIntervalMs: 0 });
    try {
      assert.equal(c.db.pragma('synchronous', { simple: true }), 1, 'NORMAL');
      assert.equal(c.db.pragma('wal_autocheckpoint', { simple: true }), 0);
      addVne(c);
      const first = c.durable();
      // Ten more barriers while the first fsync is in flight: they share one more fsync.
      const more = Array.from({ length: 10 }, () => c.durable());
      await Promise.all([first, ...more]);
      assert.equal(c.durability.stats.barriers, 11);
      assert.equal(c.durability.stats.fsyncs, 2);
      // A read after a write sees it (same connection), before and after the barrier.
      c.updateVne('dur', { epoch: 9 });
      assert.equal(c.getVne('dur')?.epoch, 9);
      await c.durable();
      assert.equal(c.getVne('dur')?.epoch, 9);
      assert.equal(c.durability.stats.fsyncs, 3);
    } finally {
      c.close();
    }
  });

  it('with nothing awaited, writes reach stable storage within syncIntervalMs: a barrier runs only after a change', async () => {
    const c = new Catalog(path.join(dir, 'c.db'), { now: () => T0, syncIntervalMs: 20 });
    try {
      addVne(c);
      await until('a periodic barrier after the write', () => c.durability.stats.fsyncs >= 1, 5000);
      const n = c.durability.stats.barriers;
      await sleep(100); // time itself is what is tested: no change, no barrier
      assert.equal(c.durability.stats.barriers, n);
      c.updateVne('dur', { epoch: 5 });
      await until('a periodic barrier after the second write', () => c.durability.stats.barriers > n, 5000);
    } finally {
      c.close();
    }
  });

  it('an in-memory catalog has nothing to make durable: barriers resolve without an fsync', async () => {
    const c = new Catalog(':memory:');
    assert.equal(c.volatile, true);
    await c.durable();
    assert.equal(c.durability.stats.fsyncs, 0);
    c.close();
  });

  it('a WAL past checkpointBytes is checkpointed by the worker thread into the database file, which also restarts the WAL', async () => {
    const file = path.join(dir, 'c.db');
    const c = new Catalog(file, { now: () => T0, checkpointBytes: 1 });
    try {
      addVne(c);
      for (let i = 0; i < 50; i++) c.updateVne('dur', { epoch: 10 + i });
      assert.ok(fs.statSync(`${file}-wal`).size > 0);
      await c.durable();
      await c.durability.idle();
      assert.equal(c.durability.stats.checkpoints, 1);
      // The worker restarted the WAL itself (one frame: its own write), so the loop's next commit
      // appends instead of restarting it (and fsyncing its header).
      const probe = new Database(file);
      assert.deepEqual(probe.pragma('wal_checkpoint(PASSIVE)'), [{ busy: 0, log: 1, checkpointed: 1 }]);
      probe.close();
      // Everything the WAL held is in the database file: a copy of that file alone has it.
      fs.copyFileSync(file, path.join(dir, 'copy.db'));
      const copy = new Catalog(path.join(dir, 'copy.db'));
      assert.equal(copy.getVne('dur')?.epoch, 59);
      copy.close();
    } finally {
      c.close();
    }
  });

  it('a barrier that cannot fsync is ERR_DATA_LOSS naming the catalog; after close it is ERR_STATE', async () => {
    const d = new CatalogDurability(path.join(dir, 'gone', 'x.db'));
    await assert.rejects(d.barrier(), (e: unknown) => isVnsnapError(e) && e.code === 'ERR_DATA_LOSS' && /cannot make the catalog .*gone\/x\.db durable: .*ENOENT/.test(e.message));
    await d.close();
    await assert.rejects(d.barrier(), (e: unknown) => isVnsnapError(e) && e.code === 'ERR_STATE');
  });

  it('the commit goes to every agent before the catalog records COMMITTING and before the COMMITTING event', async () => {
    const c = new Catalog(':memory:', { now: () => T0 });
    addVne(c);
    const h = sequencer(c);
    const run = h.start();
    const done = await run.done;
    assert.equal(done.state, 'SNAPSHOT_STATE_COMPLETE');
    assert.deepEqual(
      h.atCommit.map((x) => [x.agent, x.catalogState, x.stateEvents.join(',')]),
      [
        ['h1', 'SNAPSHOT_STATE_PRECOPY', 'SNAPSHOT_STATE_PRECOPY'],
        ['h2', 'SNAPSHOT_STATE_PRECOPY', 'SNAPSHOT_STATE_PRECOPY'],
      ],
    );
    assert.deepEqual(h.events.filter((e) => e.state).map((e) => e.state), ['SNAPSHOT_STATE_PRECOPY', 'SNAPSHOT_STATE_COMMITTING', 'SNAPSHOT_STATE_PERSISTING', 'SNAPSHOT_STATE_COMPLETE']);
    c.close();
  });

  it('on a file catalog the commit waits for the snapshot record to be durable, and COMPLETE follows a barrier', async () => {
    const c = new Catalog(path.join(dir, 'c.db'), { now: () => T0 });
    try {
      addVne(c);
      const h = sequencer(c);
      const fsyncs0 = c.durability.stats.fsyncs;
      const run = h.start();
      // Background mode: both VMs are ready as soon as Begin answers (microtasks), the fsync is not.
      await Promise.resolve();
      await Promise.resolve();
      assert.equal(run.state, 'SNAPSHOT_STATE_PRECOPY');
      assert.deepEqual(h.agents.names(), ['h1:snapshotBegin', 'h2:snapshotBegin']);
      const done = await run.done;
      assert.equal(done.state, 'SNAPSHOT_STATE_COMPLETE');
      assert.ok(c.durability.stats.fsyncs >= fsyncs0 + 2, `a barrier for the record and one for COMPLETE (${c.durability.stats.fsyncs - fsyncs0})`);
      assert.deepEqual(h.agents.names(), ['h1:snapshotBegin', 'h2:snapshotBegin', 'h1:snapshotCommit', 'h2:snapshotCommit', 'h1:snapshotPersist', 'h2:snapshotPersist']);
    } finally {
      c.close();
    }
  });

  it('a failed barrier before COMPLETE aborts the snapshot with ERR_DATA_LOSS and removes its manifest', async () => {
    const c = new Catalog(':memory:', { now: () => T0 });
    addVne(c);
    const h = sequencer(c);
    let calls = 0;
    c.durability.barrier = () => (++calls === 1 ? Promise.reject(new VnsnapError('ERR_DATA_LOSS', 'cannot make the catalog c.db durable: EIO')) : Promise.resolve());
    const run = h.start();
    const done = await run.done;
    assert.equal(done.state, 'SNAPSHOT_STATE_ABORTED');
    assert.equal(done.error, 'cannot make the catalog c.db durable: EIO [ERR_DATA_LOSS]');
    assert.equal(h.manifests.files.size, 0);
    assert.equal(c.getVne('dur')?.epoch, 4);
    await flush();
    c.close();
  });
});
