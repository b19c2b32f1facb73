/**
 * The start of a QEMU pre-copy cut: from the commit to the VM stopped and QEMU waiting in
 * pre-switchover, so that the VM is cut at the commit rather than whenever its own pre-copy
 * happens to converge, and its pause holds nothing but its own final copy.
 *
 * At the commit the pre-copy is held (migration.ts: max-bandwidth at the hold, downtime-limit
 * 1 ms, the VM running). Then:
 *   1. max-bandwidth up and downtime-limit = cutDowntimeMs, and a final round with the VM still
 *      running, watched by query-migrate every round.pollMs: it ends as soon as QEMU has synced
 *      its dirty bitmap since the lift and sent it down to round.leftBytes, or synced twice
 *      (finalRoundDone()), or after round.maxMs at most;
 *   2. `stop` (serialised before the round) when the round ends, unless QEMU converged and
 *      stopped the VM by itself first. Its STOP is the cut;
 *   3. with the VM stopped nothing more is dirtied: QEMU sends what is left, converges and waits
 *      in pre-switchover (its MIGRATION event), where precopy-pause.ts takes over.
 * Why the round watches QEMU instead of lasting a fixed 25 ms (the code before): QEMU 7.2 rate-
 * limits in 100 ms windows and, its window's quota at the hold spent, sleeps until the window
 * ends; raising max-bandwidth does not wake it. A fixed 25 ms round mostly ended before QEMU
 * woke, so the pause held that wait (0-100 ms) and the set dirtied since the hold's last sync,
 * 0.3-1.5 s ago, both with the VM stopped. Watched, the round lasts until QEMU woke, sent the set
 * and synced with the VM running, and the pause holds what was dirtied during its last pass.
 * The price: the cut comes later after the commit (up to round.maxMs), by as much more on one VM
 * than another. Without a progress source (round.progress) the round is a fixed round.maxMs.
 * Waiting for QEMU to converge by itself with no bound (the code before the cut at the commit)
 * put each VM's cut 0.1–2 s after the commit on a loaded machine.
 * A pre-copy held by its reads (read-pacer.ts, `lifted`): QEMU's max-bandwidth is unlimited
 * already and its thread is blocked in its write, not asleep in a rate-limit window, so the
 * round is not watched: the socket is read at full speed from the commit, `stop` after a fixed
 * READ_PACED_ROUND_MS (the same on every VM, so the VMs' STOPs are the commit's receipt + that
 * + a QMP round trip; a VM whose QEMU converges by itself in the round stops earlier), with no
 * QMP command before it; downtime-limit stays 1 ms (the stopped VM converges once its set is sent).
 * A cut instant (Switchover.stopAt, the commit's SnapshotCommit.cut_at_unix_us handed down by the
 * agent: driver.ts CutInstant): the round starts at the commit's receipt as above, but `stop` is
 * written at the instant itself, on every VM of the VNE at once, whether QEMU's round was done
 * before it (finalRoundDone: the polls end there, QEMU goes on sending pass after pass at full
 * speed, the VM running, until the instant) or not (`stop` at the instant all the same, the rest
 * sent with the VM stopped). downtime-limit stays 1 ms through such a round (not cutDowntimeMs):
 * QEMU's threshold is its last 100 ms window's bandwidth × the limit, so it converges by itself
 * only when a sync finds less than a millisecond's worth of sending dirty, which ends a round
 * early (its STOP before the instant) less often than at 30 ms; and once the round is done the
 * stream is not read until the `stop` is written (Switchover.freeze): QEMU, its set sent down to
 * leftBytes, blocks in its write once the socket's buffer is full instead of passing on to the
 * back-to-back syncs whose first that finds under a millisecond's worth dirty converges (a round
 * done with less left than the socket's buffer can still converge). An instant already past
 * at the lift (a late commit) runs the watched round as without one. So the VMs' `stop`s are
 * written together and each pause holds what its guest dirtied in QEMU's last pass (docs/qemu.md
 * "The pre-copy cut at the commit's instant").
 * A stopped VM always converges (its dirty set only shrinks); should QEMU not reach
 * pre-switchover within escalateMs all the same, downtime-limit is raised ×4 (QEMU's threshold
 * is its measured bandwidth × the limit), up to 60 s.
 *
 * Guarantees: `stop` is sent round.maxMs after the lift was sent (held by reads: after the
 * round started; with a cut instant still ahead at the lift: at the instant, not before) at the
 * latest (as the event
 * loop's timers allow; a query-migrate that outlasts the round ends it); resolves once QEMU is
 * in pre-switchover (the VM stopped, the final pass not sent); `stopped` is called once, as soon
 * as the VM is known to be stopped (ours or QEMU's); rejects when the migration ends or fails
 * before the switchover (the caller cancels and resumes: its `stoppedByUs` says whether `stop`
 * was sent).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { VnsnapError } from '../../../proto/core/errors';
import type { Logger } from '../../../proto/core/log';
import { UNLIMITED_BANDWIDTH } from './precopy-hold';
import { MiB } from './process';
import type { QmpClient, QmpEvent } from './qmp';

/** The final round with the VM running, from the bandwidth's lift to `stop`. */
export interface FinalRound {
  /** The longest round (ms): `stop` then, whatever QEMU did. */
  maxMs: number;
  /** query-migrate this often during the round (ms). */
  pollMs: number;
  /** The round ends once QEMU synced after the lift and at most this much remains (bytes). */
  leftBytes: number;
}

