/**
 * The Xen driver (docs/xen.md): runs PV domains through the `xl` toolstack in dom0 and snapshots
 * them without modifying Xen.
 *
 * Parts: network.ts (names, the xl config, the vNICs' bridges and veth pairs), live-capture.ts (precopy),
 * save.ts (background), job-base.ts (what both jobs share), xl.ts (the toolstack), stream.ts (the
 * migration stream reader), converge.ts (the CPU cap), relay.ts (the Node receiver).
 *
 * Snapshot, precopy mode: a live capture of `xl migrate` (live-capture.ts). Background mode:
 * `xl save -c` (save.ts). Chosen explicitly by the snapshot mode.
 * Restore: `xl restore -p` (paused, ports on the same bridges), resume = `xl unpause`.
 * Domains outlive the agent: release() leaves them (and their bridges) running, a later agent
 * adopts them by name and domid and re-opens the switch's sockets on the veth pairs in the bridges (adopt.ts).
 *
 * Specs: the given xl configuration is parsed and checked against the allow-list of
 * proto/specs/xen-config.ts, its kernel, ramdisk and disk targets resolved under the agent's
 * image roots (../image-root.ts), all before a port, a file or an xl command; the config the
 * driver writes is rebuilt from what was checked, with the resolved paths (network.ts). A
 * restore checks the same, and writes the disk back only to a target under the roots.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VnsnapError } from '../../../proto/core/errors';
import type { Logger } from '../../../proto/core/log';
import type { Port } from '../../../switch/port/port';
import { LocalDirStore, type SnapshotStore } from '../../../proto/store/local-dir';
import { builtProgram } from '../exec';
import { streamToFile } from '../image-stream';
import type { HypervisorDriver, RestoreImage, SnapshotJob, SnapshotOptions, VmHandle, VmStartContext, VmStartSpec, VmStatus } from '../driver';
import { PauseQuiet, type XenJobHost, type XenVm } from './job-base';
import { LiveCapture } from './live-capture';
import { checkXenConfig } from '../../../proto/specs/xen-config';
import { DEFAULT_IMAGE_ROOTS, ImageRoots } from '../image-root';
import { attachPorts, detachPorts, xenConfig, xenNames, type DiskRef } from './network';
import { SaveCheckpoint } from './save';
import { adoptXenVm, xenSavedState, type XenSavedState } from './adopt';
import { XlHost, type XenHost } from './xl';

export { xenConfig, xenNames } from './network';

export interface XenDriverOptions {
  host?: XenHost;
  /** Configs, receiver sockets, temporary copies (default /var/lib/vnsnap/xen). */
  workDir?: string;
  /** The receiver command xl runs for a live capture, given the driver's socket path. */
  receiverCommand?: (socketPath: string) => string;
  /** Open the switch's side of a vNIC on the switch's end of its veth pair (default: network.ts openVnicPort). */
  openPort?: (portName: string, ifname: string) => Port;
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
  /** Directories kernels, ramdisks and disks must be under (default DEFAULT_IMAGE_ROOTS; ../image-root.ts). */
  imageRoots?: readonly string[];
}

/**
 * The C relay built with the native addon (agent/native/xen-relay.c), or null when it was not
 * built: then the Node relay (relay.ts) is used, which works but lengthens the pause.
 */
export function nativeRelayPath(): string | null {
  return builtProgram('vnsnap-xen-relay');
}

export class XenDriver implements HypervisorDriver, XenJobHost {
  readonly kind = 'xen' as const;
  private readonly host: XenHost;
  private readonly workDir: string;
  private readonly vms = new Map<string, XenVm>();
  private readonly roots: ImageRoots;

  constructor(private readonly opts: XenDriverOptions = {}) {
    this.host = opts.host ?? new XlHost();
    this.workDir = opts.workDir ?? '/var/lib/vnsnap/xen';
    this.roots = new ImageRoots(opts.imageRoots ?? DEFAULT_IMAGE_ROOTS);
  }

