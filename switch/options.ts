/**
 * The switch's tunables and their defaults: hold and restore-gate bounds per port, marker
 * retransmission, recording grace and retention, the timer period, the underlay MTU, FDB
 * limits, the bounds on what markers from the tunnel may cost, and the injected clock
 * (milliseconds) every time-dependent rule reads.
 */
import type { FdbOptions } from './bridge/fdb';

export interface SwitchOptions {
  id: string;
  /** Bytes of future frames held per port before drops. */
  holdBytesPerPort: number;
  /** Bytes a restore gate keeps per port (attachPort with gated: true) before drops. */
  restoreGateBytes: number;
  markerRetransmitMs: number;
  recordingGraceMs: number;
  tickMs: number;
  /** Ended recordings nobody claimed (and aborted ones) are forgotten after this long. */
  unclaimedTtlMs: number;
  underlayMtu: number;
  fdb: Partial<FdbOptions>;
  now: () => number;
}

export const DEFAULT_SWITCH_OPTIONS: Omit<SwitchOptions, 'id'> = {
  holdBytesPerPort: 4 * 1024 * 1024,
  restoreGateBytes: 4 * 1024 * 1024,
  markerRetransmitMs: 50,
  recordingGraceMs: 1000,
  tickMs: 20,
  unclaimedTtlMs: 10 * 60_000,
  underlayMtu: 1500,
  fdb: {},
  now: () => Date.now(),
};

/*
 * Bounds on what the tunnel's control traffic may cost (docs/security.md). A UDP source address
 * can be spoofed by anyone on the underlay path, so a marker is not trusted to be small, recent
 * or honest; these constants bound the state and work any stream of markers can create.
 */

/**
 * A marker may start a recording only for an epoch at most this far past the VNE's current
 * epoch (the highest epoch every local port has passed, or the highest port epoch if higher).
 * Legitimately a peer is one cut ahead (it cut k before this switch), or two when it processed
 * the abort of k and cut k+1 while this switch's abort is still queued. Markers further ahead
 * are ignored without an acknowledgement, so a real peer retransmits them and they are taken
 * once this switch catches up: a too-small window delays, it never loses a marker.
 */
export const MARKER_EPOCHS_AHEAD = 2;

/**
 * Markers and acks for epochs more than this far below the VNE's current epoch (and without a
 * recording) are ignored without an acknowledgement. Within it, an old marker is acknowledged
 * statelessly (a retransmission whose ack was lost), as before.
 */
export const MARKER_EPOCHS_BEHIND = 16;

/**
 * Recordings per VNE that markers may create or keep alive: a marker that would need a new one
 * past the cap is ignored (unacknowledged) unless an ended recording (aborted, or ended with
 * every marker acknowledged) can be forgotten first. The local cut always gets its recording.
 */
export const MAX_RECORDINGS_PER_VNE = 32;

/**
 * Distinct epochs whose frame counts are kept per peer and direction. Past it the two oldest
 * epochs are merged into the newer one, so a flood of data frames with forged epochs costs
 * bounded memory and bounded work per marker check.
 */
export const MAX_EPOCHS_PER_PEER = 64;

/**
 * A marker that announces more than this many frames beyond those received from (or already
 * known lost on) its tunnel is impossible and ignored, unacknowledged: 2^24 frames is 16 s of a
 * saturated 1 Mpps tunnel lost within one snapshot, far past a working underlay. The real
 * peer's marker, retransmitted until acknowledged, is then the one taken.
 */
export const MAX_MARKER_SHORTFALL = 2 ** 24;