export const FINAL_ROUND: FinalRound = { maxMs: 200, pollMs: 5, leftBytes: 1 * MiB };

/** downtime-limit (ms) through a round that ends at a cut instant: QEMU's own threshold as at the hold. */
export const INSTANT_DOWNTIME_MS = 1;

/**
 * A round to a cut instant, done and frozen before it, is read again this long (ms) before the
 * instant (THAW_ENV), so that QEMU sends the rest of its pass with the VM still running; 0 (the
 * default): read again right behind the `stop`. QEMU may converge by itself in that time (its
 * STOP at most this much before the instant).
 */
export const THAW_ENV = 'VNSNAP_QEMU_THAW_MS';

/** THAW_ENV as ms (a whole number ≥ 0; unset or empty: 0). ERR_CONFIG otherwise. */
export function thawMs(env: string | undefined = process.env[THAW_ENV]): number {
  if (env === undefined || env === '') return 0;
  const n = Number(env);
  if (!Number.isInteger(n) || n < 0) throw new VnsnapError('ERR_CONFIG', `${THAW_ENV}: expected a whole number of ms ≥ 0, got ${JSON.stringify(env)}`);
  return n;
}

/**
 * How the round of a cut ends (ms from the lift): `instant`: `stop` at the cut instant
 * `stopAt` (performance.now() ms) whatever QEMU's progress; `watched`: at finalRoundDone or the
 * round's bound, no instant or one already past at the lift (`now`).
 */
export function roundEnd(stopAt: number | undefined, now: number): { how: 'instant'; inMs: number } | { how: 'watched' } {
  if (stopAt === undefined || !(stopAt > now)) return { how: 'watched' };
  return { how: 'instant', inMs: stopAt - now };
}

/**
 * The round of a pre-copy held by its reads (read-pacer.ts), in ms: QEMU is awake (blocked in its
 * write, its max-bandwidth unlimited already), so from the commit it sends at full speed at once;
 * every VM runs this fixed round and is stopped at its end, so the VMs' cut instants are the
 * commit's receipt + this + one QMP round trip (or earlier, QEMU converging by itself in the
 * round). 0: `stop` at the commit, everything left sent with the VM stopped.
 */
export const READ_PACED_ROUND_MS = 30;

/** Sets the read-paced round's length (ms, a whole number ≥ 0), for measuring one against another. */
export const CUT_ROUND_ENV = 'VNSNAP_QEMU_CUT_ROUND_MS';

/** The read-paced pre-copy's round: READ_PACED_ROUND_MS or CUT_ROUND_ENV, no progress watched. */
export function readPacedRound(env: string | undefined = process.env[CUT_ROUND_ENV]): FinalRound {
  let maxMs = READ_PACED_ROUND_MS;
  if (env !== undefined && env !== '') {
    maxMs = Number(env);
    if (!Number.isInteger(maxMs) || maxMs < 0) throw new VnsnapError('ERR_CONFIG', `${CUT_ROUND_ENV}: expected a whole number of ms ≥ 0, got ${JSON.stringify(env)}`);
  }
  return { ...FINAL_ROUND, maxMs };
}

/** One query-migrate of the round: QEMU's dirty-bitmap syncs so far and the bytes still dirty. */
export interface RoundProgress {
  sync: number;
  remaining: number;
}

/** The round is done: QEMU synced after the lift (at sync0) and sent the set down to leftBytes, or synced twice. */
export function finalRoundDone(sync0: number, p: RoundProgress, leftBytes: number): boolean {
  return p.sync >= sync0 + 2 || (p.sync > sync0 && p.remaining <= leftBytes);
}

