/**
 * A coordinator restarted while a migration was at its switchover (coordinator/migrate-recovery.ts,
 * docs/migration.md "A coordinator restart mid-migration"), on the fakes of coordinator-fakes.ts
 * and a real catalog, wired as server.ts does (MigrateRecovery.joined, then the service's
 * agentJoined). VNE mg: a on h1, b migrating h2 → h1, c on h2. The agents report what they hold
 * in Register.migrating; the catalog decides.
 */
import { strict as assert } from 'node:assert';
import { ManualClock } from '../../proto/core/clock';
import type { MigratingVm__Output } from '../../proto/gen/vnsnap/v1/MigratingVm';
import type { RunningVm__Output } from '../../proto/gen/vnsnap/v1/RunningVm';
import type { VmSpec__Output } from '../../proto/gen/vnsnap/v1/VmSpec';
import { Catalog } from '../../coordinator/catalog';
import { EventBus } from '../../coordinator/events';
import { MigrateRecovery } from '../../coordinator/migrate-recovery';
import { RestoreSequencer } from '../../coordinator/restore-sequencer';
import { CoordinatorServiceImpl } from '../../coordinator/service';
import { SnapshotSequencer } from '../../coordinator/snapshot-sequencer';
import { failed, FakeAgents, flush, log, MemoryManifestStore, ok } from './coordinator-fakes';
import { CasStore } from '../../proto/store/cas-store';
import { MemoryObjects } from '../support/memory-objects';

const simVm = (name: string, host: string, i: number): VmSpec__Output => ({
  name,
  host,
  macs: [`52:54:00:0d:00:0${i}`],
  driver: { sim: { memoryMib: 4, dirtyRateMibS: 0, frameRateHz: 0, peers: [] }, kind: 'sim' },
});

const run = (vm: string): RunningVm__Output => ({ vne: 'mg', vm, epoch: 0, generation: 1 });
const outgoing: MigratingVm__Output = { vne: 'mg', vm: 'b', migrationId: 'm1', outgoing: true, peerAgent: 'h1' };
const incoming: MigratingVm__Output = { vne: 'mg', vm: 'b', migrationId: 'm1', outgoing: false, peerAgent: 'h2' };

/** A started VNE, then (as after a restart) b placed at `bAt` by the switchover's catalog write. */
async function restarted(bAt: 'h1' | 'h2') {
  const clock = new ManualClock();
  const agents = new FakeAgents(['h1', 'h2']);
  const catalog = new Catalog(':memory:', { now: () => clock.now() });
  const events = new EventBus(() => clock.now());
  const deps = { agents, catalog, manifests: new MemoryManifestStore(), store: new CasStore(new MemoryObjects()), clock, log, events, version: '0.1.0' };
  const svc = new CoordinatorServiceImpl({ ...deps, snapshots: new SnapshotSequencer(deps), restores: new RestoreSequencer(deps) });
  await svc.defineVne({ vne: { name: 'mg', vni: 91, vms: [simVm('a', 'h1', 1), simVm('b', 'h2', 2), simVm('c', 'h2', 3)], generation: 0, epoch: 0, state: 'VNE_STATE_UNSPECIFIED', createdUnixMs: 0, updatedUnixMs: 0, placement: {}, vmStatus: [], fenced: [], stateReason: '' } });
  await svc.startVne({ name: 'mg' });
  catalog.updateVne('mg', { placement: { a: 'h1', b: bAt, c: 'h2' } });
  agents.sent.length = 0;
  const recovery = new MigrateRecovery({ agents, catalog, log, events, now: () => clock.now() });
  const seen: string[] = [];
  events.subscribe((e) => (e.kind.startsWith('vne.') || e.kind.startsWith('vm.') ? seen.push(`${e.kind}: ${e.message}`) : undefined));
  const join = (agent: string, running: RunningVm__Output[], migrating: MigratingVm__Output[]) => svc.agentJoined(agent, recovery.joined(agent, running, migrating));
  const settled = async () => {
    while (recovery.pending.size > 0) await Promise.all([...recovery.pending]);
    await flush();
  };
  const vne = () => svc.getVne({ name: 'mg' });
  return { agents, catalog, svc, join, settled, vne, seen };
}

const statusOf = (v: { vmStatus: { vm: string; host: string; state: string }[] }) => v.vmStatus.map((s) => `${s.vm}@${s.host}:${s.state}`);

