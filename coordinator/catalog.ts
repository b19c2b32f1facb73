/**
 * The coordinator's catalog: one SQLite file (better-sqlite3, WAL, synchronous=NORMAL) holding
 * VNE definitions and their live state, the agents ever seen, snapshots with per-VM and
 * per-phase timings, restores, and the agent-side aborts still owed.
 *
 * Schema: versioned by the `schema_migrations` table (the migrations: catalog-schema.ts); `open`
 * applies the migrations this release knows in one transaction each and refuses a file written
 * by a newer schema.
 *
 * Schedules: `schedules` and `scheduled_snapshots` (scheduler-store.ts); a VNE's schedule goes
 * with the VNE.
 *
 * Store accounting (migration 5): per snapshot the bytes it added to the store (the sum of its
 * artefacts' stored_bytes; NULL for older rows: Snapshot.stored_bytes_known false) and the result
 * of its last verify (time, problems; store-ops.ts writes it with setVerified).
 *
 * Disks: `vm_disks` records per VM where its writable disk is (host, path; bytes and the time
 * when a stop kept it): vm-disks.ts reads and writes it. The rows of a VNE go with the VNE.
 *
 * Restart safety (`open`): a snapshot found in PRECOPY, COMMITTING or PERSISTING belonged to a
 * coordinator that died mid-way. It becomes ABORTED ("coordinator restarted"), its VNE's epoch
 * advances to the snapshot's (agents abort it locally and advance their ports) and a pending
 * abort is queued for every agent of that VNE; the agent registry delivers them when each agent
 * registers and deletes the row once the agent acknowledged. A restore found running becomes
 * FAILED and its VNE FAILED (what runs on the agents is unknown; stop or restore it again).
 *
 * Fencing: `fenced_vms` records each VM instance a restore left behind on an unreachable host
 * (VNE, VM, agent, the generation it ran under). Such an instance never runs again: when its
 * agent registers again it is told to stop it, and the row is marked stopped. The rows of a VNE
 * go with the VNE.
 *
 * The catalog is synchronous (better-sqlite3): a check followed by a write in one event-loop
 * turn cannot interleave with another request, which is how "one snapshot per VNE" is kept.
 *
 * Durability (catalog-durability.ts): a commit writes the WAL into the page cache and never
 * fsyncs on the event loop (synchronous=NORMAL, no autocheckpoint); `durable()` resolves once
 * everything committed before it is on stable storage (an fsync on the threadpool), and
 * checkpoints run in a worker thread. A kill -9 loses no committed transaction; what must
 * survive a power loss (a snapshot reported COMPLETE, a snapshot's record before its commit)
 * awaits `durable()`.
 */
import Database from 'better-sqlite3';
import { VnsnapError } from '../proto/core/errors';
import { MIGRATIONS } from './catalog-schema';
import { CatalogDurability } from './catalog-durability';
import { VmDisks } from './vm-disks';
import { ScheduleStore } from './scheduler-store';
import type { Artefact__Output } from '../proto/gen/vnsnap/v1/Artefact';
import type { Agent__Output } from '../proto/gen/vnsnap/v1/Agent';
import type { FencedVm__Output } from '../proto/gen/vnsnap/v1/FencedVm';
import type { PhaseTiming__Output } from '../proto/gen/vnsnap/v1/PhaseTiming';
import type { Snapshot__Output } from '../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotMode__Output } from '../proto/gen/vnsnap/v1/SnapshotMode';
import type { SnapshotState__Output } from '../proto/gen/vnsnap/v1/SnapshotState';
import type { VmSnapshot__Output } from '../proto/gen/vnsnap/v1/VmSnapshot';
import type { VmSpec__Output } from '../proto/gen/vnsnap/v1/VmSpec';
import type { Vne__Output } from '../proto/gen/vnsnap/v1/Vne';
import type { VneState__Output } from '../proto/gen/vnsnap/v1/VneState';

/** A VNE as stored: the live fields (vm_status, fenced) are filled on reading. */
export type VneRecord = Omit<Vne__Output, 'vmStatus' | 'fenced' | 'stateReason'>;

export const RESTARTED_ERROR = 'coordinator restarted';

export { CATALOG_SCHEMA_VERSION } from './catalog-schema';

