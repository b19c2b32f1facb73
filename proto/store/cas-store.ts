/**
 * The content-addressed snapshot store: the SnapshotStore contract (snapshot-store.ts, unchanged)
 * over any ObjectBackend (object-backend.ts: a local directory, an S3 bucket). Artefacts are cut
 * into content-defined chunks (chunker.ts), each stored once under its SHA-256 across every
 * artefact, snapshot and VNE; an artefact is its index object (cas-index.ts), written last
 * (cas-writer.ts). docs/storage.md ("Layout") has the picture.
 *
 * Guarantees on top of the contract:
 *   - get() and read() check every chunk's SHA-256 and size as it arrives, and the artefact's
 *     own SHA-256 at the end: a corrupt chunk is ERR_CHECKSUM, a missing one ERR_DATA_LOSS, both
 *     naming the artefact and the chunk; bad bytes are never handed out as good ones (read()
 *     yields a chunk only after checking it).
 *   - verify() re-reads every chunk and checks every checksum (restic's check --read-data).
 *   - list/stat/delete/deleteByPrefix see only indexes; delete removes the index, not the chunks:
 *     a chunk may be shared, and freeing the unshared ones is garbage collection's job
 *     (docs/storage.md, "Layout": mark and sweep with a grace period).
 *   - Artefact paths follow the same rules as the local directory store (confine()), with the
 *     same messages; the backend's key rules apply on top (ERR_INVALID_ARGUMENT).
 */
import { createHash } from 'node:crypto';
import { isVnsnapError, VnsnapError } from '../core/errors';
import { confine } from './atomic-file';
import { checkChunkerParams, Chunker, DEFAULT_CHUNKER, type ChunkerParams } from './chunker';
import { chunkKey, decodeIndex, indexKey, pathOfIndexKey, ARTEFACT_PREFIX, type ArtefactIndex } from './cas-index';
import { CasWriter } from './cas-writer';
import type { ObjectBackend } from './object-backend';
import type { SnapshotStore, StoredArtefact } from './snapshot-store';

export type { WriteStats } from './cas-writer';

