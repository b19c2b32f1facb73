/**
 * A snapshot job of a QEMU VM with tracked memory (qemu extra `memory: tracked`;
 * docs/incremental-memory.md): the agent saves only the RAM blocks the guest wrote since the
 * previous snapshot, read from QEMU's RAM itself, and QEMU saves only its device state. Both
 * snapshot modes take this path (what a mode asks for — a short pause, the commit's instant — it
 * gives either way): a snapshot costs what the guest wrote, not a pass over its whole RAM.
 *
 *   begin: in two lines at once, neither waiting for the other: x-ignore-shared on (QEMU's
 *          migration skips the shared RAM), the disk overlay prepared, the device state's socket;
 *          and a block image opened in the store over the VM's base (the previous capture's image,
 *          kept under its own path: unchanged blocks are named from it, never read or hashed),
 *          then the first round: the blocks written since the base (no valid base: every block),
 *          read with the VM running and put in the store ─► ready.
 *          A round with the VM running leaves the blocks the previous snapshot's stopped round
 *          found written (the guest's hot set, QemuVm.trackedHot) to this job's stopped round,
 *          which reads them with its own (hot-blocks.ts): they would be written again and read
 *          twice.
 *   approach (approachCut(), at the commit's receipt when it names an instant, both modes):
 *          rounds with the VM running and its ports not gated, on round-schedule.ts's schedule,
 *          the last ending before the instant; the agent cuts at the instant.
 *   cut:   the approach's rounds ended, one still running not waited for (its scan is done:
 *          what was written since is the stopped round's; finish() awaits its puts before the
 *          stopped round's); without them another round with the VM running unless the last is
 *          younger than FRESH_ROUND_MS (with an instant given to cut() itself: rounds until it,
 *          then the `stop` written at it) ─► `stop`, blockdev-snapshot and the device state's `migrate` back to back
 *          (device-state.ts: QEMU saves the devices alone once the VM is stopped and the disk
 *          frozen, without resuming it) ─► STOP (the cut instant) ─► atPause() (the switch's
 *          drain), and beside it, once QEMU answered `stop` (it drains in-flight disk I/O into
 *          the RAM after its STOP), the last round (the blocks written since the previous round,
 *          read while the VM is stopped) ─► the device state's end ─► `cont` (contAfterSave:
 *          no status query before it) ─► RESUME. QEMU's main thread boosted from before the
 *          `stop` to the RESUME (pause-boost.ts), as in a background cut, and with it every other
 *          QEMU thread, those at one above the agents' cut windows (STOPPED_READ_FIFO_PRIORITY) and
 *          below QEMU's main thread, which so always gets a core to kick a vCPU still running its
 *          guest out of it: its vCPUs must leave the guest for the `stop` and its helpers answer the
 *          device-state save (at the default policy the host's realtime threads, an agent
 *          forwarding a TCP stream in its cut window among them, held them off for up to 0.95 s:
 *          the kernel's realtime throttling). In a background cut the agent's event loop is
 *          raised (cut-priority.ts) from right before the `stop` to the hook's end only: the
 *          rounds before it run at the agent's own priority (ownCutWindow; at a realtime policy
 *          they held every other thread of a 2-core host off for up to 1 s, pauses with them).
 *          The vCPUs go back to the default policy right before the `cont` (a TCG vCPU running
 *          its guest at SCHED_FIFO above the agents' cut windows took both cores of a 2-core
 *          host, so the agents never ran to see the RESUME and undo the boost: their heartbeats
 *          stopped), the vCPUs alone (PauseBoost.lowerVcpus): QEMU's other threads stay up to
 *          the RESUME, since lowered with them the migration thread, which leaves finish-migrate
 *          after the save, waited for a core behind the guests (the RESUME came 10-26 ms after
 *          the `cont` in the longest pauses). No stream of this agent writes into the
 *          store meanwhile (image-stream.ts holdStoreWrites).
 *   durable: the last round's blocks and the device state (the image's tail) put, the image
 *          committed, by the same commit also as the VM's new base (BlockImageOptions.alsoAt),
 *          the frozen disk stored (disk-layers.ts).
 *
 * Off the event loop: a round's read and its blocks' SHA-256s run in libuv's thread pool
 * (ram-track.ts readBlocks, switch/native/ram_read.c) — the stopped round's read on a thread of
 * its own, never queued behind the pool's other work (the store's compression, another VM's
 * round) while the VM is paused —, not on the agent's loop, which an agent's
 * other VMs' cuts share (their `stop`, STOP/RESUME, the switch's drain): a distro guest's round
 * held it for up to 527 ms (docs/performance.md, issue 15). The round's scan runs before its read
 * begins (at the call); the stopped round's scan and read begin only after QEMU answered `stop`;
 * a read's buffer goes back to RAM_READS only once its read settled (also on a failure or an
 * abort: nothing writes a buffer given back), and each block is put under the digest of exactly
 * the bytes the read left in it (putNamedBlock), which stay unchanged until the put settled.
 *
 * Exactness: a block's content in the image is its last read; every page written after a scan is
 * reported by the next scan (ram-track.ts), a block a round left out is read by the stopped round
 * (hot-blocks.ts), and the last scan runs with the VM stopped and its in-flight disk I/O drained
 * (after the `stop`'s reply), so the image is the RAM the device state was saved with. The base
 * is only used while no scan ran since it was committed
 * (QemuVm.trackedBase.valid): a failed or aborted job makes the next capture a full one, never a
 * wrong one. A valid base is in the VM's state record, so it survives an agent restart (the
 * adopted tracker reports what was written since the dead agent's last scan): before its first
 * scan, a job over a base writes the record without it (SnapshotOptions.saveState) and fails if it
 * cannot, so a record on disk never names a base a scan has moved past; the persist phase's save
 * after this job's commit names the new one. A crash in between leaves no base recorded: the
 * next capture is a full one.
 *
 * Failure and abort: the VM is resumed if this job stopped it (its `stop`, or the device state's
 * save once its `migrate` was written: that save is cancelled and waited for first, as its end
 * would stop the VM again), the disk overlay merged back, the block image aborted and what was
 * committed deleted: nothing of the job stays in the store. An abort ends the approach's rounds.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { nowUs } from '../../../proto/core/clock';
import { describeError, isVnsnapError, VnsnapError } from '../../../proto/core/errors';
import type { BlockImageWriter, StoredArtefact } from '../../../proto/store/snapshot-store';
import { SpareBuffers } from '../../../proto/store/spare-buffers';
import type { CutInstant, CutReport, PhaseSpan, SnapshotOptions, VmImage } from '../driver';
import { cutReport, perfAt } from '../job';
import { QemuVmJob } from './vm-job';
import { holdStoreWrites } from '../image-stream';
import { CutQmpTrace } from './cut-qmp-trace';
import { contAfterSave, DeviceStateSink, ignoreSharedRam, saveDeviceState } from './device-state';
import { boostPause, pauseBoostEnabled, startChrtShell } from './pause-boost';
import { STOPPED_READ_FIFO_PRIORITY, stoppedReadPriority } from '../../cut-priority';
import { MiB, type QemuOptions, type QemuVm } from './process';
import type { QmpEvent } from './qmp';
import { blockRuns, type RamWriteTracker, type WrittenRuns } from './ram-track';
import { blockSet, split, withLeft } from './hot-blocks';
import { nextRoundInMs, roundDue } from './round-schedule';

/** Bytes per block of a tracked image: the unit a round reads and the store keeps as one chunk. */
export const TRACKED_BLOCK_SIZE = 64 * 1024;
/** The memory artefact's attributes a tracked image carries (its loader: tracked-load.ts). */
export const MEMORY_ATTRIBUTE = 'memory';
export const MEMORY_TRACKED = 'tracked';
export const RAM_BYTES_ATTRIBUTE = 'ram_bytes';
/** Bytes a full round reads at a time. */
const FULL_SLICE = 4 * MiB;
/**
 * The RAM padding (KiB) of a tracked VM of `memoryMib` whose untracked padding would be `padKib`
 * (cmdline.ts tcgRamPadKib: TCG on QEMU < 9.0): at least that, and the RAM a whole number of blocks.
 */
