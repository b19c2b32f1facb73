/**
 * `vnsnap migrate VNE (--place VM=HOST ... | --to HOST)`: live migration of running VMs to other
 * hosts (MigrateVne, docs/migration.md) — the commander definition, the call, its progress (the
 * snapshot and restore renderers: per VM PHASE_DISK_SYNC, PHASE_MIGRATE, PHASE_SWITCHOVER) and
 * the summary (per VM where it went and its downtime). --json: one proto3 JSON line per event.
 * Exit codes as restore's (exit-codes.ts): 0 done, 1 refused or failed (the stream's error says
 * which VMs moved and which run on where they were), 6 the connection was lost mid-way.
 */
import type { Command } from 'commander';
import type { MigrationResult__Output } from '../../proto/gen/vnsnap/v1/MigrationResult';
import type { SnapshotEvent__Output } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import { followOperation, withClient, type Ctx } from './commands';
import { CliError, EXIT, type ExitCode } from './exit-codes';
import { formatBytes, formatMs, table } from './format';

export interface MigrateOptions {
  placement: Record<string, string>;
  to?: string;
  timeoutMs?: number;
}

/** The summary of a migration for a person: one row per VM. */
export function renderMigration(r: MigrationResult__Output): string {
  const rows = r.vms.map((v) => [v.vm, v.fromAgent, v.toAgent, formatMs(Number(v.downtimeMs)), formatMs(Number(v.totalMs)), formatBytes(Number(v.diskBytes)), formatBytes(Number(v.memoryBytes))]);
  return `migrated ${r.vms.length} VM${r.vms.length === 1 ? '' : 's'} of VNE ${r.vne} in ${formatMs(Number(r.totalMs))}\n` + table(['VM', 'FROM', 'TO', 'DOWNTIME', 'TOTAL', 'DISK', 'MEMORY'], rows);
}

export async function migrate(ctx: Ctx, vne: string, o: MigrateOptions): Promise<ExitCode> {
  if (!o.to && Object.keys(o.placement).length === 0) throw new CliError(EXIT.USAGE, 'say where the VMs go: --place VM=HOST (repeatable) or --to HOST', 'ERR_INVALID_ARGUMENT');
  return withClient(ctx, async (c) => {
    const stream = c.migrateVne({ vne, placement: o.placement, to: o.to ?? '', timeoutMs: o.timeoutMs ?? 0 });
    let result: MigrationResult__Output | undefined;
    stream.on('data', (e: SnapshotEvent__Output) => {
      if (e.migrated) result = e.migrated;
    });
    await followOperation(ctx, c, stream, `migration of VNE ${vne}`, () => `vnsnap vne show ${vne}, or vnsnap events --vne ${vne}`);
    if (ctx.json) return EXIT.OK;
    if (result) ctx.io.out('\n' + renderMigration(result));
    return EXIT.OK;
  });
}

/** Register `migrate`. */
export function addMigrateCommand(
  program: Command,
  leaf: (parent: Command, name: string, description: string) => Command,
  example: (text: string) => string,
  placement: (v: string, prev: Record<string, string> | undefined) => Record<string, string>,
  uint32: (name: string) => (v: string) => number,
  run: (work: (ctx: Ctx) => Promise<ExitCode>, opts: object) => Promise<void>,
): void {
  leaf(program, 'migrate', 'move running VMs of a VNE to other hosts while they run, their local disks included (live migration)')
    .argument('<VNE>', 'the VNE')
    .option('--place <VM=HOST>', 'move VM to agent HOST (repeatable)', placement)
    .option('--to <HOST>', 'move every VM of the VNE that is not on HOST there')
    .option('--timeout-ms <N>', 'give up unless the migration completes within this (default 600000)', uint32('--timeout-ms'))
    .addHelpText('after', '\nA VM whose migration fails before its switchover runs on where it was.\n' + example('$ vnsnap migrate blue --place vm2=h2\n$ vnsnap migrate blue --to h1'))
    .action((vne: string, o: { place?: Record<string, string>; to?: string; timeoutMs?: number }) =>
      run((ctx) => migrate(ctx, vne, { placement: o.place ?? {}, ...(o.to ? { to: o.to } : {}), ...(o.timeoutMs !== undefined ? { timeoutMs: o.timeoutMs } : {}) }), o),
    );
}
