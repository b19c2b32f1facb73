/**
 * The Xen toolstack as the Xen driver sees it (XenHost), and its real implementation over the
 * `xl` command, `xenstore-*` and `ip` in dom0 (XlHost). Tests substitute a fake XenHost
 * (test/xen/fake-xen-host.ts), so every decision of the driver is testable without Xen.
 *
 * Suspend detection (the cut instant of a live capture or of `xl save -c`): libxl asks a PV
 * guest to suspend by writing "suspend" to /local/domain/D/control/shutdown; the guest
 * acknowledges by clearing the node and then suspends itself (freezes tasks, stops its vCPUs
 * with SCHEDOP_shutdown(suspend)); xenstored then fires @releaseDomain. The instant of the first
 * @releaseDomain after the acknowledgement is when the domain can no longer run: that is the
 * pause instant reported to the agent. (A domain that publishes a suspend event channel is
 * suspended by libxl without the xenstore request: then the first @releaseDomain after the
 * copy started is used.)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { nowUs } from '../../../proto/core/clock';
import { VnsnapError } from '../../../proto/core/errors';
import { exec, spawnProc } from '../exec';
import { vnicDown, vnicUp, type VnicVeth } from './vnic-link';

export interface XlProcess {
  /** Resolves when the command exited: its exit code (null if killed) and what it printed. */
  readonly exited: Promise<XlExit>;
  kill(): void;
}

export interface XlExit {
  code: number | null;
  output: string;
  exitUnixUs: number;
  /** The output as it came, with the instant each piece arrived (to time xl's steps). */
  chunks?: { atUs: number; text: string }[];
}

export interface SuspendWatch {
  /** Resolves with the wall-clock instant (µs) the domain was seen suspended. */
  readonly suspended: Promise<number>;
  /**
   * Resolves once the watch is in place (xenstored acknowledged every registration). Start the
   * suspending command only then: `xl save -c` suspends the domain within a few hundred ms, and
   * a watch registered after that misses the suspend (seen with two saves at once in dom0).
   */
  readonly established: Promise<void>;
  /** Resolves when libxl asks the guest to suspend (the request is written to control/shutdown). */
  readonly requested?: Promise<void>;
  close(): void;
}

export interface XenHost {
  /** `xl create FILE`; returns the new domain's id. */
  create(configFile: string, name: string): Promise<number>;
  /** `xl destroy`; no error if the domain does not exist. */
  destroy(name: string): Promise<void>;
  pause(name: string): Promise<void>;
  unpause(name: string): Promise<void>;
  /** The domain id, or null if no such domain. */
  domid(name: string): Promise<number | null>;
  /** Is the domain paused (`xl list`'s state has "p")? Optional: without it an adopted domain is not checked. */
  paused?(name: string): Promise<boolean>;
  /** `xl migrate -s '' NAME RECEIVER`: xl runs RECEIVER (a shell command) as the receiving side. */
  migrate(name: string, receiverCommand: string): XlProcess;
  /** `xl save -c NAME FILE`: stop-and-copy checkpoint, the domain resumes afterwards. */
  saveCheckpoint(name: string, file: string): XlProcess;
  /**
   * Cap the domain's CPU at `percent` of one CPU (0 = no cap): `xl sched-credit2 -c`, or
   * `xl sched-credit -c` on a credit host. Used to make a live migration converge.
   */
  setCap(name: string, percent: number): Promise<void>;
  /** `xl restore -p FILE`: the domain is created paused; returns its id. */
  restorePaused(file: string, name: string): Promise<number>;
  watchSuspend(domid: number): SuspendWatch;
  /** Create (if needed) a bridge holding the bridge end of the vNIC's veth pair (the vif joins it through the hotplug script); vnic-link.ts. */
  bridgeUp(bridge: string, veth: VnicVeth): Promise<void>;
  /** Remove the bridge and the pair (nothing when gone). */
  bridgeDown(bridge: string, veth: VnicVeth): Promise<void>;
  /** Copy a disk file (reflink when the filesystem can); LVM: snapshot a logical volume. */
  snapshotDisk(kind: 'file' | 'lvm', source: string, target: string): Promise<void>;
}

/** An xl command under way: `spawnProc` of the drivers' one runner (exec.ts). */
function runProc(cmd: string, args: string[], opts: { timeoutMs?: number } = {}): XlProcess {
  return spawnProc(cmd, args, opts);
}

/** Run to completion (default limit 2 minutes); ExecError (ERR_DRIVER / ERR_TIMEOUT) on failure. */
async function run(cmd: string, args: string[], timeoutMs = 120_000): Promise<string> {
  return exec(cmd, args, { timeoutMs });
}

/** The real toolstack: `xl`, `xenstore-watch`/`xenstore-read`, `cp`, `lvcreate` in dom0 (and vnic-link.ts for the network). */
export class XlHost implements XenHost {
  constructor(
    private readonly xl = 'xl',
    private readonly xenstoreWatch = 'xenstore-watch',
  ) {}

  async create(configFile: string, name: string): Promise<number> {
    await run(this.xl, ['create', configFile]);
    const id = await this.domid(name);
    if (id === null) throw new VnsnapError('ERR_DRIVER', `xl create ${configFile}: domain ${name} did not appear`);
    return id;
  }

  async destroy(name: string): Promise<void> {
    if ((await this.domid(name)) === null) return;
    await run(this.xl, ['destroy', name]);
  }

  async pause(name: string): Promise<void> {
    await run(this.xl, ['pause', name]);
  }

