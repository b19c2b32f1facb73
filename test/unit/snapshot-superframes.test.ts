/**
 * Super-frames under the snapshot rules: one epoch per super-frame, recorded whole with its
 * virtio_net_hdr at a port with offloads (as its segments at a port without), injected whole
 * into a port with offloads and as segments into one without, carried whole through a tunnel
 * with GSO/GRO with marker counts per datagram; the per-port super-frame counters; and the
 * channel-state file that carries the header (format 2), reads format 1 and refuses newer ones.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AgentMetrics } from '../../agent/metrics';
import { decodeChannel, encodeChannel, plainFrame, type ChannelFrame } from '../../proto/artefacts/channel-state';
import { isVnsnapError } from '../../proto/core/errors';
import { segmentFrame } from '../../switch/offload';
import { fakePortPair, type FakePort } from '../../switch/port/porttest/fake-port';
import { Switch } from '../../switch/switch';
import { FakeEnv } from '../support/fake-env';
import { makeFrame, parseFrame, vmMac } from '../support/frames';
import { superFrame } from '../support/tcp-frames';

const FIXTURE = path.resolve(__dirname, '../../../test/unit/fixtures/channel-format1.chan');

/** One switch, VNE blue without peers, ports v1 and v2 with offloads, v3 without. */
function oneSwitch(): { sw: Switch; ports: Record<string, FakePort> } {
  const sw = new Switch({ id: 'a', now: () => 1_000_000 });
  sw.configureVne({ name: 'blue', vni: 100, peers: [] });
  const ports: Record<string, FakePort> = {};
  for (const [name, offload] of [['v1', true], ['v2', true], ['v3', false]] as const) {
    const { port } = fakePortPair(name, { batchSize: 4, offload });
    sw.attachPort('blue', port);
    ports[name] = port;
  }
  return { sw, ports };
}

describe('snapshot rules with super-frames', () => {
  it('records a super-frame whole with its header at a port with offloads, as its segments at a port without', async () => {
    const { sw, ports } = oneSwitch();
    const sf = superFrame({ payload: 8000 }); // a fake port's slot takes 8 KiB frames
    const segs = segmentFrame(sf.frame, sf.meta, 0, 0) as Buffer[];
    assert.equal(segs.length, 6);
    // v2 and v3 pass the cut to 1 while v1 (paused last) is still at 0; v1's super-frame floods
    // to both (no MAC learned yet): an epoch-0 frame reaching epoch-1 ports is delivered and recorded.
    await sw.cutPorts(['v2', 'v3'], 1, async (pass) => {
      await pass();
      ports['v1']?.vm.send(sf.frame, sf.meta);
      ports['v1']?.vm.pumpAll();
    });
    const cs = await sw.channelState('blue', 1, 1000);
    assert.deepEqual(cs.ports.get('v2'), [{ frame: sf.frame, vnetHdr: sf.meta }]);
    assert.deepEqual(cs.ports.get('v3'), segs.map(plainFrame));
    assert.deepEqual(cs.ports.get('v1'), []);
    assert.deepEqual(ports['v2']?.vm.received, [sf.frame]);
    assert.deepEqual(ports['v2']?.vm.receivedMeta, [sf.meta]);
    assert.deepEqual(ports['v3']?.vm.received, segs);
    const st = sw.stats().ports;
    assert.deepEqual(
      ['v1', 'v2', 'v3'].map((n) => [st[n]?.superFramesIn, st[n]?.superFramesOut, st[n]?.rxFrames, st[n]?.txFrames, st[n]?.recorded]),
      [
        [1, 0, 1, 0, 0],
        [0, 1, 0, 1, 1],
        [0, 0, 0, 6, 6],
      ],
    );
    const m = new AgentMetrics();
    m.setStatsSource(() => sw.stats());
    const text = await m.registry.metrics();
    for (const line of ['vnsnap_switch_port_super_frames_in{port="v1"} 1', 'vnsnap_switch_port_super_frames_out{port="v2"} 1', 'vnsnap_switch_port_super_frames_out{port="v3"} 0']) {
      assert.ok(text.includes(line), `${line} in the metrics`);
    }
  });

  it('holds a future super-frame whole and releases it whole at the cut, not recorded', async () => {
    const { sw, ports } = oneSwitch();
    const sf = superFrame({ payload: 5000 });
    await sw.cutPorts(['v1'], 1, async (pass) => {
      await pass();
      ports['v1']?.vm.send(sf.frame, sf.meta); // epoch 1: v2 and v3 are still at 0 and gated
      ports['v1']?.vm.pumpAll();
    });
    // cutPorts passes v2 and v3 without a pause afterwards: the frame was held, then released.
    assert.deepEqual(ports['v2']?.vm.received, [sf.frame]);
    assert.deepEqual(ports['v2']?.vm.receivedMeta, [sf.meta]);
    assert.equal(ports['v3']?.vm.received.length, 4);
    const cs = await sw.channelState('blue', 1, 1000);
    assert.deepEqual([...cs.ports.values()].flat(), []);
    assert.deepEqual([sw.stats().ports['v2']?.held, sw.stats().ports['v3']?.held], [1, 4]);
  });

  it('injects a recorded super-frame whole into a port with offloads and as its segments into one without', () => {
    const { sw, ports } = oneSwitch();
    const sf = superFrame({ payload: 4000, v6: true });
    const plain = makeFrame({ dst: vmMac(2), src: vmMac(1), sender: 1, seq: 5, epoch: 0 });
    const recorded: ChannelFrame[] = [plainFrame(plain), { frame: sf.frame, vnetHdr: sf.meta }];
    assert.equal(sw.openGate('v2', recorded), 2);
    assert.deepEqual(ports['v2']?.vm.received, [plain, sf.frame]);
    assert.deepEqual(ports['v2']?.vm.receivedMeta, [Buffer.alloc(10), sf.meta]);
    const segs = segmentFrame(sf.frame, sf.meta, 0, 0) as Buffer[];
    assert.equal(segs.length, 3);
    assert.equal(sw.openGate('v3', recorded), 4);
    assert.deepEqual(ports['v3']?.vm.received, [plain, ...segs]);
    const st = sw.stats().ports;
    assert.deepEqual([st['v2']?.injected, st['v2']?.superFramesOut, st['v3']?.injected, st['v3']?.superFramesOut], [2, 1, 4, 0]);
  });

  it('carries a super-frame whole through a tunnel with GSO/GRO and records it whole; the marker counts its datagrams', async () => {
    const env = new FakeEnv({ switches: { a: ['v1'], b: ['v2'] }, offload: ['v1', 'v2'], tunnelOffload: true });
    const sf = superFrame({ payload: 8000 });
    const dgrams = Math.ceil(8000 / Math.min(1448, env.sw('a').innerFrameMax - sf.hdrs));
    await env.sw('b').cutPort('v2', 1);
    env.port('v1').vm.send(sf.frame, sf.meta); // epoch 0, sent before v1's cut: in flight for 1
    env.port('v1').vm.pumpAll();
    await env.sw('a').cutPort('v1', 1);
    env.settle();
    const [ca, cb] = await Promise.all([env.sw('a').channelState('blue', 1, 1000), env.sw('b').channelState('blue', 1, 1000)]);
    assert.deepEqual(cb.ports.get('v2'), [{ frame: sf.frame, vnetHdr: sf.meta }]);
    assert.deepEqual(ca.ports.get('v1'), []);
    assert.deepEqual([ca.lostFrames, cb.lostFrames], [0, 0]);
    assert.deepEqual(env.port('v2').vm.received, [sf.frame]);
    const [sa, sb] = [env.sw('a').stats(), env.sw('b').stats()];
    assert.deepEqual([sa.tunnelTx - sa.markersSent - sa.acksSent, sb.tunnelRx - sb.markersReceived - sb.acksReceived], [dgrams, dgrams]);
    assert.deepEqual([sa.ports['v1']?.superFramesIn, sb.ports['v2']?.superFramesOut, sb.ports['v2']?.recorded], [1, 1, 1]);
    const markerCount = env.sw('a').recordingStatus('blue');
    assert.deepEqual(markerCount, []); // handed over and acknowledged
  });
});

