import { strict as assert } from 'node:assert';
import { encodeChannel, plainFrame } from '../../proto/artefacts/channel-state';
import { isVnsnapError } from '../../proto/core/errors';
import type { Artefact__Output } from '../../proto/gen/vnsnap/v1/Artefact';
import type { RestorePrepare__Output } from '../../proto/gen/vnsnap/v1/RestorePrepare';
import { formatMac } from '../../switch/bridge/mac';
import { fakePortPair } from '../../switch/port/porttest/fake-port';
import { Switch } from '../../switch/switch';
import { AgentParts, fakeVmSpec, flush, testFrame, VNE } from '../support/agent-parts';
import { parseFrame, vmMac } from '../support/frames';
import { until } from '../support/wait';

async function failure(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return isVnsnapError(e) ? `${e.code}: ${e.message}` : `not a VnsnapError: ${String(e)}`;
  }
  return 'resolved';
}

/** Store the image of VM a (memory, and one channel frame from b with seq 9); returns its RestorePrepare. */
async function imageOfA(h: AgentParts, id: string, over: Partial<RestorePrepare__Output> = {}): Promise<RestorePrepare__Output> {
  const mem = await h.store.put(`snapshots/${id}/a.mem`, Buffer.from('memory of a'));
  const chan = await h.store.put(`snapshots/${id}/a.0.chan`, encodeChannel([plainFrame(testFrame(2, 1, 9))]));
  const memory: Artefact__Output = { ...mem, kind: 'ARTEFACT_KIND_MEMORY', owner: 'a', attributes: {}, storedBytes: 0 };
  const channel: Artefact__Output = { ...chan, kind: 'ARTEFACT_KIND_CHANNEL', owner: 'blue/a/0', attributes: {}, storedBytes: 0 };
  return { restoreId: `r-${id}`, vne: VNE, epoch: 2, generation: 0, stopRunning: true, loadBeside: false, vms: [{ vm: fakeVmSpec('a', 1), memory, disk: null, channel: [channel], diskLayers: [] }], ...over };
}

