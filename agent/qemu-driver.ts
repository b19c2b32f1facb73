/**
 * The QEMU hypervisor driver (DESIGN.md "Hypervisor drivers", docs/qemu.md): one QEMU process
 * per VM, driven over QMP (qemu-qmp.ts), with the command line of qemu-cmdline.ts.
 *
 * Instance directory (driver option workDir, one directory per VM instance; keep it short:
 * unix socket paths are limited to 107 bytes): qmp.sock, console.log, net<i>.sock (stream NICs),
 * channel.sock (extra.channel), disk0.qcow2 (the instance's overlay over the spec's base image),
 * disk-e<k>.qcow2 (the overlay made at the cut of snapshot k; the previous top is frozen),
 * mem-e<k>.img (the migration stream being written). Removed when the VM stops.
 *
 * NICs: by default each vNIC is QEMU's `-netdev stream` connected to a StreamPort the driver
 * listens on (no kernel device); `nic: 'tap'` makes a TAP (vnet_hdr off) that QEMU opens and
 * the switch reads with a packet socket. docs/qemu.md has the measurements behind the default.
 *
 * Snapshot, background mode (the cut, in the agent's order):
 *   begin: migrate-set-capabilities (every capability, explicitly: events, background-snapshot
 *          on, the rest off), migrate-set-parameters
 *   cut:   stop ─► atPause() ─► blockdev-snapshot (the overlay made and attached at begin) ─►
 *          migrate exec:cat > mem ─► QEMU resumes the VM itself (RESUME event)
 *   durable: MIGRATION completed ─► the stream file and the frozen disk go into the store
 * Snapshot, precopy mode (VNsnap's):
 *   begin: capabilities (events, pause-before-switchover on, the rest off), downtime-limit 1 ms,
 *          migrate; query-migrate every progressMs → onProgress; `ready` after the first pass
 *          when the remaining dirty set is small; then max-bandwidth is lowered to holdBandwidth
 *          so QEMU keeps iterating slowly instead of switching over by itself.
 *   cut:   max-bandwidth up, downtime-limit = cutDowntimeMs ─► MIGRATION pre-switchover (the VM
 *          is paused: the cut) ─► atPause() ─► blockdev-snapshot ─► migrate-continue ─►
 *          MIGRATION completed ─► cont (on the event, not polled)
 *   If QEMU converges and pauses by itself before the cut (an idle guest can), the migration is
 *   cancelled (QEMU resumes the VM) and started again with half the bandwidth.
 * The pause is measured from QEMU's own STOP and RESUME event timestamps.
 * Abort: migrate_cancel (but a background stream already under way is left to end: cancelling
 * one can hang QEMU 7.2), cont if this job paused the VM, block-commit the job's overlay back
 * into the frozen image (active commit) and delete it, delete every partial file and artefact.
 * Restore: the same command line + -S -incoming defer, the disk on a new overlay over a copy of
 * the snapshot's frozen image, migrate-incoming exec:cat FILE; the VM is left paused; resume = cont.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { describeError, VnsnapError } from '../proto/core/errors';
import type { QemuDriverSpec__Output } from '../proto/gen/vnsnap/v1/QemuDriverSpec';
import { silentLogger, type Logger } from '../proto/core/log';
import { PacketPort } from '../switch/port/fd-port';
import type { Port } from '../switch/port/port';
import { StreamPort } from '../switch/port/stream-port';
import type { CutReport, HypervisorDriver, PhaseSpan, RestoreImage, SnapshotJob, SnapshotModeName, SnapshotOptions, SnapshotProgress, VmHandle, VmImage, VmStartContext, VmStartSpec, VmStatus } from './driver';
import { probeAccel, qemuCmdline, qemuVersion, run, shQuote, tcgRamPadKib, vmFiles, type Accel, type NicArg, type NicMode, type VmFiles } from './qemu-cmdline';
import { QmpClient, type QmpEvent } from './qemu-qmp';
import { LocalDirStore, type ArtefactWriter, type SnapshotStore, type StoredArtefact } from '../proto/store/local-dir';

export interface QemuDriverOptions {
  /** Where instance directories go (default /run/vnsnap/qemu). */
  workDir?: string;
  /** Prefix of instance directories and TAP names (default "vnqm"). */
  prefix?: string;
  qemuBinary?: string;
  qemuImg?: string;
  /** 'auto' (default): probeAccel(). */
  accel?: 'auto' | Accel;
  /** How vNICs join the switch (default 'stream'); QemuDriverSpec.extra.nic overrides per VM. */
  nic?: NicMode;
  /** Pre-copy: ready once the first pass is done and at most this much is dirty (default 16 MiB). */
  readyBytes?: number;
  /** Pre-copy bandwidth before ready, bytes/s (default 1 GiB/s). */
  precopyBandwidth?: number;
  /**
   * How a pre-copy waits for the cut. 'pre-switchover' (default): QEMU converges with
   * downtime-limit = cutDowntimeMs and the VM waits paused in pre-switchover until cut() (the
   * pause includes that wait). 'bandwidth': downtime-limit 1 ms and max-bandwidth lowered to
   * holdBandwidth after the first pass, so the VM keeps running until cut() — but under TCG on
   * QEMU 7.2 such slow or long migrations produced images whose memory differs from the source
   * at the pause (restored guests crashed; docs/qemu.md), so it is off by default.
   */
  precopyHold?: 'pre-switchover' | 'bandwidth';
  /** Pre-copy bandwidth while waiting for the cut, bytes/s (default 64 KiB/s; see the module comment). */
  holdBandwidth?: number;
  /** downtime-limit at the cut (ms, default 100); raised ×4 every cutEscalateMs without a switchover. */
  cutDowntimeMs?: number;
  cutEscalateMs?: number;
  /** query-migrate period during pre-copy (default 100 ms). */
  progressMs?: number;
  /** QMP monitor must answer within this after spawn (default 15 s). */
  startTimeoutMs?: number;
  logger?: Logger;
}

const MiB = 1024 * 1024;

