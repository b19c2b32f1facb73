/**
 * The Xen driver (docs/xen.md): runs PV domains through the `xl` toolstack in dom0 and snapshots
 * them without modifying Xen.
 *
 * Network: every vNIC is a `vif` whose backend `vifD.N` the hotplug script puts into a bridge
 * the driver made (`vnxb<hash><i>`), together with a TAP the switch owns (`vnxt<hash><i>`, opened
 * with offloads: a PV guest sends TCP super-frames with partial checksums, which a plain packet
 * socket on the vif would hand over unsegmented). The bridge survives the domain, so a restored
 * domain (new domid, new vifD.N) lands on the same port.
 *
 * Snapshot, precopy mode (live capture): `xl migrate -s '' DOM RECEIVER` where RECEIVER is
 * xen-relay.js, connected to a unix socket of this driver. The driver sends xl's banner, writes
 * the stream into the store while parsing it (xen-stream.ts), and:
 *   - `ready` once most of the first pass has arrived; it then stops reading, so the sender
 *     blocks (the domain runs on) until the coordinator's commit: cut() reads again;
 *   - libxc finishes its live passes and suspends the domain: the suspend instant (xenstore,
 *     xen-xl.ts) is the cut: atPause runs (the agent drains the port and advances the epoch),
 *     then file-backed disks are copied while the domain is suspended;
 *   - at the libxl END record the image is complete; the driver closes the connection without
 *     sending "ready", xl reports "Migration failed, resuming at sender" and resumes the domain
 *     (the connection is never closed before atPause and the disk copy are done).
 *   pause = suspend instant → xl's exit (after libxl resumed the domain).
 * Snapshot, background mode: stop-and-copy with `xl save -c` (the domain is suspended for the
 * whole copy; the pause reported is that whole time). Chosen explicitly by the snapshot mode.
 * Restore: `xl restore -p` (paused, ports on the same bridges), resume = `xl unpause`.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { VnsnapError } from '../proto/core/errors';
import type { Logger } from '../proto/core/log';
import { TapPort } from '../switch/port/fd-port';
import type { Port } from '../switch/port/port';
import type { CutReport, HypervisorDriver, PhaseSpan, RestoreImage, SnapshotJob, SnapshotModeName, SnapshotOptions, SnapshotProgress, VmHandle, VmImage, VmStartContext, VmStartSpec, VmStatus } from './driver';
import { LocalDirStore, type ArtefactWriter, type SnapshotStore, type StoredArtefact } from '../proto/store/local-dir';
import { ConvergeCap } from './xen-converge';
import { XenStreamParser, XL_RECEIVER_BANNER } from './xen-stream';
import { XlHost, type SuspendWatch, type XenHost, type XlProcess } from './xen-xl';

/** Parsed stream bytes allowed to wait for the store before the receiver stops reading. */
const QUEUE_MAX = 64 * 1024 * 1024;
/** Largest single write into the store (pending socket reads are joined up to this). */
const WRITE_BATCH = 4 * 1024 * 1024;

const nowUs = (): number => Math.round((performance.timeOrigin + performance.now()) * 1000);
const PAGE = 4096;

