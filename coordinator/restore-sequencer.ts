/**
 * Restore of a snapshot onto its original hosts or a new placement (docs/control-plane.md,
 * "Restore sequencing"):
 *
 *   1. checks: the snapshot is COMPLETE, its VNE is neither snapshotting nor restoring, a running
 *      (or degraded) VNE is only replaced with stop_running; the manifest is read and decoded
 *      (tampered or truncated → DATA_LOSS, newer major format → FAILED_PRECONDITION) and must
 *      name this snapshot; every VM maps to a connected agent (request placement, else
 *      place_lost when its host is lost, else the host it was snapshotted on) and has a memory
 *      artefact. A running instance on an unreachable agent is fenced when the operator placed
 *      its VM elsewhere (placement, place_lost) or the VNE is FAILED; otherwise the restore is
 *      refused (FAILED_PRECONDITION naming the agents when the VNE is DEGRADED).
 *   2'. A RUNNING VNE replaced (stop_running; nothing to fence, no kept disk), in place or with
 *      VMs moving to other agents: RestorePrepare with load_beside on every agent of the new
 *      placement first — each VM loaded paused beside its running instance, or on its new agent
 *      while its old instance runs on elsewhere; every image verified while it loads (its chunks
 *      read from the store once), nothing stopped, attached or configured. A failure here (a bad
 *      image) leaves the VNE exactly as it was, its generation too. When every agent loaded,
 *      step 2 is skipped, step 3 stops the VMs that move, and step 4 is RestoreSwap (the running
 *      VMs stopped, the loaded ones attached at epoch k under g); when an agent refused (its
 *      driver cannot, its host lacks the memory for the copies), RestoreCancel discards the
 *      loaded copies everywhere and the restore goes on from step 2.
 *   2. When the restore would touch something before its VMs are loaded (VMs that run, in place
 *      or moving; kept disks to discard; instances to fence: the VNE is not DEFINED),
 *      ValidateArtefacts on every agent of the new placement (its VMs' artefacts, read in full;
 *      one command per VM, all at once, so an agent's VMs are read side by side).
 *      Any problem ends the restore here with nothing touched (DATA_LOSS listing the problems).
 *      A DEFINED VNE (nothing runs, nothing kept) skips that separate read: RestorePrepare
 *      refuses early unless every artefact is present with its size, and every image is
 *      verified while it loads (a bad one fails the load, RestoreCancel removes what was loaded).
 *   3. With stop_running, StopVm for the running VMs that move to another agent (or are not in
 *      the snapshot); the fenced instances are recorded (catalog fenced_vms, a note naming them,
 *      `vm.fenced` events): their agent stops them when it registers again. Generation g = VNE generation + 1; ConfigureVne on every agent of the new
 *      placement (VNI, g, peers with their tunnel endpoints, MAC → agent of the new placement).
 *   4. RestorePrepare on every agent (VMs loaded paused, ports at epoch k under g).
 *   5. RestoreResume on every agent in the same event-loop turn.
 *   6. The VNE is RUNNING with the snapshot's definition, the new placement, generation g and
 *      epoch k.
 *
 * A failure in 2'–4 sends RestoreCancel to every agent of the new placement and leaves the VNE
 * as it was — except that its generation stays g once agents were configured with it (so
 * generations never go back), and a VNE whose VMs were stopped (stop_running) is DEFINED.
 * A failure in 5 leaves the VNE FAILED (some VMs may run). The restore is recorded in the
 * catalog (restores table). Errors reach the caller as VnsnapErrors after the events so far.
 */
import { randomBytes } from 'node:crypto';
import { VnsnapError, isVnsnapError } from '../proto/core/errors';
import type { Artefact__Output } from '../proto/gen/vnsnap/v1/Artefact';
import type { ManifestBody__Output } from '../proto/gen/vnsnap/v1/ManifestBody';
import type { Result__Output } from '../proto/gen/vnsnap/v1/Result';
import type { RestoreVm } from '../proto/gen/vnsnap/v1/RestoreVm';
import type { Snapshot__Output } from '../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotEvent } from '../proto/gen/vnsnap/v1/SnapshotEvent';
import type { VmProgress__Output } from '../proto/gen/vnsnap/v1/VmProgress';
import type { VmSpec__Output } from '../proto/gen/vnsnap/v1/VmSpec';
import type { Vne__Output } from '../proto/gen/vnsnap/v1/Vne';
import type { VneState__Output } from '../proto/gen/vnsnap/v1/VneState';
import { decodeManifest } from '../proto/artefacts/manifest';
import { sendOk, type CommandBody } from './agent-link';
import type { TimerHandle } from '../proto/core/clock';
import { vneStateWord, type SequencerDeps, type SnapshotEventSink } from './snapshot-sequencer';
import { configureVneFor, placementOf, vmsByAgent } from './vne-config';
import { degradedError, degradedReason, lostAgents } from './vne-health';
import { byHost, KeptDisks } from './kept-disks';

