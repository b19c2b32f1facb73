/**
 * Which pages of a running QEMU guest's RAM were written since the last look, and their
 * contents, read by the agent without QEMU's help: the base of an incremental memory snapshot
 * (docs/incremental-memory.md).
 *
 * Why: QEMU 7.2 saves the whole non-zero RAM at every snapshot (its background snapshot
 * write-protects and copies every page), and on a 2-core host that costs more CPU per snapshot
 * than the guests can spare (docs/performance.md, "Where the CPU goes while snapshots run").
 * With asynchronous userfaultfd write protection (Linux 6.7+) the kernel marks a protected page
 * "written" on its first write and lets the writer go on at once; PAGEMAP_SCAN reports the
 * written runs and protects them again in one walk. Scanning costs a fraction of a millisecond for
 * a 256 MiB guest, and reading only the written pages costs what they weigh.
 *
 * How it is set up: QEMU runs with its RAM as a shared memory-backend-memfd named `pc.ram`
 * (trackedRamArgs: the name of the RAM block QEMU gives `-m` alone, so an image's RAM section is
 * the same either way) and with LD_PRELOAD=vnsnap-uffd-preload.so (trackedRamEnv), whose
 * constructor creates a userfaultfd inside QEMU's address space. RamWriteTracker.start takes a
 * copy of it (pidfd_getfd), registers the RAM mapping for write protection and protects all of
 * it: the first scan then reports every page written since start. A tracker started later for
 * the same QEMU (a restarted agent) adopts the descriptor and the protection as they stand.
 *
 * Guarantees: a scan reports every page written since the previous scan (or start) at least once
 * (the kernel protects a page again in the same walk that reports it, so a write racing the walk
 * is reported by this scan or the next); the contents read for a run are the page's contents at
 * the time of the read, so a copy that must be consistent is read while the VM is stopped
 * (`stop` parks the vCPUs and quiesces the devices that write guest RAM). Errors are VnsnapErrors:
 * ERR_FAILED_PRECONDITION when the VM was not started for tracking or the kernel lacks the
 * feature, ERR_NATIVE_IO for a refused system call.
 */
import * as fs from 'node:fs';

import { VnsnapError } from '../../../proto/core/errors';
import { nativeIo, type NativeIo, type ReadBlocksOptions } from '../../../switch/native-io';
import { builtProgram } from '../exec';

/** The RAM backend's id: the RAM block QEMU names when given `-m` alone. */
const TRACKED_RAM_ID = 'pc.ram';
/** QEMU 7.2 names every memfd it creates for a backend after the backend's type, not its id. */
const MAPPING_NAME = '/memfd:memory-backend-memfd (deleted)';
const PAGE = 4096;

/** QEMU arguments for guest RAM the agent can track: `-m` must give the same size. */
export function trackedRamArgs(sizeKib: number): string[] {
  return ['-object', `memory-backend-memfd,id=${TRACKED_RAM_ID},size=${sizeKib}k,share=on`, '-machine', `memory-backend=${TRACKED_RAM_ID}`];
}

/**
 * QEMU's environment additions for tracking: the preloaded library that creates its userfaultfd
 * (agent/native/uffd-preload.c). Throws ERR_FAILED_PRECONDITION when the library is not built.
 */
export function trackedRamEnv(): Record<string, string> {
  const lib = builtProgram('vnsnap-uffd-preload.so');
  if (!lib) throw new VnsnapError('ERR_FAILED_PRECONDITION', 'vnsnap-uffd-preload.so is not built: run `npm install` (it builds the native parts)');
  return { LD_PRELOAD: lib };
}

/** Runs of written pages: (offset from the RAM's start, length) pairs, `count` of them. */
export interface WrittenRuns {
  pairs: Float64Array;
  count: number;
  bytes: number;
}

/** The tracked RAM mapping of process pid: [start, end) of its contiguous memory-backend-memfd mappings (the one backend trackedRamArgs gives). */
export function trackedRamMapping(pid: number, maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8')): { start: number; length: number } {
  let start = -1;
  let end = -1;
  for (const line of maps.split('\n')) {
    if (!line.endsWith(MAPPING_NAME)) continue;
    const [range] = line.split(' ', 1) as [string];
    const [a, b] = range.split('-').map((h) => Number.parseInt(h, 16)) as [number, number];
    if (start < 0) [start, end] = [a, b];
    else if (a === end) end = b;
    else throw new VnsnapError('ERR_FAILED_PRECONDITION', `QEMU ${pid} maps its RAM ${TRACKED_RAM_ID} in pieces that are not contiguous`);
  }
  if (start < 0) throw new VnsnapError('ERR_FAILED_PRECONDITION', `QEMU ${pid} has no RAM backend ${TRACKED_RAM_ID} as shared memfd: it was not started for write tracking`);
  return { start, length: end - start };
}

