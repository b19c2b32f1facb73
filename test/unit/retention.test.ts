/** The keep rules of scheduled snapshots (retention.ts), as a table of exact expected sets. */
import { strict as assert } from 'node:assert';
import { snapshotsToKeep, type KeepPolicy } from '../../coordinator/retention';

const H = 3_600_000;
const D = 24 * H;
/** 2027-01-15 00:00:00 UTC: a day boundary, so hours and days below fall where they say. */
const DAY0 = Date.UTC(2027, 0, 15);

/** Snapshot `id` at DAY0 + day days + hour hours + min minutes. */
const at = (id: string, day: number, hour: number, min = 0) => ({ id, createdUnixMs: DAY0 + day * D + hour * H + min * 60_000 });

// Every 30 minutes for 3 hours of day 0, then 2 of day 1, then 1 of day 2.
const SNAPS = [
  at('d0h0a', 0, 0),
  at('d0h0b', 0, 0, 30),
  at('d0h1a', 0, 1),
  at('d0h1b', 0, 1, 30),
  at('d0h2a', 0, 2),
  at('d0h2b', 0, 2, 30),
  at('d1h5a', 1, 5),
  at('d1h5b', 1, 5, 45),
  at('d2h3a', 2, 3),
];

const policy = (keepLast: number, keepHourly: number, keepDaily: number): KeepPolicy => ({ keepLast, keepHourly, keepDaily });

const CASES: readonly { name: string; snaps: typeof SNAPS; p: KeepPolicy; keep: string[] }[] = [
  { name: 'nothing to keep from', snaps: [], p: policy(3, 3, 3), keep: [] },
  { name: 'all zeros keeps nothing', snaps: SNAPS, p: policy(0, 0, 0), keep: [] },
  { name: 'keep-last 1', snaps: SNAPS, p: policy(1, 0, 0), keep: ['d2h3a'] },
  { name: 'keep-last 3', snaps: SNAPS, p: policy(3, 0, 0), keep: ['d2h3a', 'd1h5b', 'd1h5a'] },
  { name: 'keep-last more than there are', snaps: SNAPS, p: policy(50, 0, 0), keep: SNAPS.map((s) => s.id) },
  // Hours with a snapshot, newest first: d2h3, d1h5, d0h2, d0h1, d0h0; the newest of each.
  { name: 'keep-hourly 3', snaps: SNAPS, p: policy(0, 3, 0), keep: ['d2h3a', 'd1h5b', 'd0h2b'] },
  { name: 'keep-hourly 5 (every hour that has one)', snaps: SNAPS, p: policy(0, 5, 0), keep: ['d2h3a', 'd1h5b', 'd0h2b', 'd0h1b', 'd0h0b'] },
  { name: 'keep-daily 2', snaps: SNAPS, p: policy(0, 0, 2), keep: ['d2h3a', 'd1h5b'] },
  { name: 'keep-daily 3', snaps: SNAPS, p: policy(0, 0, 3), keep: ['d2h3a', 'd1h5b', 'd0h2b'] },
  // The union: last 2 (d2h3a, d1h5b) + hourly 3 (d2h3a, d1h5b, d0h2b) + daily 3 (d2h3a, d1h5b, d0h2b).
  { name: 'rules overlap: the union', snaps: SNAPS, p: policy(2, 3, 3), keep: ['d2h3a', 'd1h5b', 'd0h2b'] },
  { name: 'last 4 and daily 3', snaps: SNAPS, p: policy(4, 0, 3), keep: ['d2h3a', 'd1h5b', 'd1h5a', 'd0h2b'] },
  // Hour boundaries are UTC: 00:59:59.999 and 01:00 are different hours.
  {
    name: 'hour boundary',
    snaps: [
      { id: 'x', createdUnixMs: DAY0 + H - 1 },
      { id: 'y', createdUnixMs: DAY0 + H },
    ],
    p: policy(0, 2, 0),
    keep: ['x', 'y'],
  },
  // Same instant: the greater id is the newer, whatever the input order.
  {
    name: 'tie on time',
    snaps: [
      { id: 'a', createdUnixMs: DAY0 },
      { id: 'b', createdUnixMs: DAY0 },
    ],
    p: policy(1, 0, 0),
    keep: ['b'],
  },
];

describe('retention: which scheduled snapshots are kept', () => {
  for (const c of CASES) {
    it(c.name, () => {
      assert.deepEqual([...snapshotsToKeep(c.snaps, c.p)].sort(), [...c.keep].sort());
      // Input order does not matter.
      assert.deepEqual([...snapshotsToKeep([...c.snaps].reverse(), c.p)].sort(), [...c.keep].sort());
    });
  }
});
