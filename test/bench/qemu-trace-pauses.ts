/**
 * Where QEMU's side of each pause goes, from QEMU's own trace events (a bench run with
 * VNSNAP_QEMU_TRACE_DIR set: agent/drivers/qemu/cmdline.ts traceArgs writes one file per QEMU
 * instance). Every pause is a run-state change from `running` to another state and back; for the
 * pauses of the kind asked, the instants of QEMU's steps are printed from the pause's start (ms):
 * the `stop` handled and done, the `blockdev-snapshot` and `migrate` handled, the migration's
 * states (setup, active, completed), the `cont` handled; then the longest pauses step by step.
 *
 *   node dist/test/bench/qemu-trace-pauses.js DIR [--kind tracked|all] [--longest N] [--json]
 *
 * --kind tracked (the default) keeps the pauses in which QEMU handled a `blockdev-snapshot` (a
 * vnsnap cut; the baseline's and bare QEMU's pauses have none). Diagnostics only: not a
 * benchmark, no targets.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { helpExit, usageExit } from './args';
import { stats } from './snapshot-figures';

const USAGE = 'usage: node dist/test/bench/qemu-trace-pauses.js DIR [--kind tracked|all] [--longest N] [--json]';

interface Pause {
  file: string;
  startMs: number;
  pauseMs: number;
  /** [ms from the pause's start, what] in order. */
  steps: [number, string][];
}

const LINE = /^(\d+)@(\d+)\.(\d+):(\w+) ?(.*)$/;
const KEPT = new Set(['savevm_state_setup', 'savevm_state_complete_precopy', 'qmp_enter_stop', 'qmp_exit_stop', 'qmp_enter_cont', 'qmp_exit_cont']);

/** The pauses of one trace file. */
export function pausesOf(file: string, text: string): Pause[] {
  const out: Pause[] = [];
  let cur: Pause | undefined;
  for (const line of text.split('\n')) {
    const m = LINE.exec(line);
    if (!m) continue;
    const [, , s, us, ev, args = ''] = m;
    const t = Number(s) * 1000 + Number(us) / 1000;
    const at = (): number => t - (cur as Pause).startMs;
    if (ev === 'runstate_set') {
      const st = /\((\S+)\) new_state \d+ \((\S+)\)/.exec(args);
      if (!st) continue;
      const [, from, to] = st;
      if (from === 'running' && to !== 'running') cur = { file, startMs: t, pauseMs: 0, steps: [] };
      else if (cur && to === 'running') {
        cur.pauseMs = at();
        out.push(cur);
        cur = undefined;
      } else if (cur) cur.steps.push([at(), `state ${to}`]);
      continue;
    }
    if (!cur) continue;
    if (ev === 'handle_qmp_command') cur.steps.push([at(), `cmd ${/"execute": "([^"]+)"/.exec(args)?.[1] ?? '?'}`]);
    else if (ev === 'monitor_qmp_respond' && /"(return|error)"/.test(args)) cur.steps.push([at(), args.includes('"error"') ? 'reply (error)' : 'reply']);
    else if (ev === 'vm_stop_flush_all') cur.steps.push([at(), 'flush_all']);
    else if (ev === 'migrate_set_state') cur.steps.push([at(), `mig ${args.split(' ').pop() ?? '?'}`]);
    else if (KEPT.has(ev as string)) cur.steps.push([at(), ev as string]);
  }
  return out;
}

const first = (p: Pause, what: string): number | undefined => p.steps.find(([, s]) => s === what)?.[0];

const MARKS: [string, string][] = [
  ['qmp_exit_stop', 'stop done'],
  ['cmd blockdev-snapshot', 'blockdev-snapshot handled'],
  ['cmd migrate', 'migrate handled'],
  ['mig setup', 'migration setup'],
  ['mig active', 'migration active'],
  ['mig completed', 'migration completed'],
  ['cmd cont', 'cont handled'],
];

function main(): void {
  const args = process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) helpExit(USAGE);
  let dir: string | undefined;
  let kind = 'tracked';
  let longest = 3;
  let json = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--kind') kind = args[++i] ?? '';
    else if (a === '--longest') longest = Number(args[++i]);
    else if (a === '--json') json = true;
    else if (a.startsWith('-')) usageExit('qemu-trace-pauses', USAGE, `unknown option ${a}`);
    else dir = a;
  }
  if (!dir) usageExit('qemu-trace-pauses', USAGE, 'DIR (the VNSNAP_QEMU_TRACE_DIR of a run) is required');
  if (kind !== 'tracked' && kind !== 'all') usageExit('qemu-trace-pauses', USAGE, '--kind is tracked or all');
  if (!Number.isInteger(longest) || longest < 0) usageExit('qemu-trace-pauses', USAGE, '--longest needs a whole number ≥ 0');
  let files: string[];
  try {
    files = fs.readdirSync(dir).filter((f) => f.endsWith('.trace'));
  } catch (e) {
    usageExit('qemu-trace-pauses', USAGE, `cannot read ${dir}: ${(e as Error).message}`);
  }
  const all = files.flatMap((f) => pausesOf(f, fs.readFileSync(path.join(dir as string, f), 'utf8')));
  const pauses = kind === 'all' ? all : all.filter((p) => first(p, 'cmd blockdev-snapshot') !== undefined);
  const marks = Object.fromEntries(
    MARKS.map(([k, label]) => {
      const xs = pauses.map((p) => first(p, k)).filter((x): x is number => x !== undefined);
      return [label, xs.length ? { ...stats(xs), n: xs.length } : null];
    }),
  );
  const summary = { files: files.length, pauses: pauses.length, pause_ms: pauses.length ? stats(pauses.map((p) => p.pauseMs)) : null, from_pause_start_ms: marks };
  if (json) {
    process.stdout.write(JSON.stringify(summary) + '\n');
    return;
  }
  const r = (x: number): string => x.toFixed(1);
  const lines = [`${pauses.length} pauses (${kind}) in ${files.length} trace files; ms from each pause's start, median / p95 / max:`];
  if (summary.pause_ms) lines.push(`  ${'pause'.padEnd(26)} ${r(summary.pause_ms.median)} / ${r(summary.pause_ms.p95)} / ${r(summary.pause_ms.max)}`);
  for (const [label, s] of Object.entries(marks)) if (s) lines.push(`  ${label.padEnd(26)} ${r(s.median)} / ${r(s.p95)} / ${r(s.max)}  (${s.n})`);
  for (const p of [...pauses].sort((a, b) => b.pauseMs - a.pauseMs).slice(0, longest)) {
    lines.push('', `  ${p.file} ${r(p.pauseMs)} ms:`, `    ${p.steps.map(([t, s]) => `${s} ${r(t)}`).join(', ')}`);
  }
  process.stdout.write(lines.join('\n') + '\n');
}

if (require.main === module) main();
