/**
 * The QEMU hypervisor driver (DESIGN.md "Hypervisor drivers", docs/qemu.md): one QEMU process
 * per VM, driven over QMP (qmp.ts), with the command line of cmdline.ts.
 *
 * Parts: process.ts (one QEMU process, its instance directory, the options), migration.ts (a
 * snapshot job: the migration stream and the cut), disk-overlay.ts (the qcow2 chain of a
 * snapshot), qmp.ts (the monitor client), cmdline.ts (the command line, accelerator, version).
 *
 * NICs: by default each vNIC is QEMU's `-netdev stream` connected to a StreamPort the driver
 * listens on (no kernel device); `nic: 'tap'` makes a TAP (vnet_hdr off) that QEMU opens and
 * the switch reads with a packet socket; `nic: 'tap-vnet'` the same with vnet_hdr=on and the
 * packet socket with PACKET_VNET_HDR, the switch writing through a veth pair with GRO in front
 * of the TAP so super-frames reach the guest whole (vm-veth.ts; offloads end to end,
 * docs/nic-offloads.md). docs/qemu.md has the measurements behind the default.
 *
 * Memory: by default a snapshot's memory is QEMU's own migration stream (migration.ts: background
 * snapshot or pre-copy). With `extra.memory=tracked` the guest RAM is a shared memfd, QEMU runs
 * with the agent's preloaded library and the agent tracks the guest's writes from the start
 * (ram-track.ts): a snapshot saves the blocks written since the previous one and the device state
 * alone (tracked-job.ts), a restore writes the RAM straight into the new QEMU (tracked-load.ts);
 * docs/incremental-memory.md.
 *
 * Specs: before anything is made or spawned, start and restore check the spec (spec-check.ts:
 * the extra allow-list, every image resolved under the agent's image roots, the disk's backing
 * chain) and from then on use only the resolved paths.
 *
 * Restore: the same command line + -S -incoming defer, the disk on a new overlay over the
 * snapshot's layers rebuilt as a chain (disk-chain.ts), the memory image streamed from the store
 * into QEMU's incoming migration (incoming.ts); the VM is left paused; resume = cont. Over a
 * running VM: the same load beside it, in a second process, then a swap (restore-beside.ts).
 *
 * Disks (docs/qemu.md "Where disks live"): each VM's qcow2 chain is in its own directory under
 * disksDir (../disk-dir.ts), not in the tmpfs instance directory. stop() quits QEMU cleanly (QMP
 * quit: its caches flushed) and keeps that directory, marked with the chain's top, unless told to
 * discard it; start() with keptDisk boots from the kept top (its chain checked: upper layers in
 * the VM's own directory, the base the spec's image inside the image roots); a fresh start or a
 * restore that finds a directory moves it aside, never deletes it.
 */
