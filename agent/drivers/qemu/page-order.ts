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
 * Memory: what push() returns is views of its input and of this rewriter's own memory, valid until
 * its next call (the stream copies them into its batches at once: image-stream.ts); nothing of
 * the input is kept past a call — the few bytes of a record cut by the read are copied, and so is
 * each held page, into slabs of page slots (PageSlots) reused as pages go out, so holding half a
 * stream's pages makes a few large buffers, not one per page.
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
  pageHeader,
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

/** Page slots per slab of held pages (1 MiB of 4 KiB pages). */
const SLAB_PAGES = 256;
/**
 * Slabs kept for the next stream once a PageOrder is done (close()): a stream's held pages then
 * take no fresh memory (fresh memory costs its page faults, and as external memory it brings
 * V8's full collections forward). 64 MiB of 4 KiB pages, about what the test guest's stream holds
 * at its peak; past it a slab is left to the collector.
 */
const SPARE_SLABS = 64;
const spareSlabs = new Map<number, Buffer[]>();

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

interface Page {
  key: number;
  block: number;
  addr: number;
  /** ZERO: the fill byte; PAGE: undefined. */
  fill: number | undefined;
  data: Buffer | undefined;
  /** The PageSlots slot holding `data` while the page is held (-1: none). */
  slot: number;
  /** The record as it arrived and whether it had CONTINUE: written as it is when that still holds. */
  raw: Buffer | undefined;
  rawCont: boolean;
}

/** Positions: block index * 2^32 + page index (exact in a number for any real guest). */
const BLOCK_SHIFT = 0x1_0000_0000;

/** The one-byte bodies of ZERO records, one per fill byte (shared, never written). */
const FILL: readonly Buffer[] = Array.from({ length: 256 }, (_, i) => Buffer.from([i]));

/**
 * Held pages' bytes: slots of one page in slabs of SLAB_PAGES, made as needed and reused. A slot
 * given back during a push() may still be viewed by that call's output, so it is free again only
 * at the next call (settle()).
 */
class PageSlots {
  private readonly slabs: Buffer[] = [];
  private readonly free: number[] = [];
  private released: number[] = [];

  constructor(readonly pageSize: number) {}

  /** A copy of `page` (pageSize bytes) in a slot: the slot and the view of it. */
  put(page: Uint8Array): { slot: number; data: Buffer } {
    let slot = this.free.pop();
    if (slot === undefined) {
      const first = this.slabs.length * SLAB_PAGES;
      this.slabs.push(spareSlabs.get(this.pageSize)?.pop() ?? Buffer.allocUnsafeSlow(SLAB_PAGES * this.pageSize));
      for (let i = first + SLAB_PAGES - 1; i > first; i--) this.free.push(i);
      slot = first;
    }
    const slab = this.slabs[Math.floor(slot / SLAB_PAGES)] as Buffer;
    const at = (slot % SLAB_PAGES) * this.pageSize;
    slab.set(page, at);
    return { slot, data: slab.subarray(at, at + this.pageSize) };
  }

  /** The slot's page went out (or was replaced): free from the next call on. */
  release(slot: number): void {
    this.released.push(slot);
  }

  /** Nothing is held or viewed any more: the slabs go to the next stream's PageSlots (up to SPARE_SLABS). */
  close(): void {
    let spare = spareSlabs.get(this.pageSize);
    if (!spare) spareSlabs.set(this.pageSize, (spare = []));
    for (const slab of this.slabs.splice(0)) if (spare.length < SPARE_SLABS) spare.push(slab);
    this.free.length = 0;
    this.released = [];
  }

  /** The caller has copied the last call's output: the slots released in it are free. */
  settle(): void {
    if (this.released.length === 0) return;
    for (const s of this.released) this.free.push(s);
    this.released = [];
  }
}