export function trackedRamPadKib(memoryMib: number, padKib: number): number {
  const blockKib = TRACKED_BLOCK_SIZE / 1024;
  const total = memoryMib * 1024 + padKib;
  return Math.ceil(total / blockKib) * blockKib - memoryMib * 1024;
}

/** Where a VM's base image is kept in the store (apart from every snapshot's prefix). */
export function trackedBasePath(vne: string, vm: string): string {
  return `tracked-bases/${vne}/${vm}.mem`;
}

type Phase = 'begin' | 'ready' | 'cutting' | 'writing' | 'done' | 'aborted' | 'failed';

/**
 * Blocks read by a round: runs (offsets from the RAM's start) and their bytes back to back, in
 * `buf` (from RAM_READS), with each block's SHA-256 (32 bytes a block, in order) in `digests`
 * once `named` (the stopped round's are computed after the resume: finish()).
 */
interface ReadBlocks {
  runs: WrittenRuns;
  data: Buffer;
  buf: Buffer;
  digests: Buffer;
  named: boolean;
}

/**
 * The memory the rounds read the RAM into, reused by every round of the agent's tracked VMs
 * (spare-buffers.ts says why): a round's buffer goes back once its blocks are put (the store
 * copies what it keeps, block-image-writer.ts), the last round's once the image has it, and
 * never while its read may still write it (readBlocks' promise settled, also on a failure).
 */
