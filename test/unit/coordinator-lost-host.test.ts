/**
 * The coordinator with a host away (issue 12), on the fakes of coordinator-fakes.ts and a real
 * catalog: `vne stop` fences the VMs of an unreachable host and leaves the VNE DEFINED
 * (vne-stop.ts); a later start runs under a new generation while a fenced instance may still
 * run; a fenced instance its returning host no longer runs is recorded stopped; a VM reported
 * DEAD stays DEAD across a coordinator restart (dead-vms.ts).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VnsnapError, isVnsnapError } from '../../proto/core/errors';
import { ManualClock } from '../../proto/core/clock';
import type { VmSpec__Output } from '../../proto/gen/vnsnap/v1/VmSpec';
import { Catalog } from '../../coordinator/catalog';
import { EventBus } from '../../coordinator/events';
import { RestoreSequencer } from '../../coordinator/restore-sequencer';
import { CoordinatorServiceImpl } from '../../coordinator/service';
import { SnapshotSequencer } from '../../coordinator/snapshot-sequencer';
import { FakeAgents, flush, log, MemoryManifestStore, ok } from './coordinator-fakes';
import { CasStore } from '../../proto/store/cas-store';
import { MemoryObjects } from '../support/memory-objects';
import { simVmSpec, vneRecord } from '../support/vne-record';

const simVm = (name: string, host: string, i: number): VmSpec__Output => simVmSpec(name, host, `52:54:00:0c:00:0${i}`, { memoryMib: 4, dirtyRateMibS: 0, frameRateHz: 0 });

/** A coordinator on `file` (':memory:' or a path, to open again as after a restart), VNE lh: a on h1, b and c on h2. */
function coordinator(file = ':memory:', agents = new FakeAgents(['h1', 'h2'])) {
  const clock = new ManualClock();
  const catalog = new Catalog(file, { now: () => clock.now() });
  const events = new EventBus(() => clock.now());
  const deps = { agents, catalog, manifests: new MemoryManifestStore(), store: new CasStore(new MemoryObjects()), clock, log, events, version: '0.1.0' };
  const svc = new CoordinatorServiceImpl({ ...deps, snapshots: new SnapshotSequencer(deps), restores: new RestoreSequencer(deps) });
  const seen: string[] = [];
  events.subscribe((e) => (e.kind.startsWith('vne.') || e.kind.startsWith('vm.') ? seen.push(`${e.kind}: ${e.message}`) : undefined));
  return { catalog, agents, svc, seen };
}

async function started(c: ReturnType<typeof coordinator>) {
  const vms = [simVm('a', 'h1', 1), simVm('b', 'h2', 2), simVm('c', 'h2', 3)];
  await c.svc.defineVne({ vne: vneRecord({ name: 'lh', vni: 90, vms }) });
  await c.svc.startVne({ name: 'lh' });
  c.agents.sent.length = 0;
  c.seen.length = 0;
}

const statusOf = (v: { vmStatus: { vm: string; host: string; hostReachable: boolean; state: string }[] }) => v.vmStatus.map((s) => `${s.vm}@${s.host}:${s.hostReachable ? 'reachable' : 'unreachable'}:${s.state}`);
const fencedOf = (v: { fenced: { vm: string; agent: string; generation: number; stopped: boolean }[] }) => v.fenced.map((f) => `${f.vm}@${f.agent}/${f.generation}:${f.stopped ? 'stopped' : 'running?'}`);
const REASON = 'stopped without VMs b on h2, c on h2 (host unreachable): fenced, they are stopped when their hosts return';

