/**
 * Rewrites a QEMU background snapshot's migration stream so its RAM pages come out in (block,
 * address) order: the stored memory image then depends on the guest's pages, not on the order
 * QEMU happened to send them, and the content-defined chunks of unchanged pages are the same
 * from one snapshot to the next (docs/storage.md "Memory images in address order").
 *
 * Why pages arrive out of order: a background snapshot scans RAM linearly, but a page the guest
 * writes before the scan reached it is saved at once (userfaultfd write-protect fault), ahead of
 * the scan, which then skips it; and QEMU 7.2 then continues its scan from that page (it keeps
 * the position of the last page saved), wrapping around at the end of RAM. Each page is sent
 * exactly once.
 *
 * How: every byte passes through unchanged except RAM page records (format: migration-stream.ts).
 * `next` is the first position (block, page) not yet written out. A page at `next` goes out, and
 * so do the held pages that follow it without a gap; a page ahead of `next` (a fault) is held in
 * a min-heap until the scan fills the gap before it; a page behind `next` (one the heap had to
 * give up on, or a re-sent page) goes out at once, so a later copy of a page always follows an
 * earlier one. With every page sent once and no bound reached, the output is exactly what a pure
 * linear scan would have sent. The held bytes are bounded (`holdBytes`): past the bound the
 * lowest held pages go out (still in order among themselves, still correct) and are counted.
 * Held pages move from the section they arrived in to a later RAM section; what the RAM sections
 * hold when the RAM part ends goes out in one more RAM section (PART) before the next section.
 *
 * The output is a valid QEMU 7.2 migration stream (restore reads it as it is): CONTINUE is set
 * on a record exactly when its block is that of the record written before it (the loader keeps
 * that block across sections), and section headers, footers, EOS records and device state are
 * the input's bytes.
 *
 * Anything not understood (another magic or version, an unknown configuration subsection, a
 * capability that changes the block list, a record flag other than ZERO/PAGE/CONTINUE, an
 * unknown block, a non-RAM section before the RAM part ended...) ends the rewriting: the held
 * pages go out, then (if the input's last block differs from the output's) the input's last page
 * again, so a CONTINUE in what follows means the same block, and the rest of the stream passes
 * through unchanged. `stats.fallback` says why; never a broken image.
 */
import type { Logger } from '../../../proto/core/log';
import type { StreamTransform } from '../image-stream';
import {
  ByteQueue,
  eosRecord,
  putU64,
  QEVM_MAGIC,
  QEVM_VERSION,
  RAM_FLAG,
  RAM_FLAG_MASK,
  RAM_SECTION,
  SEC,
  sectionMark,
  u64,
  type RamBlock,
} from './migration-stream';

/**
 * Default bound. QEMU 7.2 continues its scan from the page a fault saved, so a snapshot's stream is
 * a few long linear runs starting at fault addresses (wrapping at the end of RAM), and address
 * order holds back everything sent ahead of the lowest gap: up to the image's non-zero pages
 * (44 MiB of a 256 MiB guest's 107 MiB image under the test load). Past the bound the order
 * degrades gracefully (the runs stay whole). Per held page: its bytes plus HELD_OVERHEAD.
 */
export const DEFAULT_HOLD_BYTES = 128 * 1024 * 1024;
/** What holding one page costs beyond its data (the record object, the map and heap entries). */
export const HELD_OVERHEAD = 64;

export interface PageOrderOptions {
  /** Page bytes that may wait for the scan before the lowest go out anyway. */
  holdBytes?: number;
  /** Target page size (QEMU's TARGET_PAGE_SIZE; 4096 on x86, also set by the stream's configuration). */
  pageSize?: number;
  /** Called once when the rewriting stops (the reason; the rest passes through). */
  onFallback?: (reason: string) => void;
  /** Called at the end of the stream with the figures. */
  onEnd?: (stats: PageOrderStats) => void;
}