const RAM_READS = new SpareBuffers(4);

/** The stopped round's read as cut-trace spans: waiting for its thread (RAM_QUEUE), reading (RAM_READ). */
function readSpans(t: Float64Array): PhaseSpan[] {
  const [submitted, begun, ended] = [Math.round(t[0] as number), Math.round(t[1] as number), Math.round(t[2] as number)];
  if (!(submitted > 0 && begun >= submitted && ended >= begun)) return [];
  return [
    { phase: 'PHASE_RAM_QUEUE', startUnixUs: submitted, endUnixUs: begun },
    { phase: 'PHASE_RAM_READ', startUnixUs: begun, endUnixUs: ended },
  ];
}

export class TrackedJob extends QemuVmJob {
  /** Its rounds run at the agent's own priority; the loop is raised for the pause alone (cut()). */
  readonly ownCutWindow = true;
  private phase: Phase = 'begin';
  private image: BlockImageWriter | undefined;
  private sink: DeviceStateSink | undefined;
  private pausedByUs = false;
  /** Bytes read by the rounds, and whether the first round read every block (no valid base). */
  private readBytes = 0;
  private full = false;
  /** This job's commit also wrote the VM's base (alsoAt): an abort after it deletes the base. */
  private linkedBase = false;
  private qmpTrace: CutQmpTrace | undefined;
  private trace: [string, number][] = [];
  /** Blocks the rounds before the stop left to the stopped round (hot-blocks.ts). */
  private left: Uint8Array | undefined;
  /** When the last round before the stop began (performance.now()). */
  private lastRoundAt = 0;
  /** The rounds begun by approachCut() (a failure of them is cut()'s), and what ends their waits on an abort. */
  private approaching: Promise<void> | undefined;
  private readonly roundsEnd = new AbortController();
  /** Aborted by cut(): the approach's rounds begin no other (the one running ends by itself). */
  private readonly roundsCut = new AbortController();
  /** The stopped round's read: submitted, begun on its thread, ended (wall-clock µs; PHASE_RAM_QUEUE, PHASE_RAM_READ). */
  private readonly stoppedReadTiming = new Float64Array(3);
  /** The rounds with the VM running of the cut (approachCut(), cut()): PHASE_RAM_ROUND (scan and read), PHASE_RAM_PUT. */
  private readonly roundSpans: PhaseSpan[] = [];
  /** The device state's save, once its `migrate` was written (failCut() ends it before resuming). */
  private saving: Promise<Buffer> | undefined;

  constructor(
    vmObj: QemuVm,
    private readonly tracker: RamWriteTracker,
    opts: SnapshotOptions,
    o: QemuOptions,
  ) {
    super(vmObj, opts, o);
  }

  private get memPath(): string {
    return `${this.opts.prefix}${this.vmObj.spec.name}.mem`;
  }

  private get basePath(): string {
    return trackedBasePath(this.vmObj.spec.vne, this.vmObj.spec.name);
  }