export class PageOrder implements StreamTransform {
  readonly stats: PageOrderStats = { bytesIn: 0, bytesOut: 0, pages: 0, held: 0, forced: 0, late: 0, atEnd: 0, peakHeldBytes: 0, fallback: undefined, cpuMs: 0 };
  private readonly q = new ByteQueue();
  private out: Buffer[] = [];
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
  private heldPages = new Map<number, Page>();
  private heldBytes = 0;
  /** Block of the last page record read / written (the loader's CONTINUE block). */
  private inLast: number | undefined;
  private outLast: number | undefined;
  private lastIn: Page | undefined;
  /** The output piece being joined (put()): a view of its first part, and the bytes joined so far. */
  private run: Buffer | undefined;
  private runLen = 0;
  private slots: PageSlots | undefined;

  constructor(private readonly o: PageOrderOptions = {}) {
    this.holdBytes = o.holdBytes ?? DEFAULT_HOLD_BYTES;
    this.pageSize = o.pageSize ?? 4096;
  }

  push(chunk: Buffer): Buffer[] {
    const t0 = performance.now();
    this.slots?.settle();
    this.stats.bytesIn += chunk.length;
    if (this.state === 'pass') {
      this.stats.bytesOut += chunk.length;
      this.stats.cpuMs += performance.now() - t0;
      return [chunk];
    }
    this.q.push(chunk);
    while (this.step());
    if (this.passing()) for (const b of this.q.drain()) this.put(b);
    this.q.own(); // a record cut by the read: its first bytes outlive the caller's buffer
    if (this.lastIn?.raw) this.lastIn = { ...this.lastIn, data: this.lastIn.data ? Buffer.from(this.lastIn.data) : undefined, raw: undefined };
    return this.flushOut(t0);
  }

  end(): Buffer[] {
    const t0 = performance.now();
    this.slots?.settle();
    if (this.state !== 'pass' && (this.q.length > 0 || this.heap.length > 0)) {
      this.fallback(`the stream ended in the middle (${this.state})`);
      for (const b of this.q.drain()) this.put(b);
    }
    const out = this.flushOut(t0);
    this.o.onEnd?.(this.stats);
    return out;
  }

  /** The caller copied end()'s output (or gave up on the stream): the held pages' memory is reused by the next stream. */
  close(): void {
    this.heldPages.clear();
    this.heap = [];
    this.heldBytes = 0;
    this.slots?.close();
    this.slots = undefined;
  }

  private passing(): boolean {
    return this.state === 'pass';
  }

  /**
   * What this call wrote, as pieces: views of the input where records went out as they came
   * (runs of them joined into one view: put()), views of the held pages' slots, new buffers only
   * for rewritten headers. No copy here: the stream copies them once into its batch.
   */
  private flushOut(t0: number): Buffer[] {
    this.endRun();
    const out = this.out;
    this.out = [];
    for (const b of out) this.stats.bytesOut += b.length;
    this.stats.cpuMs += performance.now() - t0;
    return out;
  }

  /** Append `b` to the output, joined to the piece before it when it follows it in the same memory (one view made per run, at its end). */
  private put(b: Buffer): void {
    const r = this.run;
    if (r && r.buffer === b.buffer && r.byteOffset + this.runLen === b.byteOffset) {
      this.runLen += b.length;
      return;
    }
    this.endRun();
    this.run = b;
    this.runLen = b.length;
  }

  private endRun(): void {
    const r = this.run;
    if (!r) return;
    this.out.push(this.runLen === r.length ? r : Buffer.from(r.buffer, r.byteOffset, this.runLen));
    this.run = undefined;
    this.runLen = 0;
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
    this.put(this.q.take(n));
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
    if (this.q.length < 8) return false;
    const h = this.q.peek(8);
    const v = u64(h, 0);
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
      if (this.q.length < 9) return false;
      at = 9 + this.q.byteAt(8);
    }
    const need = at + (kind === RAM_FLAG.ZERO ? 1 : this.pageSize);
    if (this.q.length < need) return false;
    const rec = this.q.peek(need);
    if (!cont) block = this.blockIndex.get(rec.toString('latin1', 9, at));
    const addr = v - flags;
    const b = block === undefined ? undefined : this.blocks[block];
    if (block === undefined || !b || addr >= b.length || addr % this.pageSize !== 0) return this.fallback(`a page record for an unknown block or address (0x${addr.toString(16)})`);
    const page: Page = {
      key: block * BLOCK_SHIFT + addr / this.pageSize,
      block,
      addr,
      fill: kind === RAM_FLAG.ZERO ? (rec[at] as number) : undefined,
      data: kind === RAM_FLAG.PAGE ? rec.subarray(at) : undefined,
      slot: -1,
      raw: rec,
      rawCont: cont,
    };
    this.q.skip(need);
    this.stats.pages++;
    this.inLast = block;
    this.lastIn = page;
    this.place(page);
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

