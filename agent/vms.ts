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
 *    fails stops the VM again (nothing half-attached stays).
 *  - destroy() removes the record first, then stops the VM and detaches its ports even if the
 *    driver's stop fails.
 *  - Each port is attached with its MAC (a static FDB entry to it); a restored VM's ports are
 *    attached behind the switch's restore gate (gated), which the restore opens on resume.
 */
import { VnsnapError } from '../proto/core/errors';
import type { Logger } from '../proto/core/log';
import type { VmSpec__Output } from '../proto/gen/vnsnap/v1/VmSpec';
import type { Port } from '../switch/port/port';
import type { Switch } from '../switch/switch';
import type { DriverSpecKind, HypervisorDriver, RestoreImage, VmHandle, VmStartSpec } from './drivers/driver';
import type { SnapshotStore } from '../proto/store/snapshot-store';

export interface VmRecord {
  key: string;
  vne: string;
  name: string;
  spec: VmSpec__Output;
  driver: HypervisorDriver;
  ports: Port[];
  /** Set while prepared by a restore and not yet resumed. */
  restoreId?: string;
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

  /** Start a VM running and attach its ports at `epoch`. */
  async start(vne: string, vmSpec: VmSpec__Output, epoch: number, vneVms: { name: string; macs: string[] }[]): Promise<VmRecord> {
    const spec = this.startSpec(vne, vmSpec);
    if (this.vms.has(spec.id)) throw new VnsnapError('ERR_ALREADY_EXISTS', `VM ${vmSpec.name} of VNE ${vne} is already on agent ${this.o.agentId}`);
    const driver = this.driverFor(vmSpec);
    const names = this.portNames(spec);
    const h = await driver.start(spec, { portNames: names, log: this.o.log.child({ vm: spec.id }), vneVms });
    const vm = await this.adopt(vne, vmSpec, driver, h, epoch);
    this.o.log.info({ vm: vm.key, ports: names, epoch }, 'VM started');
    return vm;
  }

  /** Load a VM paused from a snapshot image and attach its ports at `epoch` behind held restore gates. */
  async restore(vne: string, vmSpec: VmSpec__Output, image: RestoreImage, store: SnapshotStore, epoch: number, restoreId: string): Promise<VmRecord> {
    const spec = this.startSpec(vne, vmSpec);
    const driver = this.driverFor(vmSpec);
    const h = await driver.restore(spec, image, store, { portNames: this.portNames(spec), log: this.o.log.child({ vm: spec.id }) });
    return this.adopt(vne, vmSpec, driver, h, epoch, restoreId);
  }

  private portNames(spec: VmStartSpec): string[] {
    return spec.macs.map((_, i) => portName(spec.vne, spec.name, i));
  }

  private async adopt(vne: string, spec: VmSpec__Output, driver: HypervisorDriver, h: VmHandle, epoch: number, restoreId?: string): Promise<VmRecord> {
    const vm: VmRecord = {
      key: vmKey(vne, spec.name),
      vne,
      name: spec.name,
      spec,
      driver,
      ports: h.ports,
      ...(restoreId !== undefined ? { restoreId } : {}),
    };
    try {
      this.attach(vm, epoch, restoreId !== undefined);
    } catch (e) {
      await driver.stop(vm.key).catch(() => undefined);
      throw e;
    }
    this.vms.set(vm.key, vm);
    return vm;
  }

  /** Remove the VM: stop it, detach its ports. */
  async destroy(vm: VmRecord): Promise<void> {
    this.vms.delete(vm.key);
    try {
      await vm.driver.stop(vm.key);
    } finally {
      this.detach(vm);
    }
  }

  /** Driver-specific state of a VM (inspect()), for tests and debugging. */
  inspect(vne: string, vm: string): unknown {
    const r = this.get(vne, vm);
    return r ? r.driver.inspect?.(r.key) : undefined;
  }

  /** Switch epoch of the VM's first port (0 when unknown): what Register reports. */
  epochOf(vm: VmRecord): number {
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
