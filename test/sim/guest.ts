/**
 * A sim VM (the guest of the simulated driver) and its vNIC.
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
 * Frames delivered while a VM is paused wait in its NIC queue (outside the image, like a TAP's
 * kernel queue) and are processed at resume.
 */
import { createHash } from 'node:crypto';
import { VnsnapError } from '../../proto/core/errors';
import { FakePort } from '../../switch/port/porttest/fake-port';
import { formatMac, parseMac, writeMac } from '../../switch/bridge/mac';
import type { SnapshotJob, VmStartSpec, VmStatus } from '../../agent/drivers/driver';
import { PAGE, pageRecords } from './image';
import { cloneState, emptyState, type SimDriverOptions, type SimGuestState, type SimVmState } from './state';

export const SIM_ETHERTYPE = 0x88b5;
const MAGIC0 = 0x56; // 'V'
const MAGIC1 = 0x53; // 'S'
const T_DATA = 1;
const T_HELLO_REQ = 2;
const T_HELLO_REPLY = 3;

/**
 * The VM side of a sim vNIC: the switch's FakePort (frames reach the switch in batches on the
 * next event-loop turn) with the differences a long-running guest needs: frames the switch
 * delivers go to the guest and neither they nor the batch sizes are kept (FakePort records every
 * one for assertions: unbounded in a scale run), and frames the guest wrote before the agent
 * attached the port are handed over at attach.
 */
export class SimPort extends FakePort {
  /** Where frames from the switch go. */
  onFrame: ((frame: Buffer) => void) | undefined;

  constructor(name: string, batchSize: number) {
    super(name, { batchSize, auto: true });
  }

  override open(onBatch: (count: number) => void): void {
    super.open(onBatch);
    if (this.pendingCount > 0) setImmediate(() => this.vm.pumpAll());
  }

  override pumpOne(): number {
    const n = super.pumpOne();
    this.batchSizes.length = 0;
    return n;
  }

  /** The VM writes a frame (sent to the switch on the next turn, in batches). */
  write(frame: Buffer): void {
    if (!this.closed) this.queueFromVm(frame);
  }

  override send(frames: readonly Buffer[], count: number): number {
    if (this.closed) return 0;
    for (let i = 0; i < count; i++) this.onFrame?.(frames[i] as Buffer);
    return count;
  }
}

export class SimVm {
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
  job: SnapshotJob | undefined;

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
