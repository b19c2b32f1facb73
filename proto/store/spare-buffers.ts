/**
 * Large buffers kept for reuse across a process's snapshots: the packs' arenas and bytes of every
 * writer (pack-writer.ts) and the RAM blocks a tracked snapshot reads (agent/drivers/qemu/
 * tracked-job.ts). Why: each snapshot of a tracked VM used to allocate them afresh (a few tens of
 * MiB a second per VM), and fresh memory costs its page faults and, as V8's external memory,
 * full collections of the heap — on the agent's event loop, at its cut window's realtime
 * priority (docs/performance.md, "The agent's garbage collection on one thread").
 *
 * Guarantees:
 *   - take(n) hands out a buffer of at least n bytes that nobody else holds: a kept one (the
 *     smallest that fits) or a new one of max(n, `allocBytes`); give(b) keeps it for a later
 *     take() unless `keep` are kept already (then the smallest kept one is dropped for it, if it
 *     is larger). A buffer given back must not be used by its giver any more.
 *   - What is kept is bounded by `keep` buffers and is dropped whole once no take() came for
 *     `idleMs` (an unreferenced timer: it keeps no process alive).
 */
export class SpareBuffers {
  private readonly kept: Buffer[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly keep: number,
    private readonly idleMs = 30_000,
  ) {}

  /** A buffer of at least `n` bytes (a new one is max(n, allocBytes) long). */
  take(n: number, allocBytes = n): Buffer {
    let best = -1;
    for (let i = 0; i < this.kept.length; i++) {
      const len = (this.kept[i] as Buffer).length;
      if (len >= n && (best < 0 || len < (this.kept[best] as Buffer).length)) best = i;
    }
    this.touch();
    if (best >= 0) return this.kept.splice(best, 1)[0] as Buffer;
    return Buffer.allocUnsafeSlow(Math.max(n, allocBytes));
  }

  /** Keep `b` for a later take() (module comment). */
  give(b: Buffer): void {
    if (this.kept.length < this.keep) this.kept.push(b);
    else {
      let smallest = 0;
      for (let i = 1; i < this.kept.length; i++) if ((this.kept[i] as Buffer).length < (this.kept[smallest] as Buffer).length) smallest = i;
      if ((this.kept[smallest] as Buffer).length < b.length) this.kept[smallest] = b;
    }
    this.touch();
  }

  /** Buffers kept now, and their bytes. */
  get held(): { buffers: number; bytes: number } {
    return { buffers: this.kept.length, bytes: this.kept.reduce((n, b) => n + b.length, 0) };
  }

  private touch(): void {
    if (this.timer) this.timer.refresh();
    else {
      this.timer = setTimeout(() => {
        this.kept.length = 0;
        this.timer = undefined;
      }, this.idleMs);
      this.timer.unref();
    }
  }
}
