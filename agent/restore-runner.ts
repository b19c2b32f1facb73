/**
 * The local part of a restore: RestorePrepare, RestoreResume and RestoreCancel for the VMs of one
 * VNE on this host. Pure sequencing over injected parts (the VM and VNE tables, the snapshot
 * runner, the switch, the store, a Clock).
 *
 *   prepare   1. check everything that costs no full read before touching anything: every VM's
 *                driver, every artefact present with its recorded size (restore-verify.ts: a
 *                disk's every layer, disk_layers in order, or an older coordinator's one `disk`),
 *                every channel artefact read whole and checked (size, SHA-256, format), and that no
 *                VM to replace runs unless stop_running. The memory images and disk layers are not
 *                read here: the coordinator validated them in full before a restore that replaces
 *                running VMs, and they are verified while loading (step 2);
 *             2. stop what runs, all at once (aborting a snapshot that includes it), apply the generation at
 *                once (configureVne generationNow; without one, the switch applies a deferred
 *                change when the last old port detached), load every VM paused, all at once, and
 *                attach its ports at epoch k behind the switch's restore gate (attachPort gated).
 *                A memory image reaches the driver through verifyingStore: its size and SHA-256
 *                are checked as it streams, and QEMU never gets the last chunk of a wrong one. If
 *                one VM fails to load, every VM loaded is destroyed once all loads ended.
 *   resume    resume every VM, then per port the switch's openGate: its recorded channel
 *             frames first, then what the gate kept, then the gate stays open — frames from
 *             peers that resumed first cannot overtake the channel state.
 *   cancel    destroy the prepared VMs.
 *
 * Over a running VNE (RestorePrepare.load_beside; docs/operations.md "Restore"), the steps split so
 * that nothing runs differently until every VM of every agent has loaded and verified:
 *   prepare   step 1, then restore-swap.ts's refusal check (every driver loads beside, the host
 *             has the memory for a second copy of its VMs): a refusal loads nothing and says why
 *             (the coordinator then restores the older way). Else every VM is loaded paused beside
 *             its running instance — or, for a VM moving to this agent, while its old instance
 *             runs on elsewhere (the coordinator stops it only after every agent loaded) — all at
 *             once, through verifyingStore, each chunk read from the store once; nothing is
 *             attached, the generation is not applied. A failed load discards every loaded copy:
 *             the running VMs run on as they were.
 *   swap      stop the running instances here, if any (their snapshots aborted, their disks
 *             discarded) as each driver swaps its loaded copy in, apply the generation, attach
 *             every new VM's ports at epoch k behind the restore gates. resume as above.
 *   cancel    before the swap: discard the loaded copies (the running VMs untouched); once the
 *             swap began: stop every VM of the restore on this agent, old and new.
 */
import type { Clock } from '../proto/core/clock';
import { describeError, VnsnapError } from '../proto/core/errors';
import type { Logger } from '../proto/core/log';
import type { ChannelFrame } from '../proto/artefacts/channel-state';
import { decodeChannel } from '../proto/artefacts/channel-state';
import type { Artefact__Output } from '../proto/gen/vnsnap/v1/Artefact';
import type { RestoreCancel__Output } from '../proto/gen/vnsnap/v1/RestoreCancel';
import type { RestorePrepare__Output } from '../proto/gen/vnsnap/v1/RestorePrepare';
import type { RestoreVm__Output } from '../proto/gen/vnsnap/v1/RestoreVm';
import type { RestoreSwap__Output } from '../proto/gen/vnsnap/v1/RestoreSwap';
import type { RestoreResume__Output } from '../proto/gen/vnsnap/v1/RestoreResume';
import type { Result } from '../proto/gen/vnsnap/v1/Result';
import type { VmSnapshot } from '../proto/gen/vnsnap/v1/VmSnapshot';
import type { VmSpec__Output } from '../proto/gen/vnsnap/v1/VmSpec';
import type { Switch } from '../switch/switch';
import type { BesideRestore, HypervisorDriver, RestoreImage } from './drivers/driver';
import { availableMemoryBytes } from './host-memory';
import { besideRefusal } from './restore-swap';
import type { AgentMetrics } from './metrics';
import type { SnapshotRunner } from './snapshot-runner';
import type { SnapshotStore } from '../proto/store/snapshot-store';
import { portName, vmKey, type VmRecord, type VmTable } from './vms';
import type { VneTable } from './vne-table';
import { presenceProblems, verifyingStore } from './restore-verify';

