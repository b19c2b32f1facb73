/**
 * The local part of a live migration (docs/migration.md): the agent's six Migrate* commands for
 * one VM, as the coordinator orders them (coordinator/migrate-sequencer.ts):
 *
 *   destination  incoming  the driver starts the VM waiting for its state (driver.migrateIn),
 *                          listening on this agent's underlay address; nothing on the switch yet.
 *   source       outgoing  the driver mirrors the disk and pre-copies memory (driver.migrateOut),
 *                          Progress (PHASE_DISK_SYNC, PHASE_MIGRATE) on the way; the Result when
 *                          the VM is paused for the switchover. Refused while a snapshot
 *                          includes the VM.
 *   destination  attach    the VM's ports attached at the VNE's epoch and generation behind a
 *                          gate (VmTable.restore's path: the record is "prepared", not running):
 *                          frames for it are kept until resume.
 *   source       finish    the switchover: the VM's MACs routed to the destination on this
 *                          switch (frames that still arrive here go there, into the gate, those
 *                          from other hosts relayed), the driver finishes the migration; the
 *                          Result goes back at once, then the VM is stopped, its ports detached
 *                          and its local disk deleted (it lives on the destination now; a
 *                          migration of it back here waits for that). If the driver fails to
 *                          finish, the VM is resumed here and its MACs routed to its ports again
 *                          (they stayed attached): it runs on at the source, and the error is
 *                          the Result.
 *   destination  resume    the driver resumes the VM (announce-self), the gates open, the VM is
 *                          running here (its state record written).
 *   either       cancel    before finish: the source's driver undoes the migration (the VM runs
 *                          on untouched); the destination's waiting VM is stopped, its partial
 *                          disk deleted. Idempotent.
 *
 * One migration per VM at a time; the records live until finish/resume/cancel. When the
 * session with the coordinator ends, every migration settles locally (sessionLost), except the
 * two ends of a switchover: a paused source is held for holdMs, and both are reported in the
 * next Register (held()) for the coordinator to finish or cancel as its catalog says. resume is
 * idempotent (the coordinator sends it with MigrateFinish, and again after a restart). With the
 * agent's certificates both streams are mutual TLS (each end checks the other's agent name;
 * drivers/qemu/migration-tls.ts).
 */
import { systemClock, type Clock, type TimerHandle } from '../proto/core/clock';
import { VnsnapError } from '../proto/core/errors';
import type { Logger } from '../proto/core/log';
import type { TlsFiles } from '../proto/core/tls';
import type { MigrateAttach__Output } from '../proto/gen/vnsnap/v1/MigrateAttach';
import type { MigrateCancel__Output } from '../proto/gen/vnsnap/v1/MigrateCancel';
import type { MigrateFinish__Output } from '../proto/gen/vnsnap/v1/MigrateFinish';
import type { MigrateIncoming__Output } from '../proto/gen/vnsnap/v1/MigrateIncoming';
import type { MigratingVm } from '../proto/gen/vnsnap/v1/MigratingVm';
import type { MigrateOutgoing__Output } from '../proto/gen/vnsnap/v1/MigrateOutgoing';
import type { MigrateResume__Output } from '../proto/gen/vnsnap/v1/MigrateResume';
import type { Result } from '../proto/gen/vnsnap/v1/Result';
import type { VmProgress } from '../proto/gen/vnsnap/v1/VmProgress';
import type { Switch } from '../switch/switch';
import type { HypervisorDriver, IncomingMigration, MigrationProgress, MigrationTls, OutgoingMigration } from './drivers/driver';
import type { SnapshotRunner } from './snapshot-runner';
import { portName, vmKey, type VmRecord, type VmTable } from './vms';
import type { VneTable } from './vne-table';

export interface MigrateRunnerOptions {
  agentId: string;
  /** The address the destination's QEMU listens on for the disk and memory streams (the underlay). */
  listenAddress: string;
  /** The agent's certificate files: with them both streams are mutual TLS (docs/migration.md). */
  tls?: TlsFiles;
  switch: () => Switch;
  vms: VmTable;
  vnes: VneTable;
  snapshots: SnapshotRunner;
  log: Logger;
  clock?: Clock;
  /**
   * A source paused at its switchover whose session ends waits this long for a coordinator to
   * settle it (finish or cancel) before it resumes the VM itself (default 30 s).
   */
  holdMs?: number;
}

export const DEFAULT_HOLD_MS = 30_000;

