/**
 * A QEMU snapshot job: the migration stream (memory and device state) and the cut, with the disk
 * side in disk-overlay.ts.
 *
 * The stream goes straight into the store (../image-stream.ts): QEMU migrates to `unix:SOCK`, a
 * socket in the instance directory the job listens on, and what it sends is written into the
 * artefact's writer as it arrives (a bounded buffer of streamBufferBytes between them; the
 * socket is paused above it, which holds QEMU back). The artefact is committed once QEMU
 * reported MIGRATION completed and the stream reached its end with every byte written; its
 * size and SHA-256 are the writer's. The socket and writer are made at begin (precopy: with
 * each migrate), outside the pause.
 *
 * Snapshot, background mode:
 *   begin: migrate-set-capabilities (every capability, explicitly: events, background-snapshot
 *          on, the rest off), migrate-set-parameters
 *   cut:   background-cut.ts (stop + blockdev-snapshot back to back, the drain from the STOP
 *          event, migrate into the socket opened at begin written without waiting for the other
 *          replies, QEMU resumes the VM itself; QEMU's main thread at SCHED_FIFO from before the
 *          stop to the RESUME: pause-boost.ts)
 *   In both modes, from the commit to the end of the VM's cut no stream of this agent writes
 *   into the store (image-stream.ts holdStoreWrites: other VMs' streams hashed on this loop).
 *   durable: MIGRATION completed and the stream's end ─► the memory artefact is committed; the
 *          frozen disk goes into the store
 * Snapshot, precopy mode (VNsnap's), with the default bandwidth hold:
 *   begin: capabilities (events, pause-before-switchover on, the rest off), downtime-limit 1 ms,
 *          migrate; query-migrate every progressMs → onProgress; the first pass lands at a low
 *          bandwidth (so QEMU does not converge at its end); once it is done and the remaining
 *          dirty set is small, max-bandwidth is lowered to holdBandwidth so QEMU keeps
 *          iterating, the VM running, instead of switching over by itself, and `ready` is set
 *          once QEMU took the hold, HOLD_SETTLE_MS later, still active; how fast, and what a
 *          convergence during the hold changes: precopy-hold.ts.
 *          The paced hold is applied by reading the stream at its rate (read-pacer.ts), QEMU's
 *          max-bandwidth unlimited: QEMU blocks in its write instead of sleeping in its rate
 *          limit; at the cut the stream is read at full speed, a fixed round, `stop`
 *          (precopy-switchover.ts, `lifted`), the rest as below.
 *   cut:   the progress polls stop (none in the pause); precopy-switchover.ts: max-bandwidth up,
 *          a final round with the VM running until QEMU synced and sent that set (query-migrate
 *          every 5 ms, at most 200 ms), then `stop` (not at QEMU's own convergence, which comes
 *          seconds late on a busy host: every VM of the VNE is cut within the round); with the
 *          commit's cut instant (cut()'s CutInstant) the round runs until it and `stop` is
 *          written then, the same instant on every VM (PHASE_CUT_AT: the instant → `stop`
 *          written) ─► MIGRATION
 *          pre-switchover ─► precopy-pause.ts: atPause() beside blockdev-snapshot +
 *          migrate-continue and QEMU's final pass ─► MIGRATION completed and the hook done ─►
 *          cont ─► the store catches up with the final pass. From the commit on, the stream reads
 *          the socket at once and holds its store writes.
 *   So the pause is the VM's own final pass: no other VM, no store write, no wait for the
 *   coordinator or for QEMU's convergence is in it. With precopyHold 'pre-switchover' QEMU
 *   converges by itself at begin and the VM waits paused from then to the cut (which then
 *   starts at atPause()).
 *   If QEMU converges and pauses by itself before the cut (an idle guest can), the migration is
 *   cancelled (QEMU resumes the VM) and started again with half the bandwidth; each such early
 *   pause (QEMU's STOP → RESUME) is a PHASE_PRECOPY_RESTART span of the cut's CutReport.
 * The pause is measured from QEMU's own STOP and RESUME event timestamps. Each cut's QMP round
 * trips and STOP / RESUME deliveries become phases of its CutReport (cut-qmp-trace.ts).
 * Abort: the stream is turned into a sink first (QEMU is never left blocked on it), then
 * migrate_cancel (but a background stream already under way is left to end: cancelling one can
 * hang QEMU 7.2), cont if this job paused the VM, block-commit the job's overlay back into the
 * frozen image (active commit) and delete it, abort the writers, close the socket, delete every
 * committed artefact: nothing of the job stays in the store.
 * `ready` follows driver.ts's contract (ReadyLatch): set at ready, released by abort(), rejected
 * when QEMU reports the pre-copy failed before it was ready.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { nowUs } from '../../../proto/core/clock';
import { describeError, isVnsnapError, VnsnapError } from '../../../proto/core/errors';
import type { ArtefactWriter, StoredArtefact } from '../../../proto/store/local-dir';
import type { CutInstant, CutReport, PhaseSpan, SnapshotModeName, SnapshotOptions, SnapshotProgress, VmImage } from '../driver';
import { cutReport, perfAt } from '../job';
import { QemuVmJob } from './vm-job';
import { holdStoreWrites, StreamIntoStore } from '../image-stream';
import { backgroundCut } from './background-cut';
import { CutQmpTrace } from './cut-qmp-trace';
import { loggedPageOrder } from './page-order';
import { FIRST_PASS_CEILING, HOLD_FLOOR, HOLD_SETTLE_MS, holdAfterConvergence, landingBandwidth, PACE_BY_ENV, PacedHold, parsePaceBy, UNLIMITED_BANDWIDTH } from './precopy-hold';
import { boostPause, pauseBoostEnabled, startChrtShell } from './pause-boost';
import { collapseGuestRam } from './ram-huge-pages';
import { precopyPause } from './precopy-pause';
import { reachSwitchover, readPacedRound, thawMs, type RoundOutcome, type RoundProgress, type Switchover } from './precopy-switchover';
import { ReadPacer } from './read-pacer';
import { MiB, type MigrationInfo, type QemuOptions, type QemuVm } from './process';
import type { QmpEvent } from './qmp';

type JobPhase = 'precopy' | 'cutting' | 'writing' | 'done' | 'aborted' | 'failed';

/** Capabilities this driver wants on (every other one the QEMU knows is set off). */
function capsFor(mode: SnapshotModeName): Set<string> {
  return mode === 'precopy' ? new Set(['events', 'pause-before-switchover']) : new Set(['events', 'background-snapshot']);
}

