/**
 * A small in-memory HypervisorDriver for unit tests of the agent's runners: VMs are records whose
 * vNICs are FakePorts, snapshot jobs are driven by the test. Not a simulation: no guests, no
 * traffic of its own (the test sends frames through the ports' FakeVm side).
 *
 * Every driver action is appended to `events` ("start a", "pause a", "atPause a", "resume a",
 * "abort a", "stop a", "restore a", "load-beside a", "swap a", "discard a"), so tests assert exact sequences.
 * Jobs: snapshot() returns the job at once unless `holdBegin` ("begin a" at the call, the job at
 * `releaseBegin('a')`, "begun a"; `failBegin('a', err)` aborts it and rejects, as a driver whose begin
 * failed does); `ready` resolves at once unless `holdReady` (then `job.setReady()`); abort resolves it
 * (the driver contract) and `job.failCopy(err)` rejects it, as a failed copy does; `failPause` makes cut() reject without
 * calling atPause; durable() writes a memory artefact "<prefix><vm>.mem". With `ownCutWindow`
 * the jobs say so (SnapshotJob.ownCutWindow) and a background cut raises the agent's loop
 * (SnapshotOptions.raiseCutPriority) from its pause to its atPause's end ("window a" when raised).
 * With `approach` the jobs have approachCut ("approach a <stopAtUs>" at the call, "approached a"
 * when its work ends: at once, or with `holdApproach` at job.endApproach() or the job's abort),
 * as the contract says (driver.ts): cut() does not wait for work still running ("late a" when it
 * cuts before the work ended), durable() does.
 */
import { VnsnapError } from '../../proto/core/errors';
import { FakePort } from '../../switch/port/porttest/fake-port';
import type {
  CutInstant,
  BesideRestore,
  CutReport,
  DriverKind,
  HypervisorDriver,
  RestoreImage,
  SnapshotJob,
  SnapshotModeName,
  SnapshotOptions,
  SnapshotProgress,
  StopReport,
  VmHandle,
  VmImage,
  VmStartContext,
  VmStartSpec,
  VmStatus,
} from '../../agent/drivers/driver';
import type { SnapshotStore } from '../../proto/store/snapshot-store';

export interface FakeVmRecord {
  spec: VmStartSpec;
  status: VmStatus;
  ports: FakePort[];
  restoredFrom?: string;
  /** The disk artefacts the restore was given (paths, in order). */
  restoredDisks?: string[];
}

export class FakeJob implements SnapshotJob {
  readonly ready: Promise<void>;
  aborted = false;
  /** SnapshotJob.approachCut when the driver's `approach` was set at the job's start. */
  approachCut?: (at: CutInstant) => void;
  private settleReady!: (e?: Error) => void;
  private readySettled = false;
  private approachEnd: (() => void) | undefined;
  private approaching: Promise<void> | undefined;

  constructor(
    private readonly driver: FakeDriver,
    readonly vm: string,
    private readonly opts: SnapshotOptions,
  ) {
    this.ready = new Promise<void>((resolve, reject) => (this.settleReady = (e) => (e ? reject(e) : resolve())));
    if (!driver.holdReady) this.setReady();
    if (driver.approach) this.approachCut = (at) => this.approachUntil(at);
  }

  private approachUntil(at: CutInstant): void {
    const name = this.driver.record(this.vm).spec.name;
    this.driver.events.push(`approach ${name} ${at.stopAtUs}`);
    const held = this.driver.holdApproach && !this.aborted ? new Promise<void>((resolve) => (this.approachEnd = resolve)) : Promise.resolve();
    this.approaching = held.then(() => void this.driver.events.push(`approached ${name}`));
  }

  /** A held approachCut() resolves. */
  endApproach(): void {
    this.approachEnd?.();
    this.approachEnd = undefined;
  }

  get mode(): SnapshotModeName {
    return this.opts.mode;
  }

  get ownCutWindow(): boolean {
    return this.driver.ownCutWindow;
  }

  setReady(): void {
    if (this.readySettled) return;
    this.readySettled = true;
    this.settleReady();
  }

  /** Report a pre-copy pass as the driver would. */
  progress(p: Partial<SnapshotProgress>): void {
    this.opts.onProgress?.({ bytesDone: 0, bytesRemaining: 0, bytesTotal: 1024, iteration: 1, dirtyRateMibS: 0, ready: false, ...p });
  }

