/**
 * The rules of the in-kernel data path (switch/bpf/vnsnap-dp.bpf.c), run in the kernel on test
 * frames with BPF_PROG_TEST_RUN through the addon, against maps written by DataPathMaps: which
 * frames the kernel carries (to a peer, to a local port, to the receiving TAP), which it punts
 * to the switch and with what header, and the per-(VNI, peer, epoch) counters the markers need.
 * The object is the one `npm install` built and the agent's loader pins (under a test prefix).
 */
import { strict as assert } from 'node:assert';
import { attachDataPath, loadDataPath } from '../../agent/bpf-dp/loader';
import { isVnsnapError } from '../../proto/core/errors';
import { decodePunt, PUNT_HEADER_LEN } from '../../switch/bpf-dp/layout';
import type { DataPathMaps } from '../../switch/bpf-dp/maps';
import { classify, Verdict } from '../../switch/snapshot/epoch-rules';
import { openDpHarness, skbCtx as ctx, TC_ACT_OK, TC_ACT_REDIRECT, type DpHarness } from '../support/bpf-dp-harness';
import { makeFrame, rng, vmMac } from '../support/frames';
import { superFrame } from '../support/tcp-frames';

const PREFIX = `vnut-bpfdp-${process.pid}`;
const VNI = 4242;
const TAP_A = 101; // ifindexes as the maps name them (the test runs never reach a device)
const TAP_B = 102;
const VXLAN = 201;
const PUNT = 202;
const PEER = '10.9.0.2';
const mac = (i: number): string => [0x02, 0, 0, 0, 0, i].map((x) => x.toString(16).padStart(2, '0')).join(':');

