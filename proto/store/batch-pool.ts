/**
 * Reused memory for the batches a stream writes into the store (agent/drivers/image-stream.ts),
 * so a memory stream allocates nothing per batch: a fresh 2 MiB buffer costs its page faults
 * (about 2.5 GB/s on the machines measured, a copy into reused memory about 45 GB/s) and the
 * external memory it adds drives V8's full collections (docs/performance.md, "The agent's CPU per
 * memory stream").
 *
 * The pool is one SharedArrayBuffer cut into equal slots, made on first use and kept for the
 * process's life. Being shared memory, a slot is read by the store's hashing worker in place
 * (chunk-hasher.ts shares the pool's memory with the worker once; a push names its bytes by
 * offset), never copied or moved to it. A slot is lent to a writer (ArtefactWriter.write(...,
 * 'lent')) and given back when that write settled: the writer keeps no reference to it then.
 *
 * Guarantees: take() never hands out a slot that is out (a slot is either free or out, given
 * back once: give() of a buffer that is not an out slot throws ERR_INTERNAL); when every slot is
 * out take() returns null and the caller uses memory of its own, so the pool bounds only what it
 * keeps, never a stream's progress.
 */
import { VnsnapError } from '../core/errors';

/** One lent slot: `buf` is its first `n` bytes as asked for. */
export interface PoolSlot {
  readonly buf: Buffer;
  readonly index: number;
}

export class BatchPool {
  private memory: SharedArrayBuffer | undefined;
  private readonly free: number[] = [];
  private readonly out = new Set<number>();

  constructor(
    readonly slotBytes: number,
    readonly slots: number,
  ) {}

  /** A free slot's first `n` bytes (n <= slotBytes), or null when every slot is out. */
  take(n: number): PoolSlot | null {
    if (n > this.slotBytes) return null;
    if (!this.memory) {
      this.memory = new SharedArrayBuffer(this.slotBytes * this.slots);
      for (let i = this.slots - 1; i >= 0; i--) this.free.push(i);
    }
    const index = this.free.pop();
    if (index === undefined) return null;
    this.out.add(index);
    return { buf: Buffer.from(this.memory, index * this.slotBytes, n), index };
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
/** Slots in the process's pool: a stream holds one while its write is in the store (16 MiB kept). */
export const BATCH_SLOTS = 8;

let shared: BatchPool | undefined;

/** The process's pool of stream batches. */
export function batchPool(): BatchPool {
  return (shared ??= new BatchPool(BATCH_BYTES, BATCH_SLOTS));
}
