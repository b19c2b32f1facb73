/**
 * The CPU half of an artefact writer (cas-writer.ts): the artefact's SHA-256, the content-defined
 * cuts (chunker.ts) and each chunk's SHA-256, either on the caller's thread (InlineChunkHasher)
 * or in a worker thread (WorkerChunkHasher, chunk-hash-worker.ts) — one per process, shared by
 * every writer — so an agent's event loop, which reads the hypervisors' streams, rewrites their
 * page order and answers QMP, does not also hash every byte twice (docs/storage.md, "Write path").
 *
 * Guarantees:
 *   - The same chunks, chunk names and artefact SHA-256 either way, byte for byte (the worker
 *     runs the same Chunker and hashing).
 *   - Each byte goes through SHA-256 twice (the artefact's digest and its chunk's name). Where the
 *     addon has it and the CPU has the SHA extensions, both in one pass with their rounds
 *     interleaved (switch/native/sha256x2.c through store-native.ts: about 1.5 times faster than
 *     two passes of node:crypto), else node:crypto twice; the digests are the same either way
 *     (test/unit/chunk-hasher.test.ts compares them).
 *   - push() may be called again before the previous result arrived; results come back in call
 *     order. push() takes ownership of `data` (the worker's hasher transfers its memory): the
 *     chunks that lie whole inside it are views of it, not copies (Chunker.pushOwned), and come
 *     back from the worker in the same memory, moved back with them. `data` in shared memory
 *     (batch-pool.ts) is not moved: the worker reads it in place (each SharedArrayBuffer is
 *     shared with the worker once, then a push names its bytes by offset, so a push allocates
 *     nothing on either side) and its chunks are views of it; the caller leaves it untouched
 *     until the push settled and the chunks are no longer used, and may reuse it after: nothing
 *     the hasher keeps refers to it.
 *   - A worker that dies or fails a request fails every request in flight with ERR_INTERNAL; the
 *     next writer starts a new worker. The worker holds the process open only while it has work.
 *   - close() drops the stream's state (an aborted writer); nothing of it is kept in the worker.
 */
import { createHash, type Hash } from 'node:crypto';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { msSince } from '../core/clock';
import { VnsnapError } from '../core/errors';
import { Chunker, type ChunkerEngine, type ChunkerParams } from './chunker';
import { SHA256_CTX_BYTES, sha256Pair, type Sha256Pair } from './store-native';

/** The chunks that closed, their SHA-256s, and the time each step took (ms, on the thread that hashed). */
export interface HashedChunks {
  chunks: Buffer[];
  sha256: string[];
  ms: { hash: number; chunk: number; chunkHash: number };
}

export interface ChunkHasher {
  /** Feed the next bytes (owned by the hasher from now on, or shared memory lent: module comment): the chunks that closed. */
  push(data: Buffer): Promise<HashedChunks>;
  /** The stream is over: the last chunk and the artefact's SHA-256. */
  end(): Promise<HashedChunks & { artefactSha256: string }>;
  /** Drop the stream (idempotent). */
  close(): void;
}

/** Largest piece of a write hashed by the addon's pair at once (its offsets are 32-bit). */
const PAIR_PIECE = 1 << 30;

/** Who computes the SHA-256s: the addon's one pass where it runs ('auto'), or node:crypto. */
export type HashEngine = 'auto' | 'node';

/** One stream's hashing on the calling thread (what the worker runs too). */
export class InlineChunkHasher implements ChunkHasher {
  private readonly hash: Hash | undefined;
  private readonly chunker: Chunker;
  /** The addon's pair, with the artefact's context, the open chunk's, and room for the digests of a push. */
  private readonly pair: { native: Sha256Pair; whole: Uint8Array; open: Uint8Array; out: Buffer } | undefined;

  constructor(params: ChunkerParams, engine: ChunkerEngine, sha: HashEngine = 'auto') {
    this.chunker = new Chunker(params, engine);
    const native = sha === 'auto' ? sha256Pair() : null;
    if (native) {
      const ctx = (): Uint8Array => {
        const c = new Uint8Array(SHA256_CTX_BYTES);
        native.sha256Reset(c);
        return c;
      };
      this.pair = { native, whole: ctx(), open: ctx(), out: Buffer.allocUnsafeSlow(32 * 64) };
    } else this.hash = createHash('sha256');
  }

  /** Whether the addon's one-pass pair hashes this stream. */
  get onePass(): boolean {
    return this.pair !== undefined;
  }

  push(data: Buffer): Promise<HashedChunks> {
    return Promise.resolve(this.pushSync(data));
  }

  end(): Promise<HashedChunks & { artefactSha256: string }> {
    return Promise.resolve(this.endSync());
  }

  close(): void {}

  pushSync(data: Uint8Array): HashedChunks {
    if (this.pair) return this.pushPair(this.pair, data);
    let t = process.hrtime.bigint();
    (this.hash as Hash).update(data);
    const hash = msSince(t);
    t = process.hrtime.bigint();
    const chunks = this.chunker.pushOwned(data); // data is the hasher's (push()): chunks inside it are views
    const chunk = msSince(t);
    return { chunks, ...this.named(chunks, { hash, chunk }) };
  }

