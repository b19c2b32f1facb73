/**
 * Where a writer's chunks go once they are named (cas-writer.ts for a stream, block-image-writer.ts
 * for a block image): the storing half shared by both, so a chunk is stored, deduplicated and
 * compressed the same way whichever writer named it.
 *
 * Guarantees:
 *   - store() lists a chunk and stores it unless the store already holds it: with packs
 *     (pack-writer.ts), a chunk this writer placed before or that the store's pack map knows is
 *     only named; without, a chunk object is uploaded at most once per writer and only after a
 *     head() found it absent.
 *   - At most `concurrency` uploads (packs: `uploads`) are in flight: store() waits for one to
 *     end before it starts another, so a writer holds a bounded amount of memory.
 *   - The first failed upload is kept (`failure`, through the writer's `wrap`) and fails every
 *     later store() and finish().
 *   - finish() seals the open pack, waits for every upload, makes deferred packs durable
 *     (PackWriter.flush) and gives every reference its pack and offset: after it resolves,
 *     every chunk stored through the sink is in the backend and every reference says where.
 *   - `stats` counts the chunks named and the chunks and bytes this sink added to the backend.
 */
import { chunkKey, type ChunkRef } from './cas-index';
import type { Codec } from './chunk-codec';
import type { ObjectBackend } from './object-backend';
import type { PackMap } from './pack-map';
import { PackWriter, type PackJob, type WriteProfile } from './pack-writer';

/** What a writer stored: chunks named, and the chunks and bytes it added to the backend. */
export interface WriteStats {
  chunks: number;
  newChunks: number;
  newBytes: number;
}

/** Where and how new chunks are stored: in packs registered in `map`, else one object per chunk. */
export interface PackSettings {
  map: PackMap;
  targetBytes: number;
  uploads: number;
  codec?: Codec;
}

export interface ChunkSinkOptions {
  backend: ObjectBackend;
  /** Chunk uploads in flight (chunk objects; packs use packs.uploads). */
  concurrency: number;
  packs?: PackSettings;
  /** A failed upload as the writer reports it (one line naming its artefact). */
  wrap: (e: unknown) => unknown;
  profile?: WriteProfile;
}

export class ChunkSink {
  readonly stats: WriteStats = { chunks: 0, newChunks: 0, newBytes: 0 };
  /** The first failed upload (wrapped); every later store() and finish() throws it. */
  failure: unknown;
  private readonly packer: PackWriter | null;
  private readonly seen = new Set<string>();
  private readonly inflight = new Set<Promise<void>>();

  constructor(private readonly o: ChunkSinkOptions) {
    this.packer = o.packs ? new PackWriter(o.backend, o.packs.map, o.packs.targetBytes, o.packs.codec, o.profile) : null;
  }

  /**
   * Store `chunk` (SHA-256 `sha`) unless the store holds it; its reference, which finish() will
   * point at where it is. `chunk` may be reused once the promise settled (a pack copies it; a
   * chunk object of shared memory is copied for its upload).
   */
  async store(chunk: Buffer, sha: string): Promise<ChunkRef> {
    const ref: ChunkRef = { sha256: sha, size: chunk.length };
    this.stats.chunks++;
    if (this.packer) {
      const job = this.packer.place(ref, chunk);
      if (job) await this.launch(job);
      return ref;
    }
    if (this.seen.has(sha)) return ref;
    this.seen.add(sha);
    const own = chunk.buffer instanceof SharedArrayBuffer ? Buffer.from(chunk) : chunk; // lent: the upload outlives the write
    await this.launch(() => this.upload(sha, own));
    return ref;
  }

  /** Every chunk stored and every reference located (module comment). */
  async finish(): Promise<void> {
    const tail = this.packer?.seal();
    if (tail) await this.launch(tail);
    await this.drain();
    await this.packer?.flush();
    this.packer?.locate();
  }

  /** Wait for the uploads in flight (an abort), their failures ignored. */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.inflight]);
  }

  /** Start an upload once fewer than the limit are in flight; its failure fails the sink. */
  private async launch(job: PackJob | (() => Promise<void>)): Promise<void> {
    const limit = this.o.packs?.uploads ?? this.o.concurrency;
    while (this.inflight.size >= limit) await Promise.race(this.inflight);
    if (this.failure !== undefined) throw this.failure;
    const p: Promise<void> = job()
      .then((added) => {
        if (!added) return;
        this.stats.newChunks += added.chunks;
        this.stats.newBytes += added.bytes;
      })
      .catch((e: unknown) => {
        this.failure ??= this.o.wrap(e);
      })
      .finally(() => this.inflight.delete(p));
    this.inflight.add(p);
  }

  private async upload(sha: string, chunk: Buffer): Promise<void> {
    const key = chunkKey(sha);
    const have = await this.o.backend.head(key);
    if (have && have.size === chunk.length) return;
    await this.o.backend.put(key, chunk);
    this.stats.newChunks++;
    this.stats.newBytes += chunk.length;
  }

  /** Wait for every upload in flight; the first failure among them is thrown. */
  private async drain(): Promise<void> {
    while (this.inflight.size > 0) await Promise.race(this.inflight);
    if (this.failure !== undefined) throw this.failure;
  }
}