describe('channel-state file with super-frames', () => {
  it('format 2 keeps every frame and the header of each super-frame', () => {
    const sf = superFrame({ payload: 65_000 });
    const frames: ChannelFrame[] = [plainFrame(Buffer.from('first frame')), { frame: sf.frame, vnetHdr: sf.meta }, plainFrame(Buffer.alloc(60, 7))];
    const b = encodeChannel(frames);
    assert.equal(b.subarray(0, 8).toString(), 'VNSCHAN2');
    assert.equal(b.length, 12 + 3 * (4 + 10) + 11 + sf.frame.length + 60);
    assert.deepEqual(decodeChannel(b), frames);
  });

  it('reads format 1 (snapshots written before): plain frames without headers', () => {
    const frames = decodeChannel(fs.readFileSync(FIXTURE), 'old.chan');
    assert.deepEqual(
      frames.map((f) => [parseFrame(f.frame)?.seq, f.frame.length, f.vnetHdr]),
      [
        [7, 60, null],
        [8, 60, null],
      ],
    );
  });

  it('refuses a newer format in one line, and garbage as data loss', () => {
    const newer = encodeChannel([plainFrame(Buffer.alloc(60))]);
    newer.write('3', 7);
    assert.throws(
      () => decodeChannel(newer, 'snapshots/s1/a.0.chan'),
      (e) => isVnsnapError(e, 'ERR_UNSUPPORTED_VERSION') && e.message === 'snapshots/s1/a.0.chan has channel-state format 3, newer than this vnsnap reads (1 to 2): upgrade vnsnap to restore it',
    );
    assert.throws(() => decodeChannel(Buffer.from('VNSCHANX\0\0\0\0')), (e) => isVnsnapError(e, 'ERR_DATA_LOSS'));
    const b = encodeChannel([plainFrame(Buffer.alloc(60))]);
    assert.throws(() => decodeChannel(b.subarray(0, 20)), (e) => isVnsnapError(e, 'ERR_DATA_LOSS'));
  });
});
