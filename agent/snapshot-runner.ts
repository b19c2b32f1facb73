/**
 * The local part of a snapshot: SnapshotBegin, SnapshotCommit, SnapshotPersist and SnapshotAbort
 * for the VMs of one VNE on this host. Pure sequencing over injected parts (the VM table, the
 * switch, the store, a Clock), like the coordinator's sequencers.
 *
 *   begin     one SnapshotJob per VM, begun together (precopy: the live copy runs; background:
 *             what the driver prepares before its cut; a failed begin aborts the others);
 *             Progress per VM at most every progressIntervalMs (the readiness change at once);
 *             the Result when every job is ready, or early when Commit or Abort arrives.
 *   commit    a commit that names a cut instant (SnapshotCommit.cut_at_unix_us, this agent's clock:
 *             coordinator/cut-instant.ts) waits until then, so that every agent's VMs stop
 *             together whatever the commit's arrival; one that arrives after it (or names none:
 *             an older coordinator) cuts at once. The wait is bounded (maxCutWaitMs) and ended
 *             by an abort; the VMs run meanwhile, and no port is gated yet. A job with work to
 *             do before its `stop` (SnapshotJob.approachCut: a tracked VM's rounds of the blocks
 *             its guest wrote) does it meanwhile, from the receipt, and its cut begins at the
 *             instant with the others', so its `stop` is written then (a job whose work runs
 *             late stops when it ends, its ports gated meanwhile). A
 *             pre-copy commit's instant is waited for here likewise when every job here
 *             approaches it so; else not: the cuts begin at the receipt (the ports gated, each
 *             VM's final round of its copy running) and the driver writes `stop` at the
 *             instant (driver.ts CutInstant), so the VMs stop together whatever their rounds'
 *             lengths. Then
 *             the cut of each VM, in DESIGN.md's order, is one switch.cutPorts(ports, k, atPause)
 *             (switch/snapshot/cut.ts):
 *               gate                        frames for the VM's ports are held
 *               job.cut(pass)               the driver pauses the VM, then calls pass:
 *                 drain                       what the VM wrote before the pause leaves (epoch
 *                 advance                     k-1), e(p) = k, recording k starts, held frames
 *                 release                     released (they wait in the paused VM's NIC queue)
 *               driver: disk snapshot, final copy / copy-on-write start, resume.
 *             If the driver fails, the ports still being cut are un-gated at their old epoch.
 *             Each VM's cut is traced into its phases: COMMIT (the coordinator's send of the
 *             commit → its receipt here), CUT_AT (the named instant → the cuts began: how late),
 *             DRAIN (the switch's pass while the VM is paused),
 *             LOOP_STALL (the longest stall of this event loop in the cut window — from
 *             CUT_RAISE_LEAD_MS before an instant waited for, else from the receipt — to the
 *             VM's resume, loop-stall-probe.ts) and the driver's own (QEMU: QMP round trips
 *             and STOP/RESUME delivery). Nothing on the cut path logs (a log line is a
 *             synchronous write); the commit is logged once every cut has settled. In
 *             background mode the event loop runs at a raised scheduling priority (SCHED_FIFO
 *             below QEMU's pause boost) from the begin to the last VM's drain, bounded
 *             (cut-priority.ts), so QEMU's STOP is read as it arrives; the rest of the pause
 *             is QEMU's. Jobs that take the window themselves (ownCutWindow) have it from
 *             CUT_RAISE_LEAD_MS before the commit's instant instead (raiseBeforeInstant).
 *             The trace's LOOP_RUNQ and LOOP_GC say what the loop's stalls were (the probe's
 *             causes).
 *             When each cut settles, the VNE's ports nobody is cutting (outside the snapshot,
 *             or of a VM whose cut failed) pass the cut without a pause, or the switch would
 *             never send its markers.
 *   persist   every image durable (the VMs' records saved again: a driver's state, such as the
 *             disk chain the next snapshot stores only a layer over, moved with it), the
 *             switch's channel state of epoch k (its recording ends when every peer's marker
 *             arrived), one channel artefact per port; a VM's disk is one DISK artefact per
 *             layer (attribute "layer") or one whole-disk artefact.
 *   abort     jobs aborted (VMs resumed), the VNE's ports advanced to k, partial artefacts deleted.
 *
 * A snapshot in progress when the session with the coordinator drops is aborted locally after
 * the coordinator's dead_after_ms (sessionLost): VMs never stay stopped because the coordinator
 * went away.
 */