describe('in-kernel data path rules (BPF_PROG_TEST_RUN)', function () {
  this.timeout(60_000);
  let h: DpHarness;
  let maps: DataPathMaps;

  before(async () => {
    h = await openDpHarness(PREFIX);
    maps = h.maps;
    maps.setDevices(0, PUNT);
    maps.setVniDevice(VNI, VXLAN);
  });
  after(async () => {
    await h?.close();
  });
  beforeEach(() => {
    maps.setPort(TAP_A, { vni: VNI, epoch: 7, puntIfindex: 301, fast: true, generation: 0 });
    maps.setPort(TAP_B, { vni: VNI, epoch: 7, puntIfindex: 302, fast: true, generation: 0 });
    maps.setFdb(VNI, mac(1), { ifindex: TAP_A });
    maps.setFdb(VNI, mac(2), { ifindex: TAP_B });
    maps.setFdb(VNI, mac(9), { peer: PEER });
  });

  const frame = (dst: number): Buffer => makeFrame({ dst: vmMac(dst), src: vmMac(1), sender: 1, seq: 1, epoch: 0 }, 200);
  const run = (prog: 'vn_tx' | 'vn_rx_test', data: Buffer, c: Buffer): { retval: number; out: Buffer } => h.run(prog, data, c);
  const delta = (f: () => void): Record<string, number> => h.delta(f);

  it("from a TAP: a peer's MAC is sent into the tunnel, counted by the datagrams a super-frame becomes", () => {
    const sent = maps.count(VNI, PEER, 7, 'sent');
    assert.deepEqual(delta(() => assert.equal(run('vn_tx', frame(9), ctx({ ingressIfindex: TAP_A })).retval, TC_ACT_REDIRECT)), { txRemote: 1 });
    assert.equal(maps.count(VNI, PEER, 7, 'sent'), sent + 1);
    assert.deepEqual(delta(() => assert.equal(run('vn_tx', frame(9), ctx({ ingressIfindex: TAP_A, gsoSegs: 45, gsoSize: 1448 })).retval, TC_ACT_REDIRECT)), { txRemote: 1 });
    assert.equal(maps.count(VNI, PEER, 7, 'sent'), sent + 46);
    // A super-frame from QEMU's TAP has gso_size but no gso_segs yet: its segments are computed
    // (small ones: BPF_PROG_TEST_RUN takes at most a page).
    const sf = superFrame({ payload: 2 * 1348 + 5, mss: 1348 }).frame;
    sf[5] = 9;
    run('vn_tx', sf, ctx({ ingressIfindex: TAP_A, gsoSize: 1348 }));
    assert.equal(maps.count(VNI, PEER, 7, 'sent'), sent + 46 + 3);
    const v6 = superFrame({ v6: true, payload: 2 * 1328, mss: 1328 }).frame;
    v6[5] = 9;
    run('vn_tx', v6, ctx({ ingressIfindex: TAP_A, gsoSize: 1328 }));
    assert.equal(maps.count(VNI, PEER, 7, 'sent'), sent + 46 + 3 + 2);
    assert.equal(maps.count(VNI, PEER, 8, 'sent'), 0);
    assert.equal(maps.count(VNI, PEER, 7, 'received'), 0);
  });

  it('from a TAP: a local port of the same epoch is reached in the kernel; of another epoch, unknown or group MACs are punted', () => {
    assert.deepEqual(delta(() => assert.equal(run('vn_tx', frame(2), ctx({ ingressIfindex: TAP_A })).retval, TC_ACT_REDIRECT)), { txLocal: 1 });
    maps.setEpoch(TAP_B, 8);
    assert.deepEqual(delta(() => run('vn_tx', frame(2), ctx({ ingressIfindex: TAP_A }))), { txPunt: 1 });
    assert.deepEqual(delta(() => run('vn_tx', frame(5), ctx({ ingressIfindex: TAP_A }))), { txPunt: 1 }, 'FDB miss');
    const bcast = frame(9);
    bcast.fill(0xff, 0, 6);
    assert.deepEqual(delta(() => run('vn_tx', bcast, ctx({ ingressIfindex: TAP_A }))), { txPunt: 1 }, 'broadcast');
    maps.setPort(TAP_A, { vni: VNI, epoch: 7, puntIfindex: 0, fast: true, generation: 0 });
    assert.deepEqual(delta(() => assert.equal(run('vn_tx', bcast, ctx({ ingressIfindex: TAP_A })).retval, TC_ACT_OK)), { txPunt: 1 }, 'no punt device: left to the stack');
    maps.setPort(TAP_A, { vni: VNI, epoch: 7, puntIfindex: 301, fast: false, generation: 0 });
    assert.deepEqual(delta(() => run('vn_tx', frame(9), ctx({ ingressIfindex: TAP_A }))), { txPunt: 1 }, 'fast path off');
  });

  it("from a TAP: a peer's MAC of a VNI without its VXLAN device is punted, not counted", () => {
    maps.removeVniDevice(VNI);
    try {
      const sent = maps.count(VNI, PEER, 7, 'sent');
      assert.deepEqual(delta(() => run('vn_tx', frame(9), ctx({ ingressIfindex: TAP_A }))), { txPunt: 1 });
      assert.equal(maps.count(VNI, PEER, 7, 'sent'), sent);
    } finally {
      maps.setVniDevice(VNI, VXLAN);
    }
  });

  it('from a TAP that is no port of ours: left alone (TC_ACT_OK), nothing counted', () => {
    assert.deepEqual(delta(() => assert.equal(run('vn_tx', frame(9), ctx({ ingressIfindex: 999 })).retval, TC_ACT_OK)), {});
  });

  it("from the tunnel: the port's colour is delivered in the kernel and counted per (VNI, peer, epoch)", () => {
    const got = maps.count(VNI, PEER, 7, 'received');
    const f = frame(2);
    const r = run('vn_rx_test', f, ctx({ cb: [VNI, 7, 0x0a090002], gsoSegs: 3, gsoSize: 1448 }));
    assert.equal(r.retval, TC_ACT_REDIRECT);
    assert.deepEqual(r.out, f, 'delivered unchanged');
    assert.equal(maps.count(VNI, PEER, 7, 'received'), got + 3);
  });

  it('two VNIs between the same two hosts: the kernel counts each VNI\'s datagrams apart, both ways (exact per-VNI counts for two VNEs\' markers)', () => {
    const VNI2 = 4343;
    const TAP_C = 103;
    const TAP_D = 104;
    maps.setPort(TAP_C, { vni: VNI2, epoch: 7, puntIfindex: 303, fast: true, generation: 0 });
    maps.setPort(TAP_D, { vni: VNI2, epoch: 7, puntIfindex: 304, fast: true, generation: 0 });
    maps.setFdb(VNI2, mac(9), { peer: PEER }); // the same peer host (and MAC) in the other VNE
    maps.setFdb(VNI2, mac(4), { ifindex: TAP_D });
    maps.setVniDevice(VNI2, VXLAN + 1);
    const c0 = [maps.count(VNI, PEER, 7, 'sent'), maps.count(VNI2, PEER, 7, 'sent'), maps.count(VNI, PEER, 7, 'received'), maps.count(VNI2, PEER, 7, 'received')];
    // Sent: 2 frames + a 10-segment super-frame of VNI's, one frame of VNI2's.
    for (const [tap, segs] of [[TAP_A, 0], [TAP_A, 0], [TAP_A, 10], [TAP_C, 0]] as const) assert.equal(run('vn_tx', frame(9), ctx({ ingressIfindex: tap, gsoSegs: segs, gsoSize: segs ? 1448 : 0 })).retval, TC_ACT_REDIRECT);
    // Received from the peer: a 4-datagram GRO frame of VNI's (to TAP_B), 2 + 1 datagrams of VNI2's (to TAP_D).
    for (const [vni, dst, segs] of [[VNI, 2, 4], [VNI2, 4, 2], [VNI2, 4, 0]] as const) assert.equal(run('vn_rx_test', frame(dst), ctx({ cb: [vni, 7, 0x0a090002], gsoSegs: segs, gsoSize: segs ? 1448 : 0 })).retval, TC_ACT_REDIRECT);
    const c1 = [maps.count(VNI, PEER, 7, 'sent'), maps.count(VNI2, PEER, 7, 'sent'), maps.count(VNI, PEER, 7, 'received'), maps.count(VNI2, PEER, 7, 'received')];
    assert.deepEqual(c1.map((n, i) => n - (c0[i] as number)), [12, 1, 4, 3]);
    assert.equal(maps.removeCount(VNI2, PEER, 7, 'sent'), true);
    assert.deepEqual([maps.count(VNI2, PEER, 7, 'sent'), maps.count(VNI, PEER, 7, 'sent'), maps.removeCount(VNI2, PEER, 7, 'sent')], [0, c1[0], false], 'one VNI\'s counter removed, the other\'s kept');
    maps.removePort(TAP_C);
    maps.removePort(TAP_D);
  });

  it("the VNE generation (mod 4) rides in GBP's D and A bits: a frame of another generation is punted with it in the header, a local port of another generation is not reached in the kernel", () => {
    const D = 1 << 22; // generation bit 0
    const A = 1 << 19; // generation bit 1
    maps.setPort(TAP_B, { vni: VNI, epoch: 7, puntIfindex: 302, fast: true, generation: 6 }); // 6 mod 4 = 2: A
    assert.equal(maps.port(TAP_B)?.generation, 2);
    const got = maps.count(VNI, PEER, 7, 'received');
    const f = frame(2);
    const ok = run('vn_rx_test', f, ctx({ cb: [VNI, 7 | A, 0x0a090002] }));
    assert.deepEqual([ok.retval, ok.out.equals(f), maps.count(VNI, PEER, 7, 'received') - got], [TC_ACT_REDIRECT, true, 1]);
    for (const [gbp, generation] of [[7, 0], [7 | D, 1], [7 | D | A, 3]] as const) {
      const r = run('vn_rx_test', f, ctx({ cb: [VNI, gbp, 0x0a090002] }));
      assert.equal(r.retval, TC_ACT_REDIRECT);
      assert.deepEqual(decodePunt(r.out), { vni: VNI, colour: 7, reason: 'unknown', generation, peer: PEER }, `generation ${generation}`);
    }
    assert.equal(maps.count(VNI, PEER, 7, 'received') - got, 1, 'frames of another generation are not counted in the kernel');
    assert.deepEqual(delta(() => run('vn_tx', frame(2), ctx({ ingressIfindex: TAP_A }))), { txPunt: 1 }, 'TAP_A is at generation 0, TAP_B at 2');
    maps.setPort(TAP_A, { vni: VNI, epoch: 7, puntIfindex: 301, fast: true, generation: 2 });
    assert.deepEqual(delta(() => run('vn_tx', frame(2), ctx({ ingressIfindex: TAP_A }))), { txLocal: 1 });
  });

  it('from the tunnel: late, early and unknown frames go to the switch behind a header with VNI, colour, reason and peer', () => {
    maps.setEpoch(TAP_B, 8);
    const f = frame(2);
    const cases: [number, number, string][] = [
      [7, 2, 'late'], // sent before the sender's cut, received after the receiver's
      [9, 2, 'early'], // the sender cut first: held until the port's cut
      [8, 5, 'unknown'], // no such MAC here
      [0xffff, 2, 'late'], // colours wrap at 16 bits: 0xffff is before epoch 0x10000
    ];
    for (const [colour, dst, reason] of cases) {
      if (colour === 0xffff) maps.setEpoch(TAP_B, 0x10000);
      const g = frame(dst);
      const r = run('vn_rx_test', g, ctx({ cb: [VNI, colour, 0x0a090002] }));
      assert.equal(r.retval, TC_ACT_REDIRECT, reason);
      assert.deepEqual(decodePunt(r.out), { vni: VNI, colour, reason, generation: 0, peer: PEER }, reason);
      assert.deepEqual(r.out.subarray(PUNT_HEADER_LEN), g, `${reason}: the frame follows the header whole`);
    }
    assert.equal(maps.count(VNI, PEER, 8, 'received'), 0, 'punted frames are the switch\'s to count');
    assert.deepEqual(decodePunt(f), null);
  });

  it('randomized: the kernel agrees with the switch\'s frame rules (classify) for epochs a neighbour can have, across the 16-bit wrap', () => {
    const seed = 1313;
    const r = rng(seed);
    const seen = new Map<string, number>();
    for (let i = 0; i < 400; i++) {
      // Port epochs anywhere, often next to a multiple of 65536 (where the colour wraps).
      const port = r() < 0.5 ? Math.floor(r() * 2 ** 31) : (Math.floor(r() * 64) + 1) * 0x10000 + Math.floor(r() * 3) - 1;
      const frameEpoch = port + Math.floor(r() * 3) - 1; // neighbours differ by at most one
      const gated = r() < 0.2; // a cut in progress: the agent turns the port's fast path off
      maps.setPort(TAP_B, { vni: VNI, epoch: port, puntIfindex: 302, fast: !gated, generation: 0 });
      const f = frame(2);
      const res = run('vn_rx_test', f, ctx({ cb: [VNI, frameEpoch & 0xffff, 0x0a090002] }));
      const punt = decodePunt(res.out);
      const kernel = punt === null ? 'deliver' : punt.reason;
      const want = classify(frameEpoch, port, gated);
      const expected = gated ? 'unknown' : want === Verdict.Deliver ? 'deliver' : want === Verdict.DeliverAndRecord ? 'late' : 'early';
      assert.equal(kernel, expected, `seed ${seed}, step ${i}: port epoch ${port}, frame epoch ${frameEpoch}, gated ${gated}`);
      if (punt === null) assert.deepEqual(res.out, f);
      seen.set(expected, (seen.get(expected) ?? 0) + 1);
    }
    assert.deepEqual([...seen.keys()].sort(), ['deliver', 'early', 'late', 'unknown'], 'every outcome was drawn');
  });

  it('maps: epochs and FDB entries read back; removals say whether there was one; a wrong prefix is refused', async () => {
    maps.setEpoch(TAP_A, 12);
    assert.deepEqual(maps.port(TAP_A), { vni: VNI, epoch: 12, puntIfindex: 301, fast: true, generation: 0 });
    assert.equal(maps.removeFdb(VNI, mac(9)), true);
    assert.equal(maps.removeFdb(VNI, mac(9)), false);
    assert.equal(maps.removePort(TAP_B), true);
    assert.equal(maps.port(TAP_B), undefined);
    assert.throws(() => maps.setEpoch(TAP_B, 1), (e) => isVnsnapError(e, 'ERR_PORT_UNKNOWN'));
    await assert.rejects(loadDataPath('Bad/Prefix'), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'));
    await assert.rejects(loadDataPath(`${PREFIX}-x`, '/nonexistent/vnsnap-dp.bpf.o'), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'the in-kernel data path (nic tap-bpf) cannot run here: /nonexistent/vnsnap-dp.bpf.o was not built (install clang and libbpf-dev, then run npm install)');
    await assert.rejects(attachDataPath(h.dp, 'vnut-nodev0', 'vn_tx'), (e) => isVnsnapError(e, 'ERR_DRIVER'));
  });
});
