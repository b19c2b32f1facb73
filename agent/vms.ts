/**
 * The VMs this agent runs or holds prepared by a restore: their records, their lifecycle through
 * the HypervisorDrivers, and their ports on the switch.
 *
 * A VM is known as "<vne>/<vm>" (its key, also the driver's id for it); its i-th vNIC is the
 * switch port "<vne>/<vm>/<i>" (switch-wide unique; also the owner of its channel artefact),
 * serving the VM's i-th MAC, which gets a static FDB entry to that port.
 *
 * Guarantees:
 *  - A VM is in the table only while its ports are attached: a start or restore whose attach
 *    fails stops the VM again (nothing half-attached stays). The exception is a VM adopted from
 *    a previous agent (`adopted` set): its ports are attached at the epoch of the coordinator's
 *    ConfigureVne (attachAdopted), gated first and the gate then opened, never at a guessed epoch;
 *    until then none of its frames is forwarded.
 *  - Drivers whose VMs outlive the agent (persistent/adopt/release) get a state record per VM
 *    (vm-state.ts) written when it starts running and removed when it is destroyed; release()
 *    lets such a VM go without stopping it (the agent stopping). One VM's record writes run in
 *    the order asked, each from the driver's state at its turn (writeState).
 *  - destroy() removes the record first, then stops the VM and detaches its ports even if the
 *    driver's stop fails. It keeps the VM's disk (drivers with disks of their own:
 *    drivers/disk-dir.ts) unless told to discard it, and returns what the driver did with it;
 *    discardDisks() deletes kept disks of VMs that do not run here, and refuses one that does.
 *  - Each port is attached with its MAC (a static FDB entry to it); a restored VM's ports are
 *    attached behind the switch's restore gate (gated), which the restore opens on resume.
 *  - A VM loaded beside its running instance (restoreBeside) is not in the table and has nothing
 *    attached until swapIn(), which replaces the running record, its ports and its state record.
 */
import { describeError, VnsnapError } from '../proto/core/errors';
import type { Logger } from '../proto/core/log';
import type { VmSpec__Output } from '../proto/gen/vnsnap/v1/VmSpec';
import type { Port } from '../switch/port/port';
import type { Switch } from '../switch/switch';
import type { BesideRestore, DriverSpecKind, HypervisorDriver, RestoreImage, StopOptions, StopReport, VmHandle, VmStartSpec } from './drivers/driver';
import type { SnapshotStore } from '../proto/store/snapshot-store';
import type { ProcessIdentity, VmStateDir } from './vm-state';

export interface VmRecord {
  key: string;
  vne: string;
  name: string;
  spec: VmSpec__Output;
  driver: HypervisorDriver;
  ports: Port[];
  /** Set while prepared by a restore and not yet resumed. */
  restoreId?: string;
  /**
   * Set for a VM adopted from a previous agent whose ports are not attached yet: the epoch and
   * generation its state record gave (reported in Register). ConfigureVne attaches the ports.
   */
  adopted?: { epoch: number; generation: number };
  /**
   * The VNE generation the VM runs under: the switch's when it started or was restored, the
   * record's when adopted (0: not known yet, then it follows the switch's). A ConfigureVne with
   * a newer generation does not change it: such a VM is a stale instance (docs/agent-restart.md).
   */
  generation: number;
}

export function vmKey(vne: string, vm: string): string {
  return `${vne}/${vm}`;
}

/** Switch port name of a VM's i-th vNIC (switch-wide unique; also the channel artefact's owner). */
export function portName(vne: string, vm: string, i: number): string {
  return `${vne}/${vm}/${i}`;
}

export interface VmTableOptions {
  agentId: string;
  /** The state directory of VMs that outlive the agent (none: nothing is recorded). */
  state?: VmStateDir;
  /** The VNE's generation as the switch applies it (for the state records). */
  generation?: (vne: string) => number;
  drivers: HypervisorDriver[];
  /** The agent's switch (throws while the agent is not started). */
  switch: () => Switch;
  log: Logger;
}

export interface VmDebugView {
  vne: string;
  vm: string;
  restoreId?: string;
  ports: { name: string; epoch: number | null }[];
  state: unknown;
}