describe('coordinator: a migration held at its switchover across a coordinator restart', () => {
  it('the catalog placed b on h1 before MigrateFinish left: the source is told to finish, the destination to resume; b runs on h1, nothing fenced, nothing dead', async () => {
    const c = await restarted('h1');
    c.agents.on('migrateResume', ok({ payload: 'migrateResume', migrateResume: { resumedUnixUs: 1, diskPath: '/var/lib/vnsnap/disks/mg_b' } }));
    c.join('h2', [run('b'), run('c')], [outgoing]);
    c.join('h1', [run('a')], [incoming]);
    await c.settled();
    assert.deepEqual(c.agents.names('stopVm'), [], 'the held source is not fenced');
    assert.deepEqual(c.agents.sent.filter((s) => s.name === 'migrateFinish').map((s) => [s.agent, s.body.migrateFinish]), [['h2', { migrationId: 'm1', vne: 'mg', vm: 'b', toAgent: 'h1' }]]);
    assert.deepEqual(c.agents.names('migrateResume').sort(), ['h1:migrateResume', 'h1:migrateResume'], 'its own registration and the finish each ask; the agent shares one resume');
    assert.deepEqual(c.agents.names('migrateCancel'), []);
    const v = await c.vne();
    assert.equal(v.state, 'VNE_STATE_RUNNING', v.stateReason);
    assert.deepEqual(v.placement, { a: 'h1', b: 'h1', c: 'h2' });
    assert.deepEqual(statusOf(v), ['a@h1:VM_RUN_STATE_RUNNING', 'b@h1:VM_RUN_STATE_RUNNING', 'c@h2:VM_RUN_STATE_RUNNING']);
    assert.equal(c.catalog.disks.of('mg').get('b')?.host, 'h1');
    assert.deepEqual(c.seen, []);
  });

  it('the catalog still placed b on h2 (the switchover not reached): both ends cancelled, b runs on at h2', async () => {
    const c = await restarted('h2');
    c.join('h1', [run('a')], [incoming]);
    c.join('h2', [run('b'), run('c')], [outgoing]);
    await c.settled();
    assert.deepEqual(c.agents.names('migrateCancel').sort(), ['h1:migrateCancel', 'h2:migrateCancel']);
    assert.deepEqual(c.agents.names('migrateFinish'), []);
    assert.deepEqual(c.agents.names('migrateResume'), []);
    assert.deepEqual(c.agents.names('stopVm'), []);
    const v = await c.vne();
    assert.equal(v.state, 'VNE_STATE_RUNNING');
    assert.deepEqual(statusOf(v), ['a@h1:VM_RUN_STATE_RUNNING', 'b@h2:VM_RUN_STATE_RUNNING', 'c@h2:VM_RUN_STATE_RUNNING']);
  });

  it('the source\'s finish fails (it resumed b itself): the catalog goes back to h2, the destination is cancelled', async () => {
    const c = await restarted('h1');
    c.agents.on('migrateFinish', failed('ERR_DRIVER', 'migration of mg/b failed at the switchover'));
    c.join('h1', [run('a')], []);
    c.join('h2', [run('b'), run('c')], [outgoing]);
    await c.settled();
    assert.deepEqual(c.agents.names('migrateCancel'), ['h1:migrateCancel']);
    assert.deepEqual(c.agents.names('stopVm'), []);
    assert.deepEqual((await c.vne()).placement, { a: 'h1', b: 'h2', c: 'h2' });
  });

  it('a destination that registers before its VM resumed is not DEAD: it is asked to resume; a resume that fails makes b DEAD and the VNE FAILED with the reason', async () => {
    for (const resumes of [true, false]) {
      const c = await restarted('h1');
      c.agents.on('migrateResume', resumes ? ok({ payload: 'migrateResume', migrateResume: { resumedUnixUs: 1, diskPath: '/d/mg_b' } }) : failed('ERR_DRIVER', 'incoming migration of mg/b failed'));
      c.join('h2', [run('c')], []);
      c.join('h1', [run('a')], [incoming]);
      assert.deepEqual(statusOf(await c.vne()), ['a@h1:VM_RUN_STATE_RUNNING', 'b@h1:VM_RUN_STATE_RUNNING', 'c@h2:VM_RUN_STATE_RUNNING'], 'not DEAD while it resumes');
      await c.settled();
      assert.deepEqual(c.agents.sent.filter((s) => s.name === 'migrateResume').map((s) => [s.agent, s.body.migrateResume]), [['h1', { migrationId: 'm1', vne: 'mg', vm: 'b' }]]);
      const v = await c.vne();
      if (resumes) {
        assert.equal(v.state, 'VNE_STATE_RUNNING');
        assert.deepEqual(c.seen, []);
      } else {
        assert.equal(v.state, 'VNE_STATE_FAILED');
        assert.equal(v.stateReason, 'VM b of VNE mg did not resume at h1 after its migration m1 (agent h1: MigrateResume failed: incoming migration of mg/b failed): restore a snapshot or stop and start the VNE');
        assert.deepEqual(statusOf(v), ['a@h1:VM_RUN_STATE_RUNNING', 'b@h1:VM_RUN_STATE_DEAD', 'c@h2:VM_RUN_STATE_RUNNING']);
      }
    }
  });
});
