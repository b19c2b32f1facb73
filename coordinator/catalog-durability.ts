/**
 * Why: the catalog's SQLite commits must never make the coordinator's event loop wait on the
 * disk. With `synchronous = FULL` every commit fsynced the WAL on the loop, and behind heavy
 * image writeback one fsync took seconds: agent sessions were dropped. The catalog now runs
 * `synchronous = NORMAL` in WAL mode (a commit is a write() into the page cache, no fsync) and
 * `wal_autocheckpoint = 0` (no checkpoint, hence no fsync, inside a commit on the loop); this
 * module gives back the durability FULL had, off the loop:
 *
 * - `barrier()` resolves once every transaction committed before the call is on stable storage:
 *   it fsyncs the WAL file (and once, the catalog's directory) on the libuv threadpool. Barriers
 *   called while one is in flight share the next fsync (group commit), so N waiting callers cost
 *   at most two fsyncs. A failed fsync rejects with ERR_DATA_LOSS.
 * - Checkpoints (copying the WAL into the database file, fsyncing both) run in a worker thread
 *   with its own connection (catalog-checkpoint-worker.ts), one at a time, after a barrier found
 *   the WAL larger than `checkpointBytes`.
 *
 * Crash safety: a process crash (kill -9) loses nothing either way — a committed transaction
 * is in the kernel's page cache and the next open reads it from the WAL. An OS crash or power
 * loss may lose transactions committed after the last barrier (never corrupt the file: SQLite's
 * WAL frames are checksummed and a checkpoint fsyncs the WAL first); so whatever is reported
 * durable to a client, or relied on after a restart, awaits a barrier first.
 */
import { Worker } from 'node:worker_threads';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describeError, VnsnapError } from '../proto/core/errors';

/** A checkpoint once the WAL is this large (the SQLite default autocheckpoint is ~4 MiB). */
export const DEFAULT_CHECKPOINT_BYTES = 4 << 20;

export interface DurabilityStats {
  /** Barriers asked for. */
  barriers: number;
  /** fsyncs of the WAL done for them. */
  fsyncs: number;
  /** Checkpoints done by the worker. */
  checkpoints: number;
}

export interface CatalogDurabilityOptions {
  checkpointBytes?: number;
  /** Told about a checkpoint that failed (the next barrier retries it). */
  onCheckpointError?: (message: string) => void;
}

export class CatalogDurability {
  readonly stats: DurabilityStats = { barriers: 0, fsyncs: 0, checkpoints: 0 };
  private readonly wal: string;
  private readonly dir: string;
  private readonly checkpointBytes: number;
  private dirSynced = false;
  private inflight: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private worker: Worker | undefined;
  private checkpointing = false;
  private closed = false;

  /** `file` is the catalog's database file; '' or ':memory:' has nothing to make durable. */
  constructor(
    private readonly file: string,
    private readonly opts: CatalogDurabilityOptions = {},
  ) {
    this.wal = `${file}-wal`;
    this.dir = path.dirname(path.resolve(file || '.'));
    this.checkpointBytes = opts.checkpointBytes ?? DEFAULT_CHECKPOINT_BYTES;
  }

  /** '' or ':memory:': nothing to make durable. */
  get inMemory(): boolean {
    return this.file === '' || this.file === ':memory:' || this.file.startsWith('file::memory:');
  }

  /** Resolves once every transaction committed before this call is on stable storage. */
  barrier(): Promise<void> {
    this.stats.barriers++;
    if (this.inMemory) return Promise.resolve();
    if (this.closed) return Promise.reject(new VnsnapError('ERR_STATE', `the catalog ${this.file} is closed`));
    if (!this.inflight) return (this.inflight = this.syncOnce());
    // The fsync in flight may have started before the caller's commit: the next one covers it.
    this.queued ??= this.inflight
      .catch(() => undefined)
      .then(() => {
        this.queued = undefined;
        return (this.inflight = this.syncOnce());
      });
    return this.queued;
  }

  private async syncOnce(): Promise<void> {
    try {
      let size = 0;
      try {
        size = await fsyncFile(this.wal);
      } catch (e) {
        // No WAL: everything is in the database file (a checkpoint at close removed the WAL).
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        await fsyncFile(this.file);
      }
      if (!this.dirSynced) {
        await fsyncFile(this.dir);
        this.dirSynced = true;
      }
      this.stats.fsyncs++;
      if (size >= this.checkpointBytes) this.checkpoint();
    } catch (e) {
      throw new VnsnapError('ERR_DATA_LOSS', `cannot make the catalog ${this.file} durable: ${describeError(e)}`, { cause: e });
    } finally {
      this.inflight = undefined;
    }
  }

  /** Start a checkpoint in the worker unless one runs; never waits for it. */
  checkpoint(): void {
    if (this.inMemory || this.closed || this.checkpointing) return;
    this.checkpointing = true;
    const w = (this.worker ??= this.startWorker());
    w.postMessage({ type: 'checkpoint' });
  }

  private startWorker(): Worker {
    const w = new Worker(path.join(__dirname, 'catalog-checkpoint-worker.js'), { workerData: { file: this.file } });
    w.unref();
    w.on('message', (m: { ok: boolean; error?: string }) => {
      this.checkpointing = false;
      if (m.ok) this.stats.checkpoints++;
      else this.opts.onCheckpointError?.(m.error ?? 'unknown error');
    });
    w.on('error', (e) => {
      this.checkpointing = false;
      this.worker = undefined;
      this.opts.onCheckpointError?.(describeError(e));
    });
    return w;
  }

  /** Resolves when a checkpoint asked for has finished (tests). */
  async idle(): Promise<void> {
    const w = this.worker;
    while (this.checkpointing && w) await new Promise((r) => w.once('message', r));
  }

  /** Stop the checkpoint worker (its connection closes with it). Barriers after this reject. */
  close(): Promise<void> {
    this.closed = true;
    const w = this.worker;
    this.worker = undefined;
    return w ? w.terminate().then(() => undefined) : Promise.resolve();
  }
}

/** fsync a file or directory on the threadpool; its size. */
async function fsyncFile(p: string): Promise<number> {
  const fh = await fs.promises.open(p, 'r');
  try {
    await fh.sync();
    return (await fh.stat()).size;
  } finally {
    await fh.close();
  }
}
