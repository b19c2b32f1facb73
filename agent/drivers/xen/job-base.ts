/**
 * What the Xen driver's two snapshot jobs share (live-capture.ts for precopy, save.ts for
 * background): the VM record, the driver services a job calls back (XenJobHost), the disk copy
 * taken while the domain is suspended, the partial artefacts deleted on failure or abort, and
 * `ready` and abort() per driver.ts's contract (job.ts: ReadyLatch, AbortOnce).
 *
 * PauseQuiet: domains of one driver between their suspend and the exit of their xl process.
 * While any is, no capture writes to the store: VMs of one VNE are cut together, and one VM's
 * tail written (and hashed) during another's final pass was pause for that other (bench:xen
 * --vms 2).
 */
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VnsnapError } from '../../../proto/core/errors';
import type { Port } from '../../../switch/port/port';
import type { StoredArtefact } from '../../../proto/store/local-dir';
import type { CutReport, SnapshotJob, SnapshotOptions, VmStartSpec, VmStatus } from '../driver';
import { cutReport, DriverJob, fileToStore } from '../job';
import type { DiskRef } from './network';
import type { SuspendWatch, XenHost } from './xl';

export interface XenVm {
  spec: VmStartSpec;
  domName: string;
  domid: number;
  status: VmStatus;
  ports: Port[];
  bridges: string[];
  disk?: DiskRef;
  job?: SnapshotJob;
}

/** The driver as its jobs see it. */
export interface XenJobHost {
  readonly xen: XenHost;
  /** Receiver sockets, temporary copies. */
  readonly dir: string;
  readonly quiet: PauseQuiet;
  readonly convergeCap: number;
  readonly readyFraction: number;
  /** The receiver command xl runs for a live capture. */
  receiver(sock: string): string;
  warn(msg: string): void;
  info(msg: string): void;
  jobEnded(vm: XenVm, job: SnapshotJob): void;
}

export class PauseQuiet {
  private inPause = 0;
  private readonly waiters: (() => void)[] = [];

  began(): void {
    this.inPause++;
  }

  ended(): void {
    this.inPause = Math.max(0, this.inPause - 1);
    if (this.inPause === 0) for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves when no domain of this driver is in a capture's pause. */
  wait(): Promise<void> {
    if (this.inPause === 0) return Promise.resolve();
    return new Promise((r) => this.waiters.push(r));
  }
}

/** Wait until the suspend watch is registered (see SuspendWatch.established); closes it on timeout. */
export async function watchEstablished(watch: SuspendWatch, dom: string, timeoutMs = 60_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      watch.established,
      new Promise<never>((_, rej) => {
        timer = setTimeout(() => rej(new VnsnapError('ERR_TIMEOUT', `xenstore watch for ${dom} not registered within ${timeoutMs / 1000} s`)), timeoutMs);
      }),
    ]);
  } catch (e) {
    watch.close();
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

export abstract class XenJob extends DriverJob {
  protected aborted = false;
  protected cutCalled = false;
  protected memory: StoredArtefact | undefined;
  protected diskCopy: string | undefined;
  protected committed: StoredArtefact[] = [];

  constructor(
    protected readonly driver: XenJobHost,
    protected readonly xvm: XenVm,
    protected readonly opts: SnapshotOptions,
  ) {
    super();
  }

  /** Idempotent; concurrent calls share one run. `ready` is released (driver.ts's contract). */
  override abort(): Promise<void> {
    this.aborted = true;
    return super.abort();
  }

  abstract begin(): Promise<void>;

  get vm(): string {
    return this.xvm.spec.id;
  }

  protected get memPath(): string {
    return `${this.opts.prefix}${this.xvm.spec.name}.xen`;
  }

  /** While the domain is suspended: a point-in-time copy of its file-backed disk (reflink when possible). */
  protected async copyDisk(): Promise<void> {
    if (!this.xvm.disk) return;
    const tmp = path.join(this.driver.dir, `.disk-${randomBytes(6).toString('hex')}`);
    await this.driver.xen.snapshotDisk('file', this.xvm.disk.path, tmp);
    this.diskCopy = tmp;
  }

  /** After the resume: the disk copy into the store. */
  protected async persistDisk(): Promise<StoredArtefact | undefined> {
    if (!this.diskCopy) return undefined;
    const w = await this.opts.store.create(`${this.opts.prefix}${this.xvm.spec.name}.disk`);
    try {
      const a = await fileToStore(this.diskCopy, w);
      this.committed.push(a);
      return a;
    } catch (e) {
      await w.abort();
      throw e;
    } finally {
      await fsp.rm(this.diskCopy, { force: true });
      this.diskCopy = undefined;
    }
  }

  protected async deletePartials(): Promise<void> {
    for (const a of this.committed) await this.opts.store.delete(a.path).catch(() => undefined);
    this.committed = [];
    if (this.diskCopy) await fsp.rm(this.diskCopy, { force: true });
  }

  protected report(suspendedUs: number, resumedUs: number, copy: { startUnixUs: number; endUnixUs: number }): CutReport {
    return cutReport(suspendedUs, resumedUs, copy);
  }
}
