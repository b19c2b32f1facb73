/**
 * The pack half of garbage collection (cas-gc.ts runs the mark, the locks and the sweep): which
 * packs to delete or repack given the chunks the indexes name, and the repacking itself.
 *
 * A chunk is live in one pack only, its home: of the packs whose tables hold it, the newest
 * (object time, then id). Every other copy is dead, so the duplicate a repack or two racing
 * writers made goes away with the older pack. A pack older than the cutoff (mark time − grace)
 * is deleted when it holds no live chunk, and repacked when its dead bytes are at least
 * `deadFraction` of it; younger packs are left alone (a writer may be about to name them).
 *
 * Repacking copies the live chunks of the packs to repack into new packs (each chunk's SHA-256
 * checked on the way, a compressed one after decompressing it; it is copied as stored, codec and
 * all; a pack with a chunk that does not check out is left as it is), puts each
 * new pack and then its table, and only then deletes the old packs' tables and then the old
 * packs. Indexes are not rewritten: they keep naming the old pack, and a reader that finds it
 * gone looks the chunk up in the tables (pack-reader.ts). So every step leaves every named chunk
 * readable — a crash before a new table is put leaves a pack without a table (debris, deleted by
 * the next run), a crash after it leaves two copies (the older pack is then dead and deleted by
 * the next run) — and no index is ever written by garbage collection.
 */
import { createHash } from 'node:crypto';
import type { ObjectBackend, ObjectInfo } from './object-backend';
import { isVnsnapError } from '../core/errors';
import { decodeChunk } from './chunk-codec';
import { encodeTable, packKey, sealPack, tableKey, type PackEntry, type PackInput, type PackTable } from './pack-format';

export interface PackFacts {
  /** Every table read, by pack id. */
  tables: Map<string, PackTable>;
  /** Every pack object, by id. */
  packs: Map<string, ObjectInfo>;
  /** Every table object, by pack id. */
  tableInfos: Map<string, ObjectInfo>;
}

export interface PackPlan {
  /** Packs to delete: no live chunk, or no table (debris). */
  dead: { id: string; bytes: number; chunks: number; table: boolean }[];
  /** Tables whose pack is gone. */
  lostTables: string[];
  /** Packs to repack, with their live chunks. */
  repack: { id: string; bytes: number; live: PackEntry[]; chunks: number }[];
  /** Chunk entries in packs that stay. */
  keptChunks: number;
}

/** The home pack of every chunk named (see the header). */
function homes(f: PackFacts, named: ReadonlySet<string>): Map<string, string> {
  const home = new Map<string, string>();
  const newer = (a: string, b: string): boolean => {
    const ta = f.packs.get(a)?.modifiedMs ?? 0;
    const tb = f.packs.get(b)?.modifiedMs ?? 0;
    return ta !== tb ? ta > tb : a > b;
  };
  for (const t of f.tables.values()) {
    if (!f.packs.has(t.pack)) continue;
    for (const c of t.chunks) {
      if (!named.has(c.sha256)) continue;
      const h = home.get(c.sha256);
      if (h === undefined || newer(t.pack, h)) home.set(c.sha256, t.pack);
    }
  }
  return home;
}

/** What to do with each pack older than `cutoff` (see the header). */
export function planPacks(f: PackFacts, named: ReadonlySet<string>, cutoff: number, deadFraction: number): PackPlan {
  const home = homes(f, named);
  const plan: PackPlan = { dead: [], lostTables: [], repack: [], keptChunks: 0 };
  for (const [id, info] of f.packs) {
    const t = f.tables.get(id);
    const old = info.modifiedMs < cutoff;
    if (!t) {
      if (old && !f.tableInfos.has(id)) plan.dead.push({ id, bytes: info.size, chunks: 0, table: false });
      continue;
    }
    const live = t.chunks.filter((c) => home.get(c.sha256) === id);
    const liveBytes = live.reduce((n, c) => n + c.size, 0);
    if (old && live.length === 0) plan.dead.push({ id, bytes: info.size, chunks: t.chunks.length, table: true });
    else if (old && t.size - liveBytes > 0 && t.size - liveBytes >= deadFraction * t.size) plan.repack.push({ id, bytes: info.size, live, chunks: t.chunks.length });
    else plan.keptChunks += t.chunks.length;
  }
  for (const [id, info] of f.tableInfos) if (!f.packs.has(id) && info.modifiedMs < cutoff) plan.lostTables.push(id);
  return plan;
}

export interface RepackResult {
  /** Old packs whose live chunks all went into new packs, and which were deleted. */
  deleted: { id: string; bytes: number; chunks: number }[];
  written: { id: string; bytes: number; chunks: number }[];
}

/**
 * Copy the live chunks of `plan.repack` into new packs of about targetBytes, then delete the old
 * packs (tables first). `step` runs before every backend write or delete (lock freshness).
 */
export async function repack(backend: ObjectBackend, plan: PackPlan['repack'], targetBytes: number, step: () => Promise<void>): Promise<RepackResult> {
  const out: RepackResult = { deleted: [], written: [] };
  let open: PackInput[] = [];
  let openBytes = 0;
  let sources: PackPlan['repack'] = [];
  const flush = async (): Promise<void> => {
    if (open.length > 0) {
      const p = sealPack(open);
      await step();
      await backend.put(packKey(p.id), p.data);
      await step();
      await backend.put(tableKey(p.id), encodeTable(p.table));
      out.written.push({ id: p.id, bytes: p.data.length, chunks: open.length });
    }
    for (const s of sources) {
      if (out.written.some((w) => w.id === s.id)) continue; // the same bytes again: nothing to delete
      await step();
      await backend.delete(tableKey(s.id));
      await step();
      await backend.delete(packKey(s.id));
      out.deleted.push({ id: s.id, bytes: s.bytes, chunks: s.chunks });
    }
    open = [];
    openBytes = 0;
    sources = [];
  };
  for (const src of plan) {
    const chunks = await liveChunks(backend, src);
    if (!chunks) continue;
    open.push(...chunks);
    openBytes += chunks.reduce((n, c) => n + c.data.length, 0);
    sources.push(src);
    if (openBytes >= targetBytes) await flush();
  }
  await flush();
  return out;
}

/** The live chunks of a pack, each checked; null when one does not check out (the pack stays). */
async function liveChunks(backend: ObjectBackend, src: PackPlan['repack'][number]): Promise<PackInput[] | null> {
  const data = await backend.get(packKey(src.id));
  const out: PackInput[] = [];
  for (const c of src.live) {
    const b = data.subarray(c.offset, c.offset + c.size);
    if (b.length !== c.size) return null;
    let chunk: Buffer;
    try {
      chunk = await decodeChunk(b, c.codec, c.raw ?? c.size, `chunk ${c.sha256} of pack ${src.id}`);
    } catch (e) {
      if (isVnsnapError(e, 'ERR_CHECKSUM')) return null;
      throw e;
    }
    if (createHash('sha256').update(chunk).digest('hex') !== c.sha256) return null;
    out.push({ sha256: c.sha256, data: Buffer.from(b), ...(c.codec ? { codec: c.codec, raw: c.raw as number } : {}) });
  }
  return out;
}
