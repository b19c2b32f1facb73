/**
 * VM memory images moved between a hypervisor and the snapshot store as streams, never staged
 * whole (no image file in the instance directory, no whole image in the agent's memory).
 *
 *   StreamIntoStore  save: a unix socket the hypervisor connects to (QEMU `migrate unix:PATH`);
 *                    what it sends goes into an ArtefactWriter as it arrives, in order. Between
 *                    the socket and the writer sits a bounded buffer (`bufferBytes`): the socket
 *                    is read at once while less than that waits for the store, and paused above
 *                    it — backpressure through the socket to the sender, so a store slower than
 *                    the sender holds it back, but only once the buffer is full (a QEMU
 *                    background snapshot's write-protect faults wait on its stream: docs/qemu.md).
 *                    An optional StreamTransform rewrites the bytes on their way into the buffer
 *                    (a QEMU background snapshot's pages put in address order: qemu/page-order.ts).
 *                    unbound() lifts the bound for a tail known to be small (a pre-copy's final
 *                    pass, sent while the VM is paused: it must not wait behind the backlog);
 *                    holdWrites() also stops the writes until releaseWrites() (the store
 *                    catches up after the VM resumed).
 *                    holdStoreWrites() holds the writes of every stream of this process (the
 *                    agent) while one of its VMs is paused in a cut: a store write hashes on the
 *                    event loop, and a 512 KiB batch of another VM's stream there delayed the
 *                    paused VM's STOP, QMP replies and drain by 15-23 ms. Such a hold keeps each
 *                    stream's bound (its socket is paused above bufferBytes, so memory stays
 *                    bounded) and ends by itself after its limit (STORE_HOLD_LIMIT_MS) should a
 *                    cut never release it.
 *                    holdStreamReads() holds the socket reads of every stream of this process
 *                    (the senders block once the socket's buffer is full) while its VMs' background
 *                    cuts run: the streams of VMs already resumed are not read, rewritten and
 *                    queued on the event loop, nor sent by their QEMUs, while another VM's pause
 *                    still waits for a core. Ends by itself after its limit like the store hold.
 *                    `ended` resolves once the sender closed the stream (EOF) and every byte
 *                    was written into the writer; committing is the caller's (it also waits for
 *                    the hypervisor to report success). discard() turns the stream into a sink
 *                    that drops what arrives (an abort: the sender is never blocked, so it ends
 *                    by itself). close() closes the socket and the listener and removes the
 *                    socket file. One connection is accepted; a second one is refused.
 *                    `profile` says where the stream's time went (StreamProfile), for the job's log.
 *   feedSocket       restore: an artefact's chunks (store.read(): each checked before it is
 *                    handed out) written into a unix socket the hypervisor listens on (QEMU
 *                    `migrate-incoming unix:PATH`), honouring the socket's backpressure. A store
 *                    error (ERR_CHECKSUM, ERR_DATA_LOSS, ...) destroys the socket (the hypervisor
 *                    sees a truncated stream and fails its load) and is rethrown as it is.
 *   streamToFile     restore into a file a tool needs whole (Xen's `xl restore`), chunk by chunk.
 */
import * as fsp from 'node:fs/promises';
import * as net from 'node:net';
import { VnsnapError } from '../../proto/core/errors';
import { BATCH_BYTES, batchPool, type PoolSlot } from '../../proto/store/batch-pool';
import type { ArtefactWriter } from '../../proto/store/snapshot-store';

/**
 * Largest single write into the store: socket reads (64 KiB each) are joined up to this, in a
 * slot of the process's batch pool (proto/store/batch-pool.ts: shared memory, reused) lent to
 * the writer (ArtefactWriter.write's 'lent': the one copy between the socket and the store's
 * chunks; the hashing worker reads it in place) and taken back once the write settled; when
 * every slot is out, in memory of the batch's own handed over ('owned'). A store
 * may hash (and a content-addressed one chunk) a write in one go on the event loop — about 5–10 ms
 * per MiB here for the content-addressed store, before its hashing moved to a worker thread
 * (proto/store/chunk-hasher.ts; the whole-file layout still hashes here) — and the job's QMP
 * events wait behind it: 4 MiB writes held the loop for 40–90 ms. Between two writes the pump
 * yields to the event loop (setImmediate), since a store whose write() resolves without I/O would
 * otherwise run the whole buffer through in one go.
 */
