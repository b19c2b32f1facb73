/**
 * The snapshot state machine of docs/control-plane.md, one run per snapshot:
 *
 *   PRECOPY ──(every VM ready, or precopy deadline)──► COMMITTING ──(every CommitResult)──►
 *   PERSISTING ──(every PersistResult; manifest written atomically)──► COMPLETE
 *      └───────────────┴──────── any failure, disconnect, timeout ──────► ABORTED
 *
 * Pure sequencing over injected parts (AgentLink, Catalog, ManifestStore, Clock), so every
 * transition is unit-tested with fake agents and a manual clock.
 *
 * - start() is synchronous: it checks the VNE (RUNNING, nothing else in progress, every agent
 *   connected) and records the snapshot with epoch k = VNE epoch + 1 (VNE → SNAPSHOTTING) in
 *   one catalog transaction before any command is sent, so two requests cannot both pass. That
 *   record is made durable off the event loop (Catalog.durable) while the pre-copy runs; the
 *   commit waits for it if it is not yet (a restart must find the snapshot to abort it).
 * - PRECOPY: SnapshotBegin to every agent with VMs of the VNE. A VM is ready when its agent
 *   reports Progress{phase PRECOPY, phase_done} or the agent's Begin Result arrives (BACKGROUND
 *   mode: at once). All ready, or the precopy deadline → COMMITTING. Waiting for the slowest
 *   VM costs no VM a pause: each driver keeps its VM running until its own cut (docs/qemu.md),
 *   and each agent resumes each VM on its own; the VMs' pauses need not overlap (the epoch
 *   colouring of the switches keeps the cut consistent).
 * - COMMITTING: SnapshotCommit to every agent in one synchronous loop (same event-loop turn),
 *   before anything else: the catalog's COMMITTING mark, the log line and the events follow
 *   (a restart aborts a snapshot found in PRECOPY or COMMITTING alike, so nothing depends on
 *   the mark). PERSISTING likewise: SnapshotPersist first, then the per-VM results and mark.
 *   A background commit names the cut instant (cut-instant.ts): now + the margin, in that
 *   agent's clock (its offset from the session's round trips); every agent begins its cuts then,
 *   or at once if the commit reaches it later; later by a lead when every VM of the VNE has
 *   tracked memory (their rounds run from the receipt until it). The commit delays its
 *   CommitResults report (PHASE_COMMIT) set the next snapshot's margin. A pre-copy commit names one, later by a lead,
 *   when every VM of the VNE has tracked memory or VNSNAP_PRECOPY_LEAD_MS sets a lead
 *   (cut-instant.ts): its agents begin their cuts at receipt and stop each VM at the instant,
 *   after the VM's final round of its copy.
 * - PERSISTING: SnapshotPersist to every agent; each VM must come back with a memory artefact
 *   and every artefact must lie under the snapshot's store prefix; then the manifest is
 *   written (temporary name, fsync, rename, fsync dir) and only then is the catalog entry
 *   COMPLETE and the VNE's epoch k; COMPLETE is reported once that entry is durable.
 * - ABORTED (any failed Result, ERR_AGENT_DISCONNECTED, the overall timeout, stop()): commands
 *   still in flight are cancelled; in one catalog transaction the snapshot becomes ABORTED with
 *   the reason, the VNE RUNNING at epoch k, and a pending abort is queued for every agent of
 *   the VNE; SnapshotAbort goes to each connected agent (its pending row is deleted when it
 *   acknowledges) and disconnected agents get it when they register again. A manifest written
 *   after an abort (a timeout racing the write) is removed.
 *
 * Events: `state` on every transition, `vm` for each agent Progress (host filled in), `note`
 * for the deadline, `done` with the final record. `run.done` resolves with that record and
 * never rejects.
 */
