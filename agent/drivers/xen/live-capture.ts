/**
 * The Xen driver's precopy job: the live-migration stream captured locally.
 *
 * Snapshot, precopy mode (live capture): `xl migrate -s '' DOM RECEIVER` where RECEIVER is
 * relay.js, connected to a unix socket of this driver. The driver sends xl's banner, writes
 * the stream into the store while parsing it (stream.ts), and:
 *   - `ready` once most of the first pass has arrived; it then stops reading, so the sender
 *     blocks (the domain runs on) until the coordinator's commit: cut() reads again;
 *   - libxc finishes its live passes and suspends the domain: the suspend instant (xenstore,
 *     xl.ts) is the cut: atPause runs (the agent drains the port and advances the epoch),
 *     then file-backed disks are copied while the domain is suspended;
 *   - at the libxl END record the image is complete; the driver closes the connection without
 *     sending "ready", xl reports "Migration failed, resuming at sender" and resumes the domain
 *     (the connection is never closed before atPause and the disk copy are done).
 *   pause = suspend instant → xl's exit (after libxl resumed the domain).
 */
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { nowUs } from '../../../proto/core/clock';
import { VnsnapError } from '../../../proto/core/errors';
import type { ArtefactWriter } from '../../../proto/store/local-dir';
import type { CutReport, SnapshotProgress, VmImage } from '../driver';
import { ConvergeCap } from './converge';
import { watchEstablished, XenJob } from './job-base';
import { XenStreamParser, XL_RECEIVER_BANNER } from './stream';
import type { SuspendWatch, XlProcess } from './xl';

/** Parsed stream bytes allowed to wait for the store before the receiver stops reading. */
const QUEUE_MAX = 64 * 1024 * 1024;
/** Largest single write into the store (pending socket reads are joined up to this). */
const WRITE_BATCH = 4 * 1024 * 1024;
const PAGE = 4096;

/** Precopy: the live-migration stream captured locally (see the module comment). */
export class LiveCapture extends XenJob {
  readonly mode = 'precopy' as const;
  private server: net.Server | undefined;
  private sockPath = '';
  private conn: net.Socket | undefined;
  private writer: ArtefactWriter | undefined;
  private readonly parser = new XenStreamParser();
  private proc: XlProcess | undefined;
  private watch: SuspendWatch | undefined;
  private holding = false;
  private writing: Promise<void> = Promise.resolve();
  /** Bytes parsed but not yet written to the store, and those bytes. */
  private queued = 0;
  private pending: Buffer[] = [];
  private pumping = false;
  private suspendSeen = false;
  /** When the first bytes after the suspend arrived (the cut's trace). */
  private firstAfterSuspendUs: number | undefined;
  private converge: ConvergeCap | undefined;
  private streamError: Error | undefined;
  private endSeen!: Promise<void>;
  private setEnd!: () => void;
  private failEnd!: (e: Error) => void;
  private lastProgressUs = 0;
  private lastPages = 0;
  private startUs = 0;

  async begin(): Promise<void> {
    this.endSeen = new Promise<void>((res, rej) => {
      this.setEnd = res;
      this.failEnd = rej;
    });
    this.endSeen.catch(() => undefined);
    this.writer = await this.opts.store.create(this.memPath);
    this.sockPath = path.join(this.driver.dir, `recv-${randomBytes(6).toString('hex')}.sock`);
    this.server = net.createServer((c) => this.onConnection(c));
    await new Promise<void>((res, rej) => {
      this.server?.once('error', rej);
      this.server?.listen(this.sockPath, res);
    });
    this.watch = this.driver.xen.watchSuspend(this.xvm.domid);
    await watchEstablished(this.watch, this.xvm.domName);
    this.startUs = nowUs();
    this.proc = this.driver.xen.migrate(this.xvm.domName, this.driver.receiver(this.sockPath));
    void this.proc.exited.then((r) => {
      if (!this.parser.done) {
        const e = new VnsnapError('ERR_DRIVER', `xl migrate of ${this.xvm.domName} ended before the stream did (exit ${r.code}): ${r.output.trim().split('\n').slice(-2).join(' | ')}`);
        this.streamError = e;
        this.latch.fail(e);
        this.failEnd(e);
      }
    });
  }

