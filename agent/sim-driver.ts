/**
 * The simulated hypervisor driver — for tests and scale runs ONLY, never a product driver.
 *
 * A sim VM is an in-process object whose vNIC is an in-memory Port (batched like the fakes of
 * switch/fake-port.ts) attached to the agent's real switch. While running it
 *   - sends sequence-numbered frames to each peer VM at `frame_rate_hz`; each frame carries the
 *     sender's name, the destination's name, a per-destination sequence number and the
 *     sender's epoch (the last snapshot cut it passed);
 *   - checks every frame it receives: per sender the next expected sequence number, counting
 *     gaps (missing numbers), duplicates (numbers already seen) and orphans (a frame whose
 *     epoch is newer than the receiver's: its receipt would be in the image, its send not);
 *   - dirties its memory (a Buffer of `memory_mib`, 4 KiB pages with a dirty bitmap) at
 *     `dirty_rate_mib_s`.
 * Peers' MACs come from the start context when the agent knows them; otherwise the VM finds
 * them like a guest's ARP: it broadcasts HELLO requests until every peer answered (the table is
 * guest state, saved in the image).
 *
 * Snapshots really copy memory into the store. The image is a record stream:
 *   "VNSIMEM1" u32 pageSize u32 pageCount, then records
 *     0x01 u32 page  <pageSize bytes>     a page (later records of a page override earlier)
 *     0x02 u32 len   <JSON SimGuestState>  the guest state at the pause instant
 *     0x03                                 end
 *   precopy:    pass 1 copies every page, later passes the pages dirtied since; `ready` when a
 *               pass copied at most `readyBytes`; at the cut (VM paused) the remaining dirty
 *               pages and the guest state are written, then the VM resumes.
 *   background: at the pause the memory and state are copied (copy-on-write emulated by a
 *               copy), the VM resumes at once, and the copy is written while it runs.
 * Restore reloads memory and state exactly, so after resume the VM continues its sequences.
 * Frames delivered while a VM is paused wait in its NIC queue (outside the image, like a TAP's
 * kernel queue) and are processed at resume.
 *
 * Tests read a VM's state with `inspect(id)` (the agent exposes it as `Agent.vmState(vne, vm)`),
 * and the state captured at each cut with `cutState(id, epoch)`.
 */
import { createHash } from 'node:crypto';
import { VnsnapError } from '../proto/core/errors';
import { formatMac, parseMac, writeMac } from '../switch/bridge/mac';
import type { Port, RxBatch } from '../switch/port/port';
import { newRxBatch } from '../switch/port/port';
import type { CutReport, HypervisorDriver, PhaseSpan, RestoreImage, SnapshotJob, SnapshotModeName, SnapshotOptions, SnapshotProgress, VmHandle, VmImage, VmStartContext, VmStartSpec, VmStatus } from './driver';
import type { ArtefactWriter, SnapshotStore, StoredArtefact } from '../proto/store/local-dir';

export const SIM_ETHERTYPE = 0x88b5;
const MAGIC0 = 0x56; // 'V'
const MAGIC1 = 0x53; // 'S'
const T_DATA = 1;
const T_HELLO_REQ = 2;
const T_HELLO_REPLY = 3;
const PAGE = 4096;
const IMAGE_MAGIC = Buffer.from('VNSIMEM1');
const R_PAGE = 1;
const R_STATE = 2;
const R_END = 3;

export interface SimDriverOptions {
  /** Frames per batch handed to the switch (> 1 so the batch paths run). Default 32. */
  batchSize?: number;
  /** The VM's clock tick (sending, dirtying). Default 5 ms. */
  tickMs?: number;
  /** A pre-copy pass that copied at most this many bytes makes the VM ready. Default 256 KiB. */
  readyBytes?: number;
  /** Pause between pre-copy passes. Default 10 ms. */
  passIntervalMs?: number;
  /** HELLO retransmission while peers are unresolved. Default 100 ms. */
  helloMs?: number;
  /** Size of data frames (bytes, >= 64). Default 96. */
  frameBytes?: number;
  /** Frames a paused VM's NIC queues before dropping. Default 100000. */
  rxQueueMax?: number;
}

