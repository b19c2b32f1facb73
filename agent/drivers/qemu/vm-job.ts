/**
 * What every snapshot job of a QEMU VM shares, whichever way its memory is saved (QEMU's
 * migration stream: migration.ts; the agent's tracked capture: tracked-job.ts): the VM and the
 * job's options, the disk overlay of the snapshot (disk-overlay.ts) and how its frozen disk goes
 * into the store, and the artefacts and writers the job made, for its abort to remove.
 *
 * Guarantees: each job takes the VM's next snapshot serial (names of its sockets and files);
 * storeDisk() stores the frozen disk as layers (disk-layers.ts), every artefact it commits
 * recorded in `committed` and every writer in `writers`, stops early with ERR_SNAPSHOT_ABORTED
 * once the job is aborted, and removes its temporary file either way.
 */
import * as fsp from 'node:fs/promises';
import type { Logger } from '../../../proto/core/log';
import type { ArtefactWriter, StoredArtefact } from '../../../proto/store/snapshot-store';
import type { DiskArtefact, SnapshotModeName, SnapshotOptions } from '../driver';
import { DriverJob, fileToStore } from '../job';
import { DiskOverlay } from './disk-overlay';
import { MiB, qemuImg, type QemuOptions, type QemuVm } from './process';
import type { QmpClient } from './qmp';

export abstract class QemuVmJob extends DriverJob {
  protected readonly disk: DiskOverlay;
  /** Artefacts this job committed (an abort deletes them). */
  protected committed: StoredArtefact[] = [];
  /** Writers this job opened (a failure or an abort aborts them). */
  protected writers: ArtefactWriter[] = [];

  constructor(
    protected readonly vmObj: QemuVm,
    protected readonly opts: SnapshotOptions,
    protected readonly o: QemuOptions,
  ) {
    super();
    this.vmObj.snapSerial++;
    this.disk = new DiskOverlay(vmObj, opts.epoch, (args) => qemuImg(o.qemuImg, args));
  }

  get vm(): string {
    return this.vmObj.spec.id;
  }

  get mode(): SnapshotModeName {
    return this.opts.mode;
  }

  protected get q(): QmpClient {
    return this.vmObj.q();
  }

  protected get log(): Logger {
    return this.vmObj.log;
  }

  /** The frozen disk into the store after the cut (none when the cut froze none). */
  protected async storeDisk(): Promise<DiskArtefact[]> {
    if (!this.disk.frozen) return [];
    // The disk as layers: the frozen top over the previous snapshot's (linked), or a full image (disk-layers.ts).
    const tmpFile = `${this.vmObj.files.dir}/frozen-e${this.opts.epoch}-${this.vmObj.snapSerial}.qcow2`;
    try {
      const r = await this.disk.store({ store: this.opts.store, prefix: this.opts.prefix, vm: this.vmObj.spec.name, tmpFile, upload: (f, rel) => this.copyIn(f, rel), committed: (a) => void this.committed.push(a), aborted: () => this.abortRequested });
      this.log.info({ how: r.how, why: r.why, layers: r.disks.length, storedBytes: r.disks.map((d) => d.storedBytes ?? d.size) }, 'disk stored');
      return r.disks;
    } finally {
      await fsp.rm(tmpFile, { force: true });
    }
  }

  private async copyIn(file: string, rel: string): Promise<StoredArtefact> {
    const w = await this.opts.store.create(rel);
    this.writers.push(w);
    const a = await fileToStore(file, w, { chunkBytes: 4 * MiB, copyChunks: true, aborted: () => this.abortRequested });
    this.committed.push(a);
    return a;
  }
}