export interface AgentRecord {
  id: string;
  hostname: string;
  version: string;
  tunnelAddress: string;
  tunnelPort: number;
  drivers: string[];
  connectedUnixMs: number;
  lastSeenUnixMs: number;
}

export interface NewSnapshot {
  id: string;
  vne: string;
  epoch: number;
  generation: number;
  mode: SnapshotMode__Output;
  description: string;
  storePrefix: string;
  agents: string[];
  vneDefinition: Vne__Output;
  createdUnixMs: number;
}

/** What the catalog keeps about a snapshot beyond the public record. */
export interface SnapshotInternals {
  storePrefix: string;
  agents: string[];
  vneDefinition: Vne__Output;
  committingUnixMs: number;
  persistingUnixMs: number;
}

export interface CompletedSnapshot {
  completedUnixMs: number;
  manifestPath: string;
  artefacts: Artefact__Output[];
  vms: VmSnapshot__Output[];
  lostFrames: number;
  sizeBytes: number;
}

export interface PendingAbort {
  snapshotId: string;
  agentId: string;
  vne: string;
  epoch: number;
  storePrefix: string;
}

export interface RestoreRecord {
  id: string;
  snapshotId: string;
  vne: string;
  generation: number;
  placement: Record<string, string>;
  state: 'RUNNING' | 'COMPLETE' | 'FAILED';
  error: string;
  createdUnixMs: number;
  completedUnixMs: number;
}

export const IN_PROGRESS_STATES: readonly SnapshotState__Output[] = ['SNAPSHOT_STATE_PRECOPY', 'SNAPSHOT_STATE_COMMITTING', 'SNAPSHOT_STATE_PERSISTING'];

type Row = Record<string, unknown>;

const num = (v: unknown): number => Number(v ?? 0);
const str = (v: unknown): string => (v == null ? '' : String(v));

export interface CatalogOptions {
  now?: () => number;
  /** Checkpoint (in a worker) once the WAL is this large; default DEFAULT_CHECKPOINT_BYTES. */
  checkpointBytes?: number;
  /** Told about a failed background checkpoint or periodic barrier (the next one retries). */
  onCheckpointError?: (message: string) => void;
  /**
   * A barrier this often (ms) when anything was written since the last one, so that no write
   * stays longer than that off stable storage; 0: only the barriers callers await. Default 1000.
   */
  syncIntervalMs?: number;
}

export class Catalog {
  readonly db: Database.Database;
  private readonly now: () => number;
  /** Snapshots aborted by `open` because the previous coordinator died mid-way. */
  readonly recovered: { snapshots: string[]; restores: string[] } = { snapshots: [], restores: [] };
  /** Where each VM's disk is (vm-disks.ts). */
  readonly disks: VmDisks;
  /** Snapshot schedules and the snapshots they took (scheduler-store.ts). */
  readonly schedules: ScheduleStore;
  /** The durability barrier and the background checkpoints. */
  readonly durability: CatalogDurability;
  private syncTimer: NodeJS.Timeout | undefined;

  /** Open (creating if needed) the catalog at `file` (':memory:' for tests), migrate and recover. */
  constructor(file: string, opts: CatalogOptions = {}) {
    this.now = opts.now ?? Date.now;
    try {
      this.db = new Database(file);
    } catch (e) {
      throw new VnsnapError('ERR_CONFIG', `cannot open the catalog ${file}: ${(e as Error).message}`, { cause: e });
    }
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    this.migrate(file);
    this.recover();
    // Opening, migrating and recovering are durable before the coordinator serves anything
    // (FULL: each commit fsyncs; once, at start). From here on no commit fsyncs on the loop.
    this.db.pragma('wal_checkpoint(FULL)');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('wal_autocheckpoint = 0');
    this.durability = new CatalogDurability(file, {
      ...(opts.checkpointBytes !== undefined ? { checkpointBytes: opts.checkpointBytes } : {}),
      ...(opts.onCheckpointError ? { onCheckpointError: opts.onCheckpointError } : {}),
    });
    const every = opts.syncIntervalMs ?? 1000;
    if (every > 0 && !this.durability.inMemory) {
      const changes = this.db.prepare('SELECT total_changes() AS n').pluck();
      let synced = -1;
      this.syncTimer = setInterval(() => {
        const n = Number(changes.get());
        if (n === synced) return;
        synced = n;
        this.durable().catch((e: unknown) => opts.onCheckpointError?.((e as Error).message));
      }, every);
      this.syncTimer.unref();
    }
    this.disks = new VmDisks(this.db);
    this.schedules = new ScheduleStore(this.db);
  }