/** The guest state saved in images (everything but memory). */
export interface SimGuestState {
  name: string;
  epoch: number;
  /** Next sequence number to send, per destination VM. */
  sent: Record<string, number>;
  /** Next sequence number expected, per sender VM. */
  expected: Record<string, number>;
  /** Data frames received, per sender. */
  received: Record<string, number>;
  gaps: number;
  duplicates: number;
  orphans: number;
  framesSent: number;
  framesReceived: number;
  /** Peer name → MAC, learned from HELLOs (the guest's ARP table). */
  arp: Record<string, string>;
  /** Memory writes so far (also written into memory). */
  memWrites: number;
}

/** What inspect() returns: the guest state plus host-side diagnostics. */
export interface SimVmState extends SimGuestState {
  status: VmStatus;
  /** SHA-256 of the memory (lower-case hex). */
  memorySha256: string;
  /** Frames delivered while the VM was paused (queued at its NIC); not an error by itself. */
  framesWhilePaused: number;
  rxQueueDrops: number;
  /** Data frames addressed to another VM name (flooded to us). */
  misdelivered: number;
  /** Frames that are not sim frames. */
  foreign: number;
}

/** The guest part of an inspected state (what an image holds), with its memory hash. */
export function guestOf(s: SimVmState): SimGuestState & { memorySha256: string } {
  return {
    name: s.name,
    epoch: s.epoch,
    sent: s.sent,
    expected: s.expected,
    received: s.received,
    gaps: s.gaps,
    duplicates: s.duplicates,
    orphans: s.orphans,
    framesSent: s.framesSent,
    framesReceived: s.framesReceived,
    arp: s.arp,
    memWrites: s.memWrites,
    memorySha256: s.memorySha256,
  };
}

function emptyState(name: string, epoch: number): SimGuestState {
  return { name, epoch, sent: {}, expected: {}, received: {}, gaps: 0, duplicates: 0, orphans: 0, framesSent: 0, framesReceived: 0, arp: {}, memWrites: 0 };
}

function cloneState(s: SimGuestState): SimGuestState {
  return JSON.parse(JSON.stringify(s)) as SimGuestState;
}

function nowUs(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/** The VM side of a sim vNIC: an in-memory Port whose frames reach the switch in batches. */
export class SimPort implements Port {
  readonly kind = 'fake' as const;
  readonly rx: RxBatch;
  private pending: Buffer[] = [];
  private onBatch: ((n: number) => void) | undefined;
  private scheduled = false;
  closed = false;
  /** Where frames from the switch go. */
  onFrame: ((frame: Buffer) => void) | undefined;

  constructor(
    readonly name: string,
    batchSize: number,
  ) {
    this.rx = newRxBatch(batchSize);
  }

  open(onBatch: (count: number) => void): void {
    this.onBatch = onBatch;
    if (this.pending.length > 0) this.schedule();
  }

  /** The VM writes a frame (sent to the switch on the next turn, in batches). */
  write(frame: Buffer): void {
    if (this.closed) return;
    this.pending.push(frame);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.pumpAll();
    });
  }

  private pumpAll(): number {
    let n = 0;
    while (this.onBatch && !this.closed && this.pending.length > 0) {
      const k = Math.min(this.rx.lens.length, this.pending.length);
      const batch = this.pending.splice(0, k);
      batch.forEach((f, i) => {
        f.copy(this.rx.slab, i * this.rx.slotSize + this.rx.headroom);
        this.rx.lens[i] = f.length;
      });
      this.onBatch(k);
      n += k;
    }
    return n;
  }

  drain(): Promise<number> {
    return Promise.resolve(this.pumpAll());
  }

  send(frames: readonly Buffer[], count: number): number {
    if (this.closed) return 0;
    for (let i = 0; i < count; i++) this.onFrame?.(frames[i] as Buffer);
    return count;
  }

  close(): void {
    this.closed = true;
    this.pending = [];
  }
}

class SimVm {
  status: VmStatus = 'paused';
  readonly memory: Buffer;
  readonly dirty: Uint8Array;
  readonly pageCount: number;
  state: SimGuestState;
  readonly peers: string[];
  readonly mac: number;
  readonly frameRate: number;
  readonly dirtyRate: number;
  private timer: NodeJS.Timeout | undefined;
  private lastTick = 0;
  private frameCredit = 0;
  private dirtyCredit = 0;
  private lastHello = 0;
  private rng: number;
  private rxQueue: Buffer[] = [];
  framesWhilePaused = 0;
  rxQueueDrops = 0;
  misdelivered = 0;
  foreign = 0;
  /** Set by a snapshot job while it owns the pause. */
  job: SimJob | undefined;