describe('coordinator: vne stop with a host away', () => {
  it('stops the reachable VMs, fences the unreachable host\'s, and leaves the VNE DEFINED saying so', async () => {
    const c = coordinator();
    await started(c);
    c.agents.disconnect('h2');
    c.svc.agentLeft('h2', 'no heartbeat for 3000 ms');
    const { vne } = await c.svc.stopVne({ name: 'lh' });
    assert.deepEqual(c.agents.names(), ['h1:stopVm']);
    assert.equal(vne?.state, 'VNE_STATE_DEFINED');
    assert.equal(vne?.stateReason, REASON);
    assert.deepEqual(fencedOf(vne as never), ['b@h2/1:running?', 'c@h2/1:running?']);
    assert.deepEqual(statusOf(vne as never), ['a@h1:reachable:VM_RUN_STATE_STOPPED', 'b@h2:unreachable:VM_RUN_STATE_STOPPED', 'c@h2:unreachable:VM_RUN_STATE_STOPPED']);
    assert.deepEqual(c.seen.slice(1), [
      'vm.fenced: b on unreachable h2 fenced by vne stop (generation 1); stopped when the host returns',
      'vm.fenced: c on unreachable h2 fenced by vne stop (generation 1); stopped when the host returns',
      `vne.stopped: ${REASON}`,
    ]);
    assert.equal((await c.svc.getVne({ name: 'lh' })).stateReason, REASON);
  });

  it('a VM whose agent goes away during its StopVm is fenced too; another StopVm failure still leaves the VNE FAILED', async () => {
    const c = coordinator();
    await started(c);
    c.agents.on('stopVm', 'hold', 'h2');
    const stopping = c.svc.stopVne({ name: 'lh' });
    await flush();
    c.agents.disconnect('h2');
    const { vne } = await stopping;
    assert.equal(vne?.state, 'VNE_STATE_DEFINED');
    assert.equal(vne?.stateReason, REASON);

    const d = coordinator();
    await started(d);
    d.agents.disconnect('h2');
    d.agents.on('stopVm', () => new VnsnapError('ERR_DRIVER', 'qemu would not die'), 'h1');
    await assert.rejects(
      d.svc.stopVne({ name: 'lh' }),
      (e) => isVnsnapError(e, 'ERR_DRIVER') && e.message === 'VNE "lh" could not be stopped completely: a on h1: qemu would not die',
    );
    const v = await d.svc.getVne({ name: 'lh' });
    assert.equal(v.state, 'VNE_STATE_FAILED');
    assert.deepEqual(fencedOf(v), ['b@h2/1:running?', 'c@h2/1:running?']);
  });

  it('vne start while a fenced instance may still run: a new generation; once the host stopped it, no bump', async () => {
    const c = coordinator();
    await started(c);
    c.agents.disconnect('h2');
    await c.svc.stopVne({ name: 'lh' });
    // h2 returns still running b and c of generation 1; its StopVm has not answered yet.
    c.agents.connected.add('h2');
    c.agents.on('stopVm', 'hold', 'h2');
    c.svc.agentJoined('h2', [{ vne: 'lh', vm: 'b', epoch: 0, generation: 1 }, { vne: 'lh', vm: 'c', epoch: 0, generation: 1 }]);
    assert.deepEqual(c.agents.names('stopVm'), ['h1:stopVm', 'h2:stopVm', 'h2:stopVm']);
    const { vne } = await c.svc.startVne({ name: 'lh' });
    assert.equal(vne?.generation, 2);
    assert.deepEqual(c.agents.sent.filter((s) => s.name === 'configureVne').map((s) => `${s.agent}:${s.body.configureVne?.generation}`), ['h1:2', 'h2:2']);
    // The old instances are stopped now: recorded, and a stop + start keeps generation 2.
    c.agents.reply('h2', 'stopVm');
    c.agents.reply('h2', 'stopVm');
    await flush();
    assert.deepEqual(fencedOf(await c.svc.getVne({ name: 'lh' })), ['b@h2/1:stopped', 'c@h2/1:stopped']);
    c.agents.on('stopVm', ok());
    await c.svc.stopVne({ name: 'lh' });
    assert.equal((await c.svc.startVne({ name: 'lh' })).vne?.generation, 2);
  });

  it('a fenced instance its returning host no longer runs (the host rebooted) is recorded stopped', async () => {
    const c = coordinator();
    await started(c);
    c.agents.disconnect('h2');
    await c.svc.stopVne({ name: 'lh' });
    c.agents.connected.add('h2');
    c.svc.agentJoined('h2', []);
    assert.deepEqual(c.agents.names('stopVm'), ['h1:stopVm']);
    const v = await c.svc.getVne({ name: 'lh' });
    assert.deepEqual(fencedOf(v), ['b@h2/1:stopped', 'c@h2/1:stopped']);
    assert.equal(v.stateReason, '', 'nothing is left running: the reason goes');
    assert.deepEqual(c.seen.slice(-2), [
      'vm.fenced: the fenced instance of b on h2 (generation 1) is gone: h2 registered without it',
      'vm.fenced: the fenced instance of c on h2 (generation 1) is gone: h2 registered without it',
    ]);
    assert.equal((await c.svc.startVne({ name: 'lh' })).vne?.generation, 1);
  });
});

describe('coordinator: a VM reported DEAD', () => {
  it('stays DEAD across a coordinator restart, until a stop and start replace it', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnlhu-'));
    const file = path.join(dir, 'catalog.db');
    try {
      const c = coordinator(file);
      await started(c);
      c.svc.agentJoined('h2', [{ vne: 'lh', vm: 'b', epoch: 0, generation: 1 }]);
      const failed = await c.svc.getVne({ name: 'lh' });
      assert.equal(failed.state, 'VNE_STATE_FAILED');
      assert.deepEqual(statusOf(failed), ['a@h1:reachable:VM_RUN_STATE_RUNNING', 'b@h2:reachable:VM_RUN_STATE_RUNNING', 'c@h2:reachable:VM_RUN_STATE_DEAD']);
      c.catalog.close();

      // The coordinator restarts; both agents register again, h2 still without c.
      const r = coordinator(file);
      assert.deepEqual(statusOf(await r.svc.getVne({ name: 'lh' })), ['a@h1:reachable:VM_RUN_STATE_RUNNING', 'b@h2:reachable:VM_RUN_STATE_RUNNING', 'c@h2:reachable:VM_RUN_STATE_DEAD']);
      r.svc.agentJoined('h1', [{ vne: 'lh', vm: 'a', epoch: 0, generation: 1 }]);
      r.svc.agentJoined('h2', [{ vne: 'lh', vm: 'b', epoch: 0, generation: 1 }]);
      await flush();
      const again = await r.svc.getVne({ name: 'lh' });
      assert.equal(again.state, 'VNE_STATE_FAILED');
      assert.equal(again.stateReason, 'VM c of VNE lh died while agent h2 was away (it registered without it): restore a snapshot or stop and start the VNE');
      assert.deepEqual(statusOf(again), ['a@h1:reachable:VM_RUN_STATE_RUNNING', 'b@h2:reachable:VM_RUN_STATE_RUNNING', 'c@h2:reachable:VM_RUN_STATE_DEAD']);
      assert.deepEqual(r.seen, [], 'known dead: no second vne.failed');
      await r.svc.stopVne({ name: 'lh' });
      const { vne } = await r.svc.startVne({ name: 'lh' });
      assert.deepEqual(statusOf(vne as never), ['a@h1:reachable:VM_RUN_STATE_RUNNING', 'b@h2:reachable:VM_RUN_STATE_RUNNING', 'c@h2:reachable:VM_RUN_STATE_RUNNING']);
      r.catalog.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
