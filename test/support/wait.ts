/**
 * The one waiting helper of the test suite: `sleep` (only where time itself is what a test is
 * about, never as synchronisation), `until` (poll a condition until it holds, with a message
 * that names what was awaited), and `once` (await an event of an emitter, bounded in time).
 *
 * Prefer awaiting an event or a counter the code exposes (`once`, a promise the code returns)
 * over polling; `until` is for state that has no event. Every wait is bounded: a timeout throws
 * an Error naming the thing awaited and the last error seen, so a failing test says why.
 */
import type { EventEmitter } from 'node:events';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Thrown from an `until` callback to stop waiting at once (e.g. the process awaited has exited). */
export class FatalWait extends Error {}

export interface UntilOptions {
  /** Give up after this many ms (default 10 s). */
  timeoutMs?: number;
  /** Poll every this many ms (default 20). */
  everyMs?: number;
}

/**
 * Poll `f` until it returns a truthy value, which is returned. Errors thrown by `f` are retried
 * (the last one is quoted on timeout), except FatalWait, which is rethrown at once.
 */
export async function until<T>(what: string, f: () => Promise<T> | T, opts: UntilOptions | number = {}): Promise<NonNullable<T>> {
  const o = typeof opts === 'number' ? { timeoutMs: opts } : opts;
  const timeoutMs = o.timeoutMs ?? 10_000;
  const everyMs = o.everyMs ?? 20;
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v) return v as NonNullable<T>;
      last = undefined;
    } catch (e) {
      if (e instanceof FatalWait) throw e;
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last instanceof Error ? `: ${last.message}` : ''}`);
    await sleep(everyMs);
  }
}

/** Resolve with the arguments of the next `event` of `em`, or reject after timeoutMs. */
export function once(em: EventEmitter, event: string, what: string, timeoutMs = 10_000): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      em.off(event, on);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} ('${event}')`));
    }, timeoutMs);
    const on = (...args: unknown[]): void => {
      clearTimeout(t);
      resolve(args);
    };
    em.once(event, on);
  });
}
