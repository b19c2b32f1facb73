/**
 * The snapshot rules of the in-kernel data path against the switch's model, randomized: seeded
 * sequences (twenty seeds, 500 steps each) of cuts and frames of two VNIs (two VNEs sharing two peer hosts), run in the kernel
 * (vn_tx and vn_rx_test through BPF_PROG_TEST_RUN, on maps written as the switch writes them),
 * each step checked exactly against a model built on switch/snapshot/epoch-rules.ts classify().
 *
 * The model: per VNE a snapshot target T; its members (two local ports, two peer hosts' senders)
 * pass from T-1 to T in any order, a local port in two steps (gate: fast flag off, as
 * DataPathEpochs does while the VM pauses; advance: epoch T, flag on), and the next snapshot
 * starts only when all have passed — so neighbours' epochs differ by at most one, as in a real
 * VNE. Epochs start anywhere, often just below a multiple of 65536, so the 16-bit colour wraps
 * inside runs. Expected per frame:
 *   from a peer (vn_rx): a local port of the frame's VNI, not gated: classify(frame epoch, port
 *     epoch) Deliver → carried to the TAP unchanged and counted (VNI, peer, port epoch, received)
 *     by its datagrams; DeliverAndRecord → punted "late"; Hold → punted "early". Gated (classify
 *     holds everything) or no port of that VNI and MAC (the other VNE's MAC, an unknown one) →
 *     punted "unknown" (the switch's gate and FDB decide). A punt carries VNI, colour, reason
 *     and peer exactly, the frame whole behind it.
 *   from a local port (vn_tx): gated or a group destination → punted to its port; a peer's MAC →
 *     into the tunnel, counted (VNI, peer, port epoch, sent) by its datagrams; a local port →
 *     carried only when classify(source epoch, destination epoch, destination gated) is Deliver,
 *     otherwise punted (the switch records or holds it).
 * Every step's program counters (vn_stats) change by exactly the one expected; the per-(VNI,
 * peer, epoch, direction) counters equal the model's, for every epoch each VNE had (and one
 * either side), every 50 steps and at the end.
 */
import { strict as assert } from 'node:assert';
import { decodePunt, ipv4ToNum, PUNT_HEADER_LEN, type PuntReason } from '../../switch/bpf-dp/layout';
import { classify, Verdict } from '../../switch/snapshot/epoch-rules';
import { openDpHarness, skbCtx, TC_ACT_REDIRECT, type DpHarness } from '../support/bpf-dp-harness';
import { makeFrame, rng, vmMac } from '../support/frames';
import { writeMac } from '../../switch/bridge/mac';

const PREFIX = `vnut-bpfsnap-${process.pid}`;
const PEERS = ['10.9.1.1', '10.9.1.2'];
/** Both VNEs' peers have the same MACs (a MAC is unique only within a VNE). */
const peerMac = (p: number): number => vmMac(0x21 + p);
const STEPS = 500;
/** Twenty seeds; a failure names its seed and step. */
const SEEDS = Array.from({ length: 20 }, (_, i) => 1313 + 7919 * i);
/** A MAC no port of either VNE has. */
const NOBODY = vmMac(0xfff0);

interface LocalPort {
  ifindex: number;
  mac: number;
  epoch: number;
  gated: boolean;
}

interface VneModel {
  vni: number;
  target: number;
  locals: LocalPort[];
  /** The peer hosts' senders' epochs. */
  remote: number[];
}

const macStr = (m: number): string => {
  const b = Buffer.alloc(6);
  writeMac(b, 0, m);
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
};

