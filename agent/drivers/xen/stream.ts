/**
 * A streaming reader of the byte stream `xl migrate` sends to its receiver (which is also the
 * format of an `xl save` file), enough to know where it ends and how far the live copy is:
 *
 *   xl save-file header   32-byte magic "Xen saved domain, xl format\n \0 \r", then four
 *                         native-endian u32 (byte order mark 0x01020304, mandatory flags,
 *                         optional flags, optional data length) and the optional data (the
 *                         domain's configuration).
 *   libxl stream (v2)     16-byte header, big-endian: ident "LibxlFmt", version, options
 *                         (bit 0: records are big-endian). Records: u32 type, u32 length, body
 *                         padded to 8 bytes. END = 0, LIBXC_CONTEXT = 1 (an empty record after
 *                         which the libxc stream follows inline), others skipped.
 *   libxc stream (v2/v3)  24-byte image header, big-endian (marker all ones, id "XENF", version,
 *                         options: bit 0 = big-endian records), 16-byte domain header, then
 *                         records like libxl's: END = 0 returns to the libxl stream;
 *                         PAGE_DATA = 1 (u32 count, u32 reserved, count u64 pfn|type, the pages);
 *                         X86_PV_P2M_FRAMES = 3 (u32 start pfn, u32 end pfn, frames) sizes the
 *                         guest; the first record that is neither page data nor a static record
 *                         means the memory copy is over (the domain was suspended before its
 *                         final pass).
 *
 * The parser never copies page contents: it only looks at record headers and PFN lists, and
 * reports how many bytes of each chunk belong to the stream (a receiver writes exactly those
 * bytes, the stream stops at the libxl END record). Iterations of the live copy are counted by
 * PFNs: each pass sends a page at most once, so the first PFN seen twice starts a new pass.
 * See docs/xen.md.
 */
import { VnsnapError } from '../../../proto/core/errors';

export const XL_MAGIC = Buffer.from('Xen saved domain, xl format\n \0 \r', 'latin1');
export const LIBXL_IDENT = 0x4c6962786c466d74n; // "LibxlFmt"
export const LIBXC_MARKER = 0xffffffffffffffffn;
export const LIBXC_ID = 0x58454e46; // "XENF"
export const XL_RECEIVER_BANNER = 'xl migration receiver ready, send binary domain data.\n';

export const LIBXL_REC = { END: 0, LIBXC_CONTEXT: 1, EMULATOR_XENSTORE_DATA: 2, EMULATOR_CONTEXT: 3, CHECKPOINT_END: 4 } as const;
export const LIBXC_REC = { END: 0, PAGE_DATA: 1, X86_PV_INFO: 2, X86_PV_P2M_FRAMES: 3, X86_PV_VCPU_BASIC: 4, SHARED_INFO: 7, X86_TSC_INFO: 8, HVM_CONTEXT: 9, HVM_PARAMS: 10, STATIC_DATA_END: 16, X86_CPUID_POLICY: 17, X86_MSR_POLICY: 18 } as const;
const PFN_MASK = 0x000fffffffffffffn;
/** Records that come before the memory (they do not mean the copy is over). */
const STATIC_RECORDS = new Set<number>([LIBXC_REC.X86_PV_INFO, LIBXC_REC.X86_PV_P2M_FRAMES, LIBXC_REC.X86_TSC_INFO, LIBXC_REC.STATIC_DATA_END, LIBXC_REC.X86_CPUID_POLICY, LIBXC_REC.X86_MSR_POLICY]);

export type StreamPhase = 'xl-header' | 'libxl' | 'libxc' | 'done';

export interface StreamStats {
  phase: StreamPhase;
  /** Stream bytes consumed so far. */
  bytes: number;
  /** Pages received (all passes). */
  pages: number;
  /** Pages received in the current pass. */
  passPages: number;
  /** 1 = the first (full) pass. */
  iteration: number;
  /** Guest pages per the P2M frames record (0 until known). */
  guestPages: number;
  /** The memory copy is over (a non-memory record followed the pages). */
  memoryDone: boolean;
  /** The xl configuration carried in the save-file header. */
  config: string;
}