export const DEFAULT_RESTORE_TIMEOUT_MS = 300_000;

export interface RestoreRequest {
  snapshotId: string;
  placement?: Record<string, string>;
  stopRunning?: boolean;
  timeoutMs?: number;
  /** Host for every VM whose host is not connected and that `placement` does not name. */
  placeLost?: string;
  /** The VNE's kept disks may be deleted (else a VNE with kept disks is refused: kept-disks.ts). */
  discardDisks?: boolean;
}

interface Plan {
  snapshot: Snapshot__Output;
  vne: Vne__Output;
  body: ManifestBody__Output;
  /** VM → agent of the new placement. */
  placement: Record<string, string>;
  /** agent → its VMs' restore records. */
  byAgent: Map<string, RestoreVm[]>;
  /** agent → the artefacts it validates, one list per VM (validated at once: one ValidateArtefacts each). */
  artefactsByAgent: Map<string, Artefact__Output[][]>;
  /** Running VMs to stop on their current agent first (they move or are not in the snapshot). */
  toStop: { agent: string; vm: string }[];
  /** Running instances on unreachable agents, fenced by this restore (never to run again). */
  fenced: { agent: string; vm: string }[];
}

export class RestoreSequencer {
  private readonly restoring = new Set<string>();

  constructor(readonly deps: SequencerDeps & { newRestoreId?: (snapshotId: string) => string }) {}

  isRestoring(vne: string): boolean {
    return this.restoring.has(vne);
  }

  /** Run a restore; resolves with the restored snapshot's record, rejects with a VnsnapError. */
  async restore(req: RestoreRequest, sink: SnapshotEventSink = () => undefined): Promise<Snapshot__Output> {
    const { catalog, clock, log } = this.deps;
    const emit = (e: Omit<SnapshotEvent, 'snapshotId' | 'timeUnixMs'>) => sink({ snapshotId: req.snapshotId, timeUnixMs: clock.now(), ...e });
    const plan = await this.plan(req);
    const vneName = plan.vne.name;

    // Check again and claim the VNE in one turn (the manifest read above was asynchronous).
    const vne = this.claimable(vneName, req, plan.snapshot.id);
    const prevState: VneState__Output = vne.state;
    const restoreId = this.deps.newRestoreId?.(plan.snapshot.id) ?? `restore-${plan.snapshot.id}-${randomBytes(3).toString('hex')}`;
    const generation = vne.generation + 1;
    catalog.tx(() => {
      catalog.updateVne(vneName, { state: 'VNE_STATE_RESTORING' });
      catalog.insertRestore({ id: restoreId, snapshotId: plan.snapshot.id, vne: vneName, generation, placement: plan.placement, createdUnixMs: clock.now() });
    });
    this.restoring.add(vneName);
    const agents = [...plan.byAgent.keys()];
    this.deps.events?.publish({ kind: 'restore.started', vne: vneName, snapshotId: plan.snapshot.id, message: `restore ${restoreId} onto ${agents.join(', ')}` });
    log.info({ restore: restoreId, snapshot: plan.snapshot.id, vne: vneName, placement: plan.placement, generation }, 'restore starting');

    const ac = new AbortController();
    const timeoutMs = req.timeoutMs || DEFAULT_RESTORE_TIMEOUT_MS;
    let timedOut = false;
    const timer: TimerHandle = clock.setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, timeoutMs);
    const onProgress = (agent: string) => (p: VmProgress__Output) => emit({ vm: { ...p, host: p.host || agent } });
    const onAll = async (targets: readonly string[], body: (agent: string) => CommandBody): Promise<Map<string, Result__Output>> => {
      const settled = await Promise.allSettled(targets.map((a) => sendOk(this.deps.agents, a, body(a), { signal: ac.signal, timeoutMs: 0, onProgress: onProgress(a) }).then((r) => [a, r] as const)));
      const failed = settled.find((s) => s.status === 'rejected');
      if (failed) throw failed.reason;
      return new Map(settled.map((s) => (s as PromiseFulfilledResult<readonly [string, Result__Output]>).value));
    };