  endSync(): HashedChunks & { artefactSha256: string } {
    const chunks = this.chunker.end();
    if (!this.pair) return { chunks, ...this.named(chunks, { hash: 0, chunk: 0 }), artefactSha256: (this.hash as Hash).digest('hex') };
    const { native, whole, open, out } = this.pair;
    const t = process.hrtime.bigint();
    const sha256: string[] = [];
    if (chunks.length > 0) {
      native.sha256Final(open, out);
      sha256.push(out.toString('hex', 0, 32));
    }
    native.sha256Final(whole, out);
    return { chunks, sha256, ms: { hash: msSince(t), chunk: 0, chunkHash: 0 }, artefactSha256: out.toString('hex', 0, 32) };
  }

  /** Cut `data`, then both SHA-256s of it in one pass: the artefact's, and each chunk's up to where it ends. */
  private pushPair(p: NonNullable<InlineChunkHasher['pair']>, data: Uint8Array): HashedChunks {
    if (data.length > PAIR_PIECE) {
      // The addon's offsets are 32-bit: a larger write in pieces (the same chunks, views of data).
      const r: HashedChunks = { chunks: [], sha256: [], ms: { hash: 0, chunk: 0, chunkHash: 0 } };
      for (let off = 0; off < data.length; off += PAIR_PIECE) {
        const one = this.pushPair(p, data.subarray(off, Math.min(data.length, off + PAIR_PIECE)));
        r.chunks.push(...one.chunks);
        r.sha256.push(...one.sha256);
        r.ms.hash += one.ms.hash;
        r.ms.chunk += one.ms.chunk;
      }
      return r;
    }
    let t = process.hrtime.bigint();
    const chunks = this.chunker.pushOwned(data); // data is the hasher's (push()): chunks inside it are views
    const ends = this.chunker.cutEnds() as Uint32Array; // data.length <= PAIR_PIECE
    const chunk = msSince(t);
    t = process.hrtime.bigint();
    if (p.out.length < 32 * ends.length) p.out = Buffer.allocUnsafeSlow(32 * ends.length);
    p.native.sha256Pair(data, ends, ends.length, p.whole, p.open, p.out);
    const sha256 = new Array<string>(ends.length);
    for (let i = 0; i < ends.length; i++) sha256[i] = p.out.toString('hex', 32 * i, 32 * i + 32);
    return { chunks, sha256, ms: { hash: msSince(t), chunk, chunkHash: 0 } };
  }

  private named(chunks: Buffer[], ms: { hash: number; chunk: number }): Pick<HashedChunks, 'sha256' | 'ms'> {
    const t = process.hrtime.bigint();
    const sha256 = chunks.map((c) => createHash('sha256').update(c).digest('hex'));
    return { sha256, ms: { ...ms, chunkHash: msSince(t) } };
  }
}

/** Bytes of a SharedArrayBuffer shared with the worker before (`share`): its key, offset, length. */
export type SharedBytes = [key: number, offset: number, length: number];

/** A request to the worker (chunk-hash-worker.ts). */
export type HasherRequest =
  | { op: 'open'; id: number; params: ChunkerParams; engine: ChunkerEngine }
  | { op: 'push'; id: number; seq: number; data: Uint8Array | SharedBytes }
  | { op: 'end'; id: number; seq: number }
  | { op: 'drop'; id: number }
  | { op: 'share'; key: number; memory: SharedArrayBuffer }
  | { op: 'unshare'; key: number };

/** A chunk in a reply: its own memory (moved), or [offset, length] inside the push's shared bytes. */
export type ReplyChunk = Uint8Array | [offset: number, length: number];

/** The worker's answer to a push or end. */
export type HasherReply = { id: number; seq: number; chunks: ReplyChunk[]; sha256: string[]; ms: HashedChunks['ms']; artefactSha256?: string } | { id: number; seq: number; error: string };

/** A buffer's memory can move to the other thread when the buffer is all of it. */
export const ownsMemory = (b: Uint8Array): boolean => b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer;

/**
 * The memory to move with the chunks of a push of `data` (handed over): `data`'s own, which its
 * chunks view and nothing else refers to any more, and each chunk that owns its memory; each once.
 */
export function chunkTransfer(data: Uint8Array, chunks: readonly ReplyChunk[]): ArrayBuffer[] {
  const out = new Set<ArrayBuffer>();
  for (const c of chunks) if (!Array.isArray(c) && c.buffer instanceof ArrayBuffer && (c.buffer === data.buffer || ownsMemory(c))) out.add(c.buffer);
  return [...out];
}

/** The chunks of a push of `data` as a reply carries them: those in `data`'s shared memory by offset (data.buffer is a SharedArrayBuffer). */
export function replyChunks(data: Uint8Array, chunks: readonly Uint8Array[]): ReplyChunk[] {
  if (!(data.buffer instanceof SharedArrayBuffer)) return [...chunks];
  return chunks.map((c) => (c.buffer === data.buffer ? [c.byteOffset - data.byteOffset, c.byteLength] : c));
}