  close(): void {
    clearInterval(this.syncTimer);
    void this.durability.close();
    if (this.db.open) this.db.close();
  }

  /**
   * Resolves once every transaction committed before the call is on stable storage (an fsync
   * off the event loop; concurrent callers share one). Rejects with ERR_DATA_LOSS when the
   * fsync fails. Await it before reporting anything durable or relying on it after a restart.
   */
  durable(): Promise<void> {
    return this.durability.barrier();
  }

  /** An in-memory catalog (tests): nothing survives the process, durable() has nothing to wait for. */
  get volatile(): boolean {
    return this.durability.inMemory;
  }

  /** Run fn in one transaction. */
  tx<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  get schemaVersion(): number {
    return num((this.db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as Row).v);
  }

  private migrate(file: string): void {
    this.db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_unix_ms INTEGER NOT NULL)');
    const have = this.schemaVersion;
    if (have > MIGRATIONS.length) {
      throw new VnsnapError('ERR_UNSUPPORTED_VERSION', `catalog ${file} has schema version ${have}, newer than this coordinator knows (${MIGRATIONS.length}): upgrade vnsnap`);
    }
    for (let v = have + 1; v <= MIGRATIONS.length; v++) {
      this.tx(() => {
        this.db.exec(MIGRATIONS[v - 1] as string);
        this.db.prepare('INSERT INTO schema_migrations (version, applied_unix_ms) VALUES (?, ?)').run(v, this.now());
      });
    }
  }

  private recover(): void {
    const now = this.now();
    this.tx(() => {
      const inFlight = this.db.prepare(`SELECT id, vne, epoch, store_prefix, agents FROM snapshots WHERE state IN (${IN_PROGRESS_STATES.map(() => '?').join(',')})`).all(...IN_PROGRESS_STATES) as Row[];
      for (const r of inFlight) {
        const id = str(r.id);
        const vneName = str(r.vne);
        const epoch = num(r.epoch);
        this.db.prepare("UPDATE snapshots SET state = 'SNAPSHOT_STATE_ABORTED', error = ?, completed_unix_ms = ? WHERE id = ?").run(RESTARTED_ERROR, now, id);
        const agents = new Set<string>(JSON.parse(str(r.agents)) as string[]);
        const vne = this.getVne(vneName);
        if (vne) {
          for (const a of Object.values(vne.placement)) agents.add(a);
          this.updateVne(vneName, { epoch: Math.max(vne.epoch, epoch), state: vne.state === 'VNE_STATE_SNAPSHOTTING' ? 'VNE_STATE_RUNNING' : vne.state });
        }
        this.addPendingAborts([...agents].map((agentId) => ({ snapshotId: id, agentId, vne: vneName, epoch, storePrefix: str(r.store_prefix) })));
        this.recovered.snapshots.push(id);
      }
      for (const r of this.db.prepare("SELECT id, vne FROM restores WHERE state = 'RUNNING'").all() as Row[]) {
        this.finishRestore(str(r.id), 'FAILED', RESTARTED_ERROR);
        const vne = this.getVne(str(r.vne));
        if (vne && vne.state === 'VNE_STATE_RESTORING') this.updateVne(vne.name, { state: 'VNE_STATE_FAILED', stateReason: `the coordinator restarted during restore ${str(r.id)}: what runs on the agents is unknown; stop the VNE or restore again` });
        this.recovered.restores.push(str(r.id));
      }
      // A VNE left SNAPSHOTTING without a snapshot in flight (should not happen) is running.
      this.db.prepare("UPDATE vnes SET state = 'VNE_STATE_RUNNING' WHERE state = 'VNE_STATE_SNAPSHOTTING'").run();
      this.db.prepare("UPDATE vnes SET state = 'VNE_STATE_FAILED' WHERE state = 'VNE_STATE_RESTORING'").run();
    });
  }

  // ---- VNEs -------------------------------------------------------------------------------

  private vneFromRow(r: Row): Vne__Output {
    return {
      name: str(r.name),
      vni: num(r.vni),
      vms: JSON.parse(str(r.vms)) as VmSpec__Output[],
      generation: num(r.generation),
      epoch: num(r.epoch),
      state: str(r.state) as VneState__Output,
      createdUnixMs: num(r.created_unix_ms),
      updatedUnixMs: num(r.updated_unix_ms),
      placement: JSON.parse(str(r.placement)) as Record<string, string>,
      vmStatus: [],
      fenced: this.fencedOf(str(r.name)),
      stateReason: str(r.state_reason),
    };
  }

  getVne(name: string): Vne__Output | undefined {
    const r = this.db.prepare('SELECT * FROM vnes WHERE name = ?').get(name) as Row | undefined;
    return r ? this.vneFromRow(r) : undefined;
  }

  listVnes(): Vne__Output[] {
    return (this.db.prepare('SELECT * FROM vnes ORDER BY name').all() as Row[]).map((r) => this.vneFromRow(r));
  }

  vneByVni(vni: number): Vne__Output | undefined {
    const r = this.db.prepare('SELECT * FROM vnes WHERE vni = ?').get(vni) as Row | undefined;
    return r ? this.vneFromRow(r) : undefined;
  }

  insertVne(v: VneRecord): void {
    this.db
      .prepare('INSERT INTO vnes (name, vni, vms, generation, epoch, state, placement, created_unix_ms, updated_unix_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')
      .run(v.name, v.vni, JSON.stringify(v.vms), v.generation, v.epoch, v.state, JSON.stringify(v.placement), v.createdUnixMs, v.updatedUnixMs);
  }

  /** A change of state without a stateReason clears the reason. */
  updateVne(name: string, patch: Partial<Pick<Vne__Output, 'vni' | 'vms' | 'generation' | 'epoch' | 'state' | 'placement' | 'stateReason'>>): Vne__Output {
    const cur = this.getVne(name);
    if (!cur) throw new VnsnapError('ERR_NOT_FOUND', `VNE "${name}" does not exist`);
    const stateReason = patch.stateReason ?? (patch.state !== undefined && patch.state !== cur.state ? '' : cur.stateReason);
    const v = { ...cur, ...patch, stateReason, updatedUnixMs: this.now() };
    this.db
      .prepare('UPDATE vnes SET vni = ?, vms = ?, generation = ?, epoch = ?, state = ?, placement = ?, state_reason = ?, updated_unix_ms = ? WHERE name = ?')
      .run(v.vni, JSON.stringify(v.vms), v.generation, v.epoch, v.state, JSON.stringify(v.placement), v.stateReason, v.updatedUnixMs, name);
    return v;
  }

  deleteVne(name: string): void {
    this.db.prepare('DELETE FROM vnes WHERE name = ?').run(name);
    this.db.prepare('DELETE FROM fenced_vms WHERE vne = ?').run(name);
    this.disks.forget(name);
    this.schedules.delete(name);
  }

  // ---- fenced instances -------------------------------------------------------------------

  /** Record instances as fenced (idempotent). */
  addFenced(vne: string, rows: readonly { vm: string; agent: string; generation: number }[]): void {
    const ins = this.db.prepare('INSERT OR IGNORE INTO fenced_vms (vne, vm, agent_id, generation, fenced_unix_ms) VALUES (?, ?, ?, ?, ?)');
    const now = this.now();
    this.tx(() => {
      for (const f of rows) ins.run(vne, f.vm, f.agent, f.generation, now);
    });
  }

  fencedOf(vne: string): FencedVm__Output[] {
    const rows = this.db.prepare('SELECT * FROM fenced_vms WHERE vne = ? ORDER BY fenced_unix_ms, vm, agent_id').all(vne) as Row[];
    return rows.map((r) => ({ vm: str(r.vm), agent: str(r.agent_id), generation: num(r.generation), fencedUnixMs: num(r.fenced_unix_ms), stopped: num(r.stopped_unix_ms) > 0 }));
  }

  /** The agent stopped its fenced instances of this VM. */
  markFencedStopped(vne: string, vm: string, agent: string): void {
    this.db.prepare('UPDATE fenced_vms SET stopped_unix_ms = ? WHERE vne = ? AND vm = ? AND agent_id = ? AND stopped_unix_ms = 0').run(this.now(), vne, vm, agent);
  }

  // ---- agents -----------------------------------------------------------------------------

  private agentFromRow(r: Row): AgentRecord {
    return {
      id: str(r.id),
      hostname: str(r.hostname),
      version: str(r.version),
      tunnelAddress: str(r.tunnel_address),
      tunnelPort: num(r.tunnel_port),
      drivers: JSON.parse(str(r.drivers)) as string[],
      connectedUnixMs: num(r.connected_unix_ms),
      lastSeenUnixMs: num(r.last_seen_unix_ms),
    };
  }

  upsertAgent(a: AgentRecord): void {
    this.db
      .prepare(
        `INSERT INTO agents (id, hostname, version, tunnel_address, tunnel_port, drivers, connected_unix_ms, last_seen_unix_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, version = excluded.version, tunnel_address = excluded.tunnel_address,
           tunnel_port = excluded.tunnel_port, drivers = excluded.drivers, connected_unix_ms = excluded.connected_unix_ms, last_seen_unix_ms = excluded.last_seen_unix_ms`,
      )
      .run(a.id, a.hostname, a.version, a.tunnelAddress, a.tunnelPort, JSON.stringify(a.drivers), a.connectedUnixMs, a.lastSeenUnixMs);
  }

  touchAgent(id: string, lastSeenUnixMs: number): void {
    this.db.prepare('UPDATE agents SET last_seen_unix_ms = ? WHERE id = ?').run(lastSeenUnixMs, id);
  }

  getAgent(id: string): AgentRecord | undefined {
    const r = this.db.prepare('SELECT * FROM agents WHERE id = ?').get(id) as Row | undefined;
    return r ? this.agentFromRow(r) : undefined;
  }

  listAgents(): AgentRecord[] {
    return (this.db.prepare('SELECT * FROM agents ORDER BY id').all() as Row[]).map((r) => this.agentFromRow(r));
  }

  // ---- snapshots --------------------------------------------------------------------------

  insertSnapshot(s: NewSnapshot): void {
    this.db
      .prepare(
        `INSERT INTO snapshots (id, vne, epoch, generation, mode, state, description, store_prefix, agents, vne_definition, created_unix_ms)
         VALUES (?, ?, ?, ?, ?, 'SNAPSHOT_STATE_PRECOPY', ?, ?, ?, ?, ?)`,
      )
      .run(s.id, s.vne, s.epoch, s.generation, s.mode, s.description, s.storePrefix, JSON.stringify(s.agents), JSON.stringify(s.vneDefinition), s.createdUnixMs);
  }

  /** Record a transition of an in-progress snapshot (COMMITTING / PERSISTING) with its instant. */
  setSnapshotPhase(id: string, state: 'SNAPSHOT_STATE_COMMITTING' | 'SNAPSHOT_STATE_PERSISTING', atUnixMs: number): void {
    const col = state === 'SNAPSHOT_STATE_COMMITTING' ? 'committing_unix_ms' : 'persisting_unix_ms';
    this.db.prepare(`UPDATE snapshots SET state = ?, ${col} = ? WHERE id = ?`).run(state, atUnixMs, id);
  }

  /** Per-VM results so far (after commit: pause and cut; after persist: sizes and every phase). */
  putSnapshotVms(id: string, vms: readonly VmSnapshot__Output[]): void {
    const delVm = this.db.prepare('DELETE FROM snapshot_vms WHERE snapshot_id = ? AND vm = ?');
    const delPh = this.db.prepare('DELETE FROM snapshot_vm_phases WHERE snapshot_id = ? AND vm = ?');
    const insVm = this.db.prepare(
      'INSERT INTO snapshot_vms (snapshot_id, vm, host, pause_ms, cut_unix_us, memory_bytes, disk_bytes, channel_frames) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
    );
    const insPh = this.db.prepare('INSERT INTO snapshot_vm_phases (snapshot_id, vm, seq, phase, start_unix_us, end_unix_us) VALUES (?, ?, ?, ?, ?, ?)');
    this.tx(() => {
      for (const v of vms) {
        delPh.run(id, v.name);
        delVm.run(id, v.name);
        insVm.run(id, v.name, v.host, v.pauseMs, v.cutUnixUs, v.memoryBytes, v.diskBytes, v.channelFrames);
        v.phases.forEach((p, i) => insPh.run(id, v.name, i, p.phase, p.startUnixUs, p.endUnixUs));
      }
    });
  }

  completeSnapshot(id: string, c: CompletedSnapshot): void {
    this.tx(() => {
      this.putSnapshotVms(id, c.vms);
      this.db
        .prepare(
          "UPDATE snapshots SET state = 'SNAPSHOT_STATE_COMPLETE', error = '', completed_unix_ms = ?, manifest_path = ?, artefacts = ?, lost_frames = ?, size_bytes = ?, stored_bytes = ? WHERE id = ?",
        )
        .run(c.completedUnixMs, c.manifestPath, JSON.stringify(c.artefacts), c.lostFrames, c.sizeBytes, storedBytesOf(c.artefacts), id);
    });
  }

  /** Record the result of a verify: no problems is ok. */
  setVerified(id: string, atUnixMs: number, problems: readonly string[]): void {
    this.db.prepare('UPDATE snapshots SET verified_unix_ms = ?, verify_problems = ? WHERE id = ?').run(atUnixMs, JSON.stringify(problems), id);
  }

  abortSnapshot(id: string, error: string, atUnixMs: number): void {
    this.db.prepare("UPDATE snapshots SET state = 'SNAPSHOT_STATE_ABORTED', error = ?, completed_unix_ms = ? WHERE id = ?").run(error, atUnixMs, id);
  }

  private snapshotFromRow(r: Row): Snapshot__Output {
    const id = str(r.id);
    const phases = this.db.prepare('SELECT * FROM snapshot_vm_phases WHERE snapshot_id = ? ORDER BY vm, seq').all(id) as Row[];
    const vms = (this.db.prepare('SELECT * FROM snapshot_vms WHERE snapshot_id = ? ORDER BY vm').all(id) as Row[]).map(
      (v): VmSnapshot__Output => ({
        name: str(v.vm),
        host: str(v.host),
        pauseMs: num(v.pause_ms),
        cutUnixUs: num(v.cut_unix_us),
        phases: phases
          .filter((p) => p.vm === v.vm)
          .map((p): PhaseTiming__Output => ({ phase: str(p.phase) as PhaseTiming__Output['phase'], startUnixUs: num(p.start_unix_us), endUnixUs: num(p.end_unix_us) })),
        memoryBytes: num(v.memory_bytes),
        diskBytes: num(v.disk_bytes),
        channelFrames: num(v.channel_frames),
      }),
    );
    return {
      id,
      vne: str(r.vne),
      epoch: num(r.epoch),
      mode: str(r.mode) as SnapshotMode__Output,
      state: str(r.state) as SnapshotState__Output,
      description: str(r.description),
      createdUnixMs: num(r.created_unix_ms),
      completedUnixMs: num(r.completed_unix_ms),
      error: str(r.error),
      vms,
      artefacts: JSON.parse(str(r.artefacts)) as Artefact__Output[],
      manifestPath: str(r.manifest_path),
      sizeBytes: num(r.size_bytes),
      lostFrames: num(r.lost_frames),
      generation: num(r.generation),
      storedBytes: num(r.stored_bytes),
      storedBytesKnown: r.stored_bytes != null,
      verifiedUnixMs: num(r.verified_unix_ms),
      verifyProblems: JSON.parse(str(r.verify_problems) || '[]') as string[],
    };
  }

  getSnapshot(id: string): Snapshot__Output | undefined {
    const r = this.db.prepare('SELECT * FROM snapshots WHERE id = ?').get(id) as Row | undefined;
    return r ? this.snapshotFromRow(r) : undefined;
  }

  snapshotInternals(id: string): SnapshotInternals | undefined {
    const r = this.db.prepare('SELECT store_prefix, agents, vne_definition, committing_unix_ms, persisting_unix_ms FROM snapshots WHERE id = ?').get(id) as Row | undefined;
    if (!r) return undefined;
    return {
      storePrefix: str(r.store_prefix),
      agents: JSON.parse(str(r.agents)) as string[],
      vneDefinition: JSON.parse(str(r.vne_definition)) as Vne__Output,
      committingUnixMs: num(r.committing_unix_ms),
      persistingUnixMs: num(r.persisting_unix_ms),
    };
  }

  /** Snapshots, oldest first (by creation, then epoch). */
  listSnapshots(vne?: string): Snapshot__Output[] {
    const rows = (vne ? this.db.prepare('SELECT * FROM snapshots WHERE vne = ? ORDER BY created_unix_ms, epoch, id').all(vne) : this.db.prepare('SELECT * FROM snapshots ORDER BY created_unix_ms, epoch, id').all()) as Row[];
    return rows.map((r) => this.snapshotFromRow(r));
  }

  countSnapshots(vne: string): number {
    return num((this.db.prepare('SELECT COUNT(*) AS n FROM snapshots WHERE vne = ?').get(vne) as Row).n);
  }

  deleteSnapshot(id: string): void {
    this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(id);
  }

  // ---- restores ---------------------------------------------------------------------------

  insertRestore(r: Omit<RestoreRecord, 'state' | 'error' | 'completedUnixMs'>): void {
    this.db
      .prepare("INSERT INTO restores (id, snapshot_id, vne, generation, placement, state, created_unix_ms) VALUES (?, ?, ?, ?, ?, 'RUNNING', ?)")
      .run(r.id, r.snapshotId, r.vne, r.generation, JSON.stringify(r.placement), r.createdUnixMs);
  }

  finishRestore(id: string, state: 'COMPLETE' | 'FAILED', error = ''): void {
    this.db.prepare('UPDATE restores SET state = ?, error = ?, completed_unix_ms = ? WHERE id = ?').run(state, error, this.now(), id);
  }

  listRestores(snapshotId?: string): RestoreRecord[] {
    const rows = (snapshotId ? this.db.prepare('SELECT * FROM restores WHERE snapshot_id = ? ORDER BY created_unix_ms, id').all(snapshotId) : this.db.prepare('SELECT * FROM restores ORDER BY created_unix_ms, id').all()) as Row[];
    return rows.map((r) => ({
      id: str(r.id),
      snapshotId: str(r.snapshot_id),
      vne: str(r.vne),
      generation: num(r.generation),
      placement: JSON.parse(str(r.placement)) as Record<string, string>,
      state: str(r.state) as RestoreRecord['state'],
      error: str(r.error),
      createdUnixMs: num(r.created_unix_ms),
      completedUnixMs: num(r.completed_unix_ms),
    }));
  }

  // ---- pending agent-side aborts ----------------------------------------------------------

  addPendingAborts(rows: readonly PendingAbort[]): void {
    const ins = this.db.prepare(
      'INSERT OR IGNORE INTO pending_aborts (snapshot_id, agent_id, vne, epoch, store_prefix, created_unix_ms) VALUES (?, ?, ?, ?, ?, ?)',
    );
    const now = this.now();
    this.tx(() => {
      for (const p of rows) ins.run(p.snapshotId, p.agentId, p.vne, p.epoch, p.storePrefix, now);
    });
  }

  pendingAborts(agentId?: string): PendingAbort[] {
    const rows = (agentId
      ? this.db.prepare('SELECT * FROM pending_aborts WHERE agent_id = ? ORDER BY created_unix_ms, snapshot_id').all(agentId)
      : this.db.prepare('SELECT * FROM pending_aborts ORDER BY agent_id, created_unix_ms, snapshot_id').all()) as Row[];
    return rows.map((r) => ({ snapshotId: str(r.snapshot_id), agentId: str(r.agent_id), vne: str(r.vne), epoch: num(r.epoch), storePrefix: str(r.store_prefix) }));
  }

  removePendingAbort(snapshotId: string, agentId: string): void {
    this.db.prepare('DELETE FROM pending_aborts WHERE snapshot_id = ? AND agent_id = ?').run(snapshotId, agentId);
  }
}

/** The bytes a snapshot added to the store: the sum of its artefacts' stored_bytes. */
export function storedBytesOf(artefacts: readonly Artefact__Output[]): number {
  return artefacts.reduce((n, a) => n + Number(a.storedBytes ?? 0), 0);
}

/** The public Agent record from what the catalog keeps and the live session state. */
export function agentRecordToProto(a: AgentRecord, connected: boolean, vms: string[]): Agent__Output {
  return {
    id: a.id,
    hostname: a.hostname,
    version: a.version,
    tunnelAddress: a.tunnelAddress,
    tunnelPort: a.tunnelPort,
    state: connected ? 'AGENT_STATE_CONNECTED' : 'AGENT_STATE_DISCONNECTED',
    lastSeenUnixMs: a.lastSeenUnixMs,
    drivers: a.drivers,
    vms,
    connectedUnixMs: a.connectedUnixMs,
  };
}
