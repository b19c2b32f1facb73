/**
 * `vnsnap schedule set|list|show|delete`: the commander definitions, the checks a person gets
 * before anything is sent (--every as 90s/15m/1h/2h30m/1d, at least 1m; keep counts whole
 * numbers; at least one keep rule above 0), the calls and their human output. The coordinator
 * checks the same again (scheduler-rpc.ts) for every other client.
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { Schedule__Output } from '../../proto/gen/vnsnap/v1/Schedule';
import { formatInterval, MIN_EVERY_MS, parseInterval } from '../scheduler-interval';
import { callAndPrint, type Ctx } from './commands';
import { CliError, EXIT, type ExitCode } from './exit-codes';
import { formatTime, shortEnum, table } from './format';

export interface ScheduleOptions {
  every: number;
  keepLast: number;
  keepHourly: number;
  keepDaily: number;
  mode: 'precopy' | 'background';
}

function every(v: string): number {
  const ms = parseInterval(v);
  if (ms === undefined) throw new InvalidArgumentError(`--every expects an interval such as 90s, 15m, 1h, 2h30m or 1d, got "${v}"`);
  if (ms < MIN_EVERY_MS) throw new InvalidArgumentError(`--every must be at least ${formatInterval(MIN_EVERY_MS)}, got ${v}`);
  return ms;
}

function count(flag: string): (v: string) => number {
  return (v) => {
    if (!/^\d+$/.test(v) || Number(v) > 0xffff_ffff) throw new InvalidArgumentError(`${flag} expects a whole number ≥ 0, got "${v}"`);
    return Number(v);
  };
}

/** "last 24, hourly 24, daily 7" (the rules above 0). */
export function keepPolicy(s: Pick<Schedule__Output, 'keepLast' | 'keepHourly' | 'keepDaily'>): string {
  return [['last', s.keepLast], ['hourly', s.keepHourly], ['daily', s.keepDaily]]
    .filter(([, n]) => Number(n) > 0)
    .map(([w, n]) => `${w} ${n}`)
    .join(', ');
}

const modeWord = (m: string): string => (m === 'SNAPSHOT_MODE_UNSPECIFIED' ? 'precopy' : shortEnum(m).toLowerCase());

export function renderScheduleList(list: readonly Schedule__Output[]): string {
  if (list.length === 0) return 'no schedules\n';
  return table(
    ['VNE', 'EVERY', 'KEEP', 'MODE', 'NEXT', 'LAST RESULT'],
    list.map((s) => [s.vne, formatInterval(Number(s.everyMs)), keepPolicy(s), modeWord(s.mode), formatTime(Number(s.nextDueUnixMs)), s.lastResult || '-']),
  );
}

export function renderSchedule(s: Schedule__Output): string {
  return table(
    ['FIELD', 'VALUE'],
    [
      ['vne', s.vne],
      ['every', formatInterval(Number(s.everyMs))],
      ['keep', keepPolicy(s)],
      ['mode', modeWord(s.mode)],
      ['next due', formatTime(Number(s.nextDueUnixMs))],
      ['last run', formatTime(Number(s.lastRunUnixMs))],
      ['last result', s.lastResult || '-'],
      ['last snapshot', s.lastSnapshotId || '-'],
    ],
  ).replace(/^FIELD.*\n/, '');
}

export async function scheduleSet(ctx: Ctx, vne: string, o: ScheduleOptions): Promise<ExitCode> {
  if (o.keepLast + o.keepHourly + o.keepDaily === 0) throw new CliError(EXIT.USAGE, 'at least one of --keep-last, --keep-hourly, --keep-daily must be above 0 (a schedule keeping nothing would delete every snapshot it takes)');
  const req = { vne, everyMs: o.every, keepLast: o.keepLast, keepHourly: o.keepHourly, keepDaily: o.keepDaily, mode: o.mode === 'background' ? ('SNAPSHOT_MODE_BACKGROUND' as const) : ('SNAPSHOT_MODE_PRECOPY' as const) };
  return callAndPrint(ctx, (c) => c.setSchedule(req), 'vnsnap.v1.Schedule', (s) => `VNE ${s.vne}: a ${modeWord(s.mode)} snapshot every ${formatInterval(Number(s.everyMs))}, keep ${keepPolicy(s)}; next at ${formatTime(Number(s.nextDueUnixMs))}\n`);
}

/** Register the `schedule` commands: `group` makes the command group, `leaf` adds the common options. */
export function addScheduleCommands(
  group: (name: string, description: string) => Command,
  leaf: (parent: Command, name: string, description: string) => Command,
  example: (text: string) => string,
  run: (work: (ctx: Ctx) => Promise<ExitCode>, opts: object) => Promise<void>,
): void {
  const schedule = group('schedule', 'take snapshots of a VNE on a schedule and prune the old ones');
  leaf(schedule, 'set', "create or replace a VNE's schedule: a snapshot every interval, then delete the schedule's snapshots no keep rule keeps")
    .argument('<VNE>', 'the VNE to snapshot')
    .requiredOption('--every <INTERVAL>', 'the interval: 90s, 15m, 1h, 2h30m, 1d (at least 1m)', every)
    .option('--keep-last <N>', 'keep the N newest', count('--keep-last'), 0)
    .option('--keep-hourly <N>', 'keep the newest of each of the last N hours (UTC) that have one', count('--keep-hourly'), 0)
    .option('--keep-daily <N>', 'keep the newest of each of the last N days (UTC) that have one', count('--keep-daily'), 0)
    .addOption(new Option('--mode <mode>', 'as for snapshot create').choices(['precopy', 'background']).default('precopy'))
    .addHelpText(
      'after',
      '\nA snapshot kept by any rule stays. Only snapshots the schedule took are ever deleted, never\nthose of vnsnap snapshot create. A run the VNE cannot take (busy, stopped, DEGRADED) is skipped\nand its reason shown by schedule show.\n' +
        example('$ vnsnap schedule set blue --every 1h --keep-last 24 --keep-daily 7'),
    )
    .action((vne: string, o: ScheduleOptions) => run((ctx) => scheduleSet(ctx, vne, o), o));
  leaf(schedule, 'list', 'list the schedules with their next run and last result')
    .addHelpText('after', example('$ vnsnap schedule list'))
    .action((o: object) => run((ctx) => callAndPrint(ctx, (c) => c.listSchedules(), 'vnsnap.v1.ListSchedulesResponse', (r) => renderScheduleList(r.schedules)), o));
  leaf(schedule, 'show', "show a VNE's schedule: policy, next run, last run and its result")
    .argument('<VNE>', 'the VNE')
    .addHelpText('after', example('$ vnsnap schedule show blue'))
    .action((vne: string, o: object) => run((ctx) => callAndPrint(ctx, (c) => c.getSchedule(vne), 'vnsnap.v1.Schedule', renderSchedule), o));
  leaf(schedule, 'delete', "delete a VNE's schedule (the snapshots it took stay)")
    .argument('<VNE>', 'the VNE')
    .addHelpText('after', example('$ vnsnap schedule delete blue\ndeleted the schedule of VNE blue'))
    .action((vne: string, o: object) => run((ctx) => callAndPrint(ctx, (c) => c.deleteSchedule(vne), 'vnsnap.v1.DeleteScheduleResponse', () => `deleted the schedule of VNE ${vne}\n`), o));
}
