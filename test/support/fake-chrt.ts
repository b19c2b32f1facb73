/**
 * A fake `chrt` for the priority tests (pause-boost.ts, cut-priority.ts): records each call's
 * arguments; each call settles only when the test says so, so a test can hold a raise in flight.
 */
import type { Chrt } from '../../agent/drivers/qemu/pause-boost';

export class FakeChrt {
  readonly calls: string[] = [];
  private readonly pending: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private waiters: (() => void)[] = [];
  readonly run: Chrt = (args) =>
    new Promise<void>((resolve, reject) => {
      this.calls.push(args.join(' '));
      this.pending.push({ resolve, reject });
      for (const w of this.waiters.splice(0)) w();
    });
  /** Settle call `i` (0-based). */
  finish(i: number, err?: string): void {
    const p = this.pending[i];
    if (!p) throw new Error(`no chrt call ${i}`);
    if (err) p.reject(new Error(err));
    else p.resolve();
  }
  /** Resolves once `n` calls were made. */
  async made(n: number): Promise<void> {
    while (this.calls.length < n) await new Promise<void>((r) => this.waiters.push(r));
  }
}
