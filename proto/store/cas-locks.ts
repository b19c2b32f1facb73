/**
 * Lock objects of the content-addressed store (docs/storage.md, "Layout"): how writers and
 * garbage collection keep out of each other's way without a lock server, with plain objects in
 * the backend, as restic does.
 *
 *   locks/w-<id>   a writer session: put when it starts, put again every REFRESH_MS, deleted at its end
 *   locks/gc       a garbage collection in its sweep
 *
 * A lock whose object time (modifiedMs) is STALE_MS or more old is stale: its owner is taken to
 * be dead, and the lock is ignored (a stale locks/gc is taken over). Both sides put their own
 * lock first and look for the other's after, so of a writer and a GC starting together at least
 * one sees the other: a writer that finds a live locks/gc deletes its lock and waits (bounded,
 * then ERR_UNAVAILABLE); a GC that finds live writer locks waits for them to go.
 *
 * A writer session guarantees: while it is open its lock is refreshed; before an index is
 * written, held() checks that the lock is still there and was refreshed less than
 * STALE_MS − REFRESH_MS ago by this host's clock (the margin covers the time to write the index),
 * and fails with ERR_FAILED_PRECONDITION otherwise — a GC may have ignored the lock and freed
 * the chunks that index would name. Time, interval timer and waits are injectable for tests.
 */
import { randomBytes } from 'node:crypto';
import { VnsnapError } from '../core/errors';
import type { ObjectBackend, ObjectInfo } from './object-backend';

export const LOCK_PREFIX = 'locks/';
export const WRITER_LOCK_PREFIX = `${LOCK_PREFIX}w-`;
export const GC_LOCK = `${LOCK_PREFIX}gc`;
export const STALE_MS = 5 * 60_000;
export const REFRESH_MS = 60_000;

/** Time and waiting, injectable so tests step a fake clock instead of sleeping. */
export interface LockTiming {
  /** Milliseconds since the epoch (default Date.now). */
  clock?: () => number;
  /** Wait ms (default a timer). */
  sleep?: (ms: number) => Promise<void>;
  /** Call fn every ms until the returned function is called (default an unref'd setInterval). */
  every?: (ms: number, fn: () => void) => () => void;
  /** How long a writer waits for a live locks/gc to go (default 10 min). */
  gcWaitMs?: number;
  /** How often a waiting side looks again (default 2 s). */
  pollMs?: number;
}

export type Timing = Required<LockTiming>;

export function timing(t: LockTiming = {}): Timing {
  return {
    clock: t.clock ?? Date.now,
    sleep: t.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms))),
    every:
      t.every ??
      ((ms, fn) => {
        const h = setInterval(fn, ms);
        h.unref();
        return () => clearInterval(h);
      }),
    gcWaitMs: t.gcWaitMs ?? 10 * 60_000,
    pollMs: t.pollMs ?? 2000,
  };
}

/** Whether a lock object was put less than STALE_MS ago. */
export function isLive(info: ObjectInfo | null, now: number): info is ObjectInfo {
  return info !== null && now - info.modifiedMs < STALE_MS;
}

const lockBody = (what: string, now: number): Buffer => Buffer.from(JSON.stringify({ what, pid: process.pid, since: new Date(now).toISOString() }));

/** One writer session's lock: start(), held() before each index, end(). */
export class WriterSession {
  readonly key = `${WRITER_LOCK_PREFIX}${randomBytes(8).toString('hex')}`;
  private lastPut = 0;
  private stopRefresh: () => void = () => undefined;

  constructor(
    private readonly backend: ObjectBackend,
    private readonly t: Timing,
  ) {}

  /** Put the lock; while a live locks/gc is there, take it back and wait (ERR_UNAVAILABLE after gcWaitMs). */
  async start(): Promise<void> {
    const began = this.t.clock();
    for (;;) {
      await this.put();
      if (!isLive(await this.backend.head(GC_LOCK), this.t.clock())) break;
      await this.backend.delete(this.key);
      await waitForGc(this.backend, this.t, began);
    }
    this.stopRefresh = this.t.every(REFRESH_MS, () => {
      this.put().catch(() => undefined); // a failed refresh shows in held()
    });
  }

  /** ERR_FAILED_PRECONDITION, naming `what`, unless the lock is there and fresh enough to write an index. */
  async held(what: string): Promise<void> {
    const age = this.t.clock() - this.lastPut;
    const there = await this.backend.head(this.key);
    if (there && age < STALE_MS - REFRESH_MS) return;
    const why = there ? `was last refreshed ${Math.round(age / 1000)} s ago` : 'is gone';
    throw new VnsnapError('ERR_FAILED_PRECONDITION', `${what} not committed: writer lock ${this.key} ${why}, so garbage collection may have freed its chunks; write it again`);
  }

  /** Stop refreshing and delete the lock. */
  async end(): Promise<void> {
    this.stopRefresh();
    await this.backend.delete(this.key);
  }

  private async put(): Promise<void> {
    const now = this.t.clock();
    await this.backend.put(this.key, lockBody('writer', now));
    this.lastPut = Math.max(this.lastPut, now);
  }
}

/** Wait one poll while a live locks/gc is there; ERR_UNAVAILABLE once gcWaitMs have passed since `began`. */
export async function waitForGc(backend: ObjectBackend, t: Timing, began: number): Promise<void> {
  if (t.clock() - began >= t.gcWaitMs) {
    throw new VnsnapError('ERR_UNAVAILABLE', `store ${backend.describe}: garbage collection has held ${GC_LOCK} for over ${Math.round(t.gcWaitMs / 1000)} s; try again later`);
  }
  await t.sleep(t.pollMs);
}

/** Put locks/gc unless a live one is there (ERR_UNAVAILABLE); a stale one is taken over. */
export async function takeGcLock(backend: ObjectBackend, t: Timing): Promise<void> {
  const now = t.clock();
  const have = await backend.head(GC_LOCK);
  if (isLive(have, now)) {
    throw new VnsnapError('ERR_UNAVAILABLE', `store ${backend.describe}: another garbage collection holds ${GC_LOCK} (put ${Math.round((now - have.modifiedMs) / 1000)} s ago)`);
  }
  await backend.put(GC_LOCK, lockBody('gc', now));
}

/** Re-put locks/gc (a sweep waiting for writers keeps it fresh). */
export async function refreshGcLock(backend: ObjectBackend, t: Timing): Promise<void> {
  await backend.put(GC_LOCK, lockBody('gc', t.clock()));
}

/** The writer locks that are live now. */
export async function liveWriterLocks(backend: ObjectBackend, now: number): Promise<ObjectInfo[]> {
  return (await backend.listInfo(WRITER_LOCK_PREFIX)).filter((i) => isLive(i, now));
}