export class QemuJob extends QemuVmJob {
  private isReady = false;
  private phase: JobPhase = 'precopy';
  /** The socket QEMU migrates into (one at a time: a pre-copy restart makes a new one). */
  readonly memSock: string;
  /** The current migration's stream into the store, and its writer. */
  private stream: StreamIntoStore | undefined;
  private memWriter: ArtefactWriter | undefined;
  private pausedByUs = false;
  private pollTimer: NodeJS.Timeout | undefined;
  private migrationStatus = 'none';
  private migrationDone: Promise<void> | undefined;
  private iteration = 0;
  /** The last Progress a poll made (the ready report of a converged pre-copy repeats its figures). */
  private lastProgress: SnapshotProgress | undefined;
  private restarts = 0;
  private restarting: Promise<void> | undefined;
  /** Each early convergence's pause (QEMU's STOP → RESUME), reported with the cut: never hidden. */
  private restartSpans: PhaseSpan[] = [];
  /** max-bandwidth of the first pass (halved by each convergence before ready). */
  private bandwidth: number;
  /** The max-bandwidth last sent for the current migration (the landing lowers it, precopy-hold.ts). */
  private appliedBandwidth = 0;
  /** When QEMU took the hold's max-bandwidth (performance.now()); `ready` waits HOLD_SETTLE_MS from it. */
  private holdAppliedAt: number | undefined;
  private holdApplying = false;
  /** max-bandwidth of the hold (quartered by each convergence during the hold). */
  private holdBandwidth: number;
  /** holdBandwidth 'paced': the hold follows QEMU's syncs (precopy-hold.ts); off after a convergence while held. */
  private pacing: boolean;
  private paced: PacedHold | undefined;
  /** The paced hold applied by the stream's reads (read-pacer.ts), QEMU's max-bandwidth unlimited; else by max-bandwidth. */
  private readonly paceByReads: boolean;
  /** The read pacer of the current hold (undefined: not held by reads). */
  private pacer: ReadPacer | undefined;
  /** The hold as the cut found it, for the cut's log line: QEMU's syncs seen since ready, the last one's age. */
  private holdSeen = { readyAt: 0, readySync: 0, sync: 0, syncAt: 0 };
  private holdAtCut: { heldMs: number; syncs: number; sinceSyncMs: number; bandwidth: number; byReads: boolean; remainingBytes?: number; dirtyBytesS?: number; toSwitchoverBytes?: number; round?: RoundOutcome; steps?: string } | undefined;
  private onMigration: ((ev: QmpEvent) => void) | undefined;
  private preSwitchover: ((ev: QmpEvent) => void) | undefined;
  private preSwitchoverEv: QmpEvent | undefined;
  private migrationFailed: ((e: Error) => void) | undefined;
  /** Bytes QEMU sent after the pre-switchover pause (the final pass and device state), for 'cut done'. */
  private finalPassBytes = 0;
  /** Steps of the cut with their times (performance.now()), logged (debug) with 'cut done'. */
  private trace: [string, number][] = [];
  /** The QMP trace of the cut in progress (its spans go into the CutReport). */
  private qmpTrace: CutQmpTrace | undefined;
  /** Releases the agent-wide hold of the store's writes taken at the commit (cut()). */
  private releaseStore: (() => void) | undefined;
  /** A background cut wrote `migrate` (the migration may run even though the cut then failed). */
  private backgroundMigrate = false;