import { randomBytes } from 'node:crypto';
import { describeError, VnsnapError } from '../proto/core/errors';
import type { Artefact__Output } from '../proto/gen/vnsnap/v1/Artefact';
import type { Result__Output } from '../proto/gen/vnsnap/v1/Result';
import type { Snapshot__Output } from '../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotEvent } from '../proto/gen/vnsnap/v1/SnapshotEvent';
import type { SnapshotMode } from '../proto/gen/vnsnap/v1/SnapshotMode';
import type { SnapshotMode__Output } from '../proto/gen/vnsnap/v1/SnapshotMode';
import type { SnapshotState__Output } from '../proto/gen/vnsnap/v1/SnapshotState';
import type { VmProgress__Output } from '../proto/gen/vnsnap/v1/VmProgress';
import type { VmSnapshot__Output } from '../proto/gen/vnsnap/v1/VmSnapshot';
import type { Vne__Output } from '../proto/gen/vnsnap/v1/Vne';
import type { VneState__Output } from '../proto/gen/vnsnap/v1/VneState';
import type { Logger } from '../proto/core/log';
import { encodeManifest } from '../proto/artefacts/manifest';
import { resultError, type AgentLink, type CommandBody } from './agent-link';
import type { Catalog } from './catalog';
import type { Clock, TimerHandle } from '../proto/core/clock';
import type { EventBus } from './events';
import type { ManifestStore } from './manifest-store';
import { vmsByAgent } from './vne-config';
import { allVmsTracked, commitDelayMs, cutInstants, CutMargin } from './cut-instant';
import type { OffsetSample } from './clock-offset';
import { degradedError, degradedReason } from './vne-health';

export const DEFAULT_PRECOPY_DEADLINE_MS = 30_000;
export const DEFAULT_SNAPSHOT_TIMEOUT_MS = 300_000;
export const MANIFEST_NAME = 'manifest.pb';

export type SnapshotEventSink = (e: SnapshotEvent) => void;

export interface SnapshotRequest {
  vne: string;
  mode?: SnapshotMode;
  precopyDeadlineMs?: number;
  timeoutMs?: number;
  description?: string;
}

export interface SequencerDeps {
  agents: AgentLink;
  catalog: Catalog;
  manifests: ManifestStore;
  clock: Clock;
  log: Logger;
  events?: EventBus;
  /** vnsnap release written into manifests. */
  version?: string;
  /** The margin of the commits' cut instants (cut-instant.ts); default: adaptive. */
  cutMargin?: CutMargin;
  /** Wall-clock µs of the cut instants, the clock the agents' offsets are taken against (default: clock.now() × 1000). */
  nowUs?: () => number;
  /** Each agent's clock offset (the registry's clockOffset); default: none known (0). */
  clockOffset?: (agentId: string) => OffsetSample | undefined;
  newSnapshotId?: (vne: string, epoch: number) => string;
}

type State = SnapshotState__Output;

const TRANSITIONS: Readonly<Record<State, readonly State[]>> = {
  SNAPSHOT_STATE_UNSPECIFIED: [],
  SNAPSHOT_STATE_PRECOPY: ['SNAPSHOT_STATE_COMMITTING', 'SNAPSHOT_STATE_ABORTED'],
  SNAPSHOT_STATE_COMMITTING: ['SNAPSHOT_STATE_PERSISTING', 'SNAPSHOT_STATE_ABORTED'],
  SNAPSHOT_STATE_PERSISTING: ['SNAPSHOT_STATE_COMPLETE', 'SNAPSHOT_STATE_ABORTED'],
  SNAPSHOT_STATE_COMPLETE: [],
  SNAPSHOT_STATE_ABORTED: [],
};

export function snapshotStorePrefix(id: string): string {
  return `snapshots/${id}/`;
}

export function defaultSnapshotId(vne: string, epoch: number): string {
  return `${vne}-${epoch}-${randomBytes(3).toString('hex')}`;
}

export class SnapshotSequencer {
  private readonly runs = new Map<string, SnapshotRun>();
  readonly newSnapshotId: (vne: string, epoch: number) => string;
  readonly cutMargin: CutMargin;
  readonly nowUs: () => number;

