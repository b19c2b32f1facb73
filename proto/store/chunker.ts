/**
 * Content-defined chunking for the content-addressed store (docs/storage.md, "Chunking"): cut a
 * byte stream into chunks whose boundaries depend only on the bytes near them, so an unchanged
 * stretch of a VM's memory or disk gives the same chunks in the next snapshot even when what
 * comes before it grew, shrank or moved.
 *
 * The algorithm is FastCDC (Xia et al., USENIX ATC 2016) with normalized chunking:
 *   - a gear rolling hash, h = (h << 1) + GEAR[byte] over 32 bits, so each bit of h depends on
 *     at most the last 32 bytes; a boundary is where the top bits of h are all zero;
 *   - the first `min` bytes of a chunk are not hashed (no chunk is shorter than min, except the
 *     last), the hash starts from 0 at every chunk;
 *   - up to `avg` bytes the mask has log2(avg)+2 bits (a cut is 4× less likely), past it
 *     log2(avg)-2 bits (4× more likely): chunk sizes bunch around avg;
 *   - a chunk is cut at `max` bytes whatever the hash.
 * GEAR is fixed (a splitmix32 sequence from a fixed seed): it is part of the store's format, as
 * are the parameters. Changing either changes where chunks are cut — old chunks stay readable
 * (every index lists its chunks), they are just no longer shared with new ones.
 *
 * Streaming guarantee: push() takes the stream in any pieces and returns the chunks that closed;
 * end() returns the last one. The chunks (bytes and boundaries) are exactly the same however the
 * stream is split into pushes. Returned chunks are fresh copies: the caller may reuse its buffers
 * as soon as push() returns; pushOwned() instead returns views of a buffer handed over where a
 * chunk lies whole inside it (the store's write path: no copy per chunk).
 *
 * Two engines cut the same boundaries byte for byte: the native addon's loop (switch/native/cdc.c,
 * through store-native.ts; about ten times faster), used when the addon has it, and the
 * JavaScript scan below, the reference and the fallback (test/unit/chunker-native.test.ts
 * compares them on random data and at the edges).
 */
import { VnsnapError } from '../core/errors';
import { storeNative, type StoreNative } from './store-native';

export interface ChunkerParams {
  /** Smallest chunk (except the last of a stream). */
  min: number;
  /** Target average; a power of two. */
  avg: number;
  /** Largest chunk. */
  max: number;
}

/** The store's parameters, chosen by measurement (docs/storage.md, "Chunking"). */
export const DEFAULT_CHUNKER: Readonly<ChunkerParams> = Object.freeze({ min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 });

/** Anything that cuts a stream into chunks (content-defined, or fixed blocks for comparison). */
export interface ChunkSplitter {
  /** Feed the next bytes; returns the chunks that closed. */
  push(data: Uint8Array): Buffer[];
  /** The stream is over: returns the last chunk (none for an empty remainder). The splitter is then fresh again. */
  end(): Buffer[];
}

/** The gear table: 256 pseudo-random 32-bit values from splitmix32 with a fixed seed. */
export const GEAR: Int32Array = (() => {
  const t = new Int32Array(256);
  let s = 0x76_6e_73_6e; // "vnsn"
  for (let i = 0; i < 256; i++) {
    s = (s + 0x9e3779b9) | 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    t[i] = z ^ (z >>> 16);
  }
  return t;
})();

/** A mask of the top `bits` bits of a 32-bit word. */
function topBits(bits: number): number {
  return bits <= 0 ? 0 : bits >= 32 ? -1 : (-1 << (32 - bits)) | 0;
}

/** Check parameters: ERR_INVALID_ARGUMENT naming the rule broken. */
export function checkChunkerParams(p: ChunkerParams): ChunkerParams {
  const { min, avg, max } = p;
  const ok = [min, avg, max].every((n) => Number.isSafeInteger(n) && n > 0);
  if (!ok || !(min <= avg && avg <= max)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `chunker sizes must be positive integers with min <= avg <= max, got ${min}/${avg}/${max}`);
  if ((avg & (avg - 1)) !== 0 || avg < 64 || avg > 1 << 26) throw new VnsnapError('ERR_INVALID_ARGUMENT', `chunker average ${avg} must be a power of two from 64 to 64 MiB`);
  return p;
}

