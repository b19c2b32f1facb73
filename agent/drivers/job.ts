/**
 * What every driver's SnapshotJob shares (driver.ts states the contract they implement):
 *
 *   DriverJob    the base class of every job: `ready` from a ReadyLatch, abort() run once and
 *                releasing `ready` first, durable() rejecting with ERR_STATE before the cut.
 *   ReadyLatch   the job's `ready`: resolved once when the cut can be taken; released (resolved)
 *                by abort(), never rejected by it; rejected only by a failure of the copy itself
 *                before it was ready. It carries its own rejection handler, so a rejection nobody
 *                awaits is never an unhandled rejection that takes the agent's logs over.
 *   AbortOnce    abort() is idempotent and concurrent calls share one run: the second caller
 *                waits for the first abort to finish instead of returning while partials remain.
 *   cutReport    the CutReport of a cut: the pause span (cut → resume) and the copy span.
 *   fileToStore  a local file (a QEMU memory stream, an xl save image, a disk copy) copied into a
 *                store artefact, stopping early when the job is aborted.
 */
import * as fsp from 'node:fs/promises';
import { nowUs } from '../../proto/core/clock';
import { VnsnapError } from '../../proto/core/errors';
import type { ArtefactWriter, StoredArtefact } from '../../proto/store/local-dir';
import type { CutInstant, CutReport, PhaseSpan, SnapshotJob, SnapshotModeName, VmImage } from './driver';

export class ReadyLatch {
  readonly promise: Promise<void>;
  private res!: () => void;
  private rej!: (e: Error) => void;
  private state: 'pending' | 'ready' | 'released' | 'failed' = 'pending';

  constructor() {
    this.promise = new Promise<void>((res, rej) => {
      this.res = res;
      this.rej = rej;
    });
    this.promise.catch(() => undefined);
  }

  /** The cut can be taken now. */
  set(): void {
    if (this.state !== 'pending') return;
    this.state = 'ready';
    this.res();
  }

  get isSet(): boolean {
    return this.state === 'ready';
  }

  /** abort(): waiters go on (they find the job aborted); never a rejection. */
  release(): void {
    if (this.state !== 'pending') return;
    this.state = 'released';
    this.res();
  }

  /** The copy failed before it was ready: waiters learn it now, with the driver's error. */
  fail(e: Error): void {
    if (this.state !== 'pending') return;
    this.state = 'failed';
    this.rej(e);
  }
}

export class AbortOnce {
  private run: Promise<void> | undefined;

  /** abort() was called (it may still be running). */
  get requested(): boolean {
    return this.run !== undefined;
  }

  /** The first call runs `body`; every call returns that one run. */
  once(body: () => Promise<void>): Promise<void> {
    this.run ??= body();
    return this.run;
  }
}

/** A cut's report: pause = cut → resume (or the driver's own measure), plus a copy span if any. */
/** A cut instant (this host's wall clock) on performance.now()'s clock, ms: when a job writes its `stop`. */
export function perfAt(at: CutInstant): number {
  return performance.now() + (at.stopAtUs - nowUs()) / 1000;
}

export function cutReport(cutUnixUs: number, resumeUnixUs: number, copy?: { startUnixUs: number; endUnixUs: number }, pauseMs?: number): CutReport {
  const phases: PhaseSpan[] = [{ phase: 'PHASE_PAUSE', startUnixUs: cutUnixUs, endUnixUs: resumeUnixUs }];
  if (copy) phases.push({ phase: 'PHASE_COPY', ...copy });
  return { pauseMs: pauseMs ?? (resumeUnixUs - cutUnixUs) / 1000, cutUnixUs, resumeUnixUs, phases };
}

/** The smallest buffer fileToStore reads into (the file grew after its size was taken, or is empty). */
const MIN_READ = 64 * 1024;

/**
 * Copy a local file into `w` and commit it (SHA-256 computed while writing). `aborted()` is
 * checked before every chunk: an aborted job stops with ERR_SNAPSHOT_ABORTED. On failure the
 * writer is left to the caller (it may hold other writers to abort with it).
 */
export async function fileToStore(src: string, w: ArtefactWriter, opts: { chunkBytes?: number; copyChunks?: boolean; aborted?: () => boolean } = {}): Promise<StoredArtefact> {
  const chunk = opts.chunkBytes ?? 1 << 20;
  const h = await fsp.open(src, 'r');
  try {
    // A store that keeps the chunk (rather than writing it before write() resolves) gets a buffer
    // of its own per read, no larger than what is left of the file (a snapshot's disk layer is
    // often a few KiB: not a 4 MiB buffer and no copy per snapshot); else one buffer read into again.
    let left = opts.copyChunks ? (await h.stat()).size : 0;
    const reused = opts.copyChunks ? undefined : Buffer.allocUnsafe(chunk);
    for (;;) {
      if (opts.aborted?.()) throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
      const buf = reused ?? Buffer.allocUnsafe(Math.min(chunk, Math.max(left, MIN_READ)));
      const { bytesRead } = await h.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      left = Math.max(0, left - bytesRead);
      await w.write(buf.subarray(0, bytesRead));
    }
  } finally {
    await h.close();
  }
  return w.commit();
}

export abstract class DriverJob implements SnapshotJob {
  protected readonly latch = new ReadyLatch();
  private readonly aborting = new AbortOnce();
  /** The image being committed: set by the cut, awaited by durable(). */
  protected final: Promise<VmImage> | undefined;

  abstract get vm(): string;
  abstract get mode(): SnapshotModeName;
  abstract cut(atPause: () => Promise<void>, at?: CutInstant): Promise<CutReport>;
  /** The driver's abort, run once; `ready` is already released. */
  protected abstract runAbort(): Promise<void>;

  get ready(): Promise<void> {
    return this.latch.promise;
  }

  /** abort() was called (it may still be running). */
  protected get abortRequested(): boolean {
    return this.aborting.requested;
  }

  durable(): Promise<VmImage> {
    return this.final ?? Promise.reject(new VnsnapError('ERR_STATE', `snapshot of ${this.vm}: durable() before the cut`));
  }

  abort(): Promise<void> {
    return this.aborting.once(() => {
      this.latch.release();
      return this.runAbort();
    });
  }
}
