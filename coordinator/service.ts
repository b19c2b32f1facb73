/**
 * CoordinatorService: every RPC of proto/vnsnap/v1/coordinator.proto.
 *
 * Each RPC is a plain async method taking the request and returning the response (unit tests
 * call them directly); `handlers()` adapts them to grpc-js, and every error leaves through
 * toServiceError (one status table, the vnsnap code in metadata). Snapshots and restores are
 * delegated to their sequencers; this layer validates input, guards each VNE against two
 * operations at once (an in-memory lock for start/stop/update/delete/restore, the VNE state for
 * snapshots) and publishes events. Kept disks (what stop keeps, start boots from, delete and
 * --discard-disks throw away) follow the rules of kept-disks.ts. Snapshot schedules: their RPCs
 * are scheduler-rpc.ts, their runs scheduler.ts (through createSnapshot and deleteSnapshot here).
 * The store commands (verify a snapshot, store stats, garbage collection) are store-ops.ts, run
 * against the one store the coordinator opened (`store`).
 */
import type { ServerWritableStream, ServiceError, sendUnaryData, ServerUnaryCall } from '@grpc/grpc-js';
import { VnsnapError } from '../proto/core/errors';
import { toServiceError } from '../proto/core/grpc-status';
import type { CoordinatorServiceHandlers } from '../proto/gen/vnsnap/v1/CoordinatorService';
import type { CreateSnapshotRequest__Output } from '../proto/gen/vnsnap/v1/CreateSnapshotRequest';
import type { DefineVneRequest__Output } from '../proto/gen/vnsnap/v1/DefineVneRequest';
import type { DeleteSnapshotRequest__Output } from '../proto/gen/vnsnap/v1/DeleteSnapshotRequest';
import type { DeleteVneRequest__Output } from '../proto/gen/vnsnap/v1/DeleteVneRequest';
import type { Event } from '../proto/gen/vnsnap/v1/Event';
import type { GetSnapshotRequest__Output } from '../proto/gen/vnsnap/v1/GetSnapshotRequest';
import type { GetVneRequest__Output } from '../proto/gen/vnsnap/v1/GetVneRequest';
import type { ListAgentsResponse } from '../proto/gen/vnsnap/v1/ListAgentsResponse';
import type { ListSnapshotsRequest__Output } from '../proto/gen/vnsnap/v1/ListSnapshotsRequest';
import type { RestoreSnapshotRequest__Output } from '../proto/gen/vnsnap/v1/RestoreSnapshotRequest';
import type { RunningVm__Output } from '../proto/gen/vnsnap/v1/RunningVm';
import type { Snapshot__Output } from '../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotEvent } from '../proto/gen/vnsnap/v1/SnapshotEvent';
import type { StoreStats } from '../proto/gen/vnsnap/v1/StoreStats';
import type { GcResult } from '../proto/gen/vnsnap/v1/GcResult';
import type { StartVneRequest__Output } from '../proto/gen/vnsnap/v1/StartVneRequest';
import type { StopVneRequest__Output } from '../proto/gen/vnsnap/v1/StopVneRequest';
import type { Vne__Output } from '../proto/gen/vnsnap/v1/Vne';
import type { WatchEventsRequest__Output } from '../proto/gen/vnsnap/v1/WatchEventsRequest';
import type { Logger } from '../proto/core/log';
import { sendOk, type AgentLink } from './agent-link';
import { agentRecordToProto, IN_PROGRESS_STATES, type Catalog } from './catalog';
import type { Clock } from '../proto/core/clock';
import type { EventBus } from './events';
import type { ManifestStore } from './manifest-store';
import type { SnapshotStore } from '../proto/store/snapshot-store';
import type { RestoreSequencer } from './restore-sequencer';
import type { MigrateSequencer } from './migrate-sequencer';
import type { MigrateVneRequest__Output } from '../proto/gen/vnsnap/v1/MigrateVneRequest';
import { migrateVne } from './migrate-rpc';
import type { SnapshotSequencer } from './snapshot-sequencer';
import { checkLength, checkTimeoutMs, MAX_DESCRIPTION_CHARS, MAX_ID_CHARS, MAX_NAME_CHARS, validateVneDefinition } from './validation';
import { nextStartGeneration, stopVmsOf } from './vne-stop';
import { configureVneFor, placementOf, vmsByAgent } from './vne-config';
import { VneHealth } from './vne-health';
import { byHost, KeptDisks } from './kept-disks';
import type { VmDiskRecord } from './vm-disks';
import { formatBytes } from './cli/format';
import { Scheduler } from './scheduler';
import { ScheduleRpcs } from './scheduler-rpc';
import type { DeleteScheduleRequest__Output } from '../proto/gen/vnsnap/v1/DeleteScheduleRequest';
import type { GetScheduleRequest__Output } from '../proto/gen/vnsnap/v1/GetScheduleRequest';
import type { SetScheduleRequest__Output } from '../proto/gen/vnsnap/v1/SetScheduleRequest';
import type { CollectGarbageRequest__Output } from '../proto/gen/vnsnap/v1/CollectGarbageRequest';
import type { GcEvent } from '../proto/gen/vnsnap/v1/GcEvent';
import type { VerifySnapshotRequest__Output } from '../proto/gen/vnsnap/v1/VerifySnapshotRequest';
import { identityOf } from '../proto/core/tls';
import { StoreOps } from './store-ops';