interface Incoming {
  id: string;
  vne: string;
  vm: string;
  driver: HypervisorDriver;
  mig: IncomingMigration;
  spec: NonNullable<MigrateIncoming__Output['vm']>;
  from: string;
  record?: VmRecord;
  /** The resume under way (MigrateResume and a lost session's settling share it). */
  resuming?: Promise<Partial<Result>>;
}

interface Outgoing {
  id: string;
  vm: VmRecord;
  mig: OutgoingMigration;
  to: string;
  finishing: boolean;
  /** Paused at the switchover (the coordinator has the Result). */
  paused: boolean;
  /** Held after the session ended (sessionLost): resumes the VM here when it fires. */
  hold?: TimerHandle;
}

/** One VM's part of a migration: a migration of a whole VNE moves several VMs under one id. */
const moveKey = (migrationId: string, vm: string): string => `${migrationId}/${vm}`;

export class MigrateRunner {
  /** By moveKey(migration id, VM name). */
  private readonly incoming = new Map<string, Incoming>();
  /** By moveKey(migration id, VM name). */
  private readonly outgoing = new Map<string, Outgoing>();
  /** Sources being stopped after their switchover, by VM key. */
  private readonly leaving = new Map<string, Promise<void>>();

  constructor(private readonly o: MigrateRunnerOptions) {}

  /** Is the VM being migrated from or to here? */
  migrating(vne: string, vm: string): boolean {
    const k = vmKey(vne, vm);
    return [...this.incoming.values()].some((x) => vmKey(x.vne, x.vm) === k) || [...this.outgoing.values()].some((x) => x.vm.key === k);
  }

