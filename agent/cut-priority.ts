/**
 * The agent's event-loop thread at a raised scheduling priority for its part of a background
 * cut: from the snapshot's begin (snapshot-runner.ts) until the agent's part of its VMs' pauses
 * is done (the last VM's drain, after which its `migrate` is written), bounded. A VM's pause
 * contains the agent's reaction to QEMU's STOP (the drain, then `migrate`): on a host whose
 * cores are busy with guests, a woken agent at the default priority waited for a core (the cut
 * traces' loop stalls of 5-40 ms around the STOP, 85-90 % of them run-queue wait), and every
 * such wait lengthens the pause. A nice value does not help where the kernel groups tasks by
 * session (kernel.sched_autogroup_enabled=1): it weighs the thread against its own session only,
 * not against the guests' vCPUs in theirs (docs/performance.md, "QEMU's pause at SCHED_FIFO").
 * So the thread runs at SCHED_FIFO CUT_FIFO_PRIORITY, below QEMU's own pause boost
 * (pause-boost.ts: QEMU's part of the pause goes first), set through the agent's `chrt` shell
 * (one pipe write; no fork of the agent on its loop) with SCHED_RESET_ON_FORK, so a process or
 * thread the agent starts in the window does not inherit it. The raise is asked for at the
 * begin so that it is in place when the commit and the STOP arrive (a raise asked for at the
 * commit landed a few ms late, in the pause); the thread also gets nice CUT_NICE at once, all a
 * host without the permission for a realtime policy allows. A snapshot job that does heavy work
 * on this loop with its VM running before its stop (tracked memory's rounds: SnapshotJob
 * ownCutWindow) takes the window itself, from right before its `stop` to its drain, and the
 * agent takes none for it at the begin: at a realtime policy that work kept both agents of a
 * 2-core host on their cores for up to the kernel's realtime throttling (snapshot-runner.ts
 * agentWindow()). With a cut instant the runner raises the loop for such jobs 30 ms before it
 * (after their rounds, by their schedule: snapshot-runner.ts raiseBeforeInstant): at the default
 * policy the loop waited for a core for up to 0.45 s at the instant, while the other agent's
 * boosted pauses held both, and began its cuts that late.
 *
 * Guarantees: only the event-loop thread is raised (the libuv pool and the hashing workers keep
 * theirs), and only while a hold is taken; holds nest (two VNEs snapshotting at once), and the
 * last release puts back what the first hold found: SCHED_OTHER (asked for after the raise's own
 * `chrt` answered, never before it, which would leave the raise in place) and the nice value.
 * Every hold ends at its release or when its bound (CUT_WINDOW_BOUND_MS) runs out, whichever
 * comes first: a commit that never comes, or a cut that never ends, cannot leave the agent
 * realtime — its dataplane work runs on the same loop. A thread that is not SCHED_OTHER at the
 * first hold (an operator's own tuning) keeps its policy. Where raising is not permitted (no
 * CAP_SYS_NICE, no `chrt`) nothing changes and no error is raised: the priority is an
 * optimisation, never a condition of the cut. VNSNAP_AGENT_CUT_REALTIME=0 leaves the realtime
 * policy out (the nice value only). windowStats() says how long the last window lasted and
 * how much of it the thread ran (what the agent took from the guests at a realtime policy).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { runChrt, SCHED_OTHER, threadPolicy, type Chrt } from './drivers/qemu/pause-boost';

/** The nice value of the agent's event-loop thread during a cut (-20 highest … 19 lowest). */
export const CUT_NICE = -10;
/** SCHED_FIFO priority of the event-loop thread in the window: below QEMU's pause boost (10). */
export const CUT_FIFO_PRIORITY = 5;
/**
 * SCHED_FIFO priority of the work inside a tracked VM's pause that is not its QEMU's main
 * thread: the stopped round's read and the paused QEMU's other threads. One above the event
 * loops' windows (a raised loop, this agent's or another's, must not hold the core the pause is
 * waiting for: equal FIFO priorities do not preempt each other), below QEMU's main thread's boost.
 */
export const STOPPED_READ_FIFO_PRIORITY = CUT_FIFO_PRIORITY + 1;
/** The longest one hold keeps the thread raised when nothing releases it first. */
export const CUT_WINDOW_BOUND_MS = 5000;
/** Set to 0 to raise the event loop by its nice value only. */
export const CUT_REALTIME_ENV = 'VNSNAP_AGENT_CUT_REALTIME';

/** What the last ended window cost: its length, and the loop thread's CPU and run-queue time in it. */
export interface CutWindowStats {
  realtime: boolean;
  heldMs: number;
  ranMs: number;
  waitedMs: number;
}