import type { Clock, TimerHandle } from '../proto/core/clock';
import { describeError, VnsnapError } from '../proto/core/errors';
import type { Logger } from '../proto/core/log';
import { encodeChannel } from '../proto/artefacts/channel-state';
import type { Artefact } from '../proto/gen/vnsnap/v1/Artefact';
import type { PhaseTiming } from '../proto/gen/vnsnap/v1/PhaseTiming';
import type { Result } from '../proto/gen/vnsnap/v1/Result';
import type { SnapshotAbort__Output } from '../proto/gen/vnsnap/v1/SnapshotAbort';
import type { SnapshotBegin__Output } from '../proto/gen/vnsnap/v1/SnapshotBegin';
import type { SnapshotCommit__Output } from '../proto/gen/vnsnap/v1/SnapshotCommit';
import type { SnapshotPersist__Output } from '../proto/gen/vnsnap/v1/SnapshotPersist';
import type { VmProgress } from '../proto/gen/vnsnap/v1/VmProgress';
import type { VmSnapshot } from '../proto/gen/vnsnap/v1/VmSnapshot';
import type { ChannelState, Switch } from '../switch/switch';
import type { CutInstant, CutReport, SnapshotJob, SnapshotModeName, SnapshotProgress, VmImage } from './drivers/driver';
import type { AgentMetrics } from './metrics';
import type { SnapshotStore } from '../proto/store/snapshot-store';
import type { VmRecord, VmTable } from './vms';
import type { VneTable } from './vne-table';
import { raiseCutPriority, windowStats, type CutPriorityOptions } from './cut-priority';
import { LoopStallProbe } from './loop-stall-probe';

/**
 * How long before a background cut's instant the loop is raised for jobs that take the window
 * themselves (ownCutWindow): their rounds end 30 ms before it (round-schedule.ts ROUND_LEAD_MS).
 */
export const CUT_RAISE_LEAD_MS = 30;

/** Where a command's Progress goes (its session link; dropped once that session is gone). */
export type ProgressSink = (vm: VmProgress) => void;

export interface SnapshotRunnerOptions {
  agentId: string;
  switch: () => Switch;
  store: SnapshotStore;
  vms: VmTable;
  /** The VNEs configured here (require: throws ERR_VNE_UNKNOWN). */
  vnes: Pick<VneTable, 'require' | 'has'>;
  clock: Clock;
  /** Wall-clock microseconds for phase timings (default: clock.now() × 1000). */
  nowUs?: () => number;
  log: Logger;
  metrics: AgentMetrics;
  /** Per-VM pre-copy Progress at most this often (the readiness change always at once). Default 500 ms. */
  progressIntervalMs?: number;
  /** How long persist waits for the switch's channel recording to end. Default 30 s. */
  channelTimeoutMs?: number;
  /** The raised priority of background cuts (cut-priority.ts); default: its own. */
  cutPriority?: CutPriorityOptions;
  /** The longest wait for a commit's cut instant (an instant further ahead is cut then). Default 1000 ms. */
  maxCutWaitMs?: number;
  /** Trace what the loop's stalls were (run-queue waits, GCs: loop-stall-probe.ts causes); the agent's, not a test clock's. */
  loopCauses?: boolean;
}

/**
 * The loop's side of a VM's cut trace over [fromUs, toUs] (the probe's window: the cut window's
 * start → the resume):
 * the longest stall (LOOP_STALL), the stall the cut's begin at `beginUs` fell in when it is
 * another (also LOOP_STALL: what made the cut begin late), each with its run-queue wait as
 * LOOP_RUNQ from the stall's start (its length the time the loop's thread waited for a CPU in
 * it), and V8's collections of 1 ms or more (LOOP_GC), where the probe traces causes.
 */
function loopSpans(probe: LoopStallProbe, fromUs: number, toUs: number, beginUs: number): PhaseTiming[] {
  const out: PhaseTiming[] = [];
  const longest = probe.longest(fromUs, toUs);
  const atBegin = probe.around(beginUs);
  const stalls = atBegin && atBegin.startUnixUs !== longest?.startUnixUs ? [longest, atBegin] : [longest];
  for (const st of stalls) {
    if (!st) continue;
    out.push({ phase: 'PHASE_LOOP_STALL', startUnixUs: st.startUnixUs, endUnixUs: st.endUnixUs });
    if ((st.runqueueUs ?? 0) >= 500) out.push({ phase: 'PHASE_LOOP_RUNQ', startUnixUs: st.startUnixUs, endUnixUs: st.startUnixUs + (st.runqueueUs as number) });
  }
  for (const g of probe.gcs(fromUs, toUs)) out.push({ phase: 'PHASE_LOOP_GC', ...g });
  return out;
}