type Want = { kind: 'need'; n: number; then: (b: Buffer) => void } | { kind: 'skip'; n: number; then: () => void };

const pad8 = (n: number): number => (n + 7) & ~7;

export class XenStreamParser {
  readonly stats: StreamStats = { phase: 'xl-header', bytes: 0, pages: 0, passPages: 0, iteration: 0, guestPages: 0, memoryDone: false, config: '' };
  private want: Want;
  private acc: Buffer[] = [];
  private accLen = 0;
  private le = true;
  private libxlLe = true;
  private seen = new Uint8Array(0);
  private sawPages = false;

  /** Called when the first page of a new pass arrives (iteration ≥ 2), and when the memory copy ends. */
  onPass?: (iteration: number) => void;
  onMemoryDone?: () => void;

  constructor() {
    this.want = { kind: 'need', n: 48, then: (b) => this.xlHeader(b) };
  }

  get done(): boolean {
    return this.stats.phase === 'done';
  }

  /** Feed a chunk; returns how many of its bytes belong to the stream (all of them until the END record). */
  push(chunk: Buffer): number {
    let off = 0;
    while (off < chunk.length && this.stats.phase !== 'done') {
      const w = this.want;
      if (w.kind === 'skip') {
        const k = Math.min(w.n, chunk.length - off);
        w.n -= k;
        off += k;
        this.stats.bytes += k;
        if (w.n === 0) w.then();
        continue;
      }
      const k = Math.min(w.n - this.accLen, chunk.length - off);
      this.acc.push(chunk.subarray(off, off + k));
      this.accLen += k;
      off += k;
      this.stats.bytes += k;
      if (this.accLen === w.n) {
        const b = this.acc.length === 1 ? (this.acc[0] as Buffer) : Buffer.concat(this.acc, this.accLen);
        this.acc = [];
        this.accLen = 0;
        w.then(b);
      }
    }
    return off;
  }

  private need(n: number, then: (b: Buffer) => void): void {
    if (n === 0) {
      this.want = { kind: 'skip', n: 0, then: () => undefined };
      then(Buffer.alloc(0));
      return;
    }
    this.want = { kind: 'need', n, then };
  }

  private skip(n: number, then: () => void): void {
    if (n === 0) {
      then();
      return;
    }
    this.want = { kind: 'skip', n, then };
  }

  private fail(msg: string): never {
    throw new VnsnapError('ERR_DRIVER', `xen stream: ${msg} (at byte ${this.stats.bytes})`);
  }

  private xlHeader(b: Buffer): void {
    if (!b.subarray(0, 32).equals(XL_MAGIC)) this.fail('not an xl save stream (bad magic)');
    const bom = b.readUInt32LE(32);
    if (bom !== 0x01020304) this.fail(`unsupported byte order mark 0x${bom.toString(16)}`);
    const optLen = b.readUInt32LE(44);
    this.need(optLen, (opt) => {
      this.stats.config = opt.toString('utf8').replace(/\0+$/, '');
      this.stats.phase = 'libxl';
      this.need(16, (h) => this.libxlHeader(h));
    });
  }

  private libxlHeader(b: Buffer): void {
    if (b.readBigUInt64BE(0) !== LIBXL_IDENT) this.fail('no libxl stream header');
    const version = b.readUInt32BE(8);
    if (version !== 2) this.fail(`libxl stream version ${version} unsupported`);
    this.libxlLe = (b.readUInt32BE(12) & 1) === 0;
    this.need(8, (r) => this.libxlRecord(r));
  }