  async unpause(name: string): Promise<void> {
    await run(this.xl, ['unpause', name]);
  }

  async domid(name: string): Promise<number | null> {
    const r = await runProc(this.xl, ['domid', name]).exited;
    if (r.code !== 0) return null;
    const n = Number(r.output.trim().split('\n').pop());
    return Number.isInteger(n) ? n : null;
  }

  async paused(name: string): Promise<boolean> {
    // "Name ID Mem VCPUs State Time(s)": the state is six flags, "p" the third ("--p---").
    const line = (await run(this.xl, ['list', name])).trim().split('\n').pop() ?? '';
    const state = line.trim().split(/\s+/)[4] ?? '';
    return state[2] === 'p';
  }

  migrate(name: string, receiverCommand: string): XlProcess {
    return runProc(this.xl, ['migrate', '-s', '', name, receiverCommand]);
  }

  async setCap(name: string, percent: number): Promise<void> {
    const args = ['-d', name, '-c', String(percent)];
    try {
      await run(this.xl, ['sched-credit2', ...args]);
    } catch {
      await run(this.xl, ['sched-credit', ...args]); // a credit (not credit2) host
    }
  }

  saveCheckpoint(name: string, file: string): XlProcess {
    return runProc(this.xl, ['save', '-c', name, file]);
  }

  async restorePaused(file: string, name: string): Promise<number> {
    await run(this.xl, ['restore', '-p', file]);
    const id = await this.domid(name);
    if (id === null) throw new VnsnapError('ERR_DRIVER', `xl restore ${file}: domain ${name} did not appear`);
    return id;
  }

  watchSuspend(domid: number): SuspendWatch {
    const ctl = `/local/domain/${domid}/control/shutdown`;
    const watchers: ChildProcess[] = [];
    let acked = false;
    let done = false;
    let resolveSuspended!: (us: number) => void;
    const suspended = new Promise<number>((r) => (resolveSuspended = r));
    const lines = (p: ChildProcess, on: (line: string) => void): void => {
      let buf = '';
      p.stdout?.on('data', (d: Buffer) => {
        buf += d.toString();
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const l = buf.slice(0, i);
          buf = buf.slice(i + 1);
          on(l);
        }
      });
    };
    const ctlWatch = spawn(this.xenstoreWatch, [ctl], { stdio: ['ignore', 'pipe', 'ignore'] });
    const relWatch = spawn(this.xenstoreWatch, ['@releaseDomain'], { stdio: ['ignore', 'pipe', 'ignore'] });
    watchers.push(ctlWatch, relWatch);
    // control/shutdown: the first event is the watch registration; during a snapshot only libxl
    // (writes "suspend") and the guest (clears it: the acknowledgement) change the node, so the
    // second change is the acknowledgement. Counting events is used rather than reading the
    // value, which races with the guest's fast acknowledgement (seen on the nested test bed).
    let ctlEvents = 0;
    let registered = 0;
    let setEstablished!: () => void;
    const established = new Promise<void>((r) => (setEstablished = r));
    const onRegistered = (): void => {
      if (++registered === 2) setEstablished();
    };
    // The two watches are two processes: their lines can reach us in either order, so a
    // @releaseDomain may arrive before the acknowledgement it follows (seen in a loaded dom0,
    // where the `xl list` check below then ran after the domain had already resumed).
    let releaseBeforeAck: number | undefined;
    let setRequested!: () => void;
    const requested = new Promise<void>((r) => (setRequested = r));
    lines(ctlWatch, () => {
      ctlEvents++;
      if (ctlEvents === 1) onRegistered();
      if (ctlEvents === 2) setRequested();
      if (ctlEvents >= 3) {
        acked = true;
        if (releaseBeforeAck !== undefined && !done) {
          done = true;
          resolveSuspended(releaseBeforeAck);
        }
      }
    });
    let first = true;
    lines(relWatch, () => {
      const t = nowUs();
      if (first) {
        first = false; // registration event
        onRegistered();
        return;
      }
      if (done) return;
      if (acked) {
        // The guest acknowledged the suspend request and a domain shut down: ours suspended.
        done = true;
        resolveSuspended(t);
        return;
      }
      if (ctlEvents >= 2 && releaseBeforeAck === undefined) releaseBeforeAck = t; // requested, ack still on its way
      // Without the xenstore request (a guest with a suspend event channel): check that it is
      // this domain that shut down (suspended), not another one.
      void runProc(this.xl, ['list', String(domid)]).exited.then((r) => {
        if (done) return;
        const state = /\s([r-][b-][p-][s-][c-][d-])\s/.exec(r.output)?.[1] ?? '';
        if (state[3] === 's') {
          done = true;
          resolveSuspended(t);
        }
      });
    });
    return {
      suspended,
      established,
      requested,
      close: () => {
        done = true;
        for (const w of watchers) w.kill('SIGKILL');
      },
    };
  }

  bridgeUp(bridge: string, veth: VnicVeth): Promise<void> {
    return vnicUp(bridge, veth);
  }

  bridgeDown(bridge: string, veth: VnicVeth): Promise<void> {
    return vnicDown(bridge, veth);
  }

  async snapshotDisk(kind: 'file' | 'lvm', source: string, target: string): Promise<void> {
    if (kind === 'file') await run('cp', ['--reflink=auto', '--sparse=always', source, target], 600_000);
    else await run('lvcreate', ['-s', '-n', target, '-l', '100%ORIGIN', source]);
  }
}
