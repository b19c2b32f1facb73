/**
 * How fast a QEMU pre-copy sends before and after ready: the landing of the first pass, and the
 * hold between ready and the cut (the VM runs, the coordinator waits for the VNE's other VMs, and
 * what the hold leaves unsent is sent at the cut, with the VM stopped).
 *
 * QEMU 7.2 (migration.c migration_iteration_run, ram.c ram_save_pending) converges — stops the
 * VM and, with pause-before-switchover, waits — whenever the pending dirty set is empty or below
 * its threshold, the bandwidth measured over its last 100 ms window × downtime-limit (1 ms here).
 * It syncs its dirty bitmap only when the remaining set is below that threshold, so a sync and a
 * convergence test are the same step. Under one page of threshold (a window under 4 MiB/s) a
 * sync happens only once everything was sent, and converges only if the guest dirtied no page at
 * all since the previous one.
 *
 * The landing: the first pass started at precopyBandwidth (1 GiB/s: a threshold of about 1 MiB),
 * and a guest that dirtied less than that during the pass converged at the sync that ends it,
 * before the first progress poll; the pre-copy was then cancelled and restarted (a hidden pause).
 * So the first pass goes at most FIRST_PASS_CEILING, and before ready every progress poll lowers
 * max-bandwidth to what sends the remaining set in LANDING_SECONDS, never under LANDING_FLOOR
 * (landingBandwidth()): the pass ends with the last windows at the floor, whose threshold is under
 * a page, and the sync that ends it converges only for a guest that dirtied nothing during the
 * whole pass; a pass ending before the landing reached the floor has a threshold of 16 pages.
 *
 * The hold: at ready max-bandwidth drops to the hold; `ready` is confirmed only once QEMU took it
 * (the migrate-set-parameters reply), HOLD_SETTLE_MS later (two of QEMU's windows: its threshold
 * is then the hold's) and with QEMU still `active`. At 64 KiB/s (the default) QEMU never gets
 * through the bitmap: everything the guest dirtied since ready is sent at the cut. A hold above
 * the guest's dirty rate (FAST_HOLD_BANDWIDTH) gets through and syncs, but then the set it sends
 * shrinks pass after pass until QEMU syncs back to back, and the first sync that finds no page
 * dirtied converges: in QEMU 7.2 no hold both re-syncs and cannot converge. A convergence during
 * the hold restarts the pre-copy (migration.ts) with the hold quartered (holdAfterConvergence),
 * down to HOLD_FLOOR; every restart is reported as a PHASE_PRECOPY_RESTART span of the cut.
 *
 * PacedHold (option `holdBandwidth: 'paced'`, the default since it was measured) is the hold that
 * re-syncs without running into back-to-back syncs: see its comment.
 *
 * The read-paced hold (PACE_BY_ENV=reads; the default applies PacedHold by max-bandwidth):
 * PacedHold's bandwidth is the rate at which the agent reads QEMU's migration socket
 * (read-pacer.ts) and max-bandwidth is unlimited (UNLIMITED_BANDWIDTH). QEMU measures its
 * bandwidth from what got through, so its threshold is the same as under its own rate limit, but
 * its migration thread, when ahead, blocks in its write instead of sleeping until its 100 ms
 * window ends, and goes on at full speed the instant the socket is read at full speed again (the
 * cut: no window to sleep out, no QMP command before `stop`; precopy-switchover.ts). QEMU
 * syncs and converges as under the rate limit (a sync only once the pass is written, a
 * convergence when it found no more than the threshold), so a convergence during this hold is
 * handled as any other (the restart of migration.ts, after which the fixed floor holds by
 * max-bandwidth). downtime-limit 0 (QEMU 7.2 takes it) does not help, by QEMU 7.2's source
 * (ram.c ram_save_pending, migration.c migration_iteration_run; not run here): threshold 0 never
 * lets it sync (remaining < 0 never holds), and a pass sent to its end (pending 0) converges at
 * once, without a sync: a hold that could never re-sync and converged at each pass's end.
 *
 * Guarantees: landingBandwidth() is within [LANDING_FLOOR, ceiling] (the ceiling alone when it is
 * lower) and never rises as the remaining set shrinks; holdAfterConvergence() quarters a hold
 * above HOLD_FLOOR, never below the floor, and leaves a hold at or below it as it is; a
 * PacedHold's bandwidth stays within [HOLD_FLOOR, PACED_CAP].
 */
import { VnsnapError } from '../../../proto/core/errors';
import { MiB } from './process';

/** The lowest hold after convergences (bytes/s), never converging in practice. */
export const HOLD_FLOOR = 64 * 1024;

/**
 * A hold above a guest's dirty rate (bytes/s): the benchmark's guests write 4 MiB/s. Not the
 * default: such a hold converges as soon as the guest dirties nothing between two back-to-back
 * syncs (see the module comment).
 */