const WRITE_BATCH = BATCH_BYTES;

/** Longest time holdStoreWrites() holds the store's writes if nobody releases them (ms). */
export const STORE_HOLD_LIMIT_MS = 2000;

/** The streams of this process that may still write into the store (holdStoreWrites() resumes them). */
const liveStreams = new Set<StreamIntoStore>();
/**
 * A process-wide hold over every live stream, taken by several callers at once: held from the
 * first take() until every hold taken is released, or `limitMs` after the first one, whichever
 * comes first (a hold nobody releases cannot stall the streams). `begin` runs when it starts
 * holding, `end` when it stops (at the limit, and again at the last release: both idempotent on
 * the streams' side). Each take() returns its release, idempotent.
 */
class StreamsHold {
  private holds = 0;
  private expired = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly begin: () => void,
    private readonly end: () => void,
  ) {}

  get held(): boolean {
    return this.holds > 0 && !this.expired;
  }

  take(limitMs: number): () => void {
    if (this.holds++ === 0) {
      this.expired = false;
      this.timer = setTimeout(() => {
        this.expired = true;
        this.end();
      }, limitMs);
      this.timer.unref();
      this.begin();
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.holds > 0) return;
      clearTimeout(this.timer);
      this.timer = undefined;
      this.expired = false;
      this.end();
    };
  }
}

/** holdStoreWrites(): the streams write nothing into the store (their sockets are still read, within each stream's bound). */
const storeHold = new StreamsHold(
  () => undefined,
  () => {
    for (const st of liveStreams) st.resumeWrites();
  },
);

/** holdStreamReads(): the streams' sockets are not read. */
const readHold = new StreamsHold(
  () => {
    for (const st of liveStreams) st.pauseReads();
  },
  () => {
    for (const st of liveStreams) st.resumeReads();
  },
);

/** Whether the store's writes are held for the whole process now. */
export function storeWritesHeld(): boolean {
  return storeHold.held;
}

/**
 * Hold every stream's store writes in this process (the sockets are still read, within each
 * stream's bound) until every hold taken is released, or `limitMs` after the first one.
 * Returns the release (idempotent).
 */
export function holdStoreWrites(limitMs = STORE_HOLD_LIMIT_MS): () => void {
  return storeHold.take(limitMs);
}

/** Whether the streams' sockets are held unread now. */
export function streamReadsHeld(): boolean {
  return readHold.held;
}

/** Hold every stream's socket reads in this process until every hold is released, or `limitMs` after the first (module comment); the release is idempotent. */
export function holdStreamReads(limitMs = STORE_HOLD_LIMIT_MS): () => void {
  return readHold.take(limitMs);
}

export interface StreamIntoStoreOptions {
  /** Bytes read from the socket that may wait for the store before the socket is paused. */
  bufferBytes: number;
  /** Names the stream in errors ("memory image of vm1"). */
  what: string;
  /** Rewrites the stream between the socket and the buffer (qemu/page-order.ts). */
  transform?: StreamTransform;
}

/**
 * A synchronous rewriter of a stream, called on each read from the socket: what it returns is
 * what goes into the buffer (and counts against its bound); end() returns its tail at EOF. It
 * holds what it keeps back itself, within its own bound.
 */
export interface StreamTransform {
  push(chunk: Buffer): Buffer[];
  end(): Buffer[];
}

/**
 * Where a stream's time went (ms): first byte → EOF, and within it the transform's time on the
 * event loop, the time the writer's writes took (awaited, store work on the loop and waits for
 * its uploads), the time the socket was paused (the sender held back by the bound), and the time
 * the writes were held (a cut).
 */
export interface StreamProfile {
  spanMs: number;
  transformMs: number;
  writeMs: number;
  pausedMs: number;
  heldMs: number;
  /** Reads from the socket (each a callback on the event loop). */
  reads: number;
}

const nowMs = (): number => Number(process.hrtime.bigint()) / 1e6;

