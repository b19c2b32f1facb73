/**
 * The content-addressed snapshot store: the SnapshotStore contract (snapshot-store.ts, unchanged)
 * over any ObjectBackend (object-backend.ts: a local directory, an S3 bucket). Artefacts are cut
 * into content-defined chunks (chunker.ts), each stored once under its SHA-256 across every
 * artefact, snapshot and VNE — with `pack`, in pack files of a few MiB (pack-*.ts), else one
 * object per chunk; an artefact is its index object (cas-index.ts), written last
 * (cas-writer.ts), which says where each chunk is. docs/storage.md ("Layout") has the picture.
 *
 * Guarantees on top of the contract:
 *   - Packs: the pack map (pack-map.ts) is brought up to date when a writer session starts, after
 *     its lock is put, so the chunks a writer finds there cannot be swept before its index is
 *     written. That costs one get() of the sweep generation (gc-generation.ts), and a listing of
 *     the tables only when a sweep ran since the map's last listing or that is a minute old.
 *   - get() and read() check every chunk's SHA-256 and size as it arrives, and the artefact's
 *     own SHA-256 at the end: a corrupt chunk is ERR_CHECKSUM, a missing one ERR_DATA_LOSS, both
 *     naming the artefact and the chunk; bad bytes are never handed out as good ones (read()
 *     yields a chunk only after checking it).
 *   - read() is tagged with its index's size and SHA-256 (checked-read.ts), so a reader that
 *     expects them (a restore) compares them once instead of hashing the bytes a second time;
 *     verify() hashes each byte twice (chunk, artefact), never three times.
 *   - read(path, { chunkList }) — the chunk list SHA-256 that commit() returned
 *     (CHUNK_LIST_ATTRIBUTE), kept in the caller's manifest — first checks that the index lists
 *     exactly those chunks (else ERR_CHECKSUM before any chunk is read: a forged or replaced
 *     index), then checks each chunk only: the whole-artefact hash is skipped, since the chunks
 *     proven one by one are the ones the artefact was written with. Each byte is hashed once.
 *   - A block image over a base (createBlockImage) reads the base's index in its session every
 *     time, and decodes it only when its bytes differ from those this store last put or read
 *     there (known-indexes.ts): a tracked VM's base, put by its previous snapshot, is not decoded
 *     again at every snapshot.
 *   - Block images (createBlockImage, block-image-writer.ts): an index of format 4 whose sha256 is
 *     its chunk list's SHA-256 (cas-index.ts). Every reader and checker takes that as its digest:
 *     read()/get()/verify() check that the index's chunk list has that SHA-256 (else ERR_CHECKSUM,
 *     before any chunk is read), then every chunk, and hash no whole content; read() claims the
 *     index's sha256 (checked-read.ts), which a restore compares with its manifest's. link() keeps
 *     it a block image; garbage collection sees its chunks like any index's.
 *   - verify() re-reads every chunk and checks every checksum (restic's check --read-data);
 *     verifyAll(prefix) does it for every artefact under a prefix (a snapshot) and reports each.
 *   - list/stat/delete/deleteByPrefix see only indexes; delete removes the index, not the chunks:
 *     a chunk may be shared, and freeing the unshared ones is garbage collection's job
 *     (docs/storage.md, "Layout": mark and sweep with a grace period).
 *   - Writers run in a writer session (cas-locks.ts) shared by every writer of this CasStore
 *     that is open at the same time: its lock locks/w-<id> is put when the first opens (after
 *     waiting out a live garbage collection sweep) and deleted when the last ends. Per instance
 *     rather than per snapshot because the SnapshotStore contract knows artefacts, not snapshots;
 *     a snapshot's artefacts are written by one store instance while they are open, so they share
 *     one lock, and an idle store holds none (a GC never waits for it). With `sessionLingerMs`
 *     (the agent's store: SESSION_LINGER_MS) the session stays open that long after its last
 *     writer ended, so that the next snapshot's writers (a tracked VM's come once a second) join
 *     it instead of putting, refreshing and deleting a lock of their own: a store idle for longer
 *     holds none. A writer joining an open session waits out a live sweep too, before it joins (a
 *     lingering session meanwhile ends as it would), so a busy store cannot hold a GC off for ever.
 *   - Artefact paths follow the same rules as the local directory store (confine()), with the
 *     same messages; the backend's key rules apply on top (ERR_INVALID_ARGUMENT).
 */