  private onConnection(c: net.Socket): void {
    // After abort() the receiver is refused as soon as it connects: xl then fails ("resuming at
    // sender") and exits, which abort() waits for (an abort right after begin() came before xl's
    // receiver had connected, and xl went on migrating until abort's 60 s kill).
    if (this.conn || this.aborted) {
      c.destroy();
      return;
    }
    this.conn = c;
    c.write(XL_RECEIVER_BANNER);
    c.on('error', () => undefined);
    c.on('data', (chunk: Buffer) => {
      if (this.parser.done || this.aborted || this.streamError) return;
      if (this.suspendSeen) this.firstAfterSuspendUs ??= nowUs();
      // Parsed at once, written in order behind: the sender is never held by a disk write (the
      // final pass is sent while the domain is suspended), only by the hold or by QUEUE_MAX.
      let used: number;
      try {
        used = this.parser.push(chunk);
      } catch (e) {
        this.failStream(e as Error);
        return;
      }
      if (used > 0) {
        const part = used === chunk.length ? chunk : chunk.subarray(0, used);
        this.pending.push(part);
        this.queued += part.length;
        this.pump();
      }
      this.progress();
      if (this.parser.done) {
        this.latch.set();
        this.setEnd();
        return;
      }
      if (!this.holding && !this.cutCalled && this.isReady()) {
        this.holding = true;
        this.latch.set();
      }
      if (!this.mayRead()) c.pause();
    });
  }