export class StreamIntoStore {
  private conn: net.Socket | undefined;
  private pending: Buffer[] = [];
  private queued = 0;
  private pumping = false;
  private eof = false;
  private discarding = false;
  private bounded = true;
  private writesHeld = false;
  /** closeReads(): the caller keeps the socket unread (a read pacer) until openReads(). */
  private readsClosed = false;
  /** Called with each read's size (a read pacer counts them). */
  onRead: ((bytes: number) => void) | undefined;
  private failure: Error | undefined;
  private settle!: { resolve: () => void; reject: (e: Error) => void };
  /** Resolves at EOF once every byte is in the writer; rejects on a socket or store failure. */
  readonly ended: Promise<void>;
  /** Bytes received from the sender. */
  received = 0;
  /** The most bytes that waited for the store at once. */
  peakQueued = 0;
  /** Where the time went (StreamProfile); spanMs is set at EOF. */
  readonly profile: StreamProfile = { spanMs: 0, transformMs: 0, writeMs: 0, pausedMs: 0, heldMs: 0, reads: 0 };
  private firstByteAt = 0;
  private pausedAt = 0;
  private heldAt = 0;

  private constructor(
    private readonly server: net.Server,
    readonly sockPath: string,
    private readonly writer: ArtefactWriter,
    private readonly o: StreamIntoStoreOptions,
  ) {
    this.ended = new Promise<void>((resolve, reject) => (this.settle = { resolve, reject }));
    this.ended.catch(() => undefined);
    liveStreams.add(this);
    this.ended.finally(() => liveStreams.delete(this)).catch(() => undefined);
    server.on('connection', (c) => this.onConnection(c));
  }