  constructor(vmObj: QemuVm, opts: SnapshotOptions, o: QemuOptions) {
    super(vmObj, opts, o);
    this.memSock = `${vmObj.files.dir}/mig${vmObj.snapSerial}.sock`; // short: unix socket paths are limited
    this.bandwidth = Math.min(o.precopyBandwidth, FIRST_PASS_CEILING);
    this.pacing = o.holdBandwidth === 'paced';
    this.paceByReads = parsePaceBy(process.env[PACE_BY_ENV]) === 'reads';
    this.holdBandwidth = o.holdBandwidth === 'paced' ? HOLD_FLOOR : o.holdBandwidth;
  }

  /** Every migration capability explicitly (they persist for the life of the QEMU process). */
  private async setCapabilities(): Promise<void> {
    const want = capsFor(this.opts.mode);
    const known = await this.q.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities');
    const caps = known.map((c) => ({ capability: c.capability, state: want.has(c.capability) }));
    for (const w of want) if (!known.some((c) => c.capability === w)) throw new VnsnapError('ERR_DRIVER', `QEMU for ${this.vm} lacks the migration capability ${w} (QEMU 7.2 or later is needed)`);
    await this.q.execute('migrate-set-capabilities', { capabilities: caps });
  }

  private listen(): void {
    this.onMigration = (ev: QmpEvent) => {
      if (ev.event !== 'MIGRATION') return;
      const st = String(ev.data.status);
      this.migrationStatus = st;
      if (st === 'pre-switchover') {
        if (this.phase === 'cutting') {
          this.stream?.holdWrites(); // the VM is paused: nothing of the store in the pause
          this.preSwitchoverEv = ev;
          this.preSwitchover?.(ev);
        }
        else if (this.phase === 'precopy' && this.o.precopyHold === 'pre-switchover') {
          // QEMU converged: the VM waits paused in pre-switchover for the cut (see the module comment).
          this.preSwitchoverEv = ev;
          this.isReady = true;
          // One Progress with ready=true before `ready` resolves, so the pass that converged is
          // always reported (QEMU may converge before the first poll of progressMs): the last
          // poll's figures, nothing remaining. No QMP round trip between QEMU's pause and `ready`:
          // the agent's event loop is busy with the stream, and the VM waits paused meanwhile.
          const last = this.lastProgress;
          this.opts.onProgress?.({
            bytesDone: last?.bytesDone ?? 0,
            bytesRemaining: 0,
            bytesTotal: last?.bytesTotal ?? this.vmObj.memBytes,
            iteration: Math.max(1, this.iteration),
            dirtyRateMibS: last?.dirtyRateMibS ?? 0,
            ready: true,
          });
          this.latch.set();
        } else if (this.phase === 'precopy' && !this.restarting) {
          this.restarting = this.restartAfterEarlySwitchover().finally(() => (this.restarting = undefined));
        }
      } else if (st === 'failed') {
        const e = new VnsnapError('ERR_DRIVER', `migration of ${this.vm} failed`);
        this.migrationFailed?.(e);
        if (this.phase === 'precopy') this.latch.fail(e); // a failed pre-copy is never ready
      }
    };
    this.q.on('event', this.onMigration);
  }

  private unlisten(): void {
    if (this.onMigration) this.vmObj.qmp?.off('event', this.onMigration);
    this.onMigration = undefined;
  }

  private get memPath(): string {
    return `${this.opts.prefix}${this.vmObj.spec.name}.mem`;
  }

  /** A new writer and a socket for the next migrate (outside the pause); any previous stream is dropped. */
  private async openStream(): Promise<void> {
    await this.closeStream();
    const w = await this.opts.store.create(this.memPath);
    this.memWriter = w;
    this.writers.push(w);
    const transform = this.opts.mode === 'background' ? loggedPageOrder(this.log, this.o.pageOrderHoldBytes) : undefined; // pages in address order
    const st = await StreamIntoStore.listen(this.memSock, w, { bufferBytes: this.o.streamBufferBytes, what: `memory image of ${this.vm}`, transform });
    this.stream = st;
    st.ended.catch((e: Error) => {
      // A store failing before ready fails `ready` (a stream this job dropped itself does not).
      if (this.stream === st && !isVnsnapError(e, 'ERR_SNAPSHOT_ABORTED') && this.phase === 'precopy') this.latch.fail(e);
    });
  }

  /** Drop the current stream (its bytes go nowhere from now on, QEMU is not blocked) and its writer. */
  private async closeStream(): Promise<void> {
    this.endReadPacing();
    const st = this.stream;
    const w = this.memWriter;
    this.stream = undefined;
    this.memWriter = undefined;
    st?.openReads(); // a cut's freeze (precopy-switchover.ts) ends here too
    st?.discard();
    await st?.drained(5000); // let QEMU finish or drop its side first: it sees no broken pipe
    await st?.close();
    await w?.abort();
  }

  /** The migration URI of the current stream. */
  private migrateUri(): string {
    if (!this.stream) throw new VnsnapError('ERR_STATE', `snapshot of ${this.vm}: no memory stream open`);
    return this.stream.uri;
  }

