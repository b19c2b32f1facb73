/**
 * HypervisorDriver: the one interface the agent uses to run VMs and snapshot them
 * (DESIGN.md "Hypervisor drivers"). One implementation per hypervisor, each in its own folder:
 * qemu/ (QMP) and xen/ (xl). A new hypervisor goes in drivers/<name>/, registers its kind in
 * main.ts, and must pass test/support/compliance/driver.ts. The simulated driver of the tests
 * (test/sim/) is registered only by the test entry point test/sim/agent-main.ts.
 *
 * Life of a VM:  start ──► running ⇄ paused ──► stop
 *                restore ──► paused ──resume──► running
 *
 * A snapshot of one VM is a SnapshotJob, driven by the agent in the order of DESIGN.md:
 *
 *   job = snapshot(vm, {mode, epoch, store, prefix, onProgress})
 *   precopy:    the live copy runs into the store; onProgress reports bytes, iteration,
 *               dirty rate; `ready` resolves when the remaining dirty set is small.
 *   background: nothing runs yet; `ready` is resolved at once.
 *   (agent gates the VM's switch ports: frames for it are held from now on)
 *   report = job.cut(atPause)
 *       driver pauses the VM (precopy: the pause-before-switchover instant; background: stop)
 *       ──► atPause()  (VM paused: the agent drains the ports, advances them to the epoch,
 *                       releases held frames — they queue at the paused VM's NIC)
 *       ──► disk snapshot at this instant
 *       ──► precopy: final copy of the remaining dirty memory + device state
 *           background: start copy-on-write of the state as of the pause
 *       ──► resume; report {pauseMs (pause → resume), cutUnixUs (the pause instant), phases}
 *       If the VM could not be paused, cut() rejects WITHOUT calling atPause (the agent
 *       un-gates). atPause is called at most once.
 *   image = job.durable()   every artefact (memory, disk) committed in the store
 *   job.abort()             any time: cancel, resume the VM if paused, delete partials
 *
 * The contract of `ready` (every driver keeps it through ReadyLatch in job.ts; the compliance
 * suite asserts it for each):
 *   - it resolves once, when the cut can be taken with a short pause (at once in background mode);
 *   - abort() RESOLVES it if it is still pending, and never makes it reject: abort is the
 *     caller's own decision, so there is nothing to tell it, and a caller that awaits `ready`
 *     (the agent's SnapshotBegin waits for every VM's) is released at once and finds the job
 *     aborted (cut() then rejects with ERR_SNAPSHOT_ABORTED or ERR_STATE). A rejecting `ready`
 *     on abort was an unhandled rejection per VM in the agent (seen on the Xen test bed);
 *   - it REJECTS only when the copy fails on its own before it was ready (xl migrate died, the
 *     stream was malformed, QEMU reported the migration failed, a store write failed), with that
 *     typed error, so the SnapshotBegin waiting on it fails now rather than at the commit;
 *   - it never rejects unhandled: the job keeps a handler on it.
 *
 * How the real drivers fit:
 *   qemu  start: -netdev stream/dgram/tap per vNIC, the returned Ports are the switch's side.
 *         precopy: migrate-set-capabilities {pause-before-switchover, events}, migrate to
 *         a unix socket the agent reads into the store's ArtefactWriter as QEMU writes it;
 *         MIGRATION events → onProgress; `ready` when remaining < threshold; cut(): raise
 *         downtime-limit / wait for pre-switchover (paused) → atPause → blockdev-snapshot-sync
 *         on the top node → migrate-continue → MIGRATION completed → cont.
 *         background: stop → atPause → blockdev-snapshot-sync → migrate with background-snapshot
 *         (QEMU resumes the VM itself) → durable() waits for completion.
 *         abort: migrate_cancel (resumes in pre-switchover), cont, delete partials.
 *         restore: same command line + -incoming defer, migrate-incoming from the artefact,
 *         the VM comes up paused; resume = cont. restoreBeside: the same load in a second QEMU
 *         beside the running one, swapped in later (qemu/restore-beside.ts).
 *   sim   (tests) restoreBeside too; xen has none: a running Xen VNE is restored the older way.
 *   xen   precopy: `xl migrate -s '' DOM RECEIVER` with a receiver capturing the stream into an
 *         ArtefactWriter; background mode unsupported (cut() rejects with ERR_DRIVER);
 *         restore: `xl restore -p FILE`, resume = `xl unpause`.
 */