/** Wait until the suspend watch is registered (see SuspendWatch.established); closes it on timeout. */
async function watchEstablished(watch: SuspendWatch, dom: string, timeoutMs = 60_000): Promise<void> {
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

export interface XenDriverOptions {
  host?: XenHost;
  /** Configs, receiver sockets, temporary copies (default /var/lib/vnsnap/xen). */
  workDir?: string;
  /** The receiver command xl runs for a live capture, given the driver's socket path. */
  receiverCommand?: (socketPath: string) => string;
  /** Open the switch's side of a vNIC (default: a TAP with offloads, bridged with the vif). */
  openPort?: (portName: string, tapName: string) => Port;
  /** Fraction of the first pass after which the capture is ready and held (default 0.9). */
  readyFraction?: number;
  /**
   * CPU cap (% of one CPU) put on a domain at the commit and halved at every live pass after it
   * (down to 2 %); lifted when libxl asks the guest to suspend. libxc's last live passes then
   * converge and the final pass (sent while the domain is suspended) is small: QEMU's
   * auto-converge, by Xen's scheduler. 0 = off. Default 10.
   */
  convergeCapPercent?: number;
  /** Where driver warnings go (default: stderr) and, if given, its step timings. */
  log?: (msg: string) => void;
  /** The agent's logger: takes precedence over `log`. */
  logger?: Logger;
}

interface DiskRef {
  kind: 'file';
  path: string;
}

interface XenVm {
  spec: VmStartSpec;
  domName: string;
  domid: number;
  status: VmStatus;
  ports: Port[];
  bridges: string[];
  disk?: DiskRef;
  job?: SnapshotJob;
}

/**
 * The C relay built with the native addon (agent/native/xen-relay.c), or null when it was not
 * built: then the Node relay (xen-relay.ts) is used, which works but lengthens the pause.
 */
export function nativeRelayPath(): string | null {
  for (const p of [path.join(__dirname, '..', '..', 'build', 'Release', 'vnsnap-xen-relay'), path.join(__dirname, '..', 'build', 'Release', 'vnsnap-xen-relay')]) {
    if (fs.existsSync(p)) return p;
  }
  return null;
}

/** Deterministic short names from the VM key (interface names are at most 15 characters). */
export function xenNames(id: string, nics: number): { domName: string; bridges: string[]; taps: string[] } {
  const h = createHash('sha256').update(id).digest('hex').slice(0, 8);
  const domName = `vnsnap-${id.replace(/[^A-Za-z0-9_.-]/g, '-')}`.slice(0, 60);
  return {
    domName,
    bridges: Array.from({ length: nics }, (_, i) => `vnxb${h}${i}`),
    taps: Array.from({ length: nics }, (_, i) => `vnxt${h}${i}`),
  };
}

/**
 * The VM's xl configuration with its name and vifs set by the driver (any `name` and `vif`
 * lines of the given text are replaced) and the file-backed disk it uses, if any.
 */
export function xenConfig(text: string, domName: string, macs: string[], bridges: string[]): { config: string; disk?: DiskRef } {
  const lines = text.split('\n');
  const out: string[] = [];
  let skipping = false;
  for (const l of lines) {
    if (skipping) {
      if (l.includes(']')) skipping = false;
      continue;
    }
    if (/^\s*(name|vif)\s*=/.test(l)) {
      if (/^\s*vif\s*=\s*\[/.test(l) && !l.includes(']')) skipping = true;
      continue;
    }
    out.push(l);
  }
  out.push(`name = "${domName}"`);
  out.push(`vif = [ ${macs.map((m, i) => `'mac=${m},bridge=${bridges[i]}'`).join(', ')} ]`);
  let disk: DiskRef | undefined;
  const dm = /^\s*disk\s*=\s*\[([^\]]*)\]/m.exec(text);
  if (dm) {
    const first = /['"]([^'"]+)['"]/.exec(dm[1] as string)?.[1] ?? '';
    const target = /(?:^|,)\s*target=([^,]+)/.exec(first)?.[1] ?? (/^(?:file:|aio:)?(\/[^,]+)/.exec(first)?.[1] ?? '');
    const phy = /(?:^|,)\s*phy:|^\/dev\//.test(first) || /\/dev\//.test(target);
    if (target && !phy) disk = { kind: 'file', path: target.trim() };
  }
  return { config: out.join('\n') + '\n', ...(disk ? { disk } : {}) };
}

export class XenDriver implements HypervisorDriver {
  readonly kind = 'xen' as const;
  private readonly host: XenHost;
  private readonly workDir: string;
  private readonly vms = new Map<string, XenVm>();

  constructor(private readonly opts: XenDriverOptions = {}) {
    this.host = opts.host ?? new XlHost();
    this.workDir = opts.workDir ?? '/var/lib/vnsnap/xen';
  }

  private receiverCommand(sock: string): string {
    if (this.opts.receiverCommand) return this.opts.receiverCommand(sock);
    // exec: no shell between xl and the relay, so the relay's death is the receiver's exit.
    const native = nativeRelayPath();
    if (native) return `exec '${native}' '${sock}'`;
    return `exec '${process.execPath}' '${path.join(__dirname, 'xen-relay.js')}' '${sock}'`;
  }

  private get(id: string): XenVm {
    const vm = this.vms.get(id);
    if (!vm) throw new VnsnapError('ERR_NOT_FOUND', `no Xen VM ${id}`);
    return vm;
  }

  private async attachPorts(spec: VmStartSpec, ctx: VmStartContext): Promise<{ ports: Port[]; bridges: string[] }> {
    const names = xenNames(spec.id, spec.macs.length);
    const ports: Port[] = [];
    try {
      for (let i = 0; i < spec.macs.length; i++) {
        const tap = names.taps[i] as string;
        const p = this.opts.openPort ? this.opts.openPort(ctx.portNames[i] as string, tap) : new TapPort(ctx.portNames[i] as string, tap, undefined, { offload: true });
        ports.push(p);
        await this.host.bridgeUp(names.bridges[i] as string, tap);
      }
    } catch (e) {
      for (const p of ports) p.close();
      for (const b of names.bridges) await this.host.bridgeDown(b).catch(() => undefined);
      throw e;
    }
    return { ports, bridges: names.bridges };
  }

  private async detach(vm: { ports: Port[]; bridges: string[] }): Promise<void> {
    for (const p of vm.ports) p.close();
    for (const b of vm.bridges) await this.host.bridgeDown(b).catch(() => undefined);
  }

  async start(spec: VmStartSpec, ctx: VmStartContext): Promise<VmHandle> {
    if (this.vms.has(spec.id)) throw new VnsnapError('ERR_ALREADY_EXISTS', `Xen VM ${spec.id} exists`);
    const text = spec.driver.xen?.config;
    if (!text) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: the xen driver needs an xl config (driver.xen.config)`);
    const names = xenNames(spec.id, spec.macs.length);
    const { config, disk } = xenConfig(text, names.domName, spec.macs, names.bridges);
    await fsp.mkdir(this.workDir, { recursive: true });
    const file = path.join(this.workDir, `${names.domName}.cfg`);
    await fsp.writeFile(file, config);
    await this.host.destroy(names.domName).catch(() => undefined); // a leftover of a crashed agent
    const { ports, bridges } = await this.attachPorts(spec, ctx);
    let domid: number;
    try {
      domid = await this.host.create(file, names.domName);
    } catch (e) {
      await this.detach({ ports, bridges });
      throw e;
    }
    ctx.log.info({ domain: names.domName, domid, bridges }, 'xen domain created');
    const vm: XenVm = { spec, domName: names.domName, domid, status: 'running', ports, bridges, ...(disk ? { disk } : {}) };
    this.vms.set(spec.id, vm);
    return { name: spec.name, ports };
  }

  async stop(id: string): Promise<void> {
    const vm = this.vms.get(id);
    if (!vm) return;
    this.vms.delete(id);
    await vm.job?.abort().catch(() => undefined);
    vm.status = 'stopped';
    await this.host.destroy(vm.domName);
    await this.detach(vm);
  }

  async pause(id: string): Promise<void> {
    const vm = this.get(id);
    await this.host.pause(vm.domName);
    vm.status = 'paused';
  }

  async resume(id: string): Promise<void> {
    const vm = this.get(id);
    await this.host.unpause(vm.domName);
    vm.status = 'running';
  }

  status(id: string): VmStatus {
    return this.vms.get(id)?.status ?? 'stopped';
  }

  /** The domain id (tests, debugging). */
  inspect(id: string): { domName: string; domid: number; status: VmStatus } | undefined {
    const vm = this.vms.get(id);
    return vm ? { domName: vm.domName, domid: vm.domid, status: vm.status } : undefined;
  }

  async snapshot(id: string, opts: SnapshotOptions): Promise<SnapshotJob> {
    const vm = this.get(id);
    if (vm.status !== 'running') throw new VnsnapError('ERR_STATE', `Xen VM ${id} is ${vm.status}; only a running VM is snapshotted`);
    if (vm.job) throw new VnsnapError('ERR_STATE', `Xen VM ${id} has a snapshot in progress`);
    await fsp.mkdir(this.workDir, { recursive: true });
    const job = opts.mode === 'precopy' ? new LiveCapture(this, vm, opts) : new SaveCheckpoint(this, vm, opts);
    vm.job = job;
    try {
      await job.begin();
    } catch (e) {
      vm.job = undefined;
      await job.abort().catch(() => undefined);
      throw e;
    }
    return job;
  }

  /** @internal jobs call back here */
  jobEnded(vm: XenVm, job: SnapshotJob): void {
    if (vm.job === job) vm.job = undefined;
  }

  /**
   * Domains of this driver between their suspend and the exit of their xl process. While any is,
   * no capture writes to the store: VMs of one VNE are cut together, and one VM's tail written
   * (and hashed) during another's final pass was pause for that other (bench:xen --vms 2).
   */
  private inPause = 0;
  private readonly quietWaiters: (() => void)[] = [];

  /** @internal */
  pauseBegan(): void {
    this.inPause++;
  }

  /** @internal */
  pauseEnded(): void {
    this.inPause = Math.max(0, this.inPause - 1);
    if (this.inPause === 0) for (const w of this.quietWaiters.splice(0)) w();
  }

  /** @internal resolves when no domain of this driver is in a capture's pause */
  quiet(): Promise<void> {
    if (this.inPause === 0) return Promise.resolve();
    return new Promise((r) => this.quietWaiters.push(r));
  }

  /** @internal */
  get xen(): XenHost {
    return this.host;
  }

  /** @internal */
  get dir(): string {
    return this.workDir;
  }

  /** @internal */
  receiver(sock: string): string {
    return this.receiverCommand(sock);
  }

  /** @internal */
  warn(msg: string): void {
    if (this.opts.logger) this.opts.logger.warn(msg);
    else if (this.opts.log) this.opts.log(msg);
    else process.stderr.write(`${msg}\n`);
  }

  /** Step timings and the like: to the logger or `log`, else nowhere. */
  info(msg: string): void {
    if (this.opts.logger) this.opts.logger.info(msg);
    else this.opts.log?.(msg);
  }

  /** @internal */
  get convergeCap(): number {
    return this.opts.convergeCapPercent ?? 10;
  }

  /** @internal */
  get readyFraction(): number {
    return this.opts.readyFraction ?? 0.9;
  }

  async restore(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<VmHandle> {
    if (this.vms.has(spec.id)) throw new VnsnapError('ERR_ALREADY_EXISTS', `Xen VM ${spec.id} exists`);
    const names = xenNames(spec.id, spec.macs.length);
    await fsp.mkdir(this.workDir, { recursive: true });
    let file: string;
    let tmp: string | undefined;
    if (store instanceof LocalDirStore) file = store.resolve(image.memory.path);
    else {
      tmp = path.join(this.workDir, `.restore-${randomBytes(6).toString('hex')}`);
      await fsp.writeFile(tmp, await store.get(image.memory.path));
      file = tmp;
    }
    let disk: DiskRef | undefined;
    const text = spec.driver.xen?.config;
    if (text) disk = xenConfig(text, names.domName, spec.macs, names.bridges).disk;
    if (image.disk) {
      if (!disk) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: the snapshot has a disk but the VM's config has no file-backed disk`);
      // The restored domain's config (inside the image) names the original disk path: put the
      // disk as of the cut back there.
      const src = store instanceof LocalDirStore ? store.resolve(image.disk.path) : undefined;
      if (src) await this.host.snapshotDisk('file', src, disk.path);
      else await fsp.writeFile(disk.path, await store.get(image.disk.path));
    }
    await this.host.destroy(names.domName).catch(() => undefined);
    const { ports, bridges } = await this.attachPorts(spec, ctx);
    let domid: number;
    try {
      domid = await this.host.restorePaused(file, names.domName);
    } catch (e) {
      await this.detach({ ports, bridges });
      throw e;
    } finally {
      if (tmp) await fsp.rm(tmp, { force: true });
    }
    ctx.log.info({ domain: names.domName, domid }, 'xen domain restored (paused)');
    const vm: XenVm = { spec, domName: names.domName, domid, status: 'paused', ports, bridges, ...(disk ? { disk } : {}) };
    this.vms.set(spec.id, vm);
    return { name: spec.name, ports };
  }

  async close(): Promise<void> {
    for (const id of [...this.vms.keys()]) await this.stop(id).catch(() => undefined);
  }
}