export interface PageOrderStats {
  bytesIn: number;
  bytesOut: number;
  /** Page records read. */
  pages: number;
  /** Pages that waited in the heap (arrived ahead of the scan). */
  held: number;
  /** Pages written ahead of their turn because the bound was reached. */
  forced: number;
  /** Pages that arrived behind the output's position (after a forced flush, or re-sent). */
  late: number;
  /** Pages still held when the RAM part ended (written in the extra section). */
  atEnd: number;
  peakHeldBytes: number;
  /** Why the rewriting stopped early (undefined: the stream was rewritten to its end). */
  fallback: string | undefined;
  /** Time spent inside push()/end(), ms. */
  cpuMs: number;
}

type State = 'header' | 'top' | 'ram-size' | 'ram-blocks' | 'ram' | 'after-eos' | 'pass';

/**
 * A page record where it lies: in `buf` (a received buffer, or a copy when the record spans two),
 * the record from `recAt` (`recLen` bytes, header included), its data (the page, or the ZERO
 * record's fill byte) from `dataAt`. One object per parser, reused for every record: a record
 * makes no object of its own.
 */
class RecordAt {
  key = 0;
  block = 0;
  addr = 0;
  /** ZERO: the fill byte; PAGE: -1. */
  fill = -1;
  buf: Buffer = NO_BYTES;
  recAt = 0;
  recLen = 0;
  dataAt = 0;
  /** The record had CONTINUE. */
  cont = false;

  copyFrom(r: RecordAt): void {
    this.key = r.key;
    this.block = r.block;
    this.addr = r.addr;
    this.fill = r.fill;
    this.buf = r.buf;
    this.recAt = r.recAt;
    this.recLen = r.recLen;
    this.dataAt = r.dataAt;
    this.cont = r.cont;
  }
}

const NO_BYTES = Buffer.alloc(0);
/** Held pages' data are kept in slabs of this size (reused as pages go out: no memory per page). */
const SLAB_BYTES = 1024 * 1024;
/** Rewritten headers and held pages go out in buffers of this size, filled in order. */
const OUT_BYTES = 256 * 1024;

/** Positions: block index * 2^32 + page index (exact in a number for any real guest). */
const BLOCK_SHIFT = 0x1_0000_0000;

export class PageOrder implements StreamTransform {
  readonly stats: PageOrderStats = { bytesIn: 0, bytesOut: 0, pages: 0, held: 0, forced: 0, late: 0, atEnd: 0, peakHeldBytes: 0, fallback: undefined, cpuMs: 0 };
  private readonly q = new ByteQueue();
  private out: Buffer[] = [];
  /** The output piece being built: bytes [runFrom, runTo) of runBuf (input, or outBuf), not yet in `out`. */
  private runBuf: Buffer | undefined;
  private runFrom = 0;
  private runTo = 0;
  /** Where rewritten bytes are written (filled from outAt on; what is before it is already handed out or in the run). */
  private outBuf: Buffer = NO_BYTES;
  private outAt = 0;
  private state: State = 'header';
  private readonly holdBytes: number;
  private pageSize: number;
  private afterConfig = false;
  private blocks: RamBlock[] = [];
  private blockIndex = new Map<string, number>();
  private memTotal = 0;
  private blockSum = 0;
  private ramId: number | undefined;
  private footers = false;
  private next = 0;
  private heap: number[] = [];
  /** Held pages by position: a PAGE's slab slot (>= 0), or -1 - fill of a ZERO record. */
  private heldPages = new Map<number, number>();
  private heldBytes = 0;
  private slabs: Buffer[] = [];
  private slotsPerSlab = 0;
  private freeSlots: number[] = [];
  private slotsMade = 0;
  /** Block of the last page record read / written (the loader's CONTINUE block). */
  private inLast: number | undefined;
  private outLast: number | undefined;
  /** The record being read, and the last page record read (as it arrived). */
  private readonly cur = new RecordAt();
  private readonly lastIn = new RecordAt();
  private hasLastIn = false;

