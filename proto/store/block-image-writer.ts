/**
 * The writer of a block image (snapshot-store.ts BlockImageWriter; docs/storage.md, "Block
 * images"): an incremental memory image written as the blocks that changed since the previous
 * image, every other block named again from that image's index. Why: an agent snapshots a 256 MiB
 * guest every second; reading, hashing and copying the RAM that did not change is the CPU a
 * snapshot must not spend (docs/incremental-memory.md).
 *
 * Each block is one chunk of the store (fixed size, not content-defined), named by its SHA-256
 * and stored through the same chunk sink as a stream's chunks (chunk-sink.ts): a block the store
 * already holds (the pack map knows it, or this writer placed it: the zero blocks of a guest's
 * RAM) is only named, a new one goes into this writer's open pack and is compressed there as
 * configured. The tail (QEMU's device state) follows the blocks, cut into pieces of blockSize.
 *
 * Guarantees:
 *   - A block not put is named by the base's entry at the same position, location included (the
 *     store points it at the chunk's pack of now when a repack moved it: cas-store.ts): it is not
 *     read, hashed or copied. Putting a block costs one SHA-256 of it on the caller's
 *     thread (about 40 µs for 64 KiB on this machine's CPUs: a slice short enough that the event
 *     loop stays responsive; handing the block to the hashing worker instead costs its copy into
 *     the message, measured at 1.0–2.6 ms of the loop for 64 blocks against 2.5 ms for hashing
 *     them here) and one copy into the open pack (none when the store already holds it).
 *   - putNamedBlock() is putBlock() with the block's SHA-256 computed by the caller (a tracked
 *     round's, in the thread pool with its read: switch/native/ram_read.c), so nothing is hashed
 *     on the caller's thread; the rest is the same, and the index the same byte for byte. The
 *     name must be the SHA-256 of exactly the bytes given, which must stay unchanged until the
 *     call settled: it is checked to be a SHA-256 in lower-case hex, not recomputed (the chunk
 *     would be stored under a wrong name, and its reader's check fail).
 *   - putBlock() of the same index again (either form): the later call wins (steps run in call
 *     order); the earlier chunk, if new, stays stored until garbage collection frees it.
 *   - commit() fails with ERR_FAILED_PRECONDITION naming the first block neither put nor named by
 *     a base, and writes nothing then. Otherwise it stores every new chunk, then (guard: the
 *     writer session's lock is still held) puts the index, last: format 4 (cas-index.ts), whose
 *     sha256 is chunkListSha256 of its chunks; the result's sha256 is the same value, its
 *     attributes CHUNK_LIST_ATTRIBUTE and DIGEST_ATTRIBUTE = DIGEST_CHUNK_LIST, its storedBytes
 *     the bytes of the chunks this writer added. With `alsoAt`, the same index (its path that
 *     one) is put there next, under the same guard: a failure there fails the commit and deletes
 *     the first index again (best effort: a backend that refused the put may refuse that too).
 *     The index is turned into JSON once for both paths (cas-index.ts encodeIndexAs), and the
 *     last one put is handed to `remember` with its bytes.
 *   - The base's chunks cannot be freed while the writer is open: the store reads the base's
 *     index only after this writer's session lock is put (cas-store.ts createBlockImage), and a
 *     garbage collection's sweep waits for every live writer lock, then re-reads the indexes
 *     written since its mark (cas-gc.ts): the new index then names those chunks. The argument is
 *     the pack map's (a writer names chunks it found in the map the same way).
 *   - Arguments are checked at the call: an index outside the image, a block of another size or
 *     a name that is no SHA-256 is ERR_INVALID_ARGUMENT; a second setTail(), or any call after commit or abort, ERR_STATE.
 */
import { createHash } from 'node:crypto';
import { VnsnapError } from '../core/errors';
import { attributesOf, chunkListSha256, encodeIndexAs, indexKey, type ArtefactIndex, type ChunkRef } from './cas-index';
import { ChunkSink, type PackSettings, type WriteStats } from './chunk-sink';
import type { ObjectBackend } from './object-backend';
import type { BlockImageWriter, StoredArtefact } from './snapshot-store';
import { WriterSteps } from './writer-steps';

export interface CasBlockImageOptions {
  backend: ObjectBackend;
  /** Chunk uploads in flight (chunk objects; packs use packs.uploads). */
  concurrency: number;
  /** Store new chunks in packs (pack-writer.ts); else one object per chunk. */
  packs?: PackSettings;
  blockSize: number;
  blocks: number;
  /** The base image's blocks' references, in order (as many as `blocks`). */
  base?: ChunkRef[];
  /** A second path the commit puts the same image's index under (BlockImageOptions.alsoAt), after the first. */
  alsoAt?: string;
  /**
   * Told the index the commit put last (under alsoAt, if given) and its bytes: the store keeps it
   * decoded for the next image over it (known-indexes.ts).
   */
  remember?: (path: string, bytes: Buffer, index: ArtefactIndex) => void;
  /** Awaited before the index is put; throws to refuse the commit. */
  guard?: (what: string) => Promise<void>;
  /** Called once when the writer has committed, failed or been aborted. */
  done?: () => Promise<void>;
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const SHA256_HEX = /^[0-9a-f]{64}$/;

export class CasBlockImageWriter extends WriterSteps implements BlockImageWriter {
  /** Each block's chunk: the base's, until put. */
  private readonly slots: (ChunkRef | undefined)[];
  private tail: ChunkRef[] | undefined;
  private tailSet = false;
  private readonly sink: ChunkSink;