/** Copy a local file into a store artefact (SHA-256 while writing). */
async function fileToStore(src: string, w: ArtefactWriter): Promise<StoredArtefact> {
  const h = await fsp.open(src, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const { bytesRead } = await h.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      await w.write(buf.subarray(0, bytesRead));
    }
  } finally {
    await h.close();
  }
  return w.commit();
}

abstract class XenJob implements SnapshotJob {
  readonly ready: Promise<void>;
  protected setReady!: () => void;
  protected failReady!: (e: Error) => void;
  protected aborted = false;
  protected cutCalled = false;
  protected memory: StoredArtefact | undefined;
  protected diskCopy: string | undefined;
  protected durablePromise: Promise<VmImage> | undefined;
  protected committed: StoredArtefact[] = [];

  constructor(
    protected readonly driver: XenDriver,
    protected readonly xvm: XenVm,
    protected readonly opts: SnapshotOptions,
  ) {
    this.ready = new Promise<void>((res, rej) => {
      this.setReady = res;
      this.failReady = rej;
    });
    this.ready.catch(() => undefined);
  }

  abstract readonly mode: SnapshotModeName;
  abstract begin(): Promise<void>;
  abstract cut(atPause: () => Promise<void>): Promise<CutReport>;
  abstract abort(): Promise<void>;

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