describe('agent restore runner (fake driver, real switch over fake ports, manual clock)', () => {
  let h: AgentParts;
  afterEach(() => h.close());

  it('Prepare replaces the running VM with one loaded paused behind a held gate; Resume injects the channel frames, then what the gate held', async () => {
    h = await new AgentParts().init(['a', 'b']);
    h.sw.setPortEpoch('blue/b/0', 2);
    const r = await h.restores.prepare(await imageOfA(h, 's1'));
    assert.deepEqual(
      r.restorePrepare?.vms?.map((v) => [v.name, v.host, v.memoryBytes, v.channelFrames, v.phases?.map((p) => p.phase)]),
      [['a', 'h1', 11, 1, ['PHASE_VALIDATE', 'PHASE_LOAD']]],
    );
    assert.deepEqual(h.driver.events, ['start a', 'start b', 'stop a', 'restore a']);
    assert.equal(h.driver.status('blue/a'), 'paused');
    assert.equal(h.vm('a').restoreId, 'r-s1');
    assert.equal(h.sw.portEpoch('blue/a/0'), 2);
    assert.deepEqual(
      h.vms.running(VNE).map((v) => v.name),
      ['b'],
    );
    // b (resumed first elsewhere) sends to a: held by the gate, not passed to the paused VM.
    const b = h.driver.port('blue/b').vm;
    b.send(testFrame(2, 1, 10));
    b.pumpAll();
    const a = h.driver.port('blue/a').vm;
    assert.deepEqual(a.received, []);

    const res = await h.restores.resume({ restoreId: 'r-s1', vne: VNE });
    assert.equal(res.resume?.injectedFrames, 1);
    assert.deepEqual(
      res.resume?.vms?.map((v) => [v.name, v.phases?.map((p) => p.phase)]),
      [['a', ['PHASE_RESUME', 'PHASE_INJECT']]],
    );
    assert.deepEqual(h.driver.events.slice(-1), ['resume a']);
    assert.equal(h.vm('a').restoreId, undefined);
    assert.deepEqual(
      a.received.map((f) => parseFrame(f)?.seq),
      [9, 10],
    );
    // The gate stays open.
    b.send(testFrame(2, 1, 11));
    b.pumpAll();
    assert.deepEqual(
      a.received.map((f) => parseFrame(f)?.seq),
      [9, 10, 11],
    );
  });

  it('Prepare touches nothing when an artefact is absent or of another size, or a VM runs without stop_running (no image read)', async () => {
    h = await new AgentParts().init(['a']);
    const c = await imageOfA(h, 's2', { stopRunning: false });
    const mem = c.vms[0]?.memory as Artefact__Output;
    mem.size = 12;
    const msg = await failure(h.restores.prepare(c));
    assert.match(msg, /^ERR_FAILED_PRECONDITION: restore r-s2: /);
    assert.equal(msg, 'ERR_FAILED_PRECONDITION: restore r-s2: a is running on agent h1 (stop_running not set); snapshots/s2/a.mem: size 11, expected 12');
    await h.store.delete('snapshots/s2/a.mem');
    assert.equal(await failure(h.restores.prepare({ ...c, stopRunning: true })), 'ERR_FAILED_PRECONDITION: restore r-s2: snapshots/s2/a.mem: missing');
    assert.deepEqual(h.driver.events, ['start a']);
    assert.equal(h.driver.status('blue/a'), 'running');
    assert.equal(h.vm('a').restoreId, undefined);
  });

  it('Prepare hands the driver every disk layer in order (or an older coordinator\'s one `disk`) and refuses a damaged layer, touching nothing', async () => {
    h = await new AgentParts().init(['a']);
    const layer = async (id: string, n: number): Promise<Artefact__Output> => ({ ...(await h.store.put(`snapshots/${id}/a.disk.${n}.qcow2`, Buffer.from(`layer ${n}`))), kind: 'ARTEFACT_KIND_DISK', owner: 'a', attributes: { layer: String(n) }, storedBytes: 0 });
    const c = await imageOfA(h, 's5');
    (c.vms[0] as { diskLayers: Artefact__Output[] }).diskLayers = [await layer('s5', 0), await layer('s5', 1)];
    const r = await h.restores.prepare(c);
    assert.deepEqual(r.restorePrepare?.vms?.map((v) => v.diskBytes), [14]);
    assert.deepEqual(h.driver.record('blue/a').restoredDisks, ['snapshots/s5/a.disk.0.qcow2', 'snapshots/s5/a.disk.1.qcow2']);
    await h.restores.cancel({ restoreId: 'r-s5', vne: VNE });

    const old = await imageOfA(h, 's6');
    const whole = { ...(await h.store.put('snapshots/s6/a.disk.qcow2', Buffer.from('whole disk'))), kind: 'ARTEFACT_KIND_DISK' as const, owner: 'a', attributes: {}, storedBytes: 0 };
    (old.vms[0] as { disk: Artefact__Output | null }).disk = whole;
    await h.restores.prepare(old);
    assert.deepEqual(h.driver.record('blue/a').restoredDisks, ['snapshots/s6/a.disk.qcow2']);
    await h.restores.cancel({ restoreId: 'r-s6', vne: VNE });

    const bad = await imageOfA(h, 's7');
    const l1 = await layer('s7', 1);
    (bad.vms[0] as { diskLayers: Artefact__Output[] }).diskLayers = [await layer('s7', 0), { ...l1, size: 3 }];
    const events = h.driver.events.length;
    assert.match(await failure(h.restores.prepare(bad)), /^ERR_FAILED_PRECONDITION: restore r-s7: .*snapshots\/s7\/a\.disk\.1\.qcow2/);
    assert.equal(h.driver.events.length, events, 'nothing touched');
  });

  it('Prepare refuses a channel state of a newer format in one line, touching nothing', async () => {
    h = await new AgentParts().init(['a']);
    const c = await imageOfA(h, 's5');
    const newer = encodeChannel([plainFrame(testFrame(2, 1, 9))]);
    newer.write('3', 7); // "VNSCHAN3"
    const chan = await h.store.put('snapshots/s5/a.0.chan', newer);
    (c.vms[0] as { channel: Artefact__Output[] }).channel = [{ ...chan, kind: 'ARTEFACT_KIND_CHANNEL', owner: 'blue/a/0', attributes: {}, storedBytes: 0 }];
    assert.equal(
      await failure(h.restores.prepare(c)),
      'ERR_UNSUPPORTED_VERSION: snapshots/s5/a.0.chan has channel-state format 3, newer than this vnsnap reads (1 to 2): upgrade vnsnap to restore it',
    );
    assert.deepEqual(h.driver.events, ['start a']);
    assert.equal(h.driver.status('blue/a'), 'running');
  });

  it('Prepare aborts a snapshot in progress of the VM it replaces', async () => {
    h = await new AgentParts().init(['a']);
    h.driver.holdReady = true;
    const begin = failure(h.snapshots.begin({ snapshotId: 'x', vne: VNE, epoch: 1, mode: 'SNAPSHOT_MODE_PRECOPY', vms: ['a'], storePrefix: 'snapshots/x/' }, h.sink));
    await flush();
    await h.restores.prepare(await imageOfA(h, 's3'));
    assert.match(await begin, /^ERR_SNAPSHOT_ABORTED/);
    assert.deepEqual(h.driver.events, ['start a', 'abort a', 'stop a', 'restore a']);
    assert.deepEqual(h.snapshots.inProgress, []);
  });

  it('Cancel destroys the prepared VMs; unknown and repeated ids have stable codes', async () => {
    h = await new AgentParts().init(['b']);
    const c = await imageOfA(h, 's4');
    await h.restores.prepare(c);
    assert.match(await failure(h.restores.prepare(c)), /^ERR_ALREADY_EXISTS/);
    assert.deepEqual(await h.restores.cancel({ restoreId: 'r-s4', vne: VNE }), {});
    assert.deepEqual(h.driver.events, ['start b', 'restore a', 'stop a']);
    assert.deepEqual(h.vms.keys(), ['blue/b']);
    assert.deepEqual(h.sw.portNames(VNE), ['blue/b/0']);
    assert.deepEqual(await h.restores.cancel({ restoreId: 'r-s4', vne: VNE }), {});
    assert.match(await failure(h.restores.resume({ restoreId: 'r-s4', vne: VNE })), /^ERR_NOT_FOUND/);
    assert.match(await failure(h.restores.prepare({ ...c, vne: 'red' })), /^ERR_VNE_UNKNOWN/);
  });

  it('Prepare loads its VMs all at once; a memory image with a wrong checksum fails its load (ERR_CHECKSUM) and every VM loaded is destroyed', async () => {
    h = await new AgentParts().init(['a', 'b']);
    const ca = await imageOfA(h, 's8');
    const memB = await h.store.put('snapshots/s8/b.mem', Buffer.from('memory of b'));
    const vmB = { vm: fakeVmSpec('b', 2), memory: { ...memB, kind: 'ARTEFACT_KIND_MEMORY' as const, owner: 'b', attributes: {}, storedBytes: 0 }, disk: null, channel: [], diskLayers: [] };
    // Both loads must be under way before either finishes: each image read waits for both.
    const get = h.store.get.bind(h.store);
    let reading = 0;
    let bothReading: () => void = () => undefined;
    const both = new Promise<void>((r) => (bothReading = r));
    h.store.get = async (p: string) => {
      if (p.endsWith('.mem')) {
        if (++reading === 2) bothReading();
        await both;
      }
      return get(p);
    };
    const ok = await h.restores.prepare({ ...ca, vms: [...ca.vms, vmB] });
    assert.deepEqual(ok.restorePrepare?.vms?.map((v) => v.name), ['a', 'b']);
    assert.deepEqual(h.driver.events.slice(-2).sort(), ['restore a', 'restore b']);
    await h.restores.cancel({ restoreId: 'r-s8', vne: VNE });
    h.store.get = get;

    const bad = await imageOfA(h, 's9');
    const memA = bad.vms[0]?.memory as Artefact__Output;
    memA.sha256 = '0'.repeat(64); // the right size: only a read finds it
    const b9 = await h.store.put('snapshots/s9/b.mem', Buffer.from('memory of b'));
    const msg = await failure(h.restores.prepare({ ...bad, vms: [...bad.vms, { ...vmB, memory: { ...vmB.memory, ...b9 } }] }));
    assert.match(msg, /^ERR_CHECKSUM: snapshots\/s9\/a\.mem: SHA-256 [0-9a-f]{64}, 0{64} expected$/);
    assert.deepEqual(h.driver.events.slice(-1), ['stop b'], 'b, loaded, destroyed');
    assert.deepEqual(h.vms.keys(), []);
    assert.deepEqual(h.sw.portNames(VNE), []);
    assert.match(await failure(h.restores.resume({ restoreId: 'r-s9', vne: VNE })), /^ERR_NOT_FOUND/);
  });

  it('a generation change deferred while the old instances run is applied by Prepare; an explicit generation wins', async () => {
    h = await new AgentParts().init(['a']);
    h.vnes.configure({ vne: VNE, vni: 7, generation: 2, peers: [], macs: [], epoch: 0 });
    assert.equal(h.vnes.generation(VNE), 1, 'deferred: a runs');
    await h.restores.prepare(await imageOfA(h, 's5'));
    assert.equal(h.vnes.generation(VNE), 2);
    await h.restores.cancel({ restoreId: 'r-s5', vne: VNE });
    await h.restores.prepare(await imageOfA(h, 's6', { generation: 5 }));
    assert.equal(h.vnes.generation(VNE), 5);
  });

  it('load beside: Prepare loads a copy and touches nothing running; Swap stops the old VM and attaches the copy at epoch k behind the gate; Resume as before', async () => {
    h = await new AgentParts().init(['a', 'b']);
    const old = h.vm('a');
    const r = await h.restores.prepare(await imageOfA(h, 'b1', { loadBeside: true }));
    assert.equal(r.restorePrepare?.beside, true);
    assert.deepEqual(r.restorePrepare?.vms?.map((v) => [v.name, v.memoryBytes, v.channelFrames]), [['a', 11, 1]]);
    assert.deepEqual(h.driver.events, ['start a', 'start b', 'load-beside a']);
    // The running VM is as it was: same record, running, its port attached at epoch 0, no restore gate.
    assert.equal(h.vm('a'), old);
    assert.equal(h.driver.status('blue/a'), 'running');
    assert.equal(h.sw.portEpoch('blue/a/0'), 0);
    assert.deepEqual(h.vms.running(VNE).map((v) => v.name), ['a', 'b']);
    await assert.rejects(h.restores.resume({ restoreId: 'r-b1', vne: VNE }), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'restore r-b1 is loaded beside the running VMs on agent h1: RestoreSwap first');

    await h.restores.swap({ restoreId: 'r-b1', vne: VNE });
    assert.deepEqual(h.driver.events.slice(3), ['stop a', 'swap a']);
    assert.notEqual(h.vm('a'), old);
    assert.equal(h.vm('a').restoreId, 'r-b1');
    assert.equal(h.driver.status('blue/a'), 'paused');
    assert.equal(h.sw.portEpoch('blue/a/0'), 2);
    const b = h.driver.port('blue/b').vm;
    b.send(testFrame(2, 1, 10));
    b.pumpAll();
    const a = h.driver.port('blue/a').vm;
    assert.deepEqual(a.received, []);
    const res = await h.restores.resume({ restoreId: 'r-b1', vne: VNE });
    assert.equal(res.resume?.injectedFrames, 1);
    assert.deepEqual(a.received.map((f) => parseFrame(f)?.seq), [9, 10]);
    assert.deepEqual(h.driver.events.slice(-1), ['resume a']);
  });

  it('load beside for a VM moving here (nothing of it runs on this agent): loaded, nothing attached; Swap attaches it at epoch k behind the gate, stopping nothing', async () => {
    h = await new AgentParts().init(['b']);
    const oldB = h.vm('b');
    const r = await h.restores.prepare(await imageOfA(h, 'm1', { loadBeside: true }));
    assert.equal(r.restorePrepare?.beside, true);
    assert.deepEqual(h.driver.events, ['start b', 'load-beside a']);
    assert.deepEqual(h.vms.running(VNE).map((v) => v.name), ['b']);
    assert.deepEqual(h.sw.portNames(VNE), ['blue/b/0']);
    await h.restores.swap({ restoreId: 'r-m1', vne: VNE });
    assert.deepEqual(h.driver.events.slice(2), ['swap a']);
    assert.equal(h.vm('b'), oldB);
    assert.deepEqual([h.vm('a').restoreId, h.driver.status('blue/a'), h.sw.portEpoch('blue/a/0')], ['r-m1', 'paused', 2]);
    const res = await h.restores.resume({ restoreId: 'r-m1', vne: VNE });
    assert.equal(res.resume?.injectedFrames, 1);
    assert.deepEqual(h.driver.events.slice(-1), ['resume a']);
  });

  it('load beside onto an agent where the VNE is not configured yet (a host it comes back to): loaded; Swap refused until ConfigureVne, then attached', async () => {
    h = new AgentParts();
    await h.store.init();
    const r = await h.restores.prepare(await imageOfA(h, 'm2', { loadBeside: true }));
    assert.equal(r.restorePrepare?.beside, true);
    assert.deepEqual(h.driver.events, ['load-beside a']);
    assert.equal(await failure(h.restores.swap({ restoreId: 'r-m2', vne: VNE })), `ERR_VNE_UNKNOWN: VNE ${VNE} is not configured on agent h1 (ConfigureVne first)`);
    assert.deepEqual(h.driver.events, ['load-beside a']);
    h.vnes.configure({ vne: VNE, vni: 7, generation: 1, peers: [], macs: [], epoch: 0 });
    await h.restores.swap({ restoreId: 'r-m2', vne: VNE });
    assert.deepEqual(h.driver.events, ['load-beside a', 'swap a']);
    assert.deepEqual([h.vm('a').restoreId, h.driver.status('blue/a'), h.sw.portEpoch('blue/a/0')], ['r-m2', 'paused', 2]);
    const res = await h.restores.resume({ restoreId: 'r-m2', vne: VNE });
    assert.equal(res.resume?.injectedFrames, 1);
  });

  it('load beside: a bad image discards every copy loaded and leaves the running VMs as they were; RestoreCancel before the swap does the same', async () => {
    h = await new AgentParts().init(['a', 'b']);
    const [oldA, oldB] = [h.vm('a'), h.vm('b')];
    const c = await imageOfA(h, 'b2', { loadBeside: true });
    const memB = await h.store.put('snapshots/b2/b.mem', Buffer.from('memory of b'));
    c.vms.push({ vm: fakeVmSpec('b', 2), memory: { ...memB, sha256: 'ab'.repeat(32), kind: 'ARTEFACT_KIND_MEMORY', owner: 'b', attributes: {}, storedBytes: 0 }, disk: null, channel: [], diskLayers: [] });
    assert.equal(await failure(h.restores.prepare(c)), `ERR_CHECKSUM: snapshots/b2/b.mem: SHA-256 ${memB.sha256}, ${'ab'.repeat(32)} expected`);
    assert.deepEqual(h.driver.events, ['start a', 'start b', 'load-beside a', 'discard a']);
    assert.deepEqual([h.vm('a'), h.vm('b')], [oldA, oldB]);
    assert.deepEqual([h.driver.status('blue/a'), h.driver.status('blue/b'), h.sw.portEpoch('blue/a/0'), h.sw.portEpoch('blue/b/0')], ['running', 'running', 0, 0]);
    assert.equal(h.driver.besides.size, 0);

    await h.restores.prepare(await imageOfA(h, 'b3', { loadBeside: true }));
    await h.restores.cancel({ restoreId: 'r-b3', vne: VNE });
    assert.deepEqual(h.driver.events.slice(4), ['load-beside a', 'discard a']);
    assert.equal(h.vm('a'), oldA);
    assert.equal(h.driver.status('blue/a'), 'running');
    assert.equal(h.sw.portEpoch('blue/a/0'), 0);
  });

  it('load beside: a RestoreCancel while the copies load is not lost: the loads end discarded, the running VM untouched', async () => {
    h = await new AgentParts().init(['a']);
    let release!: () => void;
    h.driver.holdBeside = new Promise<void>((r) => (release = r));
    const p = failure(h.restores.prepare(await imageOfA(h, 'b6', { loadBeside: true })));
    await until('the load beside started', () => h.driver.events.includes('load-beside a') || undefined, { timeoutMs: 5000 });
    await h.restores.cancel({ restoreId: 'r-b6', vne: VNE });
    release();
    assert.equal(await p, 'ERR_CANCELLED: restore r-b6 was cancelled while its VMs loaded beside the running ones on agent h1');
    assert.deepEqual(h.driver.events, ['start a', 'load-beside a', 'discard a']);
    assert.equal(h.driver.status('blue/a'), 'running');
    assert.equal(h.sw.portEpoch('blue/a/0'), 0);
    await assert.rejects(h.restores.swap({ restoreId: 'r-b6', vne: VNE }), (e) => isVnsnapError(e, 'ERR_NOT_FOUND'));
  });

  it('load beside is refused, loading nothing, when two copies do not fit in the host\'s memory', async () => {
    h = await new AgentParts().init(['a']);
    h.memAvailable = 300 * 1024 * 1024;
    const r = await h.restores.prepare(await imageOfA(h, 'b4', { loadBeside: true }));
    assert.deepEqual(r.restorePrepare, { vms: [], beside: false, besideRefused: 'loading 1 VM beside the running ones needs 320 MiB (with 256 MiB kept for the host), 300 MiB available' });
    assert.deepEqual(h.driver.events, ['start a']);
    assert.equal(h.driver.status('blue/a'), 'running');
    await assert.rejects(h.restores.swap({ restoreId: 'r-b4', vne: VNE }), (e) => isVnsnapError(e, 'ERR_NOT_FOUND'));
  });

  it('load beside: a failure during the swap, then RestoreCancel, stops every VM of the restore here, old and new', async () => {
    h = await new AgentParts().init(['a', 'b']);
    const c = await imageOfA(h, 'b5', { loadBeside: true });
    const memB = await h.store.put('snapshots/b5/b.mem', Buffer.from('memory of b'));
    c.vms.push({ vm: fakeVmSpec('b', 2), memory: { ...memB, kind: 'ARTEFACT_KIND_MEMORY', owner: 'b', attributes: {}, storedBytes: 0 }, disk: null, channel: [], diskLayers: [] });
    await h.restores.prepare(c);
    h.driver.failSwap.add('blue/b');
    assert.equal(await failure(h.restores.swap({ restoreId: 'r-b5', vne: VNE })), 'ERR_DRIVER: fake VM blue/b: the swap failed');
    await h.restores.cancel({ restoreId: 'r-b5', vne: VNE });
    assert.deepEqual(h.vms.values(), []);
    assert.deepEqual([...h.driver.vms.keys()], []);
    assert.equal(h.driver.besides.size, 0);
    assert.deepEqual(h.driver.events.slice(2).sort(), ['discard b', 'load-beside a', 'load-beside b', 'stop a', 'stop a', 'stop b', 'swap a']);
  });
});