function nowUs(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface MigrationInfo {
  status?: string;
  ram?: { transferred?: number; remaining?: number; total?: number; 'dirty-sync-count'?: number; 'dirty-pages-rate'?: number; 'page-size'?: number };
  'total-time'?: number;
  downtime?: number;
  'error-desc'?: string;
}

/** One QEMU process. */
class QemuVm {
  status: VmStatus = 'paused';
  proc: ChildProcess | undefined;
  qmp: QmpClient | undefined;
  exited = false;
  private stderrTail = '';
  exitPromise: Promise<void> = Promise.resolve();
  job: QemuJob | undefined;
  /** Node name of the disk's current top (changes at every snapshot). */
  topNode = 'disk0';
  /** File of the current top. */
  topFile: string;
  taps: string[] = [];
  lastStop: QmpEvent | undefined;
  lastResume: QmpEvent | undefined;
  snapSerial = 0;

  constructor(
    readonly spec: VmStartSpec,
    readonly qspec: QemuDriverSpec__Output,
    readonly files: VmFiles,
    readonly ports: Port[],
    readonly log: Logger,
  ) {
    this.topFile = files.disk0;
  }

  get hasDisk(): boolean {
    return this.qspec.disk !== '';
  }

  /** Set by the driver from tcgRamPadKib when it builds the command line. */
  ramPadKib = 0;

  get memBytes(): number {
    return (this.qspec.memoryMib || 256) * MiB + this.ramPadKib * 1024;
  }

  stderr(): string {
    return this.stderrTail.trim();
  }

  async spawn(binary: string, args: string[], timeoutMs: number): Promise<void> {
    const p = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc = p;
    p.stderr?.setEncoding('utf8');
    p.stderr?.on('data', (d: string) => {
      this.stderrTail = (this.stderrTail + d).slice(-4000);
    });
    this.exitPromise = new Promise<void>((resolve) => {
      p.once('exit', (code, sig) => {
        this.exited = true;
        this.status = 'stopped';
        this.log.info({ code, sig }, 'QEMU exited');
        resolve();
      });
      p.once('error', (e) => {
        this.stderrTail += `\nspawn ${binary}: ${e.message}`;
        this.exited = true;
        this.status = 'stopped';
        resolve();
      });
    });
    try {
      this.qmp = await QmpClient.connect(this.files.qmpSock, { timeoutMs, isAlive: () => !this.exited, name: `${this.spec.id} (pid ${p.pid})` });
    } catch (e) {
      await sleep(50);
      throw new VnsnapError('ERR_DRIVER', `QEMU for ${this.spec.id} did not start: ${this.stderr() || describeError(e)}`, { cause: e });
    }
    this.qmp.on('event', (ev: QmpEvent) => {
      if (ev.event === 'STOP') {
        this.status = 'paused';
        this.lastStop = ev;
      } else if (ev.event === 'RESUME') {
        this.status = 'running';
        this.lastResume = ev;
      }
    });
  }

  q(): QmpClient {
    if (!this.qmp || this.exited) throw new VnsnapError('ERR_DRIVER', `QEMU for ${this.spec.id} is not running${this.stderr() ? `: ${this.stderr()}` : ''}`);
    return this.qmp;
  }

  async refreshStatus(): Promise<void> {
    const r = await this.q().execute<{ running: boolean; status: string }>('query-status');
    this.status = r.running ? 'running' : 'paused';
  }

  async kill(): Promise<void> {
    if (this.proc && !this.exited) {
      try {
        await this.qmp?.execute('quit', undefined, 2000);
      } catch {
        /* dying anyway */
      }
      const t = setTimeout(() => this.proc?.kill('SIGKILL'), 3000);
      await this.exitPromise;
      clearTimeout(t);
    }
    this.qmp?.close();
    this.status = 'stopped';
  }
}

type JobPhase = 'precopy' | 'cutting' | 'writing' | 'done' | 'aborted' | 'failed';

/** Capabilities this driver wants on (every other one the QEMU knows is set off). */
function capsFor(mode: SnapshotModeName): Set<string> {
  return mode === 'precopy' ? new Set(['events', 'pause-before-switchover']) : new Set(['events', 'background-snapshot']);
}

class QemuJob implements SnapshotJob {
  readonly ready: Promise<void>;
  private setReady!: () => void;
  private isReady = false;
  private phase: JobPhase = 'precopy';
  readonly memFile: string;
  /** Files the migration's `cat` creates once it has written its last byte (one per migrate). */
  private doneFiles: string[] = [];
  private overlay: { file: string; node: string; frozenNode: string; frozenFile: string } | undefined;
  /** The overlay made and attached (blockdev-add, no backing yet) before the cut, so the pause only links it in. */
  private prepared: { file: string; node: string } | undefined;
  private final: Promise<VmImage> | undefined;
  private committed: StoredArtefact[] = [];
  private writers: ArtefactWriter[] = [];
  private pausedByUs = false;
  private pollTimer: NodeJS.Timeout | undefined;
  private migrationStatus = 'none';
  private migrationDone: Promise<void> | undefined;
  private iteration = 0;
  private restarts = 0;
  private restarting: Promise<void> | undefined;
  private bandwidth: number;
  private onMigration: ((ev: QmpEvent) => void) | undefined;
  private preSwitchover: ((ev: QmpEvent) => void) | undefined;
  private preSwitchoverEv: QmpEvent | undefined;
  private migrationFailed: ((e: Error) => void) | undefined;
  private lastProgress: SnapshotProgress | undefined;
  /** Steps of the cut with their times (performance.now()), logged with 'cut done'. */
  private trace: [string, number][] = [];

  constructor(
    private readonly driver: QemuDriver,
    private readonly vmObj: QemuVm,
    private readonly opts: SnapshotOptions,
    private readonly o: Required<Omit<QemuDriverOptions, 'logger'>>,
  ) {
    this.ready = new Promise<void>((r) => (this.setReady = r));
    this.ready.catch(() => undefined);
    this.vmObj.snapSerial++;
    this.memFile = `${vmObj.files.dir}/mem-e${opts.epoch}-${vmObj.snapSerial}.img`;
    this.bandwidth = o.precopyBandwidth;
  }

  get vm(): string {
    return this.vmObj.spec.id;
  }

  get mode(): SnapshotModeName {
    return this.opts.mode;
  }

  private get q(): QmpClient {
    return this.vmObj.q();
  }

  private get log(): Logger {
    return this.vmObj.log;
  }

  /** Every migration capability explicitly (they persist for the life of the QEMU process). */
  private async setCapabilities(): Promise<void> {
    const want = capsFor(this.opts.mode);
    const known = await this.q.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities');
    const caps = known.map((c) => ({ capability: c.capability, state: want.has(c.capability) }));
    for (const w of want) if (!known.some((c) => c.capability === w)) throw new VnsnapError('ERR_DRIVER', `QEMU for ${this.vm} lacks the migration capability ${w} (QEMU 7.2 or later is needed)`);
    await this.q.execute('migrate-set-capabilities', { capabilities: caps });
  }

  private listen(): void {
    this.onMigration = (ev: QmpEvent) => {
      if (ev.event !== 'MIGRATION') return;
      const st = String(ev.data.status);
      this.migrationStatus = st;
      if (st === 'pre-switchover') {
        if (this.phase === 'cutting') {
          this.preSwitchoverEv = ev;
          this.preSwitchover?.(ev);
        }
        else if (this.phase === 'precopy' && this.o.precopyHold === 'pre-switchover') {
          // QEMU converged: the VM waits paused in pre-switchover for the cut (see the module comment).
          this.preSwitchoverEv = ev;
          this.isReady = true;
          this.setReady();
        } else if (this.phase === 'precopy' && !this.restarting) {
          this.restarting = this.restartAfterEarlySwitchover().finally(() => (this.restarting = undefined));
        }
      } else if (st === 'failed') {
        this.migrationFailed?.(new VnsnapError('ERR_DRIVER', `migration of ${this.vm} failed`));
      }
    };
    this.q.on('event', this.onMigration);
  }

  private unlisten(): void {
    if (this.onMigration) this.vmObj.qmp?.off('event', this.onMigration);
    this.onMigration = undefined;
  }

  /**
   * The migration URI: `cat` into the memory file, then a marker file. QEMU emits MIGRATION
   * completed before it closes the pipe, so `cat` may still hold the stream's tail (the device
   * state) when the event arrives: the image is complete only once the marker exists.
   */
  private migrateUri(): string {
    const done = `${this.memFile}.done${this.doneFiles.length}`;
    this.doneFiles.push(done);
    return `exec:cat > ${shQuote(this.memFile)} && : > ${shQuote(done)}`;
  }

  /** After MIGRATION completed: wait until the current migration's `cat` has exited. */
  private async streamWritten(): Promise<void> {
    const done = this.doneFiles[this.doneFiles.length - 1];
    if (done === undefined) return;
    const end = performance.now() + 60_000;
    while (!fs.existsSync(done)) {
      if (this.vmObj.exited && !fs.existsSync(done)) throw new VnsnapError('ERR_DRIVER', `QEMU VM ${this.vm} exited before its memory image was written`);
      if (performance.now() > end) throw new VnsnapError('ERR_TIMEOUT', `memory image of ${this.vm}: the writer did not finish within 60 s of the migration's end`);
      await sleep(5);
    }
  }

  private async removeStreamFiles(): Promise<void> {
    await fsp.rm(this.memFile, { force: true });
    for (const f of this.doneFiles) await fsp.rm(f, { force: true });
  }

  /** A promise for the end of the current migration: resolves on completed, rejects on failed/cancelled or QEMU's death. */
  private watchCompletion(): Promise<void> {
    const p = new Promise<void>((resolve, reject) => {
      this.migrationFailed = reject;
      this.q
        .waitEvent('MIGRATION', (d) => d.status === 'completed' || d.status === 'failed' || d.status === 'cancelled', 24 * 3600_000)
        .then(async (ev) => {
          if (ev.data.status === 'completed') resolve();
          else {
            let why = '';
            try {
              why = (await this.q.execute<MigrationInfo>('query-migrate'))['error-desc'] ?? '';
            } catch {
              /* QEMU gone */
            }
            reject(new VnsnapError(ev.data.status === 'cancelled' ? 'ERR_SNAPSHOT_ABORTED' : 'ERR_DRIVER', `migration of ${this.vm} ${String(ev.data.status)}${why ? `: ${why}` : ''}`));
          }
        }, reject);
    });
    p.catch(() => undefined);
    return p;
  }

  async begin(): Promise<void> {
    await this.setCapabilities();
    await this.prepareOverlay();
    this.listen();
    if (this.opts.mode === 'background') {
      await this.q.execute('migrate-set-parameters', { 'max-bandwidth': 8 * 1024 * MiB, 'downtime-limit': 300 });
      this.isReady = true;
      this.setReady();
      return;
    }
    await this.startPrecopy();
  }

  private async startPrecopy(): Promise<void> {
    const downtime = this.o.precopyHold === 'pre-switchover' ? this.o.cutDowntimeMs : 1;
    await this.q.execute('migrate-set-parameters', { 'max-bandwidth': Math.round(this.bandwidth), 'downtime-limit': downtime });
    this.migrationDone = this.watchCompletion();
    await this.q.execute('migrate', { uri: this.migrateUri() });
    this.iteration = 0;
    if (!this.pollTimer) {
      this.pollTimer = setInterval(() => void this.poll(), this.o.progressMs);
      this.pollTimer.unref();
    }
  }

  private async poll(): Promise<void> {
    if (this.phase !== 'precopy' && this.phase !== 'cutting') return;
    let info: MigrationInfo;
    try {
      info = await this.q.execute<MigrationInfo>('query-migrate', undefined, 5000);
    } catch {
      return;
    }
    const ram = info.ram;
    if (!ram || info.status !== 'active') return;
    const sync = ram['dirty-sync-count'] ?? 0;
    const remaining = ram.remaining ?? 0;
    const pageSize = ram['page-size'] ?? 4096;
    this.iteration = Math.max(1, sync);
    const firstPassDone = sync >= 2;
    if (this.phase === 'precopy' && this.o.precopyHold === 'bandwidth' && !this.isReady && firstPassDone && (remaining <= this.o.readyBytes || sync >= 30)) {
      this.isReady = true;
      // Keep QEMU iterating but unable to converge by itself: see the module comment.
      this.q.execute('migrate-set-parameters', { 'max-bandwidth': this.o.holdBandwidth }).catch(() => undefined);
      this.setReady();
    }
    const p: SnapshotProgress = {
      bytesDone: ram.transferred ?? 0,
      bytesRemaining: remaining,
      bytesTotal: ram.total ?? this.vmObj.memBytes,
      iteration: this.iteration,
      dirtyRateMibS: ((ram['dirty-pages-rate'] ?? 0) * pageSize) / MiB,
      ready: this.isReady,
    };
    this.lastProgress = p;
    if (this.phase === 'precopy') this.opts.onProgress?.(p);
  }

  /** QEMU converged and paused the VM before the cut: cancel (QEMU resumes it), start again slower. */
  private async restartAfterEarlySwitchover(): Promise<void> {
    this.restarts++;
    this.log.info({ restarts: this.restarts }, 'pre-copy converged before the cut; restarting it');
    try {
      const cancelled = this.migrationDone?.catch(() => undefined);
      await this.q.execute('migrate_cancel');
      await cancelled;
      if (this.vmObj.status !== 'running') await this.q.execute('cont').catch(() => undefined);
      if ((this.phase as JobPhase) !== 'precopy') return;
      await fsp.rm(this.memFile, { force: true });
      this.bandwidth = Math.max(8 * MiB, this.bandwidth / 2);
      this.isReady = false;
      await this.startPrecopy();
    } catch (e) {
      this.log.warn({ err: describeError(e) }, 'restarting the pre-copy failed');
    }
  }

  async cut(atPause: () => Promise<void>): Promise<CutReport> {
    if (this.phase !== 'precopy') throw new VnsnapError('ERR_STATE', `snapshot of ${this.vm}: cut() in phase ${this.phase}`);
    while (this.restarting) await this.restarting;
    if ((this.phase as JobPhase) !== 'precopy') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', `snapshot of ${this.vm} was aborted`);
    if (this.opts.mode === 'background') {
      if (this.vmObj.status !== 'running') throw new VnsnapError('ERR_DRIVER', `QEMU VM ${this.vm} is ${this.vmObj.status}, cannot cut`);
      this.phase = 'cutting';
      return this.cutBackground(atPause);
    }
    // From here a pre-switchover (even one QEMU reached a moment ago) is the cut, not a restart.
    this.phase = 'cutting';
    return this.cutPrecopy(atPause);
  }

  private mark(step: string): void {
    this.trace.push([step, performance.now()]);
  }

  private async cutBackground(atPause: () => Promise<void>): Promise<CutReport> {
    const q = this.q;
    this.mark('start');
    const stopEv = q.waitEvent('STOP', undefined, 10_000);
    try {
      await q.execute('stop');
    } catch (e) {
      this.phase = 'failed';
      throw e;
    }
    const stop = await stopEv.catch(() => undefined);
    this.mark('stopped');
    this.pausedByUs = true;
    this.vmObj.status = 'paused';
    const cutUnixUs = stop?.timestampUs || nowUs();
    await this.hook(atPause);
    this.mark('hook');
    let resume: QmpEvent | undefined;
    try {
      await this.snapshotDisk();
      this.mark('disk');
      this.migrationDone = this.watchCompletion();
      const resumeEv = q.waitEvent('RESUME', undefined, 30_000);
      await q.execute('migrate', { uri: this.migrateUri() });
      this.mark('migrate');
      resume = await resumeEv;
      this.mark('resumed');
      this.pausedByUs = false;
    } catch (e) {
      this.phase = 'failed';
      await this.resumeIfOurs();
      await this.undoOverlay();
      await this.dropPrepared();
      throw e;
    }
    return this.finishCut(cutUnixUs, resume, []);
  }

  private async cutPrecopy(atPause: () => Promise<void>): Promise<CutReport> {
    const q = this.q;
    let stopEv: QmpEvent | undefined;
    this.mark('start');
    const info = await q.execute<MigrationInfo>('query-migrate').catch(() => ({}) as MigrationInfo);
    if (info.status !== 'active' && info.status !== 'pre-switchover' && !this.preSwitchoverEv) {
      this.phase = 'failed';
      throw new VnsnapError('ERR_DRIVER', `QEMU VM ${this.vm}: the pre-copy is ${info.status ?? 'unknown'}, cannot cut`);
    }
    if (!this.preSwitchoverEv && info.status !== 'pre-switchover') {
      const paused = new Promise<QmpEvent>((resolve) => {
        this.preSwitchover = resolve;
        if (this.preSwitchoverEv) resolve(this.preSwitchoverEv);
      });
      const failed = this.migrationDone ?? Promise.resolve();
      let downtime = this.o.cutDowntimeMs;
      try {
        await q.execute('migrate-set-parameters', { 'max-bandwidth': 8 * 1024 * MiB, 'downtime-limit': downtime });
        for (;;) {
          const r = await Promise.race([paused, failed.then(() => undefined), sleep(this.o.cutEscalateMs).then(() => null)]);
          if (r === undefined) throw new VnsnapError('ERR_DRIVER', `migration of ${this.vm} ended before the switchover`);
          if (r !== null) break;
          downtime = Math.min(60_000, downtime * 4);
          this.log.info({ downtime }, 'no switchover yet: raising downtime-limit');
          await q.execute('migrate-set-parameters', { 'downtime-limit': downtime });
        }
      } catch (e) {
        this.phase = 'failed';
        throw e;
      }
      stopEv = this.vmObj.lastStop;
    } else stopEv = this.vmObj.lastStop;
    this.mark('paused');
    this.preSwitchover = undefined;
    this.pausedByUs = true;
    this.vmObj.status = 'paused';
    const cutUnixUs = stopEv?.timestampUs || nowUs();
    await this.hook(atPause);
    this.mark('hook');
    const copyStart = nowUs();
    let resume: QmpEvent | undefined;
    try {
      await this.snapshotDisk();
      this.mark('disk');
      const done = this.migrationDone as Promise<void>;
      await q.execute('migrate-continue', { state: 'pre-switchover' });
      await done;
      this.mark('completed');
      const resumeEv = q.waitEvent('RESUME', undefined, 10_000);
      await this.contAfterMigration();
      resume = await resumeEv;
      this.mark('resumed');
      this.pausedByUs = false;
    } catch (e) {
      this.phase = 'failed';
      await this.cancelMigration();
      await this.resumeIfOurs();
      await this.undoOverlay();
      await this.dropPrepared();
      throw e;
    }
    const copyEnd = resume.timestampUs || nowUs();
    return this.finishCut(cutUnixUs, resume, [{ phase: 'PHASE_COPY', startUnixUs: copyStart, endUnixUs: copyEnd }]);
  }

  /**
   * `cont` right after MIGRATION completed: QEMU emits the event a moment before it leaves the
   * finish-migrate run state, and refuses cont ("Migration is not finalized yet") until then.
   */
  private async contAfterMigration(): Promise<void> {
    const end = performance.now() + 5000;
    for (;;) {
      try {
        await this.q.execute('cont');
        return;
      } catch (e) {
        if (!/not finalized/.test((e as Error).message) || performance.now() > end) throw e;
        await new Promise((r) => setImmediate(r));
      }
    }
  }

  /** atPause; if it throws, resume the VM and reject (no disk snapshot was taken). */
  private async hook(atPause: () => Promise<void>): Promise<void> {
    try {
      await atPause();
    } catch (e) {
      this.phase = 'failed';
      if (this.opts.mode === 'precopy') await this.cancelMigration();
      await this.resumeIfOurs();
      await this.dropPrepared();
      throw e;
    }
  }

  private finishCut(cutUnixUs: number, resume: QmpEvent, extra: PhaseSpan[]): CutReport {
    const resumeUnixUs = Math.max(cutUnixUs, resume.timestampUs || nowUs());
    this.vmObj.status = 'running';
    this.phase = 'writing';
    this.final = this.finish();
    this.final.catch(() => undefined);
    const pauseMs = (resumeUnixUs - cutUnixUs) / 1000;
    const t0 = this.trace[0]?.[1] ?? 0;
    const steps = this.trace.map(([k, t]) => `${k}+${(t - t0).toFixed(1)}`).join(' ');
    this.log.info({ mode: this.opts.mode, pauseMs: Number(pauseMs.toFixed(3)), restarts: this.restarts, steps }, 'cut done');
    return { pauseMs, cutUnixUs, resumeUnixUs, phases: [{ phase: 'PHASE_PAUSE', startUnixUs: cutUnixUs, endUnixUs: resumeUnixUs }, ...extra] };
  }

  /**
   * Before the cut: create the next overlay (qemu-img, its backing named but not opened) and
   * attach it as a node without a backing, so the cut's disk step is one graph change
   * (blockdev-snapshot) instead of creating and formatting a file while the VM is paused.
   */
  private async prepareOverlay(): Promise<void> {
    const vm = this.vmObj;
    if (!vm.hasDisk || this.prepared) return;
    const node = `d${this.opts.epoch}s${vm.snapSerial}`;
    const file = `${vm.files.dir}/disk-e${this.opts.epoch}-${vm.snapSerial}.qcow2`;
    const info = JSON.parse(await this.driver.qemuImg(['info', '-U', '--output=json', vm.topFile])) as { 'virtual-size'?: number };
    if (!info['virtual-size']) throw new VnsnapError('ERR_DRIVER', `QEMU VM ${this.vm}: qemu-img info gave no virtual size for ${vm.topFile}`);
    await this.driver.qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-b', path.resolve(vm.topFile), '-F', 'qcow2', file, String(info['virtual-size'])]);
    try {
      await this.q.execute('blockdev-add', { driver: 'qcow2', 'node-name': node, file: { driver: 'file', filename: file }, backing: null });
    } catch (e) {
      await fsp.rm(file, { force: true });
      throw e;
    }
    this.prepared = { file, node };
  }

  /** The prepared overlay was not used (abort, or a failure before the disk step): detach and delete it. */
  private async dropPrepared(): Promise<void> {
    const pr = this.prepared;
    if (!pr) return;
    this.prepared = undefined;
    if (!this.vmObj.exited) await this.q.execute('blockdev-del', { 'node-name': pr.node }).catch((e) => this.log.warn({ err: describeError(e), node: pr.node }, 'could not detach the unused overlay'));
    await fsp.rm(pr.file, { force: true });
  }

  /** At the cut: the prepared overlay goes on top of the current top, which is frozen from now on. */
  private async snapshotDisk(): Promise<void> {
    const vm = this.vmObj;
    const pr = this.prepared;
    if (!vm.hasDisk || !pr) return;
    const top = { node: vm.topNode, file: vm.topFile };
    await this.q.execute('blockdev-snapshot', { node: top.node, overlay: pr.node });
    this.prepared = undefined;
    this.overlay = { file: pr.file, node: pr.node, frozenNode: top.node, frozenFile: top.file };
    vm.topNode = pr.node;
    vm.topFile = pr.file;
  }

  /** Abort after the disk step of the cut: merge the job's overlay back (active commit) and delete it. */
  private async undoOverlay(): Promise<void> {
    const ov = this.overlay;
    const vm = this.vmObj;
    if (!ov || vm.exited) return;
    this.overlay = undefined;
    try {
      const jobId = `vnqm-commit-${ov.node}`;
      const readyEv = this.q.waitEvent('BLOCK_JOB_READY', (d) => d.device === jobId, 60_000);
      await this.q.execute('block-commit', { 'job-id': jobId, device: ov.node, 'auto-dismiss': true });
      await readyEv;
      const doneEv = this.q.waitEvent('BLOCK_JOB_COMPLETED', (d) => d.device === jobId, 60_000);
      await this.q.execute('job-complete', { id: jobId });
      const done = await doneEv;
      if (done.data.error) throw new Error(String(done.data.error));
      vm.topNode = ov.frozenNode;
      vm.topFile = ov.frozenFile;
      await fsp.rm(ov.file, { force: true });
    } catch (e) {
      this.log.warn({ err: describeError(e), overlay: ov.file }, 'could not merge the snapshot overlay back; it stays in the chain');
    }
  }

  private async cancelMigration(): Promise<void> {
    if (this.vmObj.exited) return;
    const st = this.migrationStatus;
    if (st === 'completed' || st === 'failed' || st === 'cancelled' || st === 'none') return;
    const ended = this.migrationDone?.catch(() => undefined);
    await this.q.execute('migrate_cancel').catch(() => undefined);
    await Promise.race([ended, sleep(5000)]);
  }

  private async resumeIfOurs(): Promise<void> {
    if (!this.pausedByUs) return;
    this.pausedByUs = false;
    if (this.vmObj.exited) return;
    await this.vmObj.refreshStatus().catch(() => undefined);
    if (this.vmObj.status !== 'running') await this.q.execute('cont');
    await this.vmObj.refreshStatus().catch(() => undefined);
  }

  /** After the cut: wait for the stream to complete, then put the memory and disk images in the store. */
  private async finish(): Promise<VmImage> {
    const name = this.vmObj.spec.name;
    try {
      await this.migrationDone;
      this.unlisten();
      await this.streamWritten();
      if ((this.phase as JobPhase) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
      const memory = await this.copyIn(this.memFile, `${this.opts.prefix}${name}.mem`);
      await this.removeStreamFiles();
      let disk: StoredArtefact | undefined;
      if (this.overlay) {
        // A standalone image over the spec's base: the frozen top with every layer between it and the base merged in.
        const tmp = `${this.vmObj.files.dir}/frozen-e${this.opts.epoch}-${this.vmObj.snapSerial}.qcow2`;
        await fsp.copyFile(this.overlay.frozenFile, tmp);
        try {
          await this.driver.qemuImg(['rebase', '-U', '-f', 'qcow2', '-b', path.resolve(this.vmObj.qspec.disk), '-F', 'qcow2', tmp]);
          if ((this.phase as JobPhase) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
          disk = await this.copyIn(tmp, `${this.opts.prefix}${name}.disk.qcow2`);
        } finally {
          await fsp.rm(tmp, { force: true });
        }
      }
      if ((this.phase as JobPhase) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
      this.phase = 'done';
      this.vmObj.job = undefined;
      return disk ? { memory, disk } : { memory };
    } catch (e) {
      if ((this.phase as JobPhase) !== 'aborted') this.phase = 'failed';
      for (const w of this.writers) await w.abort();
      await this.removeStreamFiles();
      throw e;
    }
  }

  private async copyIn(file: string, rel: string): Promise<StoredArtefact> {
    const w = await this.opts.store.create(rel);
    this.writers.push(w);
    const buf = Buffer.allocUnsafe(4 * MiB);
    const h = await fsp.open(file, 'r');
    try {
      for (;;) {
        if ((this.phase as JobPhase) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
        const { bytesRead } = await h.read(buf, 0, buf.length, null);
        if (bytesRead === 0) break;
        await w.write(Buffer.from(buf.subarray(0, bytesRead)));
      }
    } finally {
      await h.close();
    }
    const a = await w.commit();
    this.committed.push(a);
    return a;
  }

  durable(): Promise<VmImage> {
    if (this.final === undefined) return Promise.reject(new VnsnapError('ERR_STATE', `snapshot of ${this.vm}: durable() before the cut`));
    return this.final;
  }

  async abort(): Promise<void> {
    if (this.phase === 'aborted') return;
    const was = this.phase;
    this.phase = 'aborted';
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = undefined;
    this.setReady();
    this.preSwitchover = undefined;
    await this.restarting;
    const heldByQemu = this.migrationStatus === 'pre-switchover';
    if (was === 'writing' && this.opts.mode === 'background') {
      // Never migrate_cancel a background snapshot: on QEMU 7.2 under TCG it hung QEMU's main
      // loop in about 1 run of 3 (no QMP reply, VM lost; docs/qemu.md). The VM is running and
      // the stream is bounded by its RAM, so let it end and discard it.
      this.log.debug({ migration: this.migrationStatus }, 'abort: letting the background stream end');
      await this.migrationDone?.catch(() => undefined);
    } else {
      this.log.debug({ was, migration: this.migrationStatus }, 'abort: cancelling the migration');
      await this.cancelMigration();
    }
    if (heldByQemu) this.pausedByUs = true;
    await this.resumeIfOurs().catch((e) => this.log.warn({ err: describeError(e) }, 'resume after abort failed'));
    this.log.debug({ migration: this.migrationStatus }, 'abort: waiting for the writer');
    if (was === 'writing') await this.final?.catch(() => undefined);
    this.log.debug('abort: merging the overlay back');
    await this.undoOverlay();
    await this.dropPrepared();
    this.unlisten();
    for (const w of this.writers) await w.abort();
    for (const a of this.committed) await this.opts.store.delete(a.path);
    await this.removeStreamFiles();
    if (this.vmObj.job === this) this.vmObj.job = undefined;
  }

  stopPolling(): void {
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = undefined;
  }

  get progress(): SnapshotProgress | undefined {
    return this.lastProgress;
  }

  get restartCount(): number {
    return this.restarts;
  }
}

/** What inspect() returns. */
export interface QemuVmInfo {
  id: string;
  pid: number | undefined;
  status: VmStatus;
  dir: string;
  qmpSock: string;
  consoleLog: string;
  channelSock: string | undefined;
  accel: Accel;
  nic: NicMode;
  topNode: string;
  topFile: string;
  taps: string[];
}

export class QemuDriver implements HypervisorDriver {
  readonly kind = 'qemu' as const;
  private readonly vms = new Map<string, QemuVm>();
  private readonly o: Required<Omit<QemuDriverOptions, 'logger'>>;
  private readonly log: Logger;
  readonly accel: Accel;
  readonly accelReason: string;
  private serial = 0;
  private padLogged = false;

  constructor(opts: QemuDriverOptions = {}) {
    this.o = {
      workDir: opts.workDir ?? '/run/vnsnap/qemu',
      prefix: opts.prefix ?? 'vnqm',
      qemuBinary: opts.qemuBinary ?? 'qemu-system-x86_64',
      qemuImg: opts.qemuImg ?? 'qemu-img',
      accel: opts.accel ?? 'auto',
      nic: opts.nic ?? 'stream',
      readyBytes: opts.readyBytes ?? 16 * MiB,
      precopyHold: opts.precopyHold ?? 'pre-switchover',
      precopyBandwidth: opts.precopyBandwidth ?? 1024 * MiB,
      holdBandwidth: opts.holdBandwidth ?? 64 * 1024,
      cutDowntimeMs: opts.cutDowntimeMs ?? 100,
      cutEscalateMs: opts.cutEscalateMs ?? 1500,
      progressMs: opts.progressMs ?? 100,
      startTimeoutMs: opts.startTimeoutMs ?? 15_000,
    };
    this.log = opts.logger ?? silentLogger();
    if (this.o.accel === 'auto') {
      const c = probeAccel();
      this.accel = c.accel;
      this.accelReason = c.reason;
    } else {
      this.accel = this.o.accel;
      this.accelReason = 'configured';
    }
    this.log.info({ accel: this.accel, reason: this.accelReason }, 'QEMU accelerator');
  }

  async qemuImg(args: string[]): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const p = spawn(this.o.qemuImg, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (err += d.toString()));
      p.on('error', (e) => reject(new VnsnapError('ERR_DRIVER', `qemu-img: ${e.message}`)));
      // 'close', not 'exit': 'exit' can come before the last of stdout was read (seen under load:
      // `qemu-img info --output=json` parsed as an empty string).
      p.on('close', (code) => (code === 0 ? resolve(out) : reject(new VnsnapError('ERR_DRIVER', `qemu-img ${args.join(' ')}: ${err.trim() || `exit ${code}`}`))));
    });
  }

  private qspecOf(spec: VmStartSpec): QemuDriverSpec__Output {
    const q = spec.driver.qemu;
    if (!q) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: the qemu driver needs a qemu driver spec`);
    if (!q.kernel && !q.disk) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: the qemu spec needs a kernel or a disk`);
    return { memoryMib: q.memoryMib ?? 0, cpus: q.cpus ?? 0, kernel: q.kernel ?? '', initrd: q.initrd ?? '', append: q.append ?? '', disk: q.disk ?? '', extra: q.extra ?? {} };
  }

  private accelFor(q: QemuDriverSpec__Output): Accel {
    const a = q.extra.accel;
    if (a === 'kvm' || a === 'tcg') return a;
    return this.accel;
  }

  private nicFor(q: QemuDriverSpec__Output): NicMode {
    const n = q.extra.nic;
    if (n === 'stream' || n === 'tap') return n;
    if (n !== undefined) throw new VnsnapError('ERR_INVALID_ARGUMENT', `qemu extra.nic must be stream or tap, got "${n}"`);
    return this.o.nic;
  }

  /** Make the instance directory, the ports, the NIC arguments; a failure undoes everything. */
  private async prepare(spec: VmStartSpec, ctx: VmStartContext): Promise<{ vm: QemuVm; nics: NicArg[] }> {
    const qspec = this.qspecOf(spec);
    const existing = this.vms.get(spec.id);
    if (existing && existing.status !== 'stopped') throw new VnsnapError('ERR_ALREADY_EXISTS', `QEMU VM ${spec.id} is already ${existing.status}`);
    if (ctx.portNames.length !== spec.macs.length) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: ${spec.macs.length} MACs but ${ctx.portNames.length} port names`);
    const safe = spec.id.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 40);
    const dir = path.join(this.o.workDir, `${this.o.prefix}-${safe}-${process.pid}-${++this.serial}`);
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const files = vmFiles(dir);
    if (Buffer.byteLength(files.netSock(9)) > 100) throw new VnsnapError('ERR_CONFIG', `QEMU work directory ${this.o.workDir} is too long for unix socket paths`);
    const mode = this.nicFor(qspec);
    const ports: Port[] = [];
    const nics: NicArg[] = [];
    const vm = new QemuVm(spec, qspec, files, ports, ctx.log.child({ driver: 'qemu' }));
    try {
      const tag = createHash('sha256').update(dir).digest('hex').slice(0, 8);
      for (let i = 0; i < spec.macs.length; i++) {
        const mac = spec.macs[i] as string;
        const name = ctx.portNames[i] as string;
        if (mode === 'stream') {
          const p = new StreamPort(name, files.netSock(i));
          await p.listen();
          ports.push(p);
          nics.push({ mode, mac, target: files.netSock(i) });
        } else {
          const tap = `${this.o.prefix}${tag}n${i}`.slice(0, 15);
          run('ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap']);
          vm.taps.push(tap);
          run('ip', ['link', 'set', tap, 'up']);
          ports.push(new PacketPort(name, tap));
          nics.push({ mode, mac, target: tap });
        }
      }
    } catch (e) {
      await this.cleanup(vm);
      throw e;
    }
    return { vm, nics };
  }

  private async cleanup(vm: QemuVm): Promise<void> {
    await vm.kill();
    for (const p of vm.ports) {
      try {
        p.close();
      } catch {
        /* closed */
      }
    }
    for (const t of vm.taps) {
      try {
        run('ip', ['link', 'del', t]);
      } catch {
        /* gone */
      }
    }
    vm.taps = [];
    // Retries: a writer of the directory (a memory stream's cat) may still be exiting.
    await fsp.rm(vm.files.dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  }

  private args(vm: QemuVm, nics: NicArg[], incoming: boolean): string[] {
    const accel = this.accelFor(vm.qspec);
    vm.ramPadKib = tcgRamPadKib(accel, qemuVersion(this.o.qemuBinary));
    if (vm.ramPadKib && !this.padLogged) {
      this.padLogged = true;
      this.log.info({ padKib: vm.ramPadKib }, 'TCG on QEMU < 9.0: guest RAM padded so pre-copy dirty tracking is exact (docs/qemu.md)');
    }
    return qemuCmdline({ spec: vm.qspec, files: vm.files, accel, nics, disk: vm.hasDisk, incoming, ramPadKib: vm.ramPadKib });
  }

  async start(spec: VmStartSpec, ctx: VmStartContext): Promise<VmHandle> {
    const { vm, nics } = await this.prepare(spec, ctx);
    try {
      if (vm.hasDisk) await this.qemuImg(['create', '-q', '-f', 'qcow2', '-b', path.resolve(vm.qspec.disk), '-F', 'qcow2', vm.files.disk0]);
      await vm.spawn(this.o.qemuBinary, this.args(vm, nics, false), this.o.startTimeoutMs);
      await vm.refreshStatus();
      if (vm.status !== 'running') await vm.q().execute('cont');
      await vm.refreshStatus();
    } catch (e) {
      await this.cleanup(vm);
      throw e;
    }
    this.vms.set(spec.id, vm);
    vm.log.info({ pid: vm.proc?.pid, dir: vm.files.dir, accel: this.accelFor(vm.qspec) }, 'QEMU VM started');
    return { name: spec.name, ports: vm.ports };
  }

  async stop(id: string): Promise<void> {
    const vm = this.vms.get(id);
    if (!vm) return;
    this.vms.delete(id);
    await vm.job?.abort().catch(() => undefined);
    await this.cleanup(vm);
  }

  async pause(id: string): Promise<void> {
    const vm = this.get(id);
    await vm.q().execute('stop');
    await vm.refreshStatus();
  }

  async resume(id: string): Promise<void> {
    const vm = this.get(id);
    await vm.q().execute('cont');
    await vm.refreshStatus();
  }

  status(id: string): VmStatus {
    const vm = this.vms.get(id);
    if (!vm || vm.exited) return 'stopped';
    return vm.status;
  }

  async snapshot(id: string, opts: SnapshotOptions): Promise<SnapshotJob> {
    const vm = this.get(id);
    await vm.refreshStatus();
    if (vm.status !== 'running') throw new VnsnapError('ERR_STATE', `QEMU VM ${id} is ${vm.status}; a snapshot needs it running`);
    if (vm.job) throw new VnsnapError('ERR_CUT_IN_PROGRESS', `QEMU VM ${id} already has a snapshot in progress`);
    const job = new QemuJob(this, vm, opts, this.o);
    vm.job = job;
    try {
      await job.begin();
    } catch (e) {
      await job.abort().catch(() => undefined);
      throw e;
    }
    return job;
  }

  async restore(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<VmHandle> {
    const { vm, nics } = await this.prepare(spec, ctx);
    try {
      // Memory: read in place from a local store, else copied out first.
      let memPath: string;
      if (store instanceof LocalDirStore) memPath = store.resolve(image.memory.path);
      else {
        memPath = `${vm.files.dir}/restore.mem`;
        await fsp.writeFile(memPath, await store.get(image.memory.path));
      }
      if (vm.hasDisk) {
        if (!image.disk) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${spec.name} has a disk but the snapshot has no disk image`);
        // A private copy of the frozen image (the artefact may be deleted while the VM runs), then a new overlay over it.
        const frozen = `${vm.files.dir}/frozen.qcow2`;
        if (store instanceof LocalDirStore) await fsp.copyFile(store.resolve(image.disk.path), frozen);
        else await fsp.writeFile(frozen, await store.get(image.disk.path));
        await this.qemuImg(['create', '-q', '-f', 'qcow2', '-b', frozen, '-F', 'qcow2', vm.files.disk0]);
      }
      await vm.spawn(this.o.qemuBinary, this.args(vm, nics, true), this.o.startTimeoutMs);
      const q = vm.q();
      const known = await q.execute<{ capability: string }[]>('query-migrate-capabilities');
      await q.execute('migrate-set-capabilities', { capabilities: known.map((c) => ({ capability: c.capability, state: c.capability === 'events' })) });
      const done = q.waitEvent('MIGRATION', (d) => d.status === 'completed' || d.status === 'failed', 120_000);
      await q.execute('migrate-incoming', { uri: `exec:cat ${shQuote(memPath)}` });
      const ev = await done;
      if (ev.data.status !== 'completed') {
        const info = await q.execute<MigrationInfo>('query-migrate').catch(() => ({}) as MigrationInfo);
        throw new VnsnapError('ERR_DRIVER', `loading ${image.memory.path} into ${spec.id} failed: ${info['error-desc'] ?? ''} ${vm.stderr()}`.trim());
      }
      if (memPath === `${vm.files.dir}/restore.mem`) await fsp.rm(memPath, { force: true });
      await vm.refreshStatus();
      if (vm.status === 'running') await q.execute('stop');
      await vm.refreshStatus();
    } catch (e) {
      await this.cleanup(vm);
      throw e;
    }
    this.vms.set(spec.id, vm);
    vm.log.info({ pid: vm.proc?.pid, dir: vm.files.dir, memory: image.memory.path }, 'QEMU VM restored (paused)');
    return { name: spec.name, ports: vm.ports };
  }

  inspect(id: string): QemuVmInfo | undefined {
    const vm = this.vms.get(id);
    if (!vm) return undefined;
    return {
      id,
      pid: vm.proc?.pid,
      status: this.status(id),
      dir: vm.files.dir,
      qmpSock: vm.files.qmpSock,
      consoleLog: vm.files.consoleLog,
      channelSock: vm.qspec.extra.channel ? vm.files.channelSock : undefined,
      accel: this.accelFor(vm.qspec),
      nic: this.nicFor(vm.qspec),
      topNode: vm.topNode,
      topFile: vm.topFile,
      taps: [...vm.taps],
    };
  }

  /** A QMP command on a VM's monitor (tests and debugging: the driver holds the only connection). */
  execute<T = unknown>(id: string, cmd: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    return this.get(id).q().execute<T>(cmd, args, timeoutMs);
  }

  /**
   * A SHA-256 of the VM's guest RAM (pmemsave of [0, memory_mib)) and vCPU registers: stable
   * while the VM is paused, equal after a restore to its value at the snapshot's pause instant.
   */
  async fingerprint(id: string): Promise<string> {
    const vm = this.get(id);
    const file = `${vm.files.dir}/fp-${randomBytes(4).toString('hex')}.bin`;
    try {
      await this.pmemsave(id, file);
      const h = createHash('sha256');
      await new Promise<void>((resolve, reject) => {
        fs.createReadStream(file)
          .on('data', (c) => h.update(c))
          .on('end', () => resolve())
          .on('error', reject);
      });
      return h.digest('hex');
    } finally {
      await fsp.rm(file, { force: true });
    }
  }

  /** Write the guest's RAM [0, memory_mib) to a file (QMP pmemsave; diagnostics and fingerprint). */
  async pmemsave(id: string, file: string): Promise<void> {
    const vm = this.get(id);
    await vm.q().execute('pmemsave', { val: 0, size: vm.memBytes, filename: file }, 60_000);
  }

  async close(): Promise<void> {
    await Promise.all([...this.vms.keys()].map((id) => this.stop(id)));
  }

  private get(id: string): QemuVm {
    const vm = this.vms.get(id);
    if (!vm || vm.exited) throw new VnsnapError('ERR_NOT_FOUND', `no QEMU VM ${id}${vm?.stderr() ? ` (QEMU exited: ${vm.stderr()})` : ''}`);
    return vm;
  }
}