export const FAST_HOLD_BANDWIDTH = 8 * MiB;

/** The fixed hold's max-bandwidth (bytes/s): the floor, never converging. The fallback after a convergence while paced. */
export const DEFAULT_HOLD_BANDWIDTH = HOLD_FLOOR;

/**
 * The hold unless the driver or VNSNAP_QEMU_HOLD says otherwise: paced (PacedHold). Chosen over
 * the fixed 64 KiB/s hold on measurements (docs/performance.md, "The paced hold against QEMU" and
 * "The paced hold as the default"): no pre-copy restart in four qemu-driver runs and the full
 * bench, the test guests' precopy max below the stop-all baseline with it (above it with 64 KiB/s).
 */
export const DEFAULT_HOLD: number | 'paced' = 'paced';

/**
 * The environment variable that sets the hold of a driver built without holdBandwidth (an agent's):
 * `paced`, or bytes/s. For measuring one hold against another with the agents as they are.
 */
export const HOLD_ENV = 'VNSNAP_QEMU_HOLD';

/** max-bandwidth with no limit in practice (bytes/s): QEMU sends as fast as it can (the lift at the cut, the read-paced hold). */
export const UNLIMITED_BANDWIDTH = 8 * 1024 * MiB;

/**
 * How the paced hold is applied: `bandwidth` (the default) by QEMU's max-bandwidth (its rate
 * limit); `reads` by the agent's reads of the stream (read-pacer.ts), QEMU's max-bandwidth
 * unlimited. `reads` brings the VMs' pre-copy cut instants together (no 100 ms rate-limit window
 * to sleep out at the commit: docs/qemu.md), and QEMU's traces found it no more exposed than
 * `bandwidth` to the one known way a TCG guest's store escapes the dirty log; but in ten rounds
 * of bench:snapshot each, back to back, the distro guests' precopy pauses were 73.0 / 253.6 ms
 * (median / max) with `reads` against 49.7 / 112.7 with `bandwidth`, and neither met the cut
 * spread target (docs/performance.md, "Ten rounds per mode on merged main"). The guests' pauses
 * decide: `bandwidth` stays the default.
 */
export const PACE_BY_ENV = 'VNSNAP_QEMU_PACE_BY';

/** PACE_BY_ENV's value: `bandwidth` when unset or empty. */
export function parsePaceBy(value: string | undefined): 'reads' | 'bandwidth' {
  if (value === undefined || value === '' || value === 'bandwidth') return 'bandwidth';
  if (value === 'reads') return 'reads';
  throw new VnsnapError('ERR_CONFIG', `${PACE_BY_ENV}: expected "reads" or "bandwidth", got ${JSON.stringify(value)}`);
}

/** The hold `value` names (`paced` or a whole number of bytes/s ≥ 1), or undefined when unset or empty. */
export function parseHold(value: string | undefined): number | 'paced' | undefined {
  if (value === undefined || value === '') return undefined;
  if (value === 'paced') return 'paced';
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new VnsnapError('ERR_CONFIG', `${HOLD_ENV}: expected "paced" or bytes/s (a whole number ≥ 1), got ${JSON.stringify(value)}`);
  return n;
}

/**
 * The first pass's ceiling (bytes/s): a threshold of 64 KiB (16 pages) at 1 ms. The landing alone
 * came too late for guests whose RAM is mostly zero pages (sent almost for free, so a pass of a
 * 256 MiB guest ended within one or two polls at 0.4-0.5 GiB/s and converged).
 */
export const FIRST_PASS_CEILING = 64 * MiB;

/** The landing's floor (bytes/s): a 100 ms window at it measures a threshold of 1 KiB at 1 ms, under a page. */
export const LANDING_FLOOR = 1 * MiB;

/** The landing aims to send the remaining set in this long (s): each 100 ms poll lowers the bandwidth by about a third. */
export const LANDING_SECONDS = 0.3;

/** From the hold's migrate-set-parameters reply to `ready` (ms): two of QEMU's 100 ms bandwidth windows and a margin. */
export const HOLD_SETTLE_MS = 250;

/** max-bandwidth for the rest of the pre-copy before ready, `remaining` bytes still dirty. */
export function landingBandwidth(remaining: number, ceiling: number): number {
  return Math.round(Math.min(ceiling, Math.max(LANDING_FLOOR, remaining / LANDING_SECONDS)));
}

/** The hold for the restarted pre-copy of a guest that converged during the hold. */
export function holdAfterConvergence(bandwidth: number): number {
  return bandwidth <= HOLD_FLOOR ? bandwidth : Math.max(HOLD_FLOOR, bandwidth / 4);
}

