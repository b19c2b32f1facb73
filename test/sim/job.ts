/**
 * A sim snapshot: memory really copied into the store (image.ts).
 *   precopy:    pass 1 copies every page, later passes the pages dirtied since; `ready` when a
 *               pass copied at most `readyBytes`; at the cut (VM paused) the remaining dirty
 *               pages and the guest state are written, then the VM resumes.
 *   background: at the pause the memory and state are copied (copy-on-write emulated by a
 *               copy), the VM resumes at once, and the copy is written while it runs.
 * `ready` and abort() follow driver.ts's contract through DriverJob.
 */
import { nowUs } from '../../proto/core/clock';
import { VnsnapError } from '../../proto/core/errors';
import type { CutReport, SnapshotModeName, SnapshotOptions, SnapshotProgress, VmImage } from '../../agent/drivers/driver';
import { cutReport, DriverJob } from '../../agent/drivers/job';
import type { ArtefactWriter, StoredArtefact } from '../../proto/store/local-dir';
import type { SimVm } from './guest';
import { imageHeader, PAGE, pageRecords, stateRecord } from './image';
import { cloneState, type SimDriverOptions, type SimGuestState, type SimVmState } from './state';

/** Where a job records the VM's state at the pause instant (the driver, for tests). */
export interface CutStateSink {
  recordCutState(id: string, epoch: number, s: SimVmState | (Omit<SimVmState, 'memorySha256'> & { memory: Buffer })): void;
}

type JobPhase = 'precopy' | 'cutting' | 'writing' | 'done' | 'aborted' | 'failed';

export class SimJob extends DriverJob {
  private phase: JobPhase = 'precopy';
  private writer: ArtefactWriter | undefined;
  private loop: Promise<void> = Promise.resolve();
  private stopLoop = false;
  /** Ends the pre-copy loop's pause between passes early (cut, abort). */
  private wake: (() => void) | undefined;
  private iteration = 0;
  private bytesDone = 0;
  private committed: StoredArtefact | undefined;
  private pausedByUs = false;
  readonly path: string;

  constructor(
    private readonly driver: CutStateSink,
    private readonly guest: SimVm,
    private readonly opts: SnapshotOptions,
    private readonly sopts: Required<SimDriverOptions>,
  ) {
    super();
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
      this.latch.set();
      return;
    }
    this.guest.markAllDirty();
    this.loop = this.precopyLoop();
    this.loop.catch((e: Error) => this.latch.fail(e)); // a store write failed before ready
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
      if (isReady) this.latch.set();
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
    this.phase = 'writing';
    this.final = this.finish(background, state);
    this.final.catch(() => undefined);
    return cutReport(cutUnixUs, resumeUnixUs, this.opts.mode === 'precopy' ? { startUnixUs: copyStart, endUnixUs: copyEnd } : undefined, resumeT - pauseT);
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
      return { memory: a, disks: [] };
    } catch (e) {
      await w.abort();
      if ((this.phase as JobPhase) !== 'aborted') this.phase = 'failed';
      throw e;
    }
  }

  protected async runAbort(): Promise<void> {
    const was = this.phase;
    this.phase = 'aborted';
    this.stopPrecopy();
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