export interface RestoreRunnerOptions {
  agentId: string;
  switch: () => Switch;
  store: SnapshotStore;
  vms: VmTable;
  vnes: VneTable;
  snapshots: SnapshotRunner;
  clock: Clock;
  /** Wall-clock microseconds for phase timings (default: clock.now() × 1000). */
  nowUs?: () => number;
  log: Logger;
  metrics: AgentMetrics;
  /** The host's available memory (default: MemAvailable of /proc/meminfo). */
  availableMemory?: () => Promise<number>;
}

interface PreparedRestore {
  id: string;
  vne: string;
  vms: VmRecord[];
  /** Recorded frames per port name. */
  channel: Map<string, ChannelFrame[]>;
  /** Loaded beside the running VMs (load_beside): what swap() puts in their place. */
  beside?: { loaded: { spec: VmSpec__Output; driver: HypervisorDriver; beside: BesideRestore }[]; epoch: number; generation: number; swapStarted: boolean; loading: boolean; cancelled: boolean };
}

export class RestoreRunner {
  private readonly restores = new Map<string, PreparedRestore>();
  private readonly nowUs: () => number;

  constructor(private readonly o: RestoreRunnerOptions) {
    this.nowUs = o.nowUs ?? (() => o.clock.now() * 1000);
  }

