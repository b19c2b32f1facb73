/**
 * The snapshot scheduler (scheduler.ts) over the real service, sequencer and catalog with fake
 * agents and a ManualClock: due → snapshot → prune; a restart neither repeats a run nor runs
 * once per missed interval; a busy or stopped VNE is skipped with the reason recorded.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isVnsnapError } from '../../proto/core/errors';
import { ManualClock } from '../../proto/core/clock';
import { denial } from '../../coordinator/authz';
import { Catalog } from '../../coordinator/catalog';
import { EventBus } from '../../coordinator/events';
import { RestoreSequencer } from '../../coordinator/restore-sequencer';
import { CoordinatorServiceImpl } from '../../coordinator/service';
import { SnapshotSequencer } from '../../coordinator/snapshot-sequencer';
import { FakeAgents, log, MemoryManifestStore, ok } from './coordinator-fakes';
import { CasStore } from '../../proto/store/cas-store';
import { MemoryObjects } from '../support/memory-objects';
import { simVmSpec, vneRecord } from '../support/vne-record';

const M = 60_000;
const H = 60 * M;
const T0 = Date.UTC(2027, 0, 15, 0, 30);

const vm = simVmSpec;

function setup(file = ':memory:', clock = new ManualClock(T0)) {
  const catalog = new Catalog(file, { now: () => clock.now() });
  const agents = new FakeAgents(['h1', 'h2']);
  const deps = { agents, catalog, manifests: new MemoryManifestStore(), store: new CasStore(new MemoryObjects()), clock, log, events: new EventBus(() => clock.now()), version: '0.1.0' };
  const snapshots = new SnapshotSequencer({ ...deps, newSnapshotId: (v, e) => `${v}-s${e}` });
  const restores = new RestoreSequencer({ ...deps, newRestoreId: (s) => `r-${s}` });
  const svc = new CoordinatorServiceImpl({ ...deps, store: new CasStore(new MemoryObjects()), snapshots, restores });
  // Persist: a memory and a channel artefact per VM of the agent, under the snapshot's id.
  agents.on('snapshotPersist', (agent, body) => {
    const id = body.snapshotPersist?.snapshotId ?? '';
    const v = agent === 'h1' ? 'vm1' : 'vm2';
    const artefacts = [
      { path: `snapshots/${id}/${v}.mem`, size: 10, sha256: 'aa'.repeat(32), kind: 'ARTEFACT_KIND_MEMORY' as const, owner: v, attributes: {}, storedBytes: 0 },
      { path: `snapshots/${id}/${v}/port0.chan`, size: 5, sha256: 'bb'.repeat(32), kind: 'ARTEFACT_KIND_CHANNEL' as const, owner: `${v}.0`, attributes: {}, storedBytes: 0 },
    ];
    return ok({ payload: 'persist', persist: { artefacts, vms: [], lostFrames: 0 } });
  });
  return { clock, catalog, agents, svc };
}

async function defineBlue(s: ReturnType<typeof setup>, start = true) {
  const vne = vneRecord({ vms: [vm('vm1', 'h1', '52:54:00:00:00:01'), vm('vm2', 'h2', '52:54:00:00:00:02')] });
  await s.svc.defineVne({ vne });
  if (start) await s.svc.startVne({ name: 'blue' });
}

const manual = (s: ReturnType<typeof setup>) => s.svc.createSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_BACKGROUND', precopyDeadlineMs: 0, timeoutMs: 0, description: 'by hand' }, () => undefined);

const policy = { keepLast: 2, keepHourly: 0, keepDaily: 0, mode: 'SNAPSHOT_MODE_BACKGROUND' as const };

/** Advance the clock and wait for the runs that fell due. */
async function advance(s: ReturnType<typeof setup>, ms: number) {
  s.clock.advance(ms);
  await s.svc.scheduler.idle();
}

const ids = (s: ReturnType<typeof setup>) => s.catalog.listSnapshots('blue').map((x) => `${x.id}:${x.state.replace('SNAPSHOT_STATE_', '')}`);