interface SnapVm {
  vm: VmRecord;
  job: SnapshotJob;
  cut?: CutReport;
  /** The cut's own trace (commit receipt, drain, loop stall), beside the driver's phases. */
  trace?: PhaseTiming[];
}

/** What commit() needs of SnapshotCommit (sentUnixUs, cutAtUnixUs: 0 or absent from an older coordinator). */
export type CommitCommand = Pick<SnapshotCommit__Output, 'snapshotId'> & { sentUnixUs?: number; cutAtUnixUs?: number };

type SnapState = 'precopy' | 'committing' | 'committed' | 'persisting' | 'aborted';

interface LocalSnapshot {
  id: string;
  vne: string;
  epoch: number;
  mode: SnapshotModeName;
  prefix: string;
  state: SnapState;
  vms: SnapVm[];
  beganUs: number;
  /** Resolves when Begin has created every job (Commit waits for it). */
  begun: Promise<void>;
  /** Settles Begin's Result early (commit arrived, or abort). */
  endBegin: (e?: Error) => void;
  /** Background: the event loop's raised priority taken at begin (cut-priority.ts), handed to the commit. */
  priority?: () => void;
  /** Ends the commit's wait for its cut instant at once (an abort). */
  wakeCut?: () => void;
}

export class SnapshotRunner {
  private readonly snapshots = new Map<string, LocalSnapshot>();
  private readonly abortTimers = new Set<TimerHandle>();
  private readonly nowUs: () => number;

  constructor(private readonly o: SnapshotRunnerOptions) {
    this.nowUs = o.nowUs ?? (() => o.clock.now() * 1000);
  }

  /** Snapshots in progress here (ids). */
  get inProgress(): string[] {
    return [...this.snapshots.keys()];
  }

  /** The snapshot in progress that includes this VM, if any. */
  including(vm: VmRecord): string | undefined {
    for (const snap of this.snapshots.values()) if (snap.vms.some((x) => x.vm === vm)) return snap.id;
    return undefined;
  }