/** Collects the pieces of the chunk being built and hands them out as one fresh Buffer. */
class Pending {
  private parts: Buffer[] = [];

  add(piece: Uint8Array): void {
    if (piece.length > 0) this.parts.push(Buffer.from(piece));
  }

  /**
   * The pending pieces plus `tail` as one new Buffer; empties the pending pieces. With `view`
   * (`tail` is in a buffer handed over: pushOwned()), a chunk that is all `tail` is a view of it.
   */
  take(tail: Uint8Array, view = false): Buffer {
    let out: Buffer;
    if (this.parts.length > 0) out = Buffer.concat([...this.parts, tail]);
    else out = view ? Buffer.from(tail.buffer, tail.byteOffset, tail.byteLength) : Buffer.from(tail);
    this.parts = [];
    return out;
  }
}

/** Which engine cuts: the addon's when it has one ('auto'), or the one named. */
export type ChunkerEngine = 'auto' | 'native' | 'js';

/** Largest piece handed to the native loop at once (its offsets are 32-bit). */
const NATIVE_PIECE = 1 << 30;

/** FastCDC with normalized chunking (level 2). See the module comment. */
export class Chunker implements ChunkSplitter {
  private readonly min: number;
  private readonly avg: number;
  private readonly max: number;
  private readonly maskS: number;
  private readonly maskL: number;
  private readonly pending = new Pending();
  /** Bytes of the current chunk seen so far, and the hash over them (from byte `min` on). */
  private pos = 0;
  private h = 0;
  /** The native loop, its state [pos, h] and params, when it cuts; null for the JS scan. */
  private readonly native: StoreNative | null;
  private readonly nState = new Uint32Array(2);
  private readonly nParams: Uint32Array;
  /** Which engine cuts this stream. */
  readonly engine: 'native' | 'js';
  /** Where the chunks the last push closed end, as offsets in its data (`lastEnds` entries of `ends`). */
  private ends = new Uint32Array(64);
  private lastEnds = 0;

  constructor(params: ChunkerParams = DEFAULT_CHUNKER, engine: ChunkerEngine = 'auto') {
    checkChunkerParams(params);
    this.min = params.min;
    this.avg = params.avg;
    this.max = params.max;
    const bits = Math.round(Math.log2(params.avg));
    this.maskS = topBits(bits + 2);
    this.maskL = topBits(bits - 2);
    this.nParams = new Uint32Array([this.min, this.avg, this.max, this.maskS >>> 0, this.maskL >>> 0]);
    const n = engine === 'js' || params.max > 0xffff_ffff ? null : storeNative();
    if (engine === 'native' && !n) throw new VnsnapError('ERR_NATIVE_IO', 'the native chunker is not built (run `npm install`)');
    this.native = n;
    this.engine = n ? 'native' : 'js';
  }

  push(data: Uint8Array): Buffer[] {
    return this.cutInto(data, false);
  }

  /**
   * push() of a buffer the caller hands over (never written again): a chunk that lies whole
   * inside `data` is a view of it, not a copy (the same bytes and boundaries); a chunk begun in
   * an earlier push is still a fresh Buffer, and nothing this chunker keeps refers to `data`.
   */
  pushOwned(data: Uint8Array): Buffer[] {
    return this.cutInto(data, true);
  }

  /**
   * The offsets in the last push()'s data just past each chunk it closed, in order (one per chunk
   * returned); valid until the next push. Data of 4 GiB or more has none (null).
   */
  cutEnds(): Uint32Array | null {
    return this.lastEnds < 0 ? null : this.ends.subarray(0, this.lastEnds);
  }

  private cutInto(data: Uint8Array, view: boolean): Buffer[] {
    this.lastEnds = data.length > 0xffff_ffff ? -1 : 0;
    if (this.native) return this.pushNative(this.native, data, view);
    const out: Buffer[] = [];
    let start = 0;
    while (start < data.length) {
      const cut = this.scan(data, start);
      if (cut < 0) {
        this.pending.add(data.subarray(start));
        break;
      }
      out.push(this.pending.take(data.subarray(start, cut), view));
      this.noteEnd(cut);
      start = cut;
    }
    return out;
  }

