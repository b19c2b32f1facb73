/**
 * The catalog's schema, as the ordered list of migrations that build it (catalog.ts applies
 * them): migration N takes a catalog from schema version N-1 to N. A migration is never edited
 * once released; a change is a new one at the end, and CATALOG_SCHEMA_VERSION follows.
 */
export const MIGRATIONS: readonly string[] = [
  // 1: the first schema.
  `
  CREATE TABLE vnes (
    name TEXT PRIMARY KEY,
    vni INTEGER NOT NULL,
    vms TEXT NOT NULL,                 -- JSON: VmSpec[] (protobuf JSON, camelCase)
    generation INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    state TEXT NOT NULL,               -- VneState name
    placement TEXT NOT NULL,           -- JSON: { vm: agent id }
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL
  );
  CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    version TEXT NOT NULL,
    tunnel_address TEXT NOT NULL,
    tunnel_port INTEGER NOT NULL,
    drivers TEXT NOT NULL,             -- JSON: string[]
    connected_unix_ms INTEGER NOT NULL,
    last_seen_unix_ms INTEGER NOT NULL
  );
  CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    vne TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    store_prefix TEXT NOT NULL,
    agents TEXT NOT NULL,              -- JSON: agent ids that took part
    vne_definition TEXT NOT NULL,      -- JSON: the Vne at the cut
    manifest_path TEXT NOT NULL DEFAULT '',
    artefacts TEXT NOT NULL DEFAULT '[]',
    size_bytes INTEGER NOT NULL DEFAULT 0,
    lost_frames INTEGER NOT NULL DEFAULT 0,
    created_unix_ms INTEGER NOT NULL,
    committing_unix_ms INTEGER NOT NULL DEFAULT 0,
    persisting_unix_ms INTEGER NOT NULL DEFAULT 0,
    completed_unix_ms INTEGER NOT NULL DEFAULT 0
  );
  CREATE INDEX snapshots_vne ON snapshots (vne, epoch);
  CREATE TABLE snapshot_vms (
    snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    vm TEXT NOT NULL,
    host TEXT NOT NULL,
    pause_ms REAL NOT NULL,
    cut_unix_us INTEGER NOT NULL,
    memory_bytes INTEGER NOT NULL,
    disk_bytes INTEGER NOT NULL,
    channel_frames INTEGER NOT NULL,
    PRIMARY KEY (snapshot_id, vm)
  );
  CREATE TABLE snapshot_vm_phases (
    snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    vm TEXT NOT NULL,
    seq INTEGER NOT NULL,
    phase TEXT NOT NULL,
    start_unix_us INTEGER NOT NULL,
    end_unix_us INTEGER NOT NULL,
    PRIMARY KEY (snapshot_id, vm, seq)
  );
  CREATE TABLE restores (
    id TEXT PRIMARY KEY,
    snapshot_id TEXT NOT NULL,
    vne TEXT NOT NULL,
    generation INTEGER NOT NULL,
    placement TEXT NOT NULL,           -- JSON: { vm: agent id }
    state TEXT NOT NULL,               -- RUNNING | COMPLETE | FAILED
    error TEXT NOT NULL DEFAULT '',
    created_unix_ms INTEGER NOT NULL,
    completed_unix_ms INTEGER NOT NULL DEFAULT 0
  );
  CREATE TABLE pending_aborts (
    snapshot_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    vne TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    store_prefix TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (snapshot_id, agent_id)
  );
  `,
  // 2: instances fenced by a restore that replaced a lost host; why a VNE is DEGRADED or FAILED.
  `
  ALTER TABLE vnes ADD COLUMN state_reason TEXT NOT NULL DEFAULT '';
  CREATE TABLE fenced_vms (
    vne TEXT NOT NULL,
    vm TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    generation INTEGER NOT NULL,       -- the generation the fenced instance ran under
    fenced_unix_ms INTEGER NOT NULL,
    stopped_unix_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (vne, vm, agent_id, generation)
  );
  `,
  // 3: where each VM's disk is: the running instance's (kept_unix_ms 0) or the one a stop kept.
  `
  CREATE TABLE vm_disks (
    vne TEXT NOT NULL,
    vm TEXT NOT NULL,
    host TEXT NOT NULL,                -- agent id
    path TEXT NOT NULL,                -- the disk directory on that host
    bytes INTEGER NOT NULL DEFAULT 0,
    kept_unix_ms INTEGER NOT NULL DEFAULT 0,  -- when a stop kept it; 0: the running VM's disk
    PRIMARY KEY (vne, vm)
  );
  `,
  // 4: snapshot schedules (one per VNE) and which snapshots a schedule took (only those are pruned).
  `
  CREATE TABLE schedules (
    vne TEXT PRIMARY KEY,
    every_ms INTEGER NOT NULL,
    keep_last INTEGER NOT NULL,
    keep_hourly INTEGER NOT NULL,
    keep_daily INTEGER NOT NULL,
    mode TEXT NOT NULL,                -- SnapshotMode name
    next_due_unix_ms INTEGER NOT NULL,
    last_run_unix_ms INTEGER NOT NULL DEFAULT 0,
    last_result TEXT NOT NULL DEFAULT '',
    last_snapshot_id TEXT NOT NULL DEFAULT '',
    created_unix_ms INTEGER NOT NULL
  );
  CREATE TABLE scheduled_snapshots (
    snapshot_id TEXT PRIMARY KEY REFERENCES snapshots (id) ON DELETE CASCADE,
    vne TEXT NOT NULL
  );
  `,
  // 5: the bytes each snapshot added to the store (NULL: taken before it was recorded) and the
  // result of its last verify (0: never verified; the problems as a JSON list, [] when ok).
  `
  ALTER TABLE snapshots ADD COLUMN stored_bytes INTEGER;
  ALTER TABLE snapshots ADD COLUMN verified_unix_ms INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE snapshots ADD COLUMN verify_problems TEXT NOT NULL DEFAULT '[]';
  `,
];

export const CATALOG_SCHEMA_VERSION = MIGRATIONS.length;