  async begin(c: SnapshotBegin__Output, progress: ProgressSink): Promise<Partial<Result>> {
    if (this.snapshots.has(c.snapshotId)) throw new VnsnapError('ERR_ALREADY_EXISTS', `snapshot ${c.snapshotId} is already in progress here`);
    this.o.vnes.require(c.vne);
    if (!c.snapshotId || c.epoch <= 0) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'SnapshotBegin needs a snapshot id and an epoch > 0');
    const vms = c.vms.map((name) => {
      const vm = this.o.vms.get(c.vne, name);
      if (!vm || vm.restoreId !== undefined) throw new VnsnapError('ERR_NOT_FOUND', `VM ${name} of VNE ${c.vne} is not running on agent ${this.o.agentId}`);
      return vm;
    });
    const mode: SnapshotModeName = c.mode === 'SNAPSHOT_MODE_BACKGROUND' ? 'background' : 'precopy';
    let endBegin!: (e?: Error) => void;
    const early = new Promise<void>((resolve, reject) => (endBegin = (e) => (e ? reject(e) : resolve())));
    early.catch(() => undefined);
    let begun!: () => void;
    const snap: LocalSnapshot = {
      id: c.snapshotId,
      vne: c.vne,
      epoch: c.epoch,
      mode,
      prefix: c.storePrefix,
      state: 'precopy',
      vms: [],
      beganUs: this.nowUs(),
      begun: new Promise<void>((r) => (begun = r)),
      endBegin,
    };
    this.snapshots.set(snap.id, snap);
    this.o.log.info({ snapshot: snap.id, epoch: snap.epoch, mode, vms: c.vms }, 'snapshot begin');
    // Every VM's job begun at once, not one after the other: a job's begin waits on QEMU, the
    // store and the disk (a tracked VM's first round, its overlay, its state record's fsyncs), and
    // one VM's waits need not hold another's (docs/performance.md, branch `wallstart`). Each
    // driver keeps its own VMs' begins apart; the jobs go into the snapshot in the VMs' order once
    // every begin has settled (an abort meanwhile waits for that: localAbort awaits `begun`).
    const started = await Promise.allSettled(
      vms.map(async (vm) =>
        vm.driver.snapshot(vm.key, {
          snapshotId: snap.id,
          epoch: snap.epoch,
          mode,
          store: this.o.store,
          prefix: snap.prefix,
          onProgress: this.throttledProgress(vm, progress),
          raiseCutPriority: () => raiseCutPriority(this.o.cutPriority),
          // A job whose driver state must leave the VM's record before it goes on (a tracked base, tracked-job.ts).
          saveState: () => this.o.vms.writeState(vm),
        }),
      ),
    );
    started.forEach((r, i) => {
      if (r.status !== 'fulfilled') return;
      const vm = vms[i] as VmRecord;
      const job = r.value;
      snap.vms.push({ vm, job });
      // A job aborted before it is ready rejects `ready`: handled here (the waits below see it),
      // or the agent logged an unhandled rejection per VM (seen on the Xen test bed).
      job.ready.then(
        () => {
          if (snap.state === 'precopy') progress({ vm: vm.name, phase: 'PHASE_PRECOPY', phaseDone: true, fraction: 1 });
        },
        () => undefined,
      );
    });
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      // The driver aborted the job it could not begin; the others are aborted with the snapshot.
      begun();
      await this.localAbort(snap, `begin failed: ${describeError(failed.reason)}`);
      throw failed.reason;
    }
    // Background: the event loop raised from now, so that it is in place when the commit and
    // QEMU's STOP arrive (cut-priority.ts; bounded, and dropped by an abort); not for jobs that
    // raise it for their own pauses (ownCutWindow: tracked memory, whose rounds with the VM
    // running must not run at a realtime policy, see agentWindow()).
    if (this.agentWindow(snap) && (snap.state as SnapState) !== 'aborted') snap.priority = raiseCutPriority(this.o.cutPriority);
    begun();
    if ((snap.state as SnapState) === 'aborted') throw aborted(snap.id);
    await Promise.race([Promise.all(snap.vms.map((x) => x.job.ready)), early]);
    if ((snap.state as SnapState) === 'aborted') throw aborted(snap.id);
    return {};
  }

  /** The driver reports every pass; the coordinator gets one Progress per interval (and every readiness change). */
  private throttledProgress(vm: VmRecord, progress: ProgressSink): (p: SnapshotProgress) => void {
    const every = this.o.progressIntervalMs ?? 500;
    let last = -Infinity;
    let lastReady = false;
    return (p) => {
      const now = this.o.clock.now();
      if (now - last < every && p.ready === lastReady) return;
      last = now;
      lastReady = p.ready;
      progress({
        vm: vm.name,
        phase: 'PHASE_PRECOPY',
        bytesDone: p.bytesDone,
        bytesTotal: p.bytesTotal,
        fraction: p.bytesTotal > 0 ? Math.max(0, Math.min(1, 1 - p.bytesRemaining / p.bytesTotal)) : 0,
        iteration: p.iteration,
        dirtyRateMibS: p.dirtyRateMibS,
      });
    };
  }

  private orThrow(id: string): LocalSnapshot {
    const snap = this.snapshots.get(id);
    if (!snap) throw new VnsnapError('ERR_NOT_FOUND', `snapshot ${id} is not in progress on agent ${this.o.agentId}`);
    return snap;
  }

  async commit(c: CommitCommand): Promise<Partial<Result>> {
    const receivedUs = this.nowUs();
    const snap = this.orThrow(c.snapshotId);
    snap.endBegin();
    await snap.begun;
    if (snap.state !== 'precopy') throw new VnsnapError('ERR_STATE', `snapshot ${snap.id} is ${snap.state}; cannot commit`);
    snap.state = 'committing';
    const commit: PhaseTiming = { phase: 'PHASE_COMMIT', startUnixUs: Number(c.sentUnixUs ?? 0) || receivedUs, endUnixUs: receivedUs };
    // Background: the commit's cut instant, the VMs run (no port gated) until it, at the priority
    // below; a job with work before its `stop` (approachCut: tracked memory's rounds) does it
    // meanwhile, from now. Pre-copy: the same when every job here approaches the instant so;
    // else the cuts begin now and the driver stops each VM at the instant, after its final
    // round (cutInstant()).
    const background = snap.mode === 'background';
    const instant = cutInstant(Number(c.cutAtUnixUs ?? 0), receivedUs, this.o.maxCutWaitMs);
    const waitHere = background || (instant !== undefined && snap.vms.length > 0 && snap.vms.every((sv) => sv.job.approachCut));
    // The loop's stalls are traced over the cut window: from CUT_RAISE_LEAD_MS before an instant
    // waited for here (the loop is raised then too), else from the receipt (loopSpans).
    const probeFromUs = waitHere && instant ? Math.max(receivedUs, instant.stopAtUs - CUT_RAISE_LEAD_MS * 1000) : receivedUs;
    const probe = LoopStallProbe.start({ now: this.nowUs, causes: this.o.loopCauses === true, fromUs: probeFromUs });
    // Background: a raised priority for the agent's part of the pauses (cut-priority.ts), which
    // ends with the last VM's drain (its `migrate` is written in the same turn of the loop, hence
    // setImmediate); then the pause is QEMU's, and the agent reading the streams must not take
    // QEMU's cores. The commit's hold carries on the begin's (raised again if its bound ran
    // out). Precopy cuts run at the agent's own priority (their final round reads the stream at
    // full speed with the VM running).
    const agentHolds = this.agentWindow(snap);
    const agentRaise = agentHolds ? raiseCutPriority(this.o.cutPriority) : () => undefined;
    // Jobs that take the window themselves (ownCutWindow) have it from right before the instant
    // (raiseBeforeInstant): at the default policy this loop waited for a core for up to 0.45 s
    // while the other agent's VMs' pauses, boosted, held both, and began its cuts that late.
    let lateRaise: (() => void) | undefined;
    const raiseTimer = background && !agentHolds && snap.vms.length > 0 ? this.raiseBeforeInstant(Number(c.cutAtUnixUs ?? 0), (release) => (lateRaise = release)) : undefined;
    const normalPriority = (): void => {
      if (raiseTimer) this.o.clock.clearTimeout(raiseTimer);
      agentRaise();
      lateRaise?.();
    };
    this.dropPriority(snap);
    let undrained = snap.vms.length;
    const drained = background ? () => void (--undrained === 0 && setImmediate(normalPriority)) : () => undefined;
    let results: PromiseSettledResult<VmSnapshot>[];
    let cutAt: PhaseTiming | undefined;
    try {
      if (waitHere && instant) for (const sv of snap.vms) sv.job.approachCut?.(instant);
      cutAt = waitHere ? await this.untilCutInstant(snap, Number(c.cutAtUnixUs ?? 0)) : undefined;
      if ((snap.state as SnapState) === 'aborted') throw aborted(snap.id);
      // Every VM's cut begins now, its ports gated together (a VM cut later would find them
      // passed as a bystander's): a job still approaching the instant stops once it is done.
      const shared = cutAt ? [commit, cutAt] : [commit];
      results = await Promise.allSettled(snap.vms.map((sv) => this.cutVm(snap, sv, shared, probe, probeFromUs, drained, waitHere ? undefined : instant)));
    } finally {
      normalPriority();
      probe.stop();
    }
    if (snap.vms.length === 0) await this.cutBystanders(snap.vne, snap.epoch);
    // The cut moved the ports to the new epoch (and the driver's state: a new disk top): the
    // records follow, so that an agent started after a crash finds the VM as it is now.
    await this.o.vms.saveStates(snap.vne);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      snap.state = 'committed';
      throw failed.reason;
    }
    if ((snap.state as SnapState) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', `snapshot ${snap.id} was aborted during the cut`);
    snap.state = 'committed';
    const vms = results.map((r) => (r as PromiseFulfilledResult<VmSnapshot>).value);
    this.o.log.info(
      { snapshot: snap.id, pauses: vms.map((v) => [v.name, Number(v.pauseMs).toFixed(2)]), ...(cutAt && { cutAt: cutAtWords(cutAt, receivedUs) }), ...(background && { priorityWindow: windowStats() }) },
      'snapshot committed',
    );
    return { commit: { vms } };
  }

  /**
   * Until the commit's cut instant `atUs` (this agent's clock; at most maxCutWaitMs from now), or
   * an abort; at once when it is 0 (none named) or past. The CUT_AT span (the instant → now), or
   * undefined without an instant.
   */
  private async untilCutInstant(snap: LocalSnapshot, atUs: number): Promise<PhaseTiming | undefined> {
    if (!(atUs > 0)) return undefined;
    const waitMs = Math.min((atUs - this.nowUs()) / 1000, this.o.maxCutWaitMs ?? 1000);
    if (waitMs > 0) {
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          this.o.clock.clearTimeout(t);
          snap.wakeCut = undefined;
          resolve();
        };
        const t = this.o.clock.setTimeout(wake, Math.ceil(waitMs));
        snap.wakeCut = wake;
      });
    }
    return { phase: 'PHASE_CUT_AT', startUnixUs: atUs, endUnixUs: this.nowUs() };
  }

  /** The cut of one VM: gate its ports, pause (the driver calls pass), resume; the switch un-gates on failure. */
  private async cutVm(snap: LocalSnapshot, sv: SnapVm, shared: PhaseTiming[], probe: LoopStallProbe, probeFromUs: number, drained: () => void, instant?: CutInstant): Promise<VmSnapshot> {
    const names = sv.vm.ports.map((p) => p.name);
    const commit = shared[0] as PhaseTiming;
    const trace: PhaseTiming[] = [...shared];
    const report = (await this.o.switch().cutPorts(names, snap.epoch, (pass) =>
      sv.job.cut(async () => {
        const startUnixUs = this.nowUs();
        try {
          await pass();
        } finally {
          trace.push({ phase: 'PHASE_DRAIN', startUnixUs, endUnixUs: this.nowUs() });
          drained();
        }
      }, instant),
    )) as CutReport;
    const [from, to] = [probeFromUs, Math.max(report.resumeUnixUs, probeFromUs)];
    trace.push(...loopSpans(probe, from, to, Number((shared[1] ?? commit).endUnixUs)));
    sv.cut = report;
    sv.trace = trace;
    const m = this.o.metrics;
    m.pauseSeconds.observe({ mode: snap.mode }, report.pauseMs / 1000);
    m.lastPauseMs.set({ vm: sv.vm.key }, report.pauseMs);
    for (const ph of report.phases) m.phaseSeconds.observe({ phase: ph.phase }, (ph.endUnixUs - ph.startUnixUs) / 1e6);
    return this.vmSnapshot(snap, sv);
  }

  private vmSnapshot(snap: LocalSnapshot, sv: SnapVm): VmSnapshot {
    const phases: PhaseTiming[] = [];
    if (snap.mode === 'precopy' && sv.cut) phases.push({ phase: 'PHASE_PRECOPY', startUnixUs: snap.beganUs, endUnixUs: sv.cut.cutUnixUs });
    for (const p of sv.cut?.phases ?? []) phases.push({ phase: p.phase, startUnixUs: p.startUnixUs, endUnixUs: p.endUnixUs });
    phases.push(...(sv.trace ?? []));
    return { name: sv.vm.name, host: this.o.agentId, pauseMs: sv.cut?.pauseMs ?? 0, cutUnixUs: sv.cut?.cutUnixUs ?? 0, phases };
  }

  async persist(c: SnapshotPersist__Output): Promise<Partial<Result>> {
    const snap = this.orThrow(c.snapshotId);
    if (snap.state !== 'committed') throw new VnsnapError('ERR_STATE', `snapshot ${snap.id} is ${snap.state}; cannot persist`);
    snap.state = 'persisting';
    const t0 = this.nowUs();
    const artefacts: Artefact[] = [];
    const vms: VmSnapshot[] = [];
    try {
      const images = await Promise.all(snap.vms.map((sv) => sv.job.durable()));
      // The drivers' state moved on with the images (the disk chain a VM's next snapshot builds on): the records follow.
      await this.o.vms.saveStates(snap.vne);
      const tImages = this.nowUs();
      const cs = await this.channelState(snap.vne, snap.epoch);
      const tChannel = this.nowUs();
      for (let i = 0; i < snap.vms.length; i++) {
        const sv = snap.vms[i] as SnapVm;
        const img = images[i] as VmImage;
        artefacts.push({ ...img.memory, kind: 'ARTEFACT_KIND_MEMORY', owner: sv.vm.name });
        // The disk: one artefact per layer (attribute "layer"), or one whole-disk image.
        for (const d of img.disks) artefacts.push({ ...d, kind: 'ARTEFACT_KIND_DISK', owner: sv.vm.name });
        let frames = 0;
        for (const [p, port] of sv.vm.ports.entries()) {
          const list = cs.ports.get(port.name) ?? [];
          frames += list.length;
          const a = await this.o.store.put(`${snap.prefix}${sv.vm.name}.${p}.chan`, encodeChannel(list));
          artefacts.push({ ...a, kind: 'ARTEFACT_KIND_CHANNEL', owner: port.name });
        }
        const v = this.vmSnapshot(snap, sv);
        v.phases = [
          ...(v.phases ?? []),
          { phase: 'PHASE_CHANNEL', startUnixUs: tImages, endUnixUs: tChannel },
          { phase: 'PHASE_PERSIST', startUnixUs: t0, endUnixUs: this.nowUs() },
        ];
        v.memoryBytes = img.memory.size;
        v.diskBytes = img.disks.reduce((n, d) => n + d.size, 0);
        v.channelFrames = frames;
        vms.push(v);
      }
      this.o.metrics.phaseSeconds.observe({ phase: 'PHASE_CHANNEL' }, (tChannel - tImages) / 1e6);
      this.o.metrics.phaseSeconds.observe({ phase: 'PHASE_PERSIST' }, (this.nowUs() - t0) / 1e6);
      this.snapshots.delete(snap.id);
      this.o.log.info({ snapshot: snap.id, artefacts: artefacts.length, lostFrames: cs.lostFrames }, 'snapshot persisted');
      return { persist: { artefacts, vms, lostFrames: cs.lostFrames } };
    } catch (e) {
      if (snap.state === 'persisting') snap.state = 'committed';
      throw e;
    }
  }

  /** SnapshotAbort: of a snapshot known here, or (unknown) just advance the VNE and delete the prefix. */
  async abort(c: SnapshotAbort__Output): Promise<Partial<Result>> {
    const snap = this.snapshots.get(c.snapshotId);
    if (snap) await this.localAbort(snap, 'ordered by the coordinator', c.storePrefix || snap.prefix);
    else {
      await this.advanceAfterAbort(c.vne, c.epoch);
      if (c.storePrefix) await this.o.store.deleteByPrefix(c.storePrefix);
    }
    return {};
  }

  /** Abort the snapshot in progress that includes this VM (a restore replaces the VM). */
  async abortIncluding(vm: VmRecord, reason: string): Promise<void> {
    for (const snap of [...this.snapshots.values()]) if (snap.vms.some((x) => x.vm === vm)) await this.localAbort(snap, reason);
  }

  /** Abort every snapshot in progress (the agent stops); pending session-loss timers are cancelled. */
  async abortAll(reason: string): Promise<void> {
    this.cancelTimers();
    for (const snap of [...this.snapshots.values()]) await this.localAbort(snap, reason);
  }

  /**
   * The session with the coordinator dropped: the snapshots in progress now are aborted after
   * `deadAfterMs` (the coordinator has declared this agent dead by then and failed them) unless
   * they ended meanwhile.
   */
  sessionLost(deadAfterMs: number): void {
    const pending = [...this.snapshots.values()].filter((x) => x.state !== 'aborted');
    if (pending.length === 0) return;
    const t = this.o.clock.setTimeout(() => {
      this.abortTimers.delete(t);
      for (const snap of pending) if (this.snapshots.get(snap.id) === snap) void this.localAbort(snap, 'session with the coordinator lost');
    }, deadAfterMs);
    this.abortTimers.add(t);
  }

  cancelTimers(): void {
    for (const t of this.abortTimers) this.o.clock.clearTimeout(t);
    this.abortTimers.clear();
  }

  /**
   * The loop raised (cut-priority.ts) CUT_RAISE_LEAD_MS before the instant `atUs` (this agent's
   * clock), its release handed to `raised`: the timer's handle, or undefined without an instant.
   * The jobs' rounds end ROUND_LEAD_MS (30 ms) before the instant by their schedule, so the loop
   * runs realtime only for the cut's own work, as the jobs' windows would from their `stop`.
   */
  private raiseBeforeInstant(atUs: number, raised: (release: () => void) => void): TimerHandle | undefined {
    if (!(atUs > 0)) return undefined;
    const inMs = Math.max(0, (atUs - this.nowUs()) / 1000 - CUT_RAISE_LEAD_MS);
    return this.o.clock.setTimeout(() => raised(raiseCutPriority(this.o.cutPriority)), Math.floor(inMs));
  }

  /**
   * Whether the agent holds the cut window (cut-priority.ts) for this snapshot: a background one
   * with a VM whose job does not raise it for its own pause (SnapshotJob.ownCutWindow). A tracked
   * job's rounds (reading and storing the blocks its guest wrote) run on this loop with the VM
   * running, before its stop; at a realtime policy through the agent's window they took the
   * loop's core for up to the kernel's realtime throttling, on both agents of a 2-core host at
   * once, and every thread at the default policy (QEMU's threads the pause needs, the kernel's
   * I/O threads behind a `stop`'s flush) waited: 0.9–1.1 s pauses (docs/performance.md, "Tracked
   * memory in bench:snapshot"). Such a job raises the loop from its `stop` to its drain only.
   */
  private agentWindow(snap: LocalSnapshot): boolean {
    return snap.mode === 'background' && (snap.vms.length === 0 || snap.vms.some((x) => x.job.ownCutWindow !== true));
  }

  /** The begin's raised priority, if still held (idempotent). */
  private dropPriority(snap: LocalSnapshot): void {
    snap.priority?.();
    snap.priority = undefined;
  }

  /** Abort a snapshot this agent knows: stop copies, resume VMs, advance ports, delete partials. */
  private async localAbort(snap: LocalSnapshot, reason: string, prefix = snap.prefix): Promise<void> {
    this.dropPriority(snap);
    snap.wakeCut?.();
    if (snap.state === 'aborted' && !this.snapshots.has(snap.id)) return;
    snap.state = 'aborted';
    snap.endBegin(aborted(snap.id, reason));
    this.snapshots.delete(snap.id);
    this.o.log.warn({ snapshot: snap.id, reason }, 'snapshot aborted');
    await snap.begun;
    await Promise.all(snap.vms.map((sv) => sv.job.abort().catch((e) => this.o.log.warn({ vm: sv.vm.key, err: describeError(e) }, 'driver abort failed'))));
    await this.advanceAfterAbort(snap.vne, snap.epoch);
    if (prefix) await this.o.store.deleteByPrefix(prefix).catch((e) => this.o.log.warn({ prefix, err: describeError(e) }, 'deleting partial artefacts failed'));
  }

  // ── the switch side ──

  /** A snapshot without VMs here: the VNE's ports pass the cut (no pause), so the switch sends its markers. */
  private async cutBystanders(vne: string, k: number): Promise<void> {
    const sw = this.o.switch();
    await sw.cutPorts(sw.portNames(vne).filter((n) => sw.portEpoch(n) < k), k);
  }

  private channelState(vne: string, k: number): Promise<ChannelState> {
    return this.o.switch().channelState(vne, k, this.o.channelTimeoutMs ?? 30_000);
  }

  /**
   * Advance the VNE's ports to `epoch` after an abort (guests that track epochs are told first),
   * and refresh the VMs' records to the epoch they are at now. A VNE this agent is not
   * configured for (a restarted agent before its ConfigureVne) has no ports to advance: nothing.
   */
  private async advanceAfterAbort(vne: string, epoch: number): Promise<void> {
    if (!this.o.vnes.has(vne) || epoch <= 0) return;
    let sw: Switch;
    try {
      sw = this.o.switch();
    } catch {
      return; // not started
    }
    // Guests that track epochs pass it first: the switch releases held (epoch k) frames to them now.
    for (const vm of this.o.vms.values()) if (vm.vne === vne) vm.driver.epochAdvanced?.(vm.key, epoch);
    sw.abort(vne, epoch);
    await this.o.vms.saveStates(vne);
  }
}