/** The descriptor number of the userfaultfd in process pid (the preloaded library's: the lowest). */
function preloadedUffd(pid: number): number {
  const dir = `/proc/${pid}/fd`;
  const fds = fs.readdirSync(dir).map(Number).sort((a, b) => a - b);
  for (const fd of fds) {
    let target = '';
    try {
      target = fs.readlinkSync(`${dir}/${fd}`);
    } catch {
      continue; // closed meanwhile
    }
    if (target === 'anon_inode:[userfaultfd]') return fd;
  }
  throw new VnsnapError('ERR_FAILED_PRECONDITION', `QEMU ${pid} has no userfaultfd: it was not started with vnsnap-uffd-preload.so (or the kernel refused to create one)`);
}

export class RamWriteTracker {
  private out = new Float64Array(2 * 1024);
  private closed = false;

  private constructor(
    readonly pid: number,
    readonly start: number,
    readonly length: number,
    private readonly ufd: number,
    private readonly pagemap: number,
    /** 'adopted' when an earlier agent had set the descriptor up: the first scan then reports every page written since that agent's last scan. */
    readonly how: 'new' | 'adopted',
    private readonly io: NativeIo,
  ) {}

  /**
   * Starts tracking QEMU pid's RAM. The first tracker of a QEMU protects the whole RAM (every page
   * counts as unwritten from now on); a later one (after an agent restart) adopts the protection as
   * it stands, so nothing written in between goes unreported.
   */
  static start(pid: number, io: NativeIo = nativeIo()): RamWriteTracker {
    if (!io.uffdWriteTrackingAvailable()) {
      throw new VnsnapError('ERR_FAILED_PRECONDITION', 'this kernel has no asynchronous userfaultfd write protection and PAGEMAP_SCAN (Linux 6.7 or later): RAM writes cannot be tracked');
    }
    const { start, length } = trackedRamMapping(pid);
    const ufd = io.uffdAdopt(pid, preloadedUffd(pid));
    let pagemap = -1;
    try {
      pagemap = fs.openSync(`/proc/${pid}/pagemap`, 'r');
      const how = io.uffdTrackWrites(ufd, start, length);
      return new RamWriteTracker(pid, start, length, ufd, pagemap, how, io);
    } catch (e) {
      if (pagemap >= 0) fs.closeSync(pagemap);
      io.close(ufd);
      throw e;
    }
  }

  /** Every run written since the last scan (or start), each protected again; offsets from the RAM's start. */
  scan(): WrittenRuns {
    this.check();
    const end = this.start + this.length;
    let pos = this.start;
    let count = 0;
    while (pos < end) {
      if (this.out.length - 2 * count < 2 * 64) this.grow();
      const view = this.out.subarray(2 * count);
      const r = this.io.pagemapScanWritten(this.pagemap, pos, end - pos, view);
      // Offsets are relative to pos: rebase them onto the RAM's start, joining a run cut by the walk's stop.
      for (let i = 0; i < r.regions; i++) {
        const off = view[2 * i] as number;
        const len = view[2 * i + 1] as number;
        const abs = pos - this.start + off;
        if (count > 0 && (this.out[2 * count - 2] as number) + (this.out[2 * count - 1] as number) === abs) {
          this.out[2 * count - 1] = (this.out[2 * count - 1] as number) + len;
        } else {
          this.out[2 * count] = abs;
          this.out[2 * count + 1] = len;
          count++;
        }
      }
      if (r.walkEnd <= pos) throw new VnsnapError('ERR_INTERNAL', `PAGEMAP_SCAN made no progress at 0x${pos.toString(16)}`);
      pos = r.walkEnd;
    }
    let bytes = 0;
    for (let i = 0; i < count; i++) bytes += this.out[2 * i + 1] as number;
    return { pairs: this.out.slice(0, 2 * count), count, bytes };
  }

  /** Copies the runs' current contents back to back into buf[offset, ...]; the bytes copied. */
  read(runs: WrittenRuns, buf: Buffer, offset = 0): number {
    this.check();
    return this.io.readProcessMemory(this.pid, this.absolute(runs), runs.count, buf, offset);
  }

  /**
   * read() in the thread pool, off the event loop (switch/native/ram_read.c), with the SHA-256 of
   * each `blockSize` bytes read into digests[32*i, 32*i+32) (the runs a whole number of blocks):
   * the contents at the time of the read, and each digest of exactly the bytes left in buf. buf
   * and digests belong to the read until the promise settles, also when it rejects. With
   * `fifoPriority` the reading thread runs at SCHED_FIFO at that priority where permitted; with
   * `ownThread` it is a thread of its own, not one of the pool's (a read inside a pause must not
   * queue behind the store's work); `timing` receives the submit / begin / end instants;
   * with digests null it only reads (hashBlocks names the blocks later).
   */
  readBlocks(runs: WrittenRuns, buf: Buffer, blockSize: number, digests: Buffer | null, opts: Omit<ReadBlocksOptions, 'portable'> = {}): Promise<number> {
    this.check();
    return this.io.readProcessBlocks(this.pid, this.absolute(runs), runs.count, buf, 0, blockSize, digests, opts);
  }