/** How the round ended, for the cut's log line. */
export interface RoundOutcome {
  /** 'converged': QEMU stopped the VM itself; 'synced': finalRoundDone(); 'cap': round.maxMs; 'fixed': no progress source; 'instant': the cut instant. */
  how: 'converged' | 'synced' | 'cap' | 'fixed' | 'instant';
  ms: number;
  /** A round to a cut instant: when finalRoundDone() was seen (ms from the lift; undefined: not before the end). */
  doneMs?: number;
  /** QEMU's syncs during the round and the bytes dirty at its last poll (undefined: not polled). */
  syncs?: number;
  remaining?: number;
}

export interface Switchover {
  q: QmpClient;
  vm: string;
  log: Logger;
  cutDowntimeMs: number;
  escalateMs: number;
  /** Resolves with QEMU's pre-switchover MIGRATION event (at once if it came already). */
  preSwitchover: Promise<QmpEvent>;
  /** The migration's end: anything before the switchover is a failure. */
  ended: Promise<void>;
  /** The VM is stopped from now on (called once). */
  stopped: () => void;
  mark: (step: string) => void;
  /** max-bandwidth is unlimited already (the read-paced hold): no lift, `downtime-limit` stays until the stop. */
  lifted?: boolean;
  /** QEMU's progress (query-migrate) for a watched final round; none: a fixed round. */
  progress?: () => Promise<RoundProgress>;
  /** The commit's cut instant (performance.now() ms): `stop` then (see the module comment). */
  stopAt?: number;
  /** A frozen round is read again this long before stopAt (thawMs()); default 0. */
  thawMs?: number;
  /**
   * A round to a cut instant done before it: the stream is no longer read (QEMU blocks in its
   * write, no sync, no convergence) until thaw(), which comes right behind the `stop` (and on
   * every way out). Optional: without it QEMU goes on iterating and may converge by itself.
   */
  freeze?: () => void;
  thaw?: () => void;
  /** Set when `stop` was sent (the caller resumes the VM on failure). */
  stoppedByUs?: boolean;
  /** performance.now() as `stop` was written. */
  stopWrittenAt?: number;
  /** Set when the final round ended. */
  round?: RoundOutcome;
}

/** A promise that never settles: race() with nothing of its own to wait for. */
const NEVER = new Promise<never>(() => undefined);

/** From the commit to QEMU in pre-switchover with the VM stopped (see the module comment). */
export async function reachSwitchover(s: Switchover, round: FinalRound = FINAL_ROUND): Promise<void> {
  const q = s.q;
  const stop = q.prepare('stop');
  let isStopped = false;
  const stopped = (): void => {
    if (isStopped) return;
    isStopped = true;
    s.stopped();
  };
  const paused = s.preSwitchover.then(() => {
    stopped();
    return 'paused' as const;
  });
  const ended = s.ended.then(() => {
    throw new VnsnapError('ERR_DRIVER', `migration of ${s.vm} ended before the switchover`);
  });
  ended.catch(() => undefined);
  const race = <T>(x: Promise<T>, ms: number): Promise<T | 'paused' | 'late'> => Promise.race([paused, ended, x, sleep(ms).then(() => 'late' as const)]);
  const wait = (ms: number): Promise<'paused' | 'late'> => race(NEVER, ms);
  const t0 = performance.now();
  const end = roundEnd(s.stopAt, t0);
  let downtime = end.how === 'instant' ? INSTANT_DOWNTIME_MS : s.cutDowntimeMs;
  if (!s.lifted) await q.execute('migrate-set-parameters', { 'max-bandwidth': UNLIMITED_BANDWIDTH, 'downtime-limit': downtime });
  let outcome: RoundOutcome;
  try {
    outcome = end.how === 'instant' ? await instantRound(s, round, { wait, race }, t0, t0 + end.inMs) : await finalRound(s, round, { wait, race }, t0);
  } catch (e) {
    s.thaw?.();
    throw e;
  }
  s.round = outcome;
  if (outcome.how === 'converged') {
    s.thaw?.();
    return;
  }
  s.stoppedByUs = true;
  s.stopWrittenAt = performance.now();
  const stopReply = stop.send();
  s.thaw?.(); // the stop is written: QEMU sends the rest with the VM stopping
  await stopReply;
  stopped();
  s.mark('stop');
  while ((await wait(s.escalateMs)) !== 'paused') {
    downtime = Math.min(60_000, downtime * 4);
    s.log.info({ downtime }, 'stopped, no switchover yet: raising downtime-limit');
    await q.execute('migrate-set-parameters', { 'downtime-limit': downtime });
  }
}

