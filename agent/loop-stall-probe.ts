/**
 * A timestamp probe of the agent's event loop during a snapshot's cuts: a chain of 1 ms timers
 * whose ticks should follow each other about 1 ms apart; every gap longer than that is time the
 * loop spent elsewhere (a dataplane batch, a synchronous write, a JSON parse, a GC pause) while
 * a VM's cut may have been waiting for its turn. Unlike monitorEventLoopDelay it says *when*:
 * each stall is an interval of wall-clock time, drawn as the VM's PHASE_LOOP_STALL.
 *
 *   const p = LoopStallProbe.start({ fromUs });  ... p.longest(fromUs, toUs) ... p.stop();
 *
 * longest(from, to) is the longest stall overlapping [from, to], clipped to nothing: the gap as
 * observed (its start is the last tick before it, its end the tick after). The gap still open
 * when it is asked (the loop is running the caller) counts up to now. The probe holds no
 * reference to the process (unref'd timers) and stops itself after maxMs.
 *
 * Its window: from `fromUs` (default: the start), so that it ticks only where a stall matters.
 * Why: every tick is a wake-up of the loop's thread (a bare 1 ms timer chain measured at 30–50 µs
 * of CPU per tick on this project's 2-CPU VMs, ~4 % of a core, less where the loop is awake
 * anyway), and a tracked snapshot's commit arrives ≥ 300 ms before its cut instant: probing from
 * the receipt, main's agents spent 4.7 ms per snapshot in the probe's JavaScript alone (perf),
 * most of it before the window (docs/performance.md, "The loop stall probe's window…"). A start
 * in the future is one timer; the first gap is measured from `fromUs` itself, so a stall already
 * under way then (the timer fires late) is seen, clipped to the window's start. Before it
 * nothing is seen.
 *
 * With `causes` (the agent's runner; not with a test's clock) it also says what a stall was:
 * each stall carries `runqueueUs`, the time the loop's thread waited for a CPU in it (its
 * /proc/thread-self/schedstat run-queue delay: the thread was runnable but not running — other
 * threads, a realtime one above all, had the cores), and gcs(from, to) lists V8's collections of
 * 1 ms or more in the interval (a PerformanceObserver's 'gc' entries, wall-clock). A stall that
 * is neither is the loop's own work. The causes cost one pread of schedstat a tick.
 */
import * as fs from 'node:fs';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { nowUs } from '../proto/core/clock';

export interface Stall {
  startUnixUs: number;
  endUnixUs: number;
  /** With causes: µs of the stall the loop's thread waited on a CPU's run queue. */
  runqueueUs?: number;
}

/** A collection of V8's, wall-clock µs. */
export interface GcSpan {
  startUnixUs: number;
  endUnixUs: number;
}

/** GCs shorter than this are not listed. */
const MIN_GC_US = 1000;

/** The calling thread's cumulative run-queue delay (ns) from its schedstat, read through fd; undefined when unreadable. */
function runqueueNs(fd: number, buf: Buffer): number | undefined {
  try {
    const n = fs.readSync(fd, buf, 0, buf.length, 0);
    const wait = Number(buf.toString('latin1', 0, n).split(' ')[1]);
    return Number.isFinite(wait) ? wait : undefined;
  } catch {
    return undefined;
  }
}

/** Gaps shorter than this (the timer's own granularity) are not stalls. */
const MIN_STALL_US = 2000;

export class LoopStallProbe {
  private readonly stalls: Stall[] = [];
  /** The last tick (µs); until the window opens, its start. */
  private last: number;
  private timer: NodeJS.Timeout | undefined;
  /** The window has opened (the ticks run). */
  private ticking = false;
  private readonly stopAt: number;
  /** With causes: schedstat's descriptor, the run-queue delay (ns) at the last tick, the GCs seen. */
  private schedFd = -1;
  private readonly schedBuf = Buffer.alloc(96);
  private lastWaitNs: number | undefined;
  private gcObserver: PerformanceObserver | undefined;
  private readonly gcSpans: GcSpan[] = [];