  constructor(readonly deps: SequencerDeps) {
    this.newSnapshotId = deps.newSnapshotId ?? defaultSnapshotId;
    this.cutMargin = deps.cutMargin ?? new CutMargin();
    this.nowUs = deps.nowUs ?? (() => deps.clock.now() * 1000);
  }

  /** The snapshot in progress for a VNE. */
  active(vne: string): SnapshotRun | undefined {
    return this.runs.get(vne);
  }

  get activeCount(): number {
    return this.runs.size;
  }

  /**
   * Check and record a new snapshot, then start it. Throws (nothing recorded, nothing sent)
   * when it cannot begin: INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, AGENT_DISCONNECTED.
   */
  start(req: SnapshotRequest, sink?: SnapshotEventSink): SnapshotRun {
    const { catalog, agents, clock } = this.deps;
    if (!req.vne) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'vne is required');
    const mode: SnapshotMode__Output = modeName(req.mode);
    const vne = catalog.getVne(req.vne);
    if (!vne) throw new VnsnapError('ERR_NOT_FOUND', `VNE "${req.vne}" does not exist`);
    const running = this.runs.get(vne.name);
    if (running || vne.state === 'VNE_STATE_SNAPSHOTTING') {
      throw new VnsnapError('ERR_FAILED_PRECONDITION', `a snapshot of VNE "${vne.name}" is already in progress${running ? ` (${running.id})` : ''}: one snapshot per VNE at a time`);
    }
    if (vne.state === 'VNE_STATE_RESTORING') throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" is being restored; snapshot it when the restore is done`);
    if (vne.state === 'VNE_STATE_DEGRADED') throw degradedError(vne, agents, 'snapshots are', '; nothing was snapshotted');
    if (vne.state !== 'VNE_STATE_RUNNING') throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" is not running (${vneStateWord(vne.state)}): start it first`);
    const byAgent = vmsByAgent(vne);
    for (const [agent, vms] of byAgent) {
      if (!agents.isConnected(agent)) throw new VnsnapError('ERR_AGENT_DISCONNECTED', `agent "${agent}" (running ${vms.join(', ')}) is not connected; nothing was snapshotted`);
    }
    const epoch = vne.epoch + 1;
    const id = this.newSnapshotId(vne.name, epoch);
    const now = clock.now();
    const definition: Vne__Output = { ...vne, epoch, state: 'VNE_STATE_RUNNING' };
    catalog.tx(() => {
      catalog.insertSnapshot({
        id,
        vne: vne.name,
        epoch,
        generation: vne.generation,
        mode,
        description: req.description ?? '',
        storePrefix: snapshotStorePrefix(id),
        agents: [...byAgent.keys()],
        vneDefinition: definition,
        createdUnixMs: now,
      });
      catalog.updateVne(vne.name, { state: 'VNE_STATE_SNAPSHOTTING' });
    });
    const run = new SnapshotRun(this, {
      id,
      vne: definition,
      epoch,
      mode,
      description: req.description ?? '',
      byAgent,
      precopyDeadlineMs: req.precopyDeadlineMs || DEFAULT_PRECOPY_DEADLINE_MS,
      timeoutMs: req.timeoutMs || DEFAULT_SNAPSHOT_TIMEOUT_MS,
      createdUnixMs: now,
      sink,
    });
    this.runs.set(vne.name, run);
    run.recordedDurably(catalog.volatile ? undefined : catalog.durable());
    void run.done.then(() => {
      if (this.runs.get(vne.name) === run) this.runs.delete(vne.name);
    });
    run.begin();
    return run;
  }

  /** Abort every snapshot in progress (coordinator shutdown) and wait for their records. */
  async stop(reason = 'coordinator stopping'): Promise<void> {
    const runs = [...this.runs.values()];
    for (const r of runs) r.abort(reason);
    await Promise.all(runs.map((r) => r.done));
  }
}

interface RunSpec {
  id: string;
  vne: Vne__Output;
  epoch: number;
  mode: SnapshotMode__Output;
  description: string;
  byAgent: Map<string, string[]>;
  precopyDeadlineMs: number;
  timeoutMs: number;
  createdUnixMs: number;
  sink?: SnapshotEventSink;
}