  constructor(private readonly o: PageOrderOptions = {}) {
    this.holdBytes = o.holdBytes ?? DEFAULT_HOLD_BYTES;
    this.pageSize = o.pageSize ?? 4096;
  }

  push(chunk: Buffer): Buffer[] {
    const t0 = performance.now();
    this.stats.bytesIn += chunk.length;
    if (this.state === 'pass') {
      this.stats.bytesOut += chunk.length;
      this.stats.cpuMs += performance.now() - t0;
      return [chunk];
    }
    this.q.push(chunk);
    while (this.step());
    if (this.passing()) this.piece(...this.q.drain());
    return this.flushOut(t0);
  }

  end(): Buffer[] {
    const t0 = performance.now();
    if (this.state !== 'pass' && (this.q.length > 0 || this.heap.length > 0)) {
      this.fallback(`the stream ended in the middle (${this.state})`);
      this.piece(...this.q.drain());
    }
    const out = this.flushOut(t0);
    this.o.onEnd?.(this.stats);
    return out;
  }

  private passing(): boolean {
    return this.state === 'pass';
  }

  /**
   * What this call wrote, as pieces: views of the input where records went out as they came
   * (runs of them one view), and of buffers filled in order with rewritten headers and held pages
   * (one view per run of them). No copy of the input here: the stream's writer copies the pieces
   * once into its batch.
   */
  private flushOut(t0: number): Buffer[] {
    this.endRun();
    const out = this.out;
    this.out = [];
    for (const b of out) this.stats.bytesOut += b.length;
    this.stats.cpuMs += performance.now() - t0;
    return out;
  }

  /** Bytes [at, at + n) of `buf` out next: the current run grows when they follow it in the same buffer. */
  private extend(buf: Buffer, at: number, n: number): void {
    if (this.runBuf === buf && this.runTo === at) {
      this.runTo += n;
      return;
    }
    this.endRun();
    this.runBuf = buf;
    this.runFrom = at;
    this.runTo = at + n;
  }

  private endRun(): void {
    if (this.runBuf && this.runTo > this.runFrom) this.out.push(this.runBuf.subarray(this.runFrom, this.runTo));
    this.runBuf = undefined;
  }

  /** Whole buffers out next, as they are. */
  private piece(...bufs: Buffer[]): void {
    this.endRun();
    this.out.push(...bufs);
  }

  /** `n` bytes of the output buffer to write into, at the returned offset (out next once written: wrote()). */
  private room(n: number): number {
    if (this.outBuf.length - this.outAt < n) {
      this.outBuf = Buffer.allocUnsafeSlow(Math.max(OUT_BYTES, n));
      this.outAt = 0;
    }
    return this.outAt;
  }

  private wrote(at: number, n: number): void {
    this.extend(this.outBuf, at, n);
    this.outAt = at + n;
  }

  /** A page record's header (u64 address|flags, the block's idstr unless CONTINUE) into the output. */
  private writeHeader(addr: number, flags: number, block: number, sameBlock: boolean): void {
    const name = sameBlock ? undefined : (this.blocks[block] as RamBlock).name;
    const n = 8 + (name === undefined ? 0 : 1 + name.length);
    const at = this.room(n);
    putU64(this.outBuf, at, addr + (flags | (name === undefined ? RAM_FLAG.CONTINUE : 0)));
    if (name !== undefined) {
      this.outBuf[at + 8] = name.length;
      this.outBuf.write(name, at + 9, 'latin1');
    }
    this.wrote(at, n);
  }

  /** One step of the parser; false when it needs more bytes (or passes through from now on). */
  private step(): boolean {
    switch (this.state) {
      case 'header':
        return this.header();
      case 'top':
        return this.top();
      case 'ram-size':
        return this.ramSize();
      case 'ram-blocks':
        return this.ramBlock();
      case 'ram':
        return this.ramRecord();
      case 'after-eos':
        return this.afterEos();
      default:
        return false;
    }
  }

