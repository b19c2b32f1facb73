import { strict as assert } from 'node:assert';
import { isVnsnapError } from '../../proto/core/errors';
import { encodeData, encodeMarker } from '../../switch/tunnel/geneve';
import { fakePortPair } from '../../switch/port/porttest/fake-port';
import { FakeUdpNetwork } from '../../switch/tunnel/tunneltest/fake-transport';
import { BROADCAST_MAC, formatMac } from '../../switch/bridge/mac';
import { Switch } from '../../switch/switch';
import { FakeEnv } from '../support/fake-env';
import { makeFrame, parseFrame, vmMac } from '../support/frames';

const MAC = (i: number): number => vmMac(i);

function send(env: FakeEnv, vm: string, idx: number, dst: number, seq = 0): void {
  env.port(vm).vm.send(makeFrame({ dst, src: MAC(idx), sender: idx, seq, epoch: 0 }));
}

describe('bridge (one VNE, fake ports and tunnels)', () => {
  it('floods unknown unicast to every other port of the VNE and to every peer, then forwards learned unicast to exactly one port', () => {
    const env = new FakeEnv({ switches: { a: ['v1', 'v2', 'v3'], b: ['v4'] } });
    send(env, 'v1', 1, MAC(2));
    env.settle();
    assert.deepEqual(['v1', 'v2', 'v3', 'v4'].map((v) => env.port(v).vm.received.length), [0, 1, 1, 1]);
    send(env, 'v2', 2, MAC(1)); // v1 was learned: exactly one delivery
    env.settle();
    assert.deepEqual(['v1', 'v2', 'v3', 'v4'].map((v) => env.port(v).vm.received.length), [1, 1, 1, 1]);
    send(env, 'v4', 4, MAC(1)); // across the tunnel, learned
    env.settle();
    assert.deepEqual(['v1', 'v2', 'v3', 'v4'].map((v) => env.port(v).vm.received.length), [2, 1, 1, 1]);
    send(env, 'v1', 1, MAC(4)); // v4 learned behind switch b: sent only there
    env.settle();
    assert.deepEqual(['v1', 'v2', 'v3', 'v4'].map((v) => env.port(v).vm.received.length), [2, 1, 1, 2]);
    assert.equal(env.sw('a').stats()['floods'], 1);
  });

  it('floods broadcast, never back to the ingress port, and never learns a multicast source', () => {
    const env = new FakeEnv({ switches: { a: ['v1', 'v2'] } });
    const mcastSrc = 0x03_00_00_00_00_01;
    env.port('v1').vm.send(makeFrame({ dst: BROADCAST_MAC, src: mcastSrc, sender: 1, seq: 0, epoch: 0 }));
    env.settle();
    assert.equal(env.port('v1').vm.received.length, 0);
    assert.equal(env.port('v2').vm.received.length, 1);
    assert.equal(env.sw('a').stats().vnes['blue']?.fdbSize, 0);
  });

  it('delivers the batch in batches: the fake port handed frames over in batches larger than one', () => {
    const env = new FakeEnv({ switches: { a: ['v1', 'v2'] }, batchSize: 16 });
    for (let i = 0; i < 40; i++) send(env, 'v1', 1, MAC(2), i);
    env.settle();
    assert.deepEqual(env.port('v1').batchSizes, [16, 16, 8]);
    assert.deepEqual(env.port('v2').vm.received.map((f) => parseFrame(f)?.seq), [...Array(40).keys()]);
  });

  it('keeps VNEs apart: a frame never crosses into another VNE, even with the same MACs', () => {
    const net = new FakeUdpNetwork();
    const a = new Switch({ id: 'a' });
    const b = new Switch({ id: 'b' });
    a.upsertPeer({ name: 'b', address: '10.0.0.2', port: 6081 });
    b.upsertPeer({ name: 'a', address: '10.0.0.1', port: 6081 });
    for (const [sw, peer] of [[a, 'b'], [b, 'a']] as const) {
      sw.configureVne({ name: 'red', vni: 1, peers: [peer] });
      sw.configureVne({ name: 'green', vni: 2, peers: [peer] });
    }
    a.attachTunnel(net.endpoint(0x0a000001, 6081));
    b.attachTunnel(net.endpoint(0x0a000002, 6081));
    const ra = fakePortPair('ra');
    const ga = fakePortPair('ga');
    const rb = fakePortPair('rb');
    const gb = fakePortPair('gb');
    a.attachPort('red', ra.port);
    a.attachPort('green', ga.port);
    b.attachPort('red', rb.port);
    b.attachPort('green', gb.port);
    ra.vm.send(makeFrame({ dst: BROADCAST_MAC, src: MAC(1), sender: 1, seq: 0, epoch: 0 }));
    ra.port.vm.pumpAll();
    net.deliverAll();
    assert.equal(rb.vm.received.length, 1);
    assert.equal(ga.vm.received.length, 0);
    assert.equal(gb.vm.received.length, 0);
    gb.vm.send(makeFrame({ dst: MAC(1), src: MAC(2), sender: 2, seq: 0, epoch: 0 }));
    gb.port.vm.pumpAll();
    net.deliverAll();
    assert.equal(ra.vm.received.length, 0); // same MAC, other VNE: never
    assert.equal(ga.vm.received.length, 1); // flooded within green only
  });

  it('split horizon: a frame from a tunnel is never sent into another tunnel (flood or learned)', () => {
    const env = new FakeEnv({ switches: { a: ['v1'], b: ['v2'], c: ['v3'] } });
    send(env, 'v1', 1, BROADCAST_MAC);
    env.port('v1').vm.pumpAll();
    assert.equal(env.net.inFlight.length, 2); // a → b and a → c, nothing else
    env.net.deliverAll();
    assert.equal(env.net.inFlight.length, 0); // b and c did not forward to each other
    assert.equal(env.port('v2').vm.received.length, 1);
    assert.equal(env.port('v3').vm.received.length, 1);
    // Teach b that MAC 3 lives behind c, then make a send to MAC 3 via b: b must drop it.
    env.sw('b').configureVne({ name: 'blue', macs: [{ mac: formatMac(MAC(3)), peer: 'c' }] });
    env.sw('a').configureVne({ name: 'blue', macs: [{ mac: formatMac(MAC(3)), peer: 'b' }] });
    send(env, 'v1', 1, MAC(3));
    env.settle();
    assert.equal(env.port('v3').vm.received.length, 1);
    assert.equal(env.sw('b').stats()['tunnelHairpinDrops'], 1);
  });

  it('static entries send a MAC to the programmed remote switch without flooding', () => {
    const env = new FakeEnv({ switches: { a: ['v1', 'v2'], b: ['v3'], c: ['v4'] } });
    env.sw('a').configureVne({ name: 'blue', macs: [{ mac: formatMac(MAC(3)), peer: 'b' }] });
    send(env, 'v1', 1, MAC(3));
    env.port('v1').vm.pumpAll();
    assert.equal(env.net.inFlight.length, 1);
    env.settle();
    assert.equal(env.port('v3').vm.received.length, 1);
    assert.equal(env.port('v2').vm.received.length, 0);
    assert.equal(env.port('v4').vm.received.length, 0);
  });

  it('flushes a port\'s learned MACs when it detaches', () => {
    const env = new FakeEnv({ switches: { a: ['v1', 'v2', 'v3'] } });
    send(env, 'v1', 1, BROADCAST_MAC);
    send(env, 'v2', 2, BROADCAST_MAC);
    env.settle();
    assert.equal(env.sw('a').stats().vnes['blue']?.fdbSize, 2);
    env.sw('a').removePort('v1');
    assert.equal(env.sw('a').stats().vnes['blue']?.fdbSize, 1);
    assert.equal(env.port('v1').closed, true);
    send(env, 'v2', 2, MAC(1), 1); // unknown again: flooded to v3 only
    env.settle();
    assert.equal(env.port('v3').vm.received.length, 3);
    assert.equal(env.port('v1').vm.received.length, 1); // only the broadcast before it left
  });

  it('drops and counts frames from unknown peers, of unknown VNIs, of other generations, malformed ones and foreign Geneve', () => {
    const env = new FakeEnv({ switches: { a: ['v1'], b: ['v2'] } });
    const f = makeFrame({ dst: BROADCAST_MAC, src: MAC(9), sender: 9, seq: 0, epoch: 0 });
    const tx = (from: number, data: Buffer): void => env.net.transmit({ fromIp: from, fromPort: 6081, toIp: 0x0a000001, toPort: 6081, data });
    tx(0x0a0000ff, encodeData(100, 0, 1, f)); // unknown peer
    tx(0x0a000002, encodeData(999, 0, 1, f)); // unknown VNI
    tx(0x0a000002, encodeData(100, 0, 0, f)); // older generation
    tx(0x0a000002, encodeData(100, 0, 5, f)); // newer generation
    tx(0x0a000002, Buffer.from([1, 2, 3])); // malformed
    tx(0x0a000002, Buffer.concat([Buffer.from('0000655800006400', 'hex'), f])); // no vnsnap option
    tx(0x0a000002, encodeData(100, 0, 1, f)); // the one good packet
    env.net.deliverAll();
    const s = env.sw('a').stats();
    assert.deepEqual(
      [s['unknownPeer'], s['unknownVni'], s['oldGeneration'], s['newerGeneration'], s['malformed'], s['foreign'], s['tunnelRx']],
      [1, 1, 1, 1, 1, 1, 7],
    );
    assert.equal(env.port('v1').vm.received.length, 1);
  });

  it('never delivers a marker to a VM and acknowledges it', () => {
    const env = new FakeEnv({ switches: { a: ['v1'], b: ['v2'] } });
    env.net.transmit({ fromIp: 0x0a000002, fromPort: 6081, toIp: 0x0a000001, toPort: 6081, data: encodeMarker(100, 1, 1, 0) });
    env.net.deliver([0]);
    assert.equal(env.port('v1').vm.received.length, 0);
    assert.equal(env.net.inFlight.length, 1); // the ack back to b
    assert.equal(env.sw('a').stats()['acksSent'], 1);
  });

  it('rejects bad configuration with typed errors', async () => {
    const sw = new Switch({ id: 'x' });
    assert.throws(() => sw.configureVne({ name: 'v', vni: 1 << 24 }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'));
    sw.configureVne({ name: 'v', vni: 1 });
    assert.throws(() => sw.configureVne({ name: 'w', vni: 1 }), (e) => isVnsnapError(e, 'ERR_ALREADY_EXISTS'));
    assert.throws(() => sw.configureVne({ name: 'w', vni: 2, peers: ['nope'] }), (e) => isVnsnapError(e, 'ERR_PEER_UNKNOWN'));
    assert.throws(() => sw.upsertPeer({ name: 'p', address: '10.0.0.300', port: 1 }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'));
    assert.throws(() => sw.attachPort('nope', fakePortPair('p').port), (e) => isVnsnapError(e, 'ERR_VNE_UNKNOWN'));
    assert.throws(() => sw.configureVne({ name: 'v', macs: [{ mac: 'zz:00:00:00:00:00', port: 'x' }] }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'));
    await assert.rejects(sw.cutPort('nope', 1), (e) => isVnsnapError(e, 'ERR_PORT_UNKNOWN'));
  });
});

describe('bridge: peers that move', () => {
  it('upsertPeer moves a peer: sends to the new address and accepts frames only from it', () => {
    const env = new FakeEnv({ switches: { a: ['v1'], b: ['v2'] } });
    send(env, 'v1', 1, BROADCAST_MAC);
    env.settle();
    // b's switch comes back on another address.
    env.sw('a').upsertPeer({ name: 'b', address: '10.0.0.9', port: 7000 });
    send(env, 'v1', 1, MAC(2), 1);
    env.port('v1').vm.pumpAll();
    assert.equal(env.net.inFlight.length, 1);
    assert.equal(env.net.inFlight[0]?.toIp, 0x0a000009);
    assert.equal(env.net.inFlight[0]?.toPort, 7000);
    env.net.drop([0]);
    const f = makeFrame({ dst: MAC(1), src: MAC(2), sender: 2, seq: 9, epoch: 0 });
    for (const [ip, port] of [[0x0a000002, 6081], [0x0a000009, 7000]] as const) env.net.transmit({ fromIp: ip, fromPort: port, toIp: 0x0a000001, toPort: 6081, data: encodeData(100, 0, 1, f) });
    env.net.deliverAll();
    assert.equal(env.sw('a').stats()['unknownPeer'], 1); // the old address is no longer a peer
    assert.deepEqual(env.port('v1').vm.received.map((x) => parseFrame(x)?.seq), [9]);
    assert.throws(() => env.sw('a').configureVne({ name: 'blue', peers: ['nope'] }), (e) => isVnsnapError(e, 'ERR_PEER_UNKNOWN'));
  });
});