import type { Phase } from '../../proto/gen/vnsnap/v1/Phase';
import type { Logger } from '../../proto/core/log';
import type { TlsFiles } from '../../proto/core/tls';
import type { DriverSpec__Output } from '../../proto/gen/vnsnap/v1/DriverSpec';
import type { Port } from '../../switch/port/port';
import type { SnapshotStore, StoredArtefact } from '../../proto/store/snapshot-store';
import type { ProcessIdentity } from '../vm-state';

/** The product drivers, as named in the agent's configuration ("drivers"). */
export type DriverKind = 'qemu' | 'xen';

/**
 * The DriverSpec case a driver runs (`VmSpec.driver.kind`): a DriverKind for the product drivers;
 * the test entry point registers the test driver under its own kind.
 */
export type DriverSpecKind = NonNullable<DriverSpec__Output['kind']>;

export type VmStatus = 'running' | 'paused' | 'stopped';

/** What to start: the VM of a VNE, one vNIC (and switch port) per MAC. */
export interface VmStartSpec {
  /** The driver's key for the VM, unique per agent (the agent uses "<vne>/<vm>"); every other method takes it. */
  id: string;
  vne: string;
  /** The VM's name in its VNE. */
  name: string;
  macs: string[];
  driver: DriverSpec__Output;
  /**
   * Boot from the disk a stop kept (StartVm.kept_disk), not fresh from the spec's image; a
   * driver without kept disks ignores it. Fresh (false) never deletes a disk it finds: it moves
   * it aside (disk-dir.ts).
   */
  keptDisk?: boolean;
}

/** How to stop a VM: keep its disk (the default) or delete it with the VM. */
export interface StopOptions {
  discardDisk?: boolean;
}

/** What a stop did with the VM's disk (StopVmResult). A driver without disks of its own reports nothing. */
export interface StopReport {
  /** The directory of the kept disk. */
  diskPath?: string;
  diskBytes?: number;
  /** The directory deleted (discardDisk). */
  discardedPath?: string;
  /** The hypervisor did not stop cleanly in time and was killed. */
  killed?: boolean;
}

export interface VmStartContext {
  /** Names the returned ports must carry (ports[i] serves macs[i]); unique on the switch. */
  portNames: string[];
  /**
   * The VNE's VMs and their MACs when the agent knows them. Kept (though only the test driver
   * reads it today: a real guest finds its peers with ARP) because it is what a driver needs to
   * pre-seed a guest's neighbour table (static ARP for a guest without broadcast, a restored
   * guest whose peers moved), and it costs the agent one map per start. Absent entries are
   * resolved by the guest.
   */
  vneVms?: { name: string; macs: string[] }[];
  log: Logger;
}

/** A running (or paused) VM as the agent holds it. */
export interface VmHandle {
  name: string;
  /** The VM's vNICs as switch ports; ports[i] serves macs[i]. */
  ports: Port[];
}

export type SnapshotModeName = 'precopy' | 'background';

export interface SnapshotProgress {
  /** Bytes copied into the store so far (all passes). */
  bytesDone: number;
  /** Bytes still dirty (to copy). */
  bytesRemaining: number;
  /** Bytes of guest memory. */
  bytesTotal: number;
  iteration: number;
  dirtyRateMibS: number;
  /** The remaining dirty set is small enough for the cut. */
  ready: boolean;
}

export interface SnapshotOptions {
  snapshotId: string;
  epoch: number;
  mode: SnapshotModeName;
  store: SnapshotStore;
  /** Store prefix of the snapshot ("snapshots/<id>/"); artefacts go under it. */
  prefix: string;
  onProgress?: (p: SnapshotProgress) => void;
  /**
   * The agent's event loop raised for a cut window (agent/cut-priority.ts raiseCutPriority with
   * the agent's options); returns its release (idempotent). A job with ownCutWindow calls it.
   */
  raiseCutPriority?: () => () => void;
  /**
   * Write the VM's state record now, from the driver's current state (persistent()), and resolve
   * once it is on disk; reject when it could not be written. A job whose driver state must leave
   * the record before the job goes on awaits it (a tracked QEMU VM's base: tracked-job.ts); the
   * agent passes it (snapshot-runner.ts), callers without state records leave it out.
   */
  saveState?: () => Promise<void>;
}