const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

const fail = (): never => {
  throw new VnsnapError('ERR_INTERNAL', "the store's hashing worker named shared bytes for a push that had none");
};

type Waiter = { resolve: (r: HasherReply) => void; reject: (e: Error) => void };

/** The process's hashing worker: started on first use, restarted after a failure. */
class SharedWorker {
  private worker: Worker | null = null;
  private readonly waiting = new Map<string, Waiter>();
  private nextId = 1;
  /** The shared memory the current worker has (key), and the registry that tells it when one is gone. */
  private shared = new WeakMap<SharedArrayBuffer, number>();
  private nextKey = 1;
  private readonly gone = new FinalizationRegistry<{ key: number; worker: Worker }>(({ key, worker }) => {
    if (this.worker === worker) worker.postMessage({ op: 'unshare', key } satisfies HasherRequest);
  });

  open(params: ChunkerParams, engine: ChunkerEngine): number {
    const id = this.nextId++;
    this.post({ op: 'open', id, params, engine });
    return id;
  }

  request(req: Extract<HasherRequest, { seq: number }>, transfer: ArrayBuffer[] = []): Promise<HasherReply> {
    const p = new Promise<HasherReply>((resolve, reject) => this.waiting.set(`${req.id}:${req.seq}`, { resolve, reject }));
    this.post(req, transfer);
    return p;
  }

  /** The key of `memory` in the worker, shared with it on first use. */
  share(memory: SharedArrayBuffer): number {
    const w = this.start();
    let key = this.shared.get(memory);
    if (key === undefined) {
      key = this.nextKey++;
      this.shared.set(memory, key);
      this.gone.register(memory, { key, worker: w });
      this.post({ op: 'share', key, memory });
    }
    return key;
  }

  drop(id: number): void {
    if (this.worker) this.post({ op: 'drop', id });
  }

  private post(m: HasherRequest, transfer: ArrayBuffer[] = []): void {
    const w = this.start();
    w.postMessage(m, transfer);
    if (this.waiting.size > 0) w.ref();
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(path.join(__dirname, 'chunk-hash-worker.js'));
    this.shared = new WeakMap(); // a new worker has none
    w.unref();
    w.on('message', (r: HasherReply) => {
      const key = `${r.id}:${r.seq}`;
      const waiter = this.waiting.get(key);
      this.waiting.delete(key);
      if (this.waiting.size === 0) w.unref();
      waiter?.resolve(r);
    });
    const failAll = (e: Error): void => {
      if (this.worker === w) this.worker = null;
      const waiters = [...this.waiting.values()];
      this.waiting.clear();
      for (const x of waiters) x.reject(new VnsnapError('ERR_INTERNAL', `the store's hashing worker failed: ${e.message}`, { cause: e }));
    };
    w.on('error', failAll);
    w.on('exit', (code) => failAll(new Error(`it exited with code ${code}`)));
    this.worker = w;
    return w;
  }
}

let shared: SharedWorker | undefined;

/** One stream hashed in the process's worker thread. */
export class WorkerChunkHasher implements ChunkHasher {
  private readonly w: SharedWorker;
  private readonly id: number;
  private seq = 0;
  private closed = false;

  constructor(params: ChunkerParams, engine: ChunkerEngine) {
    this.w = shared ??= new SharedWorker();
    this.id = this.w.open(params, engine);
  }

  async push(data: Buffer): Promise<HashedChunks> {
    if (data.buffer instanceof SharedArrayBuffer) {
      const key = this.w.share(data.buffer);
      return this.unpack(await this.w.request({ op: 'push', id: this.id, seq: this.seq++, data: [key, data.byteOffset, data.byteLength] }), data);
    }
    const r = await this.w.request({ op: 'push', id: this.id, seq: this.seq++, data }, ownsMemory(data) ? [data.buffer as ArrayBuffer] : []);
    return this.unpack(r);
  }

  async end(): Promise<HashedChunks & { artefactSha256: string }> {
    const r = this.unpack(await this.w.request({ op: 'end', id: this.id, seq: this.seq++ }));
    this.closed = true;
    return r as HashedChunks & { artefactSha256: string };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.w.drop(this.id);
  }

  /** The reply as chunks: its own memory, or views of `shared` (the push's shared bytes) where it names them by offset. */
  private unpack(r: HasherReply, shared?: Buffer): HashedChunks & { artefactSha256?: string } {
    if ('error' in r) throw new VnsnapError('ERR_INTERNAL', `the store's hashing worker failed: ${r.error}`);
    const chunk = (c: ReplyChunk): Buffer => (!Array.isArray(c) ? asBuffer(c) : shared ? shared.subarray(c[0], c[0] + c[1]) : fail());
    return { chunks: r.chunks.map(chunk), sha256: r.sha256, ms: r.ms, ...(r.artefactSha256 ? { artefactSha256: r.artefactSha256 } : {}) };
  }
}