describe('scheduler: snapshots on time, then pruning', () => {
  it('takes a snapshot each interval and keeps the last 2 of its own, never the manual one', async () => {
    const s = setup();
    await defineBlue(s);
    const m = await manual(s);
    assert.equal(m.id, 'blue-s1', m.error);
    assert.equal(m.state, 'SNAPSHOT_STATE_COMPLETE', m.error);
    const set = await s.svc.schedules.setSchedule({ vne: 'blue', everyMs: H, ...policy });
    assert.equal(set.nextDueUnixMs, T0 + H);
    s.svc.scheduler.start();

    await advance(s, H - 1);
    assert.deepEqual(ids(s), ['blue-s1:COMPLETE']);
    await advance(s, 1);
    assert.deepEqual(ids(s), ['blue-s1:COMPLETE', 'blue-s2:COMPLETE']);
    const first = s.catalog.schedules.get('blue');
    assert.deepEqual([first?.lastRunUnixMs, first?.lastResult, first?.lastSnapshotId, first?.nextDueUnixMs], [T0 + H, 'snapshot blue-s2 complete, 0 pruned', 'blue-s2', T0 + 2 * H]);
    assert.equal(s.catalog.getSnapshot('blue-s2')?.description, 'scheduled (every 1h)');

    await advance(s, H);
    await advance(s, H);
    assert.deepEqual(ids(s), ['blue-s1:COMPLETE', 'blue-s3:COMPLETE', 'blue-s4:COMPLETE']);
    assert.equal(s.catalog.schedules.get('blue')?.lastResult, 'snapshot blue-s4 complete, 1 pruned');
    // The prune went through DeleteSnapshot: the agents were asked to delete blue-s2's artefacts.
    assert.equal(s.agents.names('deleteArtefacts').length, 1);
    s.svc.scheduler.stop();
    assert.equal(s.clock.pending, 0);
  });

  it('skips a busy VNE, records why, and runs again one interval later', async () => {
    const s = setup();
    await defineBlue(s);
    await s.svc.schedules.setSchedule({ vne: 'blue', everyMs: M, ...policy });
    s.svc.scheduler.start();
    const persist = s.agents.behaviour.get('snapshotPersist');
    s.agents.on('snapshotPersist', 'hold');
    const held = manual(s);
    await advance(s, M);
    const sch = s.catalog.schedules.get('blue');
    assert.deepEqual([sch?.lastRunUnixMs, sch?.lastResult, sch?.lastSnapshotId, sch?.nextDueUnixMs], [T0 + M, 'skipped: a snapshot of VNE "blue" is already in progress (blue-s1): one snapshot per VNE at a time', '', T0 + 2 * M]);
    if (persist) s.agents.on('snapshotPersist', persist);
    for (const h of ['h1', 'h2']) s.agents.reply(h, 'snapshotPersist', persist?.(h, s.agents.peek(h, 'snapshotPersist').body) as never);
    assert.equal((await held).state, 'SNAPSHOT_STATE_COMPLETE');
    await advance(s, M);
    assert.deepEqual(ids(s), ['blue-s1:COMPLETE', 'blue-s2:COMPLETE']);
    assert.equal(s.catalog.schedules.get('blue')?.lastResult, 'snapshot blue-s2 complete, 0 pruned');
    s.svc.scheduler.stop();
  });

  it('skips a VNE that is not running', async () => {
    const s = setup();
    await defineBlue(s, false);
    await s.svc.schedules.setSchedule({ vne: 'blue', everyMs: M, ...policy });
    s.svc.scheduler.start();
    await advance(s, M);
    assert.equal(s.catalog.schedules.get('blue')?.lastResult, 'skipped: VNE "blue" is not running (defined): start it first');
    assert.deepEqual(ids(s), []);
    s.svc.scheduler.stop();
  });
});