  private emitRaw(n: number): void {
    const b = this.q.view(n);
    this.extend(b, this.q.viewAt, n);
    this.q.skip(n);
  }

  private header(): boolean {
    if (this.q.length < 8) return false;
    const h = this.q.peek(8);
    if (h.readUInt32BE(0) !== QEVM_MAGIC || h.readUInt32BE(4) !== QEVM_VERSION) return this.fallback(`not a QEMU migration stream of version ${QEVM_VERSION}`);
    this.emitRaw(8);
    this.state = 'top';
    return true;
  }

  private top(): boolean {
    if (this.q.length < 1) return false;
    const t = this.q.byteAt(0);
    if (t === SEC.CONFIGURATION) return this.configuration();
    if (t === SEC.SUBSECTION && this.afterConfig) return this.subsection();
    this.afterConfig = false;
    if (t === SEC.START || t === SEC.FULL) {
      if (this.q.length < 6) return false;
      const len = this.q.byteAt(5);
      const need = 6 + len + 8;
      if (this.q.length < need) return false;
      const h = this.q.peek(need);
      const id = h.readUInt32BE(1);
      const name = h.toString('latin1', 6, 6 + len);
      if (t !== SEC.START || name !== RAM_SECTION || this.ramId !== undefined) return this.leaveRam(`section ${name} (type ${t})`, t);
      this.ramId = id;
      this.emitRaw(need);
      this.state = 'ram-size';
      return true;
    }
    if (t === SEC.PART || t === SEC.END) {
      if (this.q.length < 5) return false;
      const id = this.q.peek(5).readUInt32BE(1);
      if (id !== this.ramId) return this.leaveRam(`a section ${id} other than RAM's`, t);
      this.emitRaw(5);
      this.state = 'ram';
      return true;
    }
    return this.leaveRam(`section type ${t}`, t);
  }

  /** 0x07, u32 len, the machine's name; subsections follow (subsection()). */
  private configuration(): boolean {
    if (this.q.length < 5) return false;
    const need = 5 + this.q.peek(5).readUInt32BE(1);
    if (this.q.length < need) return false;
    this.emitRaw(need);
    this.afterConfig = true;
    return true;
  }

  /** The configuration's subsections this rewriter knows (savevm.c vmstate_configuration). */
  private subsection(): boolean {
    if (this.q.length < 2) return false;
    const len = this.q.byteAt(1);
    const hl = 2 + len + 4;
    if (this.q.length < hl) return false;
    const name = this.q.peek(hl).toString('latin1', 2, 2 + len);
    let need: number;
    if (name === 'configuration/target-page-bits') {
      need = hl + 4;
      if (this.q.length < need) return false;
      const bits = this.q.peek(need).readUInt32BE(hl);
      if (bits < 9 || bits > 16) return this.fallback(`target page bits ${bits}`);
      this.pageSize = 2 ** bits;
    } else if (name === 'configuration/uuid') {
      need = hl + 16;
      if (this.q.length < need) return false;
    } else if (name === 'configuration/capabilities') {
      if (this.q.length < hl + 4) return false;
      const count = this.q.peek(hl + 4).readUInt32BE(hl);
      need = hl + 4;
      const caps: string[] = [];
      for (let i = 0; i < count; i++) {
        if (this.q.length < need + 1) return false;
        const cl = this.q.byteAt(need);
        if (this.q.length < need + 1 + cl) return false;
        caps.push(this.q.peek(need + 1 + cl).toString('latin1', need + 1));
        need += 1 + cl;
      }
      if (caps.length > 0) return this.fallback(`migration capabilities ${caps.join(', ')} change the RAM section`);
    } else {
      return this.fallback(`configuration subsection ${name}`);
    }
    this.emitRaw(need);
    return true;
  }

