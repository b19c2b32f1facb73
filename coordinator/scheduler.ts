/**
 * The coordinator's snapshot scheduler: takes each schedule's snapshot when it falls due and
 * then prunes the schedule's snapshots its keep policy does not keep (retention.ts).
 *
 * Guarantees:
 *  - Snapshots go through the same path as the CreateSnapshot RPC (`snapshot`), so every rule of
 *    that path holds (one snapshot per VNE at a time, a busy, DEGRADED or stopped VNE refused).
 *    A refused run is skipped, its reason recorded as the schedule's last result; it is not
 *    queued: the next run is one interval later. A schedule whose previous snapshot is still
 *    running skips likewise.
 *  - The next due time is persisted before a run starts. A coordinator that was down when runs
 *    fell due takes one snapshot per schedule at start (not one per missed interval), and one
 *    that died during a run does not repeat it.
 *  - Pruning follows a COMPLETE snapshot only, considers only snapshots the schedule took
 *    (scheduler-store.ts), never manual ones, never one in progress; a scheduled snapshot that
 *    aborted is pruned. Deletion goes through the DeleteSnapshot path (`deleteSnapshot`); one
 *    that fails is named in the last result and tried again after the next run.
 *  - Time is the injected Clock: one timer, armed for the earliest due schedule; no polling.
 */
import type { Clock, TimerHandle } from '../proto/core/clock';
import { VnsnapError } from '../proto/core/errors';
import type { Logger } from '../proto/core/log';
import type { CreateSnapshotRequest__Output } from '../proto/gen/vnsnap/v1/CreateSnapshotRequest';
import type { Schedule__Output } from '../proto/gen/vnsnap/v1/Schedule';
import type { Snapshot__Output } from '../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotEvent } from '../proto/gen/vnsnap/v1/SnapshotEvent';
import { IN_PROGRESS_STATES, type Catalog } from './catalog';
import { snapshotsToKeep } from './retention';
import { formatInterval } from './scheduler-interval';

/** The longest timer Node keeps (2^31-1 ms); a later due time re-arms when this one fires. */
const MAX_TIMER_MS = 2_147_483_647;

export interface SchedulerDeps {
  catalog: Catalog;
  clock: Clock;
  log: Logger;
  /** The CreateSnapshot path: throws (or rejects) when the snapshot cannot begin. */
  snapshot(req: CreateSnapshotRequest__Output, sink: (e: SnapshotEvent) => void): Promise<Snapshot__Output>;
  /** The DeleteSnapshot path. */
  deleteSnapshot(id: string): Promise<unknown>;
}

/** The first due time after `now` on the schedule's cadence from `due`; never `now` itself. */
export function nextDueAfter(due: number, everyMs: number, now: number): number {
  const next = due + everyMs;
  return next > now ? next : now + everyMs;
}

export class Scheduler {
  private timer: TimerHandle | undefined;
  private started = false;
  private readonly running = new Map<string, Promise<void>>();

  constructor(private readonly d: SchedulerDeps) {}

  /** Run what fell due while the coordinator was down (once each), then keep time. */
  start(): void {
    this.started = true;
    this.tick();
  }

  /** No more runs; the ones in flight finish (the sequencer aborts them at shutdown). */
  stop(): void {
    this.started = false;
    this.d.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** A schedule was set or deleted: re-arm for the earliest due time. */
  changed(): void {
    this.arm();
  }

  /** Resolves when every run in flight (snapshot and pruning) is done. */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.all([...this.running.values()]);
  }

  private tick(): void {
    if (!this.started) return;
    const now = this.d.clock.now();
    for (const s of this.d.catalog.schedules.list()) if (s.nextDueUnixMs <= now) this.due(s, now);
    this.arm();
  }

  private arm(): void {
    this.d.clock.clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.started) return;
    const dues = this.d.catalog.schedules.list().map((s) => s.nextDueUnixMs);
    if (dues.length === 0) return;
    const wait = Math.min(Math.max(0, Math.min(...dues) - this.d.clock.now()), MAX_TIMER_MS);
    this.timer = this.d.clock.setTimeout(() => this.tick(), wait);
  }

  private due(s: Schedule__Output, now: number): void {
    const store = this.d.catalog.schedules;
    store.setNextDue(s.vne, nextDueAfter(s.nextDueUnixMs, s.everyMs, now));
    if (this.running.has(s.vne)) {
      this.record(s.vne, now, 'skipped: the previous scheduled snapshot is still running', '');
      return;
    }
    const run = this.run(s, now)
      .catch((e: unknown) => this.d.log.warn({ vne: s.vne, error: (e as Error).message }, 'scheduled run failed'))
      .finally(() => this.running.delete(s.vne));
    this.running.set(s.vne, run);
  }

  private record(vne: string, at: number, result: string, snapshotId: string): void {
    this.d.catalog.schedules.setResult(vne, at, result, snapshotId);
    this.d.log.info({ vne, snapshot: snapshotId || undefined, result }, 'scheduled snapshot');
  }

  private async run(s: Schedule__Output, at: number): Promise<void> {
    const store = this.d.catalog.schedules;
    let id = '';
    const sink = (e: SnapshotEvent): void => {
      if (id || !e.snapshotId) return;
      id = e.snapshotId;
      store.markScheduled(id, s.vne);
    };
    let snap: Snapshot__Output;
    try {
      snap = await this.d.snapshot({ vne: s.vne, mode: s.mode, precopyDeadlineMs: 0, timeoutMs: 0, description: `scheduled (every ${formatInterval(s.everyMs)})` }, sink);
    } catch (e) {
      this.record(s.vne, at, `${id ? 'failed' : 'skipped'}: ${(e as Error).message}`, id);
      return;
    }
    store.markScheduled(snap.id, s.vne);
    if (snap.state !== 'SNAPSHOT_STATE_COMPLETE') {
      this.record(s.vne, at, `failed: snapshot ${snap.id} aborted${snap.error ? `: ${snap.error}` : ''}`, snap.id);
      return;
    }
    this.record(s.vne, at, `snapshot ${snap.id} complete${await this.prune(s.vne)}`, snap.id);
  }

  /** Delete the schedule's snapshots its current policy does not keep; says what it did. */
  private async prune(vne: string): Promise<string> {
    const policy = this.d.catalog.schedules.get(vne);
    if (!policy) return '';
    const ours = this.d.catalog.schedules.scheduledIds(vne);
    const snaps = this.d.catalog.listSnapshots(vne).filter((x) => ours.has(x.id) && !IN_PROGRESS_STATES.includes(x.state));
    const keep = snapshotsToKeep(
      snaps.filter((x) => x.state === 'SNAPSHOT_STATE_COMPLETE'),
      policy,
    );
    let pruned = 0;
    const failures: string[] = [];
    for (const x of snaps) {
      if (keep.has(x.id)) continue;
      try {
        await this.d.deleteSnapshot(x.id);
        pruned++;
      } catch (e) {
        failures.push(`${x.id} (${e instanceof VnsnapError ? e.message : String(e)})`);
      }
    }
    return `, ${pruned} pruned${failures.length ? `; not deleted: ${failures.join(', ')}` : ''}`;
  }
}
