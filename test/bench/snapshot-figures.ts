/**
 * bench:snapshot's arithmetic, apart from the run so it can be tested: per-mode statistics
 * (median, nearest-rank p95, max), the spread of a snapshot's cut instants (from the catalog's
 * cut_unix_us) and of its agents' commit receipts (the cut trace's COMMIT), the durations of the cut-trace phases over many cuts, and the issue's targets
 * as ratios, each MET or NOT MET (or n/a when its figure is missing).
 */
import { cutTraceLine } from '../../coordinator/cli/cut-trace';

export interface Stats {
  median: number;
  p95: number;
  max: number;
}

const r1 = (x: number): number => Math.round(x * 10) / 10;

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/** Nearest-rank 95th percentile (of 40 values: the 38th smallest). */
export function p95(xs: readonly number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.max(0, Math.ceil(0.95 * xs.length) - 1)] as number;
}

/** median / p95 / max, one decimal. Throws on no values (a mode that measured nothing is a failed run). */
export function stats(xs: readonly number[]): Stats {
  if (xs.length === 0) throw new Error('no values to summarise');
  return { median: r1(median(xs)), p95: r1(p95(xs)), max: r1(Math.max(...xs)) };
}

/** A VM of a snapshot as `snapshot create --json` prints it (int64 fields may be strings). */
export interface TracedVm {
  name: string;
  host: string;
  pauseMs: number;
  cutUnixUs: number | string;
  phases?: { phase: string; startUnixUs: number | string; endUnixUs: number | string }[];
}

/** Last cut − first cut over the snapshot's VMs, in ms (0 with fewer than two cuts known). */
export function cutSpreadMs(vms: readonly TracedVm[]): number {
  const cuts = vms.map((v) => Number(v.cutUnixUs)).filter((c) => c > 0);
  return cuts.length < 2 ? 0 : r1((Math.max(...cuts) - Math.min(...cuts)) / 1000);
}

/** The commit fan-out skew of one snapshot: last − first instant an agent received the commit (PHASE_COMMIT's end), ms. */
export function commitSkewMs(vms: readonly TracedVm[]): number {
  const rx = vms.flatMap((v) => (v.phases ?? []).filter((p) => p.phase === 'PHASE_COMMIT').map((p) => Number(p.endUnixUs))).filter((t) => t > 0);
  return rx.length < 2 ? 0 : r1((Math.max(...rx) - Math.min(...rx)) / 1000);
}

/**
 * Where one snapshot's cut spread comes from, each a spread over its VMs (last − first, ms) or a
 * largest lag (ms): the agents' commit receipts (PHASE_COMMIT's end), the instants the agents
 * began their cuts (PHASE_CUT_AT's end: the scheduled instant reached, or the receipt when there
 * was none or it came late), the `stop` written (PHASE_QMP_STOP's start: background cuts; a
 * pre-copy cut that converged writes none) and the cut instants themselves; and the largest
 * commit delay (sent → received, both hosts' clocks as they are), the largest lag of a cut's
 * begin behind its scheduled instant, and the largest lag of QEMU's STOP behind the `stop`
 * written. null where no VM has the phase.
 */
export interface SpreadParts {
  cut: number;
  receipt: number | null;
  cutBegin: number | null;
  stopWritten: number | null;
  commitDelayMax: number | null;
  beginLateMax: number | null;
  stopLagMax: number | null;
}

type Span = { start: number; end: number };

function span(v: TracedVm, phase: string): Span | undefined {
  const p = (v.phases ?? []).find((q) => q.phase === phase);
  return p ? { start: Number(p.startUnixUs), end: Number(p.endUnixUs) } : undefined;
}

function spreadOf(xs: readonly number[]): number | null {
  const ok = xs.filter((x) => x > 0);
  return ok.length < 2 ? null : r1((Math.max(...ok) - Math.min(...ok)) / 1000);
}

function maxLag(xs: readonly (number | undefined)[]): number | null {
  const ok = xs.filter((x): x is number => x !== undefined && Number.isFinite(x));
  return ok.length === 0 ? null : r1(Math.max(...ok) / 1000);
}