/** A request whose newer fields may be absent (tests and older callers): absent is false. */
type Lenient<T, K extends keyof T> = Omit<T, K> & Partial<Pick<T, K>>;

export interface CoordinatorServiceOptions {
  catalog: Catalog;
  agents: AgentLink & { connectedIds(): string[] };
  snapshots: SnapshotSequencer;
  restores: RestoreSequencer;
  /** Live migration (absent: MigrateVne is FAILED_PRECONDITION). */
  migrations?: MigrateSequencer;
  manifests: ManifestStore;
  /** The snapshot store (the agents' store, as the coordinator's config names it). */
  store: SnapshotStore;
  /** The store in one line for messages and `store stats` (no credentials). */
  storeName?: string;
  events: EventBus;
  clock: Clock;
  log: Logger;
  /**
   * The agents share one store (one machine, or a shared filesystem): any connected agent can
   * delete a snapshot's artefacts. Otherwise the agents that wrote them must. Default true.
   */
  sharedStore?: boolean;
  /** Timeout of StartVne/StopVne/DeleteSnapshot commands to agents. */
  commandTimeoutMs?: number;
}

type VneOp = 'starting' | 'stopping' | 'updating' | 'deleting' | 'restoring' | 'migrating';

export class CoordinatorServiceImpl {
  private readonly ops = new Map<string, VneOp>();
  private readonly watchers = new Set<ServerWritableStream<WatchEventsRequest__Output, Event>>();

  readonly health: VneHealth;
  private readonly kept: KeptDisks;
  /** Snapshot schedules: the timer (started by the server) and the four RPCs. */
  readonly scheduler: Scheduler;
  readonly schedules: ScheduleRpcs;
  /** Verify, store stats, garbage collection. */
  readonly storeOps: StoreOps;

  constructor(private readonly o: CoordinatorServiceOptions) {
    this.health = new VneHealth({
      catalog: o.catalog,
      agents: o.agents,
      events: o.events,
      log: o.log,
      commandTimeoutMs: o.commandTimeoutMs,
      now: () => o.clock.now(),
      busy: (vne) => this.ops.has(vne) || !!o.snapshots.active(vne) || o.restores.isRestoring(vne),
    });
    this.kept = new KeptDisks(o.catalog, o.agents, () => this.cmd, () => o.clock.now());
    this.scheduler = new Scheduler({
      catalog: o.catalog,
      clock: o.clock,
      log: o.log,
      snapshot: (r, sink) => this.createSnapshot(r, sink),
      deleteSnapshot: (id) => this.deleteSnapshot({ id }),
    });
    this.schedules = new ScheduleRpcs({ catalog: o.catalog, clock: o.clock, scheduler: this.scheduler });
    this.storeOps = new StoreOps({ catalog: o.catalog, store: o.store, manifests: o.manifests, clock: o.clock, log: o.log });
  }

  // ---- guards -----------------------------------------------------------------------------