import { randomBytes } from 'node:crypto';
import { OVERLAY_CREATE_OPTIONS } from './overlay-format';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { describeError, isVnsnapError, VnsnapError } from '../../../proto/core/errors';
import type { DriverSpec__Output } from '../../../proto/gen/vnsnap/v1/DriverSpec';
import type { QemuDriverSpec__Output } from '../../../proto/gen/vnsnap/v1/QemuDriverSpec';
import { silentLogger, type Logger } from '../../../proto/core/log';
import type { Port } from '../../../switch/port/port';
import { StreamPort } from '../../../switch/port/stream-port';
import { sha256File, type SnapshotStore } from '../../../proto/store/local-dir';
import type { BesideRestore, HypervisorDriver, IncomingMigration, MigrationProgress, MigrationTargets, MigrationTls, OutgoingMigration, RestoreImage, SnapshotJob, SnapshotOptions, StopOptions, StopReport, VmHandle, VmStartContext, VmStartSpec, VmStatus } from '../driver';
import { DiskDirs } from '../disk-dir';
import { exec } from '../exec';
import { DEFAULT_IMAGE_ROOTS, ImageRoots } from '../image-root';
import { NIC_MODES, probeAccel, qemuCmdline, qemuVersion, readBackingChain, tcgRamPadKib, vmFiles, type Accel, type NicArg, type NicMode } from './cmdline';
import { QemuJob } from './migration';
import { RamWriteTracker, trackedRamEnv } from './ram-track';
import { MEMORY_TRACKED, TrackedJob, trackedBasePath, trackedRamPadKib } from './tracked-job';
import { isTrackedImage, loadTrackedMemory } from './tracked-load';
import { hasLayers, restoreDisk } from './disk-chain';
import { checkImagePath } from '../../../proto/specs/image-path';
import { memoryMode } from '../../../proto/specs/qemu-extra';
import { recordNicMode, restoreNicMode } from './nic-backend';
import { checkBackingChain, checkQemuSpec } from './spec-check';
import { DEFAULT_HOLD, HOLD_ENV, parseHold } from './precopy-hold';
import { MiB, qemuImg, QemuVm, type QemuDriverOptions, type QemuOptions } from './process';
import { loadMemory } from './incoming';
import { BESIDE_OVERHEAD_BYTES, restoreBeside } from './restore-beside';
import { OutgoingMigration as QemuOutgoing, prepareIncoming, resumeIncoming } from './live-migration';
import { adoptQemuVm, type AdoptionParts, type QemuSavedState } from './adopt';
import { cleanDriverLeftovers, tapTag } from './leftovers';
import { dataPathPrefix } from './tap-bpf';
import { openTapPort, removeVmVeth } from './vm-veth';
import { DEFAULT_HOLD_BYTES } from './page-order';
import type { ProcessIdentity } from '../../vm-state';

