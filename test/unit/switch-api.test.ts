/**
 * The switch's configuration and snapshot API as its callers use it (configureVne, upsertPeer,
 * attachPort with the restore gate, openGate, cutPorts, typed stats and their Prometheus
 * export), over fake ports and a fake underlay, on a manual clock.
 */
import { strict as assert } from 'node:assert';
import { AgentMetrics } from '../../agent/metrics';
import { isVnsnapError } from '../../proto/core/errors';
import { formatMac } from '../../switch/bridge/mac';
import { VNET_HDR_LEN } from '../../switch/offload';
import { fakePortPair, FakePort } from '../../switch/port/porttest/fake-port';
import { Switch } from '../../switch/switch';
import { FakeUdpNetwork } from '../../switch/tunnel/tunneltest/fake-transport';
import { plainFrame } from '../../proto/artefacts/channel-state';
import { makeFrame, parseFrame, vmMac } from '../support/frames';

const BCAST = 0xff_ff_ff_ff_ff_ff;

function code(e: unknown): string {
  return isVnsnapError(e) ? e.code : String(e);
}

/** One switch 'a' with VNE blue (VNI 100) and peer 'b' at 10.0.0.2:6081 on a fake underlay. */
function oneSwitch(opts: { restoreGateBytes?: number } = {}): { sw: Switch; net: FakeUdpNetwork; now: { t: number } } {
  const now = { t: 1_000_000 };
  const net = new FakeUdpNetwork();
  const sw = new Switch({ id: 'a', now: () => now.t, ...opts });
  sw.attachTunnel(net.endpoint(0x0a000001, 6081));
  sw.configureVne({ name: 'blue', vni: 100, peers: [{ name: 'b', address: '10.0.0.2', port: 6081 }] });
  return { sw, net, now };
}

function attach(sw: Switch, name: string, i: number, opts: { epoch?: number; gated?: boolean; offload?: boolean } = {}): FakePort {
  const { port } = fakePortPair(name, { batchSize: 4, ...(opts.offload ? { offload: true } : {}) });
  sw.attachPort('blue', port, { mac: formatMac(vmMac(i)), ...(opts.epoch !== undefined ? { epoch: opts.epoch } : {}), ...(opts.gated ? { gated: true } : {}) });
  return port;
}

function send(p: FakePort, from: number, to: number, seq: number, epoch = 0, meta?: Buffer): void {
  p.vm.send(makeFrame({ dst: to, src: vmMac(from), sender: from, seq, epoch }), meta);
  p.vm.pumpAll();
}

const seqs = (p: FakePort): number[] => p.vm.received.map((f) => parseFrame(f)?.seq ?? -1);

describe('Switch configuration API', () => {
  it('configureVne creates a VNE, is idempotent, and refuses another VNI', () => {
    const { sw } = oneSwitch();
    sw.configureVne({ name: 'blue', vni: 100, peers: [{ name: 'b', address: '10.0.0.2', port: 6081 }] });
    sw.configureVne({ name: 'blue', peers: ['b'] });
    const s = sw.stats();
    assert.deepEqual(s.vnes['blue'], { vni: 100, epoch: 0, generation: 1, fdbSize: 0, fdb: { learned: 0, moved: 0, aged: 0, evicted: 0 }, ports: 0, peers: ['b'] });
    assert.deepEqual(s.peers['b'], { address: '10.0.0.2', port: 6081, vnes: ['blue'] });
    assert.throws(() => sw.configureVne({ name: 'blue', vni: 101 }), (e) => code(e) === 'ERR_FAILED_PRECONDITION');
    assert.throws(() => sw.configureVne({ name: 'red' }), (e) => code(e) === 'ERR_VNE_UNKNOWN');
  });

  it('configureVne programs static routes to peers, named ports and the local port with a MAC', () => {
    const { sw, net } = oneSwitch();
    const p1 = attach(sw, 'v1', 1);
    const { port: p2 } = fakePortPair('v2');
    sw.attachPort('blue', p2);
    sw.configureVne({
      name: 'blue',
      macs: [
        { mac: formatMac(vmMac(7)), peer: 'b' },
        { mac: formatMac(vmMac(2)), port: 'v2' },
        { mac: formatMac(vmMac(1)), local: true },
        { mac: formatMac(vmMac(9)), local: true }, // no port has it: nothing to program
      ],
    });
    assert.equal(sw.stats().vnes['blue']?.fdbSize, 3);
    send(p1, 1, vmMac(7), 1); // to the peer only, not flooded
    send(p1, 1, vmMac(2), 2); // to v2
    assert.equal(net.inFlight.length, 1);
    assert.deepEqual(seqs(p2), [2]);
    assert.equal(sw.stats().floods, 0);
    assert.throws(() => sw.configureVne({ name: 'blue', macs: [{ mac: formatMac(vmMac(8)), peer: 'zz' }] }), (e) => code(e) === 'ERR_PEER_UNKNOWN');
  });

  it('upsertPeer adds, leaves alone, and moves a peer (frames go to the new address)', () => {
    const { sw, net } = oneSwitch();
    assert.deepEqual(sw.upsertPeer({ name: 'c', address: '10.0.0.3', port: 6081 }), { change: 'added' });
    assert.deepEqual(sw.upsertPeer({ name: 'b', address: '10.0.0.2', port: 6081 }), { change: 'unchanged' });
    assert.deepEqual(sw.upsertPeer({ name: 'b', address: '10.0.0.9', port: 7000 }), { change: 'moved', from: '10.0.0.2:6081' });
    assert.throws(() => sw.upsertPeer({ name: 'c', address: '10.0.0.9', port: 7000 }), (e) => code(e) === 'ERR_ALREADY_EXISTS');
    const p1 = attach(sw, 'v1', 1);
    send(p1, 1, BCAST, 1);
    assert.deepEqual(
      net.inFlight.map((d) => [d.toIp, d.toPort]),
      [[0x0a000009, 7000]],
    );
  });

  it('a generation change waits for the running ports of the old one, unless generationNow', () => {
    const { sw } = oneSwitch();
    attach(sw, 'v1', 1);
    attach(sw, 'r1', 2, { gated: true }); // a restored instance does not hold the change back
    sw.configureVne({ name: 'blue', generation: 2 });
    assert.deepEqual([sw.stats().vnes['blue']?.generation, sw.stats().vnes['blue']?.pendingGeneration], [1, 2]);
    sw.removePort('v1');
    assert.deepEqual([sw.stats().vnes['blue']?.generation, sw.stats().vnes['blue']?.pendingGeneration], [2, undefined]);
    attach(sw, 'v3', 3);
    sw.configureVne({ name: 'blue', generation: 3, generationNow: true });
    assert.equal(sw.stats().vnes['blue']?.generation, 3);
  });
});

