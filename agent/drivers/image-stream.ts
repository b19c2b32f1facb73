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
import { BATCH_BYTES, batchPool, copyInto, type PoolSlot } from '../../proto/store/batch-pool';
import type { ArtefactWriter } from '../../proto/store/snapshot-store';

/**
 * Largest single write into the store: what the socket delivers is copied, as it arrives, into
 * a slot of the process's batch pool (proto/store/batch-pool.ts: shared memory, reused) — the one
 * copy between the socket and the store's chunks — and a slot, full or (when the store is idle)
 * as far as it is filled, is lent to the writer (ArtefactWriter.write's 'lent': the hashing worker
 * reads it in place) and taken back once the write settled; when every slot is out, a batch is
 * memory of its own handed over ('owned'). A store may hash (and a content-addressed one chunk) a
 * write in one go on the event loop — about 5–10 ms per MiB here for the content-addressed store,
 * before its hashing moved to a worker thread (proto/store/chunk-hasher.ts; the whole-file layout
 * still hashes here) — and the job's QMP events wait behind it: 4 MiB writes held the loop for
 * 40–90 ms. Between two writes the pump yields to the event loop (setImmediate), since a store
 * whose write() resolves without I/O would otherwise run the whole buffer through in one go.
 */
const WRITE_BATCH = BATCH_BYTES;

/**
 * Each stream's socket is read into one buffer of this size, reused for every read (Node's
 * `onread` with a buffer of the caller's): a read allocates nothing, and its bytes are copied out
 * (into the batch being filled) before the next read overwrites them. Node's own reads are a new
 * 64 KiB buffer each — a 115 MiB memory stream was about 1 900 of them, external memory that
 * brought V8's full collections forward (docs/performance.md, "The memory stream: no buffer per
 * read"). 256 KiB: a unix socket's read returns what its buffer holds, so a fast sender is read in
 * a quarter of the wake-ups; the bound (bufferBytes) may be passed by at most one read.
 */
const READ_BYTES = 256 * 1024;

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
  /**
   * false: read the socket the ordinary way (a new buffer per read), as where this Node's socket
   * handle takes no buffer of the caller's (readsInto); default true. For tests of that path.
   */
  userBuffer?: boolean;
}

/**
 * A synchronous rewriter of a stream, called on each read from the socket with the bytes read (a
 * view of the stream's read buffer, which the next read overwrites): what it returns is what goes
 * into the buffer (and counts against its bound) — views of `chunk` or of the transform's own
 * memory, valid until its next call: the stream copies them before it calls again. It keeps
 * nothing of `chunk` past the call (it copies what it holds back, within its own bound). end()
 * returns its tail at EOF.
 */
export interface StreamTransform {
  push(chunk: Buffer): Buffer[];
  end(): Buffer[];
  /** Called once the stream needs nothing of the transform any more (end()'s output copied, or the stream given up): its memory may be reused. */
  close?(): void;
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

/** A batch being filled or waiting for the store: a pool slot, or memory of its own. */
interface Batch {
  buf: Buffer;
  used: number;
  slot: PoolSlot | null;
}

export class StreamIntoStore {
  /** The socket read (into one reused buffer: readsInto), and the one the server accepted (its handle moved to `conn`). */
  private conn: net.Socket | undefined;
  private accepted: net.Socket | undefined;
  /** Full batches in stream order, then the one being filled. */
  private pending: Batch[] = [];
  private filling: Batch | undefined;
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
    const server = net.createServer({ pauseOnConnect: true }); // not read before its reads have their buffer
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

  private onConnection(accepted: net.Socket): void {
    if (this.conn) {
      accepted.destroy();
      return;
    }
    this.accepted = accepted;
    const c = this.o.userBuffer === false ? accepted.pause() : readsInto(accepted, Buffer.allocUnsafeSlow(READ_BYTES), (n, buf) => this.onBytes(buf.subarray(0, n)));
    this.conn = c;
    if (c === accepted) c.on('data', (chunk: Buffer) => this.onBytes(chunk));
    if (streamReadsHeld() || this.readsClosed) this.pauseReads();
    else c.resume();
    c.on('end', () => {
      if (this.o.transform && !this.discarding && !this.failure) this.enqueue(() => (this.o.transform as StreamTransform).end());
      this.o.transform?.close?.();
      this.profile.spanMs = this.firstByteAt > 0 ? nowMs() - this.firstByteAt : 0;
      this.eof = true;
      this.pump();
    });
    c.on('error', (e) => this.fail(new VnsnapError('ERR_DRIVER', `${this.o.what}: the stream broke after ${this.received} bytes: ${e.message}`, { cause: e })));
    c.on('close', () => {
      if (c !== accepted) accepted.destroy(); // the server counts its connection until then
      if (!this.eof) this.fail(new VnsnapError('ERR_DRIVER', `${this.o.what}: the stream was closed after ${this.received} bytes without its end`));
    });
  }

