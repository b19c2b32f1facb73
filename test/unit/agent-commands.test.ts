import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Agent } from '../../agent/agent';
import type { VmHandle, VmStartContext, VmStartSpec } from '../../agent/drivers/driver';
import { ManualClock } from '../../proto/core/clock';
import type { Command__Output } from '../../proto/gen/vnsnap/v1/Command';
import { FakeUdpNetwork } from '../../switch/tunnel/tunneltest/fake-transport';
import { fakeVmSpec, flush, T0, VNE } from '../support/agent-parts';

/** A Result's stamps on the manual clock that never moved: the command's arrival and the Result's writing (µs). */
const AT_T0 = { commandReceivedUnixUs: T0 * 1000, sentUnixUs: T0 * 1000 };
import { FakeDriver } from '../support/fake-driver';
import { FakeSessionTransport } from '../support/fake-session';

/** A driver whose start fails with a plain Error (not a VnsnapError). */
class BrokenDriver extends FakeDriver {
  override start(_spec: VmStartSpec, _ctx: VmStartContext): Promise<VmHandle> {
    return Promise.reject(new Error('boom'));
  }
}

describe('agent over a fake session (no gRPC, fake tunnel, manual clock)', () => {
  let root: string;
  let agent: Agent;
  let driver: FakeDriver;
  let clock: ManualClock;
  let transport: FakeSessionTransport;
  let id = 0;
  const cmd = (body: Omit<Command__Output, 'id' | 'sentUnixUs'>): Command__Output => ({ id: ++id, sentUnixUs: 0, ...body });
  const configure = cmd.bind(null, { body: 'configureVne', configureVne: { vne: VNE, vni: 7, generation: 1, peers: [], macs: [], epoch: 0 } });
  const startA = (): Command__Output => cmd({ body: 'startVm', startVm: { vne: VNE, vm: fakeVmSpec('a', 1), epoch: 0, vneVms: [], keptDisk: false } });

  beforeEach(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-agent-cmd-'));
    clock = new ManualClock(T0);
    transport = new FakeSessionTransport();
    driver = new FakeDriver();
    agent = new Agent({
      id: 'h1',
      coordinator: 'coord:1',
      tunnel: { address: '10.0.0.1', port: 6081 },
      storeConfig: { kind: 'local', dir: root },
      drivers: [driver],
      hostname: 'host-1',
      transport: new FakeUdpNetwork().endpoint(0x0a000001, 6081),
      session: transport.factory,
      clock,
    });
    await agent.start();
  });

  afterEach(async () => {
    await agent.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('registers through the injected transport, is connected on the Welcome, and lists its running VMs when it registers again', async () => {
    const first = transport.last;
    assert.deepEqual(first.written, [{ register: { agentId: 'h1', hostname: 'host-1', version: '0.1.0', tunnelAddress: '10.0.0.1', tunnelPort: 6081, drivers: ['qemu'], running: [], tls: false, migrating: [] } }]);
    let connected = 0;
    agent.on('connected', () => connected++);
    first.welcome(1000, 2000);
    assert.equal(agent.connected, true);
    assert.equal(connected, 1);
    assert.deepEqual(await first.run(configure()), { commandId: id, ok: true, ...AT_T0 });
    assert.deepEqual(await first.run(startA()), { commandId: id, ok: true, ...AT_T0 });
    assert.deepEqual(agent.vmKeys(), ['blue/a']);
    assert.deepEqual(agent.debugVms(), { agent: 'h1', vms: [{ vne: VNE, vm: 'a', ports: [{ name: 'blue/a/0', epoch: 0 }], state: { status: 'running' } }] });
    first.end();
    assert.equal(agent.connected, false);
    clock.advance(500);
    assert.deepEqual(transport.last.written[0]?.register?.running, [{ vne: VNE, vm: 'a', epoch: 0, generation: 1 }]);
  });

  it('maps failures to Results with stable codes', async () => {
    const s = transport.last;
    s.welcome(1000);
    assert.deepEqual(await s.run(startA()), { commandId: id, ok: false, errorCode: 'ERR_VNE_UNKNOWN', errorMessage: 'VNE blue is not configured on agent h1 (ConfigureVne first) [ERR_VNE_UNKNOWN]', ...AT_T0 });
    assert.equal((await s.run(cmd({}))).errorCode, 'ERR_INVALID_ARGUMENT');
    await s.run(configure());
    assert.equal((await s.run(cmd({ body: 'startVm', startVm: { vne: VNE, vm: { ...fakeVmSpec('x', 2), driver: { kind: 'xen' } }, epoch: 0, vneVms: [], keptDisk: false } }))).errorCode, 'ERR_FAILED_PRECONDITION');
    assert.equal((await s.run(cmd({ body: 'configureVne', configureVne: { vne: VNE, vni: 8, generation: 1, peers: [], macs: [], epoch: 0 } }))).errorCode, 'ERR_FAILED_PRECONDITION');
    assert.equal((await s.run(cmd({ body: 'configureVne', configureVne: { vne: VNE, vni: 7, generation: 1, peers: [], macs: [{ mac: '02:00:00:00:00:09', agentId: 'h9' }], epoch: 0 } }))).errorCode, 'ERR_PEER_UNKNOWN');
    await s.run(startA());
    assert.equal((await s.run(startA())).errorCode, 'ERR_ALREADY_EXISTS');
    const metrics = await agent.metrics.registry.metrics();
    assert.match(metrics, /vnsnap_agent_commands_total\{command="startVm",result="ERR_VNE_UNKNOWN"\} 1/);
  });

  it('a driver failure that is not a VnsnapError is ERR_INTERNAL', async () => {
    await agent.stop();
    driver = new BrokenDriver();
    agent = new Agent({ id: 'h1', coordinator: 'c', tunnel: { address: '10.0.0.1', port: 6081 }, storeConfig: { kind: 'local', dir: root }, drivers: [driver], transport: new FakeUdpNetwork().endpoint(1, 1), session: transport.factory, clock });
    await agent.start();
    const s = transport.last;
    s.welcome(1000);
    await s.run(configure());
    assert.deepEqual(await s.run(startA()), { commandId: id, ok: false, errorCode: 'ERR_INTERNAL', errorMessage: 'boom', ...AT_T0 });
  });

  it('a session lost mid-snapshot: the snapshot is aborted after dead_after_ms, its Result goes nowhere, the VM keeps running', async () => {
    const s = transport.last;
    s.welcome(1000, 2000);
    const c1 = configure();
    const c2 = startA();
    await s.run(c1);
    await s.run(c2);
    driver.holdReady = true;
    s.command(cmd({ body: 'snapshotBegin', snapshotBegin: { snapshotId: 'x', vne: VNE, epoch: 1, mode: 'SNAPSHOT_MODE_PRECOPY', vms: ['a'], storePrefix: 'snapshots/x/' } }));
    await flush();
    let lost = 0;
    agent.on('disconnected', () => lost++);
    s.end(new Error('network'));
    assert.equal(lost, 1);
    clock.advance(1999);
    await flush();
    assert.equal(driver.jobs[0]?.aborted, false);
    clock.advance(1);
    await flush();
    await flush();
    assert.equal(driver.jobs[0]?.aborted, true);
    assert.equal(agent.switch.portEpoch('blue/a/0'), 1);
    assert.equal(driver.status('blue/a'), 'running');
    assert.deepEqual(
      s.results.map((r) => r.commandId),
      [c1.id, c2.id],
    );
  });
});
