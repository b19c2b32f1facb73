/**
 * The Xen driver's background job.
 *
 * Snapshot, background mode: stop-and-copy with `xl save -c` (the domain is suspended for the
 * whole copy; the pause reported is that whole time). Chosen explicitly by the snapshot mode.
 */
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VnsnapError } from '../../../proto/core/errors';
import type { StoredArtefact } from '../../../proto/store/local-dir';
import type { CutReport, VmImage } from '../driver';
import { fileToStore } from '../job';
import { watchEstablished, XenJob } from './job-base';
import type { SuspendWatch, XlProcess } from './xl';

/** Background mode on Xen: stop-and-copy with `xl save -c` (the pause is the whole copy). */
export class SaveCheckpoint extends XenJob {
  readonly mode = 'background' as const;
  private file = '';
  private proc: XlProcess | undefined;
  private watch: SuspendWatch | undefined;

  /** The suspend watch is registered here, before the commit, so the cut does not wait for it. */
  async begin(): Promise<void> {
    this.file = path.join(this.driver.dir, `.save-${randomBytes(6).toString('hex')}`);
    const watch = this.driver.xen.watchSuspend(this.xvm.domid);
    await watchEstablished(watch, this.xvm.domName);
    this.watch = watch;
    this.latch.set();
  }

  async cut(atPause: () => Promise<void>): Promise<CutReport> {
    if (this.cutCalled) throw new VnsnapError('ERR_STATE', 'cut() was already called');
    if (this.aborted) throw new VnsnapError('ERR_STATE', 'the snapshot was aborted');
    if (!this.watch) throw new VnsnapError('ERR_STATE', 'cut() before begin()');
    this.cutCalled = true;
    const watch = this.watch;
    const proc = this.driver.xen.saveCheckpoint(this.xvm.domName, this.file);
    this.proc = proc;
    let suspendedUs: number;
    try {
      suspendedUs = await Promise.race([
        watch.suspended,
        proc.exited.then((r) => {
          throw new VnsnapError('ERR_DRIVER', `xl save -c ${this.xvm.domName} ended before the domain was seen suspended (exit ${r.code}): ${r.output.trim().split('\n').slice(-2).join(' | ')}`);
        }),
      ]);
    } catch (e) {
      watch.close();
      await proc.exited;
      await fsp.rm(this.file, { force: true });
      this.driver.jobEnded(this.xvm, this);
      throw e;
    }
    this.xvm.status = 'paused';
    this.driver.quiet.began();
    let hookError: unknown;
    try {
      await atPause();
      await this.copyDisk();
    } catch (e) {
      hookError = e;
    }
    const ex = await proc.exited;
    this.driver.quiet.ended();
    watch.close();
    this.xvm.status = 'running';
    if (hookError !== undefined || ex.code !== 0) {
      await fsp.rm(this.file, { force: true });
      await this.deletePartials();
      this.driver.jobEnded(this.xvm, this);
      if (hookError !== undefined) throw hookError;
      throw new VnsnapError('ERR_DRIVER', `xl save -c ${this.xvm.domName} failed (exit ${ex.code}): ${ex.output.trim().split('\n').slice(-2).join(' | ')}`);
    }
    this.final = (async (): Promise<VmImage> => {
      try {
        await this.driver.quiet.wait();
        const w = await this.opts.store.create(this.memPath);
        let memory: StoredArtefact;
        try {
          memory = await fileToStore(this.file, w);
        } catch (e) {
          await w.abort();
          throw e;
        }
        if (this.aborted) {
          await this.opts.store.delete(memory.path);
          throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
        }
        this.committed.push(memory);
        const disk = await this.persistDisk();
        return { memory, disks: disk ? [disk] : [] };
      } finally {
        await fsp.rm(this.file, { force: true });
        this.driver.jobEnded(this.xvm, this);
      }
    })();
    this.final.catch(() => undefined);
    return this.report(suspendedUs, ex.exitUnixUs, { startUnixUs: suspendedUs, endUnixUs: ex.exitUnixUs });
  }

  protected async runAbort(): Promise<void> {
    this.watch?.close();
    if (this.proc) await this.proc.exited;
    await this.final?.catch(() => undefined);
    await this.deletePartials();
    if (this.file) await fsp.rm(this.file, { force: true });
    this.driver.jobEnded(this.xvm, this);
  }
}
