/**
 * The simulated hypervisor driver — for tests and scale runs ONLY, never a product driver.
 *
 * Parts: guest.ts (a sim VM: its frames, checks, memory, and its vNIC), job.ts (a snapshot),
 * image.ts (the image format), state.ts (the guest state and options). The agent runs it only
 * through the test entry point agent-main.ts.
 *
 * Tests read a VM's state with `inspect(id)` (the agent exposes it as `Agent.vmState(vne, vm)`),
 * and the state captured at each cut with `cutState(id, epoch)`.
 */
import { createHash } from 'node:crypto';
import { VnsnapError } from '../../proto/core/errors';
import { formatMac, parseMac } from '../../switch/bridge/mac';
import type { DriverSpec__Output } from '../../proto/gen/vnsnap/v1/DriverSpec';
import type { BesideRestore, HypervisorDriver, RestoreImage, SnapshotJob, SnapshotOptions, VmHandle, VmStartContext, VmStartSpec, VmStatus } from '../../agent/drivers/driver';
import type { SnapshotStore } from '../../proto/store/local-dir';
import { SimPort, SimVm } from './guest';
import { parseSimImage } from './image';
import { SimJob } from './job';
import type { SimDriverOptions, SimVmState } from './state';

export { SIM_ETHERTYPE, SimPort } from './guest';
export { parseSimImage } from './image';
export { guestOf, type SimDriverOptions, type SimGuestState, type SimVmState } from './state';

export class SimDriver implements HypervisorDriver {
  readonly kind = 'sim' as const;
  private readonly vms = new Map<string, SimVm>();
  private readonly besides = new Map<string, BesideRestore>();
  /** Ids whose swap fails (tests of a failure during the swap). */
  readonly failSwap = new Set<string>();
  private readonly cutStates = new Map<string, SimVmState | (Omit<SimVmState, 'memorySha256'> & { memory: Buffer })>();
  private readonly opts: Required<SimDriverOptions>;

  constructor(opts: SimDriverOptions = {}) {
    this.opts = {
      batchSize: opts.batchSize ?? 32,
      tickMs: opts.tickMs ?? 5,
      readyBytes: opts.readyBytes ?? 256 * 1024,
      passIntervalMs: opts.passIntervalMs ?? 10,
      helloMs: opts.helloMs ?? 100,
      frameBytes: Math.max(64, opts.frameBytes ?? 96),
      rxQueueMax: opts.rxQueueMax ?? 100_000,
    };
  }

