/**
 * Which snapshots a schedule keeps: a pure function of the snapshots' creation times and the
 * keep policy, so the rules are tested as a table and the scheduler only deletes what it says.
 *
 * Rules (each on the candidates given, newest first; ties broken by id so the answer never
 * depends on input order):
 *  - keep_last N: the N newest.
 *  - keep_hourly N: the newest snapshot of each of the N most recent UTC hours that have one.
 *  - keep_daily N: the newest snapshot of each of the N most recent UTC days that have one.
 * A snapshot kept by any rule stays. A policy of all zeros keeps nothing (SetSchedule refuses it).
 */

export interface KeepPolicy {
  keepLast: number;
  keepHourly: number;
  keepDaily: number;
}

export interface RetentionCandidate {
  id: string;
  createdUnixMs: number;
}

const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;

/** Newest first; equal times by id, descending. */
function newestFirst(snaps: readonly RetentionCandidate[]): RetentionCandidate[] {
  return [...snaps].sort((a, b) => b.createdUnixMs - a.createdUnixMs || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
}

/** The newest of each of the `n` most recent buckets of `bucketMs` that hold a snapshot. */
function newestPerBucket(sorted: readonly RetentionCandidate[], bucketMs: number, n: number): string[] {
  const out: string[] = [];
  let last: number | undefined;
  for (const s of sorted) {
    if (out.length >= n) break;
    const bucket = Math.floor(s.createdUnixMs / bucketMs);
    if (bucket === last) continue;
    last = bucket;
    out.push(s.id);
  }
  return out;
}

/** The ids of the snapshots the policy keeps. */
export function snapshotsToKeep(snaps: readonly RetentionCandidate[], p: KeepPolicy): Set<string> {
  const sorted = newestFirst(snaps);
  return new Set([
    ...sorted.slice(0, p.keepLast).map((s) => s.id),
    ...newestPerBucket(sorted, HOUR_MS, p.keepHourly),
    ...newestPerBucket(sorted, DAY_MS, p.keepDaily),
  ]);
}
