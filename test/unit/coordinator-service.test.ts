import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isVnsnapError } from '../../proto/core/errors';
import type { DefineVneRequest__Output } from '../../proto/gen/vnsnap/v1/DefineVneRequest';
import type { SnapshotEvent } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import type { VmSpec__Output } from '../../proto/gen/vnsnap/v1/VmSpec';
import type { Vne__Output } from '../../proto/gen/vnsnap/v1/Vne';
import { encodeManifest, decodeManifest } from '../../proto/artefacts/manifest';
import { Catalog } from '../../coordinator/catalog';
import { ManualClock } from '../../proto/core/clock';
import { EventBus } from '../../coordinator/events';
import { RestoreSequencer, artefactVm } from '../../coordinator/restore-sequencer';
import { CoordinatorServiceImpl } from '../../coordinator/service';
import { readConfigFile } from '../../coordinator/main';
import { CoordinatorServer } from '../../coordinator/server';
import { SnapshotSequencer } from '../../coordinator/snapshot-sequencer';
import { failed, FakeAgents, flush, log, MemoryManifestStore, ok, type Sent } from './coordinator-fakes';
import { CasStore } from '../../proto/store/cas-store';
import { MemoryObjects } from '../support/memory-objects';
import { simVmSpec, vneRecord } from '../support/vne-record';

function vm(name: string, host: string, mac: string, peers: string[] = []): VmSpec__Output {
  return simVmSpec(name, host, mac, { peers });
}

function req(over: Partial<Vne__Output> = {}, vms?: VmSpec__Output[]): DefineVneRequest__Output {
  return { vne: vneRecord({ vms: vms ?? [vm('vm1', 'h1', '52:54:00:00:00:01', ['vm2']), vm('vm2', 'h2', '52:54:00:00:00:02', ['vm1'])], ...over }) };
}

function setup() {
  const clock = new ManualClock();
  const catalog = new Catalog(':memory:', { now: () => clock.now() });
  const agents = new FakeAgents(['h1', 'h2']);
  const manifests = new MemoryManifestStore();
  const events = new EventBus(() => clock.now());
  const deps = { agents, catalog, manifests, store: new CasStore(new MemoryObjects()), clock, log, events, version: '0.1.0' };
  const snapshots = new SnapshotSequencer({ ...deps, newSnapshotId: (v, e) => `${v}-s${e}` });
  let nRestores = 0;
  const restores = new RestoreSequencer({ ...deps, newRestoreId: (s) => (++nRestores === 1 ? `r-${s}` : `r-${s}-${nRestores}`) });
  const svc = new CoordinatorServiceImpl({ ...deps, store: new CasStore(new MemoryObjects()), snapshots, restores });
  // Persist: a memory and a channel artefact per VM of the agent.
  agents.on('snapshotPersist', (agent: string) => {
    const id = 'blue-s1';
    const vms = agent === 'h1' ? ['vm1'] : ['vm2'];
    return ok({
      payload: 'persist',
      persist: {
        artefacts: vms.flatMap((v) => [
          { path: `snapshots/${id}/${v}.mem`, size: 10, sha256: 'aa'.repeat(32), kind: 'ARTEFACT_KIND_MEMORY' as const, owner: v, attributes: {}, storedBytes: 0 },
          { path: `snapshots/${id}/${v}/port0.chan`, size: 5, sha256: 'bb'.repeat(32), kind: 'ARTEFACT_KIND_CHANNEL' as const, owner: `${v}.0`, attributes: {}, storedBytes: 0 },
        ]),
        vms: [],
        lostFrames: 0,
      },
    });
  });
  return { clock, catalog, agents, manifests, events, svc };
}

/** The ConfigureVne of VNE blue: one peer, vm1's and vm2's MACs on the given agents. */
function configureBlue(generation: number, epoch: number, peer: string, hosts: [string, string]) {
  return {
    vne: 'blue',
    vni: 100,
    generation,
    epoch,
    peers: [{ agentId: peer, address: `10.0.0.${peer.slice(1)}`, port: 6081 }],
    macs: [
      { mac: '52:54:00:00:00:01', agentId: hosts[0] },
      { mac: '52:54:00:00:00:02', agentId: hosts[1] },
    ],
  };
}

async function running(s: ReturnType<typeof setup>) {
  await s.svc.defineVne(req());
  await s.svc.startVne({ name: 'blue' });
}

async function snapshot(s: ReturnType<typeof setup>) {
  const events: SnapshotEvent[] = [];
  const snap = await s.svc.createSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_BACKGROUND', precopyDeadlineMs: 0, timeoutMs: 0, description: '' }, (e) => events.push(e));
  assert.equal(snap.state, 'SNAPSHOT_STATE_COMPLETE', snap.error);
  return snap;
}