/**
 * A commit's cut instant for the drivers (CutInstant: a pre-copy cut's, or a job's approachCut()):
 * `atUs` (this agent's clock; 0: none named) bounded to `maxWaitMs` (default 1 s) after the
 * receipt, as the agent's own wait for it is; undefined without one. A driver with a final round
 * stops its VM then (an instant already past: as soon as its round is done).
 */
export function cutInstant(atUs: number, receivedUs: number, maxWaitMs = 1000): CutInstant | undefined {
  if (!(atUs > 0)) return undefined;
  return { stopAtUs: Math.min(atUs, receivedUs + maxWaitMs * 1000) };
}

/** The commit's cut instant for the log: waited for (ms), or how late the commit or the timer made the cuts (ms). */
export function cutAtWords(cutAt: PhaseTiming, receivedUs: number): { waitedMs: number } | { lateMs: number; by: 'receipt' | 'timer' } {
  const at = Number(cutAt.startUnixUs);
  const began = Number(cutAt.endUnixUs);
  const r2 = (us: number): number => Math.round(us / 10) / 100;
  if (receivedUs >= at) return { lateMs: r2(began - at), by: 'receipt' };
  if (began - at > 1000) return { lateMs: r2(began - at), by: 'timer' };
  return { waitedMs: r2(began - receivedUs) };
}

function aborted(id: string, reason?: string): VnsnapError {
  return new VnsnapError('ERR_SNAPSHOT_ABORTED', reason === undefined ? `snapshot ${id} was aborted` : `snapshot ${id} was aborted: ${reason}`);
}