  async cut(atPause: () => Promise<void>, at?: CutInstant): Promise<CutReport> {
    if (this.aborted) throw new VnsnapError('ERR_SNAPSHOT_ABORTED', `fake job of ${this.vm} was aborted`);
    const rec = this.driver.record(this.vm);
    if (this.approachEnd) this.driver.events.push(`late ${rec.spec.name}`);
    if (at) this.driver.events.push(`instant ${rec.spec.name} ${at.stopAtUs}`);
    if (this.driver.failPause) throw new VnsnapError('ERR_DRIVER', `cannot pause ${this.vm}`);
    rec.status = 'paused';
    this.driver.events.push(`pause ${rec.spec.name}`);
    const window = this.ownCutWindow && this.opts.mode === 'background' ? this.opts.raiseCutPriority?.() : undefined;
    if (window) this.driver.events.push(`window ${rec.spec.name}`);
    const t = this.driver.nowUs();
    this.driver.events.push(`atPause ${rec.spec.name}`);
    await atPause();
    window?.();
    rec.status = 'running';
    this.driver.events.push(`resume ${rec.spec.name}`);
    return { pauseMs: 1, cutUnixUs: t, resumeUnixUs: t + 1000, phases: [{ phase: 'PHASE_PAUSE', startUnixUs: t, endUnixUs: t + 1000 }] };
  }

  async durable(): Promise<VmImage> {
    await this.approaching; // work the cut did not wait for ends before the image is
    const rec = this.driver.record(this.vm);
    const memory = await this.opts.store.put(`${this.opts.prefix}${rec.spec.name}.mem`, Buffer.from(`memory of ${rec.spec.name}`));
    return { memory, disks: [] };
  }

  abort(): Promise<void> {
    if (this.aborted) return Promise.resolve();
    this.aborted = true;
    const rec = this.driver.vms.get(this.vm);
    this.driver.events.push(`abort ${rec?.spec.name ?? this.vm}`);
    this.endApproach();
    if (rec) rec.status = 'running';
    // The driver contract (agent/drivers/driver.ts): abort resolves a pending `ready`, never rejects it.
    if (!this.readySettled) {
      this.readySettled = true;
      this.settleReady();
    }
    return Promise.resolve();
  }

  /** The copy fails on its own before it was ready: `ready` rejects with `err` (the driver contract). */
  failCopy(err: Error): void {
    if (this.readySettled) return;
    this.readySettled = true;
    this.settleReady(err);
  }
}

export class FakeDriver implements HypervisorDriver {
  readonly vms = new Map<string, FakeVmRecord>();
  readonly events: string[] = [];
  readonly jobs: FakeJob[] = [];
  /** New jobs' `ready` waits for setReady(). */
  holdReady = false;
  /** snapshot() records "begin <vm>" and returns the job only at releaseBegin(vm) (or rejects at failBegin). */
  holdBegin = false;
  private readonly heldBegins = new Map<string, { release(): void; fail(e: Error): void }>();
  /** cut() rejects (ERR_DRIVER) without calling atPause. */
  failPause = false;
  /** Jobs raise the agent's loop for their own pauses (SnapshotJob.ownCutWindow). */
  ownCutWindow = false;
  /** New jobs have approachCut(); with holdApproach it resolves at job.endApproach() (or the abort). */
  approach = false;
  holdApproach = false;
  /** Copies loaded beside a running VM, by id, until swapped or discarded. */
  readonly besides = new Map<string, FakeVmRecord>();
  /** Loads beside wait for this (a test holding them). */
  holdBeside: Promise<void> = Promise.resolve();
  /** Ids whose swap fails after the running VM was stopped. */
  readonly failSwap = new Set<string>();

  constructor(
    readonly kind: DriverKind = 'qemu',
    readonly nowUs: () => number = () => 1_000_000,
  ) {}

  record(vm: string): FakeVmRecord {
    const r = this.vms.get(vm);
    if (!r) throw new VnsnapError('ERR_NOT_FOUND', `fake VM ${vm} is not here`);
    return r;
  }

  /** The FakePort of a VM's i-th vNIC. */
  port(vm: string, i = 0): FakePort {
    const p = this.record(vm).ports[i];
    if (!p) throw new Error(`fake VM ${vm} has no port ${i}`);
    return p;
  }

  start(spec: VmStartSpec, ctx: VmStartContext): Promise<VmHandle> {
    return Promise.resolve(this.add(spec, ctx, 'running'));
  }