  private noteEnd(at: number): void {
    if (this.lastEnds < 0) return;
    if (this.lastEnds === this.ends.length) {
      const more = new Uint32Array(this.ends.length * 2);
      more.set(this.ends);
      this.ends = more;
    }
    this.ends[this.lastEnds++] = at;
  }

  end(): Buffer[] {
    const had = this.native ? this.nState[0] !== 0 : this.pos > 0;
    const last = this.pending.take(new Uint8Array(0));
    this.pos = 0;
    this.h = 0;
    this.nState.fill(0);
    return had ? [last] : [];
  }

  /** push() through the addon's loop, in pieces its 32-bit offsets can address. */
  private pushNative(native: StoreNative, data: Uint8Array, view: boolean): Buffer[] {
    const out: Buffer[] = [];
    for (let off = 0; off < data.length; off += NATIVE_PIECE) {
      const piece = data.subarray(off, Math.min(data.length, off + NATIVE_PIECE));
      const cuts = new Uint32Array(Math.floor(piece.length / this.min) + 2);
      const n = native.cdcCuts(piece, this.nState, this.nParams, cuts);
      let start = 0;
      for (let k = 0; k < n; k++) {
        const cut = cuts[k] as number;
        out.push(this.pending.take(piece.subarray(start, cut), view));
        this.noteEnd(off + cut);
        start = cut;
      }
      this.pending.add(piece.subarray(start));
    }
    return out;
  }

  /** Scan data from `i` for the end of the current chunk: the index just past it, or -1 when data ran out first. */
  private scan(data: Uint8Array, i: number): number {
    const n = data.length;
    let pos = this.pos;
    if (pos < this.min) {
      const skip = Math.min(this.min - pos, n - i);
      i += skip;
      pos += skip;
      if (pos < this.min) {
        this.pos = pos;
        return -1;
      }
    }
    // Up to avg bytes the stricter mask, then the looser one up to max (normalized chunking).
    if (pos < this.avg) {
      const end = Math.min(n, i + this.avg - pos);
      const c = this.roll(data, i, end, this.maskS);
      if (c >= 0) return this.cut(c);
      pos += end - i;
      i = end;
    }
    if (pos < this.max) {
      const end = Math.min(n, i + this.max - pos);
      const c = this.roll(data, i, end, this.maskL);
      if (c >= 0) return this.cut(c);
      pos += end - i;
      i = end;
    }
    if (pos >= this.max) return this.cut(i);
    this.pos = pos;
    return -1;
  }

  /** Roll the hash over data[i..end): the index just past the first byte where (h & mask) is 0, or -1. */
  private roll(data: Uint8Array, i: number, end: number, mask: number): number {
    let h = this.h;
    for (; i < end; i++) {
      h = ((h << 1) + (GEAR[data[i] as number] as number)) | 0;
      if ((h & mask) === 0) return i + 1;
    }
    this.h = h;
    return -1;
  }

  private cut(at: number): number {
    this.pos = 0;
    this.h = 0;
    return at;
  }
}

/** Fixed-size blocks: the baseline the content-defined chunker is measured against. */
export class FixedChunker implements ChunkSplitter {
  private readonly pending = new Pending();
  private pos = 0;

  constructor(readonly size: number) {
    if (!Number.isSafeInteger(size) || size <= 0) throw new VnsnapError('ERR_INVALID_ARGUMENT', `block size must be a positive integer, got ${size}`);
  }

  push(data: Uint8Array): Buffer[] {
    const out: Buffer[] = [];
    let start = 0;
    while (data.length - start >= this.size - this.pos) {
      const cut = start + this.size - this.pos;
      out.push(this.pending.take(data.subarray(start, cut)));
      this.pos = 0;
      start = cut;
    }
    this.pending.add(data.subarray(start));
    this.pos += data.length - start;
    return out;
  }

  end(): Buffer[] {
    const had = this.pos > 0;
    this.pos = 0;
    const last = this.pending.take(new Uint8Array(0));
    return had ? [last] : [];
  }
}