  /**
   * The VM's config checked and written with resolved images (module comment). `restore`: disk
   * targets may not exist yet (the restore writes them), kernel and ramdisk are not read.
   */
  private async config(spec: VmStartSpec, domName: string, restore: boolean): Promise<{ config: string; disk?: DiskRef }> {
    const text = spec.driver.xen?.config;
    if (!text) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: the xen driver needs an xl config (driver.xen.config)`);
    const checked = checkXenConfig(`VM ${spec.name}: `, text);
    const f = `VM ${spec.name}: xen.config`;
    const kernel = checked.kernel && !restore ? await this.roots.resolve(`${f} kernel`, checked.kernel) : checked.kernel;
    const ramdisk = checked.ramdisk && !restore ? await this.roots.resolve(`${f} ramdisk`, checked.ramdisk) : checked.ramdisk;
    const disks: string[] = [];
    for (const [i, d] of checked.disks.entries()) {
      const field = `${f} disk[${i}] target`;
      disks.push(d.target === '' ? '' : restore ? await this.roots.resolveTarget(field, d.target) : await this.roots.resolve(field, d.target));
    }
    const names = xenNames(spec.id, spec.macs.length);
    return xenConfig(checked, { ...(kernel ? { kernel } : {}), ...(ramdisk ? { ramdisk } : {}), disks }, domName, spec.macs, names.bridges);
  }

  private receiverCommand(sock: string): string {
    if (this.opts.receiverCommand) return this.opts.receiverCommand(sock);
    // exec: no shell between xl and the relay, so the relay's death is the receiver's exit.
    const native = nativeRelayPath();
    if (native) return `exec '${native}' '${sock}'`;
    return `exec '${process.execPath}' '${path.join(__dirname, 'relay.js')}' '${sock}'`;
  }

  private get(id: string): XenVm {
    const vm = this.vms.get(id);
    if (!vm) throw new VnsnapError('ERR_NOT_FOUND', `no Xen VM ${id}`);
    return vm;
  }

  private attachPorts(spec: VmStartSpec, ctx: VmStartContext): Promise<{ ports: Port[]; bridges: string[] }> {
    return attachPorts(this.host, spec, ctx, this.opts.openPort);
  }

  private detach(vm: { ports: Port[]; bridges: string[] }): Promise<void> {
    return detachPorts(this.host, vm);
  }

  async start(spec: VmStartSpec, ctx: VmStartContext): Promise<VmHandle> {
    if (this.vms.has(spec.id)) throw new VnsnapError('ERR_ALREADY_EXISTS', `Xen VM ${spec.id} exists`);
    const names = xenNames(spec.id, spec.macs.length);
    const { config, disk } = await this.config(spec, names.domName, false);
    await fsp.mkdir(this.workDir, { recursive: true });
    const file = path.join(this.workDir, `${names.domName}.cfg`);
    await fsp.writeFile(file, config);
    const vm = await this.bringUp(spec, ctx, names.domName, 'running', disk, () => this.host.create(file, names.domName));
    ctx.log.info({ domain: names.domName, domid: vm.domid, bridges: vm.bridges }, 'xen domain created');
    return { name: spec.name, ports: vm.ports };
  }

  /**
   * Destroy a leftover domain of this name (a crashed agent's), attach the ports, make the domain
   * with `make` (the ports are detached again if it fails) and hold the VM.
   */
  private async bringUp(spec: VmStartSpec, ctx: VmStartContext, domName: string, status: VmStatus, disk: DiskRef | undefined, make: () => Promise<number>): Promise<XenVm> {
    await this.host.destroy(domName).catch(() => undefined);
    const { ports, bridges } = await this.attachPorts(spec, ctx);
    let domid: number;
    try {
      domid = await make();
    } catch (e) {
      await this.detach({ ports, bridges });
      throw e;
    }
    const vm: XenVm = { spec, domName, domid, status, ports, bridges, ...(disk ? { disk } : {}) };
    this.vms.set(spec.id, vm);
    return vm;
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

  /** @internal domains of this driver in a capture's pause (job-base.ts) */
  readonly quiet = new PauseQuiet();

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
    const disk = spec.driver.xen?.config ? (await this.config(spec, names.domName, true)).disk : undefined;
    await fsp.mkdir(this.workDir, { recursive: true });
    // `xl restore` reads a file: the image streamed into a temporary one (checked chunk by chunk
    // by the store), removed once the domain is up or the restore failed.
    const file = path.join(this.workDir, `.restore-${randomBytes(6).toString('hex')}`);
    await streamToFile(store.read(image.memory.path), file);
    try {
      return await this.restoreFrom(spec, image, store, ctx, names, disk, file);
    } finally {
      await fsp.rm(file, { force: true });
    }
  }

  private async restoreFrom(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext, names: ReturnType<typeof xenNames>, disk: DiskRef | undefined, file: string): Promise<VmHandle> {
    // A Xen guest's disk is one whole-disk artefact (docs/xen.md).
    const wholeDisk = image.disks[0];
    if (wholeDisk) {
      if (!disk) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: the snapshot has a disk but the VM's config has no file-backed disk`);
      // The restored domain's config (inside the image) names the original disk path: put the
      // disk as of the cut back there.
      const src = store instanceof LocalDirStore ? store.resolve(wholeDisk.path) : undefined;
      if (src) await this.host.snapshotDisk('file', src, disk.path);
      else await streamToFile(store.read(wholeDisk.path), disk.path);
    }
    const vm = await this.bringUp(spec, ctx, names.domName, 'paused', disk, () => this.host.restorePaused(file, names.domName));
    ctx.log.info({ domain: names.domName, domid: vm.domid }, 'xen domain restored (paused)');
    return { name: spec.name, ports: vm.ports };
  }

  // ── domains that outlive the agent (adopt.ts) ──

  persistent(id: string): { state: XenSavedState } | undefined {
    const vm = this.vms.get(id);
    return vm && vm.status !== 'stopped' ? { state: xenSavedState(vm) } : undefined;
  }

  adopt(spec: VmStartSpec, saved: { state: unknown }, ctx: VmStartContext): Promise<VmHandle & { resumed: boolean }> {
    return adoptXenVm({ host: this.host, has: (id) => this.vms.has(id), add: (id, vm) => void this.vms.set(id, vm), ...(this.opts.openPort ? { openPort: this.opts.openPort } : {}) }, spec, saved.state, ctx);
  }

  /** Forget the domain without destroying it: close the switch's sockets (the bridges, veth pairs and vifs stay). */
  async release(id: string): Promise<void> {
    const vm = this.vms.get(id);
    if (!vm) return;
    this.vms.delete(id);
    for (const p of vm.ports) p.close();
  }

  async close(): Promise<void> {
    for (const id of [...this.vms.keys()]) await this.stop(id).catch(() => undefined);
  }
}

/** Whether this process can drive Xen (dom0 with the toolstack). */
export function xenAvailable(): boolean {
  return fs.existsSync('/proc/xen/privcmd') || fs.existsSync('/dev/xen/privcmd');
}
