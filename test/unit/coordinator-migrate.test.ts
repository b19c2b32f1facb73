import { strict as assert } from 'node:assert';
import { isVnsnapError } from '../../proto/core/errors';
import type { SnapshotEvent } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import type { Vne__Output } from '../../proto/gen/vnsnap/v1/Vne';
import { Catalog } from '../../coordinator/catalog';
import { ManualClock } from '../../proto/core/clock';
import { EventBus } from '../../coordinator/events';
import { MigrateSequencer } from '../../coordinator/migrate-sequencer';
import { RestoreSequencer } from '../../coordinator/restore-sequencer';
import { SnapshotSequencer } from '../../coordinator/snapshot-sequencer';
import { CoordinatorServiceImpl } from '../../coordinator/service';
import { CasStore } from '../../proto/store/cas-store';
import { MemoryObjects } from '../support/memory-objects';
import { placementOf, simVms, vneRecord } from '../support/vne-record';
import { failed, FakeAgents, flush, log, MemoryManifestStore, ok } from './coordinator-fakes';

const T0 = 1_800_000_000_000;

function vneDef(vms: [string, string][], state: Vne__Output['state'] = 'VNE_STATE_RUNNING'): Vne__Output {
  const specs = simVms(vms, (i) => `52:54:00:00:01:0${i + 1}`, { memoryMib: 4 });
  return vneRecord({ vms: specs, generation: 3, epoch: 7, state, createdUnixMs: T0, updatedUnixMs: T0, placement: placementOf(specs) });
}

function harness(state: Vne__Output['state'] = 'VNE_STATE_RUNNING') {
  const clock = new ManualClock(T0);
  const catalog = new Catalog(':memory:', { now: () => clock.now() });
  const agents = new FakeAgents(['h1', 'h2', 'h3']);
  const events = new EventBus(() => clock.now());
  for (const id of ['h1', 'h2', 'h3']) catalog.upsertAgent({ id, hostname: id, version: '1', tunnelAddress: '10.0.0.1', tunnelPort: 6081, connectedUnixMs: T0, lastSeenUnixMs: T0, drivers: ['sim'] });
  catalog.insertVne(vneDef([['vm1', 'h1'], ['vm2', 'h2'], ['vm3', 'h2']], state));
  const seq = new MigrateSequencer({ agents, catalog, clock, log, events, newMigrationId: () => 'm1' });
  agents.on('migrateIncoming', (a) => ok({ payload: 'migrateIncoming', migrateIncoming: { diskUri: `nbd://${a}:10809/x`, memoryUri: `tcp:${a}:4444` } }));
  agents.on('migrateOutgoing', () => ok({ payload: 'migrateOutgoing', migrateOutgoing: { diskBytes: 1000, throttled: false, pausedUnixUs: T0 * 1000 } }));
  agents.on('migrateFinish', () => ok({ payload: 'migrateFinish', migrateFinish: { memoryBytes: 5000, forwardedFrames: 2, droppedFrames: 1 } }));
  agents.on('migrateResume', () => ok({ payload: 'migrateResume', migrateResume: { resumedUnixUs: T0 * 1000 + 42_500, diskPath: '/var/lib/vnsnap/disks/blue_vm2' } }));
  const got: SnapshotEvent[] = [];
  return { clock, catalog, agents, events, seq, got, sink: (e: SnapshotEvent) => got.push(e) };
}

async function rejects(p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => isVnsnapError(e) && e.code === code && re.test(e.message));
}