export interface PhaseSpan {
  /** PRECOPY, PAUSE, COPY, PERSIST, or a cut trace's (PHASE_QMP_*, PHASE_EVENT_*). */
  phase: Phase;
  startUnixUs: number;
  endUnixUs: number;
}

export interface CutReport {
  /** VM downtime, pause → resume, measured by the driver. */
  pauseMs: number;
  /** Wall-clock instant of the pause (the cut). */
  cutUnixUs: number;
  resumeUnixUs: number;
  phases: PhaseSpan[];
}

/**
 * A memory image with what its loader must honour (recorded in the manifest as the artefact's
 * attributes): the QEMU driver's "nic" = the NIC backend the image was saved with.
 */
export type MemoryArtefact = StoredArtefact & { attributes?: Record<string, string> };

/**
 * A disk artefact. A layer of an incremental chain has the attribute "layer" = N (its place,
 * 0 = the full base): the QEMU driver stores each snapshot's disk as the layers of its qcow2
 * chain, the lower ones linked from the VM's previous snapshot (docs/storage.md "Incremental
 * disks"). A whole-disk artefact (a Xen guest's file, a QEMU snapshot written before layers)
 * has no "layer" attribute.
 */
export type DiskArtefact = StoredArtefact & { attributes?: Record<string, string> };

export interface VmImage {
  memory: MemoryArtefact;
  /** The VM's disk: its layers in order (layer 0 first), or one whole-disk artefact; empty when the VM has no disk. */
  disks: DiskArtefact[];
}

/**
 * A commit's cut instant handed to the driver (`stopAtUs`: this host's wall clock, µs). A
 * pre-copy one with the cut instead of waited for by the agent: a driver whose VM keeps running
 * through a final round of its copy after the commit starts that round at the call and pauses the
 * VM at the instant, so that every VM of the VNE stops at the one instant whatever its round's
 * length; it reports how its pause met the instant as a PHASE_CUT_AT span (the instant → `stop`
 * written, or → the VM found stopped by itself). Or, in either mode, to a job's approachCut()
 * at the commit's receipt, the agent waiting for the instant itself.
 */
export interface CutInstant {
  stopAtUs: number;
}

export interface SnapshotJob {
  readonly vm: string;
  readonly mode: SnapshotModeName;
  /**
   * Resolves when the cut can be taken with a short pause (at once in background mode); abort()
   * resolves it too, and only a failure of the copy before it was ready rejects it (see the
   * module comment: the contract of `ready`).
   */
  readonly ready: Promise<void>;
  /**
   * The cut; see the module comment. Rejects (without calling atPause) if the VM could not be
   * paused. `at`: the commit's cut instant for a pre-copy cut (CutInstant) of a job the agent
   * did not approach it with (approachCut); a driver without a final round before its pause
   * ignores it (the VM is cut at the call).
   */
  cut(atPause: () => Promise<void>, at?: CutInstant): Promise<CutReport>;
  /**
   * True when the job raises the agent's event loop for its own pause (SnapshotOptions
   * raiseCutPriority: from right before its `stop` until its atPause hook has run) and does
   * heavy work with the VM running before it (tracked memory's rounds) that must run at the
   * agent's own priority: the agent then takes no window of its own for the background
   * snapshot of a VM set whose jobs all say so (snapshot-runner.ts, cut-priority.ts), but from
   * 30 ms before a commit's cut instant (the jobs' rounds end before that: the loop must not wait
   * for a core at the instant).
   */
  readonly ownCutWindow?: boolean;
  /**
   * A job whose work before its `stop` can run outside the cut (tracked memory's rounds): called
   * at the commit's receipt with the commit's instant, before the agent waits for it and before
   * the VM's ports are gated; the job starts that work with the VM running, to end before the
   * instant, and the cut() called at the instant (without `at`) writes `stop` at once, also when
   * the work ran late: work still running then ends by itself, what it would have taken being
   * the cut's (tracked memory: the stopped round reads what was written since the running
   * round's scan), and a failure of it is the snapshot's (durable() rejects). An abort ends it. The agent calls it in background mode, and in pre-copy mode when every job of the
   * snapshot here has it (snapshot-runner.ts commit()); a job without it gets the instant with
   * cut().
   */
  approachCut?(at: CutInstant): void;
  /** Wait until the image (memory, disk) is committed in the store. */
  durable(): Promise<VmImage>;
  /** Cancel, resume the VM if this job paused it, delete partial artefacts. Idempotent; concurrent calls share one run. */
  abort(): Promise<void>;
}

