/**
 * VMs outlive the agent: the state directory (parse, versions, pid reuse) and adoption by a new
 * agent, with real processes standing for the VMs (a `sleep` per VM: the records check real
 * /proc identities) behind a fake driver, a fake session and a fake tunnel.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Agent } from '../../agent/agent';
import { validateAgentConfig } from '../../agent/config';
import type { RestoreImage, VmHandle, VmStartContext, VmStartSpec } from '../../agent/drivers/driver';
import type { SnapshotStore } from '../../proto/store/snapshot-store';
import { isSameProcess, parseVmState, processIdentity, processStartTime, VM_STATE_FORMAT, VmStateDir, type ProcessIdentity, type VmStateRecord } from '../../agent/vm-state';
import { ManualClock } from '../../proto/core/clock';
import { isVnsnapError } from '../../proto/core/errors';
import type { Command__Output } from '../../proto/gen/vnsnap/v1/Command';
import { parseQemuSavedState } from '../../agent/drivers/qemu/adopt';
import { FakePort } from '../../switch/port/porttest/fake-port';
import { FakeUdpNetwork } from '../../switch/tunnel/tunneltest/fake-transport';
import { fakeVmSpec, T0, VNE } from '../support/agent-parts';
import { FakeDriver } from '../support/fake-driver';
import { FakeSessionTransport } from '../support/fake-session';
import { sessionAgent } from '../support/session-agent';
import { until } from '../support/wait';

/** Every "VM process" the tests started, killed in after(). */
const procs = new Map<string, ChildProcess>();

/** A fake driver whose VMs are real processes, and which can hand them to a later agent. */
class AdoptingDriver extends FakeDriver {
  /** VMs adopt() finds paused (the dead agent paused them for a cut). */
  readonly pausedOnAdopt = new Set<string>();

  override async start(spec: VmStartSpec, ctx: VmStartContext): Promise<VmHandle> {
    await this.spawnProcess(spec.id);
    return super.start(spec, ctx);
  }

  override async restore(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<VmHandle> {
    await this.spawnProcess(spec.id);
    return super.restore(spec, image, store, ctx);
  }

  private async spawnProcess(vm: string): Promise<void> {
    const p = spawn('sleep', ['600'], { stdio: 'ignore', detached: true });
    await new Promise<void>((r, j) => p.once('spawn', r).once('error', j));
    procs.get(vm)?.kill('SIGKILL');
    procs.set(vm, p);
  }

  persistent(vm: string): { process: ProcessIdentity; state: unknown } | undefined {
    const p = procs.get(vm);
    if (!this.vms.has(vm) || !p?.pid) return undefined;
    return { process: processIdentity(p.pid), state: { fake: vm } };
  }

  adopt(spec: VmStartSpec, saved: { process: ProcessIdentity; state: unknown }, ctx: VmStartContext): Promise<VmHandle & { resumed: boolean }> {
    assert.deepEqual(saved.state, { fake: spec.id });
    const ports = ctx.portNames.map((n) => new FakePort(n));
    this.vms.set(spec.id, { spec, status: 'running', ports });
    const resumed = this.pausedOnAdopt.has(spec.name);
    this.events.push(`adopt ${spec.name}${resumed ? ' (resumed)' : ''}`);
    return Promise.resolve({ name: spec.name, ports, resumed });
  }

  release(vm: string): Promise<void> {
    const r = this.record(vm);
    this.vms.delete(vm);
    for (const p of r.ports) p.close();
    this.events.push(`release ${r.spec.name}`);
    return Promise.resolve();
  }

  override async stop(vm: string): Promise<void> {
    procs.get(vm)?.kill('SIGKILL');
    await super.stop(vm);
  }
}

const alive = (vm: string): boolean => {
  const pid = procs.get(vm)?.pid;
  return pid !== undefined && processStartTime(pid) !== undefined;
};

describe('agent state directory and adoption of VMs left by a previous agent', () => {
  let root: string;
  let stateDir: string;
  let agents: Agent[] = [];
  let id = 0;
  const cmd = (body: Omit<Command__Output, 'id' | 'sentUnixUs'>): Command__Output => ({ id: ++id, sentUnixUs: 0, ...body });

  function newAgent(driver: FakeDriver): { agent: Agent; transport: FakeSessionTransport } {
    const made = sessionAgent(root, stateDir, driver);
    agents.push(made.agent);
    return made;
  }

  /** An agent that runs VMs a and b (started at epoch 2, generation 1), then stops (SIGTERM's path). */
  async function firstAgentRuns(): Promise<AdoptingDriver> {
    const d = new AdoptingDriver();
    const { agent, transport } = newAgent(d);
    await agent.start();
    transport.last.welcome(1000);
    assert.equal((await transport.last.run(cmd({ body: 'configureVne', configureVne: { vne: VNE, vni: 7, generation: 1, peers: [], macs: [], epoch: 2 } }))).ok, true);
    for (const [i, n] of ['a', 'b'].entries()) assert.equal((await transport.last.run(cmd({ body: 'startVm', startVm: { vne: VNE, vm: fakeVmSpec(n, i + 1), epoch: 2, vneVms: [], keptDisk: false } }))).ok, true);
    await agent.stop();
    return d;
  }

  /** A connected agent running VM a (VNE at epoch 2, generation 1); `ok` runs a command that must succeed. */
  async function agentRunningA(): Promise<{ agent: Agent; ok: (c: Omit<Command__Output, 'id' | 'sentUnixUs'>) => Promise<void> }> {
    const { agent, transport } = newAgent(new AdoptingDriver());
    await agent.start();
    transport.last.welcome(1000);
    const ok = async (c: Omit<Command__Output, 'id' | 'sentUnixUs'>): Promise<void> => {
      const r = await transport.last.run(cmd(c));
      assert.equal(r.ok, true, `${c.body}: ${r.errorMessage}`);
    };
    await ok({ body: 'configureVne', configureVne: { vne: VNE, vni: 7, generation: 1, peers: [], macs: [], epoch: 2 } });
    await ok({ body: 'startVm', startVm: { vne: VNE, vm: fakeVmSpec('a', 1), epoch: 2, vneVms: [], keptDisk: false } });
    return { agent, ok };
  }

  const record = (vm: string): VmStateRecord => parseVmState(fs.readFileSync(path.join(stateDir, 'vms', `${VNE}_${vm}`, 'vm.json'), 'utf8'), vm);

  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-adopt-'));
    stateDir = path.join(root, 'state');
  });