export class SnapshotRun {
  readonly id: string;
  readonly vneName: string;
  readonly epoch: number;
  readonly storePrefix: string;
  readonly done: Promise<Snapshot__Output>;
  private st: State = 'SNAPSHOT_STATE_PRECOPY';
  private resolveDone!: (s: Snapshot__Output) => void;
  private readonly ac = new AbortController();
  private overallTimer?: TimerHandle;
  private deadlineTimer?: TimerHandle;
  private readonly ready = new Set<string>();
  private readonly commits = new Map<string, VmSnapshot__Output[]>();
  private readonly persists = new Map<string, { artefacts: Artefact__Output[]; vms: VmSnapshot__Output[]; lostFrames: number }>();
  private readonly listeners: SnapshotEventSink[] = [];
  private readonly vmCount: number;
  /** The snapshot's catalog record is on stable storage (the commit waits for it). */
  private recorded = false;
  /** When (clock ms) the record became durable, and every VM ready: the commit's log line says which the begin waited for. */
  private recordedAtMs: number | undefined;
  private readyAtMs: number | undefined;
  private commitWaiting = false;

  constructor(
    private readonly seq: SnapshotSequencer,
    private readonly spec: RunSpec,
  ) {
    this.id = spec.id;
    this.vneName = spec.vne.name;
    this.epoch = spec.epoch;
    this.storePrefix = snapshotStorePrefix(spec.id);
    this.vmCount = [...spec.byAgent.values()].reduce((n, l) => n + l.length, 0);
    if (spec.sink) this.listeners.push(spec.sink);
    this.done = new Promise((r) => (this.resolveDone = r));
  }

  get state(): State {
    return this.st;
  }

  /** Add a listener for this run's events (e.g. a second client). */
  onEvent(l: SnapshotEventSink): void {
    this.listeners.push(l);
  }

  /** The barrier that makes the snapshot's record durable: the commit is held until it resolves. */
  recordedDurably(barrier: Promise<void> | undefined): void {
    if (!barrier) {
      this.recorded = true;
      this.recordedAtMs = this.deps.clock.now();
      return;
    }
    barrier.then(
      () => {
        this.recorded = true;
        this.recordedAtMs = this.deps.clock.now();
        if (this.commitWaiting) this.commit();
      },
      (e: unknown) => this.fail(e),
    );
  }

  /** Abort from outside (stop, operator). No effect once COMPLETE or ABORTED. */
  abort(reason: string): void {
    this.fail(new VnsnapError('ERR_SNAPSHOT_ABORTED', reason));
  }

  private get deps() {
    return this.seq.deps;
  }

  private emit(e: Omit<SnapshotEvent, 'snapshotId' | 'timeUnixMs'>): void {
    const ev: SnapshotEvent = { snapshotId: this.id, timeUnixMs: this.deps.clock.now(), ...e };
    for (const l of this.listeners) {
      try {
        l(ev);
      } catch (err) {
        this.deps.log.warn({ snapshot: this.id, error: (err as Error).message }, 'snapshot event listener failed');
      }
    }
  }

  private transition(to: State): void {
    if (!TRANSITIONS[this.st].includes(to)) throw new VnsnapError('ERR_STATE', `snapshot ${this.id}: no transition ${this.st} → ${to}`);
    this.deps.log.info({ snapshot: this.id, vne: this.vneName, epoch: this.epoch, from: this.st, to }, 'snapshot state');
    this.st = to;
    this.emit({ state: to });
    if (to !== 'SNAPSHOT_STATE_COMPLETE' && to !== 'SNAPSHOT_STATE_ABORTED') {
      this.deps.events?.publish({ kind: 'snapshot.state', vne: this.vneName, snapshotId: this.id, message: to });
    }
  }

  private isTerminal(): boolean {
    return this.st === 'SNAPSHOT_STATE_COMPLETE' || this.st === 'SNAPSHOT_STATE_ABORTED';
  }