describe('Switch restore gate (attachPort gated, openGate)', () => {
  it('keeps every delivered frame, then writes the recorded frames first, the kept ones next, then passes', () => {
    const { sw } = oneSwitch();
    const p1 = attach(sw, 'v1', 1);
    const r = attach(sw, 'r', 2, { gated: true });
    for (const seq of [10, 11]) send(p1, 1, vmMac(2), seq);
    assert.deepEqual(seqs(r), []);
    assert.equal(sw.stats().ports['r']?.txFrames, 2);
    assert.equal(sw.stats().ports['r']?.gated, true);
    const recorded = [1, 2].map((seq) => makeFrame({ dst: vmMac(2), src: vmMac(1), sender: 1, seq, epoch: 0 }));
    assert.equal(sw.openGate('r', recorded.map(plainFrame)), 2);
    send(p1, 1, vmMac(2), 12);
    assert.deepEqual(seqs(r), [1, 2, 10, 11, 12]);
    const st = sw.stats().ports['r'];
    assert.deepEqual([st?.injected, st?.gated, st?.gateBytes, st?.gateDrops], [2, false, 0, 0]);
  });

  it('bounds the gate by restoreGateBytes and counts the drops', () => {
    const { sw } = oneSwitch({ restoreGateBytes: 130 });
    const p1 = attach(sw, 'v1', 1);
    const r = attach(sw, 'r', 2, { gated: true });
    for (const seq of [1, 2, 3]) send(p1, 1, vmMac(2), seq); // 60-byte frames
    assert.deepEqual([sw.stats().ports['r']?.gateDrops, sw.stats().ports['r']?.gateBytes], [1, 120]);
    sw.openGate('r', []);
    assert.deepEqual(seqs(r), [1, 2]);
  });

  it('keeps the virtio_net_hdr of a super-frame behind the gate', () => {
    const { sw } = oneSwitch();
    const p1 = attach(sw, 'v1', 1, { offload: true });
    const r = attach(sw, 'r', 2, { gated: true, offload: true });
    const gso = Buffer.alloc(VNET_HDR_LEN);
    gso[0] = 1; // NEEDS_CSUM
    gso[1] = 1; // GSO_TCPV4
    gso.writeUInt16LE(1448, 4);
    send(p1, 1, vmMac(2), 1, 0, gso);
    send(p1, 1, vmMac(2), 2);
    sw.openGate('r', []);
    assert.deepEqual(seqs(r), [1, 2]);
    assert.deepEqual(r.vm.receivedMeta, [gso, Buffer.alloc(VNET_HDR_LEN)]);
  });
});