  private place(p: Page): void {
    if (p.key === this.next) {
      this.emitPage(p);
      this.next = this.succ(p.key);
      this.drainHeap();
      return;
    }
    if (p.key < this.next) {
      this.stats.late++;
      this.emitPage(p);
      return;
    }
    this.hold(p);
    while (this.heldBytes > this.holdBytes) {
      const k = this.popHeap();
      this.stats.forced++;
      this.emitPage(this.unhold(k));
      this.next = this.succ(k);
      this.drainHeap();
    }
  }

  private hold(p: Page): void {
    let copy: Page = { ...p, raw: undefined }; // not a view of the socket's buffer
    if (p.data) {
      const slots = (this.slots ??= new PageSlots(this.pageSize));
      const { slot, data } = slots.put(p.data);
      copy = { ...copy, data, slot };
    }
    const had = this.heldPages.get(p.key);
    if (had) {
      this.heldBytes -= pageBytes(had);
      if (had.slot >= 0) this.slots?.release(had.slot);
    } else {
      this.pushHeap(p.key);
      this.stats.held++;
    }
    this.heldPages.set(p.key, copy);
    this.heldBytes += pageBytes(copy);
    this.stats.peakHeldBytes = Math.max(this.stats.peakHeldBytes, this.heldBytes);
  }

  /** The held page at `k`, no longer held: its slot is free once this call's output is copied. */
  private unhold(k: number): Page {
    const p = this.heldPages.get(k) as Page;
    this.heldPages.delete(k);
    this.heldBytes -= pageBytes(p);
    if (p.slot >= 0) this.slots?.release(p.slot);
    return p;
  }

  private drainHeap(): void {
    while (this.heap.length > 0 && this.heap[0] === this.next) {
      const k = this.popHeap();
      this.emitPage(this.unhold(k));
      this.next = this.succ(k);
    }
  }

  private emitPage(p: Page): void {
    const sameBlock = this.outLast === p.block;
    this.outLast = p.block;
    if (p.raw && p.rawCont === sameBlock) {
      this.put(p.raw);
      return;
    }
    this.put(pageHeader(p.addr, p.fill === undefined ? RAM_FLAG.PAGE : RAM_FLAG.ZERO, sameBlock ? undefined : (this.blocks[p.block] as RamBlock).name));
    this.put(p.data ?? (FILL[p.fill as number] as Buffer));
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
    if (wrap) this.put(sectionMark(SEC.PART, this.ramId as number));
    while (this.heap.length > 0) {
      const k = this.popHeap();
      if (!inSection) this.stats.atEnd++;
      this.emitPage(this.unhold(k));
      this.next = this.succ(k);
    }
    if (keepBlock && this.inLast !== undefined && this.outLast !== this.inLast) this.emitPage(this.lastIn as Page);
    if (wrap) {
      this.put(eosRecord());
      if (this.footers) this.put(sectionMark(SEC.FOOTER, this.ramId as number));
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

function pageBytes(p: Page): number {
  return (p.data ? p.data.length : 1) + HELD_OVERHEAD;
}

/** A PageOrder that logs why it stopped rewriting (warn) and its figures at the end (debug). */
export function loggedPageOrder(log: Logger, holdBytes: number): PageOrder {
  return new PageOrder({
    holdBytes,
    onFallback: (reason) => log.warn({ reason }, 'memory image: the rest of the stream stays in the order QEMU sent it'),
    onEnd: (stats) => log.debug({ pageOrder: stats }, 'memory image: pages in address order'),
  });
}