    let stage: 'validate' | 'prepare' | 'resume' = 'validate';
    let configured = false;
    let stopped = false;
    try {
      // 2'. A running VNE replaced, in place or moving: every VM loaded beside the running ones,
      // verified while loading, nothing touched until every agent has loaded (module comment).
      let loadedBeside = false;
      if (req.stopRunning && prevState === 'VNE_STATE_RUNNING' && plan.fenced.length === 0 && catalog.disks.kept(vneName).size === 0) {
        stage = 'prepare';
        emit({ note: `restore: loading ${Object.keys(plan.placement).length} VMs beside the running ones on ${agents.join(', ')} (every image verified while it loads; nothing stops before all have loaded)` });
        const prepared = await onAll(agents, (a) => ({ restorePrepare: { restoreId, vne: vneName, epoch: plan.body.epoch, generation, vms: plan.byAgent.get(a) ?? [], stopRunning: true, loadBeside: true } }));
        const refused = [...prepared].filter(([, r]) => !r.restorePrepare?.beside);
        loadedBeside = refused.length === 0;
        if (!loadedBeside) {
          // An agent that does not know load_beside restored the older way: its VMs stopped.
          if (refused.some(([, r]) => !r.restorePrepare?.besideRefused)) stopped = true;
          emit({ note: `restore: not loaded beside (${refused.map(([a, r]) => `${a}: ${r.restorePrepare?.besideRefused || 'an agent without load beside'}`).join('; ')}); restoring the older way` });
          await Promise.all(agents.map((a) => sendOk(this.deps.agents, a, { restoreCancel: { restoreId, vne: vneName } }, { signal: ac.signal, timeoutMs: 0 })));
          stage = 'validate';
        }
      }

      // 2. Validate before touching anything; with nothing to touch, verified while loading (module comment).
      const nArtefacts = [...plan.artefactsByAgent.values()].flat().reduce((n, l) => n + l.length, 0);
      const onAgents = `${agents.length} agent${agents.length === 1 ? '' : 's'}`;
      if (loadedBeside) {
        // verified while loading beside
      } else if (prevState !== 'VNE_STATE_DEFINED' || plan.toStop.length > 0 || plan.fenced.length > 0 || catalog.disks.kept(vneName).size > 0) {
        emit({ note: `restore: validating ${nArtefacts} artefacts on ${onAgents}` });
        const problems = await this.validate(plan, (a, body) => sendOk(this.deps.agents, a, body, { signal: ac.signal, timeoutMs: 0 }));
        if (problems.length > 0) throw new VnsnapError('ERR_DATA_LOSS', `snapshot ${plan.snapshot.id} cannot be restored, its artefacts are invalid: ${problems.join('; ')}`);
      } else emit({ note: `restore: nothing runs; ${nArtefacts} artefacts verified while loading on ${onAgents}` });

      // 3. Discard kept disks (allowed by claimable()), stop what moves, configure the overlay under the new generation.
      stage = 'prepare';
      const kept = await new KeptDisks(catalog, this.deps.agents, () => ({ signal: ac.signal, timeoutMs: 0 }), () => clock.now()).discard(vneName);
      for (const line of [...kept.discarded, ...kept.forgotten]) emit({ note: `restore: ${line}` });
      if (plan.toStop.length > 0) {
        stopped = true;
        emit({ note: `restore: stopping ${plan.toStop.map((s) => `${s.vm} on ${s.agent}`).join(', ')}` });
        await Promise.all(plan.toStop.map((s) => sendOk(this.deps.agents, s.agent, { stopVm: { vne: vneName, vm: s.vm, discardDisk: true } }, { signal: ac.signal, timeoutMs: 0 })));
      }
      if (!loadedBeside && req.stopRunning && (prevState === 'VNE_STATE_RUNNING' || prevState === 'VNE_STATE_DEGRADED')) stopped = true;
      if (plan.fenced.length > 0) {
        catalog.addFenced(vneName, plan.fenced.map((f) => ({ ...f, generation: vne.generation })));
        const list = plan.fenced.map((f) => `${f.vm} on ${f.agent}`).join(', ');
        emit({ note: `restore: fenced ${list} (host unreachable): never to run again under generation ${vne.generation}; stopped when the host returns` });
        for (const f of plan.fenced) this.deps.events?.publish({ kind: 'vm.fenced', vne: vneName, agent: f.agent, snapshotId: plan.snapshot.id, message: `${f.vm} on unreachable ${f.agent} fenced (generation ${vne.generation}); restored on ${plan.placement[f.vm] ?? 'no host (not in the snapshot)'}` });
      }
      emit({ note: `restore: configuring VNE ${vneName} (generation ${generation}) on ${agents.join(', ')}` });
      configured = true;
      const restoredVne: Vne__Output = { ...plan.vne, vni: plan.body.vne?.vni ?? plan.vne.vni, vms: plan.body.vne?.vms ?? plan.vne.vms, generation, epoch: plan.body.epoch, placement: plan.placement };
      await onAll(agents, (a) => ({ configureVne: configureVneFor(restoredVne, a, this.deps.agents) }));

      if (loadedBeside) {
        // 4'. Swap: the running VMs stopped, the loaded ones attached at epoch k under g.
        emit({ note: `restore: swapping the loaded VMs in on ${agents.join(', ')}` });
        stopped = true;
        await onAll(agents, () => ({ restoreSwap: { restoreId, vne: vneName } }));
      } else {
        // 4. Prepare: VMs loaded paused, ports at epoch k under g.
        emit({ note: `restore: loading ${Object.keys(plan.placement).length} VMs paused` });
        await onAll(agents, (a) => ({
          restorePrepare: { restoreId, vne: vneName, epoch: plan.body.epoch, generation, vms: plan.byAgent.get(a) ?? [], stopRunning: !!req.stopRunning, loadBeside: false },
        }));
      }

      // 5. Resume everywhere in one turn.
      stage = 'resume';
      const resumed = await onAll(agents, () => ({ restoreResume: { restoreId, vne: vneName } }));
      const injected = [...resumed.values()].reduce((n, r) => n + (r.resume?.injectedFrames ?? 0), 0);

      // 6. Done.
      clock.clearTimeout(timer);
      catalog.tx(() => {
        catalog.updateVne(vneName, { state: 'VNE_STATE_RUNNING', vni: restoredVne.vni, vms: restoredVne.vms, generation, epoch: plan.body.epoch, placement: plan.placement });
        catalog.finishRestore(restoreId, 'COMPLETE');
        // Where each restored VM's disk is now (vne show); a VM without one has no row.
        catalog.disks.forget(vneName);
        for (const [a, r] of resumed) for (const [vm, path] of Object.entries(r.resume?.diskPaths ?? {})) catalog.disks.put({ vne: vneName, vm, host: a, path, bytes: 0, keptUnixMs: 0 });
      });
      emit({ note: `restore: ${Object.keys(plan.placement).length} VMs resumed at epoch ${plan.body.epoch}, generation ${generation}; ${injected} recorded frames injected` });
      log.info({ restore: restoreId, snapshot: plan.snapshot.id, vne: vneName, injected }, 'restore complete');
      this.deps.events?.publish({ kind: 'restore.complete', vne: vneName, snapshotId: plan.snapshot.id, message: `restore ${restoreId} complete` });
      emit({ done: plan.snapshot });
      return plan.snapshot;
    } catch (e0) {
      clock.clearTimeout(timer);
      const e = timedOut
        ? new VnsnapError('ERR_TIMEOUT', `restore of ${plan.snapshot.id} did not finish within ${timeoutMs} ms (during ${stage})`)
        : isVnsnapError(e0)
          ? e0
          : new VnsnapError('ERR_INTERNAL', `restore of ${plan.snapshot.id} failed: ${(e0 as Error).message}`, { cause: e0 });
      ac.abort();
      let state: VneState__Output = prevState;
      if (stage === 'resume') state = 'VNE_STATE_FAILED';
      else {
        if (stage === 'prepare') {
          for (const a of agents) {
            this.deps.agents.send(a, { restoreCancel: { restoreId, vne: vneName } }).catch((err: Error) => log.warn({ restore: restoreId, agent: a, error: err.message }, 'RestoreCancel not delivered'));
          }
        }
        if (stopped) state = 'VNE_STATE_DEFINED';
      }
      if (state === 'VNE_STATE_RUNNING' && lostAgents(vne, this.deps.agents).length > 0) state = 'VNE_STATE_DEGRADED';
      const stateReason = state === 'VNE_STATE_FAILED' ? `restore ${restoreId} failed while resuming: ${e.message}` : state === 'VNE_STATE_DEGRADED' ? degradedReason(vne, this.deps.agents) : '';
      catalog.tx(() => {
        catalog.updateVne(vneName, {
          state,
          stateReason,
          ...(configured ? { generation } : {}),
          ...(stage === 'resume' ? { placement: plan.placement, epoch: plan.body.epoch } : {}),
        });
        catalog.finishRestore(restoreId, 'FAILED', e.message);
      });
      log.warn({ restore: restoreId, snapshot: plan.snapshot.id, vne: vneName, stage, error: e.message, vneState: state }, 'restore failed');
      this.deps.events?.publish({ kind: 'restore.failed', vne: vneName, snapshotId: plan.snapshot.id, message: e.message });
      throw e;
    } finally {
      this.restoring.delete(vneName);
    }
  }

  /**
   * Step 2's full read: every VM's artefacts validated on its agent, all VMs at once (one
   * ValidateArtefacts per VM, so an agent reads its VMs' images side by side instead of one after
   * another: a remote store's latency overlaps, and local reads overlap the hashing). The problems
   * as "agent: problem" lines, in placement order (agents, then their VMs, as planned).
   */
  private async validate(plan: Plan, send: (agent: string, body: CommandBody) => Promise<Result__Output>): Promise<string[]> {
    const jobs = [...plan.artefactsByAgent].flatMap(([a, perVm]) => perVm.map((artefacts) => ({ a, artefacts })));
    const settled = await Promise.allSettled(jobs.map((j) => send(j.a, { validateArtefacts: { artefacts: j.artefacts } })));
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    return settled.flatMap((s, i) => ((s as PromiseFulfilledResult<Result__Output>).value.validate?.problems ?? []).map((p) => `${jobs[i]?.a}: ${p}`));
  }

  private claimable(vneName: string, req: RestoreRequest, snapshotId: string): Vne__Output {
    const vne = this.deps.catalog.getVne(vneName);
    if (!vne) throw new VnsnapError('ERR_NOT_FOUND', `VNE "${vneName}" of snapshot ${snapshotId} does not exist`);
    if (vne.state === 'VNE_STATE_SNAPSHOTTING') throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vneName}" is being snapshotted; restore it when the snapshot is done`);
    if (vne.state === 'VNE_STATE_RESTORING' || this.restoring.has(vneName)) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vneName}" is already being restored`);
    if ((vne.state === 'VNE_STATE_RUNNING' || vne.state === 'VNE_STATE_DEGRADED') && !req.stopRunning) {
      throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vneName}" is running: stop it first or restore with stop_running to replace its VMs`);
    }
    const kept = [...this.deps.catalog.disks.kept(vneName).values()];
    if (kept.length > 0 && !req.discardDisks) {
      throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vneName}" has kept disks (${byHost(kept)}): the restore starts from the snapshot's disks and would replace them; pass --discard-disks to restore anyway`);
    }
    return vne;
  }

  private async plan(req: RestoreRequest): Promise<Plan> {
    const { catalog, manifests, agents } = this.deps;
    if (!req.snapshotId) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'snapshot_id is required');
    const snapshot = catalog.getSnapshot(req.snapshotId);
    if (!snapshot) throw new VnsnapError('ERR_NOT_FOUND', `snapshot "${req.snapshotId}" does not exist`);
    if (snapshot.state !== 'SNAPSHOT_STATE_COMPLETE') {
      throw new VnsnapError('ERR_FAILED_PRECONDITION', `snapshot ${snapshot.id} is ${snapshot.state.replace(/^SNAPSHOT_STATE_/, '').toLowerCase()}: only complete snapshots can be restored`);
    }
    const vne = this.claimable(snapshot.vne, req, snapshot.id);

    let bytes: Buffer;
    try {
      bytes = await manifests.read(snapshot.manifestPath);
    } catch (e) {
      if (isVnsnapError(e, 'ERR_NOT_FOUND')) throw new VnsnapError('ERR_DATA_LOSS', `the manifest of snapshot ${snapshot.id} (${snapshot.manifestPath}) is missing from the store`);
      throw e;
    }
    const { body } = decodeManifest(bytes, snapshot.manifestPath);
    if (body.snapshotId !== snapshot.id || body.epoch !== snapshot.epoch || !body.vne) {
      throw new VnsnapError('ERR_DATA_LOSS', `${snapshot.manifestPath} does not describe snapshot ${snapshot.id} (it names "${body.snapshotId}" at epoch ${body.epoch})`);
    }
    const vms: VmSpec__Output[] = body.vne.vms;
    const names = new Set(vms.map((v) => v.name));
    const placement: Record<string, string> = {};
    for (const [vm, agent] of Object.entries(req.placement ?? {})) {
      if (!names.has(vm)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `placement names VM "${vm}", which is not in snapshot ${snapshot.id} (VMs: ${[...names].join(', ')})`);
      if (!agent) throw new VnsnapError('ERR_INVALID_ARGUMENT', `placement of VM "${vm}" is empty`);
    }
    if (req.placeLost && !agents.isConnected(req.placeLost)) {
      if (!catalog.getAgent(req.placeLost)) throw new VnsnapError('ERR_NOT_FOUND', `agent "${req.placeLost}" (--place-lost) is unknown`);
      throw new VnsnapError('ERR_AGENT_DISCONNECTED', `agent "${req.placeLost}" (--place-lost) is not connected; nothing was restored`);
    }
    const current = placementOf(vne);
    for (const vm of vms) {
      const home = body.vms.find((v) => v.name === vm.name)?.host || body.vne.placement[vm.name] || vm.host;
      // A VM whose host now (or in the snapshot) is lost goes where --place-lost says.
      const lost = !agents.isConnected(home) || (!!current[vm.name] && !agents.isConnected(current[vm.name] as string));
      const agent = req.placement?.[vm.name] || (lost && req.placeLost) || home;
      if (!agents.isConnected(agent)) {
        if (!catalog.getAgent(agent)) throw new VnsnapError('ERR_NOT_FOUND', `agent "${agent}" (placement of VM ${vm.name}) is unknown`);
        if (vne.state === 'VNE_STATE_DEGRADED') throw degradedError(vne, agents, 'restores in place are', `, or place its VMs elsewhere (--place ${vm.name}=HOST, or --place-lost HOST) to fence them; nothing was restored`);
        throw new VnsnapError('ERR_AGENT_DISCONNECTED', `agent "${agent}" (placement of VM ${vm.name}) is not connected; place the VM elsewhere (--place ${vm.name}=HOST, or --place-lost HOST); nothing was restored`);
      }
      placement[vm.name] = agent;
    }

    // The artefacts of each VM, validated by and loaded on its new agent.
    const byAgent = new Map<string, RestoreVm[]>();
    const artefactsByAgent = new Map<string, Artefact__Output[][]>();
    const byVm = new Map<string, Artefact__Output[]>();
    for (const a of body.artefacts) {
      const vm = artefactVm(a, vms, snapshot.manifestPath.replace(/[^/]*$/, ''), snapshot.vne);
      if (!vm) throw new VnsnapError('ERR_DATA_LOSS', `${snapshot.manifestPath}: cannot tell which VM artefact ${a.path} (owner "${a.owner}") belongs to`);
      byVm.set(vm, [...(byVm.get(vm) ?? []), a]);
    }
    for (const vm of vms) {
      const agent = placement[vm.name] as string;
      const mine = byVm.get(vm.name) ?? [];
      const memory = mine.find((a) => a.kind === 'ARTEFACT_KIND_MEMORY');
      if (!memory) throw new VnsnapError('ERR_DATA_LOSS', `${snapshot.manifestPath} lists no memory artefact for VM ${vm.name}`);
      const diskLayers = orderDiskLayers(snapshot.manifestPath, vm.name, mine.filter((a) => a.kind === 'ARTEFACT_KIND_DISK'));
      const channel = mine.filter((a) => a.kind === 'ARTEFACT_KIND_CHANNEL');
      // An older snapshot's one whole-disk image also goes in `disk` (what agents before disk layers read).
      const whole = diskLayers.length === 1 && diskLayers[0]?.attributes?.layer === undefined ? { disk: diskLayers[0] } : {};
      byAgent.set(agent, [...(byAgent.get(agent) ?? []), { vm: { ...vm, host: agent }, memory, ...whole, diskLayers, channel }]);
      artefactsByAgent.set(agent, [...(artefactsByAgent.get(agent) ?? []), mine]);
    }

    // Running VMs that must stop first because they will not be restored on the same agent.
    // Running instances on unreachable agents are fenced when the operator placed them elsewhere
    // (--place VM=HOST, --place-lost HOST) or the VNE is FAILED; otherwise nothing is restored.
    const toStop: Plan['toStop'] = [];
    const fenced: Plan['fenced'] = [];
    if (req.stopRunning && (vne.state === 'VNE_STATE_RUNNING' || vne.state === 'VNE_STATE_DEGRADED' || vne.state === 'VNE_STATE_FAILED')) {
      for (const [agent, running] of vmsByAgent(vne)) {
        for (const vm of running) {
          if (placement[vm] === agent) continue;
          if (agents.isConnected(agent)) toStop.push({ agent, vm });
          else if (vne.state === 'VNE_STATE_FAILED' || req.placeLost || req.placement?.[vm]) fenced.push({ agent, vm });
          else if (vne.state === 'VNE_STATE_DEGRADED') throw degradedError(vne, agents, 'restores are', `, or place its VMs elsewhere (--place ${vm}=HOST, or --place-lost HOST) to fence them; nothing was restored`);
          else throw new VnsnapError('ERR_AGENT_DISCONNECTED', `agent "${agent}" runs VM ${vm} of VNE ${vne.name} and is not connected, so it cannot be stopped: place it elsewhere (--place ${vm}=HOST, or --place-lost HOST) to fence it; nothing was restored`);
        }
      }
    }
    if (!['VNE_STATE_RUNNING', 'VNE_STATE_DEGRADED', 'VNE_STATE_DEFINED', 'VNE_STATE_FAILED'].includes(vne.state)) {
      throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" cannot be restored while ${vneStateWord(vne.state)}`);
    }
    return { snapshot, vne, body, placement, byAgent, artefactsByAgent, toStop, fenced };
  }
}