  private make(spec: VmStartSpec, ctx: VmStartContext, beside = false): SimVm {
    if (spec.driver.sim === undefined || spec.driver.sim === null) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: the sim driver needs a sim driver spec`);
    const existing = this.vms.get(spec.id);
    if (existing && existing.status !== 'stopped' && !beside) throw new VnsnapError('ERR_ALREADY_EXISTS', `sim VM ${spec.id} is already ${existing.status}`);
    if (ctx.portNames.length !== spec.macs.length) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: ${spec.macs.length} MACs but ${ctx.portNames.length} port names`);
    const ports = ctx.portNames.map((n) => new SimPort(n, this.opts.batchSize));
    const vm = new SimVm(spec, ports, this.opts, spec.driver.sim.memoryMib || 4);
    // Like a guest's ARP table, only the peers it talks to (a table of every VM of a large VNE
    // would be n² entries over the VNE, and is saved in every image).
    const peers = new Set(vm.peers);
    for (const v of ctx.vneVms ?? []) {
      const mac = v.macs[0];
      if (peers.has(v.name) && mac !== undefined) vm.state.arp[v.name] = formatMac(parseMac(mac));
    }
    return vm;
  }

  async start(spec: VmStartSpec, ctx: VmStartContext): Promise<VmHandle> {
    const vm = this.make(spec, ctx);
    this.vms.set(spec.id, vm);
    vm.run();
    return { name: spec.name, ports: vm.ports };
  }

  async stop(id: string): Promise<void> {
    const vm = this.vms.get(id);
    if (!vm) return;
    await vm.job?.abort();
    vm.destroy();
    this.vms.delete(id);
  }

  async pause(id: string): Promise<void> {
    this.get(id).halt();
  }

  async resume(id: string): Promise<void> {
    this.get(id).run();
  }

  status(id: string): VmStatus {
    return this.vms.get(id)?.status ?? 'stopped';
  }

  async snapshot(id: string, opts: SnapshotOptions): Promise<SnapshotJob> {
    const vm = this.get(id);
    if (vm.status !== 'running') throw new VnsnapError('ERR_STATE', `sim VM ${id} is ${vm.status}; a snapshot needs it running`);
    const job = new SimJob(this, vm, opts, this.opts);
    await job.begin();
    return job;
  }

  async restore(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<VmHandle> {
    const vm = await this.load(spec, image, store, ctx, false);
    this.vms.set(spec.id, vm);
    return { name: spec.name, ports: vm.ports };
  }

  private async load(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext, beside: boolean): Promise<SimVm> {
    const vm = this.make(spec, { ...ctx, vneVms: [] }, beside);
    const { memory, state } = parseSimImage(await store.get(image.memory.path), image.memory.path, vm.pageCount);
    memory.copy(vm.memory);
    vm.state = state;
    vm.status = 'paused';
    return vm;
  }

  /** Load beside the running VM of the id (a second SimVm); swap() stops the running one and puts this one in its place. */
  async restoreBeside(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<BesideRestore> {
    if (this.besides.has(spec.id)) throw new VnsnapError('ERR_ALREADY_EXISTS', `sim VM ${spec.id} already has a restore loading beside it`);
    const vm = await this.load(spec, image, store, ctx, true);
    let state: 'loaded' | 'swapped' | 'discarded' = 'loaded';
    const b: BesideRestore = {
      handle: { name: spec.name, ports: vm.ports },
      swap: async () => {
        if (state !== 'loaded') throw new VnsnapError('ERR_STATE', `sim VM ${spec.id}: the restore beside it is ${state}`);
        if (this.failSwap.has(spec.id)) throw new VnsnapError('ERR_DRIVER', `sim VM ${spec.id}: the swap failed (test)`);
        await this.stop(spec.id);
        this.vms.set(spec.id, vm);
        this.besides.delete(spec.id);
        state = 'swapped';
      },
      discard: async () => {
        if (state !== 'loaded') return;
        state = 'discarded';
        this.besides.delete(spec.id);
        vm.destroy();
      },
    };
    this.besides.set(spec.id, b);
    return b;
  }

  besideMemoryBytes(spec: DriverSpec__Output): number {
    return (spec.sim?.memoryMib || 4) * 1024 * 1024;
  }

  /** Restores loaded beside and not yet swapped or discarded (tests). */
  besidePending(): string[] {
    return [...this.besides.keys()];
  }

  epochAdvanced(id: string, epoch: number): void {
    const vm = this.vms.get(id);
    if (vm && vm.state.epoch < epoch) vm.state.epoch = epoch;
  }

  inspect(id: string): SimVmState | undefined {
    return this.vms.get(id)?.inspect();
  }

  /** The VM's state at the pause instant of the cut to `epoch` (tests). */
  cutState(id: string, epoch: number): SimVmState | undefined {
    return this.hashCutState(`${id}@${epoch}`);
  }

  recordCutState(id: string, epoch: number, s: SimVmState | (Omit<SimVmState, 'memorySha256'> & { memory: Buffer })): void {
    const key = `${id}@${epoch}`;
    this.cutStates.set(key, s);
    if ('memory' in s) setImmediate(() => this.hashCutState(key));
    if (this.cutStates.size > 1000) this.cutStates.delete(this.cutStates.keys().next().value as string);
  }

  /** The recorded state with its memory hashed (once; the memory copy is dropped then). */
  private hashCutState(key: string): SimVmState | undefined {
    const s = this.cutStates.get(key);
    if (!s || !('memory' in s)) return s;
    const { memory, ...rest } = s;
    const done: SimVmState = { ...rest, memorySha256: createHash('sha256').update(memory).digest('hex') };
    this.cutStates.set(key, done);
    return done;
  }

  async close(): Promise<void> {
    for (const id of [...this.vms.keys()]) await this.stop(id);
  }

  private get(id: string): SimVm {
    const vm = this.vms.get(id);
    if (!vm || vm.status === 'stopped') throw new VnsnapError('ERR_NOT_FOUND', `no sim VM ${id}`);
    return vm;
  }
}