  /** A promise for the end of the current migration: resolves on completed, rejects on failed/cancelled or QEMU's death. */
  private watchCompletion(): Promise<void> {
    const p = new Promise<void>((resolve, reject) => {
      this.migrationFailed = reject;
      this.q
        .waitEvent('MIGRATION', (d) => d.status === 'completed' || d.status === 'failed' || d.status === 'cancelled', 24 * 3600_000)
        .then(async (ev) => {
          if (ev.data.status === 'completed') resolve();
          else {
            let why = '';
            try {
              why = (await this.q.execute<MigrationInfo>('query-migrate'))['error-desc'] ?? '';
            } catch {
              /* QEMU gone */
            }
            reject(new VnsnapError(ev.data.status === 'cancelled' ? 'ERR_SNAPSHOT_ABORTED' : 'ERR_DRIVER', `migration of ${this.vm} ${String(ev.data.status)}${why ? `: ${why}` : ''}`));
          }
        }, reject);
    });
    p.catch(() => undefined);
    return p;
  }

  async begin(): Promise<void> {
    // Guest RAM back on huge pages before the cut, beside the rest of the begin (ram-huge-pages.ts).
    const huge = this.opts.mode === 'background' ? collapseGuestRam(this.vmObj.pid, this.log) : undefined;
    await this.setCapabilities();
    await this.disk.prepare();
    this.listen();
    if (this.opts.mode === 'background') {
      if (pauseBoostEnabled()) startChrtShell(); // ahead of the cut, which boosts QEMU through it
      await this.openStream();
      await this.q.execute('migrate-set-parameters', { 'max-bandwidth': UNLIMITED_BANDWIDTH, 'downtime-limit': 300 });
      const collapsed = await huge;
      if (collapsed?.ranges) this.log.debug({ vm: this.vm, ...collapsed }, 'guest RAM collapsed to huge pages');
      this.isReady = true;
      this.latch.set();
      return;
    }
    await this.startPrecopy();
  }

  private async startPrecopy(): Promise<void> {
    const downtime = this.o.precopyHold === 'pre-switchover' ? this.o.cutDowntimeMs : 1;
    await this.q.execute('migrate-set-parameters', { 'max-bandwidth': Math.round(this.bandwidth), 'downtime-limit': downtime });
    this.appliedBandwidth = Math.round(this.bandwidth);
    this.holdAppliedAt = undefined;
    await this.openStream();
    this.migrationDone = this.watchCompletion();
    await this.q.execute('migrate', { uri: this.migrateUri() });
    this.iteration = 0;
    if (!this.pollTimer) {
      this.pollTimer = setInterval(() => void this.poll(), this.o.progressMs);
      this.pollTimer.unref();
    }
  }

  private async poll(): Promise<void> {
    if (this.phase !== 'precopy') return;
    let info: MigrationInfo;
    try {
      info = await this.q.execute<MigrationInfo>('query-migrate', undefined, 5000);
    } catch {
      return;
    }
    const ram = info.ram;
    // Reported while active, and once more when a converged pre-copy waits in pre-switchover.
    if (!ram || (info.status !== 'active' && !(info.status === 'pre-switchover' && this.isReady))) return;
    const sync = ram['dirty-sync-count'] ?? 0;
    const remaining = ram.remaining ?? 0;
    const pageSize = ram['page-size'] ?? 4096;
    this.iteration = Math.max(1, sync);
    if (sync !== this.holdSeen.sync) this.holdSeen = { ...this.holdSeen, sync, syncAt: performance.now() };
    const dirtyBytesS = (ram['dirty-pages-rate'] ?? 0) * pageSize;
    if (this.phase === 'precopy' && this.o.precopyHold === 'bandwidth' && !this.restarting) {
      if (!this.isReady) this.towardsReady(info.status, sync, remaining, dirtyBytesS);
      else if (this.paced) this.pace(sync, remaining, dirtyBytesS);
    }
    const p: SnapshotProgress = {
      bytesDone: ram.transferred ?? 0,
      bytesRemaining: remaining,
      bytesTotal: ram.total ?? this.vmObj.memBytes,
      iteration: this.iteration,
      dirtyRateMibS: dirtyBytesS / MiB,
      ready: this.isReady,
    };
    this.lastProgress = p;
    if (this.phase === 'precopy') this.opts.onProgress?.(p);
  }

