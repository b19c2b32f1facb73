import { strict as assert } from 'node:assert';
import { isVnsnapError, VnsnapError } from '../../proto/core/errors';
import { AgentMetrics } from '../../agent/metrics';
import { MigrateRunner } from '../../agent/migrate-runner';
import { SnapshotRunner } from '../../agent/snapshot-runner';
import { VmTable } from '../../agent/vms';
import { VneTable } from '../../agent/vne-table';
import type { IncomingMigration, MigrationProgress, MigrationTargets, MigrationTls, OutgoingMigration, VmStartContext, VmStartSpec } from '../../agent/drivers/driver';
import { ManualClock } from '../../proto/core/clock';
import { silentLogger } from '../../proto/core/log';
import type { VmProgress } from '../../proto/gen/vnsnap/v1/VmProgress';
import { LocalDirStore } from '../../proto/store/local-dir';
import { Switch } from '../../switch/switch';
import { FakeDriver } from '../support/fake-driver';
import { until } from '../support/wait';
import { fakeVmSpec, T0, VNE } from '../support/agent-parts';

/** The fake driver with live migration: the "state" moves by pausing here and resuming there. */
class MigratingDriver extends FakeDriver {
  failBeforePause: Error | undefined;
  failFinish: Error | undefined;
  /** The incoming state never completes (the source cancelled). */
  failResume: Error | undefined;
  /** untilPaused() waits for this before the pause (a migration still pre-copying). */
  beforePause: Promise<void> | undefined;
  /** The incoming resume waits for this (the source has not sent the rest yet). */
  stateArrives: Promise<void> | undefined;
  readonly calls: string[] = [];
  readonly tls: (MigrationTls | undefined)[] = [];

  async migrateIn(spec: VmStartSpec, ctx: VmStartContext, listenAddress: string, tls?: MigrationTls): Promise<IncomingMigration> {
    const handle = await this.start(spec, ctx);
    await this.pause(spec.id);
    this.calls.push(`in ${spec.id} ${listenAddress}`);
    this.tls.push(tls);
    return {
      handle,
      targets: { diskUri: `nbd://${listenAddress}:10809/d`, memoryUri: `tcp:${listenAddress}:4444` },
      resume: async () => {
        this.calls.push(`resume ${spec.id}`);
        await this.stateArrives;
        if (this.failResume) throw this.failResume;
        await this.resume(spec.id);
        return 5_000_000;
      },
    };
  }

  async migrateOut(vm: string, targets: MigrationTargets, onProgress: (p: MigrationProgress) => void, tls?: MigrationTls): Promise<OutgoingMigration> {
    this.calls.push(`out ${vm} ${targets.diskUri} ${targets.memoryUri}`);
    this.tls.push(tls);
    return {
      untilPaused: async () => {
        onProgress({ phase: 'disk', bytesDone: 8, bytesTotal: 8, iteration: 0, done: true });
        if (this.failBeforePause) throw this.failBeforePause;
        await this.beforePause;
        await this.pause(vm);
        return { pausedUnixUs: 4_000_000, diskBytes: 8, throttled: true };
      },
      finish: async () => {
        this.calls.push(`finish ${vm}`);
        if (this.failFinish) throw this.failFinish;
        return { memoryBytes: 77 };
      },
      cancel: async () => {
        this.calls.push(`cancel ${vm}`);
        await this.resume(vm);
      },
    };
  }
}

function agent(id: string, tls?: { ca: string; cert: string; key: string }) {
  const clock = new ManualClock(T0);
  const sw = new Switch({ id, now: () => clock.now() });
  const driver = new MigratingDriver('qemu');
  const log = silentLogger();
  const store = new LocalDirStore(`/tmp/vnsnap-unit-mig-${process.pid}-${id}`);
  const parts = { agentId: id, switch: () => sw, store, clock, log, metrics: new AgentMetrics() };
  const vms = new VmTable({ ...parts, drivers: [driver] });
  const vnes = new VneTable(parts);
  const snapshots = new SnapshotRunner({ ...parts, vms, vnes });
  const runner = new MigrateRunner({ ...parts, listenAddress: `10.0.0.${id.slice(1)}`, ...(tls ? { tls } : {}), vms, vnes, snapshots });
  const other = id === 'h1' ? 'h2' : 'h1';
  vnes.configure({ vne: VNE, vni: 7, generation: 4, peers: [{ agentId: other, address: '10.0.0.9', port: 6081, dataPathPort: 0 }], macs: [], epoch: 3 });
  return { sw, driver, vms, runner, clock };
}

