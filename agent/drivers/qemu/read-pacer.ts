/**
 * The pre-copy hold by the agent's reads: QEMU's migration socket read at a set rate, so that
 * QEMU's migration thread, its max-bandwidth unlimited, blocks in its write (poll) whenever it
 * is ahead instead of sleeping out a rate-limit window, and goes on the instant the socket is
 * read again (precopy-hold.ts, "The read-paced hold").
 *
 * A token bucket over the bytes read: every read takes its bytes from the bucket, which fills
 * at `rate` bytes/s up to `burst` bytes. A read that leaves the bucket below zero closes the
 * gate (the socket is not read), and the gate opens again once the bucket is back to zero:
 * (debt / rate) later. Reads already under way when the gate closes are counted all the same
 * (a socket delivers what it read before its pause), so over any span the bytes read are at
 * most burst + rate × span + one read.
 *
 * Guarantees: the gate is closed only by a read that overdraws the bucket and opened only when
 * the bucket is back to zero (or at release()); one timer at most is pending; setRate() applies
 * the old rate up to now and the new one from now, and moves a pending reopening accordingly;
 * after release() the gate is open and stays open, whatever is read. Time comes from the clock
 * given (a fake one in tests).
 */
import { VnsnapError } from '../../../proto/core/errors';

/** What the pacer opens and closes: the reads of one socket. */
export interface ReadGate {
  close(): void;
  open(): void;
}

/** The pacer's time: now in ms, and a one-shot timer that can be cancelled. */
export interface PacerClock {
  now(): number;
  after(ms: number, fn: () => void): () => void;
}

export const realClock: PacerClock = {
  now: () => performance.now(),
  after: (ms, fn) => {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  },
};

/** The bucket's size (bytes): one socket read (64 KiB), so a gate that was shut lets one read through at once. */
export const PACER_BURST = 64 * 1024;

function checkRate(rateBs: number): void {
  if (!(rateBs > 0)) throw new VnsnapError('ERR_CONFIG', `read pacer: the rate must be above 0 bytes/s, got ${rateBs}`);
}

export class ReadPacer {
  private tokens = 0;
  private at: number;
  private closed = false;
  private released = false;
  private cancelTimer: (() => void) | undefined;
  /** Bytes counted by read(). */
  bytes = 0;

  constructor(
    private rateBs: number,
    private readonly gate: ReadGate,
    private readonly clock: PacerClock = realClock,
    private readonly burst = PACER_BURST,
  ) {
    checkRate(rateBs);
    this.at = clock.now();
  }

  get rate(): number {
    return this.rateBs;
  }

  /** The gate is closed now (the socket not read). */
  get isClosed(): boolean {
    return this.closed;
  }

  /** `n` bytes were read from the socket. */
  read(n: number): void {
    this.bytes += n;
    if (this.released) return;
    this.refill();
    this.tokens -= n;
    if (this.tokens < 0 && !this.closed) {
      this.closed = true;
      this.gate.close();
      this.schedule();
    }
  }

  /** Read at `rateBs` from now on (the bucket filled at the old rate until now). */
  setRate(rateBs: number): void {
    checkRate(rateBs);
    if (this.released) return;
    this.refill();
    this.rateBs = rateBs;
    if (this.closed) this.schedule();
  }

  /** No more pacing: the gate opens now and stays open (idempotent). */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.cancelTimer?.();
    this.cancelTimer = undefined;
    if (this.closed) {
      this.closed = false;
      this.gate.open();
    }
  }

  private refill(): void {
    const now = this.clock.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) * this.rateBs) / 1000);
    this.at = now;
  }

  /** The gate opens when the bucket is back to zero. */
  private schedule(): void {
    this.cancelTimer?.();
    const ms = Math.max(0, (-this.tokens * 1000) / this.rateBs);
    this.cancelTimer = this.clock.after(ms, () => {
      this.cancelTimer = undefined;
      if (this.released) return;
      this.refill();
      if (this.tokens < -0.5) {
        this.schedule(); // a timer that fired early
        return;
      }
      this.closed = false;
      this.gate.open();
    });
  }
}