  afterEach(async () => {
    for (const a of agents) await a.stop().catch(() => undefined);
    agents = [];
    for (const p of procs.values()) p.kill('SIGKILL');
    procs.clear();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('stopping the agent releases its VMs (processes alive) and leaves one record per VM with pid, start time, epoch, generation', async () => {
    const d = await firstAgentRuns();
    assert.deepEqual(d.events, ['start a', 'start b', 'release a', 'release b']);
    assert.equal(alive(`${VNE}/a`) && alive(`${VNE}/b`), true);
    const r = record('a');
    const pid = procs.get(`${VNE}/a`)?.pid as number;
    assert.deepEqual(
      { format: r.format, agent: r.agent, vne: r.vne, vm: r.vm, driver: r.driver, process: r.process, epoch: r.epoch, generation: r.generation, name: r.spec.name },
      { format: VM_STATE_FORMAT, agent: 'h1', vne: VNE, vm: 'a', driver: 'qemu', process: { pid, startTime: processStartTime(pid) }, epoch: 2, generation: 1, name: 'a' },
    );
  });

  it('a new agent adopts the live VMs before it registers, lists them in Register.running, and attaches their ports only at ConfigureVne\'s epoch', async () => {
    await firstAgentRuns();
    const d = new AdoptingDriver();
    d.pausedOnAdopt.add('b');
    const { agent, transport } = newAgent(d);
    await agent.start();
    assert.deepEqual(d.events, ['adopt a', 'adopt b (resumed)']);
    assert.deepEqual(agent.adoption, { adopted: [{ vm: `${VNE}/a`, resumed: false }, { vm: `${VNE}/b`, resumed: true }], dead: [], skipped: [] });
    assert.deepEqual(transport.last.written[0]?.register?.running, [
      { vne: VNE, vm: 'a', epoch: 2, generation: 1 },
      { vne: VNE, vm: 'b', epoch: 2, generation: 1 },
    ]);
    // Not on the switch until the coordinator says where the VNE is: no frame of theirs is forwarded.
    assert.deepEqual(agent.switch.portNames(), []);
    assert.deepEqual(agent.debugVms().vms.map((v) => v.ports), [[{ name: `${VNE}/a/0`, epoch: null }], [{ name: `${VNE}/b/0`, epoch: null }]]);
    transport.last.welcome(1000);
    assert.equal((await transport.last.run(cmd({ body: 'configureVne', configureVne: { vne: VNE, vni: 7, generation: 1, peers: [], macs: [], epoch: 5 } }))).ok, true);
    assert.deepEqual(agent.switch.portNames().sort(), [`${VNE}/a/0`, `${VNE}/b/0`]);
    assert.deepEqual(agent.debugVms().vms.map((v) => v.ports[0]?.epoch), [5, 5]);
    // The records now carry the epoch the ports run at.
    assert.equal(record('a').epoch, 5);
  });

  it('the records follow the VM: a cut moves their epoch, an abort\'s advance too; a newer generation does not make a running instance current', async () => {
    const { agent, ok } = await agentRunningA();
    assert.deepEqual([record('a').epoch, record('a').generation], [2, 1]);
    await ok({ body: 'snapshotBegin', snapshotBegin: { snapshotId: 's3', vne: VNE, epoch: 3, mode: 'SNAPSHOT_MODE_PRECOPY', vms: ['a'], storePrefix: 'snapshots/s3/' } });
    await ok({ body: 'snapshotCommit', snapshotCommit: { snapshotId: 's3', sentUnixUs: 0, cutAtUnixUs: 0 } });
    assert.equal(record('a').epoch, 3, 'the cut moved the ports to epoch 3: the record says so');
    await ok({ body: 'snapshotAbort', snapshotAbort: { snapshotId: 's3', vne: VNE, epoch: 3, storePrefix: 'snapshots/s3/' } });
    await ok({ body: 'snapshotAbort', snapshotAbort: { snapshotId: 's4', vne: VNE, epoch: 4, storePrefix: 'snapshots/s4/' } });
    assert.equal(record('a').epoch, 4, 'an abort advanced the ports to epoch 4: the record says so');
    // A newer generation while this instance runs: the instance stays of generation 1 (stale).
    await ok({ body: 'configureVne', configureVne: { vne: VNE, vni: 7, generation: 2, peers: [], macs: [], epoch: 4 } });
    assert.deepEqual([record('a').epoch, record('a').generation], [4, 1]);
    await agent.stop();
    // Adopted after a restart, and attached at ConfigureVne's (newer) generation: still generation 1 in its record and in Register.
    const next = newAgent(new AdoptingDriver());
    await next.agent.start();
    assert.deepEqual(next.transport.last.written[0]?.register?.running, [{ vne: VNE, vm: 'a', epoch: 4, generation: 1 }]);
    next.transport.last.welcome(1000);
    assert.equal((await next.transport.last.run(cmd({ body: 'configureVne', configureVne: { vne: VNE, vni: 7, generation: 2, peers: [], macs: [], epoch: 6 } }))).ok, true);
    assert.deepEqual([record('a').epoch, record('a').generation], [6, 1]);
  });

  it('after a restore, the record names the restored process, at the restore\'s epoch and generation', async () => {
    const { agent, ok: run } = await agentRunningA();
    const started = record('a').process;
    const mem = await agent.store.put('snapshots/s5/a.mem', Buffer.from('memory of a'));
    await run({ body: 'restorePrepare', restorePrepare: { restoreId: 'r5', vne: VNE, epoch: 7, generation: 3, stopRunning: true, loadBeside: false, vms: [{ vm: fakeVmSpec('a', 1), memory: { ...mem, kind: 'ARTEFACT_KIND_MEMORY', owner: 'a', attributes: {}, storedBytes: 0 }, disk: null, channel: [], diskLayers: [] }] } });
    assert.equal(fs.existsSync(path.join(stateDir, 'vms', `${VNE}_a`)), false, 'the replaced VM\'s record is gone; the prepared one has none yet');
    await run({ body: 'restoreResume', restoreResume: { restoreId: 'r5', vne: VNE } });
    const r = record('a');
    const pid = procs.get(`${VNE}/a`)?.pid as number;
    assert.notDeepEqual(r.process, started);
    assert.deepEqual([r.process, r.epoch, r.generation], [{ pid, startTime: processStartTime(pid) }, 7, 3]);
  });

  it('SnapshotAbort and RestoreCancel reaching a restarted agent before its ConfigureVne (or for what it never heard of) answer ok and leave nothing behind', async () => {
    await firstAgentRuns();
    const before = [record('a'), record('b')].map((r) => JSON.stringify({ ...r, writtenUnixMs: 0 }));
    const d = new AdoptingDriver();
    const { agent, transport } = newAgent(d);
    await agent.start();
    transport.last.welcome(1000);
    await agent.store.put('snapshots/s9/a.mem', Buffer.from('partial'));
    for (const c of [
      { body: 'snapshotAbort', snapshotAbort: { snapshotId: 's9', vne: VNE, epoch: 9, storePrefix: 'snapshots/s9/' } },
      { body: 'snapshotAbort', snapshotAbort: { snapshotId: 's9', vne: VNE, epoch: 9, storePrefix: 'snapshots/s9/' } },
      { body: 'snapshotAbort', snapshotAbort: { snapshotId: 'never', vne: 'other', epoch: 1, storePrefix: '' } },
      { body: 'restoreCancel', restoreCancel: { restoreId: 'r1', vne: VNE } },
      { body: 'restoreCancel', restoreCancel: { restoreId: 'r1', vne: VNE } },
    ] as const) {
      const r = await transport.last.run(cmd(c));
      assert.equal(r.ok, true, `${c.body}: ${r.errorMessage}`);
    }
    assert.deepEqual(await agent.store.list('snapshots/s9/'), [], 'the partial artefacts are deleted');
    assert.deepEqual(d.events, ['adopt a', 'adopt b'], 'the adopted VMs are neither stopped nor resumed again');
    assert.deepEqual(agent.switch.portNames(), [], 'no port attached, no VNE configured before ConfigureVne');
    assert.deepEqual([record('a'), record('b')].map((r) => JSON.stringify({ ...r, writtenUnixMs: 0 })), before, 'the records are unchanged');
    assert.equal(alive(`${VNE}/a`) && alive(`${VNE}/b`), true);
    // ConfigureVne still brings them back at its epoch.
    assert.equal((await transport.last.run(cmd({ body: 'configureVne', configureVne: { vne: VNE, vni: 7, generation: 1, peers: [], macs: [], epoch: 9 } }))).ok, true);
    assert.deepEqual(agent.debugVms().vms.map((v) => v.ports[0]?.epoch), [9, 9]);
  });

  it('StopVm stops an adopted VM: its process is killed and its record removed', async () => {
    await firstAgentRuns();
    const d = new AdoptingDriver();
    const { agent, transport } = newAgent(d);
    await agent.start();
    transport.last.welcome(1000);
    assert.equal((await transport.last.run(cmd({ body: 'stopVm', stopVm: { vne: VNE, vm: 'a', discardDisk: false } }))).ok, true);
    assert.deepEqual(d.events, ['adopt a', 'adopt b', 'stop a']);
    await until('the process of a is gone', () => !alive(`${VNE}/a`));
    assert.equal(fs.existsSync(path.join(stateDir, 'vms', `${VNE}_a`)), false);
    assert.equal(fs.existsSync(path.join(stateDir, 'vms', `${VNE}_b`, 'vm.json')), true);
  });

  it('a VM whose process died, or whose pid now runs another program (other start time), is not adopted: reported dead, record removed', async () => {
    await firstAgentRuns();
    const pidA = procs.get(`${VNE}/a`)?.pid as number;
    procs.get(`${VNE}/a`)?.kill('SIGKILL');
    await until('a is gone', () => !alive(`${VNE}/a`));
    // b's record now names a live pid (this test process) with another start time: a reused pid.
    const rb = record('b');
    await new VmStateDir(stateDir).write({ ...rb, process: { pid: process.pid, startTime: String(Number(processStartTime(process.pid)) + 1) } });
    const d = new AdoptingDriver();
    const { agent, transport } = newAgent(d);
    await agent.start();
    assert.deepEqual(d.events, []);
    assert.deepEqual(agent.adoption.adopted, []);
    assert.deepEqual(agent.adoption.dead, [
      { vm: `${VNE}/a`, reason: `its process ${pidA} is gone` },
      { vm: `${VNE}/b`, reason: `its process ${process.pid} is gone` },
    ]);
    assert.deepEqual(transport.last.written[0]?.register?.running, []);
    assert.deepEqual(fs.readdirSync(path.join(stateDir, 'vms')), []);
    assert.equal(alive(`${VNE}/b`), true, 'the real b is left alone: the record did not name it');
  });

  it('an older agent refuses a record of a newer format with one line and touches nothing', async () => {
    await firstAgentRuns();
    const file = path.join(stateDir, 'vms', `${VNE}_a`, 'vm.json');
    const newer = JSON.stringify({ ...record('a'), format: VM_STATE_FORMAT + 1 });
    fs.writeFileSync(file, newer);
    const before = fs.readFileSync(path.join(stateDir, 'vms', `${VNE}_b`, 'vm.json'), 'utf8');
    const d = new AdoptingDriver();
    const { agent } = newAgent(d);
    await assert.rejects(agent.start(), (e: unknown) => {
      assert.ok(isVnsnapError(e, 'ERR_UNSUPPORTED_VERSION'));
      assert.equal(e.message, `VM state ${file} has format ${VM_STATE_FORMAT + 1}, newer than this agent reads (${VM_STATE_FORMAT}): a newer agent left it; run that version (this one touches nothing)`);
      return true;
    });
    assert.deepEqual(d.events, []);
    assert.equal(fs.readFileSync(file, 'utf8'), newer);
    assert.equal(fs.readFileSync(path.join(stateDir, 'vms', `${VNE}_b`, 'vm.json'), 'utf8'), before);
    assert.equal(alive(`${VNE}/a`) && alive(`${VNE}/b`), true);
    assert.throws(() => agent.switch, /is not started/);
  });

  it('records of another agent id or of a driver this agent lacks are left alone; unreadable ones are removed', async () => {
    await firstAgentRuns();
    const st = new VmStateDir(stateDir);
    await st.write({ ...record('a'), agent: 'h9' });
    await st.write({ ...record('b'), spec: { ...record('b').spec, driver: { kind: 'xen' } } });
    fs.mkdirSync(path.join(stateDir, 'vms', 'blue_c'));
    fs.writeFileSync(path.join(stateDir, 'vms', 'blue_c', 'vm.json'), '{"format": 1, "agent"');
    const d = new AdoptingDriver();
    const { agent } = newAgent(d);
    await agent.start();
    assert.deepEqual(agent.adoption, {
      adopted: [],
      dead: [],
      skipped: [
        { vm: `${VNE}/a`, reason: 'recorded by agent h9' },
        { vm: `${VNE}/b`, reason: 'its driver (xen) is not configured on this agent' },
      ],
    });
    assert.deepEqual(fs.readdirSync(path.join(stateDir, 'vms')).sort(), ['blue_a', 'blue_b']);
  });

  it('an agent without a state directory still stops its VMs when it stops (nothing could adopt them)', async () => {
    const d = new AdoptingDriver();
    const transport = new FakeSessionTransport();
    const agent = new Agent({ id: 'h1', coordinator: 'coord:1', tunnel: { address: '10.0.0.1', port: 6081 }, storeConfig: { kind: 'local', dir: path.join(root, 'store') }, drivers: [d], transport: new FakeUdpNetwork().endpoint(0x0a000001, 6081), session: transport.factory, clock: new ManualClock(T0) });
    agents.push(agent);
    await agent.start();
    transport.last.welcome(1000);
    await transport.last.run(cmd({ body: 'configureVne', configureVne: { vne: VNE, vni: 7, generation: 1, peers: [], macs: [], epoch: 0 } }));
    await transport.last.run(cmd({ body: 'startVm', startVm: { vne: VNE, vm: fakeVmSpec('a', 1), epoch: 0, vneVms: [], keptDisk: false } }));
    await agent.stop();
    assert.deepEqual(d.events, ['start a', 'stop a']);
  });
});

describe('VM state records', () => {
  it('processStartTime reads field 22 of /proc/PID/stat; a missing pid has none', () => {
    const st = processStartTime(process.pid);
    assert.match(st ?? '', /^\d+$/);
    const fields = fs.readFileSync(`/proc/${process.pid}/stat`, 'utf8').split(') ')[1]?.split(' ');
    assert.equal(st, fields?.[19]);
    assert.equal(processStartTime(0), undefined);
    assert.equal(processStartTime(2 ** 22 + 7), undefined);
    assert.equal(isSameProcess({ pid: process.pid, startTime: st as string }), true);
    assert.equal(isSameProcess({ pid: process.pid, startTime: '1' }), false);
  });

  it('parse: malformed records name what is wrong; a newer format is ERR_UNSUPPORTED_VERSION', () => {
    assert.throws(() => parseVmState('{', 'f'), /^Error: not JSON/);
    assert.throws(() => parseVmState('[]', 'f'), /not a JSON object/);
    const ok = { format: 1, agent: 'h1', vne: 'v', vm: 'a', driver: 'qemu', spec: { name: 'a' }, process: { pid: 5, startTime: '77' }, epoch: 3, generation: 2, driverState: { x: 1 }, writtenUnixMs: 9 };
    assert.deepEqual(parseVmState(JSON.stringify(ok), 'f'), ok);
    const domain: Partial<typeof ok> = { ...ok };
    delete domain.process; // a Xen domain is no process: its record has none
    assert.deepEqual(parseVmState(JSON.stringify(domain), 'f'), domain);
    assert.throws(() => parseVmState(JSON.stringify({ ...ok, process: { pid: 5 } }), 'f'), /"startTime" is not a non-empty string/);
    assert.throws(() => parseVmState(JSON.stringify({ ...ok, epoch: -1 }), 'f'), /"epoch" is not a non-negative integer/);
    assert.throws(() => parseVmState(JSON.stringify({ ...ok, format: 0 }), 'f'), /unknown format 0/);
    assert.throws(() => parseVmState(JSON.stringify({ ...ok, format: 2 }), '/x/vm.json'), (e: unknown) => isVnsnapError(e, 'ERR_UNSUPPORTED_VERSION') && e.message.startsWith('VM state /x/vm.json has format 2'));
  });

  it('the agent config key stateDir defaults to /var/lib/vnsnap and must be absolute', () => {
    const base = { id: 'h1', coordinator: '127.0.0.1:7443', tunnel: '10.0.0.1:6081', store: '/srv/vnsnap' };
    assert.equal(validateAgentConfig(base).stateDir, '/var/lib/vnsnap');
    assert.equal(validateAgentConfig({ ...base, stateDir: '/tmp/s' }).stateDir, '/tmp/s');
    for (const v of ['rel', '/', 3]) assert.throws(() => validateAgentConfig({ ...base, stateDir: v }), /^VnsnapError: stateDir: expected an absolute directory/);
  });
});

describe('QEMU state records', () => {
  const ok = { dir: '/run/vnsnap/qemu/vnqm-blue_a-77-1', nic: 'tap', taps: ['vnqm1a2b3c4dn0'], ramPadKib: 8, snapSerial: 2 };

  it('reads what persistent() writes', () => {
    assert.deepEqual(parseQemuSavedState(ok, '/run/vnsnap/qemu'), ok);
    assert.deepEqual(parseQemuSavedState({ ...ok, ramPadKib: undefined, snapSerial: undefined }, '/run/vnsnap/qemu/'), { ...ok, ramPadKib: 0, snapSerial: 0 });
    assert.deepEqual(parseQemuSavedState({ ...ok, nic: 'tap-vnet' }, '/run/vnsnap/qemu'), { ...ok, nic: 'tap-vnet' });
  });

  it('never takes a directory outside the work directory, nor a bad TAP name or NIC mode', () => {
    const bad = (v: unknown, re: RegExp): void => assert.throws(() => parseQemuSavedState(v, '/run/vnsnap/qemu'), (e: unknown) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && re.test(e.message));
    bad({ ...ok, dir: '/etc' }, /instance directory "\/etc" is not under the work directory/);
    bad({ ...ok, dir: '/run/vnsnap/qemu/../../etc' }, /is not under the work directory/);
    bad({ ...ok, dir: '/run/vnsnap/qemuX/a' }, /is not under the work directory/);
    bad({ ...ok, taps: ['eth0; rm -rf /'] }, /bad TAP names/);
    bad({ ...ok, nic: 'bridge' }, /nic "bridge" is none of stream, tap, tap-vnet/);
    bad(null, /no driver state/);
  });
});