  /** u64 total | MEM_SIZE, the start of the RAM section's block list. */
  private ramSize(): boolean {
    if (this.q.length < 8) return false;
    const v = u64(this.q.peek(8), 0);
    if (v === undefined || (v & RAM_FLAG_MASK) !== RAM_FLAG.MEM_SIZE) return this.fallback('the RAM section does not start with its size');
    this.memTotal = v - RAM_FLAG.MEM_SIZE;
    this.emitRaw(8);
    this.state = this.memTotal > 0 ? 'ram-blocks' : 'ram';
    return true;
  }

  /** One block: u8 len, idstr, u64 used_length; the list ends when the lengths add up to the total. */
  private ramBlock(): boolean {
    if (this.q.length < 1) return false;
    const len = this.q.byteAt(0);
    if (this.q.length < 1 + len + 8) return false;
    const b = this.q.peek(1 + len + 8);
    const name = b.toString('latin1', 1, 1 + len);
    const length = u64(b, 1 + len);
    if (len === 0 || length === undefined || this.blockIndex.has(name) || this.blockSum + length > this.memTotal) return this.fallback(`the RAM block list does not add up (at block "${name}")`);
    this.blockIndex.set(name, this.blocks.length);
    this.blocks.push({ name, length, pages: Math.ceil(length / this.pageSize) });
    this.blockSum += length;
    this.emitRaw(1 + len + 8);
    if (this.blockSum === this.memTotal) {
      this.state = 'ram';
      this.next = this.blocks[0]?.pages === 0 ? this.succ(-1) : 0;
    }
    return true;
  }

  /** One record inside a RAM section: EOS or a page. */
  private ramRecord(): boolean {
    const q = this.q;
    if (q.length < 8) return false;
    let b = q.view(8);
    let o = q.viewAt;
    const v = u64(b, o);
    if (v === undefined) return this.fallback('a RAM record beyond 2^53');
    const flags = v & RAM_FLAG_MASK;
    if (flags === RAM_FLAG.EOS && v === RAM_FLAG.EOS) {
      this.emitRaw(8);
      this.state = 'after-eos';
      return true;
    }
    const kind = flags & ~RAM_FLAG.CONTINUE;
    if (kind !== RAM_FLAG.ZERO && kind !== RAM_FLAG.PAGE) return this.fallback(`RAM record flags 0x${flags.toString(16)}`);
    const cont = (flags & RAM_FLAG.CONTINUE) !== 0;
    let at = 8;
    let block = this.inLast;
    if (!cont) {
      if (q.length < 9) return false;
      at = 9 + q.byteAt(8);
    }
    const need = at + (kind === RAM_FLAG.ZERO ? 1 : this.pageSize);
    if (q.length < need) return false;
    b = q.view(need);
    o = q.viewAt;
    if (!cont) block = this.blockIndex.get(b.toString('latin1', o + 9, o + at));
    const addr = v - flags;
    const blk = block === undefined ? undefined : this.blocks[block];
    if (block === undefined || !blk || addr >= blk.length || addr % this.pageSize !== 0) return this.fallback(`a page record for an unknown block or address (0x${addr.toString(16)})`);
    const r = this.cur;
    r.key = block * BLOCK_SHIFT + addr / this.pageSize;
    r.block = block;
    r.addr = addr;
    r.fill = kind === RAM_FLAG.ZERO ? (b[o + at] as number) : -1;
    r.buf = b;
    r.recAt = o;
    r.recLen = need;
    r.dataAt = o + at;
    r.cont = cont;
    q.skip(need);
    this.stats.pages++;
    this.inLast = block;
    this.lastIn.copyFrom(r);
    this.hasLastIn = true;
    this.place(r);
    return true;
  }

  /** After a RAM section's EOS: its footer, if the stream has footers. */
  private afterEos(): boolean {
    if (this.q.length < 1) return false;
    if (this.q.byteAt(0) === SEC.FOOTER) {
      if (this.q.length < 5) return false;
      this.footers = true;
      this.emitRaw(5);
    }
    this.state = 'top';
    return true;
  }