  constructor(
    readonly spec: VmStartSpec,
    readonly ports: SimPort[],
    private readonly opts: Required<SimDriverOptions>,
    memoryMib: number,
  ) {
    const sim = spec.driver.sim;
    this.pageCount = Math.max(1, Math.floor((memoryMib * 1024 * 1024) / PAGE));
    this.memory = Buffer.alloc(this.pageCount * PAGE);
    this.dirty = new Uint8Array(this.pageCount);
    this.state = emptyState(spec.name, 0);
    this.peers = [...(sim?.peers ?? [])].filter((p) => p !== spec.name);
    const mac = spec.macs[0];
    if (mac === undefined) throw new VnsnapError('ERR_INVALID_ARGUMENT', `sim VM ${spec.name} needs at least one MAC`);
    this.mac = parseMac(mac);
    this.frameRate = sim?.frameRateHz ?? 0;
    this.dirtyRate = (sim?.dirtyRateMibS ?? 0) * 1024 * 1024;
    this.rng = (createHash('sha256').update(spec.name).digest().readUInt32LE(0) | 1) >>> 0;
    const p0 = ports[0] as SimPort;
    p0.onFrame = (f) => this.onFrame(f);
  }

  get port(): SimPort {
    return this.ports[0] as SimPort;
  }

  // ───────── run control ─────────

  run(): void {
    if (this.status === 'stopped') throw new VnsnapError('ERR_STATE', `sim VM ${this.spec.name} is stopped`);
    if (this.status === 'running') return;
    this.status = 'running';
    this.lastTick = performance.now();
    this.frameCredit = 0;
    this.dirtyCredit = 0;
    this.timer = setInterval(() => this.tick(), this.opts.tickMs);
    this.timer.unref();
    // Frames that reached the NIC while paused are read first.
    const q = this.rxQueue;
    this.rxQueue = [];
    for (const f of q) this.process(f);
    this.tick();
  }