  async prepareIncoming(c: MigrateIncoming__Output): Promise<Partial<Result>> {
    if (!c.migrationId || !c.vm) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'MigrateIncoming needs a migration id and a VM');
    this.o.vnes.require(c.vne);
    await this.leaving.get(vmKey(c.vne, c.vm.name));
    if (this.o.vms.get(c.vne, c.vm.name)) throw new VnsnapError('ERR_ALREADY_EXISTS', `VM ${c.vm.name} of VNE ${c.vne} already runs on agent ${this.o.agentId}`);
    if (this.migrating(c.vne, c.vm.name)) throw new VnsnapError('ERR_ALREADY_EXISTS', `VM ${c.vm.name} of VNE ${c.vne} is already being migrated here`);
    if (this.o.tls && !c.fromAgent) throw new VnsnapError('ERR_INVALID_ARGUMENT', `MigrateIncoming of VM ${c.vm.name} names no source agent: over TLS the destination admits only the source's certificate`);
    const driver = this.o.vms.driverFor(c.vm);
    if (!driver.migrateIn) throw new VnsnapError('ERR_FAILED_PRECONDITION', `the ${driver.kind} driver cannot migrate VMs live`);
    if (c.vm.macs.length === 0) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${c.vm.name} has no MAC`);
    const spec = { id: vmKey(c.vne, c.vm.name), vne: c.vne, name: c.vm.name, macs: c.vm.macs, driver: c.vm.driver ?? {} };
    const portNames = c.vm.macs.map((_, i) => portName(c.vne, c.vm!.name, i));
    const vneVms = c.vneVms.map((v) => ({ name: v.name, macs: v.macs }));
    const mig = await driver.migrateIn(spec, { portNames, vneVms, log: this.o.log.child({ vm: spec.id }) }, this.o.listenAddress, this.tlsFor(c.tls, c.fromAgent));
    this.incoming.set(moveKey(c.migrationId, c.vm.name), { id: c.migrationId, vne: c.vne, vm: c.vm.name, driver, mig, spec: c.vm, from: c.fromAgent });
    this.o.log.info({ migration: c.migrationId, vm: spec.id, ...mig.targets }, 'waiting for a VM migrating here');
    return { migrateIncoming: { diskUri: mig.targets.diskUri, memoryUri: mig.targets.memoryUri } };
  }

  async migrateOut(c: MigrateOutgoing__Output, progress: (p: VmProgress) => void): Promise<Partial<Result>> {
    const vm = this.o.vms.get(c.vne, c.vm);
    if (!vm || vm.restoreId !== undefined) throw new VnsnapError('ERR_NOT_FOUND', `VM ${c.vm} of VNE ${c.vne} does not run on agent ${this.o.agentId}`);
    if (this.outgoing.has(moveKey(c.migrationId, c.vm)) || this.migrating(c.vne, c.vm)) throw new VnsnapError('ERR_ALREADY_EXISTS', `VM ${c.vm} of VNE ${c.vne} is already being migrated`);
    const snap = this.o.snapshots.including(vm);
    if (snap !== undefined) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${c.vm} is part of snapshot ${snap} in progress`);
    if (!vm.driver.migrateOut) throw new VnsnapError('ERR_FAILED_PRECONDITION', `the ${vm.driver.kind} driver cannot migrate VMs live`);
    const onProgress = (p: MigrationProgress): void =>
      progress({
        vm: c.vm,
        phase: p.phase === 'disk' ? 'PHASE_DISK_SYNC' : 'PHASE_MIGRATE',
        bytesDone: p.bytesDone,
        bytesTotal: p.bytesTotal,
        fraction: p.bytesTotal > 0 ? Math.min(1, p.bytesDone / p.bytesTotal) : 0,
        iteration: p.iteration,
        phaseDone: p.done,
      });
    const mig = await vm.driver.migrateOut(vm.key, { diskUri: c.diskUri, memoryUri: c.memoryUri }, onProgress, this.tlsFor(c.tls, c.toAgent));
    const rec: Outgoing = { id: c.migrationId, vm, mig, to: c.toAgent, finishing: false, paused: false };
    this.outgoing.set(moveKey(c.migrationId, c.vm), rec);
    try {
      const r = await mig.untilPaused();
      if (this.outgoing.get(moveKey(c.migrationId, c.vm)) !== rec) {
        // Cancelled meanwhile (MigrateCancel, or the session ended): the pause came after the undo.
        await mig.cancel();
        throw new VnsnapError('ERR_CANCELLED', `migration ${c.migrationId} of VM ${c.vm} was cancelled before its switchover; the VM runs on at agent ${this.o.agentId}`);
      }
      rec.paused = true;
      this.o.log.info({ migration: c.migrationId, vm: vm.key, diskBytes: r.diskBytes, throttled: r.throttled, pausedUnixUs: r.pausedUnixUs }, 'migrating VM paused for the switchover');
      return { migrateOutgoing: { diskBytes: r.diskBytes, throttled: r.throttled, pausedUnixUs: r.pausedUnixUs } };
    } catch (e) {
      if (this.outgoing.get(moveKey(c.migrationId, c.vm)) === rec) this.outgoing.delete(moveKey(c.migrationId, c.vm));
      await mig.cancel().catch((err: Error) => this.o.log.error({ vm: vm.key, err: err.message }, 'undoing a failed migration failed'));
      throw e;
    }
  }

  async attach(c: MigrateAttach__Output): Promise<Partial<Result>> {
    const inc = this.mustIncoming(c.migrationId, c.vm);
    if (inc.record) return {};
    if (c.generation && this.o.vnes.generation(c.vne) !== c.generation) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE ${c.vne} is at generation ${this.o.vnes.generation(c.vne)} on agent ${this.o.agentId}, the migration at ${c.generation}`);
    inc.record = await this.o.vms.attachPrepared(inc.vne, inc.spec, inc.driver, inc.mig.handle, c.epoch, `migration:${inc.id}`);
    this.o.log.info({ migration: inc.id, vm: inc.record.key }, 'migrating VM attached (gated)');
    return {};
  }

  async finish(c: MigrateFinish__Output): Promise<Partial<Result>> {
    const key = moveKey(c.migrationId, c.vm);
    const out = this.outgoing.get(key);
    if (!out) throw new VnsnapError('ERR_NOT_FOUND', `migration ${c.migrationId} of VM ${c.vm} is not in progress on agent ${this.o.agentId}`);
    if (!out.paused) throw new VnsnapError('ERR_FAILED_PRECONDITION', `migration ${c.migrationId} of VM ${c.vm} is not at its switchover on agent ${this.o.agentId}`);
    this.clock.clearTimeout(out.hold);
    out.finishing = true;
    const sw = this.o.switch();
    const vm = out.vm;
    // From here frames for the VM that reach this switch go to the destination (into its gate),
    // those from other hosts too (relayed). The ports stay attached until QEMU has sent
    // everything: a migration that fails now leaves the VM here, its NICs intact.
    const before = sw.stats();
    for (const mac of vm.spec.macs) sw.relayMovedMac(vm.vne, mac, c.toAgent);
    let r: { memoryBytes: number; downtimeMs?: number };
    try {
      r = await out.mig.finish();
    } catch (e) {
      this.outgoing.delete(key);
      await out.mig.cancel().catch((err: Error) => this.o.log.error({ vm: vm.key, err: err.message }, 'resuming the VM after its failed switchover failed'));
      sw.configureVne({ name: vm.vne, macs: vm.spec.macs.map((mac) => ({ mac, local: true as const })) });
      this.o.log.warn({ migration: c.migrationId, vm: vm.key, err: (e as Error).message }, 'the switchover failed: the VM runs on here');
      throw e;
    }
    this.outgoing.delete(key);
    this.o.log.info({ migration: c.migrationId, vm: vm.key, qemuDowntimeMs: r.downtimeMs }, 'QEMU migration completed');
    const after = sw.stats();
    const forwardedFrames = Number(after['movedRelayed']) - Number(before['movedRelayed']);
    const droppedFrames = Number(after['tunnelHairpinDrops']) - Number(before['tunnelHairpinDrops']);
    // The source QEMU (paused, everything sent) is stopped and its disk deleted after the reply:
    // the destination's resume, and so the VM's downtime, does not wait for it. The record
    // leaves the VM table at once; a migration back here waits for the stop (prepareIncoming).
    const gone = this.o.vms
      .destroy(vm, { discardDisk: true })
      .then(() => undefined, (e: Error) => this.o.log.error({ vm: vm.key, err: e.message }, 'stopping the migrated VM\'s source failed'))
      .finally(() => this.leaving.get(vm.key) === gone && this.leaving.delete(vm.key));
    this.leaving.set(vm.key, gone);
    this.o.log.info({ migration: c.migrationId, vm: vm.key, forwardedFrames, droppedFrames, memoryBytes: r.memoryBytes }, 'migration switched over');
    return { migrateFinish: { memoryBytes: r.memoryBytes, forwardedFrames, droppedFrames } };
  }

  /**
   * Idempotent: a second MigrateResume (a restarted coordinator's) shares the one under way, and
   * one for a VM that already resumed here answers with it (resumed_unix_us 0: not measured).
   * An empty migration id names the VM's incoming migration, whichever it is.
   */
  async resume(c: MigrateResume__Output): Promise<Partial<Result>> {
    const inc = c.migrationId ? this.incoming.get(moveKey(c.migrationId, c.vm)) : [...this.incoming.values()].find((x) => x.vne === c.vne && x.vm === c.vm);
    if (!inc) {
      const vm = this.o.vms.get(c.vne, c.vm);
      if (vm && vm.restoreId === undefined) return { migrateResume: { resumedUnixUs: 0, diskPath: this.o.vms.diskPath(vm) } };
      throw new VnsnapError('ERR_NOT_FOUND', `migration ${c.migrationId || '(any)'} of VM ${c.vm} is not prepared on agent ${this.o.agentId}`);
    }
    if (!inc.record) throw new VnsnapError('ERR_FAILED_PRECONDITION', `migration ${inc.id}: the VM's ports are not attached (MigrateAttach first)`);
    inc.resuming ??= this.resumeNow(inc);
    return inc.resuming;
  }

  private async resumeNow(inc: Incoming): Promise<Partial<Result>> {
    if (!inc.record) throw new VnsnapError('ERR_INTERNAL', `migration ${inc.id}: resumed without its ports`);
    let resumedUnixUs: number;
    try {
      resumedUnixUs = await inc.mig.resume();
    } catch (e) {
      inc.resuming = undefined;
      throw e;
    }
    this.incoming.delete(moveKey(inc.id, inc.vm));
    const vm = inc.record;
    delete vm.restoreId;
    for (const p of vm.ports) this.o.switch().openGate(p.name, []);
    await this.o.vms.saveState(vm);
    this.o.log.info({ migration: inc.id, vm: vm.key }, 'migrated VM running here');
    return { migrateResume: { resumedUnixUs, diskPath: this.o.vms.diskPath(vm) } };
  }

  async cancel(c: MigrateCancel__Output): Promise<Partial<Result>> {
    const key = moveKey(c.migrationId, c.vm);
    const out = this.outgoing.get(key);
    if (out) {
      this.clock.clearTimeout(out.hold);
      if (out.finishing) throw new VnsnapError('ERR_FAILED_PRECONDITION', `migration ${c.migrationId} is past its switchover on agent ${this.o.agentId}`);
      this.outgoing.delete(key);
      await out.mig.cancel();
      this.o.log.info({ migration: c.migrationId, vm: out.vm.key }, 'migration cancelled: the VM runs on here');
    }
    const inc = this.incoming.get(key);
    if (inc) {
      this.incoming.delete(key);
      if (inc.record && this.o.vms.holds(inc.record)) await this.o.vms.destroy(inc.record, { discardDisk: true });
      else await inc.driver.stop(vmKey(inc.vne, inc.vm), { discardDisk: true });
      this.o.log.info({ migration: c.migrationId, vm: vmKey(inc.vne, inc.vm) }, 'incoming migration cancelled: the waiting VM and its disk removed');
    }
    return {};
  }

  /**
   * The session with the coordinator ended: every migration settles here without it — a
   * source not yet paused resumes its VM; one paused at its switchover is held for holdMs
   * (the coordinator may have placed the VM on the destination already: a coordinator that
   * comes back within that time finishes or cancels it, as its catalog says; then the source
   * resumes the VM itself); one in its switchover finishes it. A destination not yet attached
   * removes its waiting VM, and one already attached resumes its VM if QEMU delivers the whole
   * state (the source finished) and removes it otherwise (the source cancelled and runs it on).
   */
  sessionLost(): void {
    const failed = (id: string) => (e: Error) => this.o.log.error({ migration: id, err: e.message }, 'undoing a migration after the session ended failed');
    for (const out of [...this.outgoing.values()]) {
      if (out.finishing) continue;
      const ids = { migrationId: out.id, vne: out.vm.vne, vm: out.vm.name };
      if (!out.paused) {
        void this.cancel(ids).catch(failed(out.id));
        continue;
      }
      if (out.hold !== undefined) continue;
      const holdMs = this.o.holdMs ?? DEFAULT_HOLD_MS;
      this.o.log.warn({ migration: out.id, vm: out.vm.key, holdMs }, 'the session ended at the switchover: the VM stays paused for the coordinator to settle it');
      out.hold = this.clock.setTimeout(() => {
        this.o.log.warn({ migration: out.id, vm: out.vm.key }, 'no coordinator settled the switchover: the VM resumes here');
        void this.cancel(ids).catch(failed(out.id));
      }, holdMs);
    }
    for (const inc of [...this.incoming.values()]) {
      const ids = { migrationId: inc.id, vne: inc.vne, vm: inc.vm };
      if (!inc.record) {
        void this.cancel(ids).catch(failed(inc.id));
        continue;
      }
      void this.resume(ids).then(
        () => this.o.log.warn({ migration: inc.id, vm: vmKey(inc.vne, inc.vm) }, 'the session ended during the switchover: the whole state arrived, the VM runs here'),
        (e: Error) => {
          this.o.log.warn({ migration: inc.id, vm: vmKey(inc.vne, inc.vm), err: e.message }, 'the session ended during the switchover: the state did not arrive, the waiting VM is removed');
          return this.cancel(ids).catch(failed(inc.id));
        },
      );
    }
  }

  /**
   * The streams' TLS: on whenever this agent has certificates (then its coordinator runs mutual
   * TLS and so do the other agents'); asked for (`tls`) without them is refused. `peer`: on the
   * source the destination (its certificate must name it), on the destination the source (the
   * only certificate admitted).
   */
  private tlsFor(asked: boolean, peer?: string): MigrationTls | undefined {
    if (!this.o.tls) {
      if (asked) throw new VnsnapError('ERR_FAILED_PRECONDITION', `agent ${this.o.agentId} has no TLS certificates: it cannot encrypt the migration streams`);
      return undefined;
    }
    return { files: this.o.tls, ...(peer ? { peer } : {}) };
  }

  /** Migrations at their switchover (Register's `migrating`): a restarted coordinator settles them. */
  held(): MigratingVm[] {
    const out = [...this.outgoing.values()].filter((o) => o.paused && !o.finishing).map((o) => ({ vne: o.vm.vne, vm: o.vm.name, migrationId: o.id, outgoing: true, peerAgent: o.to }));
    const inc = [...this.incoming.values()].filter((i) => i.record).map((i) => ({ vne: i.vne, vm: i.vm, migrationId: i.id, outgoing: false, peerAgent: i.from }));
    return [...out, ...inc];
  }

  private get clock(): Clock {
    return this.o.clock ?? systemClock;
  }

  private mustIncoming(id: string, vm: string): Incoming {
    const inc = this.incoming.get(moveKey(id, vm));
    if (!inc) throw new VnsnapError('ERR_NOT_FOUND', `migration ${id} of VM ${vm} is not prepared on agent ${this.o.agentId}`);
    return inc;
  }
}