  /** One read from the socket (valid only during the call: copied into the batches at once). */
  private onBytes(chunk: Buffer): void {
    if (this.received === 0) this.firstByteAt = nowMs();
    this.received += chunk.length;
    this.profile.reads++;
    this.onRead?.(chunk.length);
    if (this.discarding || this.failure) return;
    this.enqueue(() => (this.o.transform ? this.o.transform.push(chunk) : [chunk]));
    if (this.bounded && this.queued >= this.o.bufferBytes && this.conn) this.pauseSocket(this.conn);
    this.pump();
  }

  /** Copy what `parts` returns into the batches (it may be views of the read buffer); a transform that throws fails the stream. */
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
    for (const b of bufs) this.append(b);
    this.peakQueued = Math.max(this.peakQueued, this.queued);
  }

  /** Copy `b` into the batch being filled, starting new ones as they fill up. */
  private append(b: Uint8Array): void {
    let at = 0;
    while (at < b.length) {
      let f = this.filling;
      if (!f || f.used === f.buf.length) {
        if (f) this.pending.push(f);
        const slot = batchPool().take(WRITE_BATCH);
        f = this.filling = { buf: slot ? slot.buf : Buffer.allocUnsafeSlow(WRITE_BATCH), used: 0, slot };
      }
      const n = Math.min(b.length - at, f.buf.length - f.used);
      copyInto(f.buf, f.used, n === b.length ? b : b.subarray(at, at + n));
      f.used += n;
      at += n;
      this.queued += n;
    }
  }

  /** Write the queue into the store in order, one batch at a time; resolve `ended` at EOF. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    void (async () => {
      try {
        while (this.waiting() && !this.discarding && !this.failure && !this.writesHeld && !storeWritesHeld()) {
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
      if (this.waiting() && !this.discarding) {
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

  /** Whether bytes wait for the store. */
  private waiting(): boolean {
    return this.pending.length > 0 || (this.filling !== undefined && this.filling.used > 0);
  }

  /** The next batch: the first full one, else the one being filled as far as it is (waiting() is true). */
  private takeBatch(): { batch: Buffer; slot: PoolSlot | null } {
    let b = this.pending.shift();
    if (!b) {
      b = this.filling as Batch;
      this.filling = undefined;
    }
    if (b.slot || b.used === b.buf.length) return { batch: b.buf.subarray(0, b.used), slot: b.slot };
    // Memory of its own moves to the hashing worker only when the batch is all of it.
    const own = Buffer.allocUnsafeSlow(b.used);
    b.buf.copy(own, 0, 0, b.used);
    return { batch: own, slot: null };
  }

  private fail(e: Error): void {
    if (this.failure || (this.eof && !this.waiting() && !this.pumping)) return;
    this.failure = e;
    this.dropQueue();
    this.settle.reject(e);
  }

  private dropQueue(): void {
    this.o.transform?.close?.();
    this.releaseQueue();
    this.resumeSocket(); // keep reading (and dropping): the sender is never left blocked
  }

  /** Drop what waits for the store, its slots back in the pool. */
  private releaseQueue(): void {
    for (const b of this.pending) if (b.slot) batchPool().give(b.slot);
    if (this.filling?.slot) batchPool().give(this.filling.slot);
    this.pending = [];
    this.filling = undefined;
    this.queued = 0;
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
    this.accepted?.destroy();
    if (!this.pumping) this.releaseQueue(); // the slots of a stream that never ended go back
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await fsp.rm(this.sockPath, { force: true });
  }
}

/**
 * Reads of the accepted socket `c` into `buf`, reused for every read: a socket over c's handle
 * made with Node's `onread` (`net.Server` offers no `onread` for the sockets it accepts; a socket
 * made over an existing handle does). c keeps no handle and is destroyed (the server's count of
 * connections) when the returned socket closes. Where this Node's sockets have no such handle,
 * c itself is returned, read the usual way ('data', a new buffer per read). Either is paused.
 */
function readsInto(c: net.Socket, buf: Buffer, callback: (n: number, buf: Buffer) => void): net.Socket {
  const handle = (c as unknown as { _handle?: { useUserBuffer?: unknown } })._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function') {
    c.pause();
    return c;
  }
  (c as unknown as { _handle: unknown })._handle = null;
  const s = new net.Socket({ handle, onread: { buffer: buf, callback: (n: number, b: Uint8Array) => void callback(n, b as Buffer) } } as net.SocketConstructorOpts);
  s.pause();
  return s;
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
