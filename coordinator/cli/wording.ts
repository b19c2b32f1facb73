/**
 * The coordinator's messages in the CLI's words. The coordinator speaks to every client of its
 * gRPC API, so its messages name request fields (`stop_running`, `timeout_ms`) and RPCs
 * (`DeleteVne`); a person at the CLI never typed those, they typed `--stop-running` and
 * `vnsnap vne delete`. This module rewrites the names a person cannot act on into the flags,
 * arguments and commands they can, and leaves everything else of the message as it is.
 *
 * Guarantees:
 *  - Only request fields a CLI flag or argument sets are rewritten, each by a pattern that
 *    matches the field as the coordinator words it (a whole snake_case word, or a field name at
 *    the start of a bounds message), never a word that merely looks alike. Fields of the VNE
 *    file (`qemu.memory_mib`, ...) stay as they are: the person wrote them in that file.
 *  - RPC names become the command that calls them, with the RPC in parentheses (the role table
 *    of docs/security.md is written in RPC names).
 *  - Pure: text in, text out; client.ts applies it to every message the coordinator sent.
 */

interface Rule {
  /** The request field (or RPC) this rule is about, for tests and docs. */
  field: string;
  pattern: RegExp;
  replacement: string;
}

/** Request fields set by a flag or an argument of a CLI command: field → how the CLI names it. */
export const FIELD_FLAGS: Readonly<Record<string, string>> = {
  stop_running: '--stop-running',
  delete_snapshots: '--with-snapshots',
  timeout_ms: '--timeout-ms',
  precopy_deadline_ms: '--deadline-ms',
  description: '--description',
  snapshot_id: 'the snapshot ID',
  placement: '--place',
  // Flags the issue names for restores with lost hosts and stops that keep disks, should the
  // coordinator's messages name their fields.
  place_lost: '--place-lost',
  discard_disks: '--discard-disks',
  forget_unreachable_disks: '--forget-unreachable-disks',
  // `vnsnap schedule set`
  every_ms: '--every',
  keep_last: '--keep-last',
  keep_hourly: '--keep-hourly',
  keep_daily: '--keep-daily',
  grace_ms: '--grace',
  grace_given: '--grace',
  // `vnsnap migrate`
  to: '--to',
};

/** RPCs of CoordinatorService → the command that calls them. */
export const RPC_COMMANDS: Readonly<Record<string, string>> = {
  DefineVne: 'vnsnap vne define',
  UpdateVne: 'vnsnap vne update',
  DeleteVne: 'vnsnap vne delete',
  ListVnes: 'vnsnap vne list',
  GetVne: 'vnsnap vne show',
  StartVne: 'vnsnap vne start',
  StopVne: 'vnsnap vne stop',
  CreateSnapshot: 'vnsnap snapshot create',
  ListSnapshots: 'vnsnap snapshot list',
  GetSnapshot: 'vnsnap snapshot show',
  DeleteSnapshot: 'vnsnap snapshot delete',
  RestoreSnapshot: 'vnsnap restore',
  MigrateVne: 'vnsnap migrate',
  ListAgents: 'vnsnap agents',
  WatchEvents: 'vnsnap events',
  SetSchedule: 'vnsnap schedule set',
  ListSchedules: 'vnsnap schedule list',
  GetSchedule: 'vnsnap schedule show',
  DeleteSchedule: 'vnsnap schedule delete',
  VerifySnapshot: 'vnsnap snapshot verify',
  GetStoreStats: 'vnsnap store stats',
  CollectGarbage: 'vnsnap store gc',
};

const word = (w: string): RegExp => new RegExp(`(?<![\\w.-])${w}(?![\\w-])`, 'g');

const RULES: readonly Rule[] = [
  // "restore with stop_running to replace its VMs", "pass delete_snapshots", "timeout_ms 9 is out of range"
  // "every_ms must be at least 1m", "at least one of keep_last, keep_hourly, keep_daily must be above 0"
  ...['stop_running', 'delete_snapshots', 'timeout_ms', 'precopy_deadline_ms', 'place_lost', 'discard_disks', 'every_ms', 'keep_last', 'keep_hourly', 'keep_daily', 'grace_ms'].map((f) => ({ field: f, pattern: word(f), replacement: FIELD_FLAGS[f] as string })),
  // "snapshot_id is required", "snapshot_id is 300 characters long"
  { field: 'snapshot_id', pattern: word('snapshot_id'), replacement: 'the snapshot ID' },
  // "description is 5000 characters long; the limit is 1024": a bounds message about the field
  { field: 'description', pattern: /^description(?= is \d+ characters long)/, replacement: '--description' },
  // "to is 300 characters long; the limit is 128" (MigrateVne)
  { field: 'to', pattern: /^to(?= is \d+ characters long)/, replacement: '--to' },
  // "placement names VM "x", which is not in snapshot ...", "placement: a VM name is ..."
  { field: 'placement', pattern: /^placement(?= names VM |: a VM name )/, replacement: '--place' },
  // "permission denied: DeleteVne needs the operator role (...)"
  ...Object.entries(RPC_COMMANDS).map(([rpc, command]) => ({ field: rpc, pattern: new RegExp(`(?<=^|: )${rpc}(?= needs the )`), replacement: `${command} (${rpc})` })),
];

/** The coordinator's message with request fields and RPCs named as the CLI names them. */
export function inCliTerms(message: string): string {
  return RULES.reduce((m, r) => m.replace(r.pattern, r.replacement), message);
}
