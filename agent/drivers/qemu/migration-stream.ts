/**
 * The pieces of QEMU's migration stream format (QEMU 7.2: migration/savevm.c, migration/ram.c)
 * that page-order.ts needs to read and write it, and a byte queue to parse it as it arrives.
 *
 * What the stream of a background snapshot looks like (the only kind the agent rewrites):
 *   "QEVM" u32 version 3
 *   [0x07 CONFIGURATION: u32 len, machine name, subsections (0x05 u8 len name u32 version ...)]
 *   0x01 SECTION_START u32 id, u8 len "ram", u32 instance, u32 version
 *        u64 (total | MEM_SIZE), per block: u8 len idstr, u64 used_length; u64 EOS
 *        [0x7e FOOTER u32 id]
 *   0x02 SECTION_PART u32 id, page records..., u64 EOS [footer]      (many)
 *   device state (0x04 SECTION_FULL ...), 0x00 EOF, [0x06 VMDESCRIPTION]
 * A page record is a big-endian u64 `address | flags` (flags in the low bits, below the page
 * size), then, unless CONTINUE is set, u8 len + the RAM block's idstr (CONTINUE means: the block
 * of the previous page record, across sections), then one fill byte (ZERO) or the page (PAGE).
 *
 * Everything here is exact about these bytes and nothing else: device state (vmstate) has no
 * length prefix and is not parsed at all.
 */

export const QEVM_MAGIC = 0x5145564d;
export const QEVM_VERSION = 3;

/** Top-level section types (savevm.c). */
export const SEC = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;

/** RAM record flags (ram.c). */
export const RAM_FLAG = {
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
} as const;

/** Every flag bit a record may carry (the rest of the low 12 bits are XBZRLE, HOOK, COMPRESS...). */
export const RAM_FLAG_MASK = 0xfff;

/** The idstr of the RAM section. */
export const RAM_SECTION = 'ram';

/** u64 values this parser accepts: below 2^53, so exact in a JS number. */
const MAX_HI = 0x1fffff;

/** One RAM block of the RAM section's setup list, in the list's order (the scan's order). */
export interface RamBlock {
  name: string;
  /** used_length in bytes. */
  length: number;
  /** Pages in the block (length / page size, rounded up). */
  pages: number;
}

/**
 * Bytes received and not yet consumed, as a list of buffers (no copy until a value spans two of
 * them). Reads are by offset from the front; consuming returns the bytes.
 */
export class ByteQueue {
  private bufs: Buffer[] = [];
  /** Offset into bufs[0]. */
  private off = 0;
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.bufs.push(b);
    this.length += b.length;
  }

  /** The first `n` bytes (n <= length), not consumed. */
  peek(n: number): Buffer {
    const first = this.bufs[0] as Buffer;
    if (first.length - this.off >= n) return first.subarray(this.off, this.off + n);
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    let i = 0;
    let o = this.off;
    while (got < n) {
      const b = this.bufs[i++] as Buffer;
      got += b.copy(out, got, o, Math.min(b.length, o + n - got));
      o = 0;
    }
    return out;
  }

  byteAt(i: number): number {
    let o = this.off + i;
    for (const b of this.bufs) {
      if (o < b.length) return b[o] as number;
      o -= b.length;
    }
    throw new RangeError('ByteQueue: read past the end');
  }

  /** The first `n` bytes, consumed (a view into the received buffer when they lie in one). */
  take(n: number): Buffer {
    const out = this.peek(n);
    this.skip(n);
    return out;
  }

  skip(n: number): void {
    this.length -= n;
    while (n > 0) {
      const b = this.bufs[0] as Buffer;
      const left = b.length - this.off;
      if (n < left) {
        this.off += n;
        return;
      }
      n -= left;
      this.bufs.shift();
      this.off = 0;
    }
  }

  /** What is left now in memory of the queue's own (a copy: the buffers pushed may be reused by the caller after this). */
  own(): void {
    if (this.length === 0) {
      this.bufs = [];
      this.off = 0;
      return;
    }
    const b = Buffer.allocUnsafe(this.length);
    let at = 0;
    for (let i = 0; i < this.bufs.length; i++) at += (this.bufs[i] as Buffer).copy(b, at, i === 0 ? this.off : 0);
    this.bufs = [b];
    this.off = 0;
  }

  /** Everything, consumed. */
  drain(): Buffer[] {
    const out = this.bufs;
    if (out.length > 0 && this.off > 0) out[0] = (out[0] as Buffer).subarray(this.off);
    this.bufs = [];
    this.off = 0;
    this.length = 0;
    return out;
  }
}

/** A big-endian u64 at `at` of `b` as a number, or undefined if it is 2^53 or more. */
export function u64(b: Buffer, at: number): number | undefined {
  const hi = b.readUInt32BE(at);
  if (hi > MAX_HI) return undefined;
  return hi * 0x1_0000_0000 + b.readUInt32BE(at + 4);
}

export function putU64(b: Buffer, at: number, v: number): void {
  b.writeUInt32BE(Math.floor(v / 0x1_0000_0000), at);
  b.writeUInt32BE(v % 0x1_0000_0000, at + 4);
}

/** The header of a page record: u64 address|flags, and the block's idstr unless CONTINUE. */
export function pageHeader(addr: number, flags: number, block: string | undefined): Buffer {
  const name = block === undefined ? undefined : Buffer.from(block, 'latin1');
  const h = Buffer.allocUnsafe(8 + (name ? 1 + name.length : 0));
  putU64(h, 0, addr + (flags | (name ? 0 : RAM_FLAG.CONTINUE)));
  if (name) {
    h[8] = name.length;
    name.copy(h, 9);
  }
  return h;
}

/** u64 EOS. */
export function eosRecord(): Buffer {
  const b = Buffer.alloc(8);
  b[7] = RAM_FLAG.EOS;
  return b;
}

/** A section header without an idstr (PART, END) or the footer: u8 type, u32 section id. */
export function sectionMark(type: number, id: number): Buffer {
  const b = Buffer.allocUnsafe(5);
  b[0] = type;
  b.writeUInt32BE(id, 1);
  return b;
}