export interface CasStoreOptions {
  /** Chunker parameters for new artefacts (default DEFAULT_CHUNKER). */
  chunker?: ChunkerParams;
  /** Chunk uploads in flight per writer, and chunk reads ahead per reader (default 4). */
  concurrency?: number;
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** ERR_INVALID_ARGUMENT unless relPath is a valid artefact path (the local store's rules and messages). */
function checkPath(relPath: string): string {
  confine('/', relPath);
  return relPath;
}

function checkPrefix(prefix: string): string {
  if (prefix.startsWith('/') || prefix.split('/').some((p) => p === '..')) throw new VnsnapError('ERR_INVALID_ARGUMENT', `bad prefix "${prefix}"`);
  return prefix;
}

export class CasStore implements SnapshotStore {
  private readonly chunker: ChunkerParams;
  private readonly concurrency: number;

  constructor(
    readonly backend: ObjectBackend,
    opts: CasStoreOptions = {},
  ) {
    this.chunker = checkChunkerParams({ ...(opts.chunker ?? DEFAULT_CHUNKER) });
    this.concurrency = Math.max(1, Math.floor(opts.concurrency ?? 4));
  }

  async create(relPath: string): Promise<CasWriter> {
    checkPath(relPath);
    return new CasWriter(relPath, { backend: this.backend, splitter: new Chunker(this.chunker), chunker: this.chunker, concurrency: this.concurrency });
  }

  async put(relPath: string, data: Uint8Array): Promise<StoredArtefact> {
    const w = await this.create(relPath);
    try {
      await w.write(data);
      return await w.commit();
    } catch (e) {
      await w.abort();
      throw e;
    }
  }

  /** The index of a committed artefact, or null when there is none. */
  async index(relPath: string): Promise<ArtefactIndex | null> {
    let data: Buffer;
    try {
      data = await this.backend.get(indexKey(checkPath(relPath)));
    } catch (e) {
      if (isVnsnapError(e, 'ERR_NOT_FOUND')) return null;
      throw e;
    }
    return decodeIndex(data, relPath);
  }

  /**
   * The bytes of a committed artefact, chunk by chunk, each checked before it is yielded, with
   * up to `concurrency` chunks read ahead. ERR_NOT_FOUND when absent.
   */
  async *read(relPath: string): AsyncGenerator<Buffer> {
    const idx = await this.index(relPath);
    if (!idx) throw new VnsnapError('ERR_NOT_FOUND', `artefact ${relPath} is not in the store`);
    const whole = createHash('sha256');
    const ahead: Promise<Buffer>[] = [];
    let next = 0;
    const fetchNext = (): void => {
      const p = this.chunk(idx, next++);
      p.catch(() => undefined); // handled when its turn comes
      ahead.push(p);
    };
    while (next < idx.chunks.length && ahead.length < this.concurrency) fetchNext();
    while (ahead.length > 0) {
      const b = await (ahead.shift() as Promise<Buffer>);
      if (next < idx.chunks.length) fetchNext();
      whole.update(b);
      yield b;
    }
    const sum = whole.digest('hex');
    if (sum !== idx.sha256) throw new VnsnapError('ERR_CHECKSUM', `artefact ${relPath}: its chunks have SHA-256 ${sum}, its index says ${idx.sha256}`);
  }

  async get(relPath: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const b of this.read(relPath)) parts.push(b);
    return Buffer.concat(parts);
  }

  async stat(relPath: string): Promise<number | null> {
    return (await this.index(relPath))?.size ?? null;
  }

  async verify(a: StoredArtefact): Promise<string | null> {
    let idx: ArtefactIndex | null;
    try {
      idx = await this.index(a.path);
    } catch (e) {
      return (e as Error).message;
    }
    if (!idx) return `${a.path}: missing`;
    if (idx.size !== Number(a.size)) return `${a.path}: size ${idx.size}, expected ${a.size}`;
    const whole = createHash('sha256');
    try {
      for await (const b of this.read(a.path)) whole.update(b);
    } catch (e) {
      if (isVnsnapError(e, 'ERR_CHECKSUM') || isVnsnapError(e, 'ERR_DATA_LOSS')) return e.message.replace(/^artefact /, '');
      throw e;
    }
    const sum = whole.digest('hex');
    if (sum !== a.sha256.toLowerCase()) return `${a.path}: SHA-256 ${sum}, expected ${a.sha256}`;
    return null;
  }

  async list(prefix: string): Promise<string[]> {
    const keys = await this.backend.list(ARTEFACT_PREFIX + checkPrefix(prefix));
    return keys
      .map(pathOfIndexKey)
      .filter((p): p is string => p !== null && p.startsWith(prefix))
      .sort();
  }

  async delete(relPath: string): Promise<void> {
    await this.backend.delete(indexKey(checkPath(relPath)));
  }

  async deleteByPrefix(prefix: string): Promise<number> {
    const paths = await this.list(prefix);
    for (const p of paths) await this.backend.delete(indexKey(p));
    return paths.length;
  }

  /** Chunk `i` of an artefact, checked against its index entry. */
  private async chunk(idx: ArtefactIndex, i: number): Promise<Buffer> {
    const ref = idx.chunks[i] as ArtefactIndex['chunks'][number];
    const which = `chunk ${i + 1} of ${idx.chunks.length} (${ref.sha256})`;
    let b: Buffer;
    try {
      b = await this.backend.get(chunkKey(ref.sha256));
    } catch (e) {
      if (isVnsnapError(e, 'ERR_NOT_FOUND')) throw new VnsnapError('ERR_DATA_LOSS', `artefact ${idx.path}: ${which} is missing from the store`, { cause: e });
      throw e;
    }
    const sum = sha256(b);
    if (b.length !== ref.size || sum !== ref.sha256) throw new VnsnapError('ERR_CHECKSUM', `artefact ${idx.path}: ${which} is corrupt (${b.length} bytes, SHA-256 ${sum})`);
    return b;
  }
}