import { createHash } from 'node:crypto';
import { isVnsnapError, VnsnapError } from '../core/errors';
import { confine } from './atomic-file';
import { KnownIndexes } from './known-indexes';
import { checkChunkerParams, DEFAULT_CHUNKER, type ChunkerEngine, type ChunkerParams } from './chunker';
import { defaultCodec, type Codec } from './chunk-codec';
import { attributesOf, chunkListSha256, decodeIndex, encodeIndex, indexKey, isBlockImage, isBlockSize, pathOfIndexKey, ARTEFACT_PREFIX, MAX_BLOCK, MIN_BLOCK, type ArtefactIndex, type ChunkRef } from './cas-index';
import { GC_LOCK, isLive, timing, waitForGc, WriterSession, type LockTiming, type Timing } from './cas-locks';
import { CasWriter } from './cas-writer';
import { CasBlockImageWriter } from './block-image-writer';
import type { PackSettings } from './chunk-sink';
import { InlineChunkHasher, WorkerChunkHasher } from './chunk-hasher';
import { collectGarbage, type GcOptions, type GcResult } from './cas-gc';
import { storeStats, type StoreStats } from './cas-stats';
import type { ObjectBackend } from './object-backend';
import { PackMap, type ChunkLocation } from './pack-map';
import { readChunks } from './pack-reader';
import { checkedRead, type Claim } from './checked-read';
import type { BlockImageOptions, ReadExpect, SnapshotStore, StoredArtefact } from './snapshot-store';
import { putThroughWriter } from './snapshot-store';

export type { WriteStats } from './cas-writer';

/** How new chunks are packed and packs are read (docs/storage.md, "Layout"). */
export interface PackOptions {
  /** A pack is sealed and uploaded once it holds this many bytes (default 8 MiB). */
  targetBytes?: number;
  /** Pack uploads in flight per writer (default 4). */
  uploads?: number;
  /** Largest ranged read of neighbouring chunks (default 4 MiB). */
  rangeBytes?: number;
  /** Bytes a reader requests ahead of its consumer (default 16 MiB). */
  aheadBytes?: number;
  /** How new chunks are compressed (chunk-codec.ts; default zstd where the native addon has it, else deflate), or 'none'. */
  compress?: Codec | 'none';
}

/** The defaults of PackOptions (compress: defaultCodec(), resolved when a store is made). */
export const DEFAULT_PACK: Required<Omit<PackOptions, 'compress'>> = { targetBytes: 8 << 20, uploads: 4, rangeBytes: 4 << 20, aheadBytes: 16 << 20 };

export interface CasStoreOptions {
  /** Chunker parameters for new artefacts (default DEFAULT_CHUNKER). */
  chunker?: ChunkerParams;
  /** Which chunker engine cuts (chunker.ts; default the native one where the addon has it): the same boundaries either way. */
  chunkerEngine?: ChunkerEngine;
  /** Chunk uploads in flight per writer (chunk objects), and requests ahead per reader (default 4). */
  concurrency?: number;
  /** Write new chunks into packs (what openStore() does); without it, one object per chunk (layout 1). */
  pack?: PackOptions;
  /** Clock, timers and waits of the writer session (tests inject fakes). */
  locks?: LockTiming;
  /** Hash and cut new artefacts in the process's worker thread (chunk-hasher.ts) rather than on the caller's (default false). */
  hashWorker?: boolean;
  /** The decoded indexes kept for block images over a base (default: a KnownIndexes of its own; tests pass one to watch it). */
  knownIndexes?: KnownIndexes;
  /** How long the writer session stays open after its last writer ended (default 0: it ends then; module comment). */
  sessionLingerMs?: number;
}

/**
 * The writer session's linger the agent's store has (agent/store-handle.ts): longer than the gap
 * between a tracked VM's snapshots (one a second), short against the waits of a GC (cas-gc.ts).
 * Not for a process that may exit right after a write (a CLI): its lock would stay until stale.
 */
export const SESSION_LINGER_MS = 2000;

/** One artefact's verification: ok, or the problem found; bytes of chunks read and checked. */
export type VerifyResult = { path: string; ok: true; bytes: number } | { path: string; ok: false; problem: string; bytes: number };

/** How read() settles the claim it is tagged with. */
type Settle = { ok: (c: Claim) => void; fail: (e: unknown) => void };

/** The failures that say something is wrong with an artefact (not with reaching the store). */
const ARTEFACT_PROBLEMS = ['ERR_CHECKSUM', 'ERR_DATA_LOSS', 'ERR_UNSUPPORTED_VERSION'] as const;


