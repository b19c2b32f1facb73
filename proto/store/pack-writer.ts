/**
 * The packing half of an artefact writer (cas-writer.ts): it places each new chunk of one writer
 * in that writer's open pack and hands back an upload job when the pack reaches its target size
 * (and at the end, for the rest), so the writer uploads a few MiB-sized objects instead of one
 * object per chunk. One open pack per writer, not per store: an artefact's chunks then lie back
 * to back in few packs, which a reader takes in few ranged requests (pack-reader.ts).
 *
 * Guarantees:
 *   - A chunk this writer placed before, or that the store's map (pack-map.ts) knows, is not
 *     placed again: its reference points at where it already is.
 *   - An upload job puts the pack, then its table (pack-format.ts), then adds the table to the
 *     map; a failed job leaves at most a pack without a table (garbage collection's debris).
 *   - locate() fills in every reference's pack and offset; it is called only once every job has
 *     succeeded, so an index never names a pack whose upload did not finish.
 */
import type { ChunkRef } from './cas-index';
import type { ObjectBackend } from './object-backend';
import type { PackMap } from './pack-map';
import { encodeTable, packKey, sealPack, tableKey } from './pack-format';

/** Where a chunk will be: the pack's id once it is sealed, and the offset in it. */
interface Slot {
  pack?: string;
  offset: number;
}

/** What an upload job added to the store. */
export interface PackUpload {
  chunks: number;
  bytes: number;
}

export type PackJob = () => Promise<PackUpload>;

export class PackWriter {
  private open: { chunks: { sha256: string; data: Buffer }[]; slots: Slot[]; bytes: number } = { chunks: [], slots: [], bytes: 0 };
  private readonly placed = new Map<string, Slot>();
  private readonly refs: [ChunkRef, Slot][] = [];

  constructor(
    private readonly backend: ObjectBackend,
    private readonly map: PackMap,
    private readonly targetBytes: number,
  ) {}

  /** Place one chunk; an upload job when the open pack is full. */
  place(ref: ChunkRef, data: Buffer): PackJob | null {
    const mine = this.placed.get(ref.sha256);
    if (mine) {
      this.refs.push([ref, mine]);
      return null;
    }
    const there = this.map.find(ref.sha256);
    if (there) {
      ref.pack = there.pack;
      ref.offset = there.offset;
      return null;
    }
    const slot: Slot = { offset: this.open.bytes };
    this.open.chunks.push({ sha256: ref.sha256, data });
    this.open.slots.push(slot);
    this.open.bytes += data.length;
    this.placed.set(ref.sha256, slot);
    this.refs.push([ref, slot]);
    return this.open.bytes >= this.targetBytes ? this.seal() : null;
  }

  /** The upload job of the open pack, or null when it is empty. */
  seal(): PackJob | null {
    const { chunks, slots } = this.open;
    if (chunks.length === 0) return null;
    this.open = { chunks: [], slots: [], bytes: 0 };
    return async () => {
      const p = sealPack(chunks);
      await this.backend.put(packKey(p.id), p.data);
      await this.backend.put(tableKey(p.id), encodeTable(p.table));
      for (const s of slots) s.pack = p.id;
      this.map.add(p.table);
      return { chunks: chunks.length, bytes: p.data.length };
    };
  }

  /** Give every placed reference its pack and offset (after every job succeeded). */
  locate(): void {
    for (const [ref, slot] of this.refs) {
      if (slot.pack === undefined) throw new Error(`chunk ${ref.sha256} was never uploaded`);
      ref.pack = slot.pack;
      ref.offset = slot.offset;
    }
  }
}
