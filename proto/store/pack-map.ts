/**
 * Which chunks a packed store holds, and where: the map chunk SHA-256 → (pack, offset, size),
 * built from the pack tables (pack-format.ts) and kept current by this process's own writes. A
 * writer consults it instead of asking the backend about each chunk (no HEAD per chunk); a
 * reader consults it only when the pack an index points to is gone (garbage collection moved its
 * live chunks into a new pack).
 *
 * Guarantees:
 *   - refresh() makes the map exactly what the tables listed now say, plus what add() added since
 *     that is still listed: it lists packtabs/ once, reads only the tables it has not read before
 *     (at most PARALLEL at a time), and drops the packs whose table is gone.
 *   - A writer session calls refreshForSession() after its lock is taken (cas-store.ts): garbage
 *     collection cannot delete a pack while the session is open, so a chunk found in the map stays
 *     stored until an index naming it is written (docs/storage.md, "Delete and garbage collection").
 *   - refreshForSession() costs one get() in the steady state: it reads the sweep generation
 *     (gc-generation.ts) and skips the listing when the token is the one read at its last full
 *     refresh, that refresh is less than maxAgeMs old, and no other refresh() overlapped it. Safe
 *     because a sweep puts a new token only once no writer lock is live and before it deletes
 *     anything, and a session starts only when no sweep is live: a sweep that deleted a pack
 *     after the last listing put its token after that listing's token was read, so the tokens
 *     differ and the session lists again. What the map does not see without a listing is only
 *     new packs of other processes (this process's own packs come in by add()), and missing them
 *     costs dedup, never correctness: their chunks are stored again, in this writer's packs; the
 *     age bound makes them seen within maxAgeMs. An absent token (a store only an older version
 *     collected, which deletes without a token) means a full refresh at every session start;
 *     only on an empty store (no table listed) does the session put the first token itself.
 *   - A chunk stored in two packs (two writers of different processes storing it at once) is
 *     found in one of them; both copies are whole chunks, either serves.
 *   - A damaged table stops refresh() with its error (ERR_DATA_LOSS naming the key).
 */
import { newGeneration, readGeneration } from './gc-generation';
import { getIfPresent, type ObjectBackend } from './object-backend';
import { decodeTable, packIdOf, tableKey, TABLE_PREFIX, type PackEntry, type PackTable } from './pack-format';

/** Where one chunk is stored: its pack, and its entry there (offset, bytes in the pack, codec). */
export type ChunkLocation = Omit<PackEntry, 'sha256'> & { pack: string };

/** Table reads in flight during refresh(). */
export const PARALLEL = 16;

/** How old the last full refresh may be before refreshForSession() lists again (other processes' packs). */
export const MAP_MAX_AGE_MS = 60_000;

/** Run f over items with at most `limit` running at once; the first failure is thrown after all settle. */
export async function forEachLimit<T>(items: readonly T[], limit: number, f: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { e: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (next < items.length && failure === undefined) {
      const item = items[next++] as T;
      try {
        await f(item);
      } catch (e) {
        failure ??= { e };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failure !== undefined) throw failure.e;
}

export class PackMap {
  private readonly tables = new Map<string, PackTable>();
  private readonly byChunk = new Map<string, ChunkLocation>();
  /** The sweep generation read before the last full refresh that may be skipped after, and when. */
  private synced: { generation: string; at: number } | null = null;
  /** refresh() calls begun, and running now (a session's refresh overlapped by another is not trusted). */
  private begun = 0;
  private running = 0;

  /** Where the chunk with this SHA-256 is stored, if in a pack this map knows. */
  find(sha256: string): ChunkLocation | undefined {
    return this.byChunk.get(sha256);
  }

  /** Whether this map knows the pack (its table is listed). */
  hasPack(id: string): boolean {
    return this.tables.has(id);
  }

  /** Packs known. */
  get packs(): number {
    return this.tables.size;
  }

  /** Every table known. */
  allTables(): PackTable[] {
    return [...this.tables.values()];
  }

  /** A pack this process stored (its table is put). */
  add(t: PackTable): void {
    this.tables.set(t.pack, t);
    for (const { sha256, ...at } of t.chunks) if (!this.byChunk.has(sha256)) this.byChunk.set(sha256, { pack: t.pack, ...at });
  }

  /**
   * At a writer session's start, after its lock is put (see the header): a full refresh unless
   * the sweep generation is unchanged since the last one and that is less than maxAgeMs old at
   * `now`. Returns whether it listed the tables. On an empty store (no table listed) with no
   * generation it puts the first one, so a new store has the cheap path from its first session.
   */
  async refreshForSession(backend: ObjectBackend, now: number, maxAgeMs = MAP_MAX_AGE_MS): Promise<boolean> {
    let generation = await readGeneration(backend);
    const last = this.synced;
    if (generation !== null && last !== null && last.generation === generation && now - last.at < maxAgeMs) return false;
    this.synced = null;
    const alone = this.running === 0;
    const before = this.begun;
    const listed = await this.refresh(backend);
    if (generation === null && listed === 0) generation = await newGeneration(backend);
    if (generation !== null && alone && this.begun === before + 1) this.synced = { generation, at: now };
    return true;
  }

  /** Bring the map to what the backend's tables say now (see the header); returns the tables listed. */
  async refresh(backend: ObjectBackend): Promise<number> {
    this.begun++;
    this.running++;
    try {
      return await this.list(backend);
    } finally {
      this.running--;
    }
  }

  private async list(backend: ObjectBackend): Promise<number> {
    const listed = new Set<string>();
    for (const key of await backend.list(TABLE_PREFIX)) {
      const id = packIdOf(key);
      if (id !== null) listed.add(id);
    }
    let dropped = false;
    for (const id of this.tables.keys()) {
      if (!listed.has(id)) {
        this.tables.delete(id);
        dropped = true;
      }
    }
    if (dropped) {
      this.byChunk.clear();
      for (const t of this.tables.values()) this.add(t);
    }
    const fresh = [...listed].filter((id) => !this.tables.has(id));
    await forEachLimit(fresh, PARALLEL, async (id) => {
      const key = tableKey(id);
      const data = await getIfPresent(backend, key);
      if (data) this.add(decodeTable(data, key)); // else deleted since listed
    });
    return listed.size;
  }
}
