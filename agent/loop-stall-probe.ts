/**
 * A timestamp probe of the agent's event loop during a snapshot's cuts: a chain of 1 ms timers
 * whose ticks should follow each other about 1 ms apart; every gap longer than that is time the
 * loop spent elsewhere (a dataplane batch, a synchronous write, a JSON parse, a GC pause) while
 * a VM's cut may have been waiting for its turn. Unlike monitorEventLoopDelay it says *when*:
 * each stall is an interval of wall-clock time, drawn as the VM's PHASE_LOOP_STALL.
 *
 *   const p = LoopStallProbe.start();  ... p.longest(fromUs, toUs) ... p.stop();
 *
 * longest(from, to) is the longest stall overlapping [from, to], clipped to nothing: the gap as
 * observed (its start is the last tick before it, its end the tick after). The gap still open
 * when it is asked (the loop is running the caller) counts up to now. The probe holds no
 * reference to the process (unref'd timers) and stops itself after maxMs.
 */
import { nowUs } from '../proto/core/clock';

export interface Stall {
  startUnixUs: number;
  endUnixUs: number;
}

/** Gaps shorter than this (the timer's own granularity) are not stalls. */
const MIN_STALL_US = 2000;

export class LoopStallProbe {
  private readonly stalls: Stall[] = [];
  private last: number;
  private timer: NodeJS.Timeout | undefined;
  private readonly stopAt: number;

  private constructor(
    private readonly now: () => number,
    maxMs: number,
  ) {
    this.last = now();
    this.stopAt = this.last + maxMs * 1000;
    this.arm();
  }

  /** Start probing (stops by itself after maxMs, default 120 s). */
  static start(opts: { now?: () => number; maxMs?: number } = {}): LoopStallProbe {
    return new LoopStallProbe(opts.now ?? nowUs, opts.maxMs ?? 120_000);
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
    if (t - this.last >= MIN_STALL_US) this.stalls.push({ startUnixUs: this.last, endUnixUs: t });
    this.last = t;
  }

  /** The longest stall overlapping [fromUs, toUs] (the one still open counts up to now), if any. */
  longest(fromUs: number, toUs: number): Stall | undefined {
    const open = this.timer ? { startUnixUs: this.last, endUnixUs: this.now() } : undefined;
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
  }
}