  private libxlRecord(h: Buffer): void {
    const type = this.libxlLe ? h.readUInt32LE(0) : h.readUInt32BE(0);
    const len = this.libxlLe ? h.readUInt32LE(4) : h.readUInt32BE(4);
    this.skip(pad8(len), () => {
      if (type === LIBXL_REC.END) {
        this.stats.phase = 'done';
        return;
      }
      if (type === LIBXL_REC.LIBXC_CONTEXT) {
        this.stats.phase = 'libxc';
        this.need(24, (ih) => this.libxcImageHeader(ih));
        return;
      }
      this.need(8, (r) => this.libxlRecord(r));
    });
  }

  private libxcImageHeader(b: Buffer): void {
    if (b.readBigUInt64BE(0) !== LIBXC_MARKER || b.readUInt32BE(8) !== LIBXC_ID) this.fail('no libxc image header after LIBXC_CONTEXT');
    const version = b.readUInt32BE(12);
    if (version < 2 || version > 3) this.fail(`libxc stream version ${version} unsupported`);
    this.le = (b.readUInt16BE(16) & 1) === 0;
    this.need(16, () => this.need(8, (r) => this.libxcRecord(r)));
  }

  private libxcRecord(h: Buffer): void {
    const type = this.le ? h.readUInt32LE(0) : h.readUInt32BE(0);
    const len = this.le ? h.readUInt32LE(4) : h.readUInt32BE(4);
    const next = (): void => this.need(8, (r) => this.libxcRecord(r));
    if (type === LIBXC_REC.END) {
      this.memoryOver();
      this.skip(pad8(len), () => {
        this.stats.phase = 'libxl';
        this.need(8, (r) => this.libxlRecord(r));
      });
      return;
    }
    if (type === LIBXC_REC.PAGE_DATA && len >= 8) {
      this.need(8, (c) => {
        const count = this.le ? c.readUInt32LE(0) : c.readUInt32BE(0);
        if (8 + count * 8 > len) this.fail(`PAGE_DATA count ${count} exceeds its record (${len} bytes)`);
        this.need(count * 8, (pfns) => {
          this.pages(pfns, count);
          this.skip(pad8(len) - 8 - count * 8, next);
        });
      });
      return;
    }
    if (type === LIBXC_REC.X86_PV_P2M_FRAMES && len >= 8) {
      this.need(8, (c) => {
        const end = this.le ? c.readUInt32LE(4) : c.readUInt32BE(4);
        this.stats.guestPages = end + 1;
        this.skip(pad8(len) - 8, next);
      });
      return;
    }
    if (this.sawPages && !STATIC_RECORDS.has(type & 0x7fffffff)) this.memoryOver();
    this.skip(pad8(len), next);
  }

  private memoryOver(): void {
    if (this.stats.memoryDone) return;
    this.stats.memoryDone = true;
    this.onMemoryDone?.();
  }

  private pages(pfns: Buffer, count: number): void {
    this.sawPages = true;
    if (this.stats.iteration === 0) this.stats.iteration = 1;
    for (let i = 0; i < count; i++) {
      const v = this.le ? pfns.readBigUInt64LE(i * 8) : pfns.readBigUInt64BE(i * 8);
      const pfn = Number(v & PFN_MASK);
      if (pfn >= this.seen.length * 8) {
        const grown = new Uint8Array(Math.max(pfn + 1, this.seen.length * 16, 4096) >> 3 | 0);
        grown.set(this.seen);
        this.seen = grown;
      }
      const byte = pfn >> 3;
      const bit = 1 << (pfn & 7);
      if ((this.seen[byte] as number) & bit) {
        this.seen.fill(0);
        this.stats.iteration++;
        this.stats.passPages = 0;
        this.onPass?.(this.stats.iteration);
      }
      this.seen[byte] = (this.seen[byte] as number) | bit;
      this.stats.passPages++;
      this.stats.pages++;
    }
  }
}