describe('scheduler: coordinator restarts', () => {
  let dir = '';
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-sched-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('does not repeat a run after a restart, and runs a missed one once, not once per interval', async () => {
    const file = path.join(dir, 'catalog.db');
    const a = setup(file);
    await defineBlue(a);
    await a.svc.schedules.setSchedule({ vne: 'blue', everyMs: H, ...policy, keepLast: 10 });
    a.svc.scheduler.start();
    await advance(a, H);
    assert.deepEqual(ids(a), ['blue-s1:COMPLETE']);
    a.svc.scheduler.stop();
    a.catalog.close();

    // Back at once: nothing is due, nothing runs.
    const b = setup(file, new ManualClock(T0 + H));
    b.svc.scheduler.start();
    await b.svc.scheduler.idle();
    assert.deepEqual(ids(b), ['blue-s1:COMPLETE']);
    b.svc.scheduler.stop();
    b.catalog.close();

    // Down for 5 intervals: one run at start, the next one interval later.
    const c = setup(file, new ManualClock(T0 + 6 * H + 10 * M));
    c.svc.scheduler.start();
    await c.svc.scheduler.idle();
    assert.deepEqual(ids(c), ['blue-s1:COMPLETE', 'blue-s2:COMPLETE']);
    assert.equal(c.catalog.schedules.get('blue')?.nextDueUnixMs, T0 + 7 * H + 10 * M);
    await advance(c, H - 1);
    assert.deepEqual(ids(c), ['blue-s1:COMPLETE', 'blue-s2:COMPLETE']);
    await advance(c, 1);
    assert.deepEqual(ids(c), ['blue-s1:COMPLETE', 'blue-s2:COMPLETE', 'blue-s3:COMPLETE']);
    c.svc.scheduler.stop();
    c.catalog.close();
  });
});

describe('schedule RPCs: checks', () => {
  const bad = async (over: Record<string, unknown>, code: string, message: string) => {
    const s = setup();
    await defineBlue(s, false);
    await assert.rejects(s.svc.schedules.setSchedule({ vne: 'blue', everyMs: H, ...policy, ...over }), (e) => isVnsnapError(e, code as 'ERR_INVALID_ARGUMENT') && e.message === message);
  };
  it('refuses an interval below a minute or above 366 days', async () => {
    await bad({ everyMs: 59_000 }, 'ERR_INVALID_ARGUMENT', 'every_ms must be at least 1m, got 59s');
    await bad({ everyMs: 367 * 24 * H }, 'ERR_INVALID_ARGUMENT', 'every_ms must be at most 366d, got 367d');
  });
  it('refuses a policy that keeps nothing, or an unknown VNE', async () => {
    await bad({ keepLast: 0 }, 'ERR_INVALID_ARGUMENT', 'at least one of keep_last, keep_hourly, keep_daily must be above 0 (a schedule keeping nothing would delete every snapshot it takes)');
    await bad({ vne: 'red' }, 'ERR_NOT_FOUND', 'VNE "red" does not exist');
  });
  it('shows, lists and deletes; a deleted VNE takes its schedule along', async () => {
    const s = setup();
    await defineBlue(s, false);
    await s.svc.schedules.setSchedule({ vne: 'blue', everyMs: H, ...policy });
    assert.deepEqual((await s.svc.schedules.listSchedules()).schedules.map((x) => x.vne), ['blue']);
    assert.equal((await s.svc.schedules.getSchedule({ vne: 'blue' })).everyMs, H);
    await s.svc.schedules.deleteSchedule({ vne: 'blue' });
    await assert.rejects(s.svc.schedules.getSchedule({ vne: 'blue' }), (e) => isVnsnapError(e, 'ERR_NOT_FOUND') && e.message === 'VNE "blue" has no schedule');
    await s.svc.schedules.setSchedule({ vne: 'blue', everyMs: H, ...policy });
    await s.svc.deleteVne({ name: 'blue', deleteSnapshots: false });
    assert.deepEqual((await s.svc.schedules.listSchedules()).schedules, []);
  });
});

describe('schedule RPCs: roles', () => {
  const C = '/vnsnap.v1.CoordinatorService/';
  const who = { commonName: 'grafana', units: [], dnsNames: [], ips: [] };
  it('set and delete need the operator role; list and show the viewer role', () => {
    for (const m of ['SetSchedule', 'DeleteSchedule']) {
      assert.equal(denial(`${C}${m}`, who, 'viewer'), `permission denied: ${m} needs the operator role (certificate "grafana" has the viewer role)`);
      assert.equal(denial(`${C}${m}`, who, 'operator'), undefined);
    }
    for (const m of ['ListSchedules', 'GetSchedule']) assert.equal(denial(`${C}${m}`, who, 'viewer'), undefined);
  });
});