export class VmTable {
  private readonly vms = new Map<string, VmRecord>();
  /** Per VM key, its state record's last write asked for (writeState runs them in order). */
  private readonly writes = new Map<string, Promise<void>>();
  private readonly drivers = new Map<DriverSpecKind, HypervisorDriver>();

  constructor(private readonly o: VmTableOptions) {
    for (const d of o.drivers) this.drivers.set(d.kind, d);
  }

  get driverKinds(): DriverSpecKind[] {
    return [...this.drivers.keys()];
  }

  get(vne: string, vm: string): VmRecord | undefined {
    return this.vms.get(vmKey(vne, vm));
  }

  /** Is this record still the table's VM of its key? */
  holds(vm: VmRecord): boolean {
    return this.vms.get(vm.key) === vm;
  }

  values(): VmRecord[] {
    return [...this.vms.values()];
  }

  keys(): string[] {
    return [...this.vms.keys()];
  }

  /** The VNE's VMs that run (not prepared by a restore). */
  running(vne: string): VmRecord[] {
    return this.values().filter((x) => x.vne === vne && x.restoreId === undefined);
  }

  /** The local port serving `mac` in `vne`, if a VM here has it. */
  portOfMac(vne: string, mac: string): string | undefined {
    const m = mac.toLowerCase();
    for (const vm of this.vms.values()) {
      if (vm.vne !== vne) continue;
      const i = vm.spec.macs.findIndex((x) => x.toLowerCase() === m);
      if (i >= 0) return vm.ports[i]?.name;
    }
    return undefined;
  }

