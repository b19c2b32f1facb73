/**
 * Where a VNE snapshot's wall time goes (issue 15: "snapshot wall time near the disk's"), from
 * what the catalog records of each snapshot's VMs — no extra probes, so the split is of the same
 * snapshots the bench times. For one snapshot (its VMs' phases, wall-clock µs, and the seconds
 * the `snapshot create` command took):
 *
 *   before_cut    first traced instant (a pre-copy's begin, else the commit's send) → first cut
 *   cut_to_persist first cut → the first agent's SnapshotPersist (the commit, the coordinator's
 *                 wait for every agent, what it does before asking for the images)
 *   persist       first SnapshotPersist → the last agent's reply: the images' streams ending in the
 *                 store (the tail written after the cut, hashed, fsynced), the channel artefacts
 *   outside       the command's wall time minus the traced span: the CLI's start and connection,
 *                 the coordinator's begin (writers, pre-copy setup before its first trace) and
 *                 its manifest and catalog writes after the last persist
 *
 * With the snapshot's own marks (WallMarks: when the bench spawned the command, and the catalog's
 * created and completed instants) `outside` is split further:
 *
 *   to_created    spawn → the coordinator's record of the snapshot: the CLI process's start
 *                 (Node, its modules, the contract), its connection, the request's checks
 *   begin         created → first traced instant: the agents' begin (writers, overlays, a
 *                 tracked VM's first round) until the commit is sent (background) or the
 *                 pre-copy starts
 *   to_completed  the last persist → completed: the coordinator gathering the agents' records
 *   to_exit       completed → the command's exit: the manifest written, the catalog made durable,
 *                 the final record sent, the CLI's exit
 *
 * Each is split per snapshot and summarised as a median over the snapshots given. The figures are
 * approximate where clocks differ: the agents and the coordinator share this machine's clock in
 * the bench.
 */
import { median, type TracedVm } from './snapshot-figures';

export interface WallSplit {
  before_cut: number;
  cut_to_persist: number;
  persist: number;
  outside: number;
  wall: number;
  /** `outside` split by the snapshot's marks (module comment), when they were given. */
  to_created?: number;
  begin?: number;
  to_completed?: number;
  to_exit?: number;
}

/** One snapshot's instants outside its traces (wall-clock ms): the command's spawn, the catalog's created and completed. */
export interface WallMarks {
  spawnUnixMs: number;
  createdUnixMs: number;
  completedUnixMs: number;
}

const OUTSIDE_PARTS = ['to_created', 'begin', 'to_completed', 'to_exit'] as const;

const r2 = (x: number): number => Math.round(x * 100) / 100;

/** One snapshot's split, in seconds (module comment); null when its VMs carry no persist phase. */
export function wallSplit(vms: readonly TracedVm[], wallSeconds: number, marks?: WallMarks): WallSplit | null {
  const phases = vms.flatMap((v) => (v.phases ?? []).map((p) => ({ phase: p.phase, start: Number(p.startUnixUs), end: Number(p.endUnixUs) })));
  const persists = phases.filter((p) => p.phase === 'PHASE_PERSIST' && p.start > 0);
  const cuts = vms.map((v) => Number(v.cutUnixUs)).filter((c) => c > 0);
  const starts = phases.map((p) => p.start).filter((s) => s > 0);
  if (persists.length === 0 || cuts.length === 0 || starts.length === 0) return null;
  const first = Math.min(...starts);
  const cut = Math.min(...cuts);
  const persistStart = Math.min(...persists.map((p) => p.start));
  const persistEnd = Math.max(...persists.map((p) => p.end));
  const us = (a: number, b: number): number => Math.max(0, b - a) / 1e6;
  const span = us(first, persistEnd);
  const split: WallSplit = { before_cut: r2(us(first, cut)), cut_to_persist: r2(us(cut, persistStart)), persist: r2(us(persistStart, persistEnd)), outside: r2(Math.max(0, wallSeconds - span)), wall: r2(wallSeconds) };
  if (!marks) return split;
  const ms = (a: number, b: number): number => r2(Math.max(0, b - a) / 1e3);
  return {
    ...split,
    to_created: ms(marks.spawnUnixMs, marks.createdUnixMs),
    begin: ms(marks.createdUnixMs, first / 1e3),
    to_completed: ms(persistEnd / 1e3, marks.completedUnixMs),
    to_exit: ms(marks.completedUnixMs, marks.spawnUnixMs + wallSeconds * 1e3),
  };
}

/**
 * The median split over snapshots: `vms` are the snapshots' VMs in order, `vmsPerSnapshot` of
 * each, `seconds` each snapshot's wall time in the same order. Null when nothing could be split.
 */
export function medianWallSplit(vms: readonly TracedVm[], vmsPerSnapshot: number, seconds: readonly number[], marks?: readonly WallMarks[]): WallSplit | null {
  const splits: WallSplit[] = [];
  seconds.forEach((s, i) => {
    const w = wallSplit(vms.slice(i * vmsPerSnapshot, (i + 1) * vmsPerSnapshot), s, marks?.[i]);
    if (w) splits.push(w);
  });
  if (splits.length === 0) return null;
  const m = (k: keyof WallSplit): number => r2(median(splits.map((w) => w[k] ?? 0)));
  const out: WallSplit = { before_cut: m('before_cut'), cut_to_persist: m('cut_to_persist'), persist: m('persist'), outside: m('outside'), wall: m('wall') };
  if (splits.every((w) => w.to_created !== undefined)) for (const k of OUTSIDE_PARTS) out[k] = m(k);
  return out;
}

/** "before cut 0.12 s, cut → persist 0.40 s, persist 5.10 s, outside 1.20 s (of 6.82 s)", with outside's parts when known. */
export function wallSplitLine(w: WallSplit): string {
  const parts = w.to_created === undefined ? '' : ` (command start to the snapshot's record ${w.to_created} s, begin ${w.begin} s, last persist to completed ${w.to_completed} s, completed to the command's exit ${w.to_exit} s)`;
  return `before cut ${w.before_cut} s, cut → persist ${w.cut_to_persist} s, persist ${w.persist} s, outside the traced span ${w.outside} s${parts} (of ${w.wall} s)`;
}
