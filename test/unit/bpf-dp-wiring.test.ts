/**
 * The in-kernel data path wired into a switch (switch/bpf-dp/wiring.ts, Switch.useDataPath), on
 * the real pinned maps of a loaded data path (prefix vnut-bpfwire-<pid>, removed after), with
 * fake ports and a fake underlay: a tap-bpf port's entry and its fast flag, the FDB mirrored on
 * static routes and learning (owners resolved to TAP ifindexes and peers' addresses, a peer on a
 * local address left out), the flag off during the cut and behind a restore gate, a marker that
 * counts what the kernel sent (vn_tx run in the kernel), and punted frames meeting the snapshot
 * rules as tunnel frames from their peer with their colour; the counts of settled epochs folded on
 * the tick (their counters removed, later markers still exact); an agent that stops while its VMs
 * run on leaves their entries and kernel FDB carrying (DataPathWiring.leave).
 */
import { strict as assert } from 'node:assert';
import type { VnsnapError } from '../../proto/core/errors';
import { PUNT_HEADER_LEN } from '../../switch/bpf-dp/layout';
import type { KernelTunnel } from '../../switch/bpf-dp/kernel-tunnel';
import { DataPathMaps } from '../../switch/bpf-dp/maps';
import type { DataPathPortInfo } from '../../switch/bpf-dp/port';
import { datagramsOf, widenColour } from '../../switch/bpf-dp/punt-rx';
import { DataPathWiring } from '../../switch/bpf-dp/wiring';
import { formatMac } from '../../switch/bridge/mac';
import { FakePort } from '../../switch/port/porttest/fake-port';
import { Switch } from '../../switch/switch';
import { decode } from '../../switch/tunnel/geneve';
import { FakeUdpNetwork } from '../../switch/tunnel/tunneltest/fake-transport';
import { makeFrame, parseFrame, vmMac } from '../support/frames';
import { superFrame } from '../support/tcp-frames';
import { dpHarnessHooks, skbCtx } from '../support/bpf-dp-harness';

const PREFIX = `vnut-bpfwire-${process.pid}`;
const VNI = 4545;
const B = '10.0.0.2';
const LOCAL_PEER = 0x7f000001; // 127.0.0.1: "this host's own address" in these tests
const m = (i: number): string => formatMac(vmMac(i));

class DpFakePort extends FakePort {
  constructor(
    name: string,
    readonly dataPath: DataPathPortInfo,
  ) {
    super(name, { offload: true });
  }
}

/** Destination VM i, source VM j, written into a frame's Ethernet header. */
function vmMacInto(frame: Buffer, i: number, j: number): void {
  frame.writeUIntBE(vmMac(i), 0, 6);
  frame.writeUIntBE(vmMac(j), 6, 6);
}

/** A vn_punt header (network order) in front of `frame`; the generation (mod 4) defaults to the VNE's, 1. */
function punted(frame: Buffer, o: { vni?: number; colour: number; reason: number; peer?: number; generation?: number }): Buffer {
  const h = Buffer.alloc(PUNT_HEADER_LEN);
  h.writeUInt32BE(0x564e5350, 0);
  h.writeUInt32BE(o.vni ?? VNI, 4);
  h.writeUInt16BE(o.colour, 8);
  h.writeUInt16BE(o.reason | ((o.generation ?? 1) << 8), 10);
  h.writeUInt32BE(o.peer ?? 0x0a000002, 12);
  return Buffer.concat([h, frame]);
}