  /**
   * Before ready (bandwidth hold), at each poll: land the first pass, then hold, then confirm
   * (precopy-hold.ts). `ready` only once QEMU took the hold HOLD_SETTLE_MS ago and is still active
   * (the paced hold: and once QEMU synced at its pace with little left, PacedHold.ready()).
   */
  private towardsReady(status: string, sync: number, remaining: number, dirtyBytesS: number): void {
    if (this.holdAppliedAt !== undefined) {
      const heldMs = performance.now() - this.holdAppliedAt;
      if (this.paced) this.pace(sync, remaining, dirtyBytesS); // paced: ready once QEMU synced at the hold's pace
      if (status === 'active' && heldMs >= HOLD_SETTLE_MS && (!this.paced || this.paced.ready(remaining, heldMs))) {
        this.holdSeen = { ...this.holdSeen, readyAt: performance.now(), readySync: sync };
        this.isReady = true;
        this.latch.set();
      }
      return;
    }
    if (this.holdApplying) return;
    if (sync >= 2 && (remaining <= this.o.readyBytes || sync >= 30)) {
      // Keep QEMU iterating but unable to converge by itself: see the module comment.
      this.holdApplying = true;
      const serial = this.restarts;
      this.paced = this.pacing ? PacedHold.start(remaining, dirtyBytesS, sync, performance.now()) : undefined; // drains, then paced down
      (this.paced && this.paceByReads ? this.holdByReads(this.paced.bandwidth) : this.setBandwidth(this.paced?.bandwidth ?? this.holdBandwidth))
        .then(() => {
          if (serial === this.restarts) this.holdAppliedAt = performance.now();
        })
        .catch(() => undefined)
        .finally(() => (this.holdApplying = false));
      return;
    }
    const want = landingBandwidth(remaining, this.bandwidth);
    if (want < this.appliedBandwidth * 0.9 || (sync >= 2 && want > this.appliedBandwidth * 1.1)) void this.setBandwidth(want).catch(() => undefined);
  }

  /** A poll during the paced hold: its bandwidth follows QEMU's syncs (precopy-hold.ts). */
  private pace(sync: number, remaining: number, dirtyBytesS: number): void {
    const bw = this.paced?.observe(sync, performance.now());
    if (bw === undefined) return;
    if (this.pacer) {
      this.log.debug({ vm: this.vm, sync, rate: bw, dirtyBytesS, remaining }, 'paced hold: read rate');
      this.pacer.setRate(bw);
      return;
    }
    this.log.debug({ vm: this.vm, sync, bandwidth: bw, dirtyBytesS, remaining }, 'paced hold: max-bandwidth');
    void this.setBandwidth(bw).catch(() => undefined);
  }

  /**
   * The paced hold by the stream's reads (read-pacer.ts): the socket read at `rate` from now on,
   * then QEMU's max-bandwidth unlimited (in that order: QEMU never sends faster than the reads).
   */
  private holdByReads(rate: number): Promise<void> {
    const st = this.stream;
    if (!st) return Promise.reject(new VnsnapError('ERR_STATE', `snapshot of ${this.vm}: no memory stream open`));
    this.endReadPacing();
    const pacer = new ReadPacer(rate, { close: () => st.closeReads(), open: () => st.openReads() });
    st.onRead = (n) => pacer.read(n);
    this.pacer = pacer;
    return this.setBandwidth(UNLIMITED_BANDWIDTH);
  }

  /** The stream read at full speed again, for good (the cut, a restart, an abort). */
  private endReadPacing(): void {
    const pacer = this.pacer;
    this.pacer = undefined;
    if (!pacer) return;
    if (this.stream) this.stream.onRead = undefined;
    pacer.release();
  }

  private async setBandwidth(bytesPerS: number): Promise<void> {
    this.appliedBandwidth = Math.round(bytesPerS);
    await this.q.execute('migrate-set-parameters', { 'max-bandwidth': this.appliedBandwidth });
  }

  /** QEMU converged and paused the VM before the cut: cancel (QEMU resumes it), start again slower. */
  private async restartAfterEarlySwitchover(): Promise<void> {
    this.restarts++;
    const held = this.isReady || this.holdAppliedAt !== undefined;
    this.log.info({ restarts: this.restarts, held, sync: this.iteration, bandwidth: this.appliedBandwidth }, 'pre-copy converged before the cut; restarting it');
    const stop = this.vmObj.lastStop;
    const resumed = this.q.waitEvent('RESUME', undefined, 10_000);
    resumed.catch(() => undefined);
    try {
      const cancelled = this.migrationDone?.catch(() => undefined);
      this.endReadPacing();
      this.stream?.discard();
      await this.q.execute('migrate_cancel');
      await cancelled;
      if (this.vmObj.status !== 'running') await this.q.execute('cont').catch(() => undefined);
      const resume = await Promise.race([resumed.catch(() => undefined), sleep(2000).then(() => undefined)]); // RESUME precedes cont's reply
      const startUnixUs = stop?.timestampUs || nowUs();
      this.restartSpans.push({ phase: 'PHASE_PRECOPY_RESTART', startUnixUs, endUnixUs: Math.max(startUnixUs, resume?.timestampUs || nowUs()) });
      if ((this.phase as JobPhase) !== 'precopy') return;
      this.bandwidth = Math.max(8 * MiB, this.bandwidth / 2);
      if (held && this.pacing) this.pacing = false; // the paced hold converged: the fixed floor from now on
      else if (held) this.holdBandwidth = holdAfterConvergence(this.holdBandwidth); // converged while held
      this.paced = undefined;
      this.isReady = false;
      await this.startPrecopy();
    } catch (e) {
      this.log.warn({ err: describeError(e) }, 'restarting the pre-copy failed');
    }
  }