  halt(): void {
    if (this.status !== 'running') return;
    this.status = 'paused';
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  destroy(): void {
    this.halt();
    this.status = 'stopped';
    for (const p of this.ports) p.close();
    this.rxQueue = [];
  }

  private tick(): void {
    if (this.status !== 'running') return;
    const now = performance.now();
    const dt = (now - this.lastTick) / 1000;
    this.lastTick = now;
    // Peers not yet resolved: ask (broadcast HELLO).
    if (this.peers.some((p) => this.state.arp[p] === undefined) && now - this.lastHello >= this.opts.helloMs) {
      this.lastHello = now;
      this.port.write(this.frame(T_HELLO_REQ, 0xffff_ffff_ffff, '', 0));
    }
    if (this.frameRate > 0) {
      this.frameCredit = Math.min(this.frameCredit + this.frameRate * dt, this.frameRate); // at most 1 s of backlog
      const n = Math.floor(this.frameCredit);
      this.frameCredit -= n;
      for (let i = 0; i < n; i++) {
        for (const p of this.peers) {
          const mac = this.state.arp[p];
          if (mac === undefined) continue;
          const seq = this.state.sent[p] ?? 0;
          this.state.sent[p] = seq + 1;
          this.state.framesSent++;
          this.port.write(this.frame(T_DATA, parseMac(mac), p, seq));
        }
      }
    }
    if (this.dirtyRate > 0) {
      this.dirtyCredit += this.dirtyRate * dt;
      const pages = Math.min(Math.floor(this.dirtyCredit / PAGE), this.pageCount * 4);
      this.dirtyCredit -= pages * PAGE;
      for (let i = 0; i < pages; i++) this.touch(this.nextRandom() % this.pageCount);
    }
  }

  private nextRandom(): number {
    let x = this.rng;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.rng = x;
    return x;
  }

  /** A guest write to a page: it changes and becomes dirty. */
  private touch(page: number): void {
    this.state.memWrites++;
    const off = page * PAGE + ((this.nextRandom() % (PAGE / 8)) * 8);
    this.memory.writeDoubleLE(this.state.memWrites, off);
    this.dirty[page] = 1;
  }

  private frame(type: number, dstMac: number, dstName: string, seq: number): Buffer {
    const src = Buffer.from(this.spec.name);
    const dst = Buffer.from(dstName);
    const len = Math.max(this.opts.frameBytes, 32 + src.length + dst.length);
    const f = Buffer.alloc(len);
    writeMac(f, 0, dstMac);
    writeMac(f, 6, this.mac);
    f.writeUInt16BE(SIM_ETHERTYPE, 12);
    f[14] = MAGIC0;
    f[15] = MAGIC1;
    f[16] = type;
    f.writeUInt32BE(this.state.epoch, 18);
    f.writeUInt32BE(Math.floor(seq / 0x1_0000_0000), 22);
    f.writeUInt32BE(seq % 0x1_0000_0000, 26);
    f[30] = src.length;
    src.copy(f, 31);
    f[31 + src.length] = dst.length;
    dst.copy(f, 32 + src.length);
    return f;
  }

  // ───────── receive ─────────

  private onFrame(f: Buffer): void {
    if (this.status === 'stopped') return;
    if (this.status === 'paused') {
      this.framesWhilePaused++;
      if (this.rxQueue.length >= this.opts.rxQueueMax) this.rxQueueDrops++;
      else this.rxQueue.push(Buffer.from(f));
      return;
    }
    this.process(f);
  }

  private process(f: Buffer): void {
    if (f.length < 32 || f.readUInt16BE(12) !== SIM_ETHERTYPE || f[14] !== MAGIC0 || f[15] !== MAGIC1) {
      this.foreign++;
      return;
    }
    const type = f[16] as number;
    const epoch = f.readUInt32BE(18);
    const seq = f.readUInt32BE(22) * 0x1_0000_0000 + f.readUInt32BE(26);
    const sl = f[30] as number;
    const src = f.toString('utf8', 31, 31 + sl);
    const dl = f[31 + sl] as number;
    const dst = f.toString('utf8', 32 + sl, 32 + sl + dl);
    if (src === this.spec.name) return;
    const srcMac = f.readUInt16BE(6) * 0x1_0000_0000 + f.readUInt32BE(8);
    if (type === T_HELLO_REQ || type === T_HELLO_REPLY) {
      this.state.arp[src] = formatMac(srcMac);
      if (type === T_HELLO_REQ) this.port.write(this.frame(T_HELLO_REPLY, srcMac, src, 0));
      return;
    }
    if (type !== T_DATA) {
      this.foreign++;
      return;
    }
    if (dst !== this.spec.name) {
      this.misdelivered++;
      return;
    }
    const s = this.state;
    s.framesReceived++;
    s.received[src] = (s.received[src] ?? 0) + 1;
    if (epoch > s.epoch) s.orphans++;
    const exp = s.expected[src] ?? 0;
    if (seq === exp) s.expected[src] = exp + 1;
    else if (seq < exp) s.duplicates++;
    else {
      s.gaps += seq - exp;
      s.expected[src] = seq + 1;
    }
  }

  // ───────── memory ─────────

  /** Pages dirty now, cleared; copies of their contents as image records. */
  takeDirty(max: number): { records: Buffer; pages: number } {
    const idx: number[] = [];
    for (let p = 0; p < this.pageCount && idx.length < max; p++) {
      if (this.dirty[p] === 1) {
        this.dirty[p] = 0;
        idx.push(p);
      }
    }
    return { records: pageRecords(this.memory, idx), pages: idx.length };
  }

  dirtyCount(): number {
    let n = 0;
    for (let p = 0; p < this.pageCount; p++) n += this.dirty[p] as number;
    return n;
  }

  markAllDirty(): void {
    this.dirty.fill(1);
  }

  inspect(): SimVmState {
    return { ...this.inspectLater(), memorySha256: createHash('sha256').update(this.memory).digest('hex') };
  }

  /** inspect() without the memory hash, and a copy of the memory to hash later (cheap at a pause). */
  inspectLater(): Omit<SimVmState, 'memorySha256'> & { memory: Buffer } {
    return {
      ...cloneState(this.state),
      memory: Buffer.from(this.memory),
      status: this.status,
      framesWhilePaused: this.framesWhilePaused,
      rxQueueDrops: this.rxQueueDrops,
      misdelivered: this.misdelivered,
      foreign: this.foreign,
    };
  }
}

function pageRecords(memory: Buffer, pages: readonly number[]): Buffer {
  const out = Buffer.alloc(pages.length * (5 + PAGE));
  let o = 0;
  for (const p of pages) {
    out[o] = R_PAGE;
    out.writeUInt32BE(p, o + 1);
    memory.copy(out, o + 5, p * PAGE, (p + 1) * PAGE);
    o += 5 + PAGE;
  }
  return out;
}

function imageHeader(pageCount: number): Buffer {
  const h = Buffer.alloc(16);
  IMAGE_MAGIC.copy(h, 0);
  h.writeUInt32BE(PAGE, 8);
  h.writeUInt32BE(pageCount, 12);
  return h;
}

function stateRecord(s: SimGuestState): Buffer {
  const json = Buffer.from(JSON.stringify(s));
  const r = Buffer.alloc(5 + json.length + 1);
  r[0] = R_STATE;
  r.writeUInt32BE(json.length, 1);
  json.copy(r, 5);
  r[5 + json.length] = R_END;
  return r;
}

/** Parse an image: the memory and the guest state. Throws ERR_DATA_LOSS on anything malformed. */
export function parseSimImage(buf: Buffer, source: string, expectPages: number): { memory: Buffer; state: SimGuestState } {
  const bad = (why: string): VnsnapError => new VnsnapError('ERR_DATA_LOSS', `${source}: not a usable sim memory image (${why})`);
  if (buf.length < 16 || !buf.subarray(0, 8).equals(IMAGE_MAGIC)) throw bad('bad magic');
  if (buf.readUInt32BE(8) !== PAGE) throw bad('page size');
  const pages = buf.readUInt32BE(12);
  if (pages !== expectPages) throw bad(`${pages} pages, the VM has ${expectPages}`);
  const memory = Buffer.alloc(pages * PAGE);
  let o = 16;
  let state: SimGuestState | undefined;
  for (;;) {
    if (o >= buf.length) throw bad('truncated');
    const t = buf[o] as number;
    if (t === R_PAGE) {
      if (o + 5 + PAGE > buf.length) throw bad('truncated page');
      const p = buf.readUInt32BE(o + 1);
      if (p >= pages) throw bad(`page ${p} out of range`);
      buf.copy(memory, p * PAGE, o + 5, o + 5 + PAGE);
      o += 5 + PAGE;
    } else if (t === R_STATE) {
      if (o + 5 > buf.length) throw bad('truncated state');
      const n = buf.readUInt32BE(o + 1);
      if (o + 5 + n > buf.length) throw bad('truncated state');
      try {
        state = JSON.parse(buf.toString('utf8', o + 5, o + 5 + n)) as SimGuestState;
      } catch {
        throw bad('state does not parse');
      }
      o += 5 + n;
    } else if (t === R_END) {
      if (state === undefined) throw bad('no state record');
      return { memory, state };
    } else throw bad(`unknown record ${t}`);
  }
}

type JobPhase = 'precopy' | 'cutting' | 'writing' | 'done' | 'aborted' | 'failed';

class SimJob implements SnapshotJob {
  readonly ready: Promise<void>;
  private setReady!: () => void;
  private phase: JobPhase = 'precopy';
  private writer: ArtefactWriter | undefined;
  private loop: Promise<void> = Promise.resolve();
  private stopLoop = false;
  /** Ends the pre-copy loop's pause between passes early (cut, abort). */
  private wake: (() => void) | undefined;
  private iteration = 0;
  private bytesDone = 0;
  private final: Promise<VmImage> | undefined;
  private committed: StoredArtefact | undefined;
  private pausedByUs = false;
  readonly path: string;