describe('Switch.cutPorts', () => {
  it('gates before the pause, drains and advances at the pause, releases after; other ports of the VNE pass too', async () => {
    const { sw } = oneSwitch();
    const p1 = attach(sw, 'v1', 1);
    const p2 = attach(sw, 'v2', 2);
    const p3 = attach(sw, 'v3', 3); // not named: passes the cut without a pause
    const order: string[] = [];
    const out = await sw.cutPorts(['v1', 'v2'], 1, async (pass) => {
      send(p3, 3, vmMac(1), 1); // the port is gated: held, not delivered
      assert.deepEqual(seqs(p1), []);
      p1.vm.send(makeFrame({ dst: vmMac(2), src: vmMac(1), sender: 1, seq: 2, epoch: 0 })); // written before the pause
      order.push('paused');
      await pass();
      order.push('passed');
      assert.deepEqual([sw.portEpoch('v1'), sw.portEpoch('v2'), sw.portEpoch('v3')], [1, 1, 0]);
      return 'report';
    });
    assert.equal(out, 'report');
    assert.deepEqual(order, ['paused', 'passed']);
    assert.deepEqual([sw.portEpoch('v1'), sw.portEpoch('v2'), sw.portEpoch('v3')], [1, 1, 1]);
    assert.deepEqual(seqs(p1), [1]); // released after the cut (epoch 0 < 1: delivered and recorded)
    assert.deepEqual(seqs(p2), [2]); // drained at the pause
    assert.equal(sw.stats().vnes['blue']?.epoch, 1);
  });

  it('passes the cut itself when the hook never calls pass', async () => {
    const { sw } = oneSwitch();
    attach(sw, 'v1', 1);
    let calls = 0;
    await sw.cutPorts(['v1'], 1, () => {
      calls++;
    });
    assert.deepEqual([calls, sw.portEpoch('v1')], [1, 1]);
  });

  it('on a failed pause un-gates the named ports, rethrows, and (as production) they then pass without a pause', async () => {
    const { sw } = oneSwitch();
    const p1 = attach(sw, 'v1', 1);
    attach(sw, 'v2', 2);
    const p3 = attach(sw, 'v3', 3, { epoch: 1 });
    await assert.rejects(
      sw.cutPorts(['v1', 'v2'], 1, () => {
        send(p3, 3, vmMac(1), 5); // epoch 1 > 0: held while v1 is gated
        assert.deepEqual(seqs(p1), []);
        throw new Error('pause failed');
      }),
      /pause failed/,
    );
    assert.deepEqual([sw.portEpoch('v1'), sw.portEpoch('v2')], [1, 1]);
    assert.deepEqual(seqs(p1), [5]);
    await sw.cutPorts(['v1', 'v2'], 2);
    assert.deepEqual([sw.portEpoch('v1'), sw.portEpoch('v2')], [2, 2]);
  });

  it('refuses an unknown port without gating anything, and an old epoch', async () => {
    const { sw } = oneSwitch();
    attach(sw, 'v1', 1, { epoch: 2 });
    attach(sw, 'v2', 2);
    await assert.rejects(sw.cutPorts(['v2', 'nope'], 3), (e) => code(e) === 'ERR_PORT_UNKNOWN');
    assert.equal(sw.portEpoch('v2'), 0);
    await assert.rejects(sw.cutPorts(['v1'], 2), (e) => code(e) === 'ERR_EPOCH_ORDER');
    assert.deepEqual([sw.portEpoch('v1'), sw.portEpoch('v2')], [2, 2]); // the rest of the VNE passes, as in production
  });
});

describe('Switch stats', () => {
  it('are typed per port, VNE (with FDB counters) and peer, and every counter reaches Prometheus', async () => {
    const { sw } = oneSwitch();
    const p1 = attach(sw, 'v1', 1);
    attach(sw, 'v2', 2);
    send(p1, 1, BCAST, 1);
    const s = sw.stats();
    assert.deepEqual([s.floods, s.ports['v1']?.rxFrames, s.ports['v2']?.txFrames, s.vnes['blue']?.fdb.learned], [1, 1, 1, 0]);
    send(p1, 5, BCAST, 2); // a learned MAC
    assert.equal(sw.stats().vnes['blue']?.fdb.learned, 1);
    const m = new AgentMetrics();
    m.setStatsSource(() => sw.stats());
    const text = await m.registry.metrics();
    for (const line of [
      'vnsnap_switch_port_rx_frames{port="v1"} 2',
      'vnsnap_switch_port_tx_frames{port="v2"} 2',
      'vnsnap_switch_port_gate_drops{port="v1"} 0',
      'vnsnap_switch_counter{name="floods"} 2',
      'vnsnap_switch_fdb_learned{vne="blue"} 1',
      'vnsnap_switch_fdb_entries{vne="blue"} 3',
      'vnsnap_switch_vne_generation{vne="blue"} 1',
    ]) {
      assert.ok(text.includes(line), `${line} in\n${text}`);
    }
  });
});