  /**
   * Send one command to every agent of the snapshot in this turn; `each` handles each Result
   * while the run is in state `expect` (the state the caller enters right after sending).
   */
  private fanOut(expect: State, bodyOf: CommandBody | ((agent: string) => CommandBody), each: (agent: string, r: Result__Output) => void, all: () => void): void {
    const agents = [...this.spec.byAgent.keys()];
    let left = agents.length;
    for (const agent of agents) {
      const body = typeof bodyOf === 'function' ? bodyOf(agent) : bodyOf;
      this.deps.agents
        .send(agent, body, { signal: this.ac.signal, timeoutMs: 0, onProgress: (p) => this.onProgress(agent, p) })
        .then(
          (r) => {
            if (this.st !== expect) return;
            if (!r.ok) return this.fail(resultError(agent, body, r));
            each(agent, r);
            if (--left === 0 && this.st === expect) all();
          },
          (e: unknown) => this.fail(e),
        );
    }
  }

  begin(): void {
    const { clock } = this.deps;
    this.deps.log.info({ snapshot: this.id, vne: this.vneName, epoch: this.epoch, mode: this.spec.mode, agents: [...this.spec.byAgent.keys()] }, 'snapshot starting');
    this.emit({ state: 'SNAPSHOT_STATE_PRECOPY' });
    this.deps.events?.publish({ kind: 'snapshot.state', vne: this.vneName, snapshotId: this.id, message: 'SNAPSHOT_STATE_PRECOPY' });
    this.overallTimer = clock.setTimeout(() => {
      this.overallTimer = undefined;
      this.fail(new VnsnapError('ERR_TIMEOUT', `snapshot did not complete within ${this.spec.timeoutMs} ms (it was ${stateWord(this.st)})`));
    }, this.spec.timeoutMs);
    if (this.spec.mode === 'SNAPSHOT_MODE_PRECOPY') {
      this.deadlineTimer = clock.setTimeout(() => {
        this.deadlineTimer = undefined;
        if (this.st !== 'SNAPSHOT_STATE_PRECOPY') return;
        this.emit({ note: `precopy deadline (${this.spec.precopyDeadlineMs} ms) passed with ${this.ready.size} of ${this.vmCount} VMs ready: committing` });
        this.commit();
      }, this.spec.precopyDeadlineMs);
    }
    for (const [agent, vms] of this.spec.byAgent) {
      const body: CommandBody = {
        snapshotBegin: { snapshotId: this.id, vne: this.vneName, epoch: this.epoch, mode: this.spec.mode, vms, storePrefix: this.storePrefix },
      };
      this.deps.agents.send(agent, body, { signal: this.ac.signal, timeoutMs: 0, onProgress: (p) => this.onProgress(agent, p) }).then(
        (r) => {
          if (this.isTerminal()) return;
          if (!r.ok) return this.fail(resultError(agent, body, r));
          for (const vm of vms) this.ready.add(vm);
          this.maybeCommit();
        },
        (e: unknown) => this.fail(e),
      );
    }
  }

  private onProgress(agent: string, p: VmProgress__Output): void {
    if (this.isTerminal()) return;
    const vm: VmProgress__Output = { ...p, host: p.host || agent };
    this.emit({ vm });
    if (this.st === 'SNAPSHOT_STATE_PRECOPY' && p.phase === 'PHASE_PRECOPY' && p.phaseDone && this.spec.byAgent.get(agent)?.includes(p.vm)) {
      this.ready.add(p.vm);
      this.maybeCommit();
    }
  }

  private maybeCommit(): void {
    if (this.st !== 'SNAPSHOT_STATE_PRECOPY' || this.ready.size < this.vmCount) return;
    this.readyAtMs ??= this.deps.clock.now();
    this.commit();
  }

