/**
 * One QEMU process (QemuVm) and what the QEMU driver's parts share: its options, the QMP
 * reply of query-migrate, and qemu-img through the drivers' one async runner.
 *
 * Instance directory (driver option workDir, one directory per VM instance, on tmpfs; keep it
 * short: unix socket paths are limited to 107 bytes): qmp.sock, console.log, qemu.stderr,
 * net<i>.sock (stream NICs), channel.sock (extra.channel), mig<n>.sock (a snapshot's migration
 * stream, QEMU its client), inc.sock (a restore's incoming stream, QEMU its server). Removed when
 * the VM stops.
 *
 * Disk directory (driver option disksDir, `<stateDir>/disks/<vne>_<vm>/`, persistent storage;
 * ../disk-dir.ts): the VM's writable qcow2 chain: disk0.qcow2 (the overlay over the spec's base
 * image), disk-e<k>-<n>.qcow2 (the overlay made at the cut of snapshot k; the previous top is
 * frozen), layer-<N>.qcow2 (a restore's copy of the snapshot's disk layers, rebuilt as the chain
 * under disk0: disk-chain.ts), frozen.qcow2 (the same for a snapshot written before layers: its
 * one standalone image), kept.json (the top to
 * boot from, written when a stop keeps the disk). It outlives the instance: kept by a stop,
 * deleted only when the coordinator says so.
 *
 * QemuVm guarantees: `status` follows QEMU's own STOP and RESUME events (whose timestamps
 * measure the pause); `exited` is set when the process is gone, and q() then throws ERR_DRIVER
 * with the tail of QEMU's stderr; kill() asks QMP `quit` (QEMU flushes and closes its images),
 * then SIGKILL after 3 s (only while the pid still has the recorded start time: a reused pid is
 * never signalled), and says whether it had to kill.
 *
 * QEMU outlives the agent (docs/agent-restart.md): it is spawned detached (setsid: its own
 * session and process group, so no signal to the agent's group or terminal reaches it), with no
 * pipe to the agent (stdin/stdout /dev/null, stderr appended to qemu.stderr in its directory, the
 * console to console.log), and, where systemd is PID 1, inside a transient scope of its own
 * (`systemd-run --scope`, which execs QEMU under the same pid) so stopping the agent's unit does
 * not kill it. A later agent re-opens it with attachProcess(); release() lets it go unharmed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { describeError, VnsnapError } from '../../../proto/core/errors';
import type { QemuDriverSpec__Output } from '../../../proto/gen/vnsnap/v1/QemuDriverSpec';
import type { Logger } from '../../../proto/core/log';
import type { Port } from '../../../switch/port/port';
import type { SnapshotJob, VmStartSpec, VmStatus } from '../driver';
import { exec } from '../exec';
import { isSameProcess, processStartTime, type DiskChainRecord, type ProcessIdentity } from '../../vm-state';
import type { Accel, NicMode, VmFiles } from './cmdline';
import { QmpClient, type QmpEvent } from './qmp';
import type { RamWriteTracker } from './ram-track';
import type { SnapshotStore } from '../../../proto/store/snapshot-store';

export interface QemuDriverOptions {
  /** Where instance directories go (default /run/vnsnap/qemu). */
  workDir?: string;
  /**
   * Where the VMs' disk chains go, one directory per VM (../disk-dir.ts). The agent passes
   * `<stateDir>/disks`. Default: `<workDir>-disks` (beside it) when workDir is given, else
   * /var/lib/vnsnap/disks.
   */
  disksDir?: string;
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
  /** Pre-copy bandwidth before ready, bytes/s (default 1 GiB/s; the first pass goes at most 64 MiB/s: FIRST_PASS_CEILING in precopy-hold.ts). */
  precopyBandwidth?: number;
  /**
   * How a pre-copy waits for the cut. 'bandwidth' (default): downtime-limit 1 ms and max-bandwidth
   * lowered to holdBandwidth after the first pass, so the VM keeps running until cut() and its
   * pause is its own final pass (exact under TCG since guest RAM is padded: docs/qemu.md).
   * 'pre-switchover': QEMU converges with downtime-limit = cutDowntimeMs and the VM waits paused
   * in pre-switchover until cut() (the pause includes that wait).
   */
  precopyHold?: 'pre-switchover' | 'bandwidth';
  /** Pre-copy bandwidth while waiting for the cut, bytes/s, or 'paced' (default: VNSNAP_QEMU_HOLD when set, else 'paced'; precopy-hold.ts explains the choice, FAST_HOLD_BANDWIDTH and PacedHold). */
  holdBandwidth?: number | 'paced';
  /**
   * downtime-limit at the cut (ms; default 30 with the bandwidth hold, where a lower limit only
   * costs iterations while the VM runs, 100 with the pre-switchover hold); raised ×4 every
   * cutEscalateMs without a switchover.
   */
  cutDowntimeMs?: number;
  cutEscalateMs?: number;
  /**
   * Bytes of the migration stream that may wait for the store before the socket is paused and
   * QEMU held back (default 32 MiB; docs/qemu.md "How the stream reaches the store").
   */
  streamBufferBytes?: number;
  /** Page bytes of a background snapshot held back to write its memory image in address order (default 128 MiB; page-order.ts). */
  pageOrderHoldBytes?: number;
  /** query-migrate period during pre-copy (default 100 ms). */
  progressMs?: number;
  /** QMP monitor must answer within this after spawn (default 15 s). */
  startTimeoutMs?: number;
  /** Directories the VMs' kernel, initrd and disk must be under (default DEFAULT_IMAGE_ROOTS; ../image-root.ts). */
  imageRoots?: readonly string[];
  /**
   * Run each QEMU in a transient systemd scope of its own (`systemd-run --scope`), so that
   * stopping the agent's unit does not kill it: 'auto' (default) when systemd is PID 1
   * (/run/systemd/system exists), 'always', or 'never' (setsid alone).
   */
  scope?: 'auto' | 'always' | 'never';
  logger?: Logger;
}