describe('coordinator service: VNE definitions', () => {
  const cases: [string, DefineVneRequest__Output, string, string][] = [
    ['no vne', { vne: null }, 'ERR_INVALID_ARGUMENT', 'vne is required'],
    ['no name', req({ name: '' }), 'ERR_INVALID_ARGUMENT', 'VNE name is required'],
    ['bad name', req({ name: '../etc' }), 'ERR_INVALID_ARGUMENT', `VNE name "../etc" is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`],
    ['VNI too big', req({ vni: 16777216 }), 'ERR_INVALID_ARGUMENT', 'VNI 16777216 is out of range (0..16777215)'],
    ['no VMs', req({}, []), 'ERR_INVALID_ARGUMENT', 'VNE "blue" has no VMs'],
    ['duplicate VM', req({}, [vm('a', 'h1', '52:54:00:00:00:01'), vm('a', 'h1', '52:54:00:00:00:02')]), 'ERR_INVALID_ARGUMENT', 'VM name "a" is used twice in VNE "blue"'],
    ['bad VM name', req({}, [vm('a b', 'h1', '52:54:00:00:00:01')]), 'ERR_INVALID_ARGUMENT', `VM name "a b" is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`],
    ['no host', req({}, [vm('a', '', '52:54:00:00:00:01')]), 'ERR_INVALID_ARGUMENT', 'VM "a" has no host (the agent id it runs on)'],
    ['no MAC', req({}, [{ ...vm('a', 'h1', ''), macs: [] }]), 'ERR_INVALID_ARGUMENT', 'VM "a" has no MAC address (one per vNIC)'],
    ['bad MAC', req({}, [vm('a', 'h1', '52:54:00:00:01')]), 'ERR_INVALID_ARGUMENT', 'VM "a": "52:54:00:00:01" is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)'],
    ['multicast MAC', req({}, [vm('a', 'h1', '01:00:5e:00:00:01')]), 'ERR_INVALID_ARGUMENT', 'VM "a": 01:00:5e:00:00:01 is a multicast address; a vNIC needs a unicast MAC'],
    ['broadcast MAC', req({}, [vm('a', 'h1', 'FF:FF:FF:FF:FF:FF')]), 'ERR_INVALID_ARGUMENT', 'VM "a": ff:ff:ff:ff:ff:ff is a multicast address; a vNIC needs a unicast MAC'],
    ['zero MAC', req({}, [vm('a', 'h1', '00:00:00:00:00:00')]), 'ERR_INVALID_ARGUMENT', 'VM "a": 00:00:00:00:00:00 is not a usable MAC address'],
    ['MAC twice', req({}, [vm('a', 'h1', '52:54:00:00:00:01'), vm('b', 'h1', '52:54:00:00:00:01')]), 'ERR_INVALID_ARGUMENT', 'MAC 52:54:00:00:00:01 is used by both VM "a" and VM "b"'],
    ['no driver', req({}, [{ ...vm('a', 'h1', '52:54:00:00:00:01'), driver: null }]), 'ERR_INVALID_ARGUMENT', 'VM "a" has no driver spec (sim, qemu or xen)'],
    ['sim without memory', req({}, [{ ...vm('a', 'h1', '52:54:00:00:00:01'), driver: { sim: { memoryMib: 0, dirtyRateMibS: 0, frameRateHz: 0, peers: [] }, kind: 'sim' } }]), 'ERR_INVALID_ARGUMENT', 'VM "a": sim driver needs memory_mib > 0'],
    ['qemu without kernel or disk', req({}, [{ ...vm('a', 'h1', '52:54:00:00:00:01'), driver: { qemu: { memoryMib: 64, cpus: 1, kernel: '', initrd: '', append: '', disk: '', extra: {} }, kind: 'qemu' } }]), 'ERR_INVALID_ARGUMENT', 'VM "a": qemu driver needs a kernel or a disk'],
    ['xen without config', req({}, [{ ...vm('a', 'h1', '52:54:00:00:00:01'), driver: { xen: { config: ' ' }, kind: 'xen' } }]), 'ERR_INVALID_ARGUMENT', 'VM "a": xen driver needs its xl config'],
    ['unknown sim peer', req({}, [vm('a', 'h1', '52:54:00:00:00:01', ['zz'])]), 'ERR_INVALID_ARGUMENT', 'VM "a": sim peer "zz" is not a VM of VNE "blue"'],
    ['sim peer itself', req({}, [vm('a', 'h1', '52:54:00:00:00:01', ['a'])]), 'ERR_INVALID_ARGUMENT', 'VM "a": a sim VM cannot be its own peer'],
  ];
  for (const [name, r, code, message] of cases) {
    it(`DefineVne refuses: ${name}`, async () => {
      const { svc, catalog } = setup();
      await assert.rejects(svc.defineVne(r), (e) => isVnsnapError(e) && e.code === code && e.message === message);
      assert.deepEqual(catalog.listVnes(), []);
    });
  }

  it('DefineVne stores a normalised definition at generation 1, epoch 0; name and VNI are unique', async () => {
    const { svc, clock } = setup();
    const v = await svc.defineVne(req({ vni: 16777215, generation: 9, epoch: 9, state: 'VNE_STATE_RUNNING' }, [vm('vm1', 'h1', '52:54:00:AB:00:01')]));
    assert.deepEqual(v, { name: 'blue', vni: 16777215, vms: [vm('vm1', 'h1', '52:54:00:ab:00:01')], generation: 1, epoch: 0, state: 'VNE_STATE_DEFINED', createdUnixMs: clock.now(), updatedUnixMs: clock.now(), placement: { vm1: 'h1' }, vmStatus: [{ vm: 'vm1', host: 'h1', hostReachable: true, state: 'VM_RUN_STATE_STOPPED', diskSource: 'DISK_SOURCE_SPEC', diskHost: '', diskPath: '', diskBytes: 0, diskKeptUnixMs: 0 }], fenced: [], stateReason: '' });
    assert.deepEqual(await svc.getVne({ name: 'blue' }), v);
    await assert.rejects(svc.defineVne(req()), (e) => isVnsnapError(e, 'ERR_ALREADY_EXISTS') && e.message === 'VNE "blue" already exists');
    await assert.rejects(svc.defineVne(req({ name: 'red', vni: 16777215 })), (e) => isVnsnapError(e, 'ERR_ALREADY_EXISTS') && e.message === 'VNI 16777215 is already used by VNE "blue"');
    await assert.rejects(svc.getVne({ name: 'nope' }), (e) => isVnsnapError(e, 'ERR_NOT_FOUND') && e.message === 'VNE "nope" does not exist');
  });

  it('StartVne: ConfigureVne (peers, MAC routes) to every agent, then StartVm at the VNE epoch', async () => {
    const s = setup();
    await s.svc.defineVne(req());
    const { vne } = await s.svc.startVne({ name: 'blue' });
    assert.equal(vne.state, 'VNE_STATE_RUNNING');
    assert.deepEqual(s.agents.names(), ['h1:configureVne', 'h2:configureVne', 'h1:startVm', 'h2:startVm']);
    const macs = [
      { mac: '52:54:00:00:00:01', agentId: 'h1' },
      { mac: '52:54:00:00:00:02', agentId: 'h2' },
    ];
    assert.deepEqual(s.agents.sent[0]?.body.configureVne, { vne: 'blue', vni: 100, generation: 1, epoch: 0, peers: [{ agentId: 'h2', address: '10.0.0.2', port: 6081 }], macs });
    assert.deepEqual(s.agents.sent[1]?.body.configureVne, { vne: 'blue', vni: 100, generation: 1, epoch: 0, peers: [{ agentId: 'h1', address: '10.0.0.1', port: 6081 }], macs });
    // vne_vms: names and MACs only (every StartVm carries every VM of the VNE: n² in all).
    const vneVms = [
      { name: 'vm1', macs: ['52:54:00:00:00:01'] },
      { name: 'vm2', macs: ['52:54:00:00:00:02'] },
    ];
    assert.deepEqual(s.agents.sent[3]?.body.startVm, { vne: 'blue', vm: vm('vm2', 'h2', '52:54:00:00:00:02', ['vm1']), epoch: 0, vneVms, keptDisk: false });
    await assert.rejects(s.svc.startVne({ name: 'blue' }), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'VNE "blue" is already running');
    await assert.rejects(s.svc.updateVne(req()), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'VNE "blue" is running: stop it before changing its definition');
    await assert.rejects(s.svc.deleteVne({ name: 'blue', deleteSnapshots: false }), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'VNE "blue" is running: stop it first');
    const agents = await s.svc.listAgents();
    assert.deepEqual(agents.agents, []); // the fake link registers nobody in the catalog
  });

  it('StartVne refuses with an agent disconnected and stops what started when a StartVm fails', async () => {
    const s = setup();
    await s.svc.defineVne(req());
    s.agents.connected.delete('h2');
    await assert.rejects(s.svc.startVne({ name: 'blue' }), (e) => isVnsnapError(e, 'ERR_AGENT_DISCONNECTED') && e.message === 'agent "h2" (host of vm2 in VNE blue) is not connected');
    assert.deepEqual(s.agents.sent, []);
    s.agents.connected.add('h2');
    s.agents.on('startVm', failed('ERR_DRIVER', 'no kvm'), 'h2');
    await assert.rejects(s.svc.startVne({ name: 'blue' }), (e) => isVnsnapError(e, 'ERR_DRIVER') && e.message === 'agent h2: StartVm failed: no kvm');
    assert.deepEqual(s.agents.names('stopVm'), ['h1:stopVm', 'h2:stopVm']);
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_DEFINED');
  });

  it('StopVne stops every VM; UpdateVne and DeleteVne then work (ForgetVne to every connected agent); a VNE with snapshots needs delete_snapshots', async () => {
    const s = setup();
    await running(s);
    const snap = await snapshot(s);
    await assert.rejects(s.svc.stopVne({ name: 'nope' }), (e) => isVnsnapError(e, 'ERR_NOT_FOUND'));
    await s.svc.stopVne({ name: 'blue' });
    assert.deepEqual(s.agents.names('stopVm'), ['h1:stopVm', 'h2:stopVm']);
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_DEFINED');
    await s.svc.stopVne({ name: 'blue' }); // idempotent
    const u = await s.svc.updateVne(req({ vni: 101 }));
    assert.equal(u.vni, 101);
    assert.equal(u.epoch, 1, 'update keeps the epoch');
    await assert.rejects(s.svc.updateVne(req({ name: 'green' })), (e) => isVnsnapError(e, 'ERR_NOT_FOUND'));
    await assert.rejects(s.svc.deleteVne({ name: 'blue', deleteSnapshots: false }), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'VNE "blue" has 1 snapshot: delete them first or pass delete_snapshots');
    s.agents.on('forgetVne', failed('ERR_FAILED_PRECONDITION', 'VNE blue still has ports here (p): detach them first'), 'h2');
    await s.svc.deleteVne({ name: 'blue', deleteSnapshots: true });
    assert.deepEqual(s.agents.sent.filter((x) => x.name === 'forgetVne').map((x) => [x.agent, x.body.forgetVne]), [['h1', { vne: 'blue', vni: 101 }], ['h2', { vne: 'blue', vni: 101 }]], 'every connected agent told, a refusal only logged');
    assert.deepEqual(s.agents.sent.filter((x) => x.name === 'deleteArtefacts').map((x) => [x.agent, x.body.deleteArtefacts?.storePrefix, x.body.deleteArtefacts?.paths?.length]), [['h1', 'snapshots/blue-s1/', 5]]);
    assert.equal(s.manifests.files.size, 0);
    assert.deepEqual(s.catalog.listVnes(), []);
    assert.equal(s.catalog.getSnapshot(snap.id), undefined);
  });

  it('StopVne with an agent gone: stops the rest, fences its VM, VNE DEFINED saying so', async () => {
    const s = setup();
    await running(s);
    s.agents.connected.delete('h2');
    const { vne } = await s.svc.stopVne({ name: 'blue' });
    assert.equal(vne?.state, 'VNE_STATE_DEFINED');
    assert.equal(vne?.stateReason, 'stopped without VM vm2 on h2 (host unreachable): fenced, it is stopped when its host returns');
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_DEFINED');
  });
});

