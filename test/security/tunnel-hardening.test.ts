import type { ChannelFrame } from '../../proto/artefacts/channel-state';
import { strict as assert } from 'node:assert';
import { fakePortPair } from '../../switch/port/porttest/fake-port';
import { MARKER_EPOCHS_AHEAD, MAX_EPOCHS_PER_PEER, MAX_MARKER_SHORTFALL, MAX_RECORDINGS_PER_VNE } from '../../switch/options';
import { EpochCounts } from '../../switch/snapshot/recording';
import { decode, encodeData, encodeMarker } from '../../switch/tunnel/geneve';
import { FakeEnv } from '../support/fake-env';
import { makeFrame, parseFrame, vmMac } from '../support/frames';

const A = 0x0a000001;
const B = 0x0a000002;
const seqs = (frames: readonly (Buffer | ChannelFrame)[]): number[] => frames.map((f) => parseFrame(Buffer.isBuffer(f) ? f : f.frame)?.seq ?? -1);

/** v1 on switch a, v2 on switch b (10.0.0.2); MACs learned. */
function twoHosts(): FakeEnv {
  const env = new FakeEnv({ switches: { a: ['v1'], b: ['v2'] } });
  send(env, 'v1', 1, 2, 1000);
  send(env, 'v2', 2, 1, 1000);
  env.settle();
  env.port('v1').vm.received.length = 0;
  env.port('v2').vm.received.length = 0;
  return env;
}

function send(env: FakeEnv, vm: string, me: number, to: number, seq: number, epoch = 0): void {
  env.port(vm).vm.send(makeFrame({ dst: vmMac(to), src: vmMac(me), sender: me, seq, epoch }));
}

/** A datagram to switch a that claims to come from peer b's address. */
function forge(env: FakeEnv, data: Buffer): void {
  env.net.transmit({ fromIp: B, fromPort: 6081, toIp: A, toPort: 6081, data });
}

/** A vnsnap data packet with one more option, class 0x0102, of the given type (4 data bytes). */
function withOption(vni: number, type: number, frame: Buffer): Buffer {
  const ours = encodeData(vni, 0, 1, frame);
  const other = Buffer.from([0x01, 0x02, type, 1, 0, 0, 0, 0]);
  const pkt = Buffer.concat([ours.subarray(0, 8), other, ours.subarray(8)]);
  pkt[0] = 5; // 3 words of ours + 2 of the other option
  pkt[1] = (type & 0x80) !== 0 ? 0x40 : 0; // C bit when critical
  return pkt;
}

/** Snapshot k of both VMs the way the agents do it, then both channel states. */
async function snapshot(env: FakeEnv, k: number): Promise<[number, number, number[], number[]]> {
  await env.sw('a').cutPort('v1', k);
  await env.sw('b').cutPort('v2', k);
  env.settle();
  const [ca, cb] = await Promise.all([env.sw('a').channelState('blue', k, 5000), env.sw('b').channelState('blue', k, 5000)]);
  return [ca.lostFrames, cb.lostFrames, seqs(ca.ports.get('v1') ?? []), seqs(cb.ports.get('v2') ?? [])];
}