  async cut(atPause: () => Promise<void>, at?: CutInstant): Promise<CutReport> {
    if (this.phase !== 'precopy') throw new VnsnapError('ERR_STATE', `snapshot of ${this.vm}: cut() in phase ${this.phase}`);
    while (this.restarting) await this.restarting;
    if ((this.phase as JobPhase) !== 'precopy') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', `snapshot of ${this.vm} was aborted`);
    if (this.opts.mode === 'background' && this.vmObj.status !== 'running') throw new VnsnapError('ERR_DRIVER', `QEMU VM ${this.vm} is ${this.vmObj.status}, cannot cut`);
    // From here a pre-switchover (even one QEMU reached a moment ago) is the cut, not a restart.
    this.phase = 'cutting';
    if (this.opts.mode === 'precopy' && this.isReady) {
      const h = this.holdSeen;
      const now = performance.now();
      const last = this.lastProgress;
      this.holdAtCut = { heldMs: Math.round(now - h.readyAt), syncs: h.sync - h.readySync, sinceSyncMs: Math.round(now - Math.max(h.syncAt, h.readyAt)), bandwidth: this.pacer?.rate ?? this.appliedBandwidth, byReads: this.pacer !== undefined, remainingBytes: last?.bytesRemaining, dirtyBytesS: last ? Math.round(last.dirtyRateMibS * MiB) : undefined, toSwitchoverBytes: -(this.stream?.received ?? 0) };
    }
    // No progress polls from here: a query-migrate in the pause waits behind QEMU's final pass
    // (the final round's own, before the stop, are precopy-switchover.ts's).
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = undefined;
    this.qmpTrace = CutQmpTrace.start(this.q);
    this.holdStore(); // from the commit: the stop's round trip and the STOP's delivery too
    try {
      return await (this.opts.mode === 'background' ? this.cutBackground(atPause) : this.cutPrecopy(atPause, at));
    } finally {
      this.releaseStore?.();
      this.releaseStore = undefined;
      this.qmpTrace.stop();
    }
  }

  /** From the commit to the end of this cut no stream of this agent writes into the store (image-stream.ts). */
  private holdStore(): void {
    this.releaseStore ??= holdStoreWrites();
  }

  private mark(step: string): void {
    this.trace.push([step, performance.now()]);
  }

  private async cutBackground(atPause: () => Promise<void>): Promise<CutReport> {
    let cut: { cutUnixUs: number; resume: QmpEvent };
    try {
      cut = await backgroundCut({
        q: this.q,
        uri: this.migrateUri(), // the stream is open since begin
        atPause,
        snapshotDisk: () => this.disk.snapshot(),
        stopped: () => {
          this.pausedByUs = true;
          this.vmObj.status = 'paused';
        },
        migrating: () => {
          this.backgroundMigrate = true;
          this.migrationDone = this.watchCompletion();
        },
        mark: (m) => this.mark(m),
        boost: () => this.boostPause(),
      });
    } catch (e) {
      await this.failCut(false); // a disk QEMU froze all the same is merged back
      throw e;
    }
    this.pausedByUs = false;
    return this.finishCut(cut.cutUnixUs, cut.resume);
  }

  /** QEMU's main thread at SCHED_FIFO for the pause (pause-boost.ts); the function returned undoes it. */
  private boostPause(): () => void {
    if (!pauseBoostEnabled()) return () => undefined;
    const boost = boostPause(this.vmObj.pid, { log: this.log });
    return () => void boost.release();
  }