describe('coordinator service: bounds', () => {
  const M = '52:54:00:00:00:01';
  const qemu = (over: Record<string, unknown>) => req({}, [{ ...vm('a', 'h1', M), driver: { qemu: { memoryMib: 64, cpus: 1, kernel: '/k', initrd: '', append: '', disk: '', extra: {}, ...over }, kind: 'qemu' } }]);
  const sim = (over: Record<string, unknown>) => req({}, [{ ...vm('a', 'h1', M), driver: { sim: { memoryMib: 8, dirtyRateMibS: 0, frameRateHz: 0, peers: [], ...over }, kind: 'sim' } }]);
  const cases: [string, DefineVneRequest__Output, string][] = [
    ['1 MB VNE name', req({ name: 'a'.repeat(1 << 20) }), 'VNE name is 1048576 characters long; the limit is 63'],
    ['64-character VM name', req({}, [vm('v'.repeat(64), 'h1', M)]), 'VM name is 64 characters long; the limit is 63'],
    ['long host', req({}, [vm('a', 'h'.repeat(129), M)]), 'VM "a": host is 129 characters long; the limit is 128'],
    ['long MAC string', req({}, [vm('a', 'h1', 'x'.repeat(100))]), `VM "a": "${'x'.repeat(32)}"... (100 characters) is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)`],
    ['qemu memory 2^32-1', qemu({ memoryMib: 4294967295 }), 'VM "a": qemu.memory_mib 4294967295 is out of range (16..1048576 MiB)'],
    ['qemu memory 8', qemu({ memoryMib: 8 }), 'VM "a": qemu.memory_mib 8 is out of range (16..1048576 MiB)'],
    ['qemu cpus 257', qemu({ cpus: 257 }), 'VM "a": qemu.cpus 257 is out of range (0..256)'],
    ['qemu kernel path too long', qemu({ kernel: '/'.repeat(4097) }), 'VM "a": qemu.kernel is 4097 characters long; the limit is 4096'],
    ['qemu extra value too long', qemu({ extra: { machine: 'q'.repeat(4097) } }), 'VM "a": qemu.extra.machine is 4097 characters long; the limit is 4096'],
    ['xen config too long', req({}, [{ ...vm('a', 'h1', M), driver: { xen: { config: 'x'.repeat(65537) }, kind: 'xen' } }]), 'VM "a": xen.config is 65537 characters long; the limit is 65536'],
    ['sim memory 2^32-1', sim({ memoryMib: 4294967295 }), 'VM "a": sim.memory_mib 4294967295 is out of range (1..1048576 MiB)'],
    ['sim frame rate', sim({ frameRateHz: 100001 }), 'VM "a": sim.frame_rate_hz 100001 is out of range (0..100000 Hz)'],
    ['sim dirty rate', sim({ dirtyRateMibS: 65537 }), 'VM "a": sim.dirty_rate_mib_s 65537 is out of range (0..65536 MiB/s)'],
  ];
  for (const [name, r, message] of cases) {
    it(`DefineVne refuses with INVALID_ARGUMENT: ${name}`, async () => {
      const { svc, catalog } = setup();
      await assert.rejects(svc.defineVne(r), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === message);
      assert.deepEqual(catalog.listVnes(), []);
    });
  }

  it('DefineVne accepts the bounds themselves', async () => {
    const { svc } = setup();
    await svc.defineVne(req({ name: 'n'.repeat(63), vni: 1 }, [{ ...vm('a', 'h1', M), driver: { qemu: { memoryMib: 1048576, cpus: 256, kernel: '/k', initrd: '', append: '', disk: '', extra: {} }, kind: 'qemu' } }]));
    await svc.defineVne(req({ name: 'low', vni: 2 }, [{ ...vm('a', 'h1', M), driver: { qemu: { memoryMib: 16, cpus: 0, kernel: '/k', initrd: '', append: '', disk: '', extra: {} }, kind: 'qemu' } }]));
  });

  it('lookups refuse over-long names and ids as INVALID_ARGUMENT without echoing them', async () => {
    const { svc } = setup();
    await assert.rejects(svc.getVne({ name: 'a'.repeat(1 << 20) }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === 'VNE name is 1048576 characters long; the limit is 63');
    await assert.rejects(svc.getSnapshot({ id: 's'.repeat(129) }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === 'snapshot id is 129 characters long; the limit is 128');
  });

  it('CreateSnapshot and RestoreSnapshot refuse timeouts Node cannot keep (above 2^31-1 ms)', async () => {
    const s = setup();
    await s.svc.defineVne(req());
    const create = (over: Record<string, unknown>) => () => s.svc.createSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_BACKGROUND', precopyDeadlineMs: 0, timeoutMs: 0, description: '', ...over }, () => undefined);
    assert.throws(create({ timeoutMs: 2 ** 31 }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === 'timeout_ms 2147483648 is out of range (0..2147483647 ms, about 24.8 days; 0 = the default)');
    assert.throws(create({ timeoutMs: 4294967295 }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === 'timeout_ms 4294967295 is out of range (0..2147483647 ms, about 24.8 days; 0 = the default)');
    assert.throws(create({ precopyDeadlineMs: 2 ** 31 }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === 'precopy_deadline_ms 2147483648 is out of range (0..2147483647 ms, about 24.8 days; 0 = the default)');
    assert.throws(create({ description: 'd'.repeat(1025) }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === 'description is 1025 characters long; the limit is 1024');
    assert.equal(s.catalog.listSnapshots().length, 0);
    const restore = (over: Record<string, unknown>) => () => s.svc.restoreSnapshot({ snapshotId: 'blue-s1', placement: {}, stopRunning: true, timeoutMs: 0, ...over }, () => undefined);
    assert.throws(restore({ timeoutMs: 2 ** 31 }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === 'timeout_ms 2147483648 is out of range (0..2147483647 ms, about 24.8 days; 0 = the default)');
    assert.throws(restore({ placement: { vm1: 'h'.repeat(129) } }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === 'placement of VM "vm1" is 129 characters long; the limit is 128');
  });

});

describe('coordinator settings: timers Node can keep', () => {
  it('the server and its config file refuse millisecond settings above 2^31-1', async () => {
    const server = new CoordinatorServer({ config: { listen: '127.0.0.1:0', db: ':memory:', storeDir: '/nonexistent', commandTimeoutMs: 2 ** 31 }, log });
    await assert.rejects(server.start(), (e) => isVnsnapError(e, 'ERR_CONFIG') && e.message === 'commandTimeoutMs 2147483648 is out of range (1..2147483647 ms)');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-coord-cfg-'));
    try {
      const file = path.join(dir, 'c.json');
      fs.writeFileSync(file, JSON.stringify({ deadAfterMs: 4294967295 }));
      assert.throws(() => readConfigFile(file), (e) => isVnsnapError(e, 'ERR_CONFIG') && e.message === `config ${file}: "deadAfterMs" must be at most 2147483647 (ms; Node timers hold no more)`);
      fs.writeFileSync(file, JSON.stringify({ deadAfterMs: 2147483647 }));
      assert.deepEqual(readConfigFile(file), { deadAfterMs: 2147483647 });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('coordinator service: agents registering again', () => {
  it('an agent that registers without VMs the catalog places on it makes their VNE FAILED (restorable); one that reports them changes nothing', async () => {
    const s = setup();
    await running(s);
    const seen: string[] = [];
    s.events.subscribe((e) => e.kind === 'vne.failed' && seen.push(`${e.kind} ${e.vne} ${e.agent}`));
    // A session blip: the agent comes back with its VM.
    s.svc.agentJoined('h2', [{ vne: 'blue', vm: 'vm2', epoch: 0, generation: 1 }]);
    assert.equal((await s.svc.getVne({ name: 'blue' })).state, 'VNE_STATE_RUNNING');
    // The agent restarted: vm2 died with it.
    s.svc.agentJoined('h2', []);
    assert.equal((await s.svc.getVne({ name: 'blue' })).state, 'VNE_STATE_FAILED');
    assert.deepEqual(seen, ['vne.failed blue h2']);
    // h1 (which never runs vm2) registering changes nothing more; a DEFINED VNE is never failed.
    s.svc.agentJoined('h1', [{ vne: 'blue', vm: 'vm1', epoch: 0, generation: 1 }]);
    await s.svc.defineVne(req({ name: 'green', vni: 7 }));
    s.svc.agentJoined('h1', []);
    assert.equal((await s.svc.getVne({ name: 'green' })).state, 'VNE_STATE_DEFINED');
    // (blue is already FAILED; h1 now registering without vm1 reports vm1 dead too.)
    assert.deepEqual(seen, ['vne.failed blue h2', 'vne.failed blue h1']);
    assert.deepEqual((await s.svc.getVne({ name: 'blue' })).vmStatus.map((x) => x.state), ['VM_RUN_STATE_DEAD', 'VM_RUN_STATE_DEAD']);
    // No snapshot of a failed VNE.
    await assert.rejects(
      async () => s.svc.createSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_BACKGROUND', precopyDeadlineMs: 0, timeoutMs: 0, description: '' }, () => undefined),
      (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION'),
    );
  });
});

describe('coordinator service: an agent away, and back', () => {
  const snapReq = { vne: 'blue', mode: 'SNAPSHOT_MODE_BACKGROUND' as const, precopyDeadlineMs: 0, timeoutMs: 0, description: '' };
  const kinds = (s: ReturnType<typeof setup>) => {
    const seen: string[] = [];
    s.events.subscribe((e) => e.kind.startsWith('vne.') || e.kind.startsWith('vm.') ? seen.push(`${e.kind} ${e.vne}: ${e.message}`) : undefined);
    return seen;
  };
  /** Run the VNE, snapshot it (epoch 1), then lose h2. */
  function known(s: ReturnType<typeof setup>) {
    for (const id of ['h1', 'h2']) s.catalog.upsertAgent({ id, hostname: id, version: '0.1.0', tunnelAddress: '10.0.0.1', tunnelPort: 6081, drivers: ['sim'], connectedUnixMs: 0, lastSeenUnixMs: 0 });
  }
  async function degraded() {
    const s = setup();
    known(s);
    await running(s);
    const snap = await snapshot(s);
    const seen = kinds(s);
    s.agents.disconnect('h2');
    s.svc.agentLeft('h2', 'no heartbeat for 3000 ms');
    s.agents.sent.length = 0;
    return { s, snap, seen };
  }

  it('agent lost: VNE DEGRADED, its VM unmanaged; snapshots and in-place restores refused naming the agent', async () => {
    const { s, snap, seen } = await degraded();
    assert.deepEqual(seen, ['vne.degraded blue: agent h2 disconnected (no heartbeat for 3000 ms): vm2 unmanaged; snapshots and restores refused until it is back']);
    const v = await s.svc.getVne({ name: 'blue' });
    assert.equal(v.state, 'VNE_STATE_DEGRADED');
    assert.equal(v.stateReason, 'agent h2 (host of vm2) disconnected: its VMs are unmanaged; snapshots and restores are refused until it is back');
    assert.deepEqual(v.vmStatus, [
      { vm: 'vm1', host: 'h1', hostReachable: true, state: 'VM_RUN_STATE_RUNNING', diskSource: 'DISK_SOURCE_INSTANCE', diskHost: 'h1', diskPath: '', diskBytes: 0, diskKeptUnixMs: 0 },
      { vm: 'vm2', host: 'h2', hostReachable: false, state: 'VM_RUN_STATE_UNMANAGED', diskSource: 'DISK_SOURCE_INSTANCE', diskHost: 'h2', diskPath: '', diskBytes: 0, diskKeptUnixMs: 0 },
    ]);
    assert.deepEqual((await s.svc.listVnes()).vnes.map((x) => x.vmStatus.map((st) => st.state)), [['VM_RUN_STATE_RUNNING', 'VM_RUN_STATE_UNMANAGED']]);
    await assert.rejects(
      async () => s.svc.createSnapshot(snapReq, () => undefined),
      (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'VNE "blue" is degraded: agent h2 (host of vm2) is disconnected; snapshots are refused until it is back; nothing was snapshotted',
    );
    await assert.rejects(
      s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: true, timeoutMs: 0 }, () => undefined),
      (e) =>
        isVnsnapError(e, 'ERR_FAILED_PRECONDITION') &&
        e.message === 'VNE "blue" is degraded: agent h2 (host of vm2) is disconnected; restores in place are refused until it is back, or place its VMs elsewhere (--place vm2=HOST, or --place-lost HOST) to fence them; nothing was restored',
    );
    await assert.rejects(s.svc.startVne({ name: 'blue' }), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'VNE "blue" is already running');
    assert.deepEqual(s.agents.sent, []);
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_DEGRADED');
  });

  it('agent back with its VMs: ConfigureVne at the current generation and epoch to it and its peer, then RUNNING by itself', async () => {
    const { s, seen } = await degraded();
    s.agents.connected.add('h2');
    s.agents.on('configureVne', 'hold', 'h2');
    s.svc.agentJoined('h2', [{ vne: 'blue', vm: 'vm2', epoch: 1, generation: 1 }]);
    assert.deepEqual(s.agents.names(), ['h1:configureVne', 'h2:configureVne']);
    assert.deepEqual(s.agents.peek('h2', 'configureVne').body.configureVne, configureBlue(1, 1, 'h1', ['h1', 'h2']));
    // Until the returning agent has its ports back, the VNE stays degraded.
    await flush();
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_DEGRADED');
    s.agents.reply('h2', 'configureVne');
    await flush();
    const v = await s.svc.getVne({ name: 'blue' });
    assert.equal(v.state, 'VNE_STATE_RUNNING');
    assert.equal(v.stateReason, '');
    assert.deepEqual(v.vmStatus.map((x) => `${x.vm}@${x.host}:${x.hostReachable}:${x.state}`), ['vm1@h1:true:VM_RUN_STATE_RUNNING', 'vm2@h2:true:VM_RUN_STATE_RUNNING']);
    assert.deepEqual(seen.slice(1), ['vne.recovered blue: agent h2 is back with its VMs: VNE running']);
    assert.deepEqual(s.agents.names('stopVm'), []);
    await snapshot2(s);
    // Registering again at the same tunnel endpoint: only the agent itself is configured.
    s.agents.sent.length = 0;
    s.svc.agentJoined('h2', [{ vne: 'blue', vm: 'vm2', epoch: 2, generation: 1 }], false);
    assert.deepEqual(s.agents.names(), ['h2:configureVne']);
  });

  /** A snapshot is accepted again (it runs at the next epoch). */
  async function snapshot2(s: ReturnType<typeof setup>) {
    const snap = await s.svc.createSnapshot(snapReq, () => undefined);
    assert.equal(snap.epoch, 2);
  }

  it('agent back without a VM: that VM died, the VNE is FAILED with a message naming it; nothing is configured', async () => {
    const { s, seen } = await degraded();
    s.agents.connected.add('h2');
    s.svc.agentJoined('h2', []);
    await flush();
    const v = await s.svc.getVne({ name: 'blue' });
    assert.equal(v.state, 'VNE_STATE_FAILED');
    assert.equal(v.stateReason, 'VM vm2 of VNE blue died while agent h2 was away (it registered without it): restore a snapshot or stop and start the VNE');
    assert.deepEqual(v.vmStatus.map((x) => x.state), ['VM_RUN_STATE_RUNNING', 'VM_RUN_STATE_DEAD']);
    assert.deepEqual(seen.slice(1), ['vne.failed blue: VM vm2 of VNE blue died while agent h2 was away (it registered without it): restore a snapshot or stop and start the VNE']);
    assert.deepEqual(s.agents.sent, []);
    // A stop and start recovers it, and forgets the dead VM.
    await s.svc.stopVne({ name: 'blue' });
    await s.svc.startVne({ name: 'blue' });
    assert.deepEqual((await s.svc.getVne({ name: 'blue' })).vmStatus.map((x) => x.state), ['VM_RUN_STATE_RUNNING', 'VM_RUN_STATE_RUNNING']);
  });

  it('after a coordinator restart, the sweep makes a VNE whose agent did not come back DEGRADED', async () => {
    const s = setup();
    await running(s);
    const seen = kinds(s);
    s.agents.connected.delete('h2');
    s.svc.health.sweep("not registered within 3000 ms of the coordinator's start");
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_DEGRADED');
    assert.deepEqual(seen, ["vne.degraded blue: agent h2 disconnected (not registered within 3000 ms of the coordinator's start): vm2 unmanaged; snapshots and restores refused until it is back"]);
  });

  it('a VM dead, another of the same agent alive: the VNE is FAILED naming the dead one, the survivor is configured again (keeps its network)', async () => {
    const s = setup();
    await s.svc.defineVne(req({}, [vm('vm1', 'h1', '52:54:00:00:00:01'), vm('vm2', 'h2', '52:54:00:00:00:02'), vm('vm3', 'h2', '52:54:00:00:00:03')]));
    await s.svc.startVne({ name: 'blue' });
    s.agents.disconnect('h2');
    s.svc.agentLeft('h2', 'session ended by the agent');
    s.agents.sent.length = 0;
    s.agents.connected.add('h2');
    s.svc.agentJoined('h2', [{ vne: 'blue', vm: 'vm3', epoch: 0, generation: 1 }], false);
    await flush();
    assert.deepEqual(s.agents.names(), ['h2:configureVne']);
    const v = await s.svc.getVne({ name: 'blue' });
    assert.equal(v.state, 'VNE_STATE_FAILED');
    assert.equal(v.stateReason, 'VM vm2 of VNE blue died while agent h2 was away (it registered without it): restore a snapshot or stop and start the VNE');
    assert.deepEqual(v.vmStatus.map((x) => `${x.vm}:${x.state}`), ['vm1:VM_RUN_STATE_RUNNING', 'vm2:VM_RUN_STATE_DEAD', 'vm3:VM_RUN_STATE_RUNNING']);
  });

  it('two agents away: the reason names both; one back: still DEGRADED naming the other; both back: RUNNING', async () => {
    const { s, seen } = await degraded();
    s.agents.disconnect('h1');
    s.svc.agentLeft('h1', 'session ended by the agent');
    assert.equal(s.catalog.getVne('blue')?.stateReason, 'agents h1 (host of vm1), h2 (host of vm2) disconnected: their VMs are unmanaged; snapshots and restores are refused until they are back');
    assert.equal(seen.length, 2);
    s.agents.connected.add('h1');
    s.svc.agentJoined('h1', [{ vne: 'blue', vm: 'vm1', epoch: 1, generation: 1 }], false);
    await flush();
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_DEGRADED');
    assert.equal(s.catalog.getVne('blue')?.stateReason, 'agent h2 (host of vm2) disconnected: its VMs are unmanaged; snapshots and restores are refused until it is back');
    s.agents.connected.add('h2');
    s.svc.agentJoined('h2', [{ vne: 'blue', vm: 'vm2', epoch: 1, generation: 1 }], false);
    await flush();
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_RUNNING');
    assert.equal(s.catalog.getVne('blue')?.stateReason, '');
  });

  it('a snapshot in flight when an agent leaves aborts, and leaves the VNE DEGRADED (not RUNNING)', async () => {
    const s = setup();
    await running(s);
    s.agents.on('snapshotBegin', 'hold');
    const seen = kinds(s);
    const done = s.svc.createSnapshot(snapReq, () => undefined);
    await flush();
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_SNAPSHOTTING');
    s.agents.disconnect('h2');
    s.svc.agentLeft('h2', 'session ended by the agent');
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_SNAPSHOTTING');
    assert.deepEqual(seen, ['vne.degraded blue: agent h2 disconnected (session ended by the agent): vm2 unmanaged; snapshots and restores refused until it is back']);
    const snap = await done;
    assert.equal(snap.state, 'SNAPSHOT_STATE_ABORTED');
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_DEGRADED');
    assert.equal(s.catalog.getVne('blue')?.stateReason, 'agent h2 (host of vm2) disconnected: its VMs are unmanaged; snapshots and restores are refused until it is back');
  });

  it('a returning agent stops what the catalog does not place on it at the current generation', async () => {
    const s = setup();
    await running(s);
    await s.svc.defineVne(req({ name: 'green', vni: 7 }));
    s.agents.sent.length = 0;
    const seen = kinds(s);
    // vm1 runs on h1 (not here), green is stopped, gone does not exist: all three are stale; vm2 is h2's.
    s.svc.agentJoined('h2', [
      { vne: 'blue', vm: 'vm2', epoch: 0, generation: 1 },
      { vne: 'blue', vm: 'vm1', epoch: 0, generation: 1 },
      { vne: 'green', vm: 'vm2', epoch: 0, generation: 1 },
      { vne: 'gone', vm: 'x', epoch: 0, generation: 3 },
    ]);
    await flush();
    assert.deepEqual(s.agents.sent.filter((x) => x.name === 'stopVm').map((x) => x.body.stopVm), [
      { vne: 'blue', vm: 'vm1' },
      { vne: 'green', vm: 'vm2' },
      { vne: 'gone', vm: 'x' },
    ]);
    assert.deepEqual(seen, [
      'vm.fenced blue: stopped the stale instance of vm1 on h2 (generation 1): vm1 runs on h1 at generation 1',
      'vm.fenced green: stopped the stale instance of vm2 on h2 (generation 1): VNE green is stopped',
      'vm.fenced gone: stopped the stale instance of x on h2 (generation 3): VNE gone does not exist',
    ]);
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_RUNNING');
    // An instance of an older generation placed here is stale too: stopped, and the VM counts as dead.
    s.catalog.updateVne('blue', { generation: 4 });
    s.agents.sent.length = 0;
    s.svc.agentJoined('h2', [{ vne: 'blue', vm: 'vm2', epoch: 0, generation: 3 }]);
    await flush();
    assert.deepEqual(s.agents.names(), ['h2:stopVm']);
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_FAILED');
  });

  it("lost-host restore onto one agent: one VM's bad artefacts, validated beside the other VM's, refuse it with nothing touched", async () => {
    const { s, snap } = await degraded();
    // One VM's artefacts bad, validated beside the other's on the same agent: refused before anything is touched.
    s.agents.on('validateArtefacts', (_a, body) => ok({ payload: 'validate', validate: { problems: body.validateArtefacts?.artefacts?.some((x) => x.path?.endsWith('vm2.mem')) ? ['snapshots/blue-s1/vm2.mem: SHA-256 ab, cd expected'] : [] } }));
    await assert.rejects(
      s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: true, timeoutMs: 0, placeLost: 'h1' }, () => undefined),
      (e) => isVnsnapError(e, 'ERR_DATA_LOSS') && e.message === 'snapshot blue-s1 cannot be restored, its artefacts are invalid: h1: snapshots/blue-s1/vm2.mem: SHA-256 ab, cd expected',
    );
    assert.deepEqual(s.agents.names(), ['h1:validateArtefacts', 'h1:validateArtefacts']);
    const untouched = await s.svc.getVne({ name: 'blue' });
    assert.deepEqual([untouched.state, untouched.generation, untouched.placement, untouched.fenced], ['VNE_STATE_DEGRADED', 1, { vm1: 'h1', vm2: 'h2' }, []]);
  });

  it('lost-host restore with place_lost: the lost VMs restored on that host, their old instances fenced, stopped when the host returns', async () => {
    const { s, snap, seen } = await degraded();
    const events: SnapshotEvent[] = [];
    await assert.rejects(
      s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: true, timeoutMs: 0, placeLost: 'h3' }, () => undefined),
      (e) => isVnsnapError(e, 'ERR_NOT_FOUND') && e.message === 'agent "h3" (--place-lost) is unknown',
    );
    await s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: true, timeoutMs: 0, placeLost: 'h1' }, (e) => events.push(e));
    // Both VMs now on h1: validated side by side, one ValidateArtefacts per VM, each with that VM's artefacts only.
    assert.deepEqual(s.agents.names(), ['h1:validateArtefacts', 'h1:validateArtefacts', 'h1:configureVne', 'h1:restorePrepare', 'h1:restoreResume']);
    const validations = s.agents.sent.filter((c) => c.name === 'validateArtefacts');
    assert.deepEqual(
      validations.map((c) => c.body.validateArtefacts?.artefacts?.map((a) => a.path)),
      [
        ['snapshots/blue-s1/vm1.mem', 'snapshots/blue-s1/vm1/port0.chan'],
        ['snapshots/blue-s1/vm2.mem', 'snapshots/blue-s1/vm2/port0.chan'],
      ],
    );
    assert.equal(validations[0]?.turn, validations[1]?.turn, 'sent in the same turn: read side by side');
    assert.deepEqual(
      events.flatMap((e) => (e.note?.includes('fenced') ? [e.note] : [])),
      ['restore: fenced vm2 on h2 (host unreachable): never to run again under generation 1; stopped when the host returns'],
    );
    const v = await s.svc.getVne({ name: 'blue' });
    assert.equal(v.state, 'VNE_STATE_RUNNING');
    assert.equal(v.generation, 2);
    assert.deepEqual(v.placement, { vm1: 'h1', vm2: 'h1' });
    assert.deepEqual(v.fenced, [{ vm: 'vm2', agent: 'h2', generation: 1, fencedUnixMs: s.clock.now(), stopped: false }]);
    assert.deepEqual(seen.slice(1), ['vm.fenced blue: vm2 on unreachable h2 fenced (generation 1); restored on h1']);
    // h2 comes back still running its old vm2: it is stopped, nothing is configured on h2, the VNE stays RUNNING.
    s.agents.sent.length = 0;
    s.agents.connected.add('h2');
    s.svc.agentJoined('h2', [{ vne: 'blue', vm: 'vm2', epoch: 1, generation: 1 }]);
    await flush();
    assert.deepEqual(s.agents.names(), ['h2:stopVm']);
    const after = await s.svc.getVne({ name: 'blue' });
    assert.equal(after.state, 'VNE_STATE_RUNNING');
    assert.deepEqual(after.fenced.map((f) => f.stopped), [true]);
    assert.deepEqual(seen.at(-1), 'vm.fenced blue: stopped the stale instance of vm2 on h2 (generation 1): vm2 runs on h1 at generation 2');
  });

  it('lost-host restore with an explicit placement fences too; a running VNE with an agent just gone names the flags', async () => {
    const { s, snap } = await degraded();
    await s.svc.restoreSnapshot({ snapshotId: snap.id, placement: { vm2: 'h1' }, stopRunning: true, timeoutMs: 0 }, () => undefined);
    assert.deepEqual((await s.svc.getVne({ name: 'blue' })).fenced.map((f) => `${f.vm}@${f.agent}/${f.generation}`), ['vm2@h2/1']);
    // Before the session is declared lost (RUNNING, agent already gone): refused with the flags named.
    const t = setup();
    known(t);
    await running(t);
    const snap2 = await snapshot(t);
    t.agents.connected.delete('h2');
    await assert.rejects(
      t.svc.restoreSnapshot({ snapshotId: snap2.id, placement: {}, stopRunning: true, timeoutMs: 0 }, () => undefined),
      (e) => isVnsnapError(e, 'ERR_AGENT_DISCONNECTED') && e.message === 'agent "h2" (placement of VM vm2) is not connected; place the VM elsewhere (--place vm2=HOST, or --place-lost HOST); nothing was restored',
    );
    assert.deepEqual(t.catalog.getVne('blue')?.fenced, []);
  });
});

describe('coordinator service: snapshots and restores', () => {
  it('GetSnapshot / DeleteSnapshot / ListSnapshots', async () => {
    const s = setup();
    await running(s);
    const snap = await snapshot(s);
    assert.deepEqual((await s.svc.listSnapshots({ vne: 'blue' })).snapshots, [snap]);
    assert.deepEqual((await s.svc.listSnapshots({ vne: 'red' })).snapshots, []);
    await assert.rejects(s.svc.getSnapshot({ id: '' }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === 'snapshot id is required');
    await assert.rejects(s.svc.getSnapshot({ id: 'x' }), (e) => isVnsnapError(e, 'ERR_NOT_FOUND') && e.message === 'snapshot "x" does not exist');
    s.agents.connected.clear();
    await assert.rejects(s.svc.deleteSnapshot({ id: snap.id }), (e) => isVnsnapError(e, 'ERR_AGENT_DISCONNECTED') && e.message === 'no agent is connected to delete the artefacts of snapshot blue-s1');
    s.agents.connected.add('h2');
    await s.svc.deleteSnapshot({ id: snap.id });
    assert.deepEqual(s.agents.names('deleteArtefacts'), ['h2:deleteArtefacts']);
    assert.deepEqual(s.agents.sent.at(-1)?.body.deleteArtefacts?.paths, ['snapshots/blue-s1/vm1.mem', 'snapshots/blue-s1/vm1/port0.chan', 'snapshots/blue-s1/vm2.mem', 'snapshots/blue-s1/vm2/port0.chan', 'snapshots/blue-s1/manifest.pb']);
    assert.equal(s.manifests.files.size, 0);
    assert.deepEqual((await s.svc.listSnapshots({ vne: '' })).snapshots, []);
  });

  it('restore of a running VNE onto a swapped placement: loaded on the new agents first (no separate validation read), then movers stopped, configure, swap, resume in one turn', async () => {
    const s = setup();
    await running(s);
    const snap = await snapshot(s);
    s.agents.sent.length = 0;
    const events: SnapshotEvent[] = [];
    const done = await s.svc.restoreSnapshot({ snapshotId: snap.id, placement: { vm1: 'h2', vm2: 'h1' }, stopRunning: true, timeoutMs: 0 }, (e) => events.push(e));
    assert.equal(done.id, snap.id);
    assert.deepEqual(s.agents.names(), [
      'h2:restorePrepare',
      'h1:restorePrepare',
      'h1:stopVm',
      'h2:stopVm',
      'h2:configureVne',
      'h1:configureVne',
      'h2:restoreSwap',
      'h1:restoreSwap',
      'h2:restoreResume',
      'h1:restoreResume',
    ]);
    const byName = (n: string) => s.agents.sent.filter((x) => x.name === n);
    assert.deepEqual(byName('stopVm').map((x) => x.body.stopVm), [{ vne: 'blue', vm: 'vm1', discardDisk: true }, { vne: 'blue', vm: 'vm2', discardDisk: true }]);
    assert.deepEqual(byName('configureVne')[0]?.body.configureVne, configureBlue(2, 1, 'h1', ['h2', 'h1']));
    const prep = byName('restorePrepare')[0]?.body.restorePrepare;
    assert.deepEqual([prep?.restoreId, prep?.epoch, prep?.generation, prep?.stopRunning, prep?.loadBeside], ['r-blue-s1', 1, 2, true, true]);
    assert.deepEqual(prep?.vms?.map((v) => [v.vm?.name, v.vm?.host, v.memory?.path, v.channel?.map((c) => c.path)]), [['vm1', 'h2', 'snapshots/blue-s1/vm1.mem', ['snapshots/blue-s1/vm1/port0.chan']]]);
    const resumes = byName('restoreResume');
    assert.equal(resumes[0]?.turn, resumes[1]?.turn, 'resume leaves in one turn');
    const vne = s.catalog.getVne('blue');
    assert.deepEqual([vne?.state, vne?.generation, vne?.epoch, vne?.placement], ['VNE_STATE_RUNNING', 2, 1, { vm1: 'h2', vm2: 'h1' }]);
    assert.deepEqual(events.filter((e) => e.note).map((e) => e.note), [
      'restore: loading 2 VMs beside the running ones on h2, h1 (every image verified while it loads; nothing stops before all have loaded)',
      'restore: stopping vm1 on h1, vm2 on h2',
      'restore: configuring VNE blue (generation 2) on h2, h1',
      'restore: swapping the loaded VMs in on h2, h1',
      'restore: 2 VMs resumed at epoch 1, generation 2; 0 recorded frames injected',
    ]);
    assert.deepEqual(s.catalog.listRestores().map((r) => [r.id, r.state]), [['r-blue-s1', 'COMPLETE']]);
  });

  it('restore onto a swapped placement: a bad image found while loading on the new agent stops nothing (the VMs run on where they were); an agent that cannot load beside gets the older way (validate, stop movers, configure, prepare)', async () => {
    const s = setup();
    await running(s);
    const snap = await snapshot(s);
    s.agents.sent.length = 0;
    const restore = () => s.svc.restoreSnapshot({ snapshotId: snap.id, placement: { vm1: 'h2', vm2: 'h1' }, stopRunning: true, timeoutMs: 0 }, () => undefined);
    s.agents.on('restorePrepare', failed('ERR_CHECKSUM', 'snapshots/blue-s1/vm1.mem: SHA-256 ab, cd expected'), 'h2');
    await assert.rejects(restore(), (e) => isVnsnapError(e, 'ERR_CHECKSUM') && e.message === 'agent h2: RestorePrepare failed: snapshots/blue-s1/vm1.mem: SHA-256 ab, cd expected');
    assert.deepEqual(s.agents.names(), ['h2:restorePrepare', 'h1:restorePrepare', 'h2:restoreCancel', 'h1:restoreCancel']);
    const untouched = s.catalog.getVne('blue');
    assert.deepEqual([untouched?.state, untouched?.generation, untouched?.placement], ['VNE_STATE_RUNNING', 1, { vm1: 'h1', vm2: 'h2' }]);
    s.agents.sent.length = 0;

    s.agents.on('restorePrepare', (_a, body) => (body.restorePrepare?.loadBeside ? ok({ payload: 'restorePrepare', restorePrepare: { vms: [], beside: false, besideRefused: 'not enough memory' } }) : ok()), 'h2');
    await restore();
    assert.deepEqual(s.agents.names(), [
      'h2:restorePrepare',
      'h1:restorePrepare',
      'h2:restoreCancel',
      'h1:restoreCancel',
      'h2:validateArtefacts',
      'h1:validateArtefacts',
      'h1:stopVm',
      'h2:stopVm',
      'h2:configureVne',
      'h1:configureVne',
      'h2:restorePrepare',
      'h1:restorePrepare',
      'h2:restoreResume',
      'h1:restoreResume',
    ]);
    const vne = s.catalog.getVne('blue');
    assert.deepEqual([vne?.state, vne?.generation, vne?.placement], ['VNE_STATE_RUNNING', 2, { vm1: 'h2', vm2: 'h1' }]);
  });

  it('restore sends each VM its disk layers in layer order (disk_layers), and an older snapshot\'s one whole disk also as `disk`', async () => {
    const s = setup();
    const art = (path: string, owner: string, attributes: Record<string, string>, kind: 'ARTEFACT_KIND_MEMORY' | 'ARTEFACT_KIND_DISK' = 'ARTEFACT_KIND_DISK') => ({ path, size: 10, sha256: 'cc'.repeat(32), kind, owner, attributes, storedBytes: 0 });
    s.agents.on('snapshotPersist', (agent: string) => {
      const p = 'snapshots/blue-s1/';
      const artefacts = agent === 'h1'
        ? [art(`${p}vm1.mem`, 'vm1', {}, 'ARTEFACT_KIND_MEMORY'), art(`${p}vm1.disk.2.qcow2`, 'vm1', { layer: '2' }), art(`${p}vm1.disk.0.qcow2`, 'vm1', { layer: '0' }), art(`${p}vm1.disk.1.qcow2`, 'vm1', { layer: '1' })]
        : [art(`${p}vm2.mem`, 'vm2', {}, 'ARTEFACT_KIND_MEMORY'), art(`${p}vm2.disk.qcow2`, 'vm2', {})];
      return ok({ payload: 'persist', persist: { artefacts, vms: [], lostFrames: 0 } });
    });
    await running(s);
    const snap = await snapshot(s);
    s.agents.sent.length = 0;
    await s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: true, timeoutMs: 0 }, () => undefined);
    const preps = s.agents.sent.filter((x) => x.name === 'restorePrepare').flatMap((x) => x.body.restorePrepare?.vms ?? []);
    assert.deepEqual(preps.map((v) => [v.vm?.name, v.diskLayers?.map((a) => a.path), v.disk?.path]), [
      ['vm1', ['snapshots/blue-s1/vm1.disk.0.qcow2', 'snapshots/blue-s1/vm1.disk.1.qcow2', 'snapshots/blue-s1/vm1.disk.2.qcow2'], undefined],
      ['vm2', ['snapshots/blue-s1/vm2.disk.qcow2'], 'snapshots/blue-s1/vm2.disk.qcow2'],
    ]);
  });

  it('restore refusals touch nothing: running without stop_running, bad placement, invalid artefacts, tampered or newer manifest', async () => {
    const s = setup();
    await running(s);
    const snap = await snapshot(s);
    s.agents.sent.length = 0;
    const restore = (over: Record<string, unknown> = {}) => s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: true, timeoutMs: 0, ...over }, () => undefined);
    const refuses = async (p: Promise<unknown>, code: string, message: string) => assert.rejects(p, (e) => isVnsnapError(e) && e.code === code && e.message === message);
    await refuses(restore({ snapshotId: 'nope' }), 'ERR_NOT_FOUND', 'snapshot "nope" does not exist');
    await refuses(restore({ stopRunning: false }), 'ERR_FAILED_PRECONDITION', 'VNE "blue" is running: stop it first or restore with stop_running to replace its VMs');
    await refuses(restore({ placement: { vm9: 'h1' } }), 'ERR_INVALID_ARGUMENT', 'placement names VM "vm9", which is not in snapshot blue-s1 (VMs: vm1, vm2)');
    await refuses(restore({ placement: { vm1: 'h7' } }), 'ERR_NOT_FOUND', 'agent "h7" (placement of VM vm1) is unknown');
    assert.deepEqual(s.agents.sent, []);

    // A bad image found while loading beside the running VMs: nothing else was sent, the VMs run on.
    s.agents.on('restorePrepare', failed('ERR_CHECKSUM', 'snapshots/blue-s1/vm2.mem: SHA-256 ab, cd expected'), 'h2');
    await refuses(restore(), 'ERR_CHECKSUM', 'agent h2: RestorePrepare failed: snapshots/blue-s1/vm2.mem: SHA-256 ab, cd expected');
    assert.deepEqual(s.agents.names(), ['h1:restorePrepare', 'h2:restorePrepare', 'h1:restoreCancel', 'h2:restoreCancel']);
    assert.deepEqual((s.agents.sent as Sent[]).filter((x) => x.name === 'restorePrepare').map((x) => x.body.restorePrepare?.loadBeside), [true, true]);
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_RUNNING');
    assert.equal(s.catalog.getVne('blue')?.generation, 1);
    s.agents.sent.length = 0;

    // An agent that cannot load beside: the copies are discarded, then the older way (a validation read first).
    s.agents.on('restorePrepare', ok({ payload: 'restorePrepare', restorePrepare: { vms: [], beside: false, besideRefused: 'not enough memory' } }), 'h2');
    s.agents.on('validateArtefacts', (a: string) => ok({ payload: 'validate', validate: { problems: a === 'h2' ? ['snapshots/blue-s1/vm2.mem: sha256 mismatch'] : [] } }));
    await refuses(restore(), 'ERR_DATA_LOSS', 'snapshot blue-s1 cannot be restored, its artefacts are invalid: h2: snapshots/blue-s1/vm2.mem: sha256 mismatch');
    assert.deepEqual(s.agents.names(), ['h1:restorePrepare', 'h2:restorePrepare', 'h1:restoreCancel', 'h2:restoreCancel', 'h1:validateArtefacts', 'h2:validateArtefacts']);
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_RUNNING');
    assert.equal(s.catalog.getVne('blue')?.generation, 1);
    s.agents.behaviour.delete('validateArtefacts');
    s.agents.behaviour.delete('restorePrepare');
    s.agents.sent.length = 0;

    const path = snap.manifestPath;
    const good = s.manifests.files.get(path) as Buffer;
    const tampered = Buffer.from(good);
    const i = tampered.indexOf(Buffer.from('vm1.mem'));
    tampered[i] = 'X'.charCodeAt(0);
    s.manifests.files.set(path, tampered);
    await refuses(restore(), 'ERR_CHECKSUM', `${path} is corrupt or was modified: its body checksum does not match`);
    s.manifests.files.set(path, encodeManifest(decodeManifest(good).body as never, { major: 2, minor: 0 }));
    await refuses(restore(), 'ERR_UNSUPPORTED_VERSION', `${path} has manifest format 2.0, newer than this vnsnap reads (1.x): upgrade vnsnap to restore it`);
    s.manifests.files.delete(path);
    await refuses(restore(), 'ERR_DATA_LOSS', `the manifest of snapshot blue-s1 (${path}) is missing from the store`);
    assert.deepEqual(s.agents.sent, []);
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_RUNNING');
  });

  it('a running VNE is loaded beside its VMs, then swapped: no separate validation read, ConfigureVne only after every agent loaded', async () => {
    const s = setup();
    await running(s);
    const snap = await snapshot(s);
    s.agents.sent.length = 0;
    const notes: string[] = [];
    await s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: true, timeoutMs: 0 }, (e) => void (e.note && notes.push(e.note)));
    assert.deepEqual(s.agents.names(), ['h1:restorePrepare', 'h2:restorePrepare', 'h1:configureVne', 'h2:configureVne', 'h1:restoreSwap', 'h2:restoreSwap', 'h1:restoreResume', 'h2:restoreResume']);
    assert.equal(notes[0], 'restore: loading 2 VMs beside the running ones on h1, h2 (every image verified while it loads; nothing stops before all have loaded)');
    const vne = s.catalog.getVne('blue');
    assert.deepEqual([vne?.state, vne?.generation], ['VNE_STATE_RUNNING', 2]);
  });

  it('a failed RestoreSwap cancels on every agent; the VNE is DEFINED (stopped), generation kept monotonic', async () => {
    const s = setup();
    await running(s);
    const snap = await snapshot(s);
    s.agents.on('restoreSwap', failed('ERR_DRIVER', 'cannot swap'), 'h2');
    await assert.rejects(s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: true, timeoutMs: 0 }, () => undefined), (e) => isVnsnapError(e, 'ERR_DRIVER') && e.message === 'agent h2: RestoreSwap failed: cannot swap');
    assert.deepEqual(s.agents.names('restoreCancel'), ['h1:restoreCancel', 'h2:restoreCancel']);
    assert.deepEqual(s.agents.names('restoreResume'), []);
    const vne = s.catalog.getVne('blue');
    assert.deepEqual([vne?.state, vne?.generation], ['VNE_STATE_DEFINED', 2]);
    assert.deepEqual(s.catalog.listRestores().map((r) => [r.state, r.error]), [['FAILED', 'agent h2: RestoreSwap failed: cannot swap']]);
  });

  it('a failed RestorePrepare (the older way: an agent could not load beside) cancels on every agent; the VNE is DEFINED (stopped), generation kept monotonic', async () => {
    const s = setup();
    await running(s);
    const snap = await snapshot(s);
    s.agents.on('restorePrepare', (_a, body) => (body.restorePrepare?.loadBeside ? ok({ payload: 'restorePrepare', restorePrepare: { vms: [], beside: false, besideRefused: 'not enough memory' } }) : failed('ERR_DRIVER', 'cannot load')), 'h2');
    await assert.rejects(s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: true, timeoutMs: 0 }, () => undefined), (e) => isVnsnapError(e, 'ERR_DRIVER') && e.message === 'agent h2: RestorePrepare failed: cannot load');
    assert.deepEqual(s.agents.names('restoreCancel'), ['h1:restoreCancel', 'h2:restoreCancel', 'h1:restoreCancel', 'h2:restoreCancel']);
    assert.deepEqual(s.agents.names('restoreResume'), []);
    const vne = s.catalog.getVne('blue');
    assert.deepEqual([vne?.state, vne?.generation], ['VNE_STATE_DEFINED', 2]);
    assert.deepEqual(s.catalog.listRestores().map((r) => [r.state, r.error]), [['FAILED', 'agent h2: RestorePrepare failed: cannot load']]);
  });

  it('a DEFINED VNE (nothing runs, no kept disk) is loaded without a separate validation read; a checksum failure while loading cancels everywhere, the VNE stays DEFINED', async () => {
    const s = setup();
    await running(s);
    const snap = await snapshot(s);
    await s.svc.stopVne({ name: 'blue', discardDisks: true });
    s.agents.sent.length = 0;
    const notes: string[] = [];
    s.agents.on('restorePrepare', failed('ERR_CHECKSUM', 'snapshots/blue-s1/vm2.mem: SHA-256 ab, cd expected'), 'h2');
    await assert.rejects(
      s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: false, timeoutMs: 0 }, (e) => void (e.note && notes.push(e.note))),
      (e) => isVnsnapError(e, 'ERR_CHECKSUM') && e.message === 'agent h2: RestorePrepare failed: snapshots/blue-s1/vm2.mem: SHA-256 ab, cd expected',
    );
    assert.deepEqual(s.agents.names().filter((n) => !n.endsWith(':restoreCancel')), ['h1:configureVne', 'h2:configureVne', 'h1:restorePrepare', 'h2:restorePrepare']);
    assert.deepEqual(s.agents.names('restoreCancel'), ['h1:restoreCancel', 'h2:restoreCancel']);
    assert.equal(notes[0], 'restore: nothing runs; 4 artefacts verified while loading on 2 agents');
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_DEFINED');
  });

  it('a restore that does not finish in time fails with DEADLINE (ERR_TIMEOUT) and cancels', async () => {
    const s = setup();
    await running(s);
    const snap = await snapshot(s);
    await s.svc.stopVne({ name: 'blue' });
    s.agents.on('restorePrepare', 'hold');
    const p = s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: false, timeoutMs: 2000 }, () => undefined);
    await flush();
    s.clock.advance(2000);
    await assert.rejects(p, (e) => isVnsnapError(e, 'ERR_TIMEOUT') && e.message === 'restore of blue-s1 did not finish within 2000 ms (during prepare)');
    assert.deepEqual(s.agents.names('restoreCancel'), ['h1:restoreCancel', 'h2:restoreCancel']);
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_DEFINED');
  });

  it('a failed RestoreResume leaves the VNE FAILED on the new placement', async () => {
    const s = setup();
    await running(s);
    const snap = await snapshot(s);
    s.agents.on('restoreResume', failed('ERR_DRIVER', 'cont failed'), 'h1');
    await assert.rejects(s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: true, timeoutMs: 0 }, () => undefined), (e) => isVnsnapError(e, 'ERR_DRIVER'));
    assert.deepEqual(s.agents.names('restoreCancel'), []);
    assert.equal(s.catalog.getVne('blue')?.state, 'VNE_STATE_FAILED');
  });

  it('snapshot refused while another operation holds the VNE; restore refused while snapshotting', async () => {
    const s = setup();
    await running(s);
    s.agents.on('snapshotBegin', 'hold');
    const p = s.svc.createSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_PRECOPY', precopyDeadlineMs: 0, timeoutMs: 0, description: '' }, () => undefined);
    assert.throws(
      () => s.svc.createSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_PRECOPY', precopyDeadlineMs: 0, timeoutMs: 0, description: '' }, () => undefined),
      (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION'),
    );
    await assert.rejects(s.svc.stopVne({ name: 'blue' }), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'a snapshot of VNE "blue" is in progress (blue-s1)');
    await assert.rejects(s.svc.deleteSnapshot({ id: 'blue-s1' }), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'snapshot blue-s1 is in progress (precopy): wait for it to finish');
    s.agents.disconnect('h1');
    assert.equal((await p).state, 'SNAPSHOT_STATE_ABORTED');
  });

  it('attributes channel artefacts to VMs by owner, MAC, or path', () => {
    const vms = [vm('vm1', 'h1', '52:54:00:00:00:01'), vm('vm10', 'h1', '52:54:00:00:00:0a')];
    const a = (owner: string, path = 'snapshots/s/x') => artefactVm({ path, size: 0, sha256: '', kind: 'ARTEFACT_KIND_CHANNEL', owner, attributes: {}, storedBytes: 0 }, vms, 'snapshots/s/');
    assert.equal(a('vm1'), 'vm1');
    assert.equal(a('vm10.0'), 'vm10');
    assert.equal(a('vm1:eth0'), 'vm1');
    assert.equal(a('52:54:00:00:00:0A'), 'vm10');
    assert.equal(a('tap3', 'snapshots/s/vm10/tap3.chan'), 'vm10');
    assert.equal(a('tap3', 'snapshots/s/vm1.tap3.chan'), 'vm1');
    assert.equal(a('tap3', 'snapshots/s/other'), undefined);
    // The agent's port names: "<vne>/<vm>/<i>", also when the VNE is named like a VM.
    const b = (owner: string) => artefactVm({ path: 'snapshots/s/x', size: 0, sha256: '', kind: 'ARTEFACT_KIND_CHANNEL', owner, attributes: {}, storedBytes: 0 }, vms, 'snapshots/s/', 'vm1');
    assert.equal(b('vm1/vm10/0'), 'vm10');
    assert.equal(b('vm1/vm1/1'), 'vm1');
  });
});