  /** SnapshotCommit to every agent first; the catalog's mark, the log and the events after. */
  private commit(): void {
    if (this.st !== 'SNAPSHOT_STATE_PRECOPY') return;
    this.deps.clock.clearTimeout(this.deadlineTimer);
    this.deadlineTimer = undefined;
    if (!this.recorded) {
      // The record of epoch k is not on stable storage yet: the cut waits for it.
      this.commitWaiting = true;
      return;
    }
    const at = this.deps.clock.now();
    // The cut instant, now + the margin on this clock, each agent's in its own (0: none, cut at
    // receipt). Later by a lead when every VM has tracked memory (their rounds run until it),
    // and in pre-copy when VNSNAP_PRECOPY_LEAD_MS sets one (cut-instant.ts).
    const background = this.spec.mode === 'SNAPSHOT_MODE_BACKGROUND';
    const allTracked = allVmsTracked(this.spec.vne.vms);
    const marginMs = background ? this.seq.cutMargin.backgroundMarginMs(allTracked) : this.seq.cutMargin.precopyMarginMs(allTracked);
    const offsetOf = (agent: string): number | undefined => this.deps.clockOffset?.(agent)?.offsetUs;
    const instants = marginMs > 0 ? cutInstants(this.seq.nowUs() + marginMs * 1000, [...this.spec.byAgent.keys()], offsetOf) : undefined;
    this.fanOut(
      'SNAPSHOT_STATE_COMMITTING',
      (agent) => ({ snapshotCommit: { snapshotId: this.id, ...(instants && { cutAtUnixUs: instants.get(agent) }) } }),
      (agent, r) => {
        const vms = r.commit?.vms ?? [];
        this.commits.set(agent, vms);
        const delay = background || marginMs > 0 ? commitDelayMs(vms, offsetOf(agent) ?? 0) : undefined; // commits that named an instant
        if (delay !== undefined) this.seq.cutMargin.observe(delay);
      },
      () => this.persist(),
    );
    this.deps.catalog.setSnapshotPhase(this.id, 'SNAPSHOT_STATE_COMMITTING', at);
    // From the record: every VM ready (the agents' begin; none at a deadline) and the record durable (the commit waits for both).
    const sinceRecord = (t: number | undefined): number | null => (t === undefined ? null : t - this.spec.createdUnixMs);
    this.deps.log.info({ snapshot: this.id, cutMarginMs: marginMs, readyMs: sinceRecord(this.readyAtMs), recordDurableMs: sinceRecord(this.recordedAtMs), offsetsUs: Object.fromEntries([...this.spec.byAgent.keys()].map((a) => [a, offsetOf(a) ?? null])) }, 'snapshot commit sent');
    this.transition('SNAPSHOT_STATE_COMMITTING');
  }

  /** SnapshotPersist to every agent first; the per-VM results and the mark after. */
  private persist(): void {
    const at = this.deps.clock.now();
    this.fanOut(
      'SNAPSHOT_STATE_PERSISTING',
      { snapshotPersist: { snapshotId: this.id } },
      (agent, r) => this.persists.set(agent, { artefacts: r.persist?.artefacts ?? [], vms: r.persist?.vms ?? [], lostFrames: r.persist?.lostFrames ?? 0 }),
      () => void this.finish(),
    );
    const vms = [...this.spec.byAgent].flatMap(([agent, names]) => names.map((n) => withHost(this.commits.get(agent)?.find((v) => v.name === n) ?? emptyVm(n), agent)));
    this.deps.catalog.tx(() => {
      this.deps.catalog.putSnapshotVms(this.id, vms);
      this.deps.catalog.setSnapshotPhase(this.id, 'SNAPSHOT_STATE_PERSISTING', at);
    });
    this.transition('SNAPSHOT_STATE_PERSISTING');
  }