export interface RestoreImage {
  memory: MemoryArtefact;
  /** As VmImage.disks: the layers in order, or one whole-disk artefact (no "layer" attribute); empty without a disk. */
  disks: DiskArtefact[];
}

/**
 * A VM loaded beside its running instance (restoreBeside): its own process, paused, its own disk,
 * its ports not attached. Nothing of the running instance was touched.
 */
export interface BesideRestore {
  /** The loaded VM's ports (not attached: the agent attaches them after swap()). */
  handle: VmHandle;
  /**
   * Stop the running instance of the id (its disk discarded: the restore replaces it) and make the
   * loaded one the VM of the id, its disk the VM's disk. Once called, discard() stops the loaded
   * one (and the running one, if swap() failed before stopping it).
   */
  swap(): Promise<void>;
  /**
   * Before swap(): stop the loaded VM and remove its disk; the running instance runs on with its
   * disk as it was. Idempotent.
   */
  discard(): Promise<void>;
}

/** Progress of a live migration (driver.migrateOut): the disk mirror, then the memory pre-copy. */
export interface MigrationProgress {
  phase: 'disk' | 'memory';
  bytesDone: number;
  bytesTotal: number;
  /** Memory: QEMU's dirty-sync count (pass). */
  iteration: number;
  /** The phase ended (the disk in sync; the memory sent). */
  done: boolean;
}

/** Where a source sends a migrating VM's disk and memory (MigrateIncomingResult). */
export interface MigrationTargets {
  /** An NBD URI; empty when the VM has no disk of its own. */
  diskUri: string;
  /** A QEMU migration URI (tcp:HOST:PORT). */
  memoryUri: string;
}

/**
 * The disk and memory streams of a live migration over mutual TLS (docs/migration.md): the
 * agent's own certificate, key and CA, and the other end's agent id: on the source the
 * destination's, which its certificate must name; on the destination the source's, the only
 * certificate its listeners admit.
 */
export interface MigrationTls {
  files: TlsFiles;
  peer?: string;
}

/** The destination's side of a live migration (docs/migration.md). */
export interface IncomingMigration {
  /** The VM's ports (not attached yet; the agent attaches them gated at the switchover). */
  handle: VmHandle;
  targets: MigrationTargets;
  /** Wait until the state arrived, resume the VM and announce it; the resume instant (µs). */
  resume(): Promise<number>;
}

/** The source's side of a live migration. */
export interface OutgoingMigration {
  /** Disk in sync, memory pre-copied, the VM paused for the switchover. */
  untilPaused(): Promise<{ pausedUnixUs: number; diskBytes: number; throttled: boolean }>;
  /** Send the rest; resolves when the destination has everything (the VM stays paused here: the caller stops it). */
  finish(): Promise<{ memoryBytes: number; /** the hypervisor's own downtime figure, if it reports one */ downtimeMs?: number }>;
  /** Undo before finish(): the VM runs on here untouched. Idempotent. */
  cancel(): Promise<void>;
}