  private succ(key: number): number {
    let block = Math.floor(key / BLOCK_SHIFT);
    let page = key - block * BLOCK_SHIFT + 1;
    if (key < 0) [block, page] = [0, 0];
    while (block < this.blocks.length && page >= (this.blocks[block] as RamBlock).pages) [block, page] = [block + 1, 0];
    return block * BLOCK_SHIFT + page;
  }

  private place(r: RecordAt): void {
    if (r.key === this.next) {
      this.emitRecord(r);
      this.next = this.succ(r.key);
      this.drainHeap();
      return;
    }
    if (r.key < this.next) {
      this.stats.late++;
      this.emitRecord(r);
      return;
    }
    this.hold(r);
    while (this.heldBytes > this.holdBytes) {
      const k = this.popHeap();
      this.stats.forced++;
      this.emitHeld(k);
      this.next = this.succ(k);
      this.drainHeap();
    }
  }

  /** What holding a page costs against the bound: its data (a ZERO record's fill byte) and HELD_OVERHEAD. */
  private heldCost(code: number): number {
    return (code >= 0 ? this.pageSize : 1) + HELD_OVERHEAD;
  }

  /** A free slab slot for a held page's data (a new slab when every slot is taken). */
  private takeSlot(): number {
    const free = this.freeSlots.pop();
    if (free !== undefined) return free;
    if (this.slotsPerSlab === 0) this.slotsPerSlab = Math.max(1, Math.floor(SLAB_BYTES / this.pageSize));
    const slot = this.slotsMade++;
    if (slot >= this.slabs.length * this.slotsPerSlab) this.slabs.push(Buffer.allocUnsafeSlow(this.slotsPerSlab * this.pageSize));
    return slot;
  }

  private slab(slot: number): Buffer {
    return this.slabs[Math.floor(slot / this.slotsPerSlab)] as Buffer;
  }

  private slotAt(slot: number): number {
    return (slot % this.slotsPerSlab) * this.pageSize;
  }

  /** Keep the record's page (copied: the input's buffer is not kept) until the scan reaches it. */
  private hold(r: RecordAt): void {
    const had = this.heldPages.get(r.key);
    if (had !== undefined) {
      this.heldBytes -= this.heldCost(had);
      if (had >= 0) this.freeSlots.push(had);
    } else {
      this.pushHeap(r.key);
      this.stats.held++;
    }
    let code = -1 - r.fill;
    if (r.fill < 0) {
      code = this.takeSlot();
      r.buf.copy(this.slab(code), this.slotAt(code), r.dataAt, r.dataAt + this.pageSize);
    }
    this.heldPages.set(r.key, code);
    this.heldBytes += this.heldCost(code);
    this.stats.peakHeldBytes = Math.max(this.stats.peakHeldBytes, this.heldBytes);
  }

  private drainHeap(): void {
    while (this.heap.length > 0 && this.heap[0] === this.next) {
      const k = this.popHeap();
      this.emitHeld(k);
      this.next = this.succ(k);
    }
  }

  /** The CONTINUE block of the output moves to `block`: whether it was that already. */
  private toBlock(block: number): boolean {
    const same = this.outLast === block;
    this.outLast = block;
    return same;
  }

  /** A record as it arrived when its CONTINUE still holds, else with a new header and its data (views of the input). */
  private emitRecord(r: RecordAt): void {
    const sameBlock = this.toBlock(r.block);
    if (r.cont === sameBlock) {
      this.extend(r.buf, r.recAt, r.recLen);
      return;
    }
    this.writeHeader(r.addr, r.fill < 0 ? RAM_FLAG.PAGE : RAM_FLAG.ZERO, r.block, sameBlock);
    this.extend(r.buf, r.dataAt, r.fill < 0 ? this.pageSize : 1);
  }