/** Waits that end early at QEMU's pre-switchover ('paused') and reject when the migration ends. */
interface RoundWaits {
  wait: (ms: number) => Promise<'paused' | 'late'>;
  race: <T>(x: Promise<T>, ms: number) => Promise<T | 'paused' | 'late'>;
}

/** The final round, the VM running: until QEMU synced and sent the set (finalRoundDone), converged by itself, or round.maxMs. */
async function finalRound(s: Switchover, round: FinalRound, w: RoundWaits, t0: number): Promise<RoundOutcome> {
  const ms = (): number => Math.round(performance.now() - t0);
  const left = (): number => Math.max(0, t0 + round.maxMs - performance.now());
  const progress = s.progress;
  if (!progress && round.maxMs <= 0) return { how: 'fixed', ms: 0 };
  if (!progress) return { how: (await w.wait(round.maxMs)) === 'paused' ? 'converged' : 'fixed', ms: ms() };
  const r = await pollRound(progress, round, w, left);
  if (r.end === 'paused') return { how: 'converged', ms: ms() };
  if (r.end === 'done') {
    s.mark('round-synced');
    return { how: 'synced', ms: ms(), syncs: r.syncs, remaining: r.remaining };
  }
  return { how: r.polled ? 'cap' : 'fixed', ms: ms(), syncs: r.syncs, remaining: r.remaining };
}

/** How pollRound() ended; whether QEMU answered a poll, its syncs since the first answer and the bytes dirty at the last. */
interface Polled {
  end: 'done' | 'paused' | 'late';
  polled?: boolean;
  syncs?: number;
  remaining?: number;
}

/**
 * QEMU's progress every round.pollMs until finalRoundDone() ('done'), QEMU's own convergence
 * ('paused') or the time `left()` runs out ('late'). A query-migrate that fails counts as none; one
 * that outlasts the time left ends it.
 */
async function pollRound(progress: () => Promise<RoundProgress>, round: FinalRound, w: RoundWaits, left: () => number): Promise<Polled> {
  let first: RoundProgress | undefined; // at the lift: the syncs before it
  let last: RoundProgress | undefined;
  const ended = (end: Polled['end']): Polled => (first && last ? { end, polled: true, syncs: last.sync - first.sync, remaining: last.remaining } : { end });
  while (left() > 0) {
    const p = await w.race(progress().catch(() => undefined), left());
    if (p === 'paused') return ended('paused');
    if (p === 'late') break;
    if (p) {
      first ??= p;
      last = p;
      if (finalRoundDone(first.sync, p, round.leftBytes)) return ended('done');
    }
    if ((await w.wait(Math.min(round.pollMs, left()))) === 'paused') return ended('paused');
  }
  return ended('late');
}

/**
 * The round to a cut instant `at` (performance.now() ms), the VM running: QEMU's progress watched
 * as in finalRound() until finalRoundDone(), then the stream frozen (s.freeze) and nothing but the
 * wait; ends at the instant, or earlier when QEMU converged by itself.
 */
async function instantRound(s: Switchover, round: FinalRound, w: RoundWaits, t0: number, at: number): Promise<RoundOutcome> {
  const ms = (): number => Math.round(performance.now() - t0);
  const left = (): number => Math.max(0, at - performance.now());
  const r: Polled = s.progress ? await pollRound(s.progress, round, w, left) : { end: 'late' };
  if (r.end === 'paused') return { how: 'converged', ms: ms() };
  let doneMs: number | undefined;
  if (r.end === 'done') {
    doneMs = ms();
    s.freeze?.();
    s.mark('round-synced');
  }
  const thawAt = at - (s.thawMs ?? 0);
  if (doneMs !== undefined && thawAt < at && performance.now() < thawAt) {
    if ((await w.wait(thawAt - performance.now())) === 'paused') return { how: 'converged', ms: ms(), doneMs };
    s.thaw?.(); // QEMU sends the rest of its pass, the VM running, until the stop
  }
  if (left() > 0 && (await w.wait(left())) === 'paused') return { how: 'converged', ms: ms(), doneMs };
  return { how: 'instant', ms: ms(), doneMs, syncs: r.syncs, remaining: r.remaining };
}
