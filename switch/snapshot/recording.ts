/**
 * The state of channel recording k of one VNE at this switch (DESIGN.md, "Channel state"), and
 * the per-peer frame counts that markers carry.
 *
 * A recording starts at the first cut to k of one of the VNE's ports. Each port that passes the
 * cut adds itself; frames of epoch < k delivered to such a port are recorded (copies, in
 * delivery order; a super-frame whole, with its virtio_net_hdr, as the port received it). `localDone` is set when every local port has passed k:
 * the markers go out then. The recording ends (`done`) when every peer's marker has arrived and
 * its count is matched, or its grace period passed; the frames are then handed over once to
 * channelState() callers (`handedOver`) and the record is kept only to retransmit markers to
 * peers that have not acknowledged them. Pure data: markers.ts holds the logic.
 *
 * EpochCounts keeps at most MAX_EPOCHS_PER_PEER distinct epochs: a new one past the cap merges
 * the two oldest into the newer of them. That is exact for every question below(k) with k not
 * strictly between them, and the tunnel's receive side never counts an epoch past the marker
 * window (rx.ts), so only long-past epochs merge and below(k) stays exact for every k a marker
 * can ask about. Memory and the cost of below() are bounded whatever epochs frames carry.
 */
import type { ChannelFrame } from '../../proto/artefacts/channel-state';
import { MAX_EPOCHS_PER_PEER } from '../options';

export type { ChannelFrame };

/** Channel state of one VNE for snapshot k at this switch: each port's recorded frames, in order. */
export interface ChannelState {
  vne: string;
  epoch: number;
  /** Per port, its recorded frames in delivery order (super-frames whole, with their header). */
  ports: Map<string, ChannelFrame[]>;
  /** Epoch<k frames the peers' markers announced that never arrived (lost on the wire). */
  lostFrames: number;
}

/** Data frames counted per epoch, for marker counts. */
export class EpochCounts {
  private readonly byEpoch = new Map<number, number>();
  private curEpoch = -1;
  private cur = 0;

  inc(epoch: number, n = 1): void {
    if (epoch === this.curEpoch) {
      this.cur += n;
      return;
    }
    this.fold();
    this.curEpoch = epoch;
    this.cur = n;
  }

  /** Frames with epoch < k. */
  below(k: number): number {
    this.fold();
    let n = 0;
    for (const [e, c] of this.byEpoch) if (e < k) n += c;
    return n;
  }

  reset(): void {
    this.byEpoch.clear();
    this.curEpoch = -1;
    this.cur = 0;
  }

  /** Distinct epochs counted (at most MAX_EPOCHS_PER_PEER). */
  get epochs(): number {
    this.fold();
    return this.byEpoch.size;
  }

  private fold(): void {
    if (this.curEpoch >= 0 && this.cur > 0) {
      const had = this.byEpoch.get(this.curEpoch);
      if (had === undefined && this.byEpoch.size >= MAX_EPOCHS_PER_PEER) this.mergeOldest();
      this.byEpoch.set(this.curEpoch, (had ?? 0) + this.cur);
    }
    this.cur = 0;
  }

  /** Merge the two oldest epochs into the newer of them. */
  private mergeOldest(): void {
    let a = Infinity;
    let b = Infinity;
    for (const e of this.byEpoch.keys()) {
      if (e < a) {
        b = a;
        a = e;
      } else if (e < b) b = e;
    }
    if (b === Infinity) return;
    this.byEpoch.set(b, (this.byEpoch.get(b) ?? 0) + (this.byEpoch.get(a) ?? 0));
    this.byEpoch.delete(a);
  }
}

export interface MarkerIn {
  count: number;
  at: number;
}

export class Recording {
  readonly frames = new Map<string, ChannelFrame[]>();
  readonly markersIn = new Map<number, MarkerIn>();
  readonly unacked = new Set<number>();
  localDone = false;
  lastMarkerSent = 0;
  done = false;
  /** The frames were given to a channelState() caller; kept only to retransmit markers. */
  handedOver = false;
  /** When recording ended or was aborted (ms), for pruning unclaimed state. */
  endedAt = 0;
  aborted = false;
  lostFrames = 0;
  /** channelState() callers; each is rejected by the switch's tick once the injected clock passes its deadline. */
  waiters: { resolve: (v: ChannelState) => void; reject: (e: Error) => void; deadline: number; timeoutMs: number }[] = [];
  constructor(readonly k: number) {}
}