  async prepare(c: RestorePrepare__Output): Promise<Partial<Result>> {
    if (!c.restoreId) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'RestorePrepare without a restore id');
    if (this.restores.has(c.restoreId)) throw new VnsnapError('ERR_ALREADY_EXISTS', `restore ${c.restoreId} is already prepared here`);
    // Loading beside attaches nothing, and the coordinator configures the VNE only after every
    // agent has loaded (a host the VNE comes back to has none configured yet): the swap requires it.
    if (!c.loadBeside) this.o.vnes.require(c.vne);
    const t0 = this.nowUs();
    const channel = await this.check(c);
    const tValidated = this.nowUs();
    if (c.loadBeside) return this.prepareBeside(c, channel, t0, tValidated);
    await Promise.all(
      c.vms.map(async (rv) => {
        const existing = this.o.vms.get(c.vne, (rv.vm as VmSpec__Output).name);
        if (!existing) return;
        await this.o.snapshots.abortIncluding(existing, 'restore stops its VMs');
        await this.o.vms.destroy(existing, { discardDisk: true }); // replaced by the restore: nothing to keep
      }),
    );
    if (c.generation) this.o.switch().configureVne({ name: c.vne, generation: c.generation, generationNow: true });
    const rec: PreparedRestore = { id: c.restoreId, vne: c.vne, vms: [], channel };
    const store = verifyingStore(this.o.store, c.vms.map((rv) => stored(rv.memory as Artefact__Output)));
    const loads = await Promise.allSettled(
      c.vms.map(async (rv) => {
        const spec = rv.vm as VmSpec__Output;
        const tl = this.nowUs();
        const vm = await this.o.vms.restore(c.vne, spec, imageOf(rv), store, c.epoch, c.restoreId);
        const snap = this.loadReport(c.vne, rv, channel, [t0, tValidated, tl]);
        return { vm, snap };
      }),
    );
    const out: VmSnapshot[] = [];
    for (const l of loads) {
      if (l.status === 'fulfilled') {
        rec.vms.push(l.value.vm);
        out.push(l.value.snap);
      }
    }
    const failed = loads.find((l): l is PromiseRejectedResult => l.status === 'rejected');
    if (failed) {
      for (const vm of rec.vms) await this.o.vms.destroy(vm, { discardDisk: true }).catch(() => undefined);
      throw failed.reason;
    }
    this.restores.set(rec.id, rec);
    this.o.metrics.phaseSeconds.observe({ phase: 'PHASE_LOAD' }, (this.nowUs() - tValidated) / 1e6);
    this.o.log.info({ restore: rec.id, vne: c.vne, epoch: c.epoch, generation: c.generation, vms: rec.vms.map((x) => x.name) }, 'restore prepared');
    return { restorePrepare: { vms: out } };
  }

  /** prepare with load_beside (module comment): nothing running is touched. */
  private async prepareBeside(c: RestorePrepare__Output, channel: Map<string, ChannelFrame[]>, t0: number, tValidated: number): Promise<Partial<Result>> {
    const refused = await besideRefusal(c.vms.map((rv) => rv.vm as VmSpec__Output), {
      driverFor: (spec) => this.o.vms.driverFor(spec),
      running: (spec) => this.o.vms.get(c.vne, spec.name),
      availableMemory: this.o.availableMemory ?? availableMemoryBytes,
    });
    if (refused) {
      this.o.log.info({ restore: c.restoreId, vne: c.vne, why: refused }, 'restore: not loading beside the running VMs (the coordinator restores the older way)');
      return { restorePrepare: { vms: [], beside: false, besideRefused: refused } };
    }
    // Registered while loading, so a RestoreCancel that comes meanwhile is not lost: the loads then end discarded.
    const b: NonNullable<PreparedRestore['beside']> = { loaded: [], epoch: c.epoch, generation: c.generation, swapStarted: false, loading: true, cancelled: false };
    this.restores.set(c.restoreId, { id: c.restoreId, vne: c.vne, vms: [], channel, beside: b });
    const store = verifyingStore(this.o.store, c.vms.map((rv) => stored(rv.memory as Artefact__Output)));
    const loads = await Promise.allSettled(
      c.vms.map(async (rv) => {
        const spec = rv.vm as VmSpec__Output;
        const tl = this.nowUs();
        const loaded = await this.o.vms.restoreBeside(c.vne, spec, imageOf(rv), store);
        return { loaded: { spec, ...loaded }, snap: this.loadReport(c.vne, rv, channel, [t0, tValidated, tl]) };
      }),
    );
    b.loading = false;
    const ok = loads.flatMap((l) => (l.status === 'fulfilled' ? [l.value] : []));
    const failed = loads.find((l): l is PromiseRejectedResult => l.status === 'rejected');
    if (failed || b.cancelled) {
      this.restores.delete(c.restoreId);
      await Promise.all(ok.map((l) => l.loaded.beside.discard().catch((e) => this.o.log.error({ vm: l.loaded.spec.name, err: describeError(e) }, 'discarding a VM loaded beside failed'))));
      throw failed ? failed.reason : new VnsnapError('ERR_CANCELLED', `restore ${c.restoreId} was cancelled while its VMs loaded beside the running ones on agent ${this.o.agentId}`);
    }
    b.loaded = ok.map((l) => l.loaded);
    this.o.metrics.phaseSeconds.observe({ phase: 'PHASE_LOAD' }, (this.nowUs() - tValidated) / 1e6);
    this.o.log.info({ restore: c.restoreId, vne: c.vne, vms: ok.map((l) => l.loaded.spec.name) }, 'restore loaded beside the running VMs');
    return { restorePrepare: { vms: ok.map((l) => l.snap), beside: true } };
  }

  /** A VM's load as its VmSnapshot: sizes, channel frames, the validate and load phases ([start, validated, load start]). */
  private loadReport(vne: string, rv: RestoreVm__Output, channel: Map<string, ChannelFrame[]>, [t0, tValidated, tl]: number[]): VmSnapshot {
    const spec = rv.vm as VmSpec__Output;
    const mem = rv.memory as Artefact__Output;
    return {
      name: spec.name,
      host: this.o.agentId,
      memoryBytes: mem.size,
      diskBytes: diskLayers(rv).reduce((n, a) => n + Number(a.size), 0),
      channelFrames: spec.macs.reduce((n, _, i) => n + (channel.get(portName(vne, spec.name, i))?.length ?? 0), 0),
      phases: [
        { phase: 'PHASE_VALIDATE', startUnixUs: t0, endUnixUs: tValidated },
        { phase: 'PHASE_LOAD', startUnixUs: tl, endUnixUs: this.nowUs() },
      ],
    };
  }

  /** RestoreSwap (module comment): the running VMs stopped, the loaded ones attached at epoch k under the new generation. */
  async swap(c: RestoreSwap__Output): Promise<Partial<Result>> {
    const rec = this.restores.get(c.restoreId);
    if (!rec?.beside || rec.beside.loading) throw new VnsnapError('ERR_NOT_FOUND', `restore ${c.restoreId} has no VMs loaded beside on agent ${this.o.agentId}`);
    const b = rec.beside;
    if (b.swapStarted) throw new VnsnapError('ERR_STATE', `restore ${c.restoreId} was swapped already on agent ${this.o.agentId}`);
    this.o.vnes.require(rec.vne);
    b.swapStarted = true;
    const t0 = this.nowUs();
    const olds = b.loaded.map((l) => this.o.vms.get(rec.vne, l.spec.name));
    await Promise.all(olds.map((o) => (o ? this.o.snapshots.abortIncluding(o, 'restore stops its VMs') : undefined)));
    const swapped = await Promise.allSettled(b.loaded.map((l, i) => this.o.vms.swapIn(l.beside, olds[i])));
    const failed = swapped.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    if (b.generation) this.o.switch().configureVne({ name: rec.vne, generation: b.generation, generationNow: true });
    for (const l of b.loaded) rec.vms.push(await this.o.vms.attachPrepared(rec.vne, l.spec, l.driver, l.beside.handle, b.epoch, rec.id));
    this.o.log.info({ restore: rec.id, vne: rec.vne, replaced: olds.filter((o) => o).length, ms: Math.round((this.nowUs() - t0) / 1000) }, 'restore swapped in');
    return {};
  }

  /**
   * Check every VM of a RestorePrepare before touching anything, without reading an image: one
   * error listing every problem. Returns the channel frames per port (read whole and checked).
   */
  private async check(c: RestorePrepare__Output): Promise<Map<string, ChannelFrame[]>> {
    const problems: string[] = [];
    const images: Artefact__Output[] = [];
    const channels: Artefact__Output[] = [];
    for (const rv of c.vms) {
      if (!rv.vm) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'RestorePrepare: a VM without its spec');
      if (!rv.memory) problems.push(`${rv.vm.name}: no memory artefact`);
      this.o.vms.driverFor(rv.vm);
      images.push(...(rv.memory ? [rv.memory] : []), ...diskLayers(rv));
      channels.push(...rv.channel);
      const existing = this.o.vms.get(c.vne, rv.vm.name);
      if (existing && !c.stopRunning) problems.push(`${rv.vm.name} is running on agent ${this.o.agentId} (stop_running not set)`);
      if (existing && existing.restoreId !== undefined) problems.push(`${rv.vm.name} is already prepared by restore ${existing.restoreId}`);
    }
    const [absent, read] = await Promise.all([presenceProblems(this.o.store, images.map(stored)), Promise.all(channels.map((a) => this.readChannel(a)))]);
    problems.push(...absent, ...read.filter((r): r is string => typeof r === 'string'));
    if (problems.length > 0) throw new VnsnapError('ERR_FAILED_PRECONDITION', `restore ${c.restoreId}: ${problems.join('; ')}`);
    const channel = new Map<string, ChannelFrame[]>();
    read.forEach((r, i) => channel.set((channels[i] as Artefact__Output).owner, r as ChannelFrame[]));
    return channel;
  }

  /** A channel artefact read whole and checked against its size and SHA-256: its frames, or a problem line. */
  private async readChannel(a: Artefact__Output): Promise<ChannelFrame[] | string> {
    const p = (await presenceProblems(this.o.store, [stored(a)]))[0];
    if (p) return p;
    let bytes: Buffer;
    try {
      bytes = await verifyingStore(this.o.store, [stored(a)]).get(a.path);
    } catch (e) {
      return (e as Error).message;
    }
    return decodeChannel(bytes, a.path);
  }

  async resume(c: RestoreResume__Output): Promise<Partial<Result>> {
    const rec = this.restores.get(c.restoreId);
    if (!rec) throw new VnsnapError('ERR_NOT_FOUND', `restore ${c.restoreId} is not prepared on agent ${this.o.agentId}`);
    if (rec.beside && !rec.beside.swapStarted) throw new VnsnapError('ERR_FAILED_PRECONDITION', `restore ${c.restoreId} is loaded beside the running VMs on agent ${this.o.agentId}: RestoreSwap first`);
    this.restores.delete(rec.id);
    const t0 = this.nowUs();
    await Promise.all(rec.vms.map((vm) => vm.driver.resume(vm.key)));
    const tResumed = this.nowUs();
    let injected = 0;
    const out: VmSnapshot[] = [];
    for (const vm of rec.vms) {
      delete vm.restoreId;
      const ti = this.nowUs();
      for (const p of vm.ports) injected += this.o.switch().openGate(p.name, rec.channel.get(p.name) ?? []);
      out.push({
        name: vm.name,
        host: this.o.agentId,
        phases: [
          { phase: 'PHASE_RESUME', startUnixUs: t0, endUnixUs: tResumed },
          { phase: 'PHASE_INJECT', startUnixUs: ti, endUnixUs: this.nowUs() },
        ],
      });
    }
    this.o.metrics.phaseSeconds.observe({ phase: 'PHASE_RESUME' }, (tResumed - t0) / 1e6);
    // Running now: recorded for a later agent to adopt (after every gate opened: no fsync delays one).
    await Promise.all(rec.vms.map((vm) => this.o.vms.saveState(vm)));
    this.o.log.info({ restore: rec.id, injected }, 'restore resumed');
    const diskPaths: Record<string, string> = {};
    for (const vm of rec.vms) {
      const dir = this.o.vms.diskPath(vm);
      if (dir) diskPaths[vm.name] = dir;
    }
    return { resume: { vms: out, injectedFrames: injected, diskPaths } };
  }

  async cancel(c: RestoreCancel__Output): Promise<Partial<Result>> {
    const rec = this.restores.get(c.restoreId);
    if (!rec) return {};
    this.restores.delete(rec.id);
    const b = rec.beside;
    if (b?.loading) {
      // Still loading: prepareBeside discards what it loaded when its loads end.
      b.cancelled = true;
      this.o.log.info({ restore: rec.id }, 'restore cancelled while loading beside');
      return {};
    }
    if (b) {
      // Not swapped: the running VMs run on. Swap begun: what is left of the VNE here stops too.
      for (const l of b.loaded) await l.beside.discard().catch((e) => this.o.log.error({ vm: l.spec.name, err: describeError(e) }, 'discarding a VM loaded beside failed'));
      if (b.swapStarted) {
        for (const l of b.loaded) {
          const left = this.o.vms.get(rec.vne, l.spec.name);
          if (left) await this.o.vms.destroy(left, { discardDisk: true }).catch(() => undefined);
          // A copy swapped in whose ports were never attached is the driver's only.
          await l.driver.stop(vmKey(rec.vne, l.spec.name), { discardDisk: true }).catch(() => undefined);
        }
      }
    }
    for (const vm of rec.vms) if (this.o.vms.holds(vm)) await this.o.vms.destroy(vm, { discardDisk: true });
    this.o.log.info({ restore: rec.id, swapStarted: b?.swapStarted }, 'restore cancelled');
    return {};
  }
}

function stored(a: Artefact__Output): { path: string; size: number; sha256: string; attributes?: Record<string, string> } {
  const attrs = a.attributes ?? {};
  return { path: a.path, size: Number(a.size), sha256: a.sha256, ...(Object.keys(attrs).length > 0 ? { attributes: { ...attrs } } : {}) };
}

function imageOf(rv: RestoreVm__Output): RestoreImage {
  return { memory: stored(rv.memory as Artefact__Output), disks: diskLayers(rv).map(stored) };
}

/** A VM's disk artefacts in order: disk_layers, or an older coordinator's one whole-disk `disk`. */
function diskLayers(rv: RestoreVm__Output): Artefact__Output[] {
  if (rv.diskLayers.length > 0) return rv.diskLayers;
  return rv.disk ? [rv.disk] : [];
}