  /** Listen on `sockPath` (a stale file there is replaced); the stream goes into `writer`. */
  static async listen(sockPath: string, writer: ArtefactWriter, o: StreamIntoStoreOptions): Promise<StreamIntoStore> {
    await fsp.rm(sockPath, { force: true });
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(sockPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', () => undefined);
    return new StreamIntoStore(server, sockPath, writer, o);
  }

  /** The QEMU migration URI of this stream. */
  get uri(): string {
    return `unix:${this.sockPath}`;
  }

  /** Bytes waiting for the store now. */
  get buffered(): number {
    return this.queued;
  }

  private onConnection(c: net.Socket): void {
    if (this.conn) {
      c.destroy();
      return;
    }
    this.conn = c;
    if (streamReadsHeld() || this.readsClosed) this.pauseReads();
    c.on('data', (chunk: Buffer) => {
      if (this.received === 0) this.firstByteAt = nowMs();
      this.received += chunk.length;
      this.profile.reads++;
      this.onRead?.(chunk.length);
      if (this.discarding || this.failure) return;
      this.enqueue(() => (this.o.transform ? this.o.transform.push(chunk) : [chunk]));
      if (this.bounded && this.queued >= this.o.bufferBytes) this.pauseSocket(c);
      this.pump();
    });
    c.on('end', () => {
      if (this.o.transform && !this.discarding && !this.failure) this.enqueue(() => (this.o.transform as StreamTransform).end());
      this.profile.spanMs = this.firstByteAt > 0 ? nowMs() - this.firstByteAt : 0;
      this.eof = true;
      this.pump();
    });
    c.on('error', (e) => this.fail(new VnsnapError('ERR_DRIVER', `${this.o.what}: the stream broke after ${this.received} bytes: ${e.message}`, { cause: e })));
    c.on('close', () => {
      if (!this.eof) this.fail(new VnsnapError('ERR_DRIVER', `${this.o.what}: the stream was closed after ${this.received} bytes without its end`));
    });
  }

  /** Queue what `parts` returns; a transform that throws fails the stream. */
  private enqueue(parts: () => Buffer[]): void {
    let bufs: Buffer[];
    const t0 = nowMs();
    try {
      bufs = parts();
      if (this.o.transform) this.profile.transformMs += nowMs() - t0;
    } catch (e) {
      this.fail(new VnsnapError('ERR_DRIVER', `${this.o.what}: rewriting the stream failed after ${this.received} bytes: ${(e as Error).message}`, { cause: e }));
      return;
    }
    for (const b of bufs) {
      if (b.length === 0) continue;
      this.pending.push(b);
      this.queued += b.length;
    }
    this.peakQueued = Math.max(this.peakQueued, this.queued);
  }

  /** Write the queue into the store in order, one batch at a time; resolve `ended` at EOF. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    void (async () => {
      try {
        while (this.pending.length > 0 && !this.discarding && !this.failure && !this.writesHeld && !storeWritesHeld()) {
          const { batch, slot } = this.takeBatch();
          const n = batch.length; // handed over: its memory may move away (detached) during the write
          const t0 = nowMs();
          try {
            await this.writer.write(batch, slot ? 'lent' : 'owned');
          } finally {
            if (slot) batchPool().give(slot);
          }
          this.profile.writeMs += nowMs() - t0;
          await new Promise<void>((r) => setImmediate(r)); // QMP events and socket reads first
          this.queued -= n;
          if (this.conn?.isPaused() && this.queued < this.o.bufferBytes / 2) this.resumeSocket();
        }
      } catch (e) {
        this.fail(e as Error);
      } finally {
        this.pumping = false;
      }
      if (this.failure) return;
      if (this.pending.length > 0 && !this.discarding) {
        if (!this.writesHeld && !storeWritesHeld()) this.pump();
      } else if (this.eof) this.settle.resolve();
    })();
  }

  private pauseSocket(c: net.Socket): void {
    if (!c.isPaused()) this.pausedAt = nowMs();
    c.pause();
  }

  private resumeSocket(): void {
    if ((streamReadsHeld() || this.readsClosed) && !this.discarding && !this.failure) return; // resumeReads() / openReads() at their end
    if (this.conn?.isPaused() && this.pausedAt > 0) this.profile.pausedMs += nowMs() - this.pausedAt;
    this.pausedAt = 0;
    this.conn?.resume();
  }

  /** The next batch: the one copy of what waits, into a pool slot lent to the writer, else into memory of its own handed over. */
  private takeBatch(): { batch: Buffer; slot: PoolSlot | null } {
    let n = 0;
    let k = 0;
    while (k < this.pending.length && (k === 0 || n + (this.pending[k] as Buffer).length <= WRITE_BATCH)) n += (this.pending[k++] as Buffer).length;
    const slot = batchPool().take(n);
    const batch = slot ? slot.buf : Buffer.allocUnsafeSlow(n);
    let at = 0;
    for (const part of this.pending.splice(0, k)) at += part.copy(batch, at);
    return { batch, slot };
  }

  private fail(e: Error): void {
    if (this.failure || (this.eof && this.pending.length === 0 && !this.pumping)) return;
    this.failure = e;
    this.dropQueue();
    this.settle.reject(e);
  }

  private dropQueue(): void {
    this.pending = [];
    this.queued = 0;
    this.resumeSocket(); // keep reading (and dropping): the sender is never left blocked
  }

  /**
   * From now on read at the sender's pace, however much waits for the store: for a tail the
   * caller knows to be bounded (a pre-copy's final pass, which QEMU sends with the VM paused:
   * behind a full buffer it would wait for the store to catch up, lengthening the pause).
   */
  unbound(): void {
    this.bounded = false;
    this.resumeSocket();
  }

  /**
   * unbound(), and no write into the store until releaseWrites(): the socket is read at once and
   * the event loop does nothing else for this stream (a store hashes each write on it), so the
   * hypervisor's final pass and its events are not delayed while the VM is paused.
   */
  holdWrites(): void {
    this.unbound();
    if (!this.writesHeld) this.heldAt = nowMs();
    this.writesHeld = true;
  }

  /** The store catches up with what arrived while writes were held (idempotent). */
  releaseWrites(): void {
    if (!this.writesHeld) return;
    this.profile.heldMs += nowMs() - this.heldAt;
    this.writesHeld = false;
    this.pump();
  }

  /** The caller's own hold on the socket's reads (a read pacer): not read until openReads(), whatever else resumes it. */
  closeReads(): void {
    this.readsClosed = true;
    this.pauseReads();
  }

  /** The caller's hold ended: read again unless another hold or the stream's bound keeps the socket paused. */
  openReads(): void {
    this.readsClosed = false;
    this.resumeReads();
  }

  /** holdStreamReads() began: the socket is not read until resumeReads(). */
  pauseReads(): void {
    if (this.conn && !this.eof) this.pauseSocket(this.conn);
  }

  /** holdStreamReads() ended: read again unless the stream's own bound holds the socket. */
  resumeReads(): void {
    if (!this.bounded || this.queued < this.o.bufferBytes) this.resumeSocket();
  }

  /** The process-wide hold ended (holdStoreWrites()): write what waits, unless held otherwise. */
  resumeWrites(): void {
    if (!this.writesHeld && !storeWritesHeld()) this.pump();
  }

  /** From now on drop what arrives (an abort); `ended` then rejects with ERR_SNAPSHOT_ABORTED. */
  discard(): void {
    if (this.discarding) return;
    this.discarding = true;
    this.dropQueue();
    this.fail(new VnsnapError('ERR_SNAPSHOT_ABORTED', `${this.o.what}: aborted`));
  }

  /**
   * Until the sender closed its end (or `timeoutMs`): an aborted stream is drained, not cut, so
   * the sender ends by itself. Resolves either way.
   */
  async drained(timeoutMs: number): Promise<void> {
    const c = this.conn;
    if (!c || c.readableEnded || c.destroyed) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      c.once('close', () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /** Close the connection and the listener, remove the socket file (idempotent). */
  async close(): Promise<void> {
    liveStreams.delete(this);
    this.conn?.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await fsp.rm(this.sockPath, { force: true });
  }
}

/** feedSocket's receiver closed or broke the stream (ERR_DRIVER): the receiver knows why. */
export class ReceiverGone extends VnsnapError {
  constructor(message: string, cause: unknown) {
    super('ERR_DRIVER', message, { cause });
  }
}

/**
 * Write `source` into the unix socket at `sockPath` and end it; resolves with the bytes sent once
 * every byte is handed to the kernel. A failure of `source` (the store's typed error) destroys
 * the socket and is rethrown unchanged; a socket failure is ReceiverGone naming `what`.
 */
export async function feedSocket(source: AsyncIterable<Buffer>, sockPath: string, what: string): Promise<number> {
  const sock = net.connect(sockPath);
  let sent = 0;
  let broken: Error | undefined;
  const brokenWith = (e: Error): Error => new ReceiverGone(`${what}: the receiver closed the stream after ${sent} bytes: ${e.message}`, e);
  const closed = new Promise<void>((resolve, reject) => {
    sock.on('error', (e) => {
      broken = brokenWith(e);
      reject(broken);
    });
    sock.on('close', () => resolve());
  });
  closed.catch(() => undefined);
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    closed.then(() => reject(broken ?? brokenWith(new Error('closed before connecting'))), reject);
  });
  try {
    for await (const chunk of source) {
      if (broken) throw broken;
      sent += chunk.length;
      if (!sock.write(chunk)) {
        await new Promise<void>((resolve, reject) => {
          const onDrain = (): void => {
            sock.off('close', onClose);
            resolve();
          };
          const onClose = (): void => {
            sock.off('drain', onDrain);
            reject(broken ?? brokenWith(new Error('closed')));
          };
          sock.once('drain', onDrain);
          sock.once('close', onClose);
        });
      }
    }
  } catch (e) {
    sock.destroy();
    throw e;
  }
  // Done once every byte is handed to the kernel (the receiver holds them): the receiver closes
  // its end when it is done with the stream, which the caller learns from the receiver itself.
  await Promise.race([new Promise<void>((resolve) => sock.end(resolve)), closed.then(() => {
    if (!sock.writableFinished) throw broken ?? brokenWith(new Error('closed'));
  })]);
  return sent;
}

/** Write `source` into a new file `file` (mode 0600), chunk by chunk; the file is removed on failure. */
export async function streamToFile(source: AsyncIterable<Buffer>, file: string): Promise<number> {
  const h = await fsp.open(file, 'wx', 0o600);
  let n = 0;
  try {
    for await (const chunk of source) {
      await h.write(chunk);
      n += chunk.length;
    }
    await h.close();
  } catch (e) {
    await h.close().catch(() => undefined);
    await fsp.rm(file, { force: true });
    throw e;
  }
  return n;
}
