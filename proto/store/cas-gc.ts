/**
 * Garbage collection of the content-addressed store (docs/storage.md, "Layout"): frees the
 * chunks no artefact index names, by mark and sweep with a grace period, beside running writers.
 *
 *   1. Mark (no lock): note T0; list every index, read it, collect the chunks it names.
 *   2. Candidates: every chunk object named by no index and stored before T0 − grace (object
 *      time); every pack stored before T0 − grace with no live chunk, or with too many dead
 *      bytes (repack), or without a table; every table without its pack (pack-gc.ts).
 *   3. Sweep (exclusive): put locks/gc (a stale one is taken over, a live one is ERR_UNAVAILABLE);
 *      wait until no live writer lock is left (cas-locks.ts; bounded, then ERR_UNAVAILABLE);
 *      put a new sweep generation (gc-generation.ts: writers' pack maps list the tables again);
 *      list the indexes again and read the ones new or rewritten since the mark, dropping their
 *      chunks from the candidates; repack, then delete the candidates (a pack's table before the
 *      pack), keeping locks/gc fresh; delete locks/gc.
 *
 * Guarantees:
 *   - Nothing named is freed: a chunk a writer stored or found present before the sweep is named
 *     by an index written before the sweep's re-listing (the sweep waits for every live writer),
 *     and no writer starts during the sweep (it sees locks/gc and waits).
 *   - A sweep that stalls (its lock not refreshed for STALE_MS − REFRESH_MS, so a writer may have
 *     taken it for dead) stops before its next delete with ERR_UNAVAILABLE.
 *   - Crash-safe: it only ever deletes candidates, after the re-listing, and a repacked pack only
 *     once its live chunks are in a new pack with its table; a failure or crash at any step
 *     leaves every named chunk readable, and the next run frees what this one did not. On a
 *     failure it deletes its lock if it can; a lock left by a crash goes stale after 5 minutes.
 *   - An index it cannot read or parse stops it before anything is deleted (it cannot know what
 *     that index names): the error says which artefact.
 *   - Chunks of aborted or crashed writers are freed once older than the grace period, which
 *     also covers clock skew between hosts and the backend.
 */
import { VnsnapError } from '../core/errors';
import { CHUNK_PREFIX, ARTEFACT_PREFIX, decodeIndex, pathOfIndexKey } from './cas-index';
import { liveWriterLocks, refreshGcLock, REFRESH_MS, STALE_MS, takeGcLock, timing, GC_LOCK, type LockTiming } from './cas-locks';
import { newGeneration } from './gc-generation';
import { getIfPresent, type ObjectBackend, type ObjectInfo } from './object-backend';
import { decodeTable, packIdOf, packKey, tableKey, PACK_PREFIX, TABLE_PREFIX } from './pack-format';
import { planPacks, repack, type PackFacts } from './pack-gc';
import { forEachLimit, PARALLEL } from './pack-map';

export interface GcOptions extends LockTiming {
  /** Chunks younger than this at the mark are kept (default 1 h). */
  graceMs?: number;
  /** How long the sweep waits for live writer locks to go (default 10 min). */
  writerWaitMs?: number;
  /** A pack is repacked when at least this fraction of its bytes is dead (default 0.3). */
  repackDeadFraction?: number;
  /** Size of the packs a repack writes (default 8 MiB). */
  packTargetBytes?: number;
}

export interface GcResult {
  chunksDeleted: number;
  bytesFreed: number;
  /** Chunks left in the store (named, or unnamed but within the grace period). */
  chunksKept: number;
  /** Distinct indexes read (at the mark and at the re-listing). */
  indexes: number;
  /** Packs deleted (dead, repacked, or debris without a table) and packs a repack wrote. */
  packsDeleted: number;
  packsWritten: number;
}

export const DEFAULT_GRACE_MS = 60 * 60_000;

/** The SHA-256 of every chunk the index `info` names; null when it was deleted since it was listed. */
async function namedBy(backend: ObjectBackend, info: ObjectInfo): Promise<string[] | null> {
  const path = pathOfIndexKey(info.key);
  if (path === null) return [];
  const data = await getIfPresent(backend, info.key);
  if (!data) return null;
  return decodeIndex(data, path).chunks.map((c) => c.sha256);
}

/** The SHA-256 a chunk object's key names. */
const shaOfChunkKey = (key: string): string => key.slice(key.lastIndexOf('/') + 1);

/** Every pack, every table object, and every table read. */
async function packFacts(backend: ObjectBackend): Promise<PackFacts> {
  const byId = (infos: ObjectInfo[]): Map<string, ObjectInfo> => {
    const m = new Map<string, ObjectInfo>();
    for (const i of infos) {
      const id = packIdOf(i.key);
      if (id !== null) m.set(id, i);
    }
    return m;
  };
  const packs = byId(await backend.listInfo(PACK_PREFIX));
  const tableInfos = byId(await backend.listInfo(TABLE_PREFIX));
  const tables: PackFacts['tables'] = new Map();
  await forEachLimit([...tableInfos.keys()], PARALLEL, async (id) => {
    const data = await getIfPresent(backend, tableKey(id));
    if (data) tables.set(id, decodeTable(data, tableKey(id)));
    else tableInfos.delete(id); // deleted since listed
  });
  return { packs, tableInfos, tables };
}