  /** The held page at `k` out (header and data written into the output buffer), its slot free again. */
  private emitHeld(k: number): void {
    const code = this.heldPages.get(k) as number;
    this.heldPages.delete(k);
    this.heldBytes -= this.heldCost(code);
    const block = Math.floor(k / BLOCK_SHIFT);
    const addr = (k - block * BLOCK_SHIFT) * this.pageSize;
    this.writeHeader(addr, code >= 0 ? RAM_FLAG.PAGE : RAM_FLAG.ZERO, block, this.toBlock(block));
    if (code >= 0) {
      const at = this.room(this.pageSize);
      const from = this.slotAt(code);
      this.slab(code).copy(this.outBuf, at, from, from + this.pageSize);
      this.wrote(at, this.pageSize);
      this.freeSlots.push(code);
    } else {
      const at = this.room(1);
      this.outBuf[at] = -1 - code;
      this.wrote(at, 1);
    }
  }

  /**
   * Write out every held page in order, then (`keepBlock`) the input's last page again if the
   * output's last block differs (so the loader's CONTINUE block is the input's). Outside a RAM
   * section (at the top level) they go into one more RAM PART section.
   */
  private flushHeld(inSection: boolean, keepBlock = true): void {
    const fix = keepBlock && this.inLast !== undefined && this.outLast !== this.inLast;
    if (this.heap.length === 0 && !fix) return;
    const wrap = !inSection && this.ramId !== undefined;
    if (wrap) this.piece(sectionMark(SEC.PART, this.ramId as number));
    while (this.heap.length > 0) {
      const k = this.popHeap();
      if (!inSection) this.stats.atEnd++;
      this.emitHeld(k);
      this.next = this.succ(k);
    }
    if (keepBlock && this.inLast !== undefined && this.outLast !== this.inLast && this.hasLastIn) this.emitRecord(this.lastIn);
    if (wrap) {
      this.piece(eosRecord());
      if (this.footers) this.piece(sectionMark(SEC.FOOTER, this.ramId as number));
    }
  }

  /**
   * The RAM part is over (a section not RAM's): held pages out, the rest through unchanged. After
   * device state (FULL), EOF or the VM description no RAM record follows in a QEMU 7.2 stream
   * (the iterable sections end before the non-iterable ones are written), so the last block need
   * not be restored there; after anything else (another iterable section's START or PART) RAM
   * sections may follow, so it is.
   */
  private leaveRam(what: string, type: number): boolean {
    this.flushHeld(false, type !== SEC.FULL && type !== SEC.EOF && type !== SEC.VMDESCRIPTION);
    if (this.ramId === undefined) return this.fallback(`${what} before the RAM section`);
    this.state = 'pass';
    return false;
  }

  private fallback(reason: string): boolean {
    this.flushHeld(this.state === 'ram');
    this.stats.fallback = reason;
    this.state = 'pass';
    this.o.onFallback?.(reason);
    return false;
  }

  private pushHeap(k: number): void {
    const h = this.heap;
    h.push(k);
    let i = h.length - 1;
    while (i > 0) {
      const up = (i - 1) >> 1;
      if ((h[up] as number) <= k) break;
      h[i] = h[up] as number;
      i = up;
    }
    h[i] = k;
  }

  private popHeap(): number {
    const h = this.heap;
    const top = h[0] as number;
    const last = h.pop() as number;
    if (h.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= h.length) break;
        const r = l + 1;
        const c = r < h.length && (h[r] as number) < (h[l] as number) ? r : l;
        if ((h[c] as number) >= last) break;
        h[i] = h[c] as number;
        i = c;
      }
      h[i] = last;
    }
    return top;
  }
}

/** A PageOrder that logs why it stopped rewriting (warn) and its figures at the end (debug). */
export function loggedPageOrder(log: Logger, holdBytes: number): PageOrder {
  return new PageOrder({
    holdBytes,
    onFallback: (reason) => log.warn({ reason }, 'memory image: the rest of the stream stays in the order QEMU sent it'),
    onEnd: (stats) => log.debug({ pageOrder: stats }, 'memory image: pages in address order'),
  });
}