  private mustGetVne(name: string): Vne__Output {
    if (!name) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'VNE name is required');
    checkLength('VNE name', name, MAX_NAME_CHARS);
    const v = this.o.catalog.getVne(name);
    if (!v) throw new VnsnapError('ERR_NOT_FOUND', `VNE "${name}" does not exist`);
    return v;
  }

  /** Refuse when the VNE has an operation in flight; otherwise take the lock and run fn. */
  private async exclusive<T>(vne: Vne__Output, op: VneOp, fn: () => Promise<T>): Promise<T> {
    this.assertIdle(vne);
    this.ops.set(vne.name, op);
    try {
      return await fn();
    } finally {
      this.ops.delete(vne.name);
    }
  }

  private assertIdle(vne: Vne__Output): void {
    const op = this.ops.get(vne.name);
    if (op) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" is busy (${op}); try again when that is done`);
    const run = this.o.snapshots.active(vne.name);
    if (run || vne.state === 'VNE_STATE_SNAPSHOTTING') throw new VnsnapError('ERR_FAILED_PRECONDITION', `a snapshot of VNE "${vne.name}" is in progress${run ? ` (${run.id})` : ''}`);
    if (vne.state === 'VNE_STATE_RESTORING' || this.o.restores.isRestoring(vne.name)) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" is being restored`);
  }

  private requireConnected(vne: Vne__Output, placement: Record<string, string>): void {
    const byAgent = new Map<string, string[]>();
    for (const [vm, a] of Object.entries(placement)) byAgent.set(a, [...(byAgent.get(a) ?? []), vm]);
    for (const [a, vms] of byAgent) {
      if (!this.o.agents.isConnected(a)) throw new VnsnapError('ERR_AGENT_DISCONNECTED', `agent "${a}" (host of ${vms.join(', ')} in VNE ${vne.name}) is not connected`);
    }
  }

  private get cmd() {
    return { timeoutMs: this.o.commandTimeoutMs ?? 120_000 };
  }

  // ---- VNEs -------------------------------------------------------------------------------

  async defineVne(req: DefineVneRequest__Output): Promise<Vne__Output> {
    const def = validateVneDefinition(req.vne);
    const { catalog, clock } = this.o;
    if (catalog.getVne(def.name)) throw new VnsnapError('ERR_ALREADY_EXISTS', `VNE "${def.name}" already exists`);
    const clash = catalog.vneByVni(def.vni);
    if (clash) throw new VnsnapError('ERR_ALREADY_EXISTS', `VNI ${def.vni} is already used by VNE "${clash.name}"`);
    const now = clock.now();
    const vne: Vne__Output = { ...def, generation: 1, epoch: 0, state: 'VNE_STATE_DEFINED', createdUnixMs: now, updatedUnixMs: now, placement: {}, vmStatus: [], fenced: [], stateReason: '' };
    vne.placement = placementOf(vne);
    catalog.insertVne(vne);
    this.o.events.publish({ kind: 'vne.defined', vne: vne.name, message: `${vne.vms.length} VMs, VNI ${vne.vni}` });
    return this.health.describe(vne);
  }

  async updateVne(req: DefineVneRequest__Output): Promise<Vne__Output> {
    const def = validateVneDefinition(req.vne);
    const cur = this.mustGetVne(def.name);
    this.assertIdle(cur);
    if (cur.state === 'VNE_STATE_RUNNING' || cur.state === 'VNE_STATE_DEGRADED') throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${cur.name}" is running: stop it before changing its definition`);
    const clash = this.o.catalog.vneByVni(def.vni);
    if (clash && clash.name !== def.name) throw new VnsnapError('ERR_ALREADY_EXISTS', `VNI ${def.vni} is already used by VNE "${clash.name}"`);
    this.kept.checkUpdate(cur.name, cur.vms, def.vms);
    const placement: Record<string, string> = {};
    for (const vm of def.vms) placement[vm.name] = vm.host;
    const v = this.o.catalog.updateVne(def.name, { vni: def.vni, vms: def.vms, placement });
    this.o.events.publish({ kind: 'vne.updated', vne: v.name, message: `${v.vms.length} VMs, VNI ${v.vni}` });
    return this.health.describe(v);
  }

  async deleteVne(req: Lenient<DeleteVneRequest__Output, 'forgetUnreachableDisks'>): Promise<{ discarded: string[]; forgotten: string[] }> {
    const vne = this.mustGetVne(req.name);
    return this.exclusive(vne, 'deleting', async () => {
      if (vne.state === 'VNE_STATE_RUNNING' || vne.state === 'VNE_STATE_DEGRADED') throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" is running: stop it first`);
      const snaps = this.o.catalog.listSnapshots(vne.name);
      if (snaps.length > 0 && !req.deleteSnapshots) {
        throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" has ${snaps.length} snapshot${snaps.length === 1 ? '' : 's'}: delete them first or pass delete_snapshots`);
      }
      const away = this.kept.unreachable(vne.name);
      if (away.length > 0 && !req.forgetUnreachableDisks) {
        throw new VnsnapError('ERR_AGENT_DISCONNECTED', `VNE "${vne.name}" has kept disks on hosts that are not connected (${byHost(away)}): delete it when they are back, or pass --forget-unreachable-disks to forget those disks (their directories stay on those hosts)`);
      }
      const disks = await this.kept.discard(vne.name);
      for (const s of snaps) await this.deleteSnapshotArtefacts(s);
      this.o.catalog.tx(() => {
        for (const s of snaps) this.o.catalog.deleteSnapshot(s.id);
        this.o.catalog.deleteVne(vne.name);
      });
      this.o.events.publish({ kind: 'vne.deleted', vne: vne.name, message: snaps.length ? `with ${snaps.length} snapshot${snaps.length === 1 ? '' : 's'}` : '' });
      await this.forgetOnAgents(vne.name, vne.vni);
      return disks;
    });
  }

  /**
   * A deleted VNE leaves every connected agent's switch (ForgetVne: the in-kernel data path's
   * VXLAN device of its VNI goes with it). The delete is done whatever they answer: an agent
   * that refuses (a port of the VNE still attached) or is older is logged, not an error.
   */
  private async forgetOnAgents(vne: string, vni: number): Promise<void> {
    const { agents, log } = this.o;
    await Promise.all(
      agents.connectedIds().map((a) =>
        sendOk(agents, a, { forgetVne: { vne, vni } }, this.cmd).catch((e: Error) => log.warn({ vne, agent: a, error: e.message }, 'ForgetVne of a deleted VNE failed: the agent keeps its switch entry and VXLAN device')),
      ),
    );
  }

  async listVnes(): Promise<{ vnes: Vne__Output[] }> {
    return { vnes: this.o.catalog.listVnes().map((v) => this.health.describe(v)) };
  }

  async getVne(req: GetVneRequest__Output): Promise<Vne__Output> {
    return this.health.describe(this.mustGetVne(req.name));
  }

  async startVne(req: Lenient<StartVneRequest__Output, 'discardDisks'>): Promise<{ vne: Vne__Output; disks: string[] }> {
    const vne = this.mustGetVne(req.name);
    return this.exclusive(vne, 'starting', async () => {
      if (vne.state === 'VNE_STATE_RUNNING' || vne.state === 'VNE_STATE_DEGRADED') throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" is already running`);
      this.health.forget(vne.name);
      // A VM with a kept disk boots from it on the host that kept it; --discard-disks boots fresh.
      if (!req.discardDisks) this.kept.requireReachable(vne.name);
      const placement: Record<string, string> = {};
      for (const vm of vne.vms) placement[vm.name] = vm.host;
      const kept = req.discardDisks ? new Map<string, VmDiskRecord>() : this.kept.of(vne.name);
      for (const [vm, r] of kept) placement[vm] = r.host;
      this.requireConnected(vne, placement);
      // A new generation when a fenced instance may still run (vne-stop.ts).
      const generation = nextStartGeneration(vne, this.o.catalog);
      const discarded = req.discardDisks ? await this.kept.discard(vne.name) : { discarded: [], forgotten: [] };
      const target: Vne__Output = { ...vne, placement, generation };
      const agents = [...new Set(Object.values(placement))].sort();
      const { agents: link, log } = this.o;
      try {
        await Promise.all(agents.map((a) => sendOk(link, a, { configureVne: configureVneFor(target, a, link) }, this.cmd)));
        // StartVm.vne_vms is "names and MACs" only: with n VMs every StartVm carries n of them
        // (n² in all), so the driver specs and hosts are left out of that list.
        const vneVms = vne.vms.map((v) => ({ name: v.name, macs: v.macs }));
        await Promise.all(
          vne.vms.map(async (vm) => {
            const host = placement[vm.name] as string;
            const r = await sendOk(link, host, { startVm: { vne: vne.name, vm, epoch: vne.epoch, vneVms, keptDisk: kept.has(vm.name) } }, this.cmd);
            this.kept.started(vne.name, vm.name, host, r);
          }),
        );
      } catch (e) {
        log.warn({ vne: vne.name, error: (e as Error).message }, 'StartVne failed; stopping what started');
        // A VM that booted from its kept disk keeps it again; a fresh one leaves nothing behind.
        await Promise.allSettled(
          vne.vms
            .filter((vm) => link.isConnected(placement[vm.name] as string))
            .map((vm) => link.send(placement[vm.name] as string, { stopVm: { vne: vne.name, vm: vm.name, discardDisk: !kept.has(vm.name) } }, this.cmd)),
        );
        for (const vm of vne.vms) if (!kept.has(vm.name)) this.o.catalog.disks.forget(vne.name, [vm.name]);
        for (const r of kept.values()) this.o.catalog.disks.put(r);
        this.o.catalog.updateVne(vne.name, { state: 'VNE_STATE_DEFINED', placement, generation });
        throw e;
      }
      const v = this.o.catalog.updateVne(vne.name, { state: 'VNE_STATE_RUNNING', placement, generation });
      const fromKept = kept.size > 0 ? `, ${kept.size} from kept disks` : '';
      this.o.events.publish({ kind: 'vne.started', vne: vne.name, message: `${vne.vms.length} VMs on ${agents.join(', ')}${fromKept}` });
      const boots = [...kept.values()].map((r) => `${r.vm} booted from its kept disk on ${r.host}: ${r.path} (${formatBytes(r.bytes)})`);
      return { vne: this.health.describe(v), disks: [...discarded.discarded, ...discarded.forgotten, ...boots] };
    });
  }

  async stopVne(req: Lenient<StopVneRequest__Output, 'discardDisks'>): Promise<{ vne: Vne__Output; disks: string[]; notes: string[] }> {
    const vne = this.mustGetVne(req.name);
    return this.exclusive(vne, 'stopping', async () => {
      const discardDisk = req.discardDisks === true;
      if (vne.state === 'VNE_STATE_DEFINED') {
        if (!discardDisk) return { vne: this.health.describe(vne), disks: [], notes: [] };
        const d = await this.kept.discard(vne.name, (away) => new VnsnapError('ERR_AGENT_DISCONNECTED', `VNE "${vne.name}": the kept disk of ${byHost(away)} is on a host that is not connected; nothing was discarded: try again when it is back (or delete the VNE with --forget-unreachable-disks)`));
        return { vne: this.health.describe(vne), disks: d.discarded, notes: [] };
      }
      const disks: string[] = [];
      const notes: string[] = [];
      // Rules (a host away: its VMs fenced, the VNE DEFINED all the same): vne-stop.ts. A VM
      // whose disk was kept stays placed where its disk is (the next start boots it there).
      const v = await stopVmsOf(vne, this.o, this.cmd, {
        discardDisk,
        stopped: (vm, agent, r) => {
          const { line, note } = this.kept.stopped(vne.name, vm, agent, r);
          if (line) disks.push(line);
          if (note) notes.push(note);
        },
        placeOf: (vm, host) => this.kept.of(vne.name).get(vm)?.host ?? host,
        summary: () => {
          const n = this.kept.of(vne.name).size;
          return n > 0 ? `${n} disk${n === 1 ? '' : 's'} kept` : '';
        },
      });
      this.health.forget(vne.name);
      return { vne: this.health.describe(v), disks: disks.sort(), notes: notes.sort() };
    });
  }

  // ---- agents -----------------------------------------------------------------------------

  /** An agent (re)registered with the VMs it runs (rules: vne-health.ts). */
  agentJoined(agentId: string, running: readonly RunningVm__Output[], endpointChanged = true): void {
    this.health.agentJoined(agentId, running, endpointChanged);
  }

  /** An agent's session ended or missed its heartbeats (rules: vne-health.ts). */
  agentLeft(agentId: string, reason: string): void {
    this.health.agentLeft(agentId, reason);
  }

  async listAgents(): Promise<ListAgentsResponse> {
    const vmsOf = new Map<string, string[]>();
    for (const v of this.o.catalog.listVnes()) {
      if (v.state === 'VNE_STATE_DEFINED') continue;
      for (const [a, vms] of vmsByAgent(v)) vmsOf.set(a, [...(vmsOf.get(a) ?? []), ...vms.map((vm) => `${v.name}/${vm}`)]);
    }
    return { agents: this.o.catalog.listAgents().map((a) => agentRecordToProto(a, this.o.agents.isConnected(a.id), (vmsOf.get(a.id) ?? []).sort())) };
  }

  // ---- snapshots --------------------------------------------------------------------------

  /** Start a snapshot; events go to sink; resolves with the final record (complete or aborted). */
  createSnapshot(req: CreateSnapshotRequest__Output, sink: (e: SnapshotEvent) => void): Promise<Snapshot__Output> {
    if (!req.vne) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'vne is required');
    checkTimeoutMs('timeout_ms', req.timeoutMs);
    checkTimeoutMs('precopy_deadline_ms', req.precopyDeadlineMs);
    checkLength('description', req.description, MAX_DESCRIPTION_CHARS);
    const vne = this.mustGetVne(req.vne);
    const op = this.ops.get(vne.name);
    if (op) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" is busy (${op}); try again when that is done`);
    const run = this.o.snapshots.start({ vne: req.vne, mode: req.mode, precopyDeadlineMs: req.precopyDeadlineMs, timeoutMs: req.timeoutMs, description: req.description }, sink);
    return run.done;
  }

  async listSnapshots(req: ListSnapshotsRequest__Output): Promise<{ snapshots: Snapshot__Output[] }> {
    return { snapshots: this.o.catalog.listSnapshots(req.vne || undefined) };
  }

  async getSnapshot(req: GetSnapshotRequest__Output): Promise<Snapshot__Output> {
    if (!req.id) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'snapshot id is required');
    checkLength('snapshot id', req.id, MAX_ID_CHARS);
    const s = this.o.catalog.getSnapshot(req.id);
    if (!s) throw new VnsnapError('ERR_NOT_FOUND', `snapshot "${req.id}" does not exist`);
    return s;
  }

  async deleteSnapshot(req: DeleteSnapshotRequest__Output): Promise<{ note: string }> {
    const s = await this.getSnapshot(req);
    if (IN_PROGRESS_STATES.includes(s.state)) throw new VnsnapError('ERR_FAILED_PRECONDITION', `snapshot ${s.id} is in progress (${s.state.replace(/^SNAPSHOT_STATE_/, '').toLowerCase()}): wait for it to finish`);
    const vne = this.o.catalog.getVne(s.vne);
    if (vne && (vne.state === 'VNE_STATE_RESTORING' || this.o.restores.isRestoring(vne.name))) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" is being restored; delete its snapshots when the restore is done`);
    await this.deleteSnapshotArtefacts(s);
    this.o.catalog.deleteSnapshot(s.id);
    this.o.events.publish({ kind: 'snapshot.deleted', vne: s.vne, snapshotId: s.id });
    return { note: this.storeOps.deleteNote() };
  }

  // ---- the store --------------------------------------------------------------------------

  private get storeName(): string {
    return this.o.storeName ?? 'of the coordinator';
  }

  /** Re-read and check every artefact of a snapshot; the result is recorded (store-ops.ts). */
  verifySnapshot(req: VerifySnapshotRequest__Output, sink: (e: SnapshotEvent) => void): Promise<Snapshot__Output> {
    if (!req.id) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'snapshot id is required');
    checkLength('snapshot id', req.id, MAX_ID_CHARS);
    return this.storeOps.verifySnapshot(req.id, sink);
  }

  getStoreStats(): Promise<StoreStats> {
    return this.storeOps.stats(this.storeName);
  }

  /** One garbage collection at a time; `who` is named to a second caller. */
  collectGarbage(req: Partial<CollectGarbageRequest__Output>, who: string, sink: (e: GcEvent) => void): Promise<GcResult> {
    const grace = req.graceGiven ? Number(req.graceMs ?? 0) : undefined;
    if (grace !== undefined && (!Number.isSafeInteger(grace) || grace < 0)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `grace_ms ${String(req.graceMs)} is out of range`);
    return this.storeOps.collectGarbage(grace, who, sink, this.storeName);
  }

  /** DeleteArtefacts on one connected agent (shared store) or on every agent that wrote them; then the manifest. */
  private async deleteSnapshotArtefacts(s: Snapshot__Output): Promise<void> {
    const internals = this.o.catalog.snapshotInternals(s.id);
    const storePrefix = internals?.storePrefix ?? '';
    const paths = [...s.artefacts.map((a) => a.path), ...(s.manifestPath ? [s.manifestPath] : [])];
    const writers = internals?.agents ?? [];
    const connected = this.o.agents.connectedIds();
    let targets: string[];
    if (this.o.sharedStore ?? true) {
      const pick = writers.find((a) => this.o.agents.isConnected(a)) ?? connected[0];
      targets = pick ? [pick] : [];
    } else {
      targets = writers;
    }
    const complete = s.state === 'SNAPSHOT_STATE_COMPLETE';
    if (complete) {
      if (targets.length === 0) throw new VnsnapError('ERR_AGENT_DISCONNECTED', `no agent is connected to delete the artefacts of snapshot ${s.id}`);
      const missing = targets.filter((a) => !this.o.agents.isConnected(a));
      if (missing.length > 0) throw new VnsnapError('ERR_AGENT_DISCONNECTED', `agent${missing.length > 1 ? 's' : ''} ${missing.join(', ')} must delete artefacts of snapshot ${s.id} and ${missing.length > 1 ? 'are' : 'is'} not connected`);
      await Promise.all(targets.map((a) => sendOk(this.o.agents, a, { deleteArtefacts: { paths, storePrefix } }, this.cmd)));
    } else {
      // Aborted: its agents already deleted (or will, with the pending abort) what was partial.
      await Promise.allSettled(targets.filter((a) => this.o.agents.isConnected(a)).map((a) => this.o.agents.send(a, { deleteArtefacts: { paths, storePrefix } }, this.cmd)));
    }
    if (s.manifestPath) await this.o.manifests.remove(s.manifestPath);
  }

  restoreSnapshot(req: Omit<RestoreSnapshotRequest__Output, 'placeLost' | 'discardDisks'> & { placeLost?: string; discardDisks?: boolean }, sink: (e: SnapshotEvent) => void): Promise<Snapshot__Output> {
    if (!req.snapshotId) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'snapshot_id is required');
    checkLength('snapshot_id', req.snapshotId, MAX_ID_CHARS);
    checkTimeoutMs('timeout_ms', req.timeoutMs);
    for (const [vm, agent] of Object.entries(req.placement)) {
      checkLength('placement: a VM name', vm, MAX_NAME_CHARS);
      checkLength(`placement of VM "${vm}"`, agent, MAX_ID_CHARS);
    }
    checkLength('place_lost', req.placeLost ?? '', MAX_ID_CHARS);
    const s = this.o.catalog.getSnapshot(req.snapshotId);
    const vne = s ? this.o.catalog.getVne(s.vne) : undefined;
    const op = vne ? this.ops.get(vne.name) : undefined;
    if (vne && op) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" is busy (${op}); try again when that is done`);
    if (vne) this.ops.set(vne.name, 'restoring');
    return this.o.restores
      .restore({ snapshotId: req.snapshotId, placement: req.placement, stopRunning: req.stopRunning, timeoutMs: req.timeoutMs, placeLost: req.placeLost || undefined, discardDisks: req.discardDisks === true }, sink)
      .then((snap) => {
        this.health.forget(snap.vne);
        return snap;
      })
      .finally(() => {
        if (vne && this.ops.get(vne.name) === 'restoring') this.ops.delete(vne.name);
      });
  }

  /** Live migration under the VNE's operation lock (migrate-rpc.ts). */
  migrateVne(req: MigrateVneRequest__Output, sink: (e: SnapshotEvent) => void): Promise<unknown> {
    return migrateVne(this.o.migrations, req, sink, (name, fn) => this.exclusive(this.mustGetVne(name), 'migrating', fn));
  }

  // ---- gRPC adapter -----------------------------------------------------------------------

  handlers(): CoordinatorServiceHandlers {
    const unary =
      <Req, Res>(fn: (req: Req) => Promise<Res>) =>
      (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>): void => {
        Promise.resolve()
          .then(() => fn(call.request))
          .then(
            (r) => cb(null, r),
            (e: unknown) => cb(toServiceError(e) as ServiceError),
          );
      };
    const stream =
      <Req, Ev = SnapshotEvent>(fn: (req: Req, sink: (e: Ev) => void, call: ServerWritableStream<Req, Ev>) => Promise<unknown>) =>
      (call: ServerWritableStream<Req, Ev>): void => {
        const sink = (e: Ev) => {
          if (!call.cancelled && !call.writableEnded) call.write(e);
        };
        Promise.resolve()
          .then(() => fn(call.request, sink, call))
          .then(
            () => {
              if (!call.writableEnded) call.end();
            },
            (e: unknown) => {
              if (!call.writableEnded) call.emit('error', toServiceError(e));
            },
          );
      };
    return {
      DefineVne: unary((r: DefineVneRequest__Output) => this.defineVne(r)),
      UpdateVne: unary((r: DefineVneRequest__Output) => this.updateVne(r)),
      DeleteVne: unary((r: DeleteVneRequest__Output) => this.deleteVne(r)),
      ListVnes: unary(() => this.listVnes()),
      GetVne: unary((r: GetVneRequest__Output) => this.getVne(r)),
      StartVne: unary((r: StartVneRequest__Output) => this.startVne(r)),
      StopVne: unary((r: StopVneRequest__Output) => this.stopVne(r)),
      ListAgents: unary(() => this.listAgents()),
      CreateSnapshot: stream((r: CreateSnapshotRequest__Output, sink) => this.createSnapshot(r, sink)),
      ListSnapshots: unary((r: ListSnapshotsRequest__Output) => this.listSnapshots(r)),
      GetSnapshot: unary((r: GetSnapshotRequest__Output) => this.getSnapshot(r)),
      DeleteSnapshot: unary((r: DeleteSnapshotRequest__Output) => this.deleteSnapshot(r)),
      RestoreSnapshot: stream((r: RestoreSnapshotRequest__Output, sink) => this.restoreSnapshot(r, sink)),
      MigrateVne: stream((r: MigrateVneRequest__Output, sink) => this.migrateVne(r, sink)),
      SetSchedule: unary((r: SetScheduleRequest__Output) => this.schedules.setSchedule(r)),
      ListSchedules: unary(() => this.schedules.listSchedules()),
      GetSchedule: unary((r: GetScheduleRequest__Output) => this.schedules.getSchedule(r)),
      DeleteSchedule: unary((r: DeleteScheduleRequest__Output) => this.schedules.deleteSchedule(r)),
      VerifySnapshot: stream((r: VerifySnapshotRequest__Output, sink) => this.verifySnapshot(r, sink)),
      GetStoreStats: unary(() => this.getStoreStats()),
      CollectGarbage: stream<CollectGarbageRequest__Output, GcEvent>((r, sink, call) => this.collectGarbage(r, callerOf(call), sink)),
      WatchEvents: (call: ServerWritableStream<WatchEventsRequest__Output, Event>) => {
        const filter = call.request.vne;
        const unsubscribe = this.o.events.subscribe((e) => {
          if (filter && e.vne !== filter) return;
          if (!call.cancelled && !call.writableEnded) call.write(e);
        });
        this.watchers.add(call);
        const done = () => {
          unsubscribe();
          this.watchers.delete(call);
        };
        call.on('cancelled', done);
        call.on('close', done);
        call.on('error', done);
      },
    };
  }

  /** End every WatchEvents stream (shutdown). */
  endStreams(): void {
    for (const w of [...this.watchers]) if (!w.writableEnded) w.end();
    this.watchers.clear();
  }
}

/** Who made a call, for messages: the certificate's CN, else the peer address (plaintext). */
function callerOf(call: ServerWritableStream<unknown, unknown>): string {
  let cn: string | undefined;
  try {
    cn = identityOf(call.getAuthContext().sslPeerCertificate)?.commonName;
  } catch {
    cn = undefined;
  }
  return cn ? `"${cn}"` : `a client at ${call.getPeer()}`;
}