  private async finish(): Promise<void> {
    const { catalog, manifests, clock } = this.deps;
    const artefacts: Artefact__Output[] = [];
    const vms: VmSnapshot__Output[] = [];
    let lostFrames = 0;
    for (const [agent, names] of this.spec.byAgent) {
      const p = this.persists.get(agent);
      lostFrames += p?.lostFrames ?? 0;
      for (const a of p?.artefacts ?? []) {
        if (!a.path.startsWith(this.storePrefix) || a.path.includes('..')) {
          return this.fail(new VnsnapError('ERR_INTERNAL', `agent ${agent} reported artefact "${a.path}" outside the snapshot's store prefix ${this.storePrefix}`));
        }
        artefacts.push(a);
      }
      for (const n of names) {
        if (!p?.artefacts.some((a) => a.kind === 'ARTEFACT_KIND_MEMORY' && a.owner === n)) {
          return this.fail(new VnsnapError('ERR_INTERNAL', `agent ${agent} persisted no memory artefact for VM ${n}`));
        }
        const committed = this.commits.get(agent)?.find((v) => v.name === n) ?? emptyVm(n);
        vms.push(withHost(mergeVm(committed, p.vms.find((v) => v.name === n)), agent));
      }
    }
    const completedUnixMs = clock.now();
    const manifestPath = `${this.storePrefix}${MANIFEST_NAME}`;
    let bytes: Buffer;
    try {
      bytes = encodeManifest({
        snapshotId: this.id,
        vne: this.spec.vne,
        epoch: this.epoch,
        mode: this.spec.mode,
        createdUnixMs: this.spec.createdUnixMs,
        completedUnixMs,
        vms,
        artefacts,
        vnsnapVersion: this.deps.version ?? '',
        description: this.spec.description,
      });
      await manifests.write(manifestPath, bytes);
    } catch (e) {
      return this.fail(e);
    }
    if (this.st !== 'SNAPSHOT_STATE_PERSISTING') {
      // Aborted (timeout, stop) while the manifest was being written: it must not stay.
      await manifests.remove(manifestPath).catch(() => undefined);
      return;
    }
    const sizeBytes = artefacts.reduce((n, a) => n + a.size, 0) + bytes.length;
    catalog.tx(() => {
      catalog.completeSnapshot(this.id, { completedUnixMs, manifestPath, artefacts, vms, lostFrames, sizeBytes });
      const v = catalog.getVne(this.vneName);
      if (v) catalog.updateVne(this.vneName, { epoch: Math.max(v.epoch, this.epoch), ...afterSnapshot(v, this.deps.agents) });
    });
    // COMPLETE is reported only once it would survive a power loss (an fsync off the loop).
    try {
      await catalog.durable();
    } catch (e) {
      this.fail(e);
    }
    if (this.st !== 'SNAPSHOT_STATE_PERSISTING') {
      // Aborted while the record was made durable (timeout, stop, the fsync failed).
      await manifests.remove(manifestPath).catch(() => undefined);
      return;
    }
    this.clearTimers();
    this.transition('SNAPSHOT_STATE_COMPLETE');
    this.finishWith('snapshot.complete', `snapshot complete: ${vms.length} VMs, ${artefacts.length} artefacts, ${sizeBytes} bytes`);
  }

  private clearTimers(): void {
    this.deps.clock.clearTimeout(this.overallTimer);
    this.deps.clock.clearTimeout(this.deadlineTimer);
    this.overallTimer = this.deadlineTimer = undefined;
  }

  private finishWith(kind: 'snapshot.complete' | 'snapshot.aborted', message: string): void {
    const rec = this.deps.catalog.getSnapshot(this.id);
    if (!rec) throw new VnsnapError('ERR_INTERNAL', `snapshot ${this.id} vanished from the catalog`);
    this.emit({ done: rec });
    this.deps.events?.publish({ kind, vne: this.vneName, snapshotId: this.id, message });
    this.resolveDone(rec);
  }