  async begin(): Promise<void> {
    const store = this.opts.store;
    if (!store.createBlockImage) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${this.vmObj.spec.name} runs with tracked memory, which needs a content-addressed store (this store keeps whole files): give the agent a content-addressed store, or start the VM with qemu extra memory=migration`);
    const create = store.createBlockImage.bind(store);
    this.mark('begin');
    if (pauseBoostEnabled()) startChrtShell();
    // Two lines at once (module comment, begin): the cut's preparations (QMP round trips, the
    // overlay's file and blockdev-add, the device state's socket) beside the memory's (the state
    // record's fsyncs, the image opened over the base, the first round). Each line's steps keep
    // their order; a failure is thrown once both lines settled, so an abort finds every part made.
    const steps = await Promise.allSettled([
      (async () => {
        await ignoreSharedRam(this.q, this.vm);
        await this.disk.prepare();
        // Its reader at the stopped round's read's level: both are inside the pause.
        this.sink = await DeviceStateSink.listen(`${this.vmObj.files.dir}/dev${this.vmObj.snapSerial}.sock`, { fifoPriority: stoppedReadPriority() });
        this.mark('prepared');
      })(),
      (async () => {
        this.image = await this.openImage(create);
        this.mark('opened');
        await this.firstRound();
        this.mark('first round');
      })(),
    ]);
    const failed = steps.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    this.phase = 'ready';
    this.opts.onProgress?.({ bytesDone: this.readBytes, bytesRemaining: 0, bytesTotal: this.tracker.length, iteration: 1, dirtyRateMibS: 0, ready: true });
    this.latch.set();
  }

  /**
   * The block image over the VM's base when it is valid and still in the store; else a full one.
   * The base is marked invalid first, and while the VM has one the state record (which may name
   * it) is written without it before this returns, so before any scan (module comment).
   */
  private async openImage(create: NonNullable<SnapshotOptions['store']['createBlockImage']>): Promise<BlockImageWriter> {
    // The commit also makes the image the VM's next base, under its own path (deleting this snapshot leaves it).
    const o = { size: this.tracker.length, blockSize: TRACKED_BLOCK_SIZE, alsoAt: this.basePath };
    const base = this.vmObj.trackedBase;
    const usable = base?.valid === true;
    if (base) {
      // From here the tracker's scans move on: the base stays usable only through this job's commit.
      base.valid = false;
      base.store ??= this.opts.store; // a base adopted from a record is in the agent's store
      try {
        await this.opts.saveState?.();
      } catch (e) {
        throw new VnsnapError('ERR_FAILED_PRECONDITION', `snapshot of ${this.vm}: the VM's state record could not be written without its tracked memory base before reading its RAM, so a restarted agent could take a stale base: ${describeError(e)}`, { cause: e });
      }
    }
    this.full = !usable;
    if (usable) {
      try {
        return await create(this.memPath, { ...o, base: base.path });
      } catch (e) {
        if (!isVnsnapError(e, 'ERR_NOT_FOUND') && !isVnsnapError(e, 'ERR_FAILED_PRECONDITION')) throw e;
        this.log.warn({ vm: this.vm, base: base.path, err: describeError(e) }, 'tracked memory: the base image is gone or unusable; this snapshot saves every block');
        this.full = true;
      }
    }
    return create(this.memPath, o);
  }

  /** Every block (no base), or those written since the base; the VM running. */
  private async firstRound(): Promise<void> {
    if (!this.full) return this.round();
    this.lastRoundAt = performance.now();
    this.tracker.scan(); // from here every write is reported again
    const t = this.tracker;
    const buf = RAM_READS.take(FULL_SLICE);
    for (let off = 0; off < t.length; off += FULL_SLICE) {
      if (this.abortRequested) throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
      const len = Math.min(FULL_SLICE, t.length - off);
      const r = await this.read({ pairs: Float64Array.of(off, len), count: 1, bytes: len }, buf);
      await this.put(r);
    }
    RAM_READS.give(buf);
  }

  /** One round with the VM running: the blocks written since the last scan, read and put. */
  private async round(): Promise<void> {
    this.lastRoundAt = performance.now();
    const began = nowUs();
    const r = await this.readRound();
    const read = nowUs();
    await this.put(r);
    RAM_READS.give(r.buf);
    // The rounds of the cut (from approachCut() or cut()) in its trace: read, then put.
    if (this.phase !== 'begin') this.roundSpans.push({ phase: 'PHASE_RAM_ROUND', startUnixUs: began, endUnixUs: read }, { phase: 'PHASE_RAM_PUT', startUnixUs: read, endUnixUs: nowUs() });
  }

  /**
   * The blocks written since the last scan, read. A round with the VM running leaves the VM's hot
   * blocks (QemuVm.trackedHot) to the stopped round, which reads them with its own
   * (hot-blocks.ts) and makes its own the next job's hot set. The scan runs at the call (before
   * the read, which only begins after it); the read and the blocks' SHA-256s run in the thread
   * pool (ram-track.ts readBlocks), the stopped round's read on a thread of its own, at
   * `fifoPriority` when given (the cut window's: it is inside the pause).
   */
  private readRound(stopped = false, fifoPriority?: number): Promise<ReadBlocks> {
    // The stopped round's blocks are named after the resume (finish()): its pause holds the read alone.
    const len = this.tracker.length;
    const written = blockRuns(this.tracker.scan(), TRACKED_BLOCK_SIZE, len);
    let runs = written;
    const blocks = len / TRACKED_BLOCK_SIZE;
    if (stopped) {
      if (this.left) runs = withLeft(written, this.left, TRACKED_BLOCK_SIZE, len);
      this.vmObj.trackedHot = blockSet(written, TRACKED_BLOCK_SIZE, blocks);
    } else if (this.vmObj.trackedHot?.length === blocks) {
      this.left ??= new Uint8Array(blocks);
      runs = split(written, this.vmObj.trackedHot, this.left, TRACKED_BLOCK_SIZE, len);
    }
    const buf = RAM_READS.take(runs.bytes, Math.ceil((runs.bytes * 1.25) / MiB) * MiB); // room for the next rounds' growth
    if (!stopped) return this.read(runs, buf);
    // On a thread of its own, not the pool's: in the pool it waited, inside the pause, for a thread
    // the store's compression or another VM's round held (docs/incremental-memory.md).
    return this.read(runs, buf, { fifoPriority, ownThread: true, timing: this.stoppedReadTiming }, false);
  }

  /**
   * The runs (whole blocks) read into buf and named, off the event loop. buf is the caller's until
   * this settles; on a failure, once no thread writes it any more, it goes back to RAM_READS.
   */
  private async read(runs: WrittenRuns, buf: Buffer, opts: { fifoPriority?: number; ownThread?: boolean; timing?: Float64Array } = {}, named = true): Promise<ReadBlocks> {
    const data = buf.subarray(0, runs.bytes);
    const digests = Buffer.allocUnsafe((32 * runs.bytes) / TRACKED_BLOCK_SIZE);
    try {
      await this.tracker.readBlocks(runs, data, TRACKED_BLOCK_SIZE, named ? digests : null, opts);
    } catch (e) {
      RAM_READS.give(buf); // settled: the read is over
      throw e;
    }
    this.readBytes += runs.bytes;
    return { runs, data, buf, digests, named };
  }

  /** Put the blocks read (each block of the runs, in order), named by the read's digests. */
  private put(r: ReadBlocks): Promise<void> {
    const image = this.image;
    if (!image) return Promise.reject(new VnsnapError('ERR_STATE', `snapshot of ${this.vm}: no image open`));
    if (!r.named) return Promise.reject(new VnsnapError('ERR_INTERNAL', `snapshot of ${this.vm}: blocks put before they were named`));
    const puts: Promise<void>[] = [];
    let at = 0;
    for (let i = 0; i < r.runs.count; i++) {
      const off = r.runs.pairs[2 * i] as number;
      const len = r.runs.pairs[2 * i + 1] as number;
      for (let b = 0; b < len; b += TRACKED_BLOCK_SIZE) {
        const k = (at + b) / TRACKED_BLOCK_SIZE; // the block's place in the read: its digest's
        puts.push(image.putNamedBlock((off + b) / TRACKED_BLOCK_SIZE, r.data.subarray(at + b, at + b + TRACKED_BLOCK_SIZE), r.digests.toString('hex', 32 * k, 32 * k + 32)));
      }
      at += len;
    }
    return Promise.all(puts).then(() => undefined);
  }

  /**
   * The rounds of a cut at the commit's instant, begun at the commit's receipt with the VM running
   * and its ports not gated (SnapshotJob.approachCut): they end before the instant
   * (round-schedule.ts), and the cut called then writes `stop` at once, the last round being
   * fresh. A round still running at the cut (it ran late) is not waited for: the cut ends the
   * rounds (no other begins) and writes its `stop` at the instant; that round's scan is done, so
   * what was written since is the stopped round's, and its read and puts end when they end
   * (finish() awaits them before the stopped round's blocks are put, so the later read wins). A
   * `stop` waiting for a late round came up to 1.1 s after the other VMs' (docs/performance.md,
   * branch `cutlane`). A failure of the rounds is the snapshot's (finish()).
   */
  approachCut(at: CutInstant): void {
    if (this.phase !== 'ready' || this.approaching) return;
    this.mark('approach');
    this.approaching = this.roundsUntil(perfAt(at));
    this.approaching.then(
      () => this.mark('approached'),
      () => undefined,
    );
  }

  /** Rounds with the VM running until the next would not end before `stopAt` (performance.now() ms). */
  private async roundsUntil(stopAt: number): Promise<void> {
    if (!roundDue(performance.now(), this.lastRoundAt, stopAt)) return;
    for (;;) {
      if (this.abortRequested) throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
      if (this.roundsCut.signal.aborted) return;
      const t0 = performance.now();
      await this.round();
      const now = performance.now();
      const wait = nextRoundInMs(now, stopAt, now - t0);
      if (wait === undefined || this.roundsCut.signal.aborted) return;
      try {
        await sleep(wait, undefined, { signal: AbortSignal.any([this.roundsEnd.signal, this.roundsCut.signal]) });
      } catch (e) {
        if (!this.roundsCut.signal.aborted || this.roundsEnd.signal.aborted) throw e;
        return; // the cut came: no more rounds
      }
    }
  }

  private mark(step: string): void {
    this.trace.push([step, performance.now()]);
  }

  async cut(atPause: () => Promise<void>, at?: CutInstant): Promise<CutReport> {
    if (this.phase !== 'ready') throw new VnsnapError(this.phase === 'aborted' ? 'ERR_SNAPSHOT_ABORTED' : 'ERR_STATE', `snapshot of ${this.vm}: cut() in phase ${this.phase}`);
    if (this.vmObj.status !== 'running') throw new VnsnapError('ERR_DRIVER', `QEMU VM ${this.vm} is ${this.vmObj.status}, cannot cut`);
    this.phase = 'cutting';
    const stopAt = at ? perfAt(at) : undefined;
    this.mark('cut');
    let final: ReadBlocks | undefined;
    let state: Buffer | undefined;
    let cutUnixUs = 0;
    let resume: QmpEvent | undefined;
    let stopWrittenAt: number | undefined;
    try {
      // Rounds with the VM running (round-schedule.ts): the stopped one reads only what was
      // written since the last. Begun at the commit's receipt by approachCut(), they end here:
      // one still running is not waited for (approachCut()); finish() awaits it.
      if (this.approaching) this.roundsCut.abort();
      else if (stopAt !== undefined) await this.roundsUntil(stopAt);
      else if (roundDue(performance.now(), this.lastRoundAt)) await this.round();
      if (stopAt !== undefined && stopAt > performance.now()) await sleep(stopAt - performance.now());
      this.mark('rounds');
      this.qmpTrace = CutQmpTrace.start(this.q);
      const releaseStore = holdStoreWrites();
      // Background: the agent's loop raised from the `stop` to the hook's end (cut-priority.ts;
      // the rounds above ran at its own priority: snapshot-runner.ts agentWindow()). Not to the
      // `stop`'s reply: QEMU answers it once it has flushed the disks, which waits for the
      // kernel's I/O threads at the default policy, and the loop's other work (another VM's
      // round) kept at a realtime policy meanwhile held them off again (~1 s pauses).
      const loopUp = this.opts.mode === 'background' ? this.opts.raiseCutPriority?.() : undefined;
      // Every QEMU thread up for the stop and the device state; the vCPUs back down before the
      // `cont` (the main and monitor threads alone stay up to the RESUME): see the module comment.
      const boostAll = pauseBoostEnabled() ? boostPause(this.vmObj.pid, { log: this.log, allThreads: true, othersPriority: STOPPED_READ_FIFO_PRIORITY }) : undefined;
      let boostMain: ReturnType<typeof boostPause> | undefined;
      try {
        const stopEv = this.q.waitEvent('STOP', undefined, 10_000);
        stopEv.catch(() => undefined);
        stopWrittenAt = performance.now();
        // `stop`, `blockdev-snapshot` and the device state's `migrate` back to back: QEMU runs
        // them in order (the save begins with the VM stopped and the disk frozen) while the
        // agent drains and reads; the save does not resume the VM. From the `migrate` on, a
        // failure leaves the VM stopped by it: failCut() ends the save, then resumes it.
        const stopped = this.q.execute('stop');
        stopped.catch(() => undefined);
        const disk = this.disk.snapshot();
        disk.catch(() => undefined);
        const saved = saveDeviceState(this.q, this.vm, this.sink as DeviceStateSink);
        saved.catch(() => undefined);
        this.saving = saved;
        this.pausedByUs = true;
        const stop = await Promise.race([stopEv, stopped.then(() => undefined)]);
        this.vmObj.status = 'paused';
        cutUnixUs = stop?.timestampUs || nowUs();
        this.mark('stopped');
        const hook = atPause();
        hook.then(
          () => loopUp?.(),
          () => loopUp?.(),
        );
        hook.catch(() => undefined);
        // The stopped round once QEMU answered `stop`: it emits STOP before it drains the block
        // layer, and a disk read still in flight writes guest RAM until then. Its scan runs now,
        // its read on a thread of its own (nothing writes the RAM any more): the loop meanwhile
        // serves the hook and the agent's other VMs. The read runs realtime in both modes: it is
        // inside the pause, and a pre-copy cut's read at the default policy, when it read
        // everything since a round the cut did not wait for, took 28 / 80 / 103 ms (median / p95 /
        // max) against 7 / 15 / 16 raised (docs/performance.md, branch `cutlane`). One above the
        // agents' cut windows, as the paused QEMU's own helpers (boostPause's othersPriority): at
        // the windows' level it waited 6.7-7.4 ms (median) for a core held by a raised event loop,
        // this agent's or the other's, which a thread of equal FIFO priority does not preempt.
        // Its blocks are hashed after the resume (finish()).
        await stopped;
        final = await this.readRound(true, stoppedReadPriority());
        this.mark('read');
        await Promise.all([hook, disk]);
        this.mark('hook');
        state = await saved;
        this.mark('device state');
        // The vCPUs down before the `cont`; QEMU's other threads stay up to the RESUME (the
        // migration thread still has to leave finish-migrate). Where the vCPUs cannot be lowered
        // alone: every thread down, the main and monitor threads up again.
        if (boostAll && !boostAll.lowerVcpus()) {
          await boostAll.release();
          boostMain = boostPause(this.vmObj.pid, { log: this.log });
        }
        const resumed = this.q.waitEvent('RESUME', undefined, 10_000);
        resumed.catch(() => undefined);
        await contAfterSave(this.q, this.vm);
        resume = await resumed;
        this.pausedByUs = false;
        this.vmObj.status = 'running';
        this.mark('resumed');
      } finally {
        loopUp?.();
        void boostAll?.release();
        void boostMain?.release();
        releaseStore();
      }
    } catch (e) {
      await this.failCut();
      throw e;
    } finally {
      this.qmpTrace?.stop();
    }
    const report = cutReport(cutUnixUs, Math.max(cutUnixUs, resume.timestampUs || nowUs()));
    report.phases.push(...(this.qmpTrace?.stop() ?? []), ...this.roundSpans, ...readSpans(this.stoppedReadTiming));
    if (at && stopAt !== undefined && stopWrittenAt !== undefined) report.phases.push({ phase: 'PHASE_CUT_AT', startUnixUs: at.stopAtUs, endUnixUs: Math.round(at.stopAtUs + (stopWrittenAt - stopAt) * 1000) });
    const t0 = this.trace[0]?.[1] ?? 0;
    this.log.debug({ mode: this.opts.mode, memory: MEMORY_TRACKED, pauseMs: Number(report.pauseMs.toFixed(3)), full: this.full, readBytes: this.readBytes, finalBytes: final.data.length, deviceStateBytes: state.length, steps: this.trace.map(([k, t]) => `${k}+${(t - t0).toFixed(1)}`).join(' ') }, 'cut done');
    this.phase = 'writing';
    this.final = this.finish(final, state);
    this.final.catch(() => undefined);
    return report;
  }

  /** A cut failed: the device state's save ended, the VM resumed if this job stopped it, the disk overlay merged back or dropped. */
  private async failCut(): Promise<void> {
    this.phase = 'failed';
    this.roundsCut.abort();
    await this.approaching?.catch(() => undefined); // a round still running ends before the image is aborted under it
    if (this.saving) {
      // A save still running would stop the VM after the resume (its completion does).
      await this.q.execute('migrate_cancel').catch(() => undefined);
      await this.saving.catch(() => undefined);
    }
    await this.resumeIfOurs();
    await this.disk.undo();
    await this.disk.drop();
    await this.image?.abort();
    this.sink?.close();
    if (this.vmObj.job === this) this.vmObj.job = undefined;
  }

  private async resumeIfOurs(): Promise<void> {
    if (!this.pausedByUs) return;
    this.pausedByUs = false;
    if (this.vmObj.exited) return;
    await this.vmObj.refreshStatus().catch(() => undefined);
    // A stopped save leaves QEMU in finish-migrate for a moment: cont is refused until it left.
    for (let i = 0; i < 100 && this.vmObj.status !== 'running'; i++) {
      try {
        await this.q.execute('cont');
      } catch (e) {
        if (!/not finalized/i.test(describeError(e))) throw e;
        await sleep(10);
      }
      await this.vmObj.refreshStatus().catch(() => undefined);
    }
  }

  /** After the cut: the last blocks and the device state put, the image committed and made the base, the disk stored. */
  private async finish(final: ReadBlocks, state: Buffer): Promise<VmImage> {
    const image = this.image as BlockImageWriter;
    try {
      this.sink?.close();
      await this.approaching; // a round the cut did not wait for: its puts before the stopped round's (the later read wins)
      await this.tracker.hashBlocks(final.data, TRACKED_BLOCK_SIZE, final.digests); // in the thread pool, the VM running again
      final.named = true;
      await this.put(final); // every earlier round's puts were awaited by the round
      RAM_READS.give(final.buf);
      await image.setTail(state);
      if (this.abortRequested) throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
      const a = await image.commit(); // and the VM's next base (openImage's alsoAt)
      this.committed.push(a);
      this.linkedBase = true;
      const memory: StoredArtefact = { ...a, attributes: { ...a.attributes, [MEMORY_ATTRIBUTE]: MEMORY_TRACKED, [RAM_BYTES_ATTRIBUTE]: String(this.tracker.length) } };
      this.vmObj.trackedBase = { store: this.opts.store, path: this.basePath, valid: true };
      this.log.debug({ vm: this.vm, full: this.full, readBytes: this.readBytes, storedBytes: a.storedBytes, bytes: a.size }, 'tracked memory image committed');
      const disks = await this.storeDisk();
      if (this.abortRequested) throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
      this.phase = 'done';
      if (this.vmObj.job === this) this.vmObj.job = undefined;
      return { memory, disks };
    } catch (e) {
      if (!this.abortRequested) this.phase = 'failed';
      await image.abort();
      for (const w of this.writers) await w.abort();
      throw e;
    }
  }

  protected async runAbort(): Promise<void> {
    const was = this.phase;
    this.phase = 'aborted';
    this.roundsEnd.abort(); // rounds begun by approachCut() end before the image is aborted under them
    await this.approaching?.catch(() => undefined);
    if (was === 'writing') await this.final?.catch(() => undefined);
    await this.resumeIfOurs().catch((e) => this.log.warn({ err: describeError(e) }, 'resume after abort failed'));
    await this.disk.undo();
    await this.disk.drop();
    await this.image?.abort();
    for (const w of this.writers) await w.abort();
    this.sink?.close();
    for (const a of this.committed) await this.opts.store.delete(a.path);
    // The base was moved on by this job's scans (or replaced by its commit, now deleted): the next
    // capture is a full one. The record names no base since openImage (or, aborted before it, no
    // scan ran: the base it names is still right, and the next job's openImage drops it first).
    if (this.vmObj.trackedBase) this.vmObj.trackedBase.valid = false;
    if (this.linkedBase) await this.opts.store.delete(this.basePath);
    if (this.vmObj.job === this) this.vmObj.job = undefined;
  }
}
