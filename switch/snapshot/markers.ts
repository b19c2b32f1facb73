/**
 * Markers and the end of channel recordings (DESIGN.md, "Markers").
 *
 * When every local port of a VNE has passed cut k, a marker (VNE, k, count of epoch<k data
 * frames sent to that peer) goes to every peer of the VNE, retransmitted every
 * `markerRetransmitMs` until acknowledged. Recording k ends when every peer's marker has
 * arrived and its count is matched by the epoch<k frames received from it, or
 * `recordingGraceMs` after the marker (the rest was lost on the wire). channelState(vne, k)
 * then yields each port's recorded frames in order, once; an ended recording nobody claims (and
 * an aborted one) is forgotten after `unclaimedTtlMs`.
 *
 * Markers come from the underlay, where a peer's address can be spoofed (docs/security.md), so
 * what any stream of them can cost is bounded (constants in options.ts):
 * - Window. A marker for epoch k without a recording is considered only when
 *   cutEpoch − MARKER_EPOCHS_BEHIND ≤ k ≤ topEpoch + MARKER_EPOCHS_AHEAD (cutEpoch: the highest
 *   epoch every local port has passed; topEpoch: the highest any local port has reached, at
 *   least cutEpoch — a port attached at a restored snapshot's epoch). Outside it the marker is ignored and counted
 *   (`markersOutOfWindow`), and not acknowledged: a real peer keeps retransmitting and is heard
 *   once this switch is in range. Inside it, k ≤ cutEpoch is an old retransmission: acknowledged,
 *   no state (as always). So markers alone can start recordings for at most
 *   MARKER_EPOCHS_AHEAD epochs past the VNE's. A marker that arrives before this switch's own
 *   cut (k = cutEpoch + 1) is legitimate and starts recording k as before.
 * - Cap. A VNE keeps at most MAX_RECORDINGS_PER_VNE recordings: creating one past the cap
 *   first forgets the longest-ended recording that no one needs (aborted, or ended with no
 *   waiter and every marker acknowledged); a marker that finds none is ignored, unacknowledged
 *   (`markersOverCap`). A local cut always gets its recording.
 * - Impossible counts. A marker whose count exceeds the frames received from that peer below
 *   k, plus the shortfall already known lost, by more than MAX_MARKER_SHORTFALL is not a
 *   count any peer could have sent through a working underlay: it is ignored, unacknowledged
 *   (`markersInvalid`), so the real peer's marker (retransmitted until acknowledged) is the one
 *   taken. A recording's `lostFrames` therefore never exceeds MAX_MARKER_SHORTFALL per peer.
 * - Latest wins. Until recording k ends, a peer's newer marker for k replaces an earlier one
 *   with another count (a real peer's retransmissions all carry the same count), so a forged
 *   marker sent before the real one does not decide the recording.
 * - Acks create no state; those outside the window are counted (`acksOutOfWindow`).
 * Every operation then costs at most (recordings × peers × MAX_EPOCHS_PER_PEER).
 */
import { VnsnapError } from '../../proto/core/errors';
import { MARKER_EPOCHS_AHEAD, MARKER_EPOCHS_BEHIND, MAX_MARKER_SHORTFALL, MAX_RECORDINGS_PER_VNE } from '../options';
import type { SwitchCounters } from '../stats';
import type { Peer, Vne, VnePeer } from '../tables';
import { encodeAck, encodeMarker } from '../tunnel/geneve';
import type { TunnelTx } from '../tunnel/tx-batch';
import type { KernelCounts } from '../bpf-dp/kernel-counts';
import type { ChannelFrame, ChannelState } from './recording';
import { Recording } from './recording';

export interface MarkerOptions {
  markerRetransmitMs: number;
  recordingGraceMs: number;
  /** Ended recordings nobody claimed (and aborted ones) are forgotten after this long. */
  unclaimedTtlMs: number;
  now: () => number;
}

export interface RecordingStatus {
  epoch: number;
  localDone: boolean;
  done: boolean;
  aborted: boolean;
  peers: { peer: string; marker: number | null; received: number; acked: boolean }[];
}

export class Markers {
  /**
   * The in-kernel data path's counts (switch/bpf-dp/kernel-counts.ts), added to the switch's own
   * in every marker sent and checked; undefined (the default) while no port uses the data path.
   */
  kernelCounts: Pick<KernelCounts, 'below'> | undefined;

  constructor(
    private readonly opts: MarkerOptions,
    private readonly counters: SwitchCounters,
    private readonly tunnel: TunnelTx,
    private readonly peerName: (idx: number) => string | undefined,
  ) {}

  private recvBelow(v: Vne, vp: VnePeer, k: number): number {
    return vp.recv.below(k) + (this.kernelCounts?.below(v.vni, vp.peer.ip, k, 'received') ?? 0);
  }

  /** Recording k of v, created on first use (a local operation: always, past the cap too). */
  recording(v: Vne, k: number): Recording {
    return this.admit(v, k, true) as Recording;
  }