describe('in-kernel data path wired into the switch', function () {
  this.timeout(60_000);
  let maps: DataPathMaps;
  const h = dpHarnessHooks(PREFIX, (o) => {
    maps = o.maps;
    maps.setDevices(201, 202);
    maps.setVniDevice(VNI, 201); // the VNI's VXLAN device, as the agent's kernel tunnel writes it
  });

  function rig(opts: Partial<ConstructorParameters<typeof Switch>[0]> = {}): { sw: Switch; net: FakeUdpNetwork; w: DataPathWiring; punt: FakePort; p1: DpFakePort; p2: FakePort } {
    const net = new FakeUdpNetwork();
    const sw = new Switch({ ...opts, id: 'a' });
    sw.attachTunnel(net.endpoint(0x0a000001, 6081));
    sw.configureVne({ name: 'blue', vni: VNI, peers: [{ name: 'b', address: B, port: 6081 }, { name: 'c', address: '127.0.0.1', port: 6091 }] });
    const punt = new FakePort('punt', { offload: true, batchSize: 8 });
    const w = new DataPathWiring(maps, { isLocalAddress: (ip) => ip === LOCAL_PEER, punt });
    sw.useDataPath(w);
    const p1 = new DpFakePort('p1', { tapIfindex: 101, puntIfindex: 301 });
    sw.attachPort('blue', p1, { mac: m(1) });
    const p2 = new FakePort('p2', { offload: true });
    sw.attachPort('blue', p2, { mac: m(2) });
    return { sw, net, w, punt, p1, p2 };
  }

  it('puts a tap-bpf port on the data path and mirrors static routes and learning; a plain port and a peer on a local address stay off', () => {
    const { sw, w, p1 } = rig();
    sw.configureVne({ name: 'blue', macs: [{ mac: m(7), peer: 'b' }, { mac: m(8), peer: 'c' }] });
    assert.deepEqual(maps.port(101), { vni: VNI, epoch: 0, puntIfindex: 301, fast: true, generation: 1 });
    assert.deepEqual([m(1), m(2), m(7), m(8)].map((x) => maps.fdb(VNI, x)), [{ ifindex: 101 }, undefined, { peer: B }, undefined]);
    assert.deepEqual([B, '127.0.0.1', '10.0.0.9'].map((ip) => maps.hasPeer(VNI, ip)), [true, true, false], "vn_peers: exactly the VNE's peers");
    p1.vm.send(makeFrame({ dst: vmMac(2), src: vmMac(3), sender: 3, seq: 1, epoch: 0 })); // a second MAC behind p1: learned
    p1.vm.pumpAll();
    assert.deepEqual(maps.fdb(VNI, m(3)), { ifindex: 101 });
    sw.removeMac('blue', m(7));
    assert.equal(maps.fdb(VNI, m(7)), undefined);
    assert.deepEqual([w.stats().ports, w.stats().fastPorts, w.stats().syncErrors], [1, 1, 0]);
    sw.removePort('p1');
    assert.deepEqual([maps.port(101)?.fast, maps.fdb(VNI, m(1)), maps.fdb(VNI, m(3))], [false, undefined, undefined]);
    assert.deepEqual([B, '127.0.0.1'].map((ip) => maps.hasPeer(VNI, ip)), [false, false], 'the last data path port gone: its VNE\'s peers leave vn_peers');
    sw.stop();
  });

  it('an agent that stops while its VMs run on leaves them carried in the kernel: entry, flag and kernel FDB stay, a port stopped before leaves', () => {
    const { sw, w } = rig();
    try {
      sw.configureVne({ name: 'blue', macs: [{ mac: m(7), peer: 'b' }] });
      sw.attachPort('blue', new DpFakePort('p3', { tapIfindex: 103, puntIfindex: 303 }), { mac: m(4) });
      assert.deepEqual([maps.port(103)?.fast, maps.fdb(VNI, m(4))], [true, { ifindex: 103 }]);
      sw.removePort('p3'); // its VM stopped: off the data path
      assert.deepEqual([maps.port(103)?.fast, maps.fdb(VNI, m(4))], [false, undefined]);
      w.leave();
      sw.removePort('p1'); // its VM released: left as it is
      sw.configureVne({ name: 'blue', macs: [] });
      sw.stop();
      assert.deepEqual(maps.port(101), { vni: VNI, epoch: 0, puntIfindex: 301, fast: true, generation: 1 });
      assert.deepEqual([m(1), m(7)].map((x) => maps.fdb(VNI, x)), [{ ifindex: 101 }, { peer: B }]);
      const [punts, sent] = [maps.stats().txPunt, maps.count(VNI, B, 0, 'sent')];
      h().run('vn_tx', makeFrame({ dst: vmMac(7), src: vmMac(1), sender: 1, seq: 1, epoch: 0 }, 200), skbCtx({ ingressIfindex: 101 }));
      assert.deepEqual([maps.stats().txPunt - punts, maps.count(VNI, B, 0, 'sent') - sent], [0, 1]);
    } finally {
      sw.stop();
      maps.removePort(101);
      for (const x of [m(1), m(7)]) maps.removeFdb(VNI, x);
    }
  });

  it('a peer told a data path port other than this host\'s (none: 0, or another) is left out of the kernel FDB until told ours; one never told is trusted', () => {
    const net = new FakeUdpNetwork();
    const sw = new Switch({ id: 'a' });
    sw.attachTunnel(net.endpoint(0x0a000001, 6081));
    const peers = (dpB: number | undefined, dpD: number | undefined) => [
      { name: 'b', address: B, port: 6081, ...(dpB === undefined ? {} : { dataPathPort: dpB }) },
      { name: 'd', address: '10.0.0.4', port: 6081, ...(dpD === undefined ? {} : { dataPathPort: dpD }) },
      { name: 'e', address: '10.0.0.5', port: 6081 },
    ];
    sw.configureVne({ name: 'blue', vni: VNI, peers: peers(0, 6083) });
    sw.useDataPath(new DataPathWiring(maps, { isLocalAddress: () => false, vxlanPort: 6082 }));
    sw.attachPort('blue', new DpFakePort('p1', { tapIfindex: 101, puntIfindex: 301 }), { mac: m(1) });
    sw.configureVne({ name: 'blue', macs: [{ mac: m(7), peer: 'b' }, { mac: m(8), peer: 'd' }, { mac: m(9), peer: 'e' }] });
    const fdb = (): unknown[] => [m(7), m(8), m(9)].map((x) => maps.fdb(VNI, x));
    assert.deepEqual(fdb(), [undefined, undefined, { peer: '10.0.0.5' }]);
    // a frame to b: punted by vn_tx (to the port's punt device, for the switch's Geneve)
    const punts = maps.stats().txPunt;
    const r = h().run('vn_tx', makeFrame({ dst: vmMac(7), src: vmMac(1), sender: 1, seq: 1, epoch: 0 }, 200), skbCtx({ ingressIfindex: 101 }));
    assert.deepEqual([r.retval, maps.stats().txPunt - punts], [7 /* TC_ACT_REDIRECT */, 1]);
    // b turns its data path on (registered again: the coordinator tells its port), d moves to ours
    assert.deepEqual(sw.upsertPeer({ name: 'b', address: B, port: 6081, dataPathPort: 6082 }), { change: 'unchanged' });
    sw.configureVne({ name: 'blue', peers: peers(6082, 6082) });
    assert.deepEqual(fdb(), [{ peer: B }, { peer: '10.0.0.4' }, { peer: '10.0.0.5' }]);
    // and b turns it off again: out of the kernel FDB
    sw.configureVne({ name: 'blue', peers: peers(0, 6082) });
    assert.deepEqual(fdb(), [undefined, { peer: '10.0.0.4' }, { peer: '10.0.0.5' }]);
    sw.stop();
  });

  it('the cut turns the flag off while the VM is paused and on at the new epoch; a restored port stays off until its gate opens', async () => {
    const { sw } = rig();
    let during: unknown;
    await sw.cutPorts(['p1', 'p2'], 1, async (pass) => {
      during = maps.port(101);
      await pass();
    });
    assert.deepEqual(during, { vni: VNI, epoch: 0, puntIfindex: 301, fast: false, generation: 1 });
    assert.deepEqual(maps.port(101), { vni: VNI, epoch: 1, puntIfindex: 301, fast: true, generation: 1 });
    const p3 = new DpFakePort('p3', { tapIfindex: 103, puntIfindex: 303 });
    sw.attachPort('blue', p3, { mac: m(4), epoch: 1, gated: true });
    sw.setPortEpoch('p3', 1);
    assert.deepEqual([maps.port(103)?.fast, maps.fdb(VNI, m(4))], [false, { ifindex: 103 }]);
    sw.openGate('p3', []);
    assert.deepEqual(maps.port(103), { vni: VNI, epoch: 1, puntIfindex: 303, fast: true, generation: 1 });
    sw.stop();
  });

  /** n frames from p1's TAP (ifindex 101) to VM 7 behind peer b, run through vn_tx in the kernel. */
  const sendToB = (n: number): void => {
    const frame = makeFrame({ dst: vmMac(7), src: vmMac(1), sender: 1, seq: 1, epoch: 0 }, 200);
    for (let i = 0; i < n; i++) h().run('vn_tx', frame, skbCtx({ ingressIfindex: 101 }));
  };
  /** The (epoch, count) of every marker the switch sent to b. */
  const markersToB = (net: FakeUdpNetwork): number[][] =>
    (net.inFlight.filter((d) => d.toIp === 0x0a000002).map((d) => decode(d.data, 0, d.data.length)).filter((d) => d?.kind === 'marker') as { epoch: number; count: number }[]).map((d) => [d.epoch, d.count]);

  it('a marker counts the datagrams the kernel sent to that peer (vn_tx run in the kernel)', async () => {
    const { sw, net } = rig();
    sw.configureVne({ name: 'blue', macs: [{ mac: m(7), peer: 'b' }] });
    const before = maps.count(VNI, B, 0, 'sent');
    sendToB(3);
    assert.equal(maps.count(VNI, B, 0, 'sent') - before, 3);
    await sw.cutPorts(['p1', 'p2'], 1);
    assert.deepEqual(markersToB(net), [[1, before + 3]]);
    sw.stop();
  });

  it('a new generation (a restore in place) restarts the kernel counts and moves the ports\' entries to it: the old counters go, the next marker counts only the new generation', async () => {
    const { sw, net } = rig();
    sw.configureVne({ name: 'blue', macs: [{ mac: m(7), peer: 'b' }] });
    sendToB(3);
    assert.ok(maps.count(VNI, B, 0, 'sent') >= 3);
    sw.configureVne({ name: 'blue', generation: 2, generationNow: true });
    assert.equal(maps.count(VNI, B, 0, 'sent'), 0, 'the old generation\'s epoch-0 counter is gone from the map');
    assert.equal(maps.port(101)?.generation, 2, 'the port\'s entry took the new generation (the kernel refuses frames of the old one)');
    sendToB(2);
    await sw.cutPorts(['p1', 'p2'], 1);
    assert.deepEqual(markersToB(net), [[1, 2]]);
    sw.stop();
  });

  it('folds the kernel counts of settled epochs on the tick: their counters leave the map, markers after it still count them', async () => {
    let now = 1_000_000;
    const { sw, net } = rig({ now: () => now });
    sw.configureVne({ name: 'blue', macs: [{ mac: m(7), peer: 'b' }] });
    const before = maps.count(VNI, B, 0, 'sent');
    sendToB(3);
    await sw.cutPorts(['p1', 'p2'], 1);
    assert.equal(maps.count(VNI, B, 0, 'sent'), before + 3);
    sw.tick(); // every port is at 1 and no recording is below 1: epoch 0 is settled
    assert.equal(maps.count(VNI, B, 0, 'sent'), 0, "epoch 0's counter is gone from the map");
    now += 100;
    sw.tick(); // b has not acknowledged: the marker of 1 is sent again, from the folded count
    sendToB(2);
    assert.equal(maps.count(VNI, B, 1, 'sent'), 2);
    await sw.cutPorts(['p1', 'p2'], 2);
    sw.tick();
    assert.equal(maps.count(VNI, B, 1, 'sent'), 2, 'recording 1 is still kept (b never acknowledges): epoch 1 stays');
    assert.deepEqual(markersToB(net), [[1, before + 3], [1, before + 3], [2, before + 5]]);
    sw.stop();
  });

  it('punted frames meet the snapshot rules as tunnel frames of their peer and colour: late delivered and recorded, early held, unknown forwarded', async () => {
    const { sw, w, punt, p1 } = rig();
    await sw.cutPorts(['p1', 'p2'], 1);
    const f = (seq: number, dst = 1): Buffer => makeFrame({ dst: vmMac(dst), src: vmMac(9), sender: 9, seq, epoch: 0 });
    punt.vm.send(punted(f(1), { colour: 0, reason: 1 })); // late
    punt.vm.send(punted(f(2), { colour: 2, reason: 2 })); // early
    punt.vm.send(punted(f(3), { colour: 1, reason: 0 })); // unknown (e.g. fast off)
    punt.vm.send(punted(f(4), { colour: 1, reason: 0, vni: 9 })); // no such VNE
    punt.vm.send(punted(f(5), { colour: 1, reason: 0, peer: 0x0a000063 })); // no such peer
    punt.vm.send(punted(f(7), { colour: 1, reason: 0, generation: 0 })); // another generation: dropped
    punt.vm.send(Buffer.concat([Buffer.alloc(PUNT_HEADER_LEN), f(6)])); // no header
    punt.vm.pumpAll();
    assert.deepEqual(p1.vm.received.map((x) => parseFrame(x)?.seq), [1, 3]);
    const s = sw.stats().ports['p1'];
    assert.deepEqual([s?.recorded, s?.held], [1, 1]);
    assert.deepEqual(w.stats().punt, { frames: 7, late: 1, early: 1, unknown: 4, malformed: 1, unknownVni: 1, unknownPeer: 1, otherGeneration: 1 });
    assert.equal(sw.stats().vnes['blue']?.fdbSize, 3, 'the punted frames\' source learned behind peer b');
    assert.deepEqual(maps.fdb(VNI, m(9)), { peer: B });
    sw.stop();
  });

  it('widens a colour across the 16-bit wrap', () => {
    assert.deepEqual([widenColour(5, 5), widenColour(4, 5), widenColour(0xffff, 0x10000), widenColour(0, 0xffff), widenColour(1, 0)], [5, 4, 0xffff, 0x10000, 1]);
  });

  it('a punted GRO super-frame reaches the port whole with its header made relative to the inner frame, counted by its datagrams', () => {
    const { sw, punt, p1 } = rig();
    const sf = superFrame({ payload: 500 * 20, mss: 500 }); // fits the fake port's slab
    vmMacInto(sf.frame, 1, 9);
    assert.equal(datagramsOf(sf.frame, 0, sf.frame.length, sf.meta, 0), 20);
    assert.equal(datagramsOf(sf.frame, 0, sf.frame.length, null, 0), 1);
    const pm = Buffer.from(sf.meta);
    pm.writeUInt16LE(sf.meta.readUInt16LE(2) + PUNT_HEADER_LEN, 2);
    pm.writeUInt16LE(sf.meta.readUInt16LE(6) + PUNT_HEADER_LEN, 6);
    punt.vm.send(punted(sf.frame, { colour: 0, reason: 0 }), pm);
    punt.vm.pumpAll();
    assert.deepEqual(p1.vm.received.map((f) => f.length), [sf.frame.length]);
    assert.ok(p1.vm.received[0]?.equals(sf.frame));
    assert.deepEqual(p1.vm.receivedMeta[0], sf.meta);
    assert.equal(sw.recordingStatus('blue').length, 0);
    sw.stop();
  });

  it('with the kernel tunnel: each VNE\'s device asked for once (again after a failure), and a remote MAC in vn_fdb only after its kernel FDB write', async () => {
    const calls: string[] = [];
    let failVni = -1;
    const tunnel: KernelTunnel = {
      addVni: (vni) => {
        calls.push(`add ${vni}`);
        return vni === failVni ? Promise.reject(new Error('no')) : Promise.resolve();
      },
      setFdb: (vni, mac, peer) => {
        calls.push(`set ${vni} ${mac} ${peer} (vn_fdb ${JSON.stringify(maps.fdb(vni, mac) ?? null)})`);
        return Promise.resolve();
      },
      removeFdb: (vni, mac) => {
        calls.push(`del ${vni} ${mac} (vn_fdb ${JSON.stringify(maps.fdb(vni, mac) ?? null)})`);
        return Promise.resolve();
      },
      removeVni: (vni) => {
        calls.push(`remove ${vni}`);
        return Promise.resolve();
      },
      idle: () => Promise.resolve(),
    };
    const net = new FakeUdpNetwork();
    const sw = new Switch({ id: 'a' });
    try {
      sw.attachTunnel(net.endpoint(0x0a000001, 6081));
      failVni = VNI + 1;
      sw.configureVne({ name: 'blue', vni: VNI, peers: [{ name: 'b', address: B, port: 6081 }] });
      const w = new DataPathWiring(maps, { isLocalAddress: () => false, tunnel });
      sw.useDataPath(w);
      sw.configureVne({ name: 'green', vni: VNI + 1, peers: [] });
      await w.settled();
      assert.equal(w.stats().kernelErrors, 1, "green's device failed");
      failVni = -1;
      sw.configureVne({ name: 'green', vni: VNI + 1 });
      sw.configureVne({ name: 'blue', vni: VNI });
      sw.attachPort('blue', new DpFakePort('p5', { tapIfindex: 105, puntIfindex: 305 }), { mac: m(5) });
      sw.configureVne({ name: 'blue', macs: [{ mac: m(7), peer: 'b' }] });
      assert.equal(maps.fdb(VNI, m(7)), undefined, 'not before the kernel FDB has it');
      await w.settled();
      assert.deepEqual(maps.fdb(VNI, m(7)), { peer: B });
      assert.deepEqual(calls, [`add ${VNI}`, `add ${VNI + 1}`, `add ${VNI + 1}`, `set ${VNI} ${m(7)} ${B} (vn_fdb null)`]);
      sw.removeMac('blue', m(7));
      assert.equal(maps.fdb(VNI, m(7)), undefined);
      assert.deepEqual(calls.slice(4), [`del ${VNI} ${m(7)} (vn_fdb null)`]);
    } finally {
      sw.stop();
      maps.removePort(105);
      for (const x of [m(5), m(7)]) maps.removeFdb(VNI, x);
    }
  });

  it('a removed VNE: refused while its port is attached, then its device removed once; unknown afterwards; configured again, its device asked for again; an unknown VNE\'s VNI device removed unless its VNI is in use', async () => {
    const calls: string[] = [];
    const log = (call: string): Promise<void> => {
      calls.push(call);
      return Promise.resolve();
    };
    const tunnel: KernelTunnel = {
      addVni: (vni) => log(`add ${vni}`),
      setFdb: (vni, mac, peer) => log(`set ${vni} ${mac} ${peer}`),
      removeFdb: (vni, mac) => log(`del ${vni} ${mac}`),
      removeVni: (vni) => log(`remove ${vni}`),
      idle: () => Promise.resolve(),
    };
    const sw = new Switch({ id: 'a' });
    try {
      const w = new DataPathWiring(maps, { isLocalAddress: () => false, tunnel });
      sw.useDataPath(w);
      sw.configureVne({ name: 'blue', vni: VNI, peers: [{ name: 'b', address: B, port: 6081 }], macs: [{ mac: m(7), peer: 'b' }] });
      sw.attachPort('blue', new DpFakePort('p5', { tapIfindex: 105, puntIfindex: 305 }), { mac: m(5) });
      await w.settled();
      assert.deepEqual(maps.fdb(VNI, m(7)), { peer: B });
      assert.throws(() => sw.removeVne('blue'), (e: VnsnapError) => e.code === 'ERR_FAILED_PRECONDITION' && e.message === 'VNE blue still has ports here (p5): detach them first');
      assert.deepEqual(calls, [`add ${VNI}`, `set ${VNI} ${m(7)} ${B}`]);
      sw.removePort('p5');
      assert.equal(sw.removeVne('blue'), true);
      await w.settled();
      assert.deepEqual(calls.slice(2), [`del ${VNI} ${m(7)}`, `remove ${VNI}`]);
      assert.equal(maps.fdb(VNI, m(7)), undefined);
      assert.equal(sw.removeVne('blue'), false);
      assert.throws(() => sw.attachPort('blue', new DpFakePort('p6', { tapIfindex: 106, puntIfindex: 306 })), (e: VnsnapError) => e.code === 'ERR_VNE_UNKNOWN');
      sw.configureVne({ name: 'blue', vni: VNI });
      await w.settled();
      assert.deepEqual(calls.slice(4), [`add ${VNI}`]);
      // a VNE this switch never knew (a restarted agent): only its VNI's device, and only if no VNE here uses the VNI
      assert.equal(sw.removeVne('ghost', VNI), false);
      assert.equal(sw.removeVne('ghost', VNI + 7), false);
      await w.settled();
      assert.deepEqual(calls.slice(5), [`remove ${VNI + 7}`]);
      assert.equal(w.stats().kernelErrors, 0);
    } finally {
      sw.stop();
      maps.removePort(105);
      for (const x of [m(5), m(7)]) maps.removeFdb(VNI, x);
    }
  });
});