/** Parse a whole stream (a saved image) and return its stats; throws if it does not end with END. */
export function scanXenImage(data: Buffer): StreamStats {
  const p = new XenStreamParser();
  const used = p.push(data);
  if (!p.done) throw new VnsnapError('ERR_DRIVER', `xen stream: truncated after ${data.length} bytes (phase ${p.stats.phase})`);
  if (used !== data.length) throw new VnsnapError('ERR_DRIVER', `xen stream: ${data.length - used} bytes after the END record`);
  return p.stats;
}

/** Writer side, for fakes and tests: build streams in the same format. */
export class XenStreamWriter {
  private parts: Buffer[] = [];

  static xlHeader(config: string): Buffer {
    const opt = Buffer.from(config + '\0', 'utf8');
    const h = Buffer.alloc(48);
    XL_MAGIC.copy(h, 0);
    h.writeUInt32LE(0x01020304, 32);
    h.writeUInt32LE(opt.length, 44);
    return Buffer.concat([h, opt]);
  }

  static libxlHeader(): Buffer {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(LIBXL_IDENT, 0);
    h.writeUInt32BE(2, 8);
    return h;
  }

  static record(type: number, body: Buffer): Buffer {
    const h = Buffer.alloc(8);
    h.writeUInt32LE(type, 0);
    h.writeUInt32LE(body.length, 4);
    const pad = Buffer.alloc(pad8(body.length) - body.length);
    return Buffer.concat([h, body, pad]);
  }

  static libxcHeaders(): Buffer {
    const ih = Buffer.alloc(24);
    ih.writeBigUInt64BE(LIBXC_MARKER, 0);
    ih.writeUInt32BE(LIBXC_ID, 8);
    ih.writeUInt32BE(3, 12);
    const dh = Buffer.alloc(16);
    dh.writeUInt32LE(1, 0); // x86 PV
    dh.writeUInt16LE(12, 4);
    return Buffer.concat([ih, dh]);
  }

  static pageData(pfns: number[], pages: Buffer[]): Buffer {
    const b = Buffer.alloc(8 + pfns.length * 8);
    b.writeUInt32LE(pfns.length, 0);
    pfns.forEach((p, i) => b.writeBigUInt64LE(BigInt(p), 8 + i * 8));
    return XenStreamWriter.record(LIBXC_REC.PAGE_DATA, Buffer.concat([b, ...pages]));
  }

  static p2mFrames(pages: number): Buffer {
    const b = Buffer.alloc(8 + 8);
    b.writeUInt32LE(0, 0);
    b.writeUInt32LE(pages - 1, 4);
    return XenStreamWriter.record(LIBXC_REC.X86_PV_P2M_FRAMES, b);
  }

  add(b: Buffer): this {
    this.parts.push(b);
    return this;
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** Read back the pages of a stream built by XenStreamWriter (tests): pfn → last page content. */
export function pagesOf(data: Buffer, pageSize: number): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  // Walk records directly: the parser does not keep page contents.
  let off = 48 + data.readUInt32LE(44) + 16;
  for (;;) {
    const t = data.readUInt32LE(off);
    const l = data.readUInt32LE(off + 4);
    off += 8;
    if (t === LIBXL_REC.END) break;
    if (t === LIBXL_REC.LIBXC_CONTEXT) {
      off += pad8(l) + 40;
      for (;;) {
        const xt = data.readUInt32LE(off);
        const xl = data.readUInt32LE(off + 4);
        const body = off + 8;
        if (xt === LIBXC_REC.END) {
          off = body + pad8(xl);
          break;
        }
        if (xt === LIBXC_REC.PAGE_DATA) {
          const count = data.readUInt32LE(body);
          for (let i = 0; i < count; i++) {
            const pfn = Number(data.readBigUInt64LE(body + 8 + i * 8) & PFN_MASK);
            const at = body + 8 + count * 8 + i * pageSize;
            out.set(pfn, Buffer.from(data.subarray(at, at + pageSize)));
          }
        }
        off = body + pad8(xl);
      }
      continue;
    }
    off += pad8(l);
  }
  return out;
}
