/**
 * When a tracked job (tracked-job.ts) reads a round of the blocks its guest wrote, with the VM
 * running, before the `stop` of its cut. Pure arithmetic over milliseconds (performance.now()),
 * so the schedule is unit-tested exactly.
 *
 * Why a schedule: the stopped round, inside the pause, reads what the guest wrote since the last
 * round's scan, so a round shortly before the `stop` keeps the pause short; but a round still
 * running when the `stop` is due delays the `stop` (the cut spread) and, on an agent whose loop
 * runs another VM's cut, that VM's pause. With a cut instant (the commit's, both snapshot
 * modes), the rounds run from the commit's receipt:
 *
 *   - one at once (roundDue), unless the last round is fresh (FRESH_ROUND_MS) and the instant
 *     leaves no room for one (ROUND_LEAD_MS);
 *   - then more (nextRoundInMs) while another one fits: it must begin by the instant less
 *     ROUND_LEAD_MS less twice the last round's length (a round reads what was written since the
 *     previous one, so its length varies with the gap), and the room left is split into equal
 *     gaps of at most ROUND_GAP_MS so that the last round begins at that latest start, not a
 *     few ms after another one; less than MIN_ROUND_GAP_MS of room: no more rounds.
 *
 * Without an instant (the agent cut at the commit's receipt or its own timer) one round runs
 * before the `stop` only when the last is older than FRESH_ROUND_MS: the stopped round then reads
 * what was written since (a few MiB at a few hundred MiB/s of guest writes: a millisecond or
 * two), and the `stop` is not delayed by a round of its own (5-12 ms measured, varying per VM).
 */

/** A round younger than this makes another before a `stop` without an instant unnecessary. */
export const FRESH_ROUND_MS = 250;
/** The room left between the end of the last round (as predicted) and the instant. */
export const ROUND_LEAD_MS = 30;
/**
 * The longest gap between two rounds before an instant. With the coordinator's leads (300 ms
 * pre-copy, 100 background: coordinator/cut-instant.ts) that is one round at the receipt and one at the latest start: the
 * last round is as late as with shorter gaps, so the stopped round reads as little, and the
 * rounds between them (100 ms gaps: two more) read blocks the guest writes again before the next
 * round, costing the agents' CPU while snapshots run (docs/performance.md, "Fewer rounds before
 * the instant").
 */
export const ROUND_GAP_MS = 300;
/** Less room than this before the latest start of another round: none. */
export const MIN_ROUND_GAP_MS = 10;

/**
 * Whether a round runs now, before a `stop` at `stopAtMs` (undefined: a cut without an instant,
 * the `stop` right after), the last round having begun at `lastRoundAtMs`.
 */
export function roundDue(nowMs: number, lastRoundAtMs: number, stopAtMs?: number): boolean {
  if (nowMs - lastRoundAtMs > FRESH_ROUND_MS) return true;
  return stopAtMs !== undefined && stopAtMs - nowMs > ROUND_LEAD_MS;
}

/**
 * After a round that took `lastRoundMs` and ended at `nowMs`: the wait (ms) before the next round,
 * or undefined when none fits before the instant `stopAtMs`.
 */
export function nextRoundInMs(nowMs: number, stopAtMs: number, lastRoundMs: number): number | undefined {
  const room = stopAtMs - ROUND_LEAD_MS - 2 * Math.max(0, lastRoundMs) - nowMs;
  if (!(room >= MIN_ROUND_GAP_MS)) return undefined;
  return room / Math.ceil(room / ROUND_GAP_MS);
}
