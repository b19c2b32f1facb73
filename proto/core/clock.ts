/**
 * Time for every vnsnap program, in one place.
 *
 * `Clock` is injected wherever a timeout or a deadline decides an outcome (the coordinator's
 * sequencers and agent registry, the agent's session, command dispatch and snapshot/restore
 * runners), so those are testable: `systemClock` in production, `ManualClock` (time moves only
 * when the test advances it, timers fire in due order) in unit tests.
 *
 * `nowUs()` is the one source of the microsecond instants drivers record (pause/resume/cut
 * times, phase timings): wall-clock based, monotonic within a process, comparable across hosts.
 */

export type TimerHandle = { readonly id: number };

export interface Clock {
  /** Wall-clock milliseconds since the Unix epoch. */
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(h: TimerHandle | undefined): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref?.();
    return t as unknown as TimerHandle;
  },
  clearTimeout(h) {
    if (h) clearTimeout(h as unknown as NodeJS.Timeout);
  },
};

/** A clock that moves only when told to: timers fire in due order during advance(). */
export class ManualClock implements Clock {
  private t: number;
  private nextId = 1;
  private readonly timers = new Map<number, { due: number; fn: () => void }>();

  constructor(start = 1_800_000_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = this.nextId++;
    this.timers.set(id, { due: this.t + Math.max(0, ms), fn });
    return { id };
  }

  clearTimeout(h: TimerHandle | undefined): void {
    if (h) this.timers.delete(h.id);
  }

  /** Timers still pending. */
  get pending(): number {
    return this.timers.size;
  }

  /** Move time forward by ms, firing every timer that falls due, earliest first. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let best: [number, { due: number; fn: () => void }] | undefined;
      for (const e of this.timers) if (e[1].due <= end && (!best || e[1].due < best[1].due || (e[1].due === best[1].due && e[0] < best[0]))) best = e;
      if (!best) break;
      this.timers.delete(best[0]);
      this.t = Math.max(this.t, best[1].due);
      best[1].fn();
    }
    this.t = end;
  }
}

/**
 * Wall-clock microseconds since the Unix epoch, from the monotonic clock (performance.now over
 * timeOrigin): cut and resume instants that are compared across hosts and ordered within one.
 */
export function nowUs(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/** Milliseconds of a monotonic clock since `t0` (process.hrtime.bigint()): a duration for profiles, not an instant. */
export const msSince = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;