  private async cutPrecopy(atPause: () => Promise<void>, at?: CutInstant): Promise<CutReport> {
    const q = this.q;
    this.mark('start');
    // The commit's cut instant on this process's monotonic clock: `stop` then (precopy-switchover.ts).
    const stopAt = at ? perfAt(at) : undefined;
    let stopWrittenAt: number | undefined;
    // The migration's state from its events (no query-migrate round trip at the commit); 'setup'
    // right after a restart (its 'active' event may follow migrate's reply).
    const st = this.migrationStatus;
    if (st !== 'active' && st !== 'setup' && st !== 'pre-switchover' && !this.preSwitchoverEv) {
      this.phase = 'failed';
      throw new VnsnapError('ERR_DRIVER', `QEMU VM ${this.vm}: the pre-copy is ${st}, cannot cut`);
    }
    // Held by its reads: QEMU is awake, blocked in its write, its max-bandwidth unlimited; read
    // at full speed from now on (also for a QEMU that converged a moment ago: its final pass),
    // then a fixed round and `stop` (precopy-switchover.ts readPacedRound).
    const byReads = this.pacer !== undefined;
    this.endReadPacing();
    if (!this.preSwitchoverEv && st !== 'pre-switchover') {
      const preSwitchover = new Promise<QmpEvent>((resolve) => {
        this.preSwitchover = resolve;
        if (this.preSwitchoverEv) resolve(this.preSwitchoverEv);
      });
      // Nothing of the store from the commit to the resume: what QEMU sends in the final round
      // and the pause is read into memory at once (hashing 512 KiB batches on this event loop
      // stalled it for 130-340 ms per cut, delaying the stop and QEMU's events of every VM here).
      this.stream?.holdWrites();
      const s: Switchover = { q, vm: this.vm, log: this.log, cutDowntimeMs: this.o.cutDowntimeMs, escalateMs: this.o.cutEscalateMs, preSwitchover, ended: this.migrationDone ?? Promise.resolve(), stopped: () => this.mark('stopped'), mark: (m) => this.mark(m), ...(byReads ? { lifted: true } : { progress: () => this.roundProgress() }), ...(stopAt !== undefined && { stopAt, thawMs: thawMs(), freeze: () => this.stream?.closeReads(), thaw: () => this.stream?.openReads() }) };
      try {
        await reachSwitchover(s, byReads ? readPacedRound() : undefined);
        stopWrittenAt = s.stopWrittenAt;
        if (this.holdAtCut) this.holdAtCut.round = s.round;
      } catch (e) {
        this.pausedByUs = s.stoppedByUs === true;
        this.stream?.releaseWrites();
        await this.failCut(true);
        throw e;
      }
    }
    const stopEv = this.vmObj.lastStop;
    this.mark('paused');
    this.preSwitchover = undefined;
    this.pausedByUs = true;
    this.vmObj.status = 'paused';
    // Read the final pass at once and keep the store's writes (hashing on this event loop) out of
    // the pause: the store catches up after the resume (finishCut). The listener did it already
    // when the pre-switchover came during the cut.
    this.stream?.holdWrites();
    const sent = this.stream?.received ?? 0;
    if (this.holdAtCut?.toSwitchoverBytes !== undefined) this.holdAtCut.toSwitchoverBytes += sent; // the commit to the pre-switchover: the final round and the stopped VM's set
    const cutUnixUs = stopEv?.timestampUs || nowUs();
    // How the pause met the instant: the instant → `stop` written (or QEMU's own STOP).
    const cutAtSpan: PhaseSpan | undefined = at && stopAt !== undefined ? { phase: 'PHASE_CUT_AT', startUnixUs: at.stopAtUs, endUnixUs: stopWrittenAt !== undefined ? Math.round(at.stopAtUs + (stopWrittenAt - stopAt) * 1000) : cutUnixUs } : undefined;
    const copyStart = nowUs();
    let resume: QmpEvent;
    try {
      // The hook beside QEMU's side of the cut; cont once both are done (precopy-pause.ts).
      resume = await precopyPause({ q, atPause, snapshotDisk: () => this.disk.snapshot(), completed: this.migrationDone as Promise<void>, mark: (s) => this.mark(s) });
      this.pausedByUs = false;
    } catch (e) {
      this.stream?.releaseWrites();
      await this.failCut(true);
      throw e;
    }
    this.finalPassBytes = (this.stream?.received ?? 0) - sent;
    const copyEnd = resume.timestampUs || nowUs();
    const report = this.finishCut(cutUnixUs, resume, { startUnixUs: copyStart, endUnixUs: copyEnd });
    if (cutAtSpan) report.phases.push(cutAtSpan);
    return report;
  }

  /** query-migrate during the final round (precopy-switchover.ts): QEMU's syncs and what is still dirty. */
  private async roundProgress(): Promise<RoundProgress> {
    const ram = (await this.q.execute<MigrationInfo>('query-migrate', undefined, 1000)).ram;
    return { sync: ram?.['dirty-sync-count'] ?? 0, remaining: ram?.remaining ?? 0 };
  }

  /**
   * A cut failed: stop the migration (pre-copy), resume the VM if this job paused it, merge a
   * disk overlay made at the cut back and drop an unused one.
   */
  private async failCut(cancelMigration: boolean): Promise<void> {
    this.phase = 'failed';
    if (cancelMigration) await this.cancelMigration();
    await this.resumeIfOurs();
    await this.disk.undo();
    await this.disk.drop();
  }

  private finishCut(cutUnixUs: number, resume: QmpEvent, copy?: { startUnixUs: number; endUnixUs: number }): CutReport {
    const resumeUnixUs = Math.max(cutUnixUs, resume.timestampUs || nowUs());
    this.vmObj.status = 'running';
    this.stream?.releaseWrites(); // the store catches up with the final pass now the VM runs
    this.phase = 'writing';
    this.final = this.finish();
    this.final.catch(() => undefined);
    const report = cutReport(cutUnixUs, resumeUnixUs, copy);
    report.phases.push(...(this.qmpTrace?.stop() ?? []), ...this.restartSpans);
    // debug: at info a synchronous stderr write while other VMs may be paused (the QMP phases have it)
    const t0 = this.trace[0]?.[1] ?? 0;
    const steps = this.trace.map(([k, t]) => `${k}+${(t - t0).toFixed(1)}`).join(' ');
    if (this.holdAtCut) this.holdAtCut.steps = steps;
    const finalBytes = this.opts.mode === 'precopy' ? { finalPassBytes: this.finalPassBytes, hold: this.holdAtCut } : {};
    this.log.debug({ mode: this.opts.mode, pauseMs: Number(report.pauseMs.toFixed(3)), restarts: this.restarts, steps, ...finalBytes }, 'cut done');
    return report;
  }