/**
 * A block image's index is consistent: its sha256 is its chunk list's SHA-256 (`list`, when
 * already computed). Else ERR_CHECKSUM: its chunk list was changed after it was written.
 */
function checkBlockDigest(idx: ArtefactIndex, list = chunkListSha256(idx.chunks)): void {
  if (list !== idx.sha256) throw new VnsnapError('ERR_CHECKSUM', `artefact ${idx.path}: its index lists chunks whose chunk list SHA-256 is ${list}, its digest says ${idx.sha256}: the index was changed`);
}

/** ERR_INVALID_ARGUMENT unless relPath is a valid artefact path (the local store's rules and messages). */
function checkPath(relPath: string): string {
  confine('/', relPath);
  return relPath;
}

/** The blocks of a block image of these options; ERR_INVALID_ARGUMENT unless they are valid. */
function blockCount(relPath: string, o: BlockImageOptions): number {
  if (!isBlockSize(o.blockSize)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `block image ${relPath}: block size ${o.blockSize} is not a power of two from ${MIN_BLOCK} to ${MAX_BLOCK}`);
  if (!Number.isSafeInteger(o.size) || o.size <= 0 || o.size % o.blockSize !== 0) {
    throw new VnsnapError('ERR_INVALID_ARGUMENT', `block image ${relPath}: size ${o.size} is not a positive multiple of its block size ${o.blockSize}`);
  }
  return o.size / o.blockSize;
}

function checkPrefix(prefix: string): string {
  if (prefix.startsWith('/') || prefix.split('/').some((p) => p === '..')) throw new VnsnapError('ERR_INVALID_ARGUMENT', `bad prefix "${prefix}"`);
  return prefix;
}