export type { QemuDriverOptions } from './process';

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
  private readonly o: QemuOptions;
  private readonly log: Logger;
  readonly accel: Accel;
  readonly accelReason: string;
  private serial = 0;
  private padLogged = false;
  private readonly roots: ImageRoots;
  /** Spawn each QEMU in a transient systemd scope (systemd is PID 1, or the option says so). */
  private readonly useScope: boolean;
  private readonly disks: DiskDirs;
  /** Restores loaded beside a running instance, by id, until swapped or discarded (restore-beside.ts). */
  private readonly besides = new Map<string, BesideRestore>();
  /** The NIC mode of new VMs whose spec names none (the agent sets it at start: nic-backend.ts defaultNicMode). */
  set defaultNic(mode: NicMode) {
    this.o.nic = mode;
  }

  /** The agent's in-kernel data path prefix (tap-bpf.ts): one per work directory. */
  get dataPathPrefix(): string {
    return dataPathPrefix(this.o.workDir);
  }

  constructor(opts: QemuDriverOptions = {}) {
    this.o = {
      workDir: opts.workDir ?? '/run/vnsnap/qemu',
      disksDir: opts.disksDir ?? (opts.workDir !== undefined ? `${opts.workDir.replace(/\/+$/, '')}-disks` : '/var/lib/vnsnap/disks'),
      prefix: opts.prefix ?? 'vnqm',
      qemuBinary: opts.qemuBinary ?? 'qemu-system-x86_64',
      qemuImg: opts.qemuImg ?? 'qemu-img',
      accel: opts.accel ?? 'auto',
      nic: opts.nic ?? 'stream',
      readyBytes: opts.readyBytes ?? 16 * MiB,
      precopyHold: opts.precopyHold ?? 'bandwidth',
      precopyBandwidth: opts.precopyBandwidth ?? 1024 * MiB,
      holdBandwidth: opts.holdBandwidth ?? parseHold(process.env[HOLD_ENV]) ?? DEFAULT_HOLD,
      cutDowntimeMs: opts.cutDowntimeMs ?? ((opts.precopyHold ?? 'bandwidth') === 'bandwidth' ? 30 : 100),
      cutEscalateMs: opts.cutEscalateMs ?? 1500,
      progressMs: opts.progressMs ?? 100,
      streamBufferBytes: opts.streamBufferBytes ?? 32 * MiB,
      pageOrderHoldBytes: opts.pageOrderHoldBytes ?? DEFAULT_HOLD_BYTES,
      startTimeoutMs: opts.startTimeoutMs ?? 15_000,
      imageRoots: opts.imageRoots ?? DEFAULT_IMAGE_ROOTS,
      scope: opts.scope ?? 'auto',
    };
    this.useScope = this.o.scope === 'always' || (this.o.scope === 'auto' && fs.existsSync('/run/systemd/system'));
    this.roots = new ImageRoots(this.o.imageRoots);
    this.log = opts.logger ?? silentLogger();
    this.disks = new DiskDirs(this.o.disksDir, this.log);
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

  /** `qemu-img ARGS` with the configured binary. */
  qemuImg(args: string[]): Promise<string> {
    return qemuImg(this.o.qemuImg, args);
  }

  /**
   * The spec checked (spec-check.ts), with its images resolved under the image roots. A restore
   * from disk layers takes the base from the store (disk-chain.ts): its disk path is only shape-checked.
   */
  private async qspecOf(spec: VmStartSpec, baseFromStore = false): Promise<QemuDriverSpec__Output> {
    const q = spec.driver.qemu;
    if (!q) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: the qemu driver needs a qemu driver spec`);
    if (!q.kernel && !q.disk) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: the qemu spec needs a kernel or a disk`);
    const given = { memoryMib: q.memoryMib ?? 0, cpus: q.cpus ?? 0, kernel: q.kernel ?? '', initrd: q.initrd ?? '', append: q.append ?? '', disk: q.disk ?? '', extra: q.extra ?? {} };
    if (baseFromStore && given.disk) {
      checkImagePath(`VM ${spec.name}: qemu.disk`, given.disk);
      return { ...(await checkQemuSpec(spec.name, { ...given, disk: '' }, this.roots, (args) => this.qemuImg(args))), disk: given.disk };
    }
    return checkQemuSpec(spec.name, given, this.roots, (args) => this.qemuImg(args));
  }

  private accelFor(q: QemuDriverSpec__Output): Accel {
    const a = q.extra.accel;
    if (a === 'kvm' || a === 'tcg') return a;
    return this.accel;
  }

  private nicFor(q: QemuDriverSpec__Output): NicMode {
    const n = q.extra.nic;
    if (n === undefined) return this.o.nic;
    if ((NIC_MODES as readonly string[]).includes(n)) return n as NicMode;
    throw new VnsnapError('ERR_INVALID_ARGUMENT', `qemu extra.nic must be ${NIC_MODES.join(', ')}, got "${n}"`);
  }

  /**
   * Make the instance directory, the disk directory (`kept`: the kept one, checked; else a fresh
   * one), the ports, the NIC arguments; a failure undoes everything (but never deletes a kept disk).
   */
  private async prepare(spec: VmStartSpec, ctx: VmStartContext, kept: boolean, image?: RestoreImage, beside = false): Promise<{ vm: QemuVm; nics: NicArg[]; keptTop?: string }> {
    const checked = await this.qspecOf(spec, image !== undefined && hasLayers(image.disks));
    // The NIC mode: a restore's is the one its image was saved with (nic-backend.ts); the VM's
    // spec records it, so inspect(), persistent() and a later snapshot see the same.
    const mode = image ? restoreNicMode(spec.name, checked.extra.nic === undefined ? undefined : this.nicFor(checked), this.o.nic, image.memory) : this.nicFor(checked);
    // A tracked image loads only into tracked RAM (tracked-load.ts): the restored VM keeps it.
    const memory: Record<string, string> = image && isTrackedImage(image.memory) ? { memory: MEMORY_TRACKED } : {};
    const qspec: QemuDriverSpec__Output = { ...checked, extra: { ...checked.extra, nic: mode, ...memory } };
    const existing = this.vms.get(spec.id);
    if (existing && existing.status !== 'stopped' && !beside) throw new VnsnapError('ERR_ALREADY_EXISTS', `QEMU VM ${spec.id} is already ${existing.status}`);
    if (ctx.portNames.length !== spec.macs.length) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: ${spec.macs.length} MACs but ${ctx.portNames.length} port names`);
    const diskDir = this.disks.dirOf(spec.vne, spec.name);
    let keptTop: string | undefined;
    if (qspec.disk && kept) {
      keptTop = await this.disks.keptTop(spec.vne, spec.name);
      await checkBackingChain(`VM ${spec.name}: the kept disk`, keptTop, this.roots, (args) => this.qemuImg(args), { dir: diskDir, base: qspec.disk });
    } else if (qspec.disk) await this.disks.fresh(spec.vne, spec.name);
    const safe = spec.id.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 40);
    const dir = path.join(this.o.workDir, `${this.o.prefix}-${safe}-${process.pid}-${++this.serial}`);
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const files = vmFiles(dir, diskDir);
    if (Buffer.byteLength(files.netSock(9)) > 100) throw new VnsnapError('ERR_CONFIG', `QEMU work directory ${this.o.workDir} is too long for unix socket paths`);
    const ports: Port[] = [];
    const nics: NicArg[] = [];
    const vm = new QemuVm(spec, qspec, files, ports, ctx.log.child({ driver: 'qemu' }));
    try {
      const tag = tapTag(dir);
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
          await exec('ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap'], { timeoutMs: 60_000 });
          vm.taps.push(tap);
          await exec('ip', ['link', 'set', tap, 'up'], { timeoutMs: 60_000 });
          ports.push(await openTapPort(name, tap, mode, dataPathPrefix(this.o.workDir)));
          nics.push({ mode, mac, target: tap });
        }
      }
    } catch (e) {
      await this.cleanup(vm, !keptTop);
      throw e;
    }
    if (keptTop) vm.topFile = keptTop;
    return { vm, nics, ...(keptTop ? { keptTop } : {}) };
  }

  /**
   * Stop QEMU (cleanly: kill() quits first), close the ports, remove the TAPs and the instance
   * directory; the disk directory too when `discardDisk`. Returns whether QEMU had to be killed.
   */
  private async cleanup(vm: QemuVm, discardDisk: boolean): Promise<boolean> {
    vm.tracker?.close();
    vm.tracker = undefined;
    const killed = await vm.kill();
    for (const p of vm.ports) {
      try {
        p.close();
      } catch {
        /* closed */
      }
    }
    for (const t of vm.taps) {
      await removeVmVeth(t).catch(() => undefined);
      await exec('ip', ['link', 'del', t], { timeoutMs: 60_000 }).catch(() => undefined); // gone already
    }
    vm.taps = [];
    // Retries: a writer of the directory (a memory stream's cat) may still be exiting.
    await fsp.rm(vm.files.dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    if (discardDisk && vm.hasDisk) await this.disks.discard(vm.spec.vne, vm.spec.name);
    return killed;
  }

  /** The transient scope's unit name (one per instance), when QEMU runs in one. */
  private scopeUnit(vm: QemuVm): string | undefined {
    return this.useScope ? `vnsnap-${path.basename(vm.files.dir)}` : undefined;
  }

  private async args(vm: QemuVm, nics: NicArg[], incoming: boolean): Promise<string[]> {
    const accel = this.accelFor(vm.qspec);
    vm.ramPadKib = tcgRamPadKib(accel, await qemuVersion(this.o.qemuBinary));
    // Tracked RAM is kept in whole blocks (tracked-job.ts): the padded size rounded up to one.
    if (this.isTracked(vm) && vm.ramPadKib) vm.ramPadKib = trackedRamPadKib(vm.qspec.memoryMib || 256, vm.ramPadKib);
    if (vm.ramPadKib && !this.padLogged) {
      this.padLogged = true;
      this.log.info({ padKib: vm.ramPadKib }, 'TCG on QEMU < 9.0: guest RAM padded so pre-copy dirty tracking is exact (docs/qemu.md)');
    }
    const backing = vm.hasDisk ? await readBackingChain(vm.topFile, (a) => this.qemuImg(a)) : undefined;
    return qemuCmdline({ spec: vm.qspec, files: vm.files, accel, nics, disk: vm.hasDisk, diskFile: vm.topFile, incoming, ramPadKib: vm.ramPadKib, backing });
  }

  /** Tracked memory (qemu extra memory=tracked; docs/incremental-memory.md). */
  private isTracked(vm: QemuVm): boolean {
    return memoryMode(vm.qspec.extra) === 'tracked';
  }

  /** QEMU's own environment: the preloaded library of tracked memory (ram-track.ts). */
  private qemuEnv(vm: QemuVm): Record<string, string> {
    return this.isTracked(vm) ? trackedRamEnv() : {};
  }

  /** Start tracking the guest RAM's writes of a tracked VM (a kernel without the feature: the VM does not start). */
  private track(vm: QemuVm): void {
    if (!this.isTracked(vm) || vm.tracker) return;
    try {
      vm.tracker = RamWriteTracker.start(vm.pid as number);
    } catch (e) {
      throw new VnsnapError(isVnsnapError(e) ? e.code : 'ERR_DRIVER', `VM ${vm.spec.name} asks for tracked memory: ${describeError(e)} (start it with qemu extra memory=migration)`, { cause: e });
    }
  }

  async start(spec: VmStartSpec, ctx: VmStartContext): Promise<VmHandle> {
    const { vm, nics, keptTop } = await this.prepare(spec, ctx, spec.keptDisk === true);
    try {
      if (vm.hasDisk && !keptTop) await this.qemuImg(['create', '-q', '-f', 'qcow2', ...OVERLAY_CREATE_OPTIONS, '-b', vm.qspec.disk, '-F', 'qcow2', vm.files.disk0]);
      await vm.spawn(this.o.qemuBinary, await this.args(vm, nics, false), this.o.startTimeoutMs, this.scopeUnit(vm), this.qemuEnv(vm));
      this.track(vm);
      await vm.refreshStatus();
      if (vm.status !== 'running') await vm.q().execute('cont');
      await vm.refreshStatus();
    } catch (e) {
      await this.cleanup(vm, !keptTop);
      throw e;
    }
    this.vms.set(spec.id, vm);
    vm.log.info({ pid: vm.pid, dir: vm.files.dir, disk: vm.hasDisk ? vm.topFile : undefined, kept: !!keptTop, accel: this.accelFor(vm.qspec) }, keptTop ? 'QEMU VM started from its kept disk' : 'QEMU VM started');
    return { name: spec.name, ports: vm.ports };
  }

  /**
   * Stop the VM (QMP quit, SIGKILL only if it does not exit in time) and keep its disk directory,
   * marked with the chain's top, unless opts.discardDisk (then it is deleted). A VM adopted from
   * an agent that kept disks in the instance directory has nothing to keep.
   */
  async stop(id: string, opts: StopOptions = {}): Promise<StopReport> {
    await this.besides.get(id)?.discard(); // a copy loading beside goes first: the VM's disk back in place
    const vm = this.vms.get(id);
    if (!vm) return opts.discardDisk ? this.discardUnknown(id) : {};
    this.vms.delete(id);
    await vm.job?.abort().catch(() => undefined);
    const { vne, name } = vm.spec;
    const ownDisk = vm.hasDisk && path.dirname(vm.topFile) === this.disks.dirOf(vne, name);
    const killed = await this.cleanup(vm, opts.discardDisk === true && ownDisk);
    await this.dropTrackedBase(vm);
    const report: StopReport = killed ? { killed } : {};
    if (!ownDisk) return report;
    if (opts.discardDisk) {
      const dir = this.disks.dirOf(vne, name);
      vm.log.info({ dir }, 'QEMU VM stopped; its disk discarded');
      return { ...report, discardedPath: dir };
    }
    const kept = await this.disks.markKept(vne, name, vm.topFile);
    vm.log.info({ dir: kept.dir, top: vm.topFile, bytes: kept.bytes, killed }, 'QEMU VM stopped; its disk kept');
    return { ...report, diskPath: kept.dir, diskBytes: kept.bytes };
  }

  /**
   * A stopped VM's tracked base image leaves the store (a new instance starts with a full
   * capture). A base adopted from a state record has no store until a snapshot job names the
   * agent's (tracked-job.ts): stopped before that, it stays in the store under its path, and the
   * VM's next tracked capture there replaces it.
   */
  private async dropTrackedBase(vm: QemuVm): Promise<void> {
    const base = vm.trackedBase;
    vm.trackedBase = undefined;
    if (!base) return;
    if (!base.store) {
      vm.log.info({ path: base.path }, 'the tracked memory base adopted from the state record stays in the store (no snapshot since the adoption named the store)');
      return;
    }
    await base.store.delete(base.path).catch((e) => vm.log.warn({ path: base.path, err: describeError(e) }, 'could not delete the tracked memory base'));
  }

  /** StopVm(discard) of a VM this driver does not run: its id is "<vne>/<vm>" (the agent's key). */
  private async discardUnknown(id: string): Promise<StopReport> {
    const i = id.indexOf('/');
    if (i <= 0) return {};
    const gone = await this.disks.discard(id.slice(0, i), id.slice(i + 1));
    return gone ? { discardedPath: gone } : {};
  }

  async discardDisk(vne: string, vm: string): Promise<string | undefined> {
    const running = [...this.vms.values()].find((v) => v.spec.vne === vne && v.spec.name === vm && !v.exited);
    if (running) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${vm} of VNE ${vne} is running: stop it before discarding its disk`);
    return this.disks.discard(vne, vm);
  }

  diskPath(id: string): string | undefined {
    const vm = this.vms.get(id);
    return vm?.hasDisk ? path.dirname(vm.topFile) : undefined;
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
    if (this.besides.has(id)) throw new VnsnapError('ERR_STATE', `QEMU VM ${id} is being replaced by a restore loading beside it`);
    if (this.isTracked(vm) && !vm.tracker) throw new VnsnapError('ERR_FAILED_PRECONDITION', `QEMU VM ${id} runs with tracked memory but its writes are not tracked (the tracker could not be adopted after an agent restart: see the agent's log); restart the VM`);
    const job = vm.tracker ? new TrackedJob(vm, vm.tracker, opts, this.o) : new QemuJob(vm, opts, this.o);
    vm.job = job;
    try {
      await job.begin();
    } catch (e) {
      await job.abort().catch(() => undefined);
      throw e;
    }
    return recordNicMode(job, this.nicFor(vm.qspec));
  }

  async restore(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<VmHandle> {
    const vm = await this.load(spec, image, store, ctx, false);
    this.vms.set(spec.id, vm);
    return { name: spec.name, ports: vm.ports };
  }

  /** Restore beside the running instance of the id (restore-beside.ts); the running one is untouched until swap(). */
  restoreBeside(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<BesideRestore> {
    return restoreBeside(
      {
        disks: this.disks,
        pending: this.besides,
        running: (id) => this.vms.get(id),
        load: (s, i, st, c) => this.load(s, i, st, c, true),
        cleanup: (vm, discardDisk) => this.cleanup(vm, discardDisk),
        install: (id, vm) => void this.vms.set(id, vm),
        remove: (id) => void this.vms.delete(id),
        log: this.log,
      },
      spec,
      image,
      store,
      ctx,
    );
  }

  /** The guest's RAM (padded) and what a QEMU process takes beside it under TCG (BESIDE_OVERHEAD_BYTES). */
  besideMemoryBytes(spec: DriverSpec__Output): number {
    return (spec.qemu?.memoryMib || 256) * MiB + BESIDE_OVERHEAD_BYTES;
  }

  /**
   * Prepare, spawn with -incoming and load the VM paused (its disk chain rebuilt, its memory image
   * streamed in); `beside`: an instance of the id may run (restore-beside.ts moved its disk away).
   * A failure removes everything it made, the disk directory included.
   */
  private async load(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext, beside: boolean): Promise<QemuVm> {
    const { vm, nics } = await this.prepare(spec, ctx, false, image, beside);
    try {
      // The disk: its layers rebuilt as a chain in the VM's directory under a new overlay (disk-chain.ts).
      if (vm.hasDisk) vm.diskChain = await restoreDisk({ vm: spec.name, disks: image.disks, store, dir: vm.files.diskDir, disk0: vm.files.disk0, roots: this.roots, qemuImg: (args) => this.qemuImg(args) });
      await vm.spawn(this.o.qemuBinary, await this.args(vm, nics, true), this.o.startTimeoutMs, this.scopeUnit(vm), this.qemuEnv(vm));
      const q = vm.q();
      if (isTrackedImage(image.memory)) await loadTrackedMemory(vm, image.memory, store.read(image.memory.path));
      else {
        const known = await q.execute<{ capability: string }[]>('query-migrate-capabilities');
        await q.execute('migrate-set-capabilities', { capabilities: known.map((c) => ({ capability: c.capability, state: c.capability === 'events' })) });
        await loadMemory(vm, image.memory.path, store.read(image.memory.path));
      }
      // Tracked from the loaded RAM on: a restored tracked image is the next capture's base (not
      // beside a running instance, whose own base it would replace).
      this.track(vm);
      if (vm.tracker && isTrackedImage(image.memory) && !beside) {
        const basePath = trackedBasePath(spec.vne, spec.name);
        await store.link(image.memory.path, basePath);
        vm.trackedBase = { store, path: basePath, valid: true };
      }
      await vm.refreshStatus();
      if (vm.status === 'running') await q.execute('stop');
      await vm.refreshStatus();
    } catch (e) {
      await this.cleanup(vm, true);
      throw e;
    }
    vm.log.info({ pid: vm.pid, dir: vm.files.dir, memory: image.memory.path, beside }, beside ? 'QEMU VM restored beside its running instance (paused)' : 'QEMU VM restored (paused)');
    return vm;
  }

  /** Live migration, destination (live-migration.ts): the VM waits for its state; stop(id, {discardDisk}) undoes it. */
  async migrateIn(spec: VmStartSpec, ctx: VmStartContext, listenAddress: string, tls?: MigrationTls): Promise<IncomingMigration> {
    const { vm, nics } = await this.prepare(spec, ctx, false);
    let targets: MigrationTargets;
    try {
      if (vm.hasDisk) await this.qemuImg(['create', '-q', '-f', 'qcow2', ...OVERLAY_CREATE_OPTIONS, '-b', vm.qspec.disk, '-F', 'qcow2', vm.files.disk0]);
      await vm.spawn(this.o.qemuBinary, await this.args(vm, nics, true), this.o.startTimeoutMs, this.scopeUnit(vm), this.qemuEnv(vm));
      this.track(vm); // the incoming RAM counts as written: the first snapshot here is a full one
      targets = await prepareIncoming(vm, listenAddress, tls);
    } catch (e) {
      await this.cleanup(vm, true);
      throw e;
    }
    this.vms.set(spec.id, vm);
    vm.log.info({ pid: vm.pid, dir: vm.files.dir, ...targets }, 'QEMU VM waiting for its live migration');
    return { handle: { name: spec.name, ports: vm.ports }, targets, resume: () => resumeIncoming(vm, 600_000) };
  }

  /** Live migration, source (live-migration.ts). */
  async migrateOut(id: string, targets: MigrationTargets, onProgress: (p: MigrationProgress) => void, tls?: MigrationTls): Promise<OutgoingMigration> {
    const vm = this.get(id);
    if (vm.job) throw new VnsnapError('ERR_CUT_IN_PROGRESS', `QEMU VM ${id} has a snapshot in progress`);
    return new QemuOutgoing(vm, targets, onProgress, {}, tls);
  }

  inspect(id: string): QemuVmInfo | undefined {
    const vm = this.vms.get(id);
    if (!vm) return undefined;
    return {
      id,
      pid: vm.pid,
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
      return await sha256File(file);
    } finally {
      await fsp.rm(file, { force: true });
    }
  }

  /** Write the guest's RAM [0, memory_mib) to a file (QMP pmemsave; diagnostics and fingerprint). */
  async pmemsave(id: string, file: string): Promise<void> {
    const vm = this.get(id);
    await vm.q().execute('pmemsave', { val: 0, size: vm.memBytes, filename: file }, 60_000);
  }

  // ── VMs that outlive the agent (adopt.ts) ──

  persistent(id: string): { process: ProcessIdentity; state: QemuSavedState } | undefined {
    const vm = this.vms.get(id);
    if (!vm || vm.exited || vm.pid === undefined || vm.startTime === undefined) return undefined;
    // The tracked base only while it is valid: a snapshot job saves the record again before its first scan (tracked-job.ts).
    const base = vm.trackedBase?.valid ? { trackedBase: { path: vm.trackedBase.path } } : {};
    return { process: { pid: vm.pid, startTime: vm.startTime }, state: { dir: vm.files.dir, nic: this.nicFor(vm.qspec), taps: [...vm.taps], ramPadKib: vm.ramPadKib, snapSerial: vm.snapSerial, ...(vm.diskChain ? { diskChain: vm.diskChain } : {}), ...base } };
  }

  async adopt(spec: VmStartSpec, saved: { process?: ProcessIdentity; state: unknown }, ctx: VmStartContext): Promise<VmHandle & { resumed: boolean }> {
    const handle = await adoptQemuVm(this.adoptionParts(), spec, saved, ctx);
    const vm = this.vms.get(spec.id);
    if (vm && this.isTracked(vm)) {
      // The previous agent's protection adopted as it stands (ram-track.ts): every page written
      // since its last scan is reported by the next, so the recorded base (adopt.ts) stays valid
      // and the next capture is incremental over it.
      try {
        this.track(vm);
      } catch (e) {
        vm.log.warn({ err: describeError(e) }, 'adopted a VM with tracked memory whose writes cannot be tracked: its snapshots are refused until it is restarted');
      }
    }
    // A base is relative to the protection the previous agent left: a tracker that had to protect
    // the RAM anew (or none) has lost the writes since, and the next capture is a full one.
    if (vm?.trackedBase && vm.tracker?.how !== 'adopted') {
      vm.log.warn({ base: vm.trackedBase.path, tracker: vm.tracker?.how ?? 'none' }, 'the recorded tracked memory base is not used: the RAM write protection was not adopted as it stood; the next snapshot saves every block');
      vm.trackedBase = undefined;
    }
    return handle;
  }

  private adoptionParts(): AdoptionParts {
    return {
      workDir: this.o.workDir,
      timeoutMs: this.o.startTimeoutMs,
      has: (id) => this.vms.has(id),
      add: (id, vm) => void this.vms.set(id, vm),
    };
  }

  cleanLeftovers(o: { otherStates: readonly unknown[]; deadStates: readonly unknown[] }): Promise<string[]> {
    return cleanDriverLeftovers({ workDir: this.o.workDir, prefix: this.o.prefix, adoptedDirs: [...this.vms.values()].map((v) => v.files.dir), ...o, log: this.log });
  }

  async release(id: string): Promise<void> {
    const vm = this.vms.get(id);
    if (!vm) return;
    this.vms.delete(id);
    for (const p of vm.ports) {
      try {
        p.close();
      } catch {
        /* closed */
      }
    }
    vm.tracker?.close();
    vm.tracker = undefined;
    vm.release();
    vm.log.info({ pid: vm.pid }, 'QEMU VM released: it keeps running without this agent');
  }

  async close(): Promise<void> {
    await Promise.all([...this.besides.values()].map((b) => b.discard()));
    await Promise.all([...this.vms.keys()].map((id) => this.stop(id)));
  }

  private get(id: string): QemuVm {
    const vm = this.vms.get(id);
    if (!vm || vm.exited) throw new VnsnapError('ERR_NOT_FOUND', `no QEMU VM ${id}${vm?.stderr() ? ` (QEMU exited: ${vm.stderr()})` : ''}`);
    return vm;
  }
}