function elapsedMs(f: () => unknown): number {
  const t0 = process.hrtime.bigint();
  f();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

describe('tunnel hardening: critical Geneve options', () => {
  const frame = makeFrame({ dst: vmMac(1), src: vmMac(2), sender: 2, seq: 5, epoch: 0 });

  it('decodes a critical option it does not understand as unknownCritical, a non-critical one as data', () => {
    const crit = withOption(100, 0x85, frame);
    assert.deepEqual(decode(crit, 0, crit.length), { kind: 'unknownCritical', vni: 100 });
    const plain = withOption(100, 0x05, frame);
    assert.deepEqual(decode(plain, 0, plain.length), { kind: 'data', vni: 100, epoch: 0, generation: 1, payloadOffset: 28 });
    const marker = encodeMarker(100, 3, 1, 7); // vnsnap's own critical option
    assert.deepEqual(decode(marker, 0, marker.length), { kind: 'marker', vni: 100, epoch: 3, generation: 1, count: 7 });
    const markerPlus = Buffer.concat([marker.subarray(0, 8), Buffer.from([0x01, 0x02, 0x85, 0]), marker.subarray(8)]);
    markerPlus[0] = (marker[0] as number) + 1;
    assert.deepEqual(decode(markerPlus, 0, markerPlus.length), { kind: 'unknownCritical', vni: 100 });
  });

  it('drops and counts data packets with an unknown critical option; delivers the rest', () => {
    const env = twoHosts();
    forge(env, withOption(100, 0x85, frame));
    forge(env, withOption(100, 0x05, frame));
    env.net.deliverAll();
    const s = env.sw('a').stats();
    assert.equal(s.unknownCriticalOption, 1);
    assert.equal(s.malformed, 0);
    assert.deepEqual(seqs(env.port('v1').vm.received), [5]);
  });
});

describe('tunnel hardening: forged markers', () => {
  it('ignores 100,000 forged markers of as many epochs; stats and recordings answer at once; the next snapshot is exact', async () => {
    const env = twoHosts();
    for (let e = 0; e < 100_000; e++) forge(env, encodeMarker(100, e, 1, e * 1000));
    // And forged data frames stamped with far-future epochs.
    for (let i = 0; i < 1000; i++) forge(env, encodeData(100, 1000 + i, 1, makeFrame({ dst: vmMac(1), src: vmMac(2), sender: 2, seq: 90_000 + i, epoch: 0 })));
    env.net.deliverAll();
    const a = env.sw('a');
    const s = a.stats();
    // Epoch 0 is an old retransmission (acked, no state); 1 and 2 are in the window.
    assert.equal(s.markersReceived, 100_000);
    assert.equal(s.markersOutOfWindow, 100_000 - 1 - MARKER_EPOCHS_AHEAD);
    assert.equal(s.acksSent, 1 + MARKER_EPOCHS_AHEAD);
    assert.equal(s.markersInvalid, 0);
    assert.equal(s.markersOverCap, 0);
    assert.equal(s.dataEpochAhead, 1000);
    assert.deepEqual(a.recordingStatus('blue').map((r) => r.epoch), [1, 2]);
    assert.ok(a.recordingStatus('blue').length <= MAX_RECORDINGS_PER_VNE);
    const tStats = elapsedMs(() => a.stats());
    const tRec = elapsedMs(() => a.recordingStatus('blue'));
    assert.ok(tStats < 100, `stats took ${tStats} ms`);
    assert.ok(tRec < 100, `recordingStatus took ${tRec} ms`);
    env.tick(100);
    env.settle();
    // A real snapshot: the real marker replaces the forged one; nothing was lost.
    send(env, 'v1', 1, 2, 1);
    send(env, 'v2', 2, 1, 2);
    env.settle();
    assert.deepEqual(await snapshot(env, 1), [0, 0, [], []]);
    assert.deepEqual(await snapshot(env, 2), [0, 0, [], []]);
    assert.deepEqual(seqs(env.port('v1').vm.received), [2]);
  });

  it('a marker count of 2^40 is ignored as impossible, and the next snapshot reports 0 lost frames', async () => {
    const env = twoHosts();
    forge(env, encodeMarker(100, 1, 1, 2 ** 40));
    env.net.deliverAll();
    const a = env.sw('a');
    assert.equal(a.stats().markersInvalid, 1);
    assert.equal(env.net.inFlight.length, 0); // not acknowledged
    assert.deepEqual(a.recordingStatus('blue'), []);
    // The same before this switch's cut of 1, with the recording already started: still ignored.
    send(env, 'v1', 1, 2, 1);
    env.settle();
    await a.cutPort('v1', 1);
    forge(env, encodeMarker(100, 1, 1, MAX_MARKER_SHORTFALL + 100));
    env.net.deliverAll();
    assert.equal(a.stats().markersInvalid, 2);
    await env.sw('b').cutPort('v2', 1);
    env.settle();
    const [ca, cb] = await Promise.all([a.channelState('blue', 1, 5000), env.sw('b').channelState('blue', 1, 5000)]);
    assert.equal(ca.lostFrames, 0);
    assert.equal(cb.lostFrames, 0);
  });

  it('a legitimate marker that arrives before this switch\'s cut still ends the recording', async () => {
    const env = twoHosts();
    send(env, 'v2', 2, 1, 7);
    // b cuts first; its marker reaches a before a's cut.
    await env.sw('b').cutPort('v2', 1);
    env.settle();
    assert.equal(env.sw('a').stats().markersOutOfWindow, 0);
    await env.sw('a').cutPort('v1', 1);
    env.settle();
    const ca = await env.sw('a').channelState('blue', 1, 5000);
    assert.equal(ca.lostFrames, 0);
  });

  it('caps recordings per VNE: ended ones are forgotten first, and a marker finding none is ignored', async () => {
    const env = twoHosts();
    const a = env.sw('a');
    for (let k = 1; k <= MAX_RECORDINGS_PER_VNE + 8; k++) a.abort('blue', k);
    assert.equal(a.recordingStatus('blue').length, MAX_RECORDINGS_PER_VNE);
    // Recordings that still wait for b's markers (b is not delivered anything) cannot be forgotten.
    const base = MAX_RECORDINGS_PER_VNE + 8;
    for (let k = base + 1; k <= base + MAX_RECORDINGS_PER_VNE; k++) await a.cutPort('v1', k);
    env.net.inFlight.length = 0;
    assert.equal(a.recordingStatus('blue').length, MAX_RECORDINGS_PER_VNE);
    assert.ok(a.recordingStatus('blue').every((r) => !r.aborted));
    forge(env, encodeMarker(100, base + MAX_RECORDINGS_PER_VNE + 1, 1, 0));
    env.net.deliverAll();
    assert.equal(a.stats().markersOverCap, 1);
    assert.equal(env.net.inFlight.length, 0); // not acknowledged
    assert.equal(a.recordingStatus('blue').length, MAX_RECORDINGS_PER_VNE);
  });

  it('keeps at most MAX_EPOCHS_PER_PEER epochs per peer and exact counts below the newest', () => {
    const c = new EpochCounts();
    for (let e = 0; e < 1000; e++) c.inc(e, 2);
    assert.equal(c.epochs, MAX_EPOCHS_PER_PEER);
    assert.equal(c.below(1000), 2000);
    assert.equal(c.below(990), 1980);
  });
});

describe('tunnel hardening: the window follows ports attached at a restored epoch', () => {
  it('a marker one past a port attached at epoch 5 (VNE epoch still 0) starts the recording; its count is exact', async () => {
    const env = twoHosts();
    const a = env.sw('a');
    a.removePort('v1');
    const { port } = fakePortPair('v1r');
    a.attachPort('blue', port, { epoch: 5 }); // as a restore attaches a VM of snapshot 5
    env.ports.set('v1r', port);
    env.sw('b').setPortEpoch('v2', 5);
    assert.equal(a.stats().vnes['blue']?.epoch, 0);
    send(env, 'v1r', 1, 2, 1, 5);
    send(env, 'v2', 2, 1, 2, 5);
    env.settle();
    await env.sw('b').cutPort('v2', 6); // b's marker for 6 reaches a before a's cut
    env.settle();
    assert.equal(a.stats().markersOutOfWindow, 0);
    assert.equal(a.stats().dataEpochAhead, 0);
    assert.deepEqual(a.recordingStatus('blue').map((r) => [r.epoch, r.peers[0]?.marker]), [[6, 2]]);
    await a.cutPort('v1r', 6);
    env.settle();
    const [ca, cb] = await Promise.all([a.channelState('blue', 6, 5000), env.sw('b').channelState('blue', 6, 5000)]);
    assert.deepEqual([ca.lostFrames, cb.lostFrames], [0, 0]);
  });
});