export interface CutPriorityOptions {
  nice?: number;
  priority?: number;
  boundMs?: number;
  /** Default: VNSNAP_AGENT_CUT_REALTIME is not 0. */
  realtime?: boolean;
  chrt?: Chrt;
  /** The event-loop thread's policy (default: /proc). */
  policy?: () => number;
  /** The thread's CPU and run-queue time in ns (default: /proc/thread-self/schedstat). */
  schedstat?: () => [number, number];
  now?: () => number;
}

/** The window in place: what the first hold found and asked for. */
interface Window {
  restoreNice?: number;
  /** The raise's `chrt`, resolving true once the thread is at SCHED_FIFO. */
  raised?: Promise<boolean>;
  chrt: Chrt;
  since: number;
  stat: [number, number];
  now: () => number;
  schedstat: () => [number, number];
}

let holds = 0;
let window: Window | undefined;
let last: CutWindowStats | undefined;
/** The windows' `chrt` requests, one after the other (a restore before the next raise). */
let chain: Promise<unknown> = Promise.resolve();

function threadSchedstat(): [number, number] {
  try {
    const [ran, waited] = fs.readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ');
    return [Number(ran), Number(waited)];
  } catch {
    return [0, 0];
  }
}

export function cutRealtimeEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env[CUT_REALTIME_ENV] !== '0';
}

/** STOPPED_READ_FIFO_PRIORITY for work inside a pause (a thread of the addon's), undefined when realtime is off (CUT_REALTIME_ENV=0). */
export function stoppedReadPriority(env: NodeJS.ProcessEnv = process.env): number | undefined {
  return cutRealtimeEnabled(env) ? STOPPED_READ_FIFO_PRIORITY : undefined;
}

function open(o: CutPriorityOptions): Window {
  const now = o.now ?? ((): number => performance.now());
  const schedstat = o.schedstat ?? threadSchedstat;
  const w: Window = { chrt: o.chrt ?? runChrt, since: now(), stat: schedstat(), now, schedstat };
  const nice = o.nice ?? CUT_NICE;
  try {
    const before = os.getPriority(0);
    if (before > nice) {
      os.setPriority(0, nice);
      w.restoreNice = before;
    }
  } catch {
    /* not permitted: the nice value stays */
  }
  if (!(o.realtime ?? cutRealtimeEnabled())) return w;
  try {
    if ((o.policy ?? ((): number => threadPolicy(process.pid)))() !== SCHED_OTHER) return w;
  } catch {
    return w;
  }
  // The event loop's thread id is the process id; the `chrt` is not waited for (but follows
  // the previous window's restore, so that one cannot land after it).
  const args = ['--fifo', '--reset-on-fork', '--pid', String(o.priority ?? CUT_FIFO_PRIORITY), String(process.pid)];
  w.raised = chain.then(() => w.chrt(args)).then(
    () => true,
    () => false,
  );
  chain = w.raised;
  return w;
}

function close(w: Window): void {
  const [ran, waited] = w.schedstat();
  last = { realtime: w.raised !== undefined, heldMs: w.now() - w.since, ranMs: (ran - w.stat[0]) / 1e6, waitedMs: (waited - w.stat[1]) / 1e6 };
  if (w.restoreNice !== undefined) {
    try {
      os.setPriority(0, w.restoreNice);
    } catch {
      /* lowering one's own priority is always permitted */
    }
  }
  if (!w.raised) return;
  chain = w.raised.then((ok) => {
    if (!ok) return;
    const back = (): Promise<void> => w.chrt(['--other', '--pid', '0', String(process.pid)]);
    // Once more after a failure (a shell killed for not answering is started again).
    return back()
      .catch(back)
      .catch(() => undefined);
  });
}

/**
 * Raise the event loop's priority (see the module comment) until the returned function is
 * called (idempotent) or the hold's bound runs out.
 */
export function raiseCutPriority(o: CutPriorityOptions = {}): () => void {
  if (holds++ === 0) window = open(o);
  let released = false;
  const release = (): void => {
    if (released) return;
    released = true;
    clearTimeout(bound);
    if (--holds > 0 || !window) return;
    const w = window;
    window = undefined;
    close(w);
  };
  const bound = setTimeout(release, o.boundMs ?? CUT_WINDOW_BOUND_MS);
  bound.unref();
  return release;
}

/** Holds taken and not released (0 outside a window). */
export function cutPriorityHolds(): number {
  return holds;
}

/** The last window that ended (undefined before the first). */
export function windowStats(): CutWindowStats | undefined {
  return last;
}

/** Resolves once every `chrt` asked for so far (raises and restores) has answered. */
export function cutPrioritySettled(): Promise<void> {
  return chain.then(() => undefined);
}