describe('in-kernel data path: randomized snapshot rules against the switch\'s model (two VNIs, cuts, BPF_PROG_TEST_RUN)', function () {
  this.timeout(120_000);
  let h: DpHarness;

  before(async () => {
    h = await openDpHarness(PREFIX);
    h.maps.setDevices(231, 232);
  });
  after(async () => {
    await h?.close();
  });
  /** One program run and the program counters it changed. */
  const runCounted = (prog: 'vn_tx' | 'vn_rx_test', f: Buffer, ctx: Buffer): { res: { retval: number; out: Buffer }; d: Record<string, number> } => {
    let res: { retval: number; out: Buffer } | undefined;
    const d = h.delta(() => {
      res = h.run(prog, f, ctx);
    });
    return { res: res as { retval: number; out: Buffer }, d };
  };

  for (const [si, seed] of SEEDS.entries()) {
    it(`seed ${seed}: ${STEPS} steps, every verdict, punt header, program counter and per-VNI count exact`, () => {
      const r = rng(seed);
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
      const maps = h.maps;
      // Distinct VNIs, ifindexes and MACs per seed: the maps outlive the steps of one seed.
      const vnes: VneModel[] = [0, 1].map((v) => {
        const base = r() < 0.6 ? (Math.floor(r() * 64) + 1) * 0x10000 - 3 + Math.floor(r() * 3) : Math.floor(r() * 2 ** 31);
        const locals = [0, 1].map((i) => ({ ifindex: 400 + si * 10 + v * 2 + i, mac: vmMac(0x40 + si * 10 + v * 2 + i), epoch: base, gated: false }));
        return { vni: 7100 + si * 10 + v, target: base, locals, remote: [base, base] };
      });
      const starts = vnes.map((v) => v.target);
      const write = (vi: number, p: LocalPort): void => maps.setPort(p.ifindex, { vni: (vnes[vi] as VneModel).vni, epoch: p.epoch, puntIfindex: p.ifindex + 1000, fast: !p.gated, generation: 0 });
      vnes.forEach((v, vi) => {
        maps.setVniDevice(v.vni, 231); // the VNI's VXLAN device: vn_tx sends to peers through it
        for (const p of v.locals) {
          write(vi, p);
          maps.setFdb(v.vni, macStr(p.mac), { ifindex: p.ifindex });
        }
        PEERS.forEach((peer, pi) => maps.setFdb(v.vni, macStr(peerMac(pi)), { peer }));
      });
      const counts = new Map<string, number>();
      const add = (vni: number, peer: string, epoch: number, dir: 'sent' | 'received', n: number): void => {
        const k = `${vni}/${peer}/${epoch}/${dir}`;
        counts.set(k, (counts.get(k) ?? 0) + n);
      };
      const checkCounts = (step: number): void => {
        for (const [i, v] of vnes.entries()) {
          for (let e = (starts[i] as number) - 1; e <= v.target + 1; e++) {
            for (const peer of PEERS) {
              for (const dir of ['sent', 'received'] as const) assert.equal(maps.count(v.vni, peer, e, dir), counts.get(`${v.vni}/${peer}/${e}/${dir}`) ?? 0, `seed ${seed}, step ${step}: count (${v.vni}, ${peer}, ${e}, ${dir})`);
            }
          }
        }
      };
      let seq = 0;

      for (let step = 0; step < STEPS; step++) {
        const at = `seed ${seed}, step ${step}`;
        const vi = Math.floor(r() * 2);
        const v = vnes[vi] as VneModel;
        const op = r();
        const segs = r() < 0.3 ? 2 + Math.floor(r() * 30) : 0;
        const datagrams = Math.max(1, segs);
        const c = (o: { ingressIfindex?: number; cb?: number[] }): Buffer => skbCtx({ ...o, gsoSegs: segs, gsoSize: segs ? 1448 : 0 });

        if (op < 0.25) {
          // A cut step: the next member to pass T, or the next snapshot.
          const lagging: (LocalPort | number)[] = [...v.locals.filter((p) => p.epoch < v.target), ...v.remote.flatMap((e, i) => (e < v.target ? [i] : []))];
          if (lagging.length === 0) {
            v.target++;
            continue;
          }
          const m = pick(lagging);
          if (typeof m === 'number') v.remote[m] = v.target;
          else {
            if (m.gated) {
              m.epoch = v.target;
              m.gated = false;
            } else m.gated = true;
            write(vi, m);
          }
          seen.add(typeof m === 'number' ? 'cut: peer' : m.gated ? 'cut: gate' : 'cut: advance');
          continue;
        }

        if (op < 0.6) {
          // A frame from a peer host, to a local port of its VNE (or the other VNE's, or nobody's).
          const pi = Math.floor(r() * 2);
          const peer = PEERS[pi] as string;
          const frameEpoch = v.remote[pi] as number;
          const which = r();
          const other = vnes[1 - vi] as VneModel;
          const dst = which < 0.85 ? pick(v.locals) : which < 0.95 ? pick(other.locals) : undefined;
          const mine = dst !== undefined && v.locals.includes(dst);
          const f = makeFrame({ dst: dst?.mac ?? NOBODY, src: peerMac(pi), sender: pi, seq: ++seq, epoch: frameEpoch & 0xffff }, 120);
          let want: 'deliver' | PuntReason;
          if (!mine || dst.gated) want = 'unknown';
          else {
            const verdict = classify(frameEpoch, dst.epoch, false);
            want = verdict === Verdict.Deliver ? 'deliver' : verdict === Verdict.DeliverAndRecord ? 'late' : 'early';
          }
          if (mine && dst.gated) assert.equal(classify(frameEpoch, dst.epoch, true), Verdict.Hold, 'the model: a gated port holds everything');
          const { res, d } = runCounted('vn_rx_test', f, c({ cb: [v.vni, frameEpoch & 0xffff, ipv4ToNum(peer)] }));
          const what = `${at}: from ${peer} VNI ${v.vni} epoch ${frameEpoch} to ${dst ? `${mine ? '' : 'the other VNE\'s '}port epoch ${dst.epoch}${dst.gated ? ' (gated)' : ''}` : 'an unknown MAC'}`;
          assert.equal(res.retval, TC_ACT_REDIRECT, what);
          if (want === 'deliver') {
            assert.deepEqual(res.out, f, `${what}: delivered unchanged`);
            assert.deepEqual(d, { rxFast: 1 }, what);
            add(v.vni, peer, (dst as LocalPort).epoch, 'received', datagrams);
          } else {
            assert.deepEqual(decodePunt(res.out), { vni: v.vni, colour: frameEpoch & 0xffff, reason: want, generation: 0, peer }, what);
            assert.deepEqual(res.out.subarray(PUNT_HEADER_LEN), f, `${what}: the frame whole behind the header`);
            assert.deepEqual(d, { rxPunt: 1 }, what);
          }
          seen.add(`rx: ${want}${want === 'unknown' ? (mine ? ' (gated)' : ' (no port of the VNI)') : ''}`);
        } else {
          // A frame from a local port: to a peer's MAC, to the other local port, or broadcast.
          const src = pick(v.locals);
          const which = r();
          const pi = Math.floor(r() * 2);
          const dst: { peer: number } | { local: LocalPort } | { broadcast: true } = which < 0.55 ? { peer: pi } : which < 0.9 ? { local: v.locals.find((p) => p !== src) as LocalPort } : { broadcast: true };
          const f = makeFrame({ dst: 'peer' in dst ? peerMac(pi) : 'local' in dst ? dst.local.mac : 0xffff_ffff_ffff, src: src.mac, sender: src.ifindex, seq: ++seq, epoch: src.epoch & 0xffff }, 120);
          let want: 'txRemote' | 'txLocal' | 'txPunt';
          if (src.gated || 'broadcast' in dst) want = 'txPunt';
          else if ('peer' in dst) want = 'txRemote';
          else want = !dst.local.gated && classify(src.epoch, dst.local.epoch, dst.local.gated) === Verdict.Deliver ? 'txLocal' : 'txPunt';
          const { res, d } = runCounted('vn_tx', f, c({ ingressIfindex: src.ifindex }));
          const what = `${at}: VNI ${v.vni} port epoch ${src.epoch}${src.gated ? ' (gated)' : ''} to ${'peer' in dst ? (PEERS[pi] as string) : 'local' in dst ? `local port epoch ${dst.local.epoch}${dst.local.gated ? ' (gated)' : ''}` : 'broadcast'}`;
          assert.equal(res.retval, TC_ACT_REDIRECT, what);
          assert.deepEqual(res.out, f, `${what}: the frame unchanged`);
          assert.deepEqual(d, { [want]: 1 }, what);
          if (want === 'txRemote') add(v.vni, PEERS[pi] as string, src.epoch, 'sent', datagrams);
          seen.add(`tx: ${want}${want === 'txPunt' ? (src.gated ? ' (gated)' : 'broadcast' in dst ? ' (broadcast)' : ' (other epoch)') : ''}`);
        }
        if (step % 50 === 49) checkCounts(step);
      }
      checkCounts(STEPS);
      // Whether a VNE's epochs crossed a 16-bit colour boundary (checked below, over all seeds).
      wrapped ||= vnes.some((v, i) => Math.floor(v.target / 0x10000) !== Math.floor((starts[i] as number) / 0x10000));
    });
  }
  // Over all seeds (each seed's steps are checked exactly whatever they draw):
  const seen = new Set<string>();
  let wrapped = false;
  it('the seeds drew every outcome and drove some VNE across the 16-bit colour wrap', () => {
    const all = ['rx: deliver', 'rx: late', 'rx: early', 'rx: unknown (gated)', 'rx: unknown (no port of the VNI)', 'tx: txRemote', 'tx: txLocal', 'tx: txPunt (gated)', 'tx: txPunt (broadcast)', 'tx: txPunt (other epoch)', 'cut: gate', 'cut: advance', 'cut: peer'];
    assert.deepEqual([...seen].sort(), all.sort());
    assert.ok(wrapped);
  });
});