/** The options with their defaults (the logger apart). */
export type QemuOptions = Required<Omit<QemuDriverOptions, 'logger'>>;

export const MiB = 1024 * 1024;

/** `qemu-img ARGS`: its stdout, or an ExecError (ERR_DRIVER) with its stderr. */
export function qemuImg(binary: string, args: string[]): Promise<string> {
  return exec(binary, args);
}

export interface MigrationInfo {
  status?: string;
  ram?: { transferred?: number; remaining?: number; total?: number; 'dirty-sync-count'?: number; 'dirty-pages-rate'?: number; 'page-size'?: number };
  'total-time'?: number;
  downtime?: number;
  'error-desc'?: string;
}

/** One QEMU process. */
export class QemuVm {
  status: VmStatus = 'paused';
  /** The process when this agent started it (an adopted VM has none: see pid). */
  proc: ChildProcess | undefined;
  /** The QEMU process's pid and start time (from /proc; a reused pid is never signalled). */
  pid: number | undefined;
  startTime: string | undefined;
  qmp: QmpClient | undefined;
  exited = false;
  /** Messages of the spawn itself (QEMU's own stderr goes to files.stderrLog). */
  private stderrTail = '';
  exitPromise: Promise<void> = Promise.resolve();
  /** The snapshot in progress, if any (stop() aborts it). */
  job: SnapshotJob | undefined;
  /** Node name of the disk's current top (changes at every snapshot). */
  topNode = 'disk0';
  /** File of the current top. */
  topFile: string;
  taps: string[] = [];
  lastStop: QmpEvent | undefined;
  lastResume: QmpEvent | undefined;
  snapSerial = 0;
  /** The guest RAM's write tracker, when the VM runs with tracked memory (ram-track.ts). */
  tracker: RamWriteTracker | undefined;
  /**
   * The block image the tracker's next scan is relative to (tracked-job.ts): the last tracked
   * capture's (or the restored image), kept in the store under its own path so deleting its
   * snapshot leaves it; `valid` only while no scan ran since it was committed. A valid base is
   * in the VM's state record (persistent()), so a restarted agent adopts it; `store` is absent for
   * a base adopted so, until the next snapshot job names the agent's store (tracked-job.ts).
   */
  trackedBase: { store?: SnapshotStore; path: string; valid: boolean } | undefined;
  /**
   * The blocks its last tracked snapshot's stopped round found written (hot-blocks.ts): the next
   * snapshot's rounds before its stop leave them to its stopped round. Only a prediction: absent
   * (a new or adopted VM), every round reads all it is given.
   */
  trackedHot?: Uint8Array;
  /** The stored layers under the disk's current top (disk-layers.ts); undefined = unknown: the next snapshot stores a full image. */
  diskChain: DiskChainRecord | undefined;

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
    return (this.stderrTail + readTail(this.files.stderrLog)).trim();
  }

  /**
   * Start QEMU detached from the agent (module comment): its own session and process group
   * (setsid), stdin and stdout on /dev/null, stderr to qemu.stderr in its directory; inside a
   * transient systemd scope `scopeUnit` when given. `qemuEnv`: variables set for QEMU alone,
   * through env(1) right before QEMU's exec (a preloaded library given to the spawn's own
   * environment would be loaded by systemd-run first). Resolves once QMP answers.
   */
  async spawn(binary: string, args: string[], timeoutMs: number, scopeUnit?: string, qemuEnv: Record<string, string> = {}): Promise<void> {
    const errFd = fs.openSync(this.files.stderrLog, 'a', 0o600);
    let p: ChildProcess;
    try {
      const vars = Object.entries(qemuEnv).map(([k, v]) => `${k}=${v}`);
      const run = vars.length ? ['env', ...vars, binary, ...args] : [binary, ...args];
      const [cmd, argv] = scopeUnit ? ['systemd-run', ['--scope', '--quiet', '--collect', `--unit=${scopeUnit}`, '--', ...run]] : [run[0] as string, run.slice(1)];
      p = spawn(cmd, argv, { stdio: ['ignore', 'ignore', errFd], detached: true });
    } finally {
      fs.closeSync(errFd);
    }
    p.unref();
    this.proc = p;
    this.pid = p.pid;
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
      await this.connect(timeoutMs, () => !this.exited);
    } catch (e) {
      await sleep(50);
      throw new VnsnapError('ERR_DRIVER', `QEMU for ${this.spec.id} did not start: ${this.stderr() || describeError(e)}`, { cause: e });
    }
    if (this.pid !== undefined) this.startTime = processStartTime(this.pid);
  }

  /**
   * Take over the QEMU process `ident` a previous agent started (the caller checked it is that
   * process): connect to its QMP socket. Its end is seen as the monitor closing.
   */
  async attachProcess(ident: ProcessIdentity, timeoutMs: number): Promise<void> {
    this.pid = ident.pid;
    this.startTime = ident.startTime;
    const alive = (): boolean => isSameProcess(ident);
    let exited!: () => void;
    this.exitPromise = new Promise<void>((resolve) => (exited = resolve));
    await this.connect(timeoutMs, alive);
    this.q().once('close', () => {
      this.exited = true;
      this.status = 'stopped';
      exited();
    });
  }

  private async connect(timeoutMs: number, isAlive: () => boolean): Promise<void> {
    this.qmp = await QmpClient.connect(this.files.qmpSock, { timeoutMs, isAlive, name: `${this.spec.id} (pid ${this.pid})` });
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

  /** Stop QEMU cleanly (QMP quit), SIGKILL if it has not exited 3 s later; true when it had to be killed. */
  async kill(): Promise<boolean> {
    let killed = false;
    if (this.pid !== undefined && !this.exited) {
      try {
        await this.qmp?.execute('quit', undefined, 2000);
      } catch {
        /* dying anyway */
      }
      const t = setTimeout(() => {
        killed = true;
        this.log.warn({ pid: this.pid }, 'QEMU did not exit within 3 s of QMP quit: killed (SIGKILL); writes it had not flushed are lost');
        this.signal('SIGKILL');
      }, 3000);
      await this.exitPromise;
      clearTimeout(t);
    }
    this.qmp?.close();
    this.status = 'stopped';
    return killed;
  }

  /** Signal the process if it is still the one this VM runs (never a reused pid). */
  private signal(sig: NodeJS.Signals): void {
    if (this.proc) this.proc.kill(sig);
    else if (this.pid !== undefined && this.startTime !== undefined && isSameProcess({ pid: this.pid, startTime: this.startTime })) process.kill(this.pid, sig);
  }

  /** Forget the process without stopping it: close the monitor (the process goes on). */
  release(): void {
    this.qmp?.removeAllListeners('close');
    this.qmp?.close();
    this.proc?.removeAllListeners();
  }
}

/** The last 4000 bytes of a file ('' if it cannot be read). */
function readTail(file: string): string {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const n = Math.min(size, 4000);
      const b = Buffer.alloc(n);
      fs.readSync(fd, b, 0, n, size - n);
      return b.toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return '';
  }
}