/**
 * The VM an artefact belongs to. Memory and disk artefacts are owned by the VM's name; a
 * channel artefact is owned by a port, whose name the agent chooses: it is the VM's name, one
 * of its MACs, the VM's name followed by a separator (vm1.0, vm1:eth0, vm1/0, after an optional
 * "<vne>/" as the agent's "<vne>/<vm>/<i>"), or the
 * artefact lies in a directory (or has a file name) that starts the same way.
 */
export function artefactVm(a: Artefact__Output, vms: readonly VmSpec__Output[], prefix: string, vne = ''): string | undefined {
  const seps = ['.', ':', '/', '#', '-', '_', '@'];
  const byName = (s: string): string | undefined => {
    let best: string | undefined;
    for (const vm of vms) {
      if (s === vm.name || seps.some((c) => s.startsWith(vm.name + c))) {
        if (!best || vm.name.length > best.length) best = vm.name;
      }
    }
    return best;
  };
  // The agent names ports "<vne>/<vm>/<i>": the VNE part is not the VM's.
  const owner = vne && a.owner.startsWith(`${vne}/`) ? a.owner.slice(vne.length + 1) : a.owner;
  if (owner) {
    const exact = vms.find((v) => v.name === owner);
    if (exact) return exact.name;
    const mac = vms.find((v) => v.macs.some((m) => m.toLowerCase() === owner.toLowerCase()));
    if (mac) return mac.name;
    const pre = byName(owner);
    if (pre) return pre;
  }
  const rel = a.path.startsWith(prefix) ? a.path.slice(prefix.length) : a.path;
  return byName(rel) ?? byName(rel.split('/').pop() ?? '');
}

/**
 * A VM's DISK artefacts in the order its agent rebuilds them: by their "layer" attribute (0, the
 * full base, first); one artefact without it is an older snapshot's whole-disk image. Anything
 * else (a gap, a repeat, a mix) is a damaged manifest: ERR_DATA_LOSS.
 */
export function orderDiskLayers(manifest: string, vm: string, disks: Artefact__Output[]): Artefact__Output[] {
  if (disks.length === 1 && disks[0]?.attributes?.layer === undefined) return disks;
  const out: Artefact__Output[] = [];
  for (const a of disks) {
    const v = a.attributes?.layer ?? '';
    const n = /^\d{1,3}$/.test(v) ? Number(v) : -1;
    if (n < 0 || n >= disks.length || out[n]) throw new VnsnapError('ERR_DATA_LOSS', `${manifest}: the disk layers of VM ${vm} are not numbered 0..${disks.length - 1} once each (${JSON.stringify(v)} of ${a.path})`);
    out[n] = a;
  }
  return out;
}