  durable(): Promise<VmImage> {
    if (!this.durablePromise) return Promise.reject(new VnsnapError('ERR_STATE', `no cut was taken of ${this.vm}`));
    return this.durablePromise;
  }

  protected async deletePartials(): Promise<void> {
    for (const a of this.committed) await this.opts.store.delete(a.path).catch(() => undefined);
    this.committed = [];
    if (this.diskCopy) await fsp.rm(this.diskCopy, { force: true });
  }

  protected report(suspendedUs: number, hookStartUs: number, hookEndUs: number, resumedUs: number, copyPhase?: PhaseSpan): CutReport {
    const phases: PhaseSpan[] = [{ phase: 'PHASE_PAUSE', startUnixUs: suspendedUs, endUnixUs: resumedUs }];
    if (copyPhase) phases.push(copyPhase);
    void hookStartUs;
    void hookEndUs;
    return { pauseMs: (resumedUs - suspendedUs) / 1000, cutUnixUs: suspendedUs, resumeUnixUs: resumedUs, phases };
  }
}

/** Precopy: the live-migration stream captured locally (see the module comment). */
class LiveCapture extends XenJob {
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
        this.failReady(e);
        this.failEnd(e);
      }
    });
  }

  private onConnection(c: net.Socket): void {
    if (this.conn) {
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
        this.setReady();
        this.setEnd();
        return;
      }
      if (!this.holding && !this.cutCalled && this.isReady()) {
        this.holding = true;
        this.setReady();
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
          await this.driver.quiet();
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
    this.failReady(e);
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
    this.driver.pauseBegan();
    const pagesAtSuspend = this.parser.stats.pages;
    this.readOn();
    if (fromStream) this.driver.warn(`xen: the suspend of ${this.xvm.domName} was not seen in xenstore; cut taken at the end of the memory copy (the pause reported is short by the final pass)`);
    this.xvm.status = 'paused';
    const hookStart = nowUs();
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
    this.driver.pauseEnded();
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
    const copyPhase: PhaseSpan = { phase: 'PHASE_COPY', startUnixUs: hookEnd, endUnixUs: resumedUs };
    this.durablePromise = (async (): Promise<VmImage> => {
      try {
        await this.flushed();
        this.driver.info(`xen: image of ${this.xvm.domName} written ${ms(nowUs())} ms after the suspend`);
        const memory = await (this.writer as ArtefactWriter).commit();
        this.committed.push(memory);
        const disk = await this.persistDisk();
        return { memory, ...(disk ? { disk } : {}) };
      } catch (e) {
        await this.writer?.abort().catch(() => undefined);
        await this.deletePartials();
        throw e;
      } finally {
        this.driver.jobEnded(this.xvm, this);
      }
    })();
    this.durablePromise.catch(() => undefined);
    return this.report(suspendedUs, hookStart, hookEnd, resumedUs, copyPhase);
  }

  async abort(): Promise<void> {
    if (this.aborted) return;
    this.aborted = true;
    this.failReady(new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted'));
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
    await this.durablePromise?.catch(() => undefined);
    await this.writer?.abort();
    await this.deletePartials();
    if (this.xvm.status === 'paused' && this.cutCalled) this.xvm.status = 'running';
    this.driver.jobEnded(this.xvm, this);
  }
}

/** Background mode on Xen: stop-and-copy with `xl save -c` (the pause is the whole copy). */
class SaveCheckpoint extends XenJob {
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
    this.setReady();
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
    this.driver.pauseBegan();
    const hookStart = nowUs();
    let hookError: unknown;
    try {
      await atPause();
      await this.copyDisk();
    } catch (e) {
      hookError = e;
    }
    const hookEnd = nowUs();
    const ex = await proc.exited;
    this.driver.pauseEnded();
    watch.close();
    this.xvm.status = 'running';
    if (hookError !== undefined || ex.code !== 0) {
      await fsp.rm(this.file, { force: true });
      await this.deletePartials();
      this.driver.jobEnded(this.xvm, this);
      if (hookError !== undefined) throw hookError;
      throw new VnsnapError('ERR_DRIVER', `xl save -c ${this.xvm.domName} failed (exit ${ex.code}): ${ex.output.trim().split('\n').slice(-2).join(' | ')}`);
    }
    this.durablePromise = (async (): Promise<VmImage> => {
      try {
        await this.driver.quiet();
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
        return { memory, ...(disk ? { disk } : {}) };
      } finally {
        await fsp.rm(this.file, { force: true });
        this.driver.jobEnded(this.xvm, this);
      }
    })();
    this.durablePromise.catch(() => undefined);
    return this.report(suspendedUs, hookStart, hookEnd, ex.exitUnixUs, { phase: 'PHASE_COPY', startUnixUs: suspendedUs, endUnixUs: ex.exitUnixUs });
  }

  async abort(): Promise<void> {
    if (this.aborted) return;
    this.aborted = true;
    this.watch?.close();
    if (this.proc) await this.proc.exited;
    await this.durablePromise?.catch(() => undefined);
    await this.deletePartials();
    if (this.file) await fsp.rm(this.file, { force: true });
    this.driver.jobEnded(this.xvm, this);
  }
}

/** Whether this process can drive Xen (dom0 with the toolstack). */
export function xenAvailable(): boolean {
  return fs.existsSync('/proc/xen/privcmd') || fs.existsSync('/dev/xen/privcmd');
}