/** The paced hold's bounds: QEMU's syncs kept between these intervals (ms), its bandwidth between HOLD_FLOOR and PACED_CAP. */
export const PACED_MIN_INTERVAL_MS = 300;
export const PACED_MAX_INTERVAL_MS = 1500;
export const PACED_CAP = 64 * MiB;

/**
 * The paced hold's first bandwidth sends the set left at the hold's start in about this long (s)
 * when that is faster than twice the dirty rate QEMU measured (which is 0 until QEMU measured one).
 */
export const PACED_DRAIN_S = 2;

/** A paced pre-copy is ready once QEMU synced during the hold and at most this much remains (bytes). */
export const PACED_READY_BYTES = 4 * MiB;

/** …or once it has been held this long (ms), whatever remains: a guest dirtying faster than the hold can send. */
export const PACED_READY_MAX_MS = 8000;

/**
 * The paced hold (driver option `holdBandwidth: 'paced'`): a hold that lets QEMU sync, paced from
 * the progress polls so that its syncs stay PACED_MIN_INTERVAL_MS..PACED_MAX_INTERVAL_MS apart.
 * A sync after an interval I finds what the guest dirtied in I (far above the threshold, a few
 * pages at these bandwidths), so it does not converge; the danger is only a run of shrinking
 * intervals (a hold above the dirty rate), which the first interval under the minimum stops by
 * halving the bandwidth. No sync for the maximum raises it by half. The set at the cut is then
 * about what the guest dirtied in one interval instead of its whole working set since ready.
 * A guest whose dirty rate falls at once can still run into back-to-back syncs before the next
 * poll and converge (then the restart of migration.ts).
 * It starts (start()) at twice the dirty rate QEMU measured, or at the set the first pass left
 * over PACED_DRAIN_S when that is faster (QEMU reports no rate before its first second of
 * syncs), and the pre-copy is ready only once QEMU synced at the hold's pace with at most
 * PACED_READY_BYTES left (ready()): in bench:snapshot the coordinator commits 0.01-1.6 s after
 * the last VM's ready, too soon for a hold that starts with up to readyBytes (16 MiB) unsent to
 * get through them, so with `ready` at the hold's start the paced hold synced in 1 cut of 20.
 */
export class PacedHold {
  private lastSync = -1;
  private lastSyncAt = 0;
  private lastRaiseAt = 0;
  private firstSync = -1;

  constructor(private bw: number) {
    this.bw = clampPaced(bw);
  }

  /**
   * The paced hold of a pre-copy whose first pass left `remaining` bytes, the guest dirtying
   * `dirtyBytesS` (0: not measured yet), at dirty-sync-count `sync`: twice the dirty rate, or the
   * set over PACED_DRAIN_S when faster, so the hold gets through QEMU's bitmap and syncs.
   */
  static start(remaining: number, dirtyBytesS: number, sync: number, nowMs: number): PacedHold {
    const h = new PacedHold(Math.max(2 * dirtyBytesS, remaining / PACED_DRAIN_S));
    h.observe(sync, nowMs);
    return h;
  }

  get bandwidth(): number {
    return this.bw;
  }

  /** QEMU synced since the hold started: its bitmap is fresh, what remains is what the guest dirtied lately. */
  get synced(): boolean {
    return this.firstSync >= 0 && this.lastSync > this.firstSync;
  }

  /** Ready (the set left at a cut is small): synced and at most PACED_READY_BYTES remaining, or held PACED_READY_MAX_MS. */
  ready(remaining: number, heldMs: number): boolean {
    return (this.synced && remaining <= PACED_READY_BYTES) || heldMs >= PACED_READY_MAX_MS;
  }

  /** A poll's dirty-sync-count at `nowMs`: the bandwidth to set now, or undefined to keep it. */
  observe(sync: number, nowMs: number): number | undefined {
    if (this.lastSync < 0 || sync < this.lastSync) {
      this.lastSync = this.firstSync = sync;
      this.lastSyncAt = this.lastRaiseAt = nowMs;
      return undefined;
    }
    if (sync > this.lastSync) {
      const interval = (nowMs - this.lastSyncAt) / (sync - this.lastSync);
      this.lastSync = sync;
      this.lastSyncAt = this.lastRaiseAt = nowMs;
      return interval < PACED_MIN_INTERVAL_MS ? this.set(this.bw / 2) : undefined;
    }
    if (nowMs - this.lastRaiseAt >= PACED_MAX_INTERVAL_MS) {
      this.lastRaiseAt = nowMs;
      return this.set(this.bw * 1.5);
    }
    return undefined;
  }

  private set(bw: number): number | undefined {
    const next = clampPaced(bw);
    if (next === this.bw) return undefined;
    this.bw = next;
    return next;
  }
}

function clampPaced(bw: number): number {
  return Math.round(Math.min(PACED_CAP, Math.max(HOLD_FLOOR, bw)));
}
