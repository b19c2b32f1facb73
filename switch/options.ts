/**
 * The switch's tunables and their defaults: hold and restore-gate bounds per port, marker
 * retransmission, recording grace and retention, the timer period, the underlay MTU, FDB
 * limits, and the injected clock (milliseconds) every time-dependent rule reads.
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
