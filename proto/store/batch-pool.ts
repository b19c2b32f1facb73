/**
 * Reused memory for the batches a stream writes into the store (agent/drivers/image-stream.ts),
 * so a memory stream allocates nothing per batch nor per socket read: a fresh buffer costs its
 * page faults (about 2.5 GB/s on the machines measured, a copy into reused memory about 45 GB/s)
 * and the external memory it adds drives V8's full collections (docs/performance.md, "The agent's
 * CPU per memory stream" and "The memory stream: no buffer per read").
 *
 * The pool is SharedArrayBuffers ("slabs") of `slabSlots` equal slots each, made as they are first
 * needed up to `slots` slots, and kept for the process's life: what the pool keeps is the most its
 * streams ever had queued at once (the streams' bounds, image-stream.ts bufferBytes, plus the
 * batches in the store), at most slots × slotBytes. Being shared memory, a slot is read by the
 * store's hashing worker in place (chunk-hasher.ts shares each slab with the worker once; a push
 * names its bytes by offset), never copied or moved to it. A slot is lent to a stream, filled with
 * what its socket delivered, lent on to a writer (ArtefactWriter.write(..., 'lent')) and given back
 * when that write settled: the writer keeps no reference to it then.
 *
 * Guarantees: take() never hands out a slot that is out (a slot is either free or out, given
 * back once: give() of a slot that is not out throws ERR_INTERNAL); when every slot is out take()
 * returns null and the caller uses memory of its own, so the pool bounds only what it keeps,
 * never a stream's progress.
 */
import { VnsnapError } from '../core/errors';
import { keepFromChildren, nativeCopy } from './store-native';

/** One lent slot: `buf` is its first `n` bytes as asked for. */
export interface PoolSlot {
  readonly buf: Buffer;
  readonly index: number;
}

export class BatchPool {
  private readonly slabs: SharedArrayBuffer[] = [];
  private readonly free: number[] = [];
  private readonly out = new Set<number>();

  constructor(
    readonly slotBytes: number,
    readonly slots: number,
    readonly slabSlots = slots,
  ) {}

  /** A free slot's first `n` bytes (n <= slotBytes), or null when every slot is out. */
  take(n: number): PoolSlot | null {
    if (n > this.slotBytes) return null;
    if (this.free.length === 0) this.grow();
    const index = this.free.pop();
    if (index === undefined) return null;
    this.out.add(index);
    const slab = this.slabs[Math.floor(index / this.slabSlots)] as SharedArrayBuffer;
    return { buf: Buffer.from(slab, (index % this.slabSlots) * this.slotBytes, n), index };
  }

  /** The slot is free again. */
  give(slot: PoolSlot): void {
    if (!this.out.delete(slot.index)) throw new VnsnapError('ERR_INTERNAL', `batch pool: slot ${slot.index} given back twice`);
    this.free.push(slot.index);
  }

  /** Slots out now. */
  get lent(): number {
    return this.out.size;
  }

  /** Slots made so far (free or out). */
  get made(): number {
    return Math.min(this.slots, this.slabs.length * this.slabSlots);
  }

  /** One more slab, unless the pool has every slot it may have. */
  private grow(): void {
    const first = this.slabs.length * this.slabSlots;
    if (first >= this.slots) return;
    const slab = new SharedArrayBuffer(this.slotBytes * this.slabSlots);
    keepFromChildren(new Uint8Array(slab)); // kept for the process's life: no copy-on-write faults after each child started
    this.slabs.push(slab);
    for (let i = Math.min(this.slots, first + this.slabSlots) - 1; i >= first; i--) this.free.push(i);
  }
}

/** Pieces from this size on are copied by the addon's memcpy (below it a call costs more than it saves). */
const NATIVE_COPY_FROM = 4096;

/**
 * Copy `src` into `dst` (a slot) at `at`. V8 copies into shared memory with relaxed atomic word
 * moves (TypedArray.prototype.set, Buffer.copy), about half a memcpy's speed out of cache: a
 * quarter of a memory stream's event-loop time went there. A slot being filled is its stream's
 * alone, so the addon's plain memcpy (switch/native/bytes.c) is exact; without the addon, set().
 */
export function copyInto(dst: Uint8Array, at: number, src: Uint8Array): void {
  const c = src.length >= NATIVE_COPY_FROM ? nativeCopy() : null;
  if (c) c(dst, at, src);
  else dst.set(src, at);
}

/**
 * Slot size: the streams' largest write into the store (image-stream.ts WRITE_BATCH). 2 MiB, not
 * the 512 KiB it was: each batch is a request to the hashing worker and a reply (two thread
 * wake-ups, a postMessage each way), a chunk cut across two batches is copied whole, and the
 * writer's per-write steps run once per batch; at 2 MiB a 115 MiB stream makes 58 of them
 * instead of 230, and the agent spent about a fifth less CPU on it (docs/performance.md, "The
 * agents' CPU per memory stream, cut"). The event loop's part of a batch is its one copy (well
 * under a millisecond); the hashing is the worker's.
 */
export const BATCH_BYTES = 2 * 1024 * 1024;
/**
 * Slots the process's pool may make: a stream's socket reads are copied into slots as they
 * arrive, so its queue (up to its bound, 32 MiB for a QEMU memory stream: 16 slots) and the batch
 * in the store are slots. 48 (96 MiB) covers an agent's two VMs streaming at once; past it a
 * batch is memory of its own.
 */
export const BATCH_SLOTS = 48;
/** Slots per slab: the pool grows 16 MiB at a time. */
export const BATCH_SLAB_SLOTS = 8;

let shared: BatchPool | undefined;

/** The process's pool of stream batches. */
export function batchPool(): BatchPool {
  return (shared ??= new BatchPool(BATCH_BYTES, BATCH_SLOTS, BATCH_SLAB_SLOTS));
}