export interface HypervisorDriver {
  readonly kind: DriverSpecKind;
  /** Start a VM (running); its ports are attached to the switch by the agent. */
  start(spec: VmStartSpec, ctx: VmStartContext): Promise<VmHandle>;
  /**
   * Destroy a VM, keeping its disk unless opts.discardDisk (drivers with disks of their own:
   * disk-dir.ts). Idempotent (an unknown VM is not an error).
   */
  stop(vm: string, opts?: StopOptions): Promise<StopReport | void>;
  /**
   * Delete the kept disk of VM `vm` of VNE `vne` (DiscardDisks): the directory removed, or
   * undefined when there was none. Optional: drivers without disks of their own leave it out.
   */
  discardDisk?(vne: string, vm: string): Promise<string | undefined>;
  /** Where the running VM's disk lives (StartVmResult.disk_path); optional like discardDisk. */
  diskPath?(vm: string): string | undefined;
  pause(vm: string): Promise<void>;
  resume(vm: string): Promise<void>;
  status(vm: string): VmStatus;
  /** Begin a snapshot of a running VM. */
  snapshot(vm: string, opts: SnapshotOptions): Promise<SnapshotJob>;
  /** Load a VM paused from a snapshot image in `store`; resume() starts it. */
  restore(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<VmHandle>;

  // ── Restore over a running VNE: load beside, then swap (docs/operations.md "Restore"). A driver
  // without these two is restored the older way (the coordinator validates every image first, then
  // the running VMs are stopped before their replacements load). ──

  /**
   * Load the VM paused from a snapshot image beside its running instance of the same id (or with
   * none running), verifying the image while it loads; ctx.portNames are the running instance's
   * port names (the agent attaches the new ports only after swap()). A failure leaves nothing
   * behind and the running instance untouched.
   */
  restoreBeside?(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<BesideRestore>;
  /** Host memory a loaded copy of a VM of this spec takes while its running instance still runs (bytes). */
  besideMemoryBytes?(spec: DriverSpec__Output): number;
  /**
   * The VM's ports were advanced to `epoch` without a snapshot of it (an abort). Optional; the
   * product drivers leave it out. It stays in the interface because the cut's consistency is
   * checked end to end by a guest that carries its epoch in every frame (the test driver's): its
   * epoch must move in the same step as its ports, before the switch releases the held frames,
   * and only the agent knows that instant (no snapshot job exists for an abort the coordinator
   * orders after the agent restarted).
   */
  epochAdvanced?(vm: string, epoch: number): void;
  /**
   * A driver-specific view of the VM for operators and tests (served by the agent at
   * /debug/vms): the QEMU process, directory and disk chain; the Xen domain; the test guest's
   * counters. Optional and read-only.
   */
  inspect?(vm: string): unknown;
  /** Stop every VM of this driver. */
  close(): Promise<void>;

  // ── Live migration (docs/migration.md). A driver without these two cannot migrate VMs. ──

  /**
   * Destination: start the VM waiting for its state from a source, listening on `listenAddress`
   * (the agent's underlay address). A failure leaves nothing behind; stop(id, {discardDisk})
   * undoes a prepared one.
   */
  migrateIn?(spec: VmStartSpec, ctx: VmStartContext, listenAddress: string, tls?: MigrationTls): Promise<IncomingMigration>;
  /** Source: begin moving the running VM to `targets`. */
  migrateOut?(vm: string, targets: MigrationTargets, onProgress: (p: MigrationProgress) => void, tls?: MigrationTls): Promise<OutgoingMigration>;

  // ── VMs that outlive the agent (docs/agent-restart.md). A driver without these three runs VMs
  // that die with the agent (the test drivers); the agent then stops them when it stops. ──

  /** The VM's process and the driver's state needed to find it again (the agent's state record). */
  persistent?(vm: string): { process?: ProcessIdentity; state: unknown } | undefined;
  /**
   * Take over a VM a previous agent left running, whose process (if it is one) the agent has
   * checked is still the recorded one (pid and start time): re-open its monitor and its NICs'
   * host side (the returned ports, not attached yet). A VM found paused (the dead agent had
   * paused it for a cut) is resumed, and `resumed` says so. Throws ERR_NOT_FOUND when the VM is
   * gone or cannot be reached.
   */
  adopt?(spec: VmStartSpec, saved: { process?: ProcessIdentity; state: unknown }, ctx: VmStartContext): Promise<VmHandle & { resumed: boolean }>;
  /** Forget the VM without stopping it: close the monitor and the ports; the process goes on. */
  release?(vm: string): Promise<void>;
  /**
   * On start, after the adoption: remove what dead agents left (stray processes, devices,
   * directories of VMs this agent did not adopt), keeping what `otherStates` (records of
   * another agent) name and the disk images of `deadStates` (VMs reported dead). Returns one
   * line per thing removed or kept.
   */
  cleanLeftovers?(o: { otherStates: readonly unknown[]; deadStates: readonly unknown[] }): Promise<string[]>;
}