  /**
   * Recording k of v, created if the VNE is under MAX_RECORDINGS_PER_VNE or an ended
   * recording no one needs can be forgotten first; undefined when neither (unless `always`).
   */
  private admit(v: Vne, k: number, always: boolean): Recording | undefined {
    let r = v.recordings.get(k);
    if (r) return r;
    if (v.recordings.size >= MAX_RECORDINGS_PER_VNE && !this.forgetOneEnded(v) && !always) return undefined;
    r = new Recording(k);
    v.recordings.set(k, r);
    return r;
  }

  /** Forget the longest-ended recording that nobody needs any more; false if there is none. */
  private forgetOneEnded(v: Vne): boolean {
    let victim: Recording | undefined;
    for (const r of v.recordings.values()) {
      const idle = r.aborted || ((r.done || r.handedOver) && r.waiters.length === 0 && r.unacked.size === 0);
      if (idle && r.endedAt > 0 && (victim === undefined || r.endedAt < victim.endedAt)) victim = r;
    }
    if (victim === undefined) return false;
    v.recordings.delete(victim.k);
    return true;
  }

  /** k is within the marker window around the VNE's epoch. */
  private inWindow(v: Vne, k: number): boolean {
    return k >= v.cutEpoch - MARKER_EPOCHS_BEHIND && k <= v.topEpoch + MARKER_EPOCHS_AHEAD;
  }

  /** If every local port of v has passed k, send the markers of k. */
  checkLocalCut(v: Vne, k: number): void {
    const r = v.recordings.get(k);
    if (!r || r.localDone || r.aborted) return;
    for (const lp of v.ports) if (lp.epoch < k || lp.cutting) return;
    r.localDone = true;
    v.cutEpoch = Math.max(v.cutEpoch, k);
    v.noteEpoch(k);
    for (const idx of v.peers.keys()) r.unacked.add(idx);
    this.sendMarkers(v, r, this.opts.now());
    this.tunnel.flush();
    this.checkRecordingDone(v, r);
  }

  onMarker(v: Vne, vp: VnePeer, k: number, generation: number, count: number): void {
    this.counters.markersReceived++;
    let r = v.recordings.get(k);
    if (r === undefined && !this.inWindow(v, k)) {
      this.counters.markersOutOfWindow++;
      return;
    }
    // Another generation, or a retransmitted marker for a recording already handed over:
    // acknowledged, nothing more.
    if (generation !== v.generation || (r === undefined && k <= v.cutEpoch)) {
      this.ack(v, vp, k, generation);
      return;
    }
    const knownLost = vp.lostEpoch < k ? vp.lost : 0;
    if (count - this.recvBelow(v, vp, k) - knownLost > MAX_MARKER_SHORTFALL) {
      this.counters.markersInvalid++;
      return;
    }
    r ??= this.admit(v, k, false);
    if (r === undefined) {
      this.counters.markersOverCap++;
      return;
    }
    this.ack(v, vp, k, generation);
    const had = r.markersIn.get(vp.peer.idx);
    if (had === undefined || (had.count !== count && !r.done)) r.markersIn.set(vp.peer.idx, { count, at: this.opts.now() });
    this.checkRecordingDone(v, r);
  }

  private ack(v: Vne, vp: VnePeer, k: number, generation: number): void {
    this.tunnel.queue(encodeAck(v.vni, k, generation), vp.peer, null, 0, null, 0);
    this.counters.acksSent++;
  }

  onAck(v: Vne, peer: Peer, k: number, generation: number): void {
    this.counters.acksReceived++;
    const r = generation === v.generation ? v.recordings.get(k) : undefined;
    if (r === undefined && !this.inWindow(v, k)) this.counters.acksOutOfWindow++;
    if (r) {
      r.unacked.delete(peer.idx);
      if (r.handedOver && r.unacked.size === 0) v.recordings.delete(r.k);
    }
  }

  /** Abort recording k: no port records it any more, its waiters are rejected. */
  abort(v: Vne, k: number): void {
    const r = this.recording(v, k);
    r.aborted = true;
    for (const lp of v.ports) lp.recordings = lp.recordings.filter((x) => x !== r);
    this.fail(r, new VnsnapError('ERR_SNAPSHOT_ABORTED', `snapshot ${k} of VNE ${v.name} was aborted`));
  }

  fail(r: Recording, e: Error): void {
    r.aborted = true;
    r.endedAt = this.opts.now();
    const waiters = r.waiters;
    r.waiters = [];
    for (const w of waiters) w.reject(e);
  }

  /** See Switch.channelState. */
  channelState(v: Vne, k: number, timeoutMs: number): Promise<ChannelState> {
    const existing = v.recordings.get(k);
    if ((existing === undefined && k <= v.cutEpoch) || existing?.handedOver) {
      return Promise.reject(new VnsnapError('ERR_NOT_FOUND', `channel state ${k} of VNE ${v.name} was already handed over or is gone`));
    }
    const r = this.recording(v, k);
    if (r.aborted) return Promise.reject(new VnsnapError('ERR_SNAPSHOT_ABORTED', `snapshot ${k} of VNE ${v.name} was aborted`));
    return new Promise<ChannelState>((resolve, reject) => {
      r.waiters.push({ resolve, reject, deadline: this.opts.now() + timeoutMs, timeoutMs });
      this.checkRecordingDone(v, r);
    });
  }