/** Run one garbage collection over `backend`. */
export async function collectGarbage(backend: ObjectBackend, opts: GcOptions = {}): Promise<GcResult> {
  const t = timing(opts);
  const grace = opts.graceMs ?? DEFAULT_GRACE_MS;
  const writerWait = opts.writerWaitMs ?? 10 * 60_000;
  const t0 = t.clock();
  const read = new Set<string>();

  // Mark.
  const marked = new Map<string, number>();
  const named = new Set<string>();
  for (const info of await backend.listInfo(ARTEFACT_PREFIX)) {
    const chunks = await namedBy(backend, info);
    if (chunks === null) continue;
    read.add(info.key);
    marked.set(info.key, info.modifiedMs);
    for (const k of chunks) named.add(k);
  }

  // Candidates.
  const cutoff = t0 - grace;
  const deadFraction = opts.repackDeadFraction ?? 0.3;
  const all = await backend.listInfo(CHUNK_PREFIX);
  const candidates = new Map<string, number>();
  for (const c of all) if (!named.has(shaOfChunkKey(c.key)) && c.modifiedMs < cutoff) candidates.set(c.key, c.size);
  const facts = await packFacts(backend);
  let plan = planPacks(facts, named, cutoff, deadFraction);
  if (candidates.size === 0 && plan.dead.length === 0 && plan.repack.length === 0 && plan.lostTables.length === 0) {
    return { chunksDeleted: 0, bytesFreed: 0, chunksKept: all.length + plan.keptChunks, indexes: read.size, packsDeleted: 0, packsWritten: 0 };
  }

  // Sweep.
  await takeGcLock(backend, t);
  try {
    const began = t.clock();
    let lastPut = began;
    /** Keep locks/gc fresh; stop if it may have gone stale (a writer may have started since). */
    const keepFresh = async (): Promise<void> => {
      const age = t.clock() - lastPut;
      if (age >= STALE_MS - REFRESH_MS) {
        throw new VnsnapError('ERR_UNAVAILABLE', `store ${backend.describe}: garbage collection stopped: ${GC_LOCK} was last refreshed ${Math.round(age / 1000)} s ago, writers may have started; run it again`);
      }
      if (age < REFRESH_MS) return;
      const now = t.clock();
      await refreshGcLock(backend, t);
      lastPut = now;
    };
    // Each look for writers follows a put of locks/gc no older than REFRESH_MS, so a writer
    // starting after the last look sees a live locks/gc, even if this wait stalled.
    for (;;) {
      if (t.clock() - lastPut >= REFRESH_MS) {
        const now = t.clock();
        await refreshGcLock(backend, t);
        lastPut = now;
      }
      if ((await liveWriterLocks(backend, t.clock())).length === 0) break;
      if (t.clock() - began >= writerWait) {
        throw new VnsnapError('ERR_UNAVAILABLE', `store ${backend.describe}: garbage collection waited ${Math.round(writerWait / 1000)} s for writers to finish; nothing was deleted, run it again later`);
      }
      await t.sleep(t.pollMs);
    }
    // Before the first delete: writers' pack maps list again at their next session (gc-generation.ts).
    await keepFresh();
    await newGeneration(backend);
    for (const info of await backend.listInfo(ARTEFACT_PREFIX)) {
      // Unchanged since the mark unless its time moved, or it is recent enough that a rewrite
      // could share its time stamp (S3 keeps whole seconds): those are read again.
      if (marked.get(info.key) === info.modifiedMs && info.modifiedMs < t0 - grace) continue;
      const chunks = await namedBy(backend, info);
      if (chunks === null) continue;
      read.add(info.key);
      for (const k of chunks) named.add(k);
    }
    for (const key of candidates.keys()) if (named.has(shaOfChunkKey(key))) candidates.delete(key);
    plan = planPacks(facts, named, cutoff, deadFraction);
    // Dead packs and debris first: a repack may write a pack with the id of debris it replaces.
    let bytesFreed = 0;
    let chunksFreed = 0;
    for (const d of plan.dead) {
      if (d.table) {
        await keepFresh();
        await backend.delete(tableKey(d.id));
      }
      await keepFresh();
      await backend.delete(packKey(d.id));
      bytesFreed += d.bytes;
      chunksFreed += d.chunks;
    }
    for (const id of plan.lostTables) {
      await keepFresh();
      await backend.delete(tableKey(id));
    }
    for (const [key, size] of candidates) {
      await keepFresh();
      await backend.delete(key);
      bytesFreed += size;
    }
    const moved = await repack(backend, plan.repack, opts.packTargetBytes ?? 8 << 20, keepFresh);
    for (const d of moved.deleted) {
      bytesFreed += d.bytes;
      chunksFreed += d.chunks;
    }
    for (const w of moved.written) {
      bytesFreed -= w.bytes;
      chunksFreed -= w.chunks;
    }
    const stayed = plan.repack.filter((r) => !moved.deleted.some((d) => d.id === r.id)).reduce((n, r) => n + r.chunks, 0);
    await backend.delete(GC_LOCK);
    const packsDeleted = moved.deleted.length + plan.dead.length;
    const chunksKept = all.length - candidates.size + plan.keptChunks + stayed + moved.written.reduce((n, w) => n + w.chunks, 0);
    return { chunksDeleted: candidates.size + chunksFreed, bytesFreed, chunksKept, indexes: read.size, packsDeleted, packsWritten: moved.written.length };
  } catch (e) {
    await backend.delete(GC_LOCK).catch(() => undefined); // else it goes stale
    throw e;
  }
}
