/**
 * The writer of one artefact into the content-addressed store (cas-store.ts): it chunks the bytes
 * as they arrive, hashes each chunk, uploads the chunks the store does not hold yet with at
 * most `concurrency` uploads in flight, and at commit writes the artefact's index — last, once
 * every chunk it names is stored. With `packs` (the layout openStore() uses) new chunks go into
 * pack files (pack-writer.ts), one upload per pack; without, each chunk is its own object.
 *
 * Guarantees:
 *   - Streaming: nothing is staged whole. write() waits while `concurrency` uploads are in
 *     flight, so a writer holds at most about concurrency × (max chunk size, or pack size) plus
 *     one chunk (or one open pack).
 *   - Writes are applied in call order (each waits for the one before), whether awaited or not.
 *   - A chunk is uploaded at most once per writer, and not at all when the store already has it
 *     (packs: the store's pack map, no request; chunk objects: head() first): a second identical
 *     artefact adds no chunk.
 *   - No index, no artefact: a failed upload fails the next write() or commit(); an abort or a
 *     failure writes no index. Chunks uploaded before it stay (other artefacts may already share
 *     them); garbage collection removes the ones no index names.
 *   - A writer runs inside a writer session (cas-locks.ts): `guard` is awaited after the last
 *     chunk is stored and before the index is put, and fails the commit (no index) when the
 *     session's lock is gone or stale; `done` is called once when the writer commits, fails or
 *     aborts.
 *   - commit() returns, beside size and SHA-256, the SHA-256 of the chunk list it indexed
 *     (CHUNK_LIST_ATTRIBUTE), for the manifest to bind the artefact to its chunks.
 *   - Failures keep the backend's code (ERR_STORE_FULL, ERR_UNAVAILABLE, ...) with one line naming
 *     the artefact; a writer that is committed or aborted refuses writes with ERR_STATE.
 */
import type { ChunkerEngine, ChunkerParams } from './chunker';
import { InlineChunkHasher, type ChunkHasher, type HashedChunks } from './chunk-hasher';
import { attributesOf, encodeIndex, indexKey, type ChunkRef } from './cas-index';
import { ChunkSink, type PackSettings, type WriteStats } from './chunk-sink';
import type { ObjectBackend } from './object-backend';
import type { WriteProfile } from './pack-writer';
import { WriterSteps } from './writer-steps';
import { type ArtefactWriter, type StoredArtefact, type WriteHandover } from './snapshot-store';

export type { WriteProfile } from './pack-writer';
export type { WriteStats } from './chunk-sink';

export interface CasWriterOptions {
  backend: ObjectBackend;
  chunker: ChunkerParams;
  /** Which chunker engine cuts (default 'auto'), when `hasher` is not given. */
  engine?: ChunkerEngine;
  /** Hashes and cuts the stream (chunk-hasher.ts); default an InlineChunkHasher of `chunker` and `engine`. */
  hasher?: ChunkHasher;
  concurrency: number;
  /** Store new chunks in packs of about targetBytes, `uploads` in flight (not `concurrency`), registered in map; else one object per chunk. */
  packs?: PackSettings;
  /** Awaited before the index is put; throws to refuse the commit. */
  guard?: (what: string) => Promise<void>;
  /** Called once when the writer has committed, failed or been aborted. */
  done?: () => Promise<void>;
}

export class CasWriter extends WriterSteps implements ArtefactWriter {
  private readonly hasher: ChunkHasher;
  private size = 0;
  private readonly chunks: ChunkRef[] = [];
  private readonly sink: ChunkSink;
  readonly profile: WriteProfile = { hashMs: 0, chunkMs: 0, chunkHashMs: 0, compressMs: 0, putMs: 0, flushMs: 0, packs: 0 };

  constructor(
    path: string,
    private readonly o: CasWriterOptions,
  ) {
    super(path, { describe: o.backend.describe, ...(o.done ? { done: o.done } : {}) });
    this.hasher = o.hasher ?? new InlineChunkHasher(o.chunker, o.engine ?? 'auto');
    // An upload's failure is the writer's: the next step fails with it.
    this.sink = new ChunkSink({ backend: o.backend, concurrency: o.concurrency, ...(o.packs ? { packs: o.packs } : {}), profile: this.profile, wrap: (e) => (this.failure ??= this.wrap(e, 'writing')) });
  }

  /** Chunks named, and chunks and bytes added to the store so far. */
  get stats(): WriteStats {
    return this.sink.stats;
  }

  get bytes(): number {
    return this.size;
  }

  write(data: Uint8Array, handover: WriteHandover = 'copy'): Promise<void> {
    if (this.state !== 'open') return Promise.reject(this.ended());
    // Lent shared memory is read in place (the worker too) until this write settled; the pack
    // writer copies the new chunks it keeps. Lent memory of one thread is copied like the default
    // (the caller may reuse its buffer once write() returns: the hasher gets a copy).
    const inPlace = handover === 'owned' || (handover === 'lent' && data.buffer instanceof SharedArrayBuffer);
    const bytes = inPlace ? Buffer.from(data.buffer, data.byteOffset, data.byteLength) : Buffer.from(data);
    const n = bytes.length;
    // Handed to the hasher now (a worker starts on it while earlier steps still store chunks).
    const hashed = this.hasher.push(bytes);
    hashed.catch(() => undefined);
    const stored = this.step(async () => {
      this.size += n;
      await this.storeAll(await hashed);
    }, 'writing');
    if (handover !== 'lent') return stored;
    // Settled only once the hasher is done with the bytes, whatever failed before.
    return stored.catch(async (e: unknown) => {
      await hashed.catch(() => undefined);
      throw e;
    });
  }

  /** Store the chunks a hasher step closed, in order; its times go into the profile. */
  private async storeAll(h: HashedChunks): Promise<void> {
    this.profile.hashMs += h.ms.hash;
    this.profile.chunkMs += h.ms.chunk;
    this.profile.chunkHashMs += h.ms.chunkHash;
    for (let i = 0; i < h.chunks.length; i++) await this.store(h.chunks[i] as Buffer, h.sha256[i] as string);
  }

  commit(): Promise<StoredArtefact> {
    return this.commitStep(async () => {
      const last = await this.hasher.end();
      await this.storeAll(last);
      await this.sink.finish();
      await this.o.guard?.(`artefact ${this.path}`);
      const a: StoredArtefact = { path: this.path, size: this.size, sha256: last.artefactSha256 };
      const index = { ...a, chunker: { algo: 'fastcdc-gear32', ...this.o.chunker }, chunks: this.chunks } as const;
      await this.o.backend.put(indexKey(this.path), encodeIndex(index));
      return { ...a, storedBytes: this.stats.newBytes, attributes: attributesOf(index) };
    });
  }

  async abort(): Promise<void> {
    if (this.state === 'committed') return;
    this.state = 'aborted';
    this.failure ??= this.ended();
    this.hasher.close();
    await this.chain;
    await this.sink.settle();
    await this.finish();
  }

  /** List a closed chunk and store it (chunk-sink.ts). */
  private async store(chunk: Buffer, sha: string): Promise<void> {
    this.chunks.push(await this.sink.store(chunk, sha));
  }
}