  constructor(
    private readonly driver: SimDriver,
    private readonly guest: SimVm,
    private readonly opts: SnapshotOptions,
    private readonly sopts: Required<SimDriverOptions>,
  ) {
    this.ready = new Promise<void>((r) => (this.setReady = r));
    this.ready.catch(() => undefined);
    this.path = `${opts.prefix}${guest.spec.name}.mem`;
  }

  get mode(): SnapshotModeName {
    return this.opts.mode;
  }

  get vm(): string {
    return this.guest.spec.id;
  }

  async begin(): Promise<void> {
    this.writer = await this.opts.store.create(this.path);
    await this.writer.write(imageHeader(this.guest.pageCount));
    this.bytesDone = 16;
    if (this.opts.mode === 'background') {
      this.setReady();
      return;
    }
    this.guest.markAllDirty();
    this.loop = this.precopyLoop();
    this.loop.catch(() => undefined);
  }

  private async precopyLoop(): Promise<void> {
    const w = this.writer as ArtefactWriter;
    let lastPassEnd = performance.now();
    let isReady = false;
    while (!this.stopLoop) {
      this.iteration++;
      const passStart = performance.now();
      let passBytes = 0;
      for (;;) {
        if (this.stopLoop) break;
        const { records, pages } = this.guest.takeDirty(64);
        if (pages === 0) break;
        await w.write(records);
        passBytes += pages * PAGE;
        this.bytesDone += records.length;
      }
      if (this.stopLoop) break;
      const now = performance.now();
      const dirtyRateMibS = this.iteration > 1 ? passBytes / 1024 / 1024 / Math.max(0.001, (now - lastPassEnd) / 1000 + (now - passStart) / 1000) : 0;
      lastPassEnd = now;
      if (!isReady && (this.iteration > 1 && passBytes <= this.sopts.readyBytes)) isReady = true;
      if (!isReady && this.iteration >= 30) isReady = true;
      this.progress(isReady, dirtyRateMibS);
      if (isReady) this.setReady();
      // The pause between passes ends early when the loop is stopped: a cut must not wait up to
      // a whole pause for the loop (that wait would land in the commit skew).
      await new Promise<void>((r) => {
        const t = setTimeout(() => {
          this.wake = undefined;
          r();
        }, isReady ? this.sopts.passIntervalMs * 5 : this.sopts.passIntervalMs);
        this.wake = () => {
          clearTimeout(t);
          this.wake = undefined;
          r();
        };
      });
    }
  }