  /** The SHA-256s readBlocks gives, of blocks read without them (digests null), in the thread pool. */
  hashBlocks(data: Buffer, blockSize: number, digests: Buffer): Promise<number> {
    return this.io.sha256Blocks(data, blockSize, digests);
  }

  /** The runs' (offset, length) pairs as (address, length) in QEMU's address space. */
  private absolute(runs: WrittenRuns): Float64Array {
    const abs = new Float64Array(2 * runs.count);
    for (let i = 0; i < runs.count; i++) {
      abs[2 * i] = this.start + (runs.pairs[2 * i] as number);
      abs[2 * i + 1] = runs.pairs[2 * i + 1] as number;
    }
    return abs;
  }

  /** The whole RAM's current contents into buf (at least `length` bytes). */
  readAll(buf: Buffer): number {
    return this.read({ pairs: Float64Array.of(0, this.length), count: 1, bytes: this.length }, buf, 0);
  }

  /** Stops using the descriptors (QEMU's RAM stays registered and protected; a later start adopts both). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.pagemap);
    this.io.close(this.ufd);
  }

  private grow(): void {
    const bigger = new Float64Array(this.out.length * 2);
    bigger.set(this.out);
    this.out = bigger;
  }

  private check(): void {
    if (this.closed) throw new VnsnapError('ERR_STATE', `the RAM write tracker of QEMU ${this.pid} is closed`);
  }
}

/**
 * The runs widened to whole blocks of `blockSize` bytes (a power of two, at least a page) and
 * merged, clipped to `limit`: what an image kept in fixed blocks must read again. Reading whole
 * blocks is exact for the same reason the runs are: a page of a block written after the scan is
 * reported by the next one.
 */
export function blockRuns(runs: WrittenRuns, blockSize: number, limit: number): WrittenRuns {
  if (blockSize < PAGE || (blockSize & (blockSize - 1)) !== 0) throw new VnsnapError('ERR_INVALID_ARGUMENT', `block size ${blockSize} is not a power of two of at least ${PAGE}`);
  const out: number[] = [];
  for (let i = 0; i < runs.count; i++) {
    const off = runs.pairs[2 * i] as number;
    const len = runs.pairs[2 * i + 1] as number;
    const a = Math.floor(off / blockSize) * blockSize;
    const b = Math.min(limit, Math.ceil((off + len) / blockSize) * blockSize);
    const n = out.length;
    if (n > 0 && (out[n - 2] as number) + (out[n - 1] as number) >= a) out[n - 1] = Math.max(out[n - 1] as number, b - (out[n - 2] as number));
    else out.push(a, b - a);
  }
  let bytes = 0;
  for (let i = 1; i < out.length; i += 2) bytes += out[i] as number;
  return { pairs: Float64Array.from(out), count: out.length / 2, bytes };
}

/**
 * Writes a RAM image piece by piece into QEMU pid, started with trackedRamArgs and `-incoming
 * defer` (a restore streaming the image from the store: no whole copy in the agent). write()
 * throws ERR_INVALID_ARGUMENT for a piece outside the RAM.
 */
export class TrackedRamWriter {
  readonly start: number;
  readonly length: number;

  constructor(
    readonly pid: number,
    private readonly io: NativeIo = nativeIo(),
  ) {
    ({ start: this.start, length: this.length } = trackedRamMapping(pid));
  }

  /** `data` into the RAM at byte `offset` from its start. */
  write(offset: number, data: Buffer): void {
    if (offset < 0 || offset + data.length > this.length) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${data.length} bytes at ${offset} do not fit QEMU ${this.pid}'s RAM of ${this.length} bytes`);
    if (data.length === 0) return;
    this.io.writeProcessMemory(this.pid, Float64Array.of(this.start + offset, data.length), 1, data, 0);
  }
}

/**
 * Writes a whole RAM image into QEMU pid, started with trackedRamArgs and `-incoming defer` (its
 * RAM is skipped by the device-state stream that follows: x-ignore-shared). Throws
 * ERR_INVALID_ARGUMENT when the image's size is not the RAM's.
 */
export function writeTrackedRam(pid: number, image: Buffer, io: NativeIo = nativeIo()): void {
  const { start, length } = trackedRamMapping(pid);
  if (image.length !== length) throw new VnsnapError('ERR_INVALID_ARGUMENT', `a RAM image of ${image.length} bytes does not fit QEMU ${pid}'s RAM of ${length} bytes`);
  io.writeProcessMemory(pid, Float64Array.of(start, length), 1, image, 0);
}