  private constructor(
    private readonly now: () => number,
    maxMs: number,
    causes: boolean,
    fromUs: number | undefined,
  ) {
    if (causes) this.watchCauses();
    const t = now();
    this.stopAt = t + maxMs * 1000;
    const waitMs = fromUs === undefined ? 0 : Math.min((fromUs - t) / 1000, maxMs);
    if (waitMs >= 1) {
      // The window opens later: one timer, then the first gap from the window's start.
      this.last = fromUs as number;
      this.timer = setTimeout(() => this.open(), Math.floor(waitMs));
      this.timer.unref();
    } else {
      this.last = t;
      this.ticking = true;
      this.arm();
    }
  }

  /**
   * Start probing (stops by itself after maxMs, default 120 s), from `fromUs` (this clock's µs;
   * default and any instant already past: now); `causes`: see the module comment.
   */
  static start(opts: { now?: () => number; maxMs?: number; causes?: boolean; fromUs?: number } = {}): LoopStallProbe {
    return new LoopStallProbe(opts.now ?? nowUs, opts.maxMs ?? 120_000, opts.causes ?? false, opts.fromUs);
  }

  /** The window opens: a gap since its start is a stall (the timer fired late), then the ticks. */
  private open(): void {
    this.ticking = true;
    // No run-queue wait for a gap begun before the window: its schedstat was not read then.
    this.lastWaitNs = undefined;
    this.tick();
  }

  private watchCauses(): void {
    try {
      this.schedFd = fs.openSync('/proc/thread-self/schedstat', 'r');
      this.lastWaitNs = runqueueNs(this.schedFd, this.schedBuf);
    } catch {
      this.schedFd = -1; // no schedstats here: stalls without runqueueUs
    }
    const origin = performance.timeOrigin;
    this.gcObserver = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        if (e.duration * 1000 < MIN_GC_US) continue;
        const start = Math.round((origin + e.startTime) * 1000);
        this.gcSpans.push({ startUnixUs: start, endUnixUs: start + Math.round(e.duration * 1000) });
      }
    });
    this.gcObserver.observe({ entryTypes: ['gc'] });
  }

  /** V8's collections of 1 ms or more overlapping [fromUs, toUs] (with causes; those delivered so far). */
  gcs(fromUs: number, toUs: number): GcSpan[] {
    return this.gcSpans.filter((g) => g.endUnixUs > fromUs && g.startUnixUs < toUs);
  }

  /** The stall still open at `t` (the loop is running its caller: a stall ending then), if any. */
  openAt(t: number): Stall | undefined {
    return this.timer && this.ticking && t - this.last >= MIN_STALL_US ? { startUnixUs: this.last, endUnixUs: t } : undefined;
  }

  private arm(): void {
    this.timer = setTimeout(() => this.tick(), 1);
    this.timer.unref();
  }

  private tick(): void {
    const t = this.now();
    this.note(t);
    if (t < this.stopAt) this.arm();
    else this.timer = undefined;
  }

  private note(t: number): void {
    const wait = this.schedFd >= 0 ? runqueueNs(this.schedFd, this.schedBuf) : undefined;
    if (t - this.last >= MIN_STALL_US) {
      const stall: Stall = { startUnixUs: this.last, endUnixUs: t };
      if (wait !== undefined && this.lastWaitNs !== undefined) stall.runqueueUs = Math.round((wait - this.lastWaitNs) / 1000);
      this.stalls.push(stall);
    }
    this.last = t;
    this.lastWaitNs = wait;
  }

  /** The stall that contains instant t (ended, or still open), if any. */
  around(t: number): Stall | undefined {
    return this.stalls.find((s) => s.startUnixUs <= t && t <= s.endUnixUs) ?? this.openAt(t);
  }

  /** The longest stall overlapping [fromUs, toUs] (the one still open counts up to now), if any. */
  longest(fromUs: number, toUs: number): Stall | undefined {
    const open = this.timer && this.ticking ? { startUnixUs: this.last, endUnixUs: this.now() } : undefined;
    let best: Stall | undefined;
    for (const s of open && open.endUnixUs - open.startUnixUs >= MIN_STALL_US ? [...this.stalls, open] : this.stalls) {
      if (s.endUnixUs <= fromUs || s.startUnixUs >= toUs) continue;
      if (!best || s.endUnixUs - s.startUnixUs > best.endUnixUs - best.startUnixUs) best = s;
    }
    return best;
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.gcObserver?.disconnect();
    this.gcObserver = undefined;
    if (this.schedFd >= 0) fs.closeSync(this.schedFd);
    this.schedFd = -1;
  }
}