  private stopPrecopy(): void {
    this.stopLoop = true;
    this.wake?.();
  }

  private progress(ready: boolean, dirtyRateMibS: number): void {
    const p: SnapshotProgress = {
      bytesDone: this.bytesDone,
      bytesRemaining: this.guest.dirtyCount() * PAGE,
      bytesTotal: this.guest.pageCount * PAGE,
      iteration: this.iteration,
      dirtyRateMibS,
      ready,
    };
    this.opts.onProgress?.(p);
  }

  async cut(atPause: () => Promise<void>): Promise<CutReport> {
    if (this.phase !== 'precopy') throw new VnsnapError('ERR_STATE', `snapshot of ${this.guest.spec.name}: cut() in phase ${this.phase}`);
    if (this.guest.status !== 'running') throw new VnsnapError('ERR_DRIVER', `sim VM ${this.guest.spec.name} is ${this.guest.status}, cannot cut`);
    this.phase = 'cutting';
    this.stopPrecopy();
    await this.loop;
    if ((this.phase as JobPhase) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', `snapshot of ${this.guest.spec.name} was aborted`);
    const w = this.writer as ArtefactWriter;
    const phases: PhaseSpan[] = [];
    // ── pause instant ──
    const pauseT = performance.now();
    const cutUnixUs = nowUs();
    this.guest.halt();
    this.guest.job = this;
    this.pausedByUs = true;
    const oldEpoch = this.guest.state.epoch;
    this.guest.state.epoch = Math.max(oldEpoch, this.opts.epoch);
    try {
      await atPause();
    } catch (e) {
      this.guest.state.epoch = oldEpoch;
      this.pausedByUs = false;
      this.guest.job = undefined;
      this.guest.run();
      this.phase = 'failed';
      throw e;
    }
    const state = cloneState(this.guest.state);
    // The state at the pause instant, for tests; its memory is hashed after the cut (hashing
    // here would lengthen the pause and, with many VMs in one process, the commit skew).
    this.driver.recordCutState(this.guest.spec.id, this.opts.epoch, this.guest.inspectLater());
    let background: Buffer | undefined;
    const copyStart = nowUs();
    try {
      if (this.opts.mode === 'precopy') {
        for (;;) {
          const { records, pages } = this.guest.takeDirty(256);
          if (pages === 0) break;
          await w.write(records);
          this.bytesDone += records.length;
        }
        await w.write(stateRecord(state));
      } else {
        background = Buffer.from(this.guest.memory); // copy-on-write, emulated
      }
    } catch (e) {
      this.phase = 'failed';
      await this.resumeIfOurs();
      await w.abort();
      throw e;
    }
    const copyEnd = nowUs();
    // ── resume ──
    await this.resumeIfOurs();
    const resumeT = performance.now();
    const resumeUnixUs = nowUs();
    phases.push({ phase: 'PHASE_PAUSE', startUnixUs: cutUnixUs, endUnixUs: resumeUnixUs });
    if (this.opts.mode === 'precopy') phases.push({ phase: 'PHASE_COPY', startUnixUs: copyStart, endUnixUs: copyEnd });
    this.phase = 'writing';
    this.final = this.finish(background, state);
    this.final.catch(() => undefined);
    return { pauseMs: resumeT - pauseT, cutUnixUs, resumeUnixUs, phases };
  }

  private async resumeIfOurs(): Promise<void> {
    if (!this.pausedByUs) return;
    this.pausedByUs = false;
    this.guest.job = undefined;
    if (this.guest.status === 'paused') this.guest.run();
  }

  private async finish(background: Buffer | undefined, state: SimGuestState): Promise<VmImage> {
    const w = this.writer as ArtefactWriter;
    try {
      if (background !== undefined) {
        for (let p = 0; p < this.guest.pageCount; p += 256) {
          if ((this.phase as JobPhase) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
          const idx: number[] = [];
          for (let q = p; q < Math.min(this.guest.pageCount, p + 256); q++) idx.push(q);
          await w.write(pageRecords(background, idx));
        }
        await w.write(stateRecord(state));
      }
      if ((this.phase as JobPhase) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
      const a = await w.commit();
      this.committed = a;
      if ((this.phase as JobPhase) === 'aborted') {
        await this.opts.store.delete(a.path);
        throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
      }
      this.phase = 'done';
      return { memory: a };
    } catch (e) {
      await w.abort();
      if ((this.phase as JobPhase) !== 'aborted') this.phase = 'failed';
      throw e;
    }
  }

  durable(): Promise<VmImage> {
    if (this.final === undefined) return Promise.reject(new VnsnapError('ERR_STATE', `snapshot of ${this.guest.spec.name}: durable() before the cut`));
    return this.final;
  }

  async abort(): Promise<void> {
    if (this.phase === 'aborted') return;
    const was = this.phase;
    this.phase = 'aborted';
    this.stopPrecopy();
    this.setReady();
    await this.loop.catch(() => undefined);
    // The guest's epoch follows its ports: the agent advances both together (epochAdvanced, then
    // the switch's abort), so a frame never carries an epoch its port has not reached.
    await this.resumeIfOurs();
    if (was === 'writing') await this.final?.catch(() => undefined);
    await this.writer?.abort();
    if (this.committed) await this.opts.store.delete(this.committed.path);
    await this.opts.store.delete(this.path).catch(() => undefined);
  }
}

export class SimDriver implements HypervisorDriver {
  readonly kind = 'sim' as const;
  private readonly vms = new Map<string, SimVm>();
  private readonly cutStates = new Map<string, SimVmState | (Omit<SimVmState, 'memorySha256'> & { memory: Buffer })>();
  private readonly opts: Required<SimDriverOptions>;

  constructor(opts: SimDriverOptions = {}) {
    this.opts = {
      batchSize: opts.batchSize ?? 32,
      tickMs: opts.tickMs ?? 5,
      readyBytes: opts.readyBytes ?? 256 * 1024,
      passIntervalMs: opts.passIntervalMs ?? 10,
      helloMs: opts.helloMs ?? 100,
      frameBytes: Math.max(64, opts.frameBytes ?? 96),
      rxQueueMax: opts.rxQueueMax ?? 100_000,
    };
  }

  private make(spec: VmStartSpec, ctx: VmStartContext): SimVm {
    if (spec.driver.sim === undefined || spec.driver.sim === null) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: the sim driver needs a sim driver spec`);
    const existing = this.vms.get(spec.id);
    if (existing && existing.status !== 'stopped') throw new VnsnapError('ERR_ALREADY_EXISTS', `sim VM ${spec.id} is already ${existing.status}`);
    if (ctx.portNames.length !== spec.macs.length) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: ${spec.macs.length} MACs but ${ctx.portNames.length} port names`);
    const ports = ctx.portNames.map((n) => new SimPort(n, this.opts.batchSize));
    const vm = new SimVm(spec, ports, this.opts, spec.driver.sim.memoryMib || 4);
    // Like a guest's ARP table, only the peers it talks to (a table of every VM of a large VNE
    // would be n² entries over the VNE, and is saved in every image).
    const peers = new Set(vm.peers);
    for (const v of ctx.vneVms ?? []) {
      const mac = v.macs[0];
      if (peers.has(v.name) && mac !== undefined) vm.state.arp[v.name] = formatMac(parseMac(mac));
    }
    return vm;
  }

  async start(spec: VmStartSpec, ctx: VmStartContext): Promise<VmHandle> {
    const vm = this.make(spec, ctx);
    this.vms.set(spec.id, vm);
    vm.run();
    return { name: spec.name, ports: vm.ports };
  }

  async stop(id: string): Promise<void> {
    const vm = this.vms.get(id);
    if (!vm) return;
    await vm.job?.abort();
    vm.destroy();
    this.vms.delete(id);
  }

  async pause(id: string): Promise<void> {
    this.get(id).halt();
  }

  async resume(id: string): Promise<void> {
    this.get(id).run();
  }

  status(id: string): VmStatus {
    return this.vms.get(id)?.status ?? 'stopped';
  }

  async snapshot(id: string, opts: SnapshotOptions): Promise<SnapshotJob> {
    const vm = this.get(id);
    if (vm.status !== 'running') throw new VnsnapError('ERR_STATE', `sim VM ${id} is ${vm.status}; a snapshot needs it running`);
    const job = new SimJob(this, vm, opts, this.opts);
    await job.begin();
    return job;
  }

  async restore(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<VmHandle> {
    const vm = this.make(spec, { ...ctx, vneVms: [] });
    const { memory, state } = parseSimImage(await store.get(image.memory.path), image.memory.path, vm.pageCount);
    memory.copy(vm.memory);
    vm.state = state;
    vm.status = 'paused';
    this.vms.set(spec.id, vm);
    return { name: spec.name, ports: vm.ports };
  }

  epochAdvanced(id: string, epoch: number): void {
    const vm = this.vms.get(id);
    if (vm && vm.state.epoch < epoch) vm.state.epoch = epoch;
  }

  inspect(id: string): SimVmState | undefined {
    return this.vms.get(id)?.inspect();
  }

  /** The VM's state at the pause instant of the cut to `epoch` (tests). */
  cutState(id: string, epoch: number): SimVmState | undefined {
    return this.hashCutState(`${id}@${epoch}`);
  }

  recordCutState(id: string, epoch: number, s: SimVmState | (Omit<SimVmState, 'memorySha256'> & { memory: Buffer })): void {
    const key = `${id}@${epoch}`;
    this.cutStates.set(key, s);
    if ('memory' in s) setImmediate(() => this.hashCutState(key));
    if (this.cutStates.size > 1000) this.cutStates.delete(this.cutStates.keys().next().value as string);
  }

  /** The recorded state with its memory hashed (once; the memory copy is dropped then). */
  private hashCutState(key: string): SimVmState | undefined {
    const s = this.cutStates.get(key);
    if (!s || !('memory' in s)) return s;
    const { memory, ...rest } = s;
    const done: SimVmState = { ...rest, memorySha256: createHash('sha256').update(memory).digest('hex') };
    this.cutStates.set(key, done);
    return done;
  }

  async close(): Promise<void> {
    for (const id of [...this.vms.keys()]) await this.stop(id);
  }

  private get(id: string): SimVm {
    const vm = this.vms.get(id);
    if (!vm || vm.status === 'stopped') throw new VnsnapError('ERR_NOT_FOUND', `no sim VM ${id}`);
    return vm;
  }
}