export function spreadParts(vms: readonly TracedVm[]): SpreadParts {
  const commit = vms.map((v) => span(v, 'PHASE_COMMIT'));
  const at = vms.map((v) => span(v, 'PHASE_CUT_AT'));
  const stop = vms.map((v) => span(v, 'PHASE_QMP_STOP'));
  return {
    cut: cutSpreadMs(vms),
    receipt: spreadOf(commit.map((c) => c?.end ?? 0)),
    cutBegin: spreadOf(vms.map((_, i) => at[i]?.end ?? commit[i]?.end ?? 0)),
    stopWritten: spreadOf(stop.map((s) => s?.start ?? 0)),
    commitDelayMax: maxLag(commit.map((c) => (c && c.start > 0 && c.end > 0 ? c.end - c.start : undefined))),
    beginLateMax: maxLag(at.map((a) => (a && a.start > 0 ? a.end - a.start : undefined))),
    stopLagMax: maxLag(vms.map((v, i) => (stop[i] && Number(v.cutUnixUs) > 0 ? Number(v.cutUnixUs) - (stop[i] as Span).start : undefined))),
  };
}

/** spreadParts as one line: "cut 77.0 = receipts 43.7, cut begins 44.0, stop written 45.1; …". */
export function spreadPartsLine(p: SpreadParts): string {
  const f = (x: number | null): string => (x === null ? '-' : x.toFixed(1));
  return `cut ${f(p.cut)} ms; spreads: receipts ${f(p.receipt)}, cut begins ${f(p.cutBegin)}, stop written ${f(p.stopWritten)}; max: commit delay ${f(p.commitDelayMax)}, begin late ${f(p.beginLateMax)}, stop → STOP ${f(p.stopLagMax)}`;
}

/** Per trace phase (short name, lower case), the statistics of its durations over every cut given. */
export function traceStats(vms: readonly TracedVm[]): Record<string, Stats & { n: number }> {
  const by = new Map<string, number[]>();
  for (const v of vms)
    for (const p of v.phases ?? []) {
      const name = p.phase.replace(/^PHASE_/, '').toLowerCase();
      if (['precopy', 'copy', 'channel', 'persist', 'pause'].includes(name)) continue;
      const d = (Number(p.endUnixUs) - Number(p.startUnixUs)) / 1000;
      if (d >= 0) by.set(name, [...(by.get(name) ?? []), d]);
    }
  const out: Record<string, Stats & { n: number }> = {};
  for (const [k, xs] of [...by].sort(([a], [b]) => a.localeCompare(b))) out[k] = { ...stats(xs), n: xs.length };
  return out;
}

/** One pause with its trace line: "h1/a 466.0 ms: commit …". */
function traceOf(v: TracedVm): string {
  return `${v.host}/${v.name} ${v.pauseMs.toFixed(1)} ms: ${cutTraceLine({ cutUnixUs: v.cutUnixUs, phases: v.phases ?? [] })}`;
}

/** The `n` longest pauses with their trace lines, longest first: "h1/a 466.0 ms: commit …". */
export function longestTraces(vms: readonly TracedVm[], n: number): string[] {
  return [...vms]
    .sort((a, b) => b.pauseMs - a.pauseMs)
    .slice(0, n)
    .map(traceOf);
}

/**
 * The `n` pauses nearest the median (by rank: the middle ones of the pauses in order), shortest
 * first, with their trace lines: where a typical pause goes, beside the longest ones.
 */
export function medianTraces(vms: readonly TracedVm[], n: number): string[] {
  const sorted = [...vms].sort((a, b) => a.pauseMs - b.pauseMs);
  const k = Math.min(n, sorted.length);
  const from = Math.max(0, Math.min(sorted.length - k, Math.floor((sorted.length - k) / 2)));
  return sorted.slice(from, from + k).map(traceOf);
}

export interface Target {
  what: string;
  value: number | null;
  limit: number;
  /** How the value is shown: ms, or a ratio (×). */
  unit: 'ms' | 'x';
}

/** One line per target: "background, distro, median  21.3 ms  ≤ 20 ms  NOT MET". */
export function targetLines(targets: readonly Target[]): string[] {
  const w = Math.max(...targets.map((t) => t.what.length));
  return targets.map((t) => {
    const v = t.value === null || !Number.isFinite(t.value) ? 'n/a' : t.unit === 'ms' ? `${t.value.toFixed(1)} ms` : `${t.value.toFixed(2)}×`;
    const lim = t.unit === 'ms' ? `≤ ${t.limit} ms` : `≤ ${t.limit}×`;
    const verdict = t.value === null || !Number.isFinite(t.value) ? 'n/a' : t.value <= t.limit ? 'MET' : 'NOT MET';
    return `${t.what.padEnd(w)}  ${v.padStart(10)}  ${lim.padEnd(9)}  ${verdict}`;
  });
}

/** a / b rounded to two decimals; null when either is missing or b is 0. */
export function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  if (a === null || a === undefined || b === null || b === undefined || !(b > 0)) return null;
  return Math.round((a / b) * 100) / 100;
}