describe('restore gate port', () => {
  it('holds copies up to its byte bound while held (the rest dropped and counted), then releases after the injection, in order', () => {
    const sw = new Switch({ id: 'h1', restoreGateBytes: 150 });
    sw.configureVne({ name: VNE, vni: 7 });
    const { port: inner } = fakePortPair('p');
    const { port: peer } = fakePortPair('q');
    sw.attachPort(VNE, inner, { gated: true, mac: formatMac(vmMac(1)) });
    sw.attachPort(VNE, peer);
    const f = (seq: number): Buffer => testFrame(2, 1, seq);
    const batch = [f(1), f(2), f(3)];
    for (const x of batch) peer.vm.send(x);
    peer.vm.pumpAll();
    batch[0]?.fill(0); // the gate kept copies
    assert.equal(sw.stats().ports['p']?.gateDrops, 1);
    assert.deepEqual(inner.vm.received, []);
    sw.openGate('p', [plainFrame(f(0))]);
    assert.equal(sw.stats().ports['p']?.gated, false);
    assert.deepEqual(
      inner.vm.received.map((x) => parseFrame(x)?.seq),
      [0, 1, 2],
    );
    peer.vm.send(f(4));
    peer.vm.pumpAll();
    assert.deepEqual(
      inner.vm.received.map((x) => parseFrame(x)?.seq),
      [0, 1, 2, 4],
    );
    sw.stop();
  });
});