  /** Reject the channelState() callers of r whose deadline (injected clock) has passed. */
  private expireWaiters(v: Vne, r: Recording, now: number): void {
    if (!r.waiters.some((w) => now >= w.deadline)) return;
    const expired = r.waiters.filter((w) => now >= w.deadline);
    r.waiters = r.waiters.filter((w) => now < w.deadline);
    const from = [...r.markersIn.keys()].map((i) => this.peerName(i)).join(', ') || 'none';
    for (const w of expired) w.reject(new VnsnapError('ERR_TIMEOUT', `channel recording ${r.k} of VNE ${v.name} did not end within ${w.timeoutMs} ms (markers from: ${from})`));
  }

  status(v: Vne): RecordingStatus[] {
    return [...v.recordings.values()].map((r) => ({
      epoch: r.k,
      localDone: r.localDone,
      done: r.done,
      aborted: r.aborted,
      peers: [...v.peers.values()].map((vp) => ({
        peer: vp.peer.name,
        marker: r.markersIn.get(vp.peer.idx)?.count ?? null,
        received: this.recvBelow(v, vp, r.k),
        acked: r.localDone && !r.unacked.has(vp.peer.idx),
      })),
    }));
  }

  /** Retransmit markers, end recordings whose grace passed, forget unclaimed ones, time out channelState() callers. */
  tick(v: Vne, now: number): void {
    for (const r of v.recordings.values()) {
      if ((r.aborted || (r.done && r.waiters.length === 0) || r.handedOver) && r.endedAt > 0 && now - r.endedAt > this.opts.unclaimedTtlMs) {
        v.recordings.delete(r.k);
        continue;
      }
      if (r.localDone && !r.aborted && r.unacked.size > 0 && now - r.lastMarkerSent >= this.opts.markerRetransmitMs) this.sendMarkers(v, r, now);
      if (!r.done && !r.aborted) this.checkRecordingDone(v, r);
      this.expireWaiters(v, r, now);
    }
  }

  private sendMarkers(v: Vne, r: Recording, now: number): void {
    // Flush queued data first so the counts cover everything already handed to the kernel.
    this.tunnel.flush();
    for (const idx of r.unacked) {
      const vp = v.peers.get(idx);
      if (!vp) continue;
      this.tunnel.queue(encodeMarker(v.vni, r.k, v.generation, vp.sent.below(r.k) + (this.kernelCounts?.below(v.vni, vp.peer.ip, r.k, 'sent') ?? 0)), vp.peer, null, 0, null, 0);
      this.counters.markersSent++;
    }
    r.lastMarkerSent = now;
  }

  private checkRecordingDone(v: Vne, r: Recording): void {
    if (r.aborted || !r.localDone || r.handedOver) return;
    if (r.done) {
      if (r.waiters.length > 0) this.handOver(v, r);
      return;
    }
    const now = this.opts.now();
    let lost = 0;
    const shortfalls: [VnePeer, number][] = [];
    for (const vp of v.peers.values()) {
      const m = r.markersIn.get(vp.peer.idx);
      if (!m) return;
      const got = this.recvBelow(v, vp, r.k);
      const knownLost = vp.lostEpoch < r.k ? vp.lost : 0;
      if (got + knownLost < m.count) {
        if (now - m.at < this.opts.recordingGraceMs) return;
        lost += m.count - got - knownLost;
      }
      shortfalls.push([vp, Math.max(0, m.count - got)]);
    }
    for (const [vp, short] of shortfalls) {
      if (r.k > vp.lostEpoch) {
        vp.lost = short;
        vp.lostEpoch = r.k;
      }
    }
    r.done = true;
    r.endedAt = now;
    r.lostFrames = lost;
    for (const lp of v.ports) lp.recordings = lp.recordings.filter((x) => x !== r);
    if (r.waiters.length > 0) this.handOver(v, r);
  }

  private handOver(v: Vne, r: Recording): void {
    const ports = new Map<string, ChannelFrame[]>();
    for (const lp of v.ports) ports.set(lp.name, r.frames.get(lp.name) ?? []);
    for (const [name, frames] of r.frames) if (!ports.has(name)) ports.set(name, frames);
    const cs: ChannelState = { vne: v.name, epoch: r.k, ports, lostFrames: r.lostFrames };
    const waiters = r.waiters;
    r.waiters = [];
    r.handedOver = true;
    r.frames.clear();
    // Keep retransmitting our markers to peers that have not acknowledged them yet.
    if (r.unacked.size === 0) v.recordings.delete(r.k);
    for (const w of waiters) w.resolve(cs);
  }
}
