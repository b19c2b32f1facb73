/**
 * The snapshot schedules as the catalog keeps them (tables `schedules` and
 * `scheduled_snapshots`, migration 4): one schedule per VNE with its interval, keep policy,
 * mode, when it is next due and what its last run did; and which snapshots a schedule took.
 *
 * Guarantees: the next due time is written before a run starts (a coordinator that dies during
 * a run does not run it again at start); only snapshots recorded here are ever pruned by a
 * schedule, and their rows go with the snapshot (ON DELETE CASCADE). A VNE's schedule goes with
 * the VNE (Catalog.deleteVne).
 */
import type Database from 'better-sqlite3';
import type { Schedule__Output } from '../proto/gen/vnsnap/v1/Schedule';
import type { SnapshotMode__Output } from '../proto/gen/vnsnap/v1/SnapshotMode';

type Row = Record<string, unknown>;
const num = (v: unknown): number => Number(v ?? 0);
const str = (v: unknown): string => (v == null ? '' : String(v));

/** What SetSchedule decides; the rest of a Schedule is the store's. */
export type ScheduleSpec = Pick<Schedule__Output, 'vne' | 'everyMs' | 'keepLast' | 'keepHourly' | 'keepDaily' | 'mode'>;

export class ScheduleStore {
  constructor(private readonly db: Database.Database) {}

  private fromRow(r: Row): Schedule__Output {
    return {
      vne: str(r.vne),
      everyMs: num(r.every_ms),
      keepLast: num(r.keep_last),
      keepHourly: num(r.keep_hourly),
      keepDaily: num(r.keep_daily),
      mode: str(r.mode) as SnapshotMode__Output,
      nextDueUnixMs: num(r.next_due_unix_ms),
      lastRunUnixMs: num(r.last_run_unix_ms),
      lastResult: str(r.last_result),
      lastSnapshotId: str(r.last_snapshot_id),
      createdUnixMs: num(r.created_unix_ms),
    };
  }

  /** Create or replace the VNE's schedule (a replaced one keeps its history of runs). */
  put(s: ScheduleSpec, nextDueUnixMs: number, nowUnixMs: number): Schedule__Output {
    const policy = [s.everyMs, s.keepLast, s.keepHourly, s.keepDaily, s.mode, nextDueUnixMs];
    const set = 'UPDATE schedules SET every_ms = ?, keep_last = ?, keep_hourly = ?, keep_daily = ?, mode = ?, next_due_unix_ms = ? WHERE vne = ?';
    if (this.db.prepare(set).run(...policy, s.vne).changes === 0) {
      this.db.prepare('INSERT INTO schedules (every_ms, keep_last, keep_hourly, keep_daily, mode, next_due_unix_ms, vne, created_unix_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)').run(...policy, s.vne, nowUnixMs);
    }
    return this.get(s.vne) as Schedule__Output;
  }

  private select(rest: string, ...args: unknown[]): Schedule__Output[] {
    return (this.db.prepare(`SELECT * FROM schedules ${rest}`).all(...args) as Row[]).map((r) => this.fromRow(r));
  }

  get(vne: string): Schedule__Output | undefined {
    return this.select('WHERE vne = ?', vne)[0];
  }

  list(): Schedule__Output[] {
    return this.select('ORDER BY vne');
  }

  /** Remove the VNE's schedule; true when there was one. Its snapshots stay. */
  delete(vne: string): boolean {
    return this.db.prepare('DELETE FROM schedules WHERE vne = ?').run(vne).changes > 0;
  }

  setNextDue(vne: string, nextDueUnixMs: number): void {
    this.db.prepare('UPDATE schedules SET next_due_unix_ms = ? WHERE vne = ?').run(nextDueUnixMs, vne);
  }

  /** Record what the run that fell due at `runUnixMs` did. */
  setResult(vne: string, runUnixMs: number, result: string, snapshotId: string): void {
    this.db.prepare('UPDATE schedules SET last_run_unix_ms = ?, last_result = ?, last_snapshot_id = ? WHERE vne = ?').run(runUnixMs, result, snapshotId, vne);
  }

  /** The snapshot was taken by the VNE's schedule (idempotent). */
  markScheduled(snapshotId: string, vne: string): void {
    this.db.prepare('INSERT OR IGNORE INTO scheduled_snapshots (snapshot_id, vne) VALUES (?, ?)').run(snapshotId, vne);
  }

  /** Ids of the VNE's snapshots that a schedule took. */
  scheduledIds(vne: string): Set<string> {
    return new Set((this.db.prepare('SELECT snapshot_id FROM scheduled_snapshots WHERE vne = ?').all(vne) as Row[]).map((r) => str(r.snapshot_id)));
  }
}