  private fail(e: unknown): void {
    if (this.isTerminal()) return;
    const { catalog, agents, clock, log } = this.deps;
    const reason = describeError(e);
    this.clearTimers();
    this.ac.abort();
    // Every agent of the VNE (not only those of the snapshot: the VNE's ports must all reach k).
    const vne = catalog.getVne(this.vneName);
    const targets = new Set<string>(this.spec.byAgent.keys());
    if (vne) for (const a of vmsByAgent(vne).keys()) targets.add(a);
    catalog.tx(() => {
      catalog.abortSnapshot(this.id, reason, clock.now());
      if (vne) catalog.updateVne(this.vneName, { epoch: Math.max(vne.epoch, this.epoch), ...afterSnapshot(vne, agents) });
      catalog.addPendingAborts([...targets].map((agentId) => ({ snapshotId: this.id, agentId, vne: this.vneName, epoch: this.epoch, storePrefix: this.storePrefix })));
    });
    log.warn({ snapshot: this.id, vne: this.vneName, epoch: this.epoch, in: this.st, reason }, 'snapshot aborted');
    this.transition('SNAPSHOT_STATE_ABORTED');
    const body: CommandBody = { snapshotAbort: { snapshotId: this.id, vne: this.vneName, epoch: this.epoch, storePrefix: this.storePrefix } };
    for (const agent of targets) {
      if (!agents.isConnected(agent)) continue; // delivered when it registers again
      agents.send(agent, body).then(
        (r) => {
          if (r.ok) catalog.removePendingAbort(this.id, agent);
          else log.warn({ snapshot: this.id, agent, error: r.errorMessage }, 'SnapshotAbort failed on the agent; it stays pending');
        },
        (err: Error) => log.warn({ snapshot: this.id, agent, error: err.message }, 'SnapshotAbort not delivered; it stays pending'),
      );
    }
    this.finishWith('snapshot.aborted', reason);
  }
}

function modeName(m: SnapshotMode | undefined): SnapshotMode__Output {
  if (m === 'SNAPSHOT_MODE_BACKGROUND' || m === 2) return 'SNAPSHOT_MODE_BACKGROUND';
  if (m === undefined || m === 'SNAPSHOT_MODE_UNSPECIFIED' || m === 0 || m === 'SNAPSHOT_MODE_PRECOPY' || m === 1) return 'SNAPSHOT_MODE_PRECOPY';
  throw new VnsnapError('ERR_INVALID_ARGUMENT', `unknown snapshot mode ${String(m)}`);
}

/**
 * The state a snapshot leaves its VNE in: SNAPSHOTTING becomes RUNNING, or DEGRADED when an agent
 * of it left meanwhile (its `left` event found the VNE snapshotting); other states stay.
 */
export function afterSnapshot(vne: Vne__Output, agents: Pick<AgentLink, 'isConnected'>): { state: VneState__Output; stateReason?: string } {
  if (vne.state !== 'VNE_STATE_SNAPSHOTTING') return { state: vne.state };
  if ([...vmsByAgent(vne).keys()].some((a) => !agents.isConnected(a))) return { state: 'VNE_STATE_DEGRADED', stateReason: degradedReason(vne, agents) };
  return { state: 'VNE_STATE_RUNNING' };
}

export function vneStateWord(s: string): string {
  return s.replace(/^VNE_STATE_/, '').toLowerCase();
}

function stateWord(s: State): string {
  return s.replace(/^SNAPSHOT_STATE_/, '').toLowerCase();
}

function emptyVm(name: string): VmSnapshot__Output {
  return { name, host: '', pauseMs: 0, cutUnixUs: 0, phases: [], memoryBytes: 0, diskBytes: 0, channelFrames: 0 };
}

function withHost(v: VmSnapshot__Output, agent: string): VmSnapshot__Output {
  return { ...v, host: v.host || agent };
}

/** Commit's record (pause, cut) completed with Persist's (sizes, channel frames, later phases). */
export function mergeVm(committed: VmSnapshot__Output, persisted: VmSnapshot__Output | undefined): VmSnapshot__Output {
  if (!persisted) return committed;
  const phases = [...committed.phases];
  for (const p of persisted.phases) if (!phases.some((q) => q.phase === p.phase && q.startUnixUs === p.startUnixUs)) phases.push(p);
  return {
    name: committed.name,
    host: committed.host || persisted.host,
    pauseMs: committed.pauseMs || persisted.pauseMs,
    cutUnixUs: committed.cutUnixUs || persisted.cutUnixUs,
    phases,
    memoryBytes: persisted.memoryBytes || committed.memoryBytes,
    diskBytes: persisted.diskBytes || committed.diskBytes,
    channelFrames: persisted.channelFrames || committed.channelFrames,
  };
}
