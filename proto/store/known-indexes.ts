/**
 * The block image indexes this process last wrote or read as a base, kept decoded beside their
 * bytes, so the next image over the same base need not decode them again.
 *
 * Why: a VM with tracked memory is snapshotted every second over its base, the index its
 * previous snapshot put (BlockImageOptions.alsoAt; docs/incremental-memory.md). Decoding that
 * index every time (JSON of ~4,100 entries for a 256 MiB guest) cost the agent CPU, and since the
 * decoded entries lived through the snapshot they were promoted and then freed by full garbage
 * collections: together a third of the agent's work per snapshot (docs/performance.md, "The
 * base's index kept decoded").
 *
 * Guarantees:
 *   - lookup(path, bytes) gives an index only when `bytes` are byte for byte the ones it was
 *     remembered with. The caller reads those bytes from the backend itself, inside its writer
 *     session: that read, never this cache, proves that the index exists and is unchanged.
 *   - The index given is the one decodeIndex(bytes, path) gives: it was decoded from those bytes,
 *     or encoded into them by encodeIndex, which decodeIndex maps back to the same index
 *     (cas-index.ts; tested in known-indexes.test.ts).
 *   - At most `maxEntries` chunk entries are kept over all indexes, the least recently used index
 *     dropped first; an index larger than that is not kept. Callers never change what they are
 *     given or what they remember (ChunkRefs are shared with the writers that name them).
 */
import type { ArtefactIndex } from './cas-index';

/** Chunk entries kept at most: 16 GiB of guest RAM at 64 KiB per block, some 60 MiB of heap. */
export const KNOWN_INDEX_ENTRIES = 256 * 1024;

interface Known {
  bytes: Buffer;
  index: ArtefactIndex;
}

export class KnownIndexes {
  /** In order of use, the least recent first (a Map keeps insertion order). */
  private readonly byPath = new Map<string, Known>();
  private entries = 0;

  constructor(private readonly maxEntries = KNOWN_INDEX_ENTRIES) {}

  /** The index remembered for `path` with exactly these bytes, or undefined. */
  lookup(path: string, bytes: Buffer): ArtefactIndex | undefined {
    const k = this.byPath.get(path);
    if (!k || !k.bytes.equals(bytes)) return undefined;
    this.byPath.delete(path);
    this.byPath.set(path, k); // now the most recent
    return k.index;
  }

  /** Keep `index`, whose encoding under `path` is `bytes`, in place of anything kept for `path`. */
  remember(path: string, bytes: Buffer, index: ArtefactIndex): void {
    this.forget(path);
    const n = index.chunks.length;
    if (n > this.maxEntries) return;
    for (const [p, k] of this.byPath) {
      if (this.entries + n <= this.maxEntries) break;
      this.byPath.delete(p);
      this.entries -= k.index.chunks.length;
    }
    this.byPath.set(path, { bytes, index });
    this.entries += n;
  }

  /** Drop what is kept for `path` (its index was deleted or replaced by another writer). */
  forget(path: string): void {
    const k = this.byPath.get(path);
    if (!k) return;
    this.byPath.delete(path);
    this.entries -= k.index.chunks.length;
  }

  /** Paths kept, the least recently used first (for tests and logs). */
  get paths(): string[] {
    return [...this.byPath.keys()];
  }
}
