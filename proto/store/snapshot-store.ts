/**
 * The snapshot store: where VM images, disks, channel state and manifests go (DESIGN.md
 * "Storage"). This is the contract every backend keeps (the local directory today, an object
 * store later); drivers, the agent and the coordinator see only this interface, and
 * test/support/compliance/store.ts checks each backend against it.
 *
 * Artefacts are named by paths relative to the store's root ("snapshots/<id>/vm1.mem"): no
 * leading "/", no "." or ".." segments, no trailing "/"; any other path is refused with
 * ERR_INVALID_ARGUMENT. Every artefact is written through an ArtefactWriter and is either
 * absent or complete: until commit() nothing is visible under its path (get: ERR_NOT_FOUND,
 * stat: null, list: not shown), and a failed or aborted write leaves nothing behind. A full
 * store is ERR_STORE_FULL. The size and the lower-case hex SHA-256 are computed while writing
 * and returned by commit() (a block image's SHA-256 is its chunk list's: DIGEST_ATTRIBUTE);
 * verify() checks a committed artefact against them. read() streams an
 * artefact; link() gives it a second name (an incremental snapshot names the unchanged disk
 * layers of its predecessor that way, so deleting the predecessor frees nothing it still needs).
 */

/** A committed artefact: where it is, how big, and its SHA-256. */
export interface StoredArtefact {
  path: string;
  size: number;
  sha256: string;
  /**
   * Bytes this write added to the store (set by create()/put()/link() results only): the whole
   * size for a store that keeps every artefact whole, the new chunks' bytes for a
   * content-addressed one, 0 for a link there. Absent on artefacts described by a caller.
   */
  storedBytes?: number;
  /**
   * What the store asks a reader of this artefact to hand back to read() (set by create()/put()/
   * link() results of a content-addressed store: CHUNK_LIST_ATTRIBUTE). Kept with the artefact in
   * the snapshot's manifest (Artefact.attributes), so a restore can ask for a cheaper check.
   */
  attributes?: Record<string, string>;
}

/**
 * The attribute a content-addressed store puts on what it writes: the SHA-256 of the artefact's
 * chunk list (cas-index.ts, chunkListSha256). Given back to read() as `expect.chunkList`, it lets
 * the store check each chunk only, not the whole artefact a second time (docs/storage.md, "Reading").
 */
export const CHUNK_LIST_ATTRIBUTE = 'store.chunk_list';

/** What a reader already knows of an artefact, from its manifest (read()'s optional second argument). */
export interface ReadExpect {
  /** The artefact's CHUNK_LIST_ATTRIBUTE: its index must list exactly these chunks. */
  chunkList?: string;
}

/**
 * How ArtefactWriter.write() takes its bytes:
 *   'copy'  (the default) the caller may reuse them once write() returned;
 *   'owned' the caller hands them over (never reads or writes them again): the writer may keep
 *           them, or move their memory to another thread, without a copy;
 *   'lent'  the caller leaves them untouched until write() settled (resolved or rejected) and
 *           reuses them after: the writer reads them in place meanwhile (shared memory: from
 *           another thread too) and keeps no reference once it settled (batch-pool.ts).
 */
export type WriteHandover = 'copy' | 'owned' | 'lent';

export interface ArtefactWriter {
  readonly path: string;
  /** Bytes written so far. */
  readonly bytes: number;
  /**
   * Append a chunk; writes are applied in call order. ERR_STATE after commit or abort. How the
   * writer takes `chunk` (WriteHandover): by default the caller may reuse it once write()
   * returned (the writer copies what it keeps).
   */
  write(chunk: Uint8Array, handover?: WriteHandover): Promise<void>;
  /** Make the artefact visible, whole, under its path (replacing an older one). */
  commit(): Promise<StoredArtefact>;
  /** Drop what was written (idempotent; a no-op after commit). */
  abort(): Promise<void>;
}

/**
 * The attribute a block image carries (createBlockImage): its `sha256` is not the SHA-256 of its
 * bytes but of its chunk list (cas-index.ts chunkListSha256, the same value as
 * CHUNK_LIST_ATTRIBUTE): hashing the whole image again at every snapshot is the pass a block
 * image exists to avoid. Value: DIGEST_CHUNK_LIST.
 */
export const DIGEST_ATTRIBUTE = 'store.digest';
export const DIGEST_CHUNK_LIST = 'chunk-list';

/** What createBlockImage() makes: an image of `size` bytes kept as fixed blocks, then a tail. */
export interface BlockImageOptions {
  /** Bytes of the blocks together (the guest RAM): a multiple of blockSize. */
  size: number;
  /** Bytes per block: a power of two, 4 KiB .. 1 MiB; each block is one chunk of the store. */
  blockSize: number;
  /**
   * A committed block image of the same size and blockSize: every block not put is named again
   * from it, without being read or hashed. ERR_NOT_FOUND when absent, ERR_FAILED_PRECONDITION
   * when it is not a block image of this size and blockSize.
   */
  base?: string;
  /**
   * A second path the committed image is also made visible under, by the same commit (an index
   * there, as link() would put, in the writer's own session; an artefact already there is
   * replaced): a tracked VM's next base (agent/drivers/qemu/tracked-job.ts), without a link()
   * that reads, decodes and writes the index again in a session of its own.
   */
  alsoAt?: string;
}