  private async cancelMigration(): Promise<void> {
    if (this.vmObj.exited) return;
    const st = this.migrationStatus;
    if (st === 'completed' || st === 'failed' || st === 'cancelled' || st === 'none') return;
    const ended = this.migrationDone?.catch(() => undefined);
    await this.q.execute('migrate_cancel').catch(() => undefined);
    await Promise.race([ended, sleep(5000)]);
  }

  private async resumeIfOurs(): Promise<void> {
    if (!this.pausedByUs) return;
    this.pausedByUs = false;
    if (this.vmObj.exited) return;
    await this.vmObj.refreshStatus().catch(() => undefined);
    if (this.vmObj.status !== 'running') await this.q.execute('cont');
    await this.vmObj.refreshStatus().catch(() => undefined);
  }

  /** After the cut: wait for the stream to complete, then put the memory and disk images in the store. */
  private async finish(): Promise<VmImage> {
    try {
      await this.migrationDone;
      this.unlisten();
      const memory = await this.commitStream();
      // Off the cut path (the VM's stream is in the store): what the hold left to the cut.
      if (this.holdAtCut) this.log.info({ vm: this.vm, restarts: this.restarts, finalPassBytes: this.finalPassBytes, ...this.holdAtCut }, 'pre-copy hold at the cut');
      const disks = await this.storeDisk();
      if ((this.phase as JobPhase) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
      this.phase = 'done';
      this.vmObj.job = undefined;
      return { memory, disks };
    } catch (e) {
      if ((this.phase as JobPhase) !== 'aborted') this.phase = 'failed';
      for (const w of this.writers) await w.abort();
      await this.closeStream();
      throw e;
    }
  }

  /**
   * After MIGRATION completed: QEMU emits it before it closes the socket, so the stream's tail
   * (the device state) may still be on its way; the artefact is committed at the stream's end.
   */
  private async commitStream(): Promise<StoredArtefact> {
    const st = this.stream;
    const w = this.memWriter;
    if (!st || !w) throw new VnsnapError('ERR_STATE', `snapshot of ${this.vm}: no memory stream open`);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new VnsnapError('ERR_TIMEOUT', `memory image of ${this.vm}: the stream did not end within 60 s of the migration's end`)), 60_000);
    });
    try {
      await Promise.race([st.ended, late]);
    } finally {
      clearTimeout(timer);
    }
    if ((this.phase as JobPhase) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
    const a = await w.commit();
    this.committed.push(a);
    this.log.debug({ bytes: a.size, peakBufferedBytes: st.peakQueued, stream: st.profile, store: (w as { profile?: unknown }).profile }, 'memory image committed');
    this.stream = undefined;
    this.memWriter = undefined;
    await st.close();
    return a;
  }

  protected async runAbort(): Promise<void> {
    const was = this.phase;
    this.phase = 'aborted';
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = undefined;
    this.preSwitchover = undefined;
    await this.restarting;
    const heldByQemu = this.migrationStatus === 'pre-switchover';
    this.stream?.discard(); // QEMU must never wait on a stream nobody will keep
    if (this.opts.mode === 'background' && (was === 'writing' || this.backgroundMigrate)) {
      // Never migrate_cancel a background snapshot: on QEMU 7.2 under TCG it hung QEMU's main
      // loop in about 1 run of 3 (no QMP reply, VM lost; docs/qemu.md). The VM is running and
      // the stream is bounded by its RAM, so let it end and discard it. (A cut that failed after
      // its `migrate` was written, its disk step refused, may have started one: 'none' if not.)
      this.log.debug({ migration: this.migrationStatus }, 'abort: letting the background stream end');
      if (this.migrationStatus !== 'none') await this.migrationDone?.catch(() => undefined);
    } else {
      this.log.debug({ was, migration: this.migrationStatus }, 'abort: cancelling the migration');
      await this.cancelMigration();
    }
    if (heldByQemu) this.pausedByUs = true;
    await this.resumeIfOurs().catch((e) => this.log.warn({ err: describeError(e) }, 'resume after abort failed'));
    this.log.debug({ migration: this.migrationStatus }, 'abort: waiting for the writer');
    if (was === 'writing') await this.final?.catch(() => undefined);
    this.log.debug('abort: merging the overlay back');
    await this.disk.undo();
    await this.disk.drop();
    this.unlisten();
    for (const w of this.writers) await w.abort();
    await this.closeStream();
    for (const a of this.committed) await this.opts.store.delete(a.path);
    if (this.vmObj.job === this) this.vmObj.job = undefined;
  }
}