describe('coordinator migrate sequencer', () => {
  it('moves one VM: destination prepared, source mirrored and paused, attach, switchover and resume in one turn; the catalog places it at its destination', async () => {
    const h = harness();
    const r = await h.seq.migrate({ vne: 'blue', placement: { vm2: 'h1' } }, h.sink);
    assert.deepEqual(h.agents.names(), [
      'h1:configureVne', 'h2:configureVne',
      'h1:migrateIncoming', 'h2:migrateOutgoing', 'h1:migrateAttach',
      'h2:migrateFinish', 'h1:migrateResume', 'h1:configureVne', 'h2:configureVne',
      'h1:configureVne', 'h2:configureVne',
    ]);
    const sent = (name: string, agent: string) => h.agents.sent.filter((s) => s.name === name && s.agent === agent);
    assert.deepEqual(sent('migrateOutgoing', 'h2')[0]?.body.migrateOutgoing, { migrationId: 'm1', vne: 'blue', vm: 'vm2', diskUri: 'nbd://h1:10809/x', memoryUri: 'tcp:h1:4444', toAgent: 'h1', tls: false });
    assert.equal(sent('migrateIncoming', 'h1')[0]?.body.migrateIncoming?.fromAgent, 'h2', 'the destination is told its source');
    assert.deepEqual(sent('migrateAttach', 'h1')[0]?.body.migrateAttach, { migrationId: 'm1', vne: 'blue', vm: 'vm2', epoch: 7, generation: 3 });
    // The switchover: MigrateFinish, MigrateResume and the new MAC routes leave in the same turn.
    const fin = h.agents.sent.find((s) => s.name === 'migrateFinish');
    const routes = h.agents.sent.filter((s) => s.name === 'configureVne' && s.turn === fin?.turn);
    assert.equal(routes.length, 2);
    assert.equal(h.agents.sent.find((s) => s.name === 'migrateResume')?.turn, fin?.turn, 'the resume does not wait for the source\'s reply');
    assert.deepEqual(routes[0]?.body.configureVne?.macs, [
      { mac: '52:54:00:00:01:01', agentId: 'h1' },
      { mac: '52:54:00:00:01:02', agentId: 'h1' },
      { mac: '52:54:00:00:01:03', agentId: 'h2' },
    ]);
    // While moving, the first ConfigureVne made the destination a peer without changing any route.
    assert.deepEqual(h.agents.sent[0]?.body.configureVne?.macs?.map((m) => m.agentId), ['h1', 'h2', 'h2']);
    const vne = h.catalog.getVne('blue');
    assert.deepEqual(vne?.placement, { vm1: 'h1', vm2: 'h1', vm3: 'h2' });
    assert.equal(vne?.state, 'VNE_STATE_RUNNING');
    assert.equal(h.catalog.disks.of('blue').get('vm2')?.host, 'h1');
    assert.deepEqual((r.vms ?? []).map((v) => [v.vm, v.fromAgent, v.toAgent, v.downtimeMs, v.diskBytes, v.memoryBytes, v.forwardedFrames, v.droppedFrames]), [['vm2', 'h2', 'h1', 42.5, 1000, 5000, 2, 1]]);
    assert.equal(h.got[h.got.length - 1]?.migrated?.vms?.length, 1);
  });

  it('TLS: both agents with certificates: both streams asked encrypted; one without: refused with one line, nothing sent', async () => {
    const h = harness();
    const certs: Record<string, boolean> = { h1: true, h2: true, h3: false };
    const seq = new MigrateSequencer({ agents: h.agents, catalog: h.catalog, clock: h.clock, log, events: h.events, newMigrationId: () => 'm1', tlsOf: (a) => certs[a] });
    await seq.migrate({ vne: 'blue', placement: { vm2: 'h1' } }, h.sink);
    const body = (name: string) => h.agents.sent.find((s) => s.name === name)?.body;
    assert.deepEqual([body('migrateIncoming')?.migrateIncoming?.tls, body('migrateIncoming')?.migrateIncoming?.fromAgent, body('migrateOutgoing')?.migrateOutgoing?.tls], [true, 'h2', true]);
    const before = h.agents.sent.length;
    await rejects(seq.migrate({ vne: 'blue', placement: { vm1: 'h3' } }, h.sink), 'ERR_FAILED_PRECONDITION', /^agent "h1" runs with certificates and agent "h3" without: VM vm1's disk and memory would cross the underlay in clear; nothing was migrated$/);
    await rejects(seq.migrate({ vne: 'blue', placement: { vm1: 'h3' } }, h.sink), 'ERR_FAILED_PRECONDITION', /agent "h1" runs with certificates and agent "h3" without/);
    certs.h1 = false;
    certs.h3 = true;
    await rejects(seq.migrate({ vne: 'blue', placement: { vm1: 'h3' } }, h.sink), 'ERR_FAILED_PRECONDITION', /^agent "h3" runs with certificates and agent "h1" without/);
    assert.equal(h.agents.sent.length, before, 'nothing sent for a refused migration');
    assert.deepEqual(h.catalog.getVne('blue')?.placement, { vm1: 'h1', vm2: 'h1', vm3: 'h2' });
  });

  it('--to moves every VM not there, in parallel: each VM has its own switchover', async () => {
    const h = harness();
    h.agents.on('migrateOutgoing', 'hold');
    const p = h.seq.migrate({ vne: 'blue', to: 'h3' }, h.sink);
    await flush();
    assert.deepEqual(h.agents.held.map((x) => `${x.agent}:${x.name}`), ['h1:migrateOutgoing', 'h2:migrateOutgoing', 'h2:migrateOutgoing']);
    const out = { payload: 'migrateOutgoing' as const, migrateOutgoing: { diskBytes: 1, throttled: false, pausedUnixUs: T0 * 1000 } };
    h.agents.reply('h2', 'migrateOutgoing', ok(out));
    await flush(20);
    assert.equal(h.agents.names('migrateFinish').length, 1);
    h.agents.reply('h1', 'migrateOutgoing', ok(out));
    h.agents.reply('h2', 'migrateOutgoing', ok(out));
    const r = await p;
    assert.deepEqual((r.vms ?? []).map((v) => v.vm).sort(), ['vm1', 'vm2', 'vm3']);
    assert.deepEqual(h.catalog.getVne('blue')?.placement, { vm1: 'h3', vm2: 'h3', vm3: 'h3' });
    // Afterwards only h3 hosts the VNE: its last ConfigureVne has no peers.
    const last = h.agents.sent.filter((s) => s.name === 'configureVne').pop();
    assert.equal(last?.agent, 'h3');
    assert.deepEqual(last?.body.configureVne?.peers, []);
  });

  it('a failure before the switchover cancels on both agents and leaves the VM placed, and running, at its source', async () => {
    const h = harness();
    h.agents.on('migrateOutgoing', failed('ERR_DRIVER', 'the disk mirror of blue/vm2 ended before it was in sync: Input/output error'));
    await rejects(h.seq.migrate({ vne: 'blue', placement: { vm2: 'h3' } }, h.sink), 'ERR_DRIVER', /^migration m1 of blue failed \(vm2: agent h2: MigrateOutgoing failed: the disk mirror/);
    assert.deepEqual(h.agents.names('migrateCancel').sort(), ['h2:migrateCancel', 'h3:migrateCancel']);
    assert.equal(h.agents.names('migrateFinish').length, 0);
    const vne = h.catalog.getVne('blue');
    assert.deepEqual(vne?.placement, { vm1: 'h1', vm2: 'h2', vm3: 'h2' });
    assert.equal(vne?.state, 'VNE_STATE_RUNNING');
    assert.ok(h.got.some((e) => e.note === 'migrate: vm2: failed before its switchover (agent h2: MigrateOutgoing failed: the disk mirror of blue/vm2 ended before it was in sync: Input/output error); it runs on at h2'));
  });

  it('the destination agent lost mid-way: cancelled, the VM stays at its source', async () => {
    const h = harness();
    h.agents.on('migrateOutgoing', 'hold');
    const p = h.seq.migrate({ vne: 'blue', placement: { vm1: 'h3' } }, h.sink);
    await flush();
    h.agents.on('migrateAttach', 'hold');
    h.agents.reply('h1', 'migrateOutgoing', ok({ payload: 'migrateOutgoing', migrateOutgoing: { diskBytes: 1, throttled: false, pausedUnixUs: 1 } }));
    await flush();
    h.agents.disconnect('h3');
    await rejects(p, 'ERR_AGENT_DISCONNECTED', /vm1: agent h3 disconnected during MigrateAttach/);
    assert.deepEqual(h.agents.names('migrateCancel'), ['h1:migrateCancel']);
    assert.equal(h.catalog.getVne('blue')?.placement.vm1, 'h1');
  });

  it('the switchover itself failing (MigrateFinish: the source resumed the VM): the catalog and the routes go back to the source, the destination is cancelled', async () => {
    const h = harness();
    h.agents.on('migrateFinish', failed('ERR_DRIVER', 'migration of blue/vm2 failed at the switchover: connection reset'));
    await rejects(h.seq.migrate({ vne: 'blue', placement: { vm2: 'h1' } }, h.sink), 'ERR_DRIVER', /vm2: agent h2: MigrateFinish failed: migration of blue\/vm2 failed at the switchover/);
    const vne = h.catalog.getVne('blue');
    assert.deepEqual(vne?.placement, { vm1: 'h1', vm2: 'h2', vm3: 'h2' });
    assert.equal(vne?.state, 'VNE_STATE_RUNNING');
    assert.deepEqual(h.agents.names('migrateCancel').sort(), ['h1:migrateCancel', 'h2:migrateCancel']);
    assert.deepEqual(h.agents.names('migrateResume'), ['h1:migrateResume'], 'sent with the finish; the destination never gets the whole state and is cancelled');
    const last = h.agents.sent.filter((s) => s.name === 'configureVne').pop();
    assert.deepEqual(last?.body.configureVne?.macs?.map((x) => x.agentId), ['h1', 'h2', 'h2']);
  });

  it('the source lost during its switchover: the destination resumes the VM if QEMU delivered everything, and it is placed there', async () => {
    const h = harness();
    h.agents.on('migrateFinish', 'hold');
    const p = h.seq.migrate({ vne: 'blue', placement: { vm2: 'h1' } }, h.sink);
    await flush(20);
    h.agents.disconnect('h2');
    const r = await p;
    assert.deepEqual((r.vms ?? []).map((v) => [v.vm, v.toAgent]), [['vm2', 'h1']]);
    assert.equal(h.catalog.getVne('blue')?.placement.vm2, 'h1');
    assert.equal(h.agents.names('migrateCancel').length, 0);
    assert.ok(h.got.some((e) => e.note === 'migrate: vm2: h2 went away during the switchover; the VM resumed on h1'));
  });

  it('a failure after the switchover leaves the VM placed at its destination and the VNE FAILED with the reason', async () => {
    const h = harness();
    h.agents.on('migrateResume', failed('ERR_DRIVER', 'incoming migration of blue/vm2 failed'));
    await rejects(h.seq.migrate({ vne: 'blue', placement: { vm2: 'h1' } }, h.sink), 'ERR_DRIVER', /vm2: agent h1: MigrateResume failed/);
    const vne = h.catalog.getVne('blue');
    assert.equal(vne?.placement.vm2, 'h1');
    assert.equal(vne?.state, 'VNE_STATE_FAILED');
    assert.match(vne?.stateReason ?? '', /^migration m1 of VM vm2 failed after its switchover to h1: agent h1: MigrateResume failed/);
    assert.equal(h.agents.names('migrateCancel').length, 0);
  });

  it('refuses with nothing sent: unknown VM, a VM already there, nothing to move, an unknown or disconnected agent, a VNE not running', async () => {
    const h = harness();
    const plan = (r: Parameters<MigrateSequencer['plan']>[0]) => Promise.resolve().then(() => h.seq.plan(r));
    await rejects(plan({ vne: 'blue', placement: { nope: 'h1' } }), 'ERR_INVALID_ARGUMENT', /placement names VM "nope", which is not in VNE blue \(VMs: vm1, vm2, vm3\)/);
    await rejects(plan({ vne: 'blue', placement: { vm1: 'h1' } }), 'ERR_INVALID_ARGUMENT', /^VM vm1 already runs on h1$/);
    await rejects(plan({ vne: 'blue', to: 'h9' }), 'ERR_NOT_FOUND', /agent "h9" \(destination of VM vm1\) is unknown/);
    h.agents.connected.delete('h3');
    await rejects(plan({ vne: 'blue', placement: { vm2: 'h3' } }), 'ERR_AGENT_DISCONNECTED', /agent "h3" \(destination of VM vm2\) is not connected; nothing was migrated/);
    await rejects(plan({ vne: 'red', to: 'h1' }), 'ERR_NOT_FOUND', /VNE "red" does not exist/);
    const one = harness();
    one.catalog.updateVne('blue', { placement: { vm1: 'h2', vm2: 'h2', vm3: 'h2' } });
    await rejects(Promise.resolve().then(() => one.seq.plan({ vne: 'blue', to: 'h2' })), 'ERR_INVALID_ARGUMENT', /^nothing to migrate: every VM of blue named already runs where asked/);
    const stopped = harness('VNE_STATE_DEFINED');
    await rejects(Promise.resolve().then(() => stopped.seq.plan({ vne: 'blue', to: 'h3' })), 'ERR_FAILED_PRECONDITION', /VNE "blue" is defined: only a running VNE can be migrated/);
    assert.equal(h.agents.sent.length + one.agents.sent.length + stopped.agents.sent.length, 0);
  });

  it('the service: a migration holds the VNE\'s operation lock (snapshots and restores refused), and a snapshot in progress refuses a migration', async () => {
    const h = harness();
    const manifests = new MemoryManifestStore();
    const deps = { agents: h.agents, catalog: h.catalog, manifests, store: new CasStore(new MemoryObjects()), clock: h.clock, log, events: h.events, version: '0.1.0' };
    const snapshots = new SnapshotSequencer({ ...deps, newSnapshotId: (v, e) => `${v}-s${e}` });
    const svc = new CoordinatorServiceImpl({ ...deps, snapshots, restores: new RestoreSequencer(deps), migrations: h.seq });
    h.agents.on('migrateOutgoing', 'hold');
    const p = svc.migrateVne({ vne: 'blue', placement: { vm2: 'h1' }, to: '', timeoutMs: 0 }, h.sink);
    await flush();
    assert.throws(() => svc.createSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_PRECOPY', precopyDeadlineMs: 0, timeoutMs: 0, description: '' }, () => undefined), /VNE "blue" is busy \(migrating\); try again when that is done/);
    await rejects(svc.migrateVne({ vne: 'blue', placement: { vm3: 'h1' }, to: '', timeoutMs: 0 }, () => undefined), 'ERR_FAILED_PRECONDITION', /busy \(migrating\)/);
    h.agents.reply('h2', 'migrateOutgoing', ok({ payload: 'migrateOutgoing', migrateOutgoing: { diskBytes: 1, throttled: false, pausedUnixUs: 1 } }));
    await p;
    // The lock is released; a snapshot in progress now refuses a migration.
    h.agents.on('snapshotBegin', 'hold');
    const snap = svc.createSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_PRECOPY', precopyDeadlineMs: 0, timeoutMs: 0, description: '' }, () => undefined);
    snap.catch(() => undefined);
    await rejects(svc.migrateVne({ vne: 'blue', placement: { vm3: 'h1' }, to: '', timeoutMs: 0 }, () => undefined), 'ERR_FAILED_PRECONDITION', /a snapshot of VNE "blue" is in progress/);
    await rejects(svc.migrateVne({ vne: 'blue', placement: {}, to: '', timeoutMs: 0 }, () => undefined), 'ERR_INVALID_ARGUMENT', /say where the VMs go/);
  });
});