  driverFor(spec: VmSpec__Output): HypervisorDriver {
    const kind = spec.driver?.kind;
    if (!kind) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name} has no driver spec`);
    const d = this.drivers.get(kind);
    if (!d) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${spec.name} needs the ${kind} driver, which agent ${this.o.agentId} does not have (it has: ${this.driverKinds.join(', ') || 'none'})`);
    return d;
  }

  private startSpec(vne: string, spec: VmSpec__Output): VmStartSpec {
    if (!spec.name) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'a VM needs a name');
    if (spec.macs.length === 0) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name} has no MAC`);
    return { id: vmKey(vne, spec.name), vne, name: spec.name, macs: spec.macs, driver: spec.driver ?? {} };
  }

  /** Start a VM running (from its kept disk when `keptDisk`) and attach its ports at `epoch`. */
  async start(vne: string, vmSpec: VmSpec__Output, epoch: number, vneVms: { name: string; macs: string[] }[], keptDisk = false): Promise<VmRecord> {
    const spec = { ...this.startSpec(vne, vmSpec), ...(keptDisk ? { keptDisk } : {}) };
    if (this.vms.has(spec.id)) throw new VnsnapError('ERR_ALREADY_EXISTS', `VM ${vmSpec.name} of VNE ${vne} is already on agent ${this.o.agentId}`);
    const driver = this.driverFor(vmSpec);
    const names = this.portNames(spec);
    const h = await driver.start(spec, { portNames: names, log: this.o.log.child({ vm: spec.id }), vneVms });
    const vm = await this.adopt(vne, vmSpec, driver, h, epoch, undefined, !keptDisk);
    this.o.log.info({ vm: vm.key, ports: names, epoch }, 'VM started');
    await this.saveState(vm);
    return vm;
  }

  /**
   * Take over a VM a previous agent left running (its process checked by the caller): the
   * driver re-opens it; its ports wait for attachAdopted. Returns the record and whether the VM
   * was found paused and resumed.
   */
  async adoptRunning(vne: string, vmSpec: VmSpec__Output, saved: { process?: ProcessIdentity; state: unknown }, last: { epoch: number; generation: number }): Promise<{ vm: VmRecord; resumed: boolean }> {
    const spec = this.startSpec(vne, vmSpec);
    if (this.vms.has(spec.id)) throw new VnsnapError('ERR_ALREADY_EXISTS', `VM ${vmSpec.name} of VNE ${vne} is already on agent ${this.o.agentId}`);
    const driver = this.driverFor(vmSpec);
    if (!driver.adopt) throw new VnsnapError('ERR_FAILED_PRECONDITION', `the ${driver.kind} driver cannot adopt VMs`);
    const h = await driver.adopt(spec, saved, { portNames: this.portNames(spec), log: this.o.log.child({ vm: spec.id }) });
    const vm: VmRecord = { key: spec.id, vne, name: spec.name, spec: vmSpec, driver, ports: h.ports, adopted: { ...last }, generation: last.generation };
    this.vms.set(vm.key, vm);
    return { vm, resumed: h.resumed };
  }

  /**
   * ConfigureVne came for `vne`: attach its adopted VMs' ports at `epoch` (the VNE's current
   * one, from the coordinator) behind a gate, then open the gates, so the frame rules hold from
   * the first frame. Returns the VMs attached. A VM whose ports cannot be attached is stopped.
   */
  async attachAdopted(vne: string, epoch: number): Promise<VmRecord[]> {
    const done: VmRecord[] = [];
    for (const vm of this.values()) {
      if (vm.vne !== vne || !vm.adopted) continue;
      // 0 comes only from a coordinator that predates ConfigureVne.epoch: the record's epoch is then the best known.
      const at = epoch === 0 && vm.adopted.epoch > 0 ? vm.adopted.epoch : epoch;
      try {
        this.attach(vm, at, true);
        for (const p of vm.ports) this.o.switch().openGate(p.name, []);
      } catch (e) {
        this.o.log.error({ vm: vm.key, err: describeError(e) }, 'the adopted VM\'s ports could not be attached: stopping it');
        await this.destroy(vm).catch(() => undefined);
        continue;
      }
      delete vm.adopted;
      done.push(vm);
      this.o.log.info({ vm: vm.key, epoch: at, ports: vm.ports.map((p) => p.name) }, 'adopted VM back on the network');
      await this.saveState(vm);
    }
    return done;
  }

  /** Does the VM outlive the agent (its driver can hand it to the next agent)? */
  outlivesAgent(vm: VmRecord): boolean {
    return vm.restoreId === undefined && vm.driver.release !== undefined && vm.driver.persistent?.(vm.key) !== undefined;
  }

  /** Let the VM go without stopping it (the agent stops): its record is refreshed, its ports detached. */
  async release(vm: VmRecord): Promise<void> {
    await this.saveState(vm);
    this.vms.delete(vm.key);
    this.detach(vm);
    await vm.driver.release?.(vm.key);
  }

  /** The generation a VM runs under (what its record and Register say). */
  generationOf(vm: VmRecord): number {
    if (vm.generation === 0) vm.generation = this.o.generation?.(vm.vne) ?? 0;
    return vm.generation;
  }

  /**
   * Refresh the records of every VM of `vne` (after a cut, an abort, a ConfigureVne), the VMs'
   * writes together: each is its own file (two fsyncs), and a snapshot's commit reply waits for
   * them; one VM's writes still run in the order asked (writeState).
   */
  async saveStates(vne: string): Promise<void> {
    await Promise.all([...this.values()].filter((vm) => vm.vne === vne).map((vm) => this.saveState(vm)));
  }

  /** Write the VM's state record (drivers whose VMs outlive the agent); a failure is logged. */
  async saveState(vm: VmRecord): Promise<void> {
    try {
      await this.writeState(vm);
    } catch (e) {
      this.o.log.error({ vm: vm.key, err: describeError(e) }, 'writing the VM\'s state record failed: a restarted agent will not find it');
    }
  }

  /**
   * Write the VM's state record and reject when that fails (a snapshot job that must know its
   * record is on disk: SnapshotOptions.saveState). One VM's writes run one at a time in the order
   * asked, each from the driver's state when its turn comes: the record on disk is never older
   * than the state at the last write asked for.
   */
  writeState(vm: VmRecord): Promise<void> {
    const next = (this.writes.get(vm.key) ?? Promise.resolve()).catch(() => undefined).then(() => this.writeNow(vm));
    this.writes.set(vm.key, next);
    const settled = (): void => {
      if (this.writes.get(vm.key) === next) this.writes.delete(vm.key);
    };
    next.then(settled, settled);
    return next;
  }

  private async writeNow(vm: VmRecord): Promise<void> {
    const st = this.o.state;
    if (!st || vm.restoreId !== undefined) return;
    const saved = vm.driver.persistent?.(vm.key);
    if (!saved) return;
    await st.write({
      agent: this.o.agentId,
      vne: vm.vne,
      vm: vm.name,
      driver: vm.driver.kind,
      spec: vm.spec,
      ...(saved.process ? { process: saved.process } : {}),
      epoch: this.epochOf(vm),
      generation: this.generationOf(vm),
      driverState: saved.state,
    });
  }

  /** Load a VM paused from a snapshot image and attach its ports at `epoch` behind held restore gates. */
  async restore(vne: string, vmSpec: VmSpec__Output, image: RestoreImage, store: SnapshotStore, epoch: number, restoreId: string): Promise<VmRecord> {
    const spec = this.startSpec(vne, vmSpec);
    const driver = this.driverFor(vmSpec);
    const h = await driver.restore(spec, image, store, { portNames: this.portNames(spec), log: this.o.log.child({ vm: spec.id }) });
    return this.adopt(vne, vmSpec, driver, h, epoch, restoreId, true);
  }

  /**
   * Load a VM paused beside its running instance (driver.restoreBeside): nothing of the running
   * one is touched and nothing is attached; swapIn() makes it the VM. ERR_FAILED_PRECONDITION
   * when the VM's driver cannot (the restore runner checks that first).
   */
  async restoreBeside(vne: string, vmSpec: VmSpec__Output, image: RestoreImage, store: SnapshotStore): Promise<{ driver: HypervisorDriver; beside: BesideRestore }> {
    const spec = this.startSpec(vne, vmSpec);
    const driver = this.driverFor(vmSpec);
    if (!driver.restoreBeside) throw new VnsnapError('ERR_FAILED_PRECONDITION', `the ${driver.kind} driver cannot load a VM beside its running instance`);
    const beside = await driver.restoreBeside(spec, image, store, { portNames: this.portNames(spec), log: this.o.log.child({ vm: spec.id }) });
    return { driver, beside };
  }

  /**
   * The swap of a restore loaded beside: the running instance (`old`, if any) leaves the table,
   * the driver stops it and makes the loaded one the VM (beside.swap()), and the old ports are
   * detached and its state record removed even if the driver failed. attachPrepared() then
   * attaches the new ports (after the caller applied the restore's generation).
   */
  async swapIn(beside: BesideRestore, old: VmRecord | undefined): Promise<void> {
    if (old) this.vms.delete(old.key);
    try {
      await beside.swap();
    } finally {
      if (old) {
        this.detach(old);
        await this.o.state?.remove(old.vne, old.name).catch((e) => this.o.log.warn({ vm: old.key, err: describeError(e) }, 'removing the VM\'s state record failed'));
      }
    }
  }

  /**
   * A VM a driver prepared outside start/restore (a live migration's destination): attach its
   * ports at `epoch` behind gates, recorded as prepared (`restoreId` = preparedBy) until the caller
   * resumes it. A failure stops it with its disk discarded.
   */
  async attachPrepared(vne: string, vmSpec: VmSpec__Output, driver: HypervisorDriver, h: VmHandle, epoch: number, preparedBy: string): Promise<VmRecord> {
    return this.adopt(vne, vmSpec, driver, h, epoch, preparedBy, true);
  }

  private portNames(spec: VmStartSpec): string[] {
    return spec.macs.map((_, i) => portName(spec.vne, spec.name, i));
  }

  /** Attach the new VM's ports; a failure stops it again (its disk discarded when `fresh`: nothing was kept yet). */
  private async adopt(vne: string, spec: VmSpec__Output, driver: HypervisorDriver, h: VmHandle, epoch: number, restoreId: string | undefined, fresh: boolean): Promise<VmRecord> {
    const vm: VmRecord = {
      key: vmKey(vne, spec.name),
      vne,
      name: spec.name,
      spec,
      driver,
      ports: h.ports,
      ...(restoreId !== undefined ? { restoreId } : {}),
      generation: this.o.generation?.(vne) ?? 0,
    };
    try {
      this.attach(vm, epoch, restoreId !== undefined);
    } catch (e) {
      await driver.stop(vm.key, { discardDisk: fresh }).catch(() => undefined);
      throw e;
    }
    this.vms.set(vm.key, vm);
    return vm;
  }

  /** Remove the VM: stop it (its disk kept unless opts.discardDisk), detach its ports. */
  async destroy(vm: VmRecord, opts: StopOptions = {}): Promise<StopReport> {
    this.vms.delete(vm.key);
    try {
      return (await vm.driver.stop(vm.key, opts)) ?? {};
    } finally {
      this.detach(vm);
      await this.o.state?.remove(vm.vne, vm.name).catch((e) => this.o.log.warn({ vm: vm.key, err: describeError(e) }, 'removing the VM\'s state record failed'));
    }
  }

  /**
   * Delete the kept disks of these VMs of `vne` (every driver that keeps disks is asked; the
   * VMs need not be known to this agent); the directories removed. A VM that runs here is
   * ERR_FAILED_PRECONDITION, before anything is deleted.
   */
  async discardDisks(vne: string, vms: readonly string[]): Promise<string[]> {
    const running = vms.filter((n) => this.vms.has(vmKey(vne, n)));
    if (running.length > 0) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM${running.length > 1 ? 's' : ''} ${running.join(', ')} of VNE ${vne} ${running.length > 1 ? 'run' : 'runs'} on agent ${this.o.agentId}: stop ${running.length > 1 ? 'them' : 'it'} before discarding disks`);
    const out: string[] = [];
    for (const d of this.drivers.values()) {
      for (const n of vms) {
        const gone = await d.discardDisk?.(vne, n);
        if (gone !== undefined) out.push(gone);
      }
    }
    return out;
  }

  /** Where the running VM's disk lives (StartVmResult), '' when its driver has no disks of its own. */
  diskPath(vm: VmRecord): string {
    return vm.driver.diskPath?.(vm.key) ?? '';
  }

  /** Driver-specific state of a VM (inspect()), for tests and debugging. */
  inspect(vne: string, vm: string): unknown {
    const r = this.get(vne, vm);
    return r ? r.driver.inspect?.(r.key) : undefined;
  }

  /** Switch epoch of the VM's first port (0 when unknown): what Register reports. */
  epochOf(vm: VmRecord): number {
    if (vm.adopted) return vm.adopted.epoch;
    const p = vm.ports[0];
    return p ? (this.portEpoch(p.name) ?? 0) : 0;
  }

  debug(): VmDebugView[] {
    return this.values().map((v) => ({
      vne: v.vne,
      vm: v.name,
      ...(v.restoreId !== undefined ? { restoreId: v.restoreId } : {}),
      ports: v.ports.map((p) => ({ name: p.name, epoch: this.portEpoch(p.name) })),
      state: v.driver.inspect?.(v.key) ?? null,
    }));
  }

  // ── the switch side: attach and detach a VM's ports ──

  /** Attach a VM's ports to the switch at `epoch` (behind a restore gate if `gated`), each with its MAC; all or nothing. */
  private attach(vm: VmRecord, epoch: number, gated: boolean): void {
    const sw = this.o.switch();
    const attached: string[] = [];
    try {
      vm.ports.forEach((p, i) => {
        const mac = vm.spec.macs[i];
        sw.attachPort(vm.vne, p, { epoch, ...(gated ? { gated } : {}), ...(mac !== undefined ? { mac } : {}) });
        attached.push(p.name);
      });
    } catch (e) {
      for (const n of attached) sw.removePort(n);
      throw e;
    }
  }

  private detach(vm: VmRecord): void {
    for (const p of vm.ports) {
      try {
        this.o.switch().removePort(p.name);
      } catch {
        /* already detached, or the switch is gone */
      }
    }
  }

  private portEpoch(name: string): number | null {
    try {
      return this.o.switch().portEpoch(name);
    } catch {
      return null;
    }
  }
}