  constructor(
    path: string,
    private readonly o: CasBlockImageOptions,
  ) {
    super(path, { describe: o.backend.describe, ...(o.done ? { done: o.done } : {}) });
    this.slots = o.base ? o.base.slice(0, o.blocks) : new Array<ChunkRef | undefined>(o.blocks).fill(undefined);
    this.sink = new ChunkSink({ backend: o.backend, concurrency: o.concurrency, ...(o.packs ? { packs: o.packs } : {}), wrap: (e) => (this.failure ??= this.wrap(e, 'writing')) });
  }

  /** Chunks named by puts, and chunks and bytes added to the store so far. */
  get stats(): WriteStats {
    return this.sink.stats;
  }

  putBlock(index: number, data: Uint8Array): Promise<void> {
    const refused = this.refusal(index, data);
    return refused ? Promise.reject(refused) : this.place(index, data, sha256(data));
  }

  putNamedBlock(index: number, data: Uint8Array, sha: string): Promise<void> {
    const refused = this.refusal(index, data);
    if (refused) return Promise.reject(refused);
    if (!SHA256_HEX.test(sha)) return Promise.reject(new VnsnapError('ERR_INVALID_ARGUMENT', `block image ${this.path}: block ${index}'s name ${JSON.stringify(sha.slice(0, 80))} is not a SHA-256 in lower-case hex`));
    return this.place(index, data, sha);
  }

  /** Why block `index` of `data` cannot be put now (module comment), or undefined. */
  private refusal(index: number, data: Uint8Array): VnsnapError | undefined {
    if (this.state !== 'open') return this.ended();
    if (!Number.isInteger(index) || index < 0 || index >= this.o.blocks) return new VnsnapError('ERR_INVALID_ARGUMENT', `block image ${this.path}: block ${index} is outside 0..${this.o.blocks - 1}`);
    if (data.length !== this.o.blockSize) return new VnsnapError('ERR_INVALID_ARGUMENT', `block image ${this.path}: block ${index} is ${data.length} bytes, not ${this.o.blockSize}`);
    return undefined;
  }

  /** Block `index` is `data`, named `sha`: stored (or only named) in call order. */
  private place(index: number, data: Uint8Array, sha: string): Promise<void> {
    return this.step(async () => {
      this.slots[index] = await this.sink.store(this.held(data), sha);
    }, 'writing');
  }

  setTail(data: Uint8Array): Promise<void> {
    if (this.state !== 'open') return Promise.reject(this.ended());
    if (this.tailSet) return Promise.reject(new VnsnapError('ERR_STATE', `block image ${this.path}: its tail is already set`));
    this.tailSet = true;
    const bs = this.o.blockSize;
    const pieces: Uint8Array[] = [];
    for (let off = 0; off < data.length; off += bs) pieces.push(data.subarray(off, Math.min(data.length, off + bs)));
    const names = pieces.map(sha256);
    return this.step(async () => {
      const refs: ChunkRef[] = [];
      for (let i = 0; i < pieces.length; i++) refs.push(await this.sink.store(this.held(pieces[i] as Uint8Array), names[i] as string));
      this.tail = refs;
    }, 'writing');
  }

  commit(): Promise<StoredArtefact> {
    return this.commitStep(async () => {
      try {
        return await this.index();
      } catch (e) {
        await this.sink.settle(); // no upload outlives the writer's session
        throw e;
      }
    });
  }

  /** The commit's work: every chunk stored, then the index put (module comment). */
  private async index(): Promise<StoredArtefact> {
    // Loops, not callbacks per block: see indexJson (cas-index.ts) for why.
    let missing = -1;
    for (let k = 0; k < this.slots.length && missing < 0; k++) if (this.slots[k] === undefined) missing = k;
    // Only without a base: a base names every block.
    if (missing >= 0) throw new VnsnapError('ERR_FAILED_PRECONDITION', `block image ${this.path} not committed: block ${missing} was never put and there is no base to name it`);
    await this.sink.finish();
    await this.o.guard?.(`artefact ${this.path}`);
    const chunks = [...(this.slots as ChunkRef[]), ...(this.tail ?? [])];
    let size = 0;
    for (const c of chunks) size += c.size;
    const sha = chunkListSha256(chunks);
    const index = { path: this.path, size, sha256: sha, chunker: { algo: 'blocks', blockSize: this.o.blockSize, blocks: this.o.blocks }, chunks } as const;
    const paths = this.o.alsoAt === undefined ? [this.path] : [this.path, this.o.alsoAt];
    const bytes = encodeIndexAs(index, paths);
    for (let i = 0; i < paths.length; i++) {
      try {
        await this.o.backend.put(indexKey(paths[i] as string), bytes[i] as Buffer);
      } catch (e) {
        if (i > 0) await this.o.backend.delete(indexKey(this.path)).catch(() => undefined); // absent or complete, both
        throw e;
      }
    }
    const last = paths.length - 1;
    this.o.remember?.(paths[last] as string, bytes[last] as Buffer, { ...index, path: paths[last] as string });
    return { path: this.path, size, sha256: sha, storedBytes: this.stats.newBytes, attributes: attributesOf(index, sha) };
  }

  async abort(): Promise<void> {
    if (this.state === 'committed') return;
    this.state = 'aborted';
    this.failure ??= this.ended();
    await this.chain;
    await this.sink.settle();
    await this.finish();
  }

  /**
   * The bytes as the sink may keep them: a pack copies what it keeps, so a view does; a chunk
   * object is uploaded after the call settled, so it gets a copy (the caller reuses `data`).
   */
  private held(data: Uint8Array): Buffer {
    return this.o.packs ? Buffer.from(data.buffer, data.byteOffset, data.byteLength) : Buffer.from(data);
  }
}