/**
 * A block image being written (an incremental memory image: docs/incremental-memory.md). Its
 * bytes, as read() streams them, are the blocks in order, then the tail. Either absent or
 * complete, like every artefact.
 */
export interface BlockImageWriter {
  readonly path: string;
  /**
   * Block `index` is `data` (exactly blockSize bytes); putting an index again replaces it (the
   * later call wins). The caller may reuse `data` once the promise settled. ERR_INVALID_ARGUMENT
   * for an index outside the image or data of another length; ERR_STATE after commit or abort.
   */
  putBlock(index: number, data: Uint8Array): Promise<void>;
  /**
   * putBlock() with the block's name given: `sha256` is the SHA-256 of exactly `data` in
   * lower-case hex, computed by the caller (off the event loop), and `data` stays unchanged until
   * the promise settled. The image is the same as putBlock()'s. ERR_INVALID_ARGUMENT also for a
   * name that is no SHA-256 (its value is not recomputed).
   */
  putNamedBlock(index: number, data: Uint8Array, sha256: string): Promise<void>;
  /** The bytes after the blocks (a QEMU device state); at most once (again: ERR_STATE); none when never called. */
  setTail(data: Uint8Array): Promise<void>;
  /**
   * Make the artefact visible. ERR_FAILED_PRECONDITION naming the first block that was neither
   * put nor found in a base. The result's sha256 is its chunk list's SHA-256 and its attributes
   * hold CHUNK_LIST_ATTRIBUTE and DIGEST_ATTRIBUTE = DIGEST_CHUNK_LIST.
   */
  commit(): Promise<StoredArtefact>;
  /** Drop what was written (idempotent; a no-op after commit). */
  abort(): Promise<void>;
}

export interface SnapshotStore {
  /** A writer for a new artefact (an existing one of that path is replaced at commit). */
  create(relPath: string): Promise<ArtefactWriter>;
  /** Write a whole artefact at once. */
  put(relPath: string, data: Uint8Array): Promise<StoredArtefact>;
  /** The bytes of a committed artefact; ERR_NOT_FOUND when absent. */
  get(relPath: string): Promise<Buffer>;
  /**
   * The bytes of a committed artefact as a stream of chunks in order, for artefacts too big to
   * hold at once (memory images, disks); checked as get() is, a problem thrown by the iteration.
   * ERR_NOT_FOUND (on the first step) when absent. `expect` (optional; stores that do not set
   * attributes ignore it) is what the caller's manifest recorded; a store that uses it refuses an
   * artefact that does not match it (ERR_CHECKSUM) before its first byte.
   */
  read(relPath: string, expect?: ReadExpect): AsyncIterable<Buffer>;
  /**
   * Make the committed artefact `from` also available as `to` (replacing an older `to`), without
   * copying its bytes where the store can avoid it; the two are independent from then on:
   * deleting one leaves the other whole. ERR_NOT_FOUND when `from` is absent.
   */
  link(from: string, to: string): Promise<StoredArtefact>;
  /** Size of a committed artefact, or null when absent. */
  stat(relPath: string): Promise<number | null>;
  /** Check an artefact against its expected size and checksum: a problem (one line) or null. */
  verify(a: StoredArtefact): Promise<string | null>;
  /** Committed artefacts whose path starts with prefix, sorted. */
  list(prefix: string): Promise<string[]>;
  /** Delete one artefact (idempotent). */
  delete(relPath: string): Promise<void>;
  /** Delete every artefact (and unfinished write) under prefix; returns how many artefacts were removed. */
  deleteByPrefix(prefix: string): Promise<number>;
  /**
   * A writer for a block image (BlockImageOptions, BlockImageWriter). Only a content-addressed
   * store has it: a caller falls back to create() with the whole image where it is absent.
   * ERR_INVALID_ARGUMENT when size or blockSize break BlockImageOptions' rules; the base's
   * errors as BlockImageOptions.base says. docs/storage.md, "Block images".
   */
  createBlockImage?(relPath: string, o: BlockImageOptions): Promise<BlockImageWriter>;
  /** Release what the store holds open (an S3 client's connections); unusable afterwards. Optional. */
  close?(): void;
}

/** put() through a store's own writer: one write, then commit; an abort on any failure. */
export async function putThroughWriter(store: Pick<SnapshotStore, 'create'>, relPath: string, data: Uint8Array): Promise<StoredArtefact> {
  const w = await store.create(relPath);
  try {
    await w.write(data);
    return await w.commit();
  } catch (e) {
    await w.abort();
    throw e;
  }
}