  async restore(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<VmHandle> {
    await store.get(image.memory.path);
    const h = this.add(spec, ctx, 'paused');
    this.record(spec.id).restoredFrom = image.memory.path;
    this.record(spec.id).restoredDisks = image.disks.map((d) => d.path);
    this.events.push(`restore ${spec.name}`);
    return h;
  }

  /** Load beside the VM of the id ("load-beside a"); swap() stops the running one ("stop a", "swap a"), discard() drops the copy ("discard a"). */
  async restoreBeside(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<BesideRestore> {
    await store.get(image.memory.path);
    this.events.push(`load-beside ${spec.name}`);
    await this.holdBeside;
    const copy: FakeVmRecord = { spec, status: 'paused', ports: ctx.portNames.map((n) => new FakePort(n)), restoredFrom: image.memory.path, restoredDisks: image.disks.map((d) => d.path) };
    this.besides.set(spec.id, copy);
    let state: 'loaded' | 'swapped' | 'discarded' = 'loaded';
    return {
      handle: { name: spec.name, ports: copy.ports },
      swap: async () => {
        if (state !== 'loaded') throw new VnsnapError('ERR_STATE', `fake VM ${spec.id}: ${state}`);
        await this.stop(spec.id);
        if (this.failSwap.has(spec.id)) throw new VnsnapError('ERR_DRIVER', `fake VM ${spec.id}: the swap failed`);
        this.besides.delete(spec.id);
        this.vms.set(spec.id, copy);
        state = 'swapped';
        this.events.push(`swap ${spec.name}`);
      },
      discard: async () => {
        if (state !== 'loaded') return;
        state = 'discarded';
        this.besides.delete(spec.id);
        for (const p of copy.ports) p.close();
        this.events.push(`discard ${spec.name}`);
      },
    };
  }

  besideMemoryBytes(): number {
    return 64 * 1024 * 1024;
  }

  private add(spec: VmStartSpec, ctx: VmStartContext, status: VmStatus): VmHandle {
    const ports = ctx.portNames.map((n) => new FakePort(n));
    this.vms.set(spec.id, { spec, status, ports });
    if (status === 'running') this.events.push(`start ${spec.name}`);
    return { name: spec.name, ports };
  }

  stop(vm: string): Promise<StopReport | void> {
    const r = this.vms.get(vm);
    if (r) {
      this.vms.delete(vm);
      for (const p of r.ports) p.close();
      this.events.push(`stop ${r.spec.name}`);
    }
    return Promise.resolve();
  }

  pause(vm: string): Promise<void> {
    this.record(vm).status = 'paused';
    return Promise.resolve();
  }

  resume(vm: string): Promise<void> {
    const r = this.record(vm);
    r.status = 'running';
    this.events.push(`resume ${r.spec.name}`);
    return Promise.resolve();
  }

  status(vm: string): VmStatus {
    return this.vms.get(vm)?.status ?? 'stopped';
  }

  snapshot(vm: string, opts: SnapshotOptions): Promise<SnapshotJob> {
    const rec = this.record(vm);
    const job = new FakeJob(this, vm, opts);
    this.jobs.push(job);
    if (!this.holdBegin) return Promise.resolve(job);
    this.events.push(`begin ${rec.spec.name}`);
    return new Promise((resolve, reject) =>
      this.heldBegins.set(rec.spec.name, {
        release: () => {
          this.events.push(`begun ${rec.spec.name}`);
          resolve(job);
        },
        // The driver contract: a job that could not begin is aborted by its driver, which rejects.
        fail: (e) => void job.abort().then(() => reject(e)),
      }),
    );
  }

  /** A held begin (holdBegin) of the VM named `name` returns its job. */
  releaseBegin(name: string): void {
    this.heldBegins.get(name)?.release();
    this.heldBegins.delete(name);
  }

  /** A held begin (holdBegin) of the VM named `name` fails with `e`, its job aborted first. */
  failBegin(name: string, e: Error): void {
    this.heldBegins.get(name)?.fail(e);
    this.heldBegins.delete(name);
  }

  inspect(vm: string): unknown {
    const r = this.vms.get(vm);
    return r ? { status: r.status } : undefined;
  }

  async close(): Promise<void> {
    for (const vm of [...this.vms.keys()]) await this.stop(vm);
  }
}