export class CasStore implements SnapshotStore {
  private readonly chunker: ChunkerParams;
  private readonly engine: ChunkerEngine;
  private readonly concurrency: number;
  private readonly timing: Timing;
  private readonly pack: Required<PackOptions> | null;
  private readonly hashWorker: boolean;
  /** Which chunks the packs hold (pack-map.ts): brought up to date when a writer session starts. */
  readonly map = new PackMap();
  /** The open writer session, and how many writers are in it. */
  private session: Promise<WriterSession> | null = null;
  /** Block image indexes this store last put or read as a base, decoded (known-indexes.ts). */
  private readonly known: KnownIndexes;
  private writers = 0;
  private readonly lingerMs: number;
  /** The timer that ends a session left without writers (sessionLingerMs). */
  private lingering: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly backend: ObjectBackend,
    opts: CasStoreOptions = {},
  ) {
    this.chunker = checkChunkerParams({ ...(opts.chunker ?? DEFAULT_CHUNKER) });
    this.engine = opts.chunkerEngine ?? 'auto';
    this.concurrency = Math.max(1, Math.floor(opts.concurrency ?? 4));
    this.hashWorker = opts.hashWorker ?? false;
    this.known = opts.knownIndexes ?? new KnownIndexes();
    this.lingerMs = Math.max(0, opts.sessionLingerMs ?? 0);
    this.timing = timing(opts.locks);
    this.pack = opts.pack ? { ...DEFAULT_PACK, ...opts.pack, compress: opts.pack.compress ?? defaultCodec() } : null;
  }

  async create(relPath: string): Promise<CasWriter> {
    checkPath(relPath);
    const session = await this.enter();
    return new CasWriter(relPath, {
      chunker: this.chunker,
      hasher: this.hashWorker ? new WorkerChunkHasher(this.chunker, this.engine) : new InlineChunkHasher(this.chunker, this.engine),
      ...this.writing(session),
    });
  }

  /**
   * A writer of a block image (block-image-writer.ts; docs/storage.md, "Block images"). The base's
   * index is read inside the writer session, so the chunks it names cannot be swept before the new
   * index names them. ERR_INVALID_ARGUMENT for a bad size or block size, ERR_NOT_FOUND when the
   * base is absent, ERR_FAILED_PRECONDITION when it is not a block image of this size and block size.
   */
  async createBlockImage(relPath: string, o: BlockImageOptions): Promise<CasBlockImageWriter> {
    checkPath(relPath);
    if (o.alsoAt !== undefined) checkPath(o.alsoAt);
    const blocks = blockCount(relPath, o);
    const session = await this.enter();
    try {
      const base = o.base === undefined ? undefined : await this.baseBlocks(relPath, o, blocks);
      const remember = (path: string, bytes: Buffer, index: ArtefactIndex): void => this.known.remember(path, bytes, index);
      return new CasBlockImageWriter(relPath, { blockSize: o.blockSize, blocks, ...(base ? { base } : {}), ...(o.alsoAt !== undefined ? { alsoAt: o.alsoAt } : {}), remember, ...this.writing(session) });
    } catch (e) {
      await this.leave();
      throw e;
    }
  }

  /**
   * The blocks of `o.base` as a block image of `blocks` blocks of o.blockSize names them. The
   * index is read here, in the session, every time; it is decoded only when its bytes are not
   * the ones this store last put or read there (known-indexes.ts).
   */
  private async baseBlocks(relPath: string, o: BlockImageOptions, blocks: number): Promise<ChunkRef[]> {
    const base = o.base as string;
    const bytes = await this.indexBytes(base);
    if (!bytes) throw new VnsnapError('ERR_NOT_FOUND', `base ${base} of block image ${relPath} is not in the store`);
    let idx = this.known.lookup(base, bytes);
    if (!idx) {
      idx = decodeIndex(bytes, base);
      if (isBlockImage(idx)) this.known.remember(base, bytes, idx);
    }
    if (!isBlockImage(idx)) throw new VnsnapError('ERR_FAILED_PRECONDITION', `base ${base} of block image ${relPath} is not a block image`);
    const { blockSize, blocks: n } = idx.chunker;
    if (blockSize !== o.blockSize || n !== blocks) {
      throw new VnsnapError('ERR_FAILED_PRECONDITION', `base ${base} of block image ${relPath} has ${n} blocks of ${blockSize} bytes, not ${blocks} of ${o.blockSize}`);
    }
    // A loop, not a callback per block: see indexJson (cas-index.ts) for why.
    const out = new Array<ChunkRef>(blocks);
    for (let k = 0; k < blocks; k++) out[k] = this.current(idx.chunks[k] as ChunkRef);
    return out;
  }

  /**
   * A chunk reference pointing where the pack map says the chunk is now, when the pack it names
   * is gone (garbage collection repacked it; indexes are not rewritten: docs/storage.md,
   * "Layout"): a block image named from its base then does not carry the old location on, image
   * after image, each read of it looking the chunk up in the tables again. Else `c` itself.
   */
  private current(c: ChunkRef): ChunkRef {
    if (c.pack === undefined || this.map.hasPack(c.pack)) return c;
    const at = this.map.find(c.sha256);
    if (!at) return c; // read() looks again, and names it missing if it is
    return { sha256: c.sha256, size: c.size, pack: at.pack, offset: at.offset, ...(at.codec ? { codec: at.codec, stored: at.size } : {}) };
  }

  /** What every writer of this store is given: where its chunks go, and its session. */
  private writing(session: WriterSession): { backend: ObjectBackend; concurrency: number; packs?: PackSettings; guard: (what: string) => Promise<void>; done: () => Promise<void> } {
    return {
      backend: this.backend,
      concurrency: this.concurrency,
      ...(this.pack ? { packs: { map: this.map, targetBytes: this.pack.targetBytes, uploads: this.pack.uploads, ...(this.pack.compress !== 'none' ? { codec: this.pack.compress } : {}) } } : {}),
      guard: (what) => session.held(what),
      done: () => this.leave(),
    };
  }

  /** Join the open writer session, or start one; either way after any live GC sweep. */
  private async enter(): Promise<WriterSession> {
    if (this.session) {
      const began = this.timing.clock();
      while (isLive(await this.backend.head(GC_LOCK), this.timing.clock())) await waitForGc(this.backend, this.timing, began);
    }
    // Joining a lingering session: it no longer ends (it may have ended during the wait above).
    clearTimeout(this.lingering);
    this.lingering = undefined;
    this.writers++;
    if (!this.session) {
      const s = new WriterSession(this.backend, this.timing);
      // The map is read only once the lock is held: no sweep can then delete a pack it lists.
      this.session = s.start().then(async () => {
        if (this.pack) await this.map.refreshForSession(this.backend, this.timing.clock()).catch(async (e: unknown) => {
          await s.end().catch(() => undefined);
          throw e;
        });
        return s;
      });
      this.session.catch(() => undefined);
    }
    try {
      return await this.session;
    } catch (e) {
      await this.leave();
      throw e;
    }
  }

  /** A writer is over; the last one ends the session. */
  private async leave(): Promise<void> {
    if (--this.writers > 0 || !this.session) return;
    if (this.lingerMs === 0) return this.endSession();
    clearTimeout(this.lingering);
    this.lingering = setTimeout(() => {
      this.lingering = undefined;
      void this.endSession();
    }, this.lingerMs);
    this.lingering.unref();
  }

  /** End the session unless a writer is in it. */
  private async endSession(): Promise<void> {
    const s = this.session;
    if (this.writers > 0 || !s) return;
    this.session = null;
    const session = await s.catch(() => null);
    await session?.end().catch(() => undefined); // a lock left behind goes stale
  }

  put(relPath: string, data: Uint8Array): Promise<StoredArtefact> {
    return putThroughWriter(this, relPath, data);
  }

  /** The index of a committed artefact, or null when there is none. */
  async index(relPath: string): Promise<ArtefactIndex | null> {
    const data = await this.indexBytes(relPath);
    return data && decodeIndex(data, relPath);
  }

  /** The bytes of a committed artefact's index, or null when there is none. */
  private async indexBytes(relPath: string): Promise<Buffer | null> {
    try {
      return await this.backend.get(indexKey(checkPath(relPath)));
    } catch (e) {
      if (isVnsnapError(e, 'ERR_NOT_FOUND')) return null;
      throw e;
    }
  }

  /**
   * The bytes of a committed artefact, chunk by chunk, each checked before it is yielded, with
   * up to `concurrency` chunks read ahead. ERR_NOT_FOUND when absent.
   */
  read(relPath: string, expect: ReadExpect = {}): AsyncGenerator<Buffer> {
    let settle: Settle | undefined;
    const claim = new Promise<Claim>((ok, fail) => (settle = { ok, fail }));
    // Checked whole against its index (checked-read.ts): a reader expecting the same size and
    // SHA-256 need not hash the bytes again.
    return checkedRead(this.readIndexed(relPath, settle as Settle, expect), claim);
  }

  /** read()'s chunks; `settle` gets the index's size and SHA-256 before the first chunk. */
  private async *readIndexed(relPath: string, settle: Settle, expect: ReadExpect): AsyncGenerator<Buffer> {
    let idx: ArtefactIndex | null;
    try {
      idx = await this.index(relPath);
      if (!idx) throw new VnsnapError('ERR_NOT_FOUND', `artefact ${relPath} is not in the store`);
      const list = expect.chunkList === undefined && !isBlockImage(idx) ? undefined : chunkListSha256(idx.chunks);
      if (list !== undefined && expect.chunkList !== undefined && list !== expect.chunkList.toLowerCase()) {
        throw new VnsnapError('ERR_CHECKSUM', `artefact ${relPath}: its index lists other chunks than when it was written (chunk list SHA-256 ${list}, the manifest says ${expect.chunkList}): the index was replaced or forged`);
      }
      if (isBlockImage(idx)) checkBlockDigest(idx, list as string);
    } catch (e) {
      settle.fail(e);
      throw e;
    }
    settle.ok({ size: idx.size, sha256: idx.sha256 });
    // A chunk list bound by the caller's manifest, or a block image's (its digest): each chunk
    // checked suffices (module comment).
    yield* this.chunks(idx, expect.chunkList === undefined);
  }

  /**
   * The chunks of an artefact, each checked, read ahead (pack-reader.ts); with `whole`, its
   * SHA-256 checked at the end — except a block image's, whose digest is its chunk list's
   * (checkBlockDigest, before the first chunk).
   */
  private async *chunks(idx: ArtefactIndex, whole = true): AsyncGenerator<Buffer> {
    const sum = whole && !isBlockImage(idx) ? createHash('sha256') : undefined;
    let refreshed: Promise<number> | undefined;
    const locate = async (sha: string): Promise<ChunkLocation | undefined> => {
      refreshed ??= this.map.refresh(this.backend);
      await refreshed;
      return this.map.find(sha);
    };
    const read = this.pack ?? DEFAULT_PACK;
    for await (const b of readChunks(idx, { backend: this.backend, locate, concurrency: this.concurrency, rangeBytes: read.rangeBytes, aheadBytes: read.aheadBytes })) {
      sum?.update(b);
      yield b;
    }
    const got = sum?.digest('hex');
    if (got !== undefined && got !== idx.sha256) throw new VnsnapError('ERR_CHECKSUM', `artefact ${idx.path}: its chunks have SHA-256 ${got}, its index says ${idx.sha256}`);
  }

  async get(relPath: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const b of this.read(relPath)) parts.push(b);
    return Buffer.concat(parts);
  }

  /**
   * A second index naming the same chunks (no chunk is read or written): storedBytes 0. Runs in
   * the writer session, so a sweep cannot free the chunks between reading `from` and putting `to`.
   */
  async link(from: string, to: string): Promise<StoredArtefact> {
    checkPath(to);
    const session = await this.enter();
    try {
      const idx = await this.index(from);
      if (!idx) throw new VnsnapError('ERR_NOT_FOUND', `artefact ${from} is not in the store`);
      await session.held(`artefact ${to}`);
      await this.backend.put(indexKey(to), encodeIndex({ ...idx, path: to }));
      return { path: to, size: idx.size, sha256: idx.sha256, storedBytes: 0, attributes: attributesOf(idx) };
    } finally {
      await this.leave();
    }
  }

  async stat(relPath: string): Promise<number | null> {
    return (await this.index(relPath))?.size ?? null;
  }

  async verify(a: StoredArtefact): Promise<string | null> {
    const r = await this.check(a.path);
    if (!r.ok) return r.problem;
    if (r.size !== Number(a.size)) return `${a.path}: size ${r.size}, expected ${a.size}`;
    if (r.sha256 !== a.sha256.toLowerCase()) return `${a.path}: SHA-256 ${r.sha256}, expected ${a.sha256}`;
    return null;
  }

  /**
   * Re-read every chunk of every artefact under prefix and check every checksum against its
   * index (what `vnsnap snapshot verify` runs): one result per artefact, in path order, with the
   * bytes read. A problem is the line verify() returns; a backend failure while reading chunks
   * (ERR_UNAVAILABLE, ...) is thrown, since it says nothing about the artefact.
   */
  async verifyAll(prefix: string): Promise<VerifyResult[]> {
    const out: VerifyResult[] = [];
    for (const path of await this.list(prefix)) {
      const r = await this.check(path);
      out.push(r.ok ? { path, ok: true, bytes: r.bytes } : { path, ok: false, problem: r.problem, bytes: r.bytes });
    }
    return out;
  }

  /** Free the chunks no index names (cas-gc.ts); `vnsnap store gc`. */
  gc(opts: GcOptions = {}): Promise<GcResult> {
    return collectGarbage(this.backend, { ...(this.pack ? { packTargetBytes: this.pack.targetBytes } : {}), ...opts });
  }

  /** Chunks and bytes stored, logical bytes of every artefact, dedup ratio (cas-stats.ts); `vnsnap store stats`. */
  stats(): Promise<StoreStats> {
    return storeStats(this.backend, this.map);
  }

  /** Read one artefact whole, checked; what it holds or what is wrong with it. */
  private async check(path: string): Promise<{ ok: true; size: number; sha256: string; bytes: number } | { ok: false; problem: string; bytes: number }> {
    let bytes = 0;
    let idx: ArtefactIndex | null;
    try {
      idx = await this.index(path);
    } catch (e) {
      return { ok: false, problem: (e as Error).message, bytes };
    }
    if (!idx) return { ok: false, problem: `${path}: missing`, bytes };
    try {
      // chunks() checks the whole artefact against idx.sha256 at its end (a block image: its
      // chunk list, before the first chunk): no second hash here.
      if (isBlockImage(idx)) checkBlockDigest(idx);
      for await (const b of this.chunks(idx)) bytes += b.length;
      return { ok: true, size: bytes, sha256: idx.sha256, bytes };
    } catch (e) {
      if (ARTEFACT_PROBLEMS.some((c) => isVnsnapError(e, c))) return { ok: false, problem: (e as Error).message.replace(/^artefact /, ''), bytes };
      throw e;
    }
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
    this.known.forget(relPath);
  }

  /** Close the backend (an S3 client's sockets, which otherwise stay open until the process ends), after ending a lingering session. */
  close(): void {
    if (this.lingering === undefined) return this.backend.close?.();
    // A lingering session's lock deleted first (a GC would wait for it until it went stale).
    clearTimeout(this.lingering);
    this.lingering = undefined;
    void this.endSession().finally(() => this.backend.close?.());
  }

  async deleteByPrefix(prefix: string): Promise<number> {
    const paths = await this.list(prefix);
    for (const p of paths) {
      await this.backend.delete(indexKey(p));
      this.known.forget(p);
    }
    return paths.length;
  }
}
