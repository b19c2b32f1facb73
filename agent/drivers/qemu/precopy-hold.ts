/**
 * How fast a QEMU pre-copy goes on sending between ready and the cut (the hold): the VM runs, the
 * coordinator waits for the VNE's other VMs, and what the hold leaves unsent is sent at the cut,
 * with the VM stopped.
 *
 * QEMU 7.2 syncs its dirty bitmap only once it has sent all of it (remaining below its threshold,
 * the measured bandwidth × downtime-limit: under one page at a few MiB/s and 1 ms), and at that
 * sync it converges (stops the VM and, with pause-before-switchover, waits) if less than the
 * threshold was dirtied since the last one. So the hold decides how old the dirty set is at the
 * cut. At 64 KiB/s (the default) QEMU never gets through the bitmap: everything
 * the guest dirtied since ready is sent in the pause, 380-680 ms of it in bench:snapshot. At a
 * hold above the guest's dirty rate (FAST_HOLD_BANDWIDTH, twice the 4 MiB/s memory load of
 * the benchmark's guests) QEMU gets through and syncs every few hundred ms, so the set at the cut
 * is what the guest dirtied since a recent sync; the cost is the stream: every pass is in the
 * image (up to the hold × the wait for the commit). The risk is a guest that dirties nothing
 * between two syncs: QEMU then converges before the cut, and the pre-copy is restarted
 * (migration.ts) with the hold quartered (holdAfterConvergence), down to HOLD_FLOOR.
 *
 * Guarantees: holdAfterConvergence() quarters a hold above HOLD_FLOOR, never below the floor,
 * and leaves a hold at or below it (set so by the operator) as it is.
 */
import { MiB } from './process';

/** The lowest hold after convergences (bytes/s), never converging in practice. */
export const HOLD_FLOOR = 64 * 1024;

/**
 * A hold above a guest's dirty rate (bytes/s): the benchmark's guests write 4 MiB/s. What
 * bench:snapshot measured at 8 MiB/s (precopy pauses never above the stop-all baseline) is
 * reached with `holdBandwidth: FAST_HOLD_BANDWIDTH`; it is not the default because a guest that
 * dirties almost nothing converges during the hold and is seen paused (QEMU's finish-migrate)
 * until the restart: the qemu-driver suite's "runs while its pre-copy waits for the cut" caught
 * it in one fresh-clone run of two.
 */
export const FAST_HOLD_BANDWIDTH = 8 * MiB;

/** The hold's max-bandwidth unless the driver is told otherwise (bytes/s): the floor, never converging. */
export const DEFAULT_HOLD_BANDWIDTH = HOLD_FLOOR;

/** The hold for the restarted pre-copy of a guest that converged during the hold. */
export function holdAfterConvergence(bandwidth: number): number {
  return bandwidth <= HOLD_FLOOR ? bandwidth : Math.max(HOLD_FLOOR, bandwidth / 4);
}