  /**
   * Write what is pending, in order, up to WRITE_BATCH bytes per write: one write per 64 KiB
   * socket read was the receiver's limit in a TCG dom0 (the backlog took 9 s to drain after END).
   */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    this.writing = (async () => {
      try {
        while (this.pending.length) {
          // Nothing is written while a domain of this driver is in its pause (this one's too):
          // the store's writes and SHA-256 took dom0's CPUs from xl's final pass and resume.
          await this.driver.quiet.wait();
          if (!this.pending.length) break; // discarded: the cut failed
          let n = 0;
          let k = 0;
          while (k < this.pending.length && n < WRITE_BATCH) n += (this.pending[k++] as Buffer).length;
          const batch = this.pending.splice(0, k);
          await this.writer?.write(batch.length === 1 ? (batch[0] as Buffer) : Buffer.concat(batch, n));
          this.queued -= n;
          this.readOn();
        }
      } finally {
        this.pumping = false;
      }
    })();
    this.writing.catch((e: Error) => this.failStream(e));
  }

  /** Everything parsed has been written (or the stream failed: then this rejects). */
  private async flushed(): Promise<void> {
    while (this.pending.length > 0 || this.pumping) {
      await this.writing;
      if (!this.pumping && this.pending.length > 0) this.pump();
    }
    if (this.streamError) throw this.streamError;
  }

  /**
   * Read unless holding for the commit, or (before the suspend) too much is waiting to be
   * written. Once the domain is suspended the rest of the stream (the final pass, at most the
   * guest's memory) is read as fast as it comes: every millisecond of it is pause.
   */
  private mayRead(): boolean {
    return (!this.holding || this.cutCalled) && (this.suspendSeen || this.queued <= QUEUE_MAX);
  }

  private readOn(): void {
    if (this.mayRead() && !this.parser.done) this.conn?.resume();
  }

  private failStream(e: Error): void {
    if (this.streamError) return;
    this.streamError = e;
    this.latch.fail(e);
    this.failEnd(e);
    this.conn?.destroy();
  }

  private isReady(): boolean {
    const s = this.parser.stats;
    if (s.iteration >= 2 || s.memoryDone) return true;
    return s.guestPages > 0 && s.passPages >= s.guestPages * this.driver.readyFraction;
  }

  private progress(force = false): void {
    const t = nowUs();
    if (!force && t - this.lastProgressUs < 200_000) return;
    const s = this.parser.stats;
    const dt = (t - (this.lastProgressUs || this.startUs)) / 1e6;
    const rate = s.iteration >= 2 && dt > 0 ? ((s.pages - this.lastPages) * PAGE) / (1 << 20) / dt : 0;
    this.lastProgressUs = t;
    this.lastPages = s.pages;
    const total = s.guestPages * PAGE;
    const p: SnapshotProgress = {
      bytesDone: s.bytes,
      bytesRemaining: s.iteration <= 1 ? Math.max(0, total - s.passPages * PAGE) : 0,
      bytesTotal: total,
      iteration: Math.max(1, s.iteration),
      dirtyRateMibS: rate,
      ready: this.holding || s.iteration >= 2,
    };
    this.opts.onProgress?.(p);
  }

  async cut(atPause: () => Promise<void>): Promise<CutReport> {
    if (this.cutCalled) throw new VnsnapError('ERR_STATE', 'cut() was already called');
    if (this.streamError) throw this.streamError;
    if (this.aborted) throw new VnsnapError('ERR_STATE', 'the snapshot was aborted');
    this.cutCalled = true;
    const converge = new ConvergeCap(this.driver.xen, this.xvm.domName, this.driver.convergeCap, (m) => this.driver.warn(m));
    this.converge = converge;
    await converge.begin();
    this.parser.onPass = () => converge.tighten(); // not converging fast enough is the rule under load
    void this.watch?.requested?.then(() => converge.lift());
    this.readOn(); // let libxc finish its passes and suspend the domain
    const failed = this.endSeen.then(
      () => new Promise<never>(() => undefined),
      (e: Error) => Promise.reject(e),
    );
    // Fallback: the stream itself proves the domain is suspended once the memory copy is over
    // (the final pass is sent after the suspend, and the domain resumes only when we close). If
    // the xenstore watch missed the suspend, the cut is taken then (the pause reported starts
    // late by the final pass: this is logged).
    let memoryDoneUs: number | undefined;
    const memoryDone = new Promise<number>((res) => {
      if (this.parser.stats.memoryDone) res(nowUs());
      this.parser.onMemoryDone = () => res(nowUs());
    }).then((t) => {
      memoryDoneUs = t;
      return new Promise<number>((res) => setTimeout(() => res(t), 2000));
    });
    let fromStream = false;
    const suspendedUs = await Promise.race([
      (this.watch as SuspendWatch).suspended,
      memoryDone.then((t) => {
        fromStream = true;
        return t;
      }),
      failed,
    ]);
    this.suspendSeen = true;
    this.driver.quiet.began();
    const pagesAtSuspend = this.parser.stats.pages;
    this.readOn();
    if (fromStream) this.driver.warn(`xen: the suspend of ${this.xvm.domName} was not seen in xenstore; cut taken at the end of the memory copy (the pause reported is short by the final pass)`);
    this.xvm.status = 'paused';
    let hookError: unknown;
    try {
      await atPause();
    } catch (e) {
      hookError = e;
    }
    const hookEnd = nowUs();
    if (hookError === undefined) {
      try {
        await this.copyDisk();
      } catch (e) {
        hookError = e;
      }
    }
    const diskEnd = nowUs();
    // Now the receiver may let the domain go: at the END record (the stream is complete in
    // memory; what arrived since the suspend is held there) close without "ready": the relay
    // dies, xl resumes the domain and exits. The held tail is written after that, outside the
    // pause.
    let streamFailed: unknown;
    try {
      await this.endSeen;
    } catch (e) {
      streamFailed = e;
    }
    const endUs = nowUs();
    const finalPages = this.parser.stats.pages - pagesAtSuspend;
    this.conn?.destroy();
    const ex = await (this.proc as XlProcess).exited;
    this.driver.quiet.ended();
    await this.converge?.release();
    const resumingUs = ex.chunks?.find((c) => /resuming at sender/.test(c.text))?.atUs;
    const ms = (t: number | undefined): number | undefined => (t === undefined ? undefined : Math.round((t - suspendedUs) / 100) / 10);
    this.driver.info(`xen: cut of ${this.xvm.domName}: ms after the suspend: hook ${ms(hookEnd)}, disk ${ms(diskEnd)}, first bytes ${ms(this.firstAfterSuspendUs)}, pages done ${ms(memoryDoneUs)}, END ${ms(endUs)}, closed, xl "resuming" ${ms(resumingUs)}, xl exit ${ms(ex.exitUnixUs)}; ${finalPages} pages read after the suspend, ${this.parser.stats.iteration} passes`);
    this.watch?.close();
    this.server?.close();
    await fsp.rm(this.sockPath, { force: true });
    this.xvm.status = 'running';
    const resumedUs = ex.exitUnixUs;
    if (hookError !== undefined || streamFailed !== undefined) {
      this.pending = [];
      this.queued = 0;
      await this.writer?.abort();
      await this.deletePartials();
      this.driver.jobEnded(this.xvm, this);
      throw hookError ?? streamFailed;
    }
    // The domain runs again: the held tail is written once no other domain of this driver is in
    // a pause (durable() waits for it; cut() does not, so one VM's report never waits for
    // another VM's pause).
    const copyPhase = { startUnixUs: hookEnd, endUnixUs: resumedUs };
    this.final = (async (): Promise<VmImage> => {
      try {
        await this.flushed();
        this.driver.info(`xen: image of ${this.xvm.domName} written ${ms(nowUs())} ms after the suspend`);
        const memory = await (this.writer as ArtefactWriter).commit();
        this.committed.push(memory);
        const disk = await this.persistDisk();
        return { memory, disks: disk ? [disk] : [] };
      } catch (e) {
        await this.writer?.abort().catch(() => undefined);
        await this.deletePartials();
        throw e;
      } finally {
        this.driver.jobEnded(this.xvm, this);
      }
    })();
    this.final.catch(() => undefined);
    return this.report(suspendedUs, resumedUs, copyPhase);
  }

  protected async runAbort(): Promise<void> {
    // Closing the receiver makes the sender fail and resume the domain (if it had suspended it).
    this.conn?.destroy();
    if (this.proc) {
      const t = setTimeout(() => this.proc?.kill(), 60_000);
      await this.proc.exited;
      clearTimeout(t);
    }
    await this.converge?.release();
    this.watch?.close();
    this.server?.close();
    if (this.sockPath) await fsp.rm(this.sockPath, { force: true });
    await this.final?.catch(() => undefined);
    await this.writer?.abort();
    await this.deletePartials();
    if (this.xvm.status === 'paused' && this.cutCalled) this.xvm.status = 'running';
    this.driver.jobEnded(this.xvm, this);
  }
}
