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
 *     With a backend that can defer its flushes (putUnsynced/sync: a local directory, whose put
 *     fsyncs the file and its directory), a job puts only the pack, unsynced, and flush() at the
 *     writer's commit makes every pack durable at once, then puts their tables the same way, and
 *     only then adds them to the map: a table is never durable before its pack (a crash leaves
 *     packs without tables, debris), and no other writer finds a chunk in a pack not yet durable.
 *   - locate() fills in every reference's pack and offset; it is called only once every job has
 *     succeeded, so an index never names a pack whose upload did not finish.
 *   - With a codec, each chunk of a pack is compressed when its upload job runs (in libuv's thread
 *     pool, the pack's chunks as one batch: chunk-codec.ts) and kept compressed only when that saves; the reference then records
 *     the codec and the bytes stored. `targetBytes` counts the chunks' own bytes. With zstd and a
 *     deferring backend, the chunks are compressed straight into the pack's reused buffer and
 *     the pack hashed in the same thread-pool work (pack-format.ts encodeAndSealPack).
 */
import { msSince } from '../core/clock';
import { copyInto } from './batch-pool';
import type { ChunkRef } from './cas-index';
import type { Codec } from './chunk-codec';
import type { ObjectBackend } from './object-backend';
import type { PackMap } from './pack-map';
import { SpareBuffers } from './spare-buffers';
import { encodeAndSealPack, encodeTable, packKey, tableKey, type PackEntry, type PackTable } from './pack-format';
import type { ChunkLocation } from './pack-map';

/**
 * Where a writer's time went, in ms: on the event loop (the artefact's SHA-256, the chunker, each
 * chunk's SHA-256) and in its pack jobs (compression in the thread pool, the backend's puts with
 * their fsyncs), the jobs' spans summed (they overlap each other, not the loop's work).
 */
export interface WriteProfile {
  hashMs: number;
  chunkMs: number;
  chunkHashMs: number;
  compressMs: number;
  putMs: number;
  /** flush(): the deferred packs and their tables made durable at commit. */
  flushMs: number;
  packs: number;
}

/** Where a chunk will be: its place in the pack once that is sealed and stored. */
interface Slot {
  at?: ChunkLocation;
}

/** Point a reference at where its chunk is stored. */
export function pointAt(ref: ChunkRef, at: ChunkLocation): void {
  ref.pack = at.pack;
  ref.offset = at.offset;
  if (at.codec) {
    ref.codec = at.codec;
    ref.stored = at.size;
  }
}

/** What an upload job added to the store. */
export interface PackUpload {
  chunks: number;
  bytes: number;
}

export type PackJob = () => Promise<PackUpload>;

/**
 * The open pack's new chunks, copied into memory of the pack's own as they are placed (one
 * buffer of targetBytes, filled in order; a chunk past its end gets its own): the chunks a writer
 * places are views of its writes (chunk-hasher.ts), and the writes' memory is then free at once
 * — a lent write's is reused by its caller (snapshot-store.ts WriteHandover), and a mostly
 * deduplicated stream, one new chunk in many writes, keeps none of those writes alive.
 *
 * That buffer (the arena) and the sealed pack's bytes are reused by the next packs of this and
 * every later writer of the process (SPARE_ARENAS, SPARE_PACKS: spare-buffers.ts): the arena once
 * its pack is sealed (its bytes then copied into the pack), the pack's bytes once a deferred put
 * of them settled (a local directory's file written: nothing holds them any more). A writer of a
 * new memory image seals a pack every 8 MiB, and fresh memory for each cost the agent its page
 * faults and, as external memory, full collections of its heap (docs/performance.md, "The agents'
 * CPU per memory stream, cut"); a tracked VM's snapshot every second is a new writer every
 * second, which per-writer spares did not help.
 */
interface OpenPack {
  chunks: { sha256: string; data: Buffer }[];
  slots: Slot[];
  bytes: number;
  arena: Buffer | undefined;
  used: number;
}

/** Arenas and buffers for a pack's bytes kept for the process's next packs (at most 4 of each). */
const SPARE_ARENAS = new SpareBuffers(4);
const SPARE_PACKS = new SpareBuffers(4);

export class PackWriter {
  private open: OpenPack = PackWriter.empty();
  private readonly placed = new Map<string, Slot>();
  private readonly refs: [ChunkRef, Slot][] = [];
  /** The backend's deferred puts (putUnsynced + sync), when it has them. */
  private readonly deferred: Required<Pick<ObjectBackend, 'putUnsynced' | 'sync'>> | null;
  /** Tables of the packs put without their flush; written by flush(). */
  private readonly unsynced: PackTable[] = [];

  constructor(
    private readonly backend: ObjectBackend,
    private readonly map: PackMap,
    private readonly targetBytes: number,
    private readonly codec?: Codec,
    private readonly profile?: WriteProfile,
  ) {
    this.deferred = backend.putUnsynced && backend.sync ? { putUnsynced: backend.putUnsynced.bind(backend), sync: backend.sync.bind(backend) } : null;
  }

  /** Place one chunk; an upload job when the open pack is full. */
  place(ref: ChunkRef, data: Buffer): PackJob | null {
    const mine = this.placed.get(ref.sha256);
    if (mine) {
      this.refs.push([ref, mine]);
      return null;
    }
    const there = this.map.find(ref.sha256);
    if (there) {
      pointAt(ref, there);
      return null;
    }
    const slot: Slot = {};
    this.open.chunks.push({ sha256: ref.sha256, data: this.copy(data) });
    this.open.slots.push(slot);
    this.open.bytes += data.length;
    this.placed.set(ref.sha256, slot);
    this.refs.push([ref, slot]);
    return this.open.bytes >= this.targetBytes ? this.seal() : null;
  }

  private static empty(): OpenPack {
    return { chunks: [], slots: [], bytes: 0, arena: undefined, used: 0 };
  }

  /** A copy of `data` in the open pack's own memory (OpenPack). */
  private copy(data: Buffer): Buffer {
    const o = this.open;
    o.arena ??= SPARE_ARENAS.take(this.targetBytes);
    if (o.used + data.length > o.arena.length) return Buffer.from(data);
    const at = o.used;
    copyInto(o.arena, at, data); // from a stream's batch slot: shared memory, which V8 copies with relaxed atomic moves
    o.used += data.length;
    return o.arena.subarray(at, o.used);
  }

  /** The upload job of the open pack, or null when it is empty. */
  seal(): PackJob | null {
    const { chunks, slots, arena, bytes } = this.open;
    if (chunks.length === 0) return null;
    this.open = PackWriter.empty();
    return async () => {
      let t = process.hrtime.bigint();
      // Stored bytes are at most the chunks' own (a chunk is kept encoded only when smaller).
      const out = this.deferred ? SPARE_PACKS.take(bytes, this.targetBytes + (this.targetBytes >> 3)) : undefined;
      const p = await encodeAndSealPack(chunks, this.codec, out);
      if (arena) SPARE_ARENAS.give(arena); // every chunk in it was copied into the pack
      if (this.profile) this.profile.compressMs += msSince(t);
      t = process.hrtime.bigint();
      if (this.deferred) {
        await this.deferred.putUnsynced(packKey(p.id), p.data);
        if (out) SPARE_PACKS.give(out); // written: the pack's bytes are the file's now
        this.unsynced.push(p.table);
      } else {
        await this.backend.put(packKey(p.id), p.data);
        await this.backend.put(tableKey(p.id), encodeTable(p.table));
      }
      if (this.profile) {
        this.profile.putMs += msSince(t);
        this.profile.packs++;
      }
      slots.forEach((s, i) => {
        const e = p.table.chunks[i] as PackEntry;
        s.at = { pack: p.id, offset: e.offset, size: e.size, ...(e.codec ? { codec: e.codec, raw: e.raw as number } : {}) };
      });
      if (!this.deferred) this.map.add(p.table);
      return { chunks: chunks.length, bytes: p.data.length };
    };
  }

  /**
   * With a backend that defers its flushes: the packs put so far made durable (one sync() for
   * all), then their tables put and made durable the same way, then the tables added to the map.
   * A no-op otherwise (each job put its pack and table durably). Called after every job succeeded
   * and before the index is put.
   */
  async flush(): Promise<void> {
    const d = this.deferred;
    const tables = this.unsynced.splice(0);
    if (!d || tables.length === 0) return;
    const t = process.hrtime.bigint();
    await d.sync(tables.map((tb) => packKey(tb.pack)));
    await Promise.all(tables.map((tb) => d.putUnsynced(tableKey(tb.pack), encodeTable(tb))));
    await d.sync(tables.map((tb) => tableKey(tb.pack)));
    for (const tb of tables) this.map.add(tb);
    if (this.profile) this.profile.flushMs += msSince(t);
  }

  /** Give every placed reference its pack and offset (after every job succeeded). */
  locate(): void {
    for (const [ref, slot] of this.refs) {
      if (slot.at === undefined) throw new Error(`chunk ${ref.sha256} was never uploaded`);
      pointAt(ref, slot.at);
    }
  }
}