const ids = { migrationId: 'm1', vne: VNE, vm: 'a' };

/** VM a running on h1, h2 waiting for it. */
async function prepared() {
  const src = agent('h1');
  const dst = agent('h2');
  const spec = fakeVmSpec('a', 1);
  await src.vms.start(VNE, spec, 3, []);
  await dst.runner.prepareIncoming({ ...ids, vm: spec, vneVms: [], tls: false, fromAgent: 'h1' });
  return { src, dst };
}

describe('agent migrate runner (fake driver with live migration)', () => {
  it('source and destination through a whole migration: gated attach, the source ports detached, the source stopped with its disk, destination running', async () => {
    const src = agent('h1');
    const dst = agent('h2');
    const spec = fakeVmSpec('a', 1);
    await src.vms.start(VNE, spec, 3, []);
    const progress: VmProgress[] = [];

    const inc = await dst.runner.prepareIncoming({ ...ids, vm: spec, vneVms: [spec], tls: false, fromAgent: 'h1' });
    assert.deepEqual(inc.migrateIncoming, { diskUri: 'nbd://10.0.0.2:10809/d', memoryUri: 'tcp:10.0.0.2:4444' });
    assert.equal(dst.vms.get(VNE, 'a'), undefined, 'nothing on the switch before the attach');
    assert.deepEqual(dst.sw.portNames(VNE), []);

    const out = await src.runner.migrateOut({ ...ids, diskUri: 'nbd://10.0.0.2:10809/d', memoryUri: 'tcp:10.0.0.2:4444', tls: false, toAgent: 'h2' }, (p) => progress.push(p));
    assert.deepEqual(out.migrateOutgoing, { diskBytes: 8, throttled: true, pausedUnixUs: 4_000_000 });
    assert.deepEqual(progress.map((p) => [p.vm, p.phase, p.fraction, p.phaseDone]), [['a', 'PHASE_DISK_SYNC', 1, true]]);
    assert.equal(src.driver.status(`${VNE}/a`), 'paused');

    await dst.runner.attach({ ...ids, epoch: 3, generation: 4 });
    assert.equal(dst.vms.get(VNE, 'a')?.restoreId, 'migration:m1');
    assert.deepEqual(dst.sw.portNames(VNE), ['blue/a/0']);
    assert.equal(dst.sw.portEpoch('blue/a/0'), 3);
    assert.equal(dst.vms.running(VNE).length, 0, 'prepared, not running yet');

    const fin = await src.runner.finish({ ...ids, toAgent: 'h2' });
    assert.deepEqual(fin.migrateFinish, { memoryBytes: 77, forwardedFrames: 0, droppedFrames: 0 });
    assert.deepEqual(src.sw.portNames(VNE), []);
    assert.equal(src.vms.get(VNE, 'a'), undefined);
    assert.equal(src.driver.status(`${VNE}/a`), 'stopped');
    assert.deepEqual(src.driver.calls, ['out blue/a nbd://10.0.0.2:10809/d tcp:10.0.0.2:4444', 'finish blue/a']);

    const res = await dst.runner.resume(ids);
    assert.equal(res.migrateResume?.resumedUnixUs, 5_000_000);
    assert.equal(dst.driver.status(`${VNE}/a`), 'running');
    assert.equal(dst.vms.running(VNE).length, 1);
    assert.equal(dst.vms.get(VNE, 'a')?.restoreId, undefined);
  });

  it('one migration id moving two VMs (a whole VNE): each VM has its own part on both agents, to the end', async () => {
    const src = agent('h1');
    const dst = agent('h2');
    const specs = [fakeVmSpec('a', 1), fakeVmSpec('b', 2)];
    for (const spec of specs) await src.vms.start(VNE, spec, 3, []);
    const move = (vm: string) => ({ migrationId: 'm2', vne: VNE, vm });
    for (const spec of specs) await dst.runner.prepareIncoming({ ...move(spec.name), vm: spec, vneVms: specs, tls: false, fromAgent: 'h1' });
    for (const vm of ['a', 'b']) await src.runner.migrateOut({ ...move(vm), diskUri: 'nbd://10.0.0.2:10809/d', memoryUri: 'tcp:10.0.0.2:4444', tls: false, toAgent: 'h2' }, () => undefined);
    for (const vm of ['a', 'b']) await dst.runner.attach({ ...move(vm), epoch: 3, generation: 4 });
    assert.deepEqual(dst.sw.portNames(VNE).sort(), ['blue/a/0', 'blue/b/0']);
    for (const vm of ['a', 'b']) await src.runner.finish({ ...move(vm), toAgent: 'h2' });
    assert.deepEqual(src.driver.calls, ['out blue/a nbd://10.0.0.2:10809/d tcp:10.0.0.2:4444', 'out blue/b nbd://10.0.0.2:10809/d tcp:10.0.0.2:4444', 'finish blue/a', 'finish blue/b']);
    for (const vm of ['a', 'b']) await dst.runner.resume(move(vm));
    assert.deepEqual(dst.vms.running(VNE).map((v) => v.spec.name).sort(), ['a', 'b']);
    assert.equal(src.vms.running(VNE).length, 0);
  });

  it('a failure before the pause: the source cancels and the VM runs on there; the destination cancel removes its waiting VM', async () => {
    const { src, dst } = await prepared();
    src.driver.failBeforePause = new VnsnapError('ERR_DRIVER', 'the disk mirror of blue/a ended before it was in sync');
    await assert.rejects(src.runner.migrateOut({ ...ids, diskUri: 'x', memoryUri: 'y', tls: false, toAgent: 'h2' }, () => undefined), (e: unknown) => isVnsnapError(e, 'ERR_DRIVER'));
    assert.deepEqual(src.driver.calls.slice(1), ['cancel blue/a']);
    assert.equal(src.driver.status(`${VNE}/a`), 'running');
    assert.deepEqual(src.sw.portNames(VNE), ['blue/a/0']);
    assert.deepEqual(await src.runner.cancel(ids), {}, 'idempotent');
    await dst.runner.cancel(ids);
    assert.equal(dst.driver.status(`${VNE}/a`), 'stopped');
    await assert.rejects(dst.runner.attach({ ...ids, epoch: 3, generation: 4 }), (e: unknown) => isVnsnapError(e, 'ERR_NOT_FOUND'));
  });

  it('the switchover failing at the source: the VM is resumed there with its ports attached', async () => {
    const src = agent('h1');
    const spec = fakeVmSpec('a', 1);
    await src.vms.start(VNE, spec, 3, []);
    await src.runner.migrateOut({ ...ids, diskUri: 'x', memoryUri: 'y', tls: false, toAgent: 'h2' }, () => undefined);
    src.driver.failFinish = new VnsnapError('ERR_DRIVER', 'migration of blue/a failed at the switchover');
    await assert.rejects(src.runner.finish({ ...ids, toAgent: 'h2' }), /failed at the switchover/);
    assert.deepEqual(src.driver.calls.slice(1), ['finish blue/a', 'cancel blue/a']);
    assert.equal(src.driver.status(`${VNE}/a`), 'running');
    assert.deepEqual(src.sw.portNames(VNE), ['blue/a/0']);
    assert.equal(src.vms.running(VNE).length, 1);
  });

  it('the session lost: a source not yet paused resumes its VM at once, one paused at its switchover is held 30 s for a coordinator and then resumes it; a destination not attached removes its waiting VM', async () => {
    const { src, dst } = await prepared();
    let paused: () => void = () => undefined;
    src.driver.beforePause = new Promise((r) => (paused = r));
    const early = src.runner.migrateOut({ ...ids, diskUri: 'x', memoryUri: 'y', tls: false, toAgent: 'h2' }, () => undefined);
    await until('the source mirroring', () => src.runner.migrating(VNE, 'a'));
    src.runner.sessionLost();
    paused();
    await early.then(() => undefined, () => undefined);
    await until('the early source settled', () => !src.runner.migrating(VNE, 'a'));
    assert.equal(src.driver.status(`${VNE}/a`), 'running', 'not yet paused: resumed at once');
    assert.deepEqual(src.clock.pending, 0, 'no hold');

    src.driver.beforePause = undefined;
    await src.runner.migrateOut({ ...ids, migrationId: 'm2', diskUri: 'x', memoryUri: 'y', tls: false, toAgent: 'h2' }, () => undefined);
    assert.equal(src.driver.status(`${VNE}/a`), 'paused');
    src.runner.sessionLost();
    dst.runner.sessionLost();
    await until('the destination settled', () => !dst.runner.migrating(VNE, 'a'));
    assert.equal(dst.driver.status(`${VNE}/a`), 'stopped');
    assert.deepEqual(src.runner.held(), [{ vne: VNE, vm: 'a', migrationId: 'm2', outgoing: true, peerAgent: 'h2' }]);
    src.runner.sessionLost();
    assert.equal(src.clock.pending, 1, 'one hold, not one per lost session');
    src.clock.advance(29_999);
    await new Promise((r) => setImmediate(r));
    assert.equal(src.driver.status(`${VNE}/a`), 'paused', 'held for a coordinator');
    src.clock.advance(1);
    await until('the held source resumed', () => src.driver.status(`${VNE}/a`) === 'running');
    assert.equal(src.runner.migrating(VNE, 'a'), false);
    assert.deepEqual(src.runner.held(), []);
  });

  it('the session lost at the switchover and a coordinator back in time: both ends held and reported; MigrateFinish finishes the source, the destination\'s resume and the coordinator\'s share one, a later one answers with the running VM', async () => {
    const { src, dst } = await prepared();
    let arrive: () => void = () => undefined;
    dst.driver.stateArrives = new Promise((r) => (arrive = r));
    await src.runner.migrateOut({ ...ids, diskUri: 'x', memoryUri: 'y', tls: false, toAgent: 'h2' }, () => undefined);
    await dst.runner.attach({ ...ids, epoch: 3, generation: 4 });
    src.runner.sessionLost();
    dst.runner.sessionLost();
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(src.runner.held(), [{ vne: VNE, vm: 'a', migrationId: 'm1', outgoing: true, peerAgent: 'h2' }]);
    assert.deepEqual(dst.runner.held(), [{ vne: VNE, vm: 'a', migrationId: 'm1', outgoing: false, peerAgent: 'h1' }]);
    const again = dst.runner.resume({ migrationId: '', vne: VNE, vm: 'a' });
    await src.runner.finish({ ...ids, toAgent: 'h2' });
    assert.equal(src.clock.pending, 0, 'the hold is cancelled by the finish');
    arrive();
    const r = await again;
    assert.equal(r.migrateResume?.resumedUnixUs, 5_000_000);
    assert.equal(dst.driver.calls.filter((c) => c.startsWith('resume')).length, 1, 'one resume for both');
    assert.equal(dst.driver.status(`${VNE}/a`), 'running');
    assert.deepEqual(dst.runner.held(), []);
    const later = await dst.runner.resume({ ...ids });
    assert.deepEqual(later.migrateResume, { resumedUnixUs: 0, diskPath: dst.vms.diskPath(dst.vms.get(VNE, 'a')!) });
    await assert.rejects(dst.runner.resume({ ...ids, vm: 'zz' }), (e: unknown) => isVnsnapError(e, 'ERR_NOT_FOUND'));
  });

  it('the session lost after the attach: the destination resumes the VM when the whole state arrived, removes it when not', async () => {
    for (const arrived of [true, false]) {
      const { src, dst } = await prepared();
      await src.runner.migrateOut({ ...ids, diskUri: 'x', memoryUri: 'y', tls: false, toAgent: 'h2' }, () => undefined);
      await dst.runner.attach({ ...ids, epoch: 3, generation: 4 });
      if (!arrived) dst.driver.failResume = new VnsnapError('ERR_DRIVER', 'incoming migration of blue/a failed');
      dst.runner.sessionLost();
      await until('the destination settled', () => !dst.runner.migrating(VNE, 'a'));
      await until('the destination VM settled', () => dst.driver.status(`${VNE}/a`) !== 'paused');
      assert.equal(dst.driver.status(`${VNE}/a`), arrived ? 'running' : 'stopped', `state arrived: ${arrived}`);
      assert.equal(dst.vms.get(VNE, 'a') !== undefined, arrived);
      assert.deepEqual(dst.sw.portNames(VNE), arrived ? ['blue/a/0'] : []);
    }
  });

  it('TLS: with the agent\'s certificates both ends get them, each with the other\'s name (the destination admits only the source); asked for without them is refused', async () => {
    const files = { ca: '/pki/ca.pem', cert: '/pki/agent.pem', key: '/pki/agent-key.pem' };
    const src = agent('h1', files);
    const dst = agent('h2', files);
    const spec = fakeVmSpec('a', 1);
    await src.vms.start(VNE, spec, 3, []);
    await dst.runner.prepareIncoming({ ...ids, vm: spec, vneVms: [], tls: true, fromAgent: 'h1' });
    await src.runner.migrateOut({ ...ids, diskUri: 'x', memoryUri: 'y', tls: true, toAgent: 'h2' }, () => undefined);
    assert.deepEqual(dst.driver.tls, [{ files, peer: 'h1' }], 'the destination admits only the source');
    assert.deepEqual(src.driver.tls, [{ files, peer: 'h2' }]);
    await assert.rejects(agent('h4', files).runner.prepareIncoming({ ...ids, vm: fakeVmSpec('c', 3), vneVms: [], tls: true, fromAgent: '' }), /MigrateIncoming of VM c names no source agent: over TLS the destination admits only the source's certificate/);
    const plain = agent('h3');
    await assert.rejects(plain.runner.prepareIncoming({ ...ids, vm: fakeVmSpec('b', 2), vneVms: [], tls: true, fromAgent: 'h1' }), /agent h3 has no TLS certificates: it cannot encrypt the migration streams/);
    await plain.runner.prepareIncoming({ ...ids, vm: fakeVmSpec('b', 2), vneVms: [], tls: false, fromAgent: 'h1' });
    assert.deepEqual(plain.driver.tls, [undefined]);
  });

  it('refuses: a VM that runs here already (destination), a VM not here (source), a generation that does not match', async () => {
    const a = agent('h1');
    const spec = fakeVmSpec('a', 1);
    await a.vms.start(VNE, spec, 3, []);
    await assert.rejects(a.runner.prepareIncoming({ ...ids, vm: spec, vneVms: [], tls: false, fromAgent: 'h1' }), /VM a of VNE blue already runs on agent h1/);
    await assert.rejects(a.runner.migrateOut({ ...ids, vm: 'zz', diskUri: '', memoryUri: '', tls: false, toAgent: 'h2' }, () => undefined), /VM zz of VNE blue does not run on agent h1/);
    const b = agent('h2');
    await b.runner.prepareIncoming({ ...ids, vm: spec, vneVms: [], tls: false, fromAgent: 'h1' });
    await assert.rejects(b.runner.attach({ ...ids, epoch: 3, generation: 9 }), /VNE blue is at generation 4 on agent h2, the migration at 9/);
  });
});