/** A StopVne response without its VNE: the disk lines and notes the tests below assert. */
function diskOutcome(r: { disks: string[]; notes: string[] }): { disks: string[]; notes: string[] } {
  return { disks: r.disks, notes: r.notes };
}

describe('coordinator service: kept disks (stop keeps, start boots from them, delete and --discard-disks throw them away)', () => {
  const DIR1 = '/var/lib/vnsnap/disks/blue_vm1';
  const MiB = 1024 * 1024;
  /** h1 keeps vm1's disk at every StopVm (discards it when told); h2's VM has no disk of its own. */
  function keeping(s: ReturnType<typeof setup>, killed = false) {
    s.agents.on('stopVm', (_a, body) => (body.stopVm?.vm !== 'vm1' ? ok() : body.stopVm.discardDisk ? ok({ payload: 'stopVm', stopVm: { diskPath: '', diskBytes: 0, killed, discardedPath: DIR1 } }) : ok({ payload: 'stopVm', stopVm: { diskPath: DIR1, diskBytes: 12.3 * MiB, killed, discardedPath: '' } })), 'h1');
    s.agents.on('startVm', ok({ payload: 'startVm', startVm: { diskPath: DIR1 } }), 'h1');
  }
  const disk = async (s: ReturnType<typeof setup>) => (await s.svc.getVne({ name: 'blue' })).vmStatus.map((v) => [v.vm, v.diskSource, v.diskHost, v.diskPath, v.diskBytes]);

  it('stop keeps and records the disk; start boots from it on the host that kept it; show tells where it lives', async () => {
    const s = setup();
    keeping(s);
    await running(s);
    assert.deepEqual(await disk(s), [['vm1', 'DISK_SOURCE_INSTANCE', 'h1', DIR1, 0], ['vm2', 'DISK_SOURCE_INSTANCE', 'h2', '', 0]]);
    // The VMs run elsewhere than their definition says (a restore moved them): vm1's disk is kept on h1 and it stays there.
    s.catalog.updateVne('blue', { placement: { vm1: 'h1', vm2: 'h1' } });
    s.agents.sent.length = 0;
    assert.deepEqual(diskOutcome(await s.svc.stopVne({ name: 'blue' })), { disks: [`kept vm1 on h1: ${DIR1} (12.3 MiB)`], notes: [] });
    assert.deepEqual(s.agents.sent.map((x) => x.body.stopVm), [{ vne: 'blue', vm: 'vm1', discardDisk: false }, { vne: 'blue', vm: 'vm2', discardDisk: false }]);
    assert.deepEqual(s.catalog.getVne('blue')?.placement, { vm1: 'h1', vm2: 'h2' });
    assert.deepEqual(await disk(s), [['vm1', 'DISK_SOURCE_KEPT', 'h1', DIR1, 12.3 * MiB], ['vm2', 'DISK_SOURCE_SPEC', '', '', 0]]);
    s.agents.sent.length = 0;
    const started = await s.svc.startVne({ name: 'blue' });
    assert.deepEqual(started.disks, [`vm1 booted from its kept disk on h1: ${DIR1} (12.3 MiB)`]);
    assert.deepEqual(s.agents.sent.filter((x) => x.name === 'startVm').map((x) => [x.agent, x.body.startVm?.vm?.name, x.body.startVm?.keptDisk]), [['h1', 'vm1', true], ['h2', 'vm2', false]]);
    assert.deepEqual(await disk(s), [['vm1', 'DISK_SOURCE_INSTANCE', 'h1', DIR1, 0], ['vm2', 'DISK_SOURCE_INSTANCE', 'h2', '', 0]]);
  });

  it('a kept disk on an unreachable host: start refused naming VM and host; --discard-disks boots fresh and forgets it', async () => {
    const s = setup();
    keeping(s);
    await running(s);
    await s.svc.stopVne({ name: 'blue' });
    s.agents.connected.delete('h1');
    s.agents.sent.length = 0;
    await assert.rejects(s.svc.startVne({ name: 'blue' }), (e) => isVnsnapError(e, 'ERR_AGENT_DISCONNECTED') && e.message === 'VNE "blue": the kept disk of vm1 on h1 is on a host that is not connected: start when it is back, or pass --discard-disks to boot those VMs fresh from their specs');
    assert.deepEqual(s.agents.names(), []);
    s.agents.connected.add('h1');
    const r = await s.svc.startVne({ name: 'blue', discardDisks: true });
    assert.deepEqual(r.disks, [`discarded vm1 on h1: ${DIR1} (12.3 MiB)`]);
    assert.deepEqual(s.agents.names(), ['h1:discardDisks', 'h1:configureVne', 'h2:configureVne', 'h1:startVm', 'h2:startVm']);
    assert.deepEqual(s.agents.sent[0]?.body.discardDisks, { vne: 'blue', vms: ['vm1'] });
    assert.deepEqual(s.agents.sent.filter((x) => x.name === 'startVm').map((x) => x.body.startVm?.keptDisk), [false, false]);
  });

  it('stop --discard-disks says what it threw away, also for a stopped VNE; a killed hypervisor is a note', async () => {
    const s = setup();
    keeping(s, true);
    await running(s);
    assert.deepEqual(diskOutcome(await s.svc.stopVne({ name: 'blue', discardDisks: true })), {
      disks: [`discarded vm1 on h1: ${DIR1}`],
      notes: ['vm1 on h1: the hypervisor did not stop within its grace period and was killed; writes it had not flushed may be missing from its disk'],
    });
    assert.deepEqual(await disk(s), [['vm1', 'DISK_SOURCE_SPEC', '', '', 0], ['vm2', 'DISK_SOURCE_SPEC', '', '', 0]]);
    await s.svc.startVne({ name: 'blue' });
    await s.svc.stopVne({ name: 'blue' });
    s.agents.sent.length = 0;
    assert.deepEqual(diskOutcome(await s.svc.stopVne({ name: 'blue', discardDisks: true })), { disks: [`discarded vm1 on h1: ${DIR1} (12.3 MiB)`], notes: [] });
    assert.deepEqual(s.agents.names(), ['h1:discardDisks']);
    assert.deepEqual(diskOutcome(await s.svc.stopVne({ name: 'blue', discardDisks: true })), { disks: [], notes: [] });
  });

  it('delete discards kept disks; an unreachable host refuses it unless --forget-unreachable-disks', async () => {
    const s = setup();
    keeping(s);
    await running(s);
    await s.svc.stopVne({ name: 'blue' });
    s.agents.connected.delete('h1');
    await assert.rejects(s.svc.deleteVne({ name: 'blue', deleteSnapshots: false }), (e) => isVnsnapError(e, 'ERR_AGENT_DISCONNECTED') && e.message === 'VNE "blue" has kept disks on hosts that are not connected (vm1 on h1): delete it when they are back, or pass --forget-unreachable-disks to forget those disks (their directories stay on those hosts)');
    assert.ok(s.catalog.getVne('blue'));
    assert.deepEqual(await s.svc.deleteVne({ name: 'blue', deleteSnapshots: false, forgetUnreachableDisks: true }), { discarded: [], forgotten: [`forgotten vm1 on h1: ${DIR1} (12.3 MiB) (host not connected: the directory stays there)`] });
    assert.equal(s.catalog.getVne('blue'), undefined);
    assert.deepEqual([...s.catalog.disks.of('blue')], []);

    const t = setup();
    keeping(t);
    await running(t);
    await t.svc.stopVne({ name: 'blue' });
    t.agents.sent.length = 0;
    assert.deepEqual(await t.svc.deleteVne({ name: 'blue', deleteSnapshots: false }), { discarded: [`discarded vm1 on h1: ${DIR1} (12.3 MiB)`], forgotten: [] });
    assert.deepEqual(t.agents.sent.filter((x) => x.name === 'discardDisks').map((x) => [x.agent, x.body.discardDisks]), [['h1', { vne: 'blue', vms: ['vm1'] }]]);
    assert.deepEqual(t.agents.names(), ['h1:discardDisks', 'h1:forgetVne', 'h2:forgetVne'], 'the disks discarded first, then the VNE forgotten everywhere');
  });

  it('restore of a VNE with kept disks is refused unless --discard-disks; update refused when a kept VM changes', async () => {
    const s = setup();
    keeping(s);
    await running(s);
    const snap = await snapshot(s);
    await s.svc.stopVne({ name: 'blue' });
    s.agents.sent.length = 0;
    await assert.rejects(
      s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: false, timeoutMs: 0 }, () => undefined),
      (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === "VNE \"blue\" has kept disks (vm1 on h1): the restore starts from the snapshot's disks and would replace them; pass --discard-disks to restore anyway",
    );
    assert.deepEqual(s.agents.names(), []);
    await assert.rejects(s.svc.updateVne(req({}, [vm('vm1', 'h1', '52:54:00:00:00:01', ['zz9'].slice(1)), vm('vm2', 'h2', '52:54:00:00:00:02', ['vm1'])])), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'VM vm1 of VNE "blue" has a kept disk (on h1) and the new definition changes its driver spec: discard it first (vnsnap vne stop --discard-disks blue)');
    await assert.rejects(s.svc.updateVne(req({}, [vm('vm2', 'h2', '52:54:00:00:00:02')])), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'VM vm1 of VNE "blue" has a kept disk (on h1) and the new definition removes it: discard it first (vnsnap vne stop --discard-disks blue)');
    const notes: string[] = [];
    const done = await s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: false, timeoutMs: 0, discardDisks: true }, (e) => void (e.note && notes.push(e.note)));
    assert.equal(done.id, snap.id);
    assert.ok(notes.includes(`restore: discarded vm1 on h1: ${DIR1} (12.3 MiB)`), notes.join('\n'));
    assert.deepEqual(s.agents.names().slice(0, 3), ['h1:validateArtefacts', 'h2:validateArtefacts', 'h1:discardDisks']);
    assert.deepEqual([...s.catalog.disks.kept('blue')], []);
  });

  it("after a restore, vne show tells where each restored VM's disk lives (the agents' RestoreResume results)", async () => {
    const s = setup();
    await running(s);
    const snap = await snapshot(s);
    s.agents.on('restoreResume', ok({ payload: 'resume', resume: { vms: [], injectedFrames: 0, diskPaths: { vm1: DIR1 } } }), 'h1');
    await s.svc.restoreSnapshot({ snapshotId: snap.id, placement: {}, stopRunning: true, timeoutMs: 0 }, () => undefined);
    assert.deepEqual(await disk(s), [['vm1', 'DISK_SOURCE_INSTANCE', 'h1', DIR1, 0], ['vm2', 'DISK_SOURCE_INSTANCE', 'h2', '', 0]]);
  });
});
