/**
 * HypervisorDriver: the one interface the agent uses to run VMs and snapshot them
 * (DESIGN.md "Hypervisor drivers"). One implementation per hypervisor: qemu (QMP), xen (xl),
 * and the simulated driver for tests and scale runs (sim-driver.ts, never a product driver).
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
 * How the real drivers fit:
 *   qemu  start: -netdev stream/dgram/tap per vNIC, the returned Ports are the switch's side.
 *         precopy: migrate-set-capabilities {pause-before-switchover, events}, migrate to
 *         `exec:cat > TMP` (or a unix socket the driver streams into an ArtefactWriter);
 *         MIGRATION events → onProgress; `ready` when remaining < threshold; cut(): raise
 *         downtime-limit / wait for pre-switchover (paused) → atPause → blockdev-snapshot-sync
 *         on the top node → migrate-continue → MIGRATION completed → cont.
 *         background: stop → atPause → blockdev-snapshot-sync → migrate with background-snapshot
 *         (QEMU resumes the VM itself) → durable() waits for completion.
 *         abort: migrate_cancel (resumes in pre-switchover), cont, delete partials.
 *         restore: same command line + -incoming defer, migrate-incoming from the artefact,
 *         the VM comes up paused; resume = cont.
 *   xen   precopy: `xl migrate -s '' DOM RECEIVER` with a receiver capturing the stream into an
 *         ArtefactWriter; background mode unsupported (cut() rejects with ERR_DRIVER);
 *         restore: `xl restore -p FILE`, resume = `xl unpause`.
 */
import type { Logger } from '../proto/core/log';
import type { DriverSpec__Output } from '../proto/gen/vnsnap/v1/DriverSpec';
import type { Port } from '../switch/port/port';
import type { SnapshotStore, StoredArtefact } from '../proto/store/local-dir';

export type DriverKind = 'sim' | 'qemu' | 'xen';

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
}

export interface VmStartContext {
  /** Names the returned ports must carry (ports[i] serves macs[i]); unique on the switch. */
  portNames: string[];
  /**
   * The VNE's VMs and their MACs when known (the sim driver needs its peers' MACs; a real
   * guest finds them itself with ARP). Absent entries are resolved by the guest.
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
}

export interface PhaseSpan {
  phase: 'PHASE_PRECOPY' | 'PHASE_PAUSE' | 'PHASE_COPY' | 'PHASE_PERSIST';
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

export interface VmImage {
  memory: StoredArtefact;
  disk?: StoredArtefact;
}

export interface SnapshotJob {
  readonly vm: string;
  readonly mode: SnapshotModeName;
  /** Resolves when the cut can be taken with a short pause (at once in background mode). */
  readonly ready: Promise<void>;
  /** The cut; see the module comment. Rejects (without calling atPause) if the VM could not be paused. */
  cut(atPause: () => Promise<void>): Promise<CutReport>;
  /** Wait until the image (memory, disk) is committed in the store. */
  durable(): Promise<VmImage>;
  /** Cancel, resume the VM if this job paused it, delete partial artefacts. Idempotent. */
  abort(): Promise<void>;
}

export interface RestoreImage {
  memory: StoredArtefact;
  disk?: StoredArtefact;
}

export interface HypervisorDriver {
  readonly kind: DriverKind;
  /** Start a VM (running); its ports are attached to the switch by the agent. */
  start(spec: VmStartSpec, ctx: VmStartContext): Promise<VmHandle>;
  /** Destroy a VM. Idempotent (an unknown VM is not an error). */
  stop(vm: string): Promise<void>;
  pause(vm: string): Promise<void>;
  resume(vm: string): Promise<void>;
  status(vm: string): VmStatus;
  /** Begin a snapshot of a running VM. */
  snapshot(vm: string, opts: SnapshotOptions): Promise<SnapshotJob>;
  /** Load a VM paused from a snapshot image in `store`; resume() starts it. */
  restore(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<VmHandle>;
  /**
   * The VM's ports were advanced to `epoch` without a snapshot of it (an abort). Only guests
   * that observe epochs (the sim driver's) care; real drivers leave it out.
   */
  epochAdvanced?(vm: string, epoch: number): void;
  /** A driver-specific view of the VM's state for tests and debugging (the sim driver's SimVmState). */
  inspect?(vm: string): unknown;
  /** Stop every VM of this driver. */
  close(): Promise<void>;
}
