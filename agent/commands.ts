/**
 * Dispatch of the coordinator's Commands (docs/control-plane.md) to the parts of the agent that
 * carry them out: the VNE table, the VM table, the snapshot and restore runners, the store.
 *
 * Guarantees: every Command gets exactly one Result on the session link it came in on (zero or
 * more Progress before it); a failure is a Result with ok=false and the error's stable code
 * (a VnsnapError's code; anything else is ERR_INTERNAL); a command this agent does not know is
 * ERR_INVALID_ARGUMENT. The link drops what is sent after its session is gone.
 * Every Result carries this agent's wall-clock instants of the command's arrival and of the
 * Result's writing (µs): with the coordinator's stamps, its estimate of this agent's clock offset
 * (coordinator/clock-offset.ts).
 */
import type { Clock } from '../proto/core/clock';
import { describeError, isVnsnapError, VnsnapError } from '../proto/core/errors';
import type { Logger } from '../proto/core/log';
import type { Command__Output } from '../proto/gen/vnsnap/v1/Command';
import type { ConfigureVne__Output } from '../proto/gen/vnsnap/v1/ConfigureVne';
import type { DeleteArtefacts__Output } from '../proto/gen/vnsnap/v1/DeleteArtefacts';
import type { DiscardDisks__Output } from '../proto/gen/vnsnap/v1/DiscardDisks';
import type { ForgetVne__Output } from '../proto/gen/vnsnap/v1/ForgetVne';
import type { Result } from '../proto/gen/vnsnap/v1/Result';
import type { StartVm__Output } from '../proto/gen/vnsnap/v1/StartVm';
import type { StopVm__Output } from '../proto/gen/vnsnap/v1/StopVm';
import type { ValidateArtefacts__Output } from '../proto/gen/vnsnap/v1/ValidateArtefacts';
import type { AgentMetrics } from './metrics';
import type { MigrateRunner } from './migrate-runner';
import type { RestoreRunner } from './restore-runner';
import type { SessionLink } from './session';
import type { ProgressSink, SnapshotRunner } from './snapshot-runner';
import type { SnapshotStore } from '../proto/store/snapshot-store';
import type { VmTable } from './vms';
import type { VneTable } from './vne-table';

type CommandBody = NonNullable<Command__Output['body']>;

export interface CommandDispatcherOptions {
  agentId: string;
  vnes: VneTable;
  vms: VmTable;
  snapshots: SnapshotRunner;
  restores: RestoreRunner;
  migrations: MigrateRunner;
  store: SnapshotStore;
  clock: Clock;
  /** Wall-clock µs for the Results' stamps (default: clock.now() × 1000). */
  nowUs?: () => number;
  log: Logger;
  metrics: AgentMetrics;
}

export class CommandDispatcher {
  private readonly nowUs: () => number;

  constructor(private readonly o: CommandDispatcherOptions) {
    this.nowUs = o.nowUs ?? (() => o.clock.now() * 1000);
  }

  /** Run one Command and send its Result on `link`. Never rejects. */
  async execute(link: SessionLink, cmd: Command__Output): Promise<void> {
    const kind = cmd.body ?? 'unknown';
    const commandReceivedUnixUs = this.nowUs();
    const t0 = this.o.clock.now();
    let result: Result;
    try {
      const payload = await this.dispatch(link, cmd);
      result = { commandId: cmd.id, ok: true, ...payload };
    } catch (e) {
      const code = isVnsnapError(e) ? e.code : 'ERR_INTERNAL';
      result = { commandId: cmd.id, ok: false, errorCode: code, errorMessage: describeError(e) };
      this.o.log.warn({ command: kind, id: cmd.id, code, err: describeError(e) }, 'command failed');
    }
    this.o.metrics.commands.inc({ command: kind, result: result.ok ? 'ok' : (result.errorCode ?? 'error') });
    this.o.log.debug({ command: kind, id: cmd.id, ok: result.ok, ms: this.o.clock.now() - t0 }, 'command done');
    link.send({ result: { ...result, commandReceivedUnixUs, sentUnixUs: this.nowUs() } });
  }

  /** One handler per Command body; the compiler checks every body has one. */
  private readonly handlers: { [K in CommandBody]: (c: NonNullable<Command__Output[K]>, link: SessionLink, commandId: number) => Promise<Partial<Result>> } = {
    configureVne: (c) => this.configureVne(c),
    forgetVne: (c) => this.forgetVne(c),
    startVm: (c) => this.startVm(c),
    stopVm: (c) => this.stopVm(c),
    snapshotBegin: (c, link, id) => this.o.snapshots.begin(c, this.progressTo(link, id)),
    snapshotCommit: (c) => this.o.snapshots.commit(c),
    snapshotPersist: (c) => this.o.snapshots.persist(c),
    snapshotAbort: (c) => this.o.snapshots.abort(c),
    deleteArtefacts: (c) => this.deleteArtefacts(c),
    validateArtefacts: (c) => this.validateArtefacts(c),
    restorePrepare: (c) => this.o.restores.prepare(c),
    restoreResume: (c) => this.o.restores.resume(c),
    restoreSwap: (c) => this.o.restores.swap(c),
    restoreCancel: (c) => this.o.restores.cancel(c),
    discardDisks: (c) => this.discardDisks(c),
    migrateIncoming: (c) => this.o.migrations.prepareIncoming(c),
    migrateOutgoing: (c, link, id) => this.o.migrations.migrateOut(c, this.progressTo(link, id)),
    migrateAttach: (c) => this.o.migrations.attach(c),
    migrateFinish: (c) => this.o.migrations.finish(c),
    migrateResume: (c) => this.o.migrations.resume(c),
    migrateCancel: (c) => this.o.migrations.cancel(c),
  };

  private dispatch(link: SessionLink, cmd: Command__Output): Promise<Partial<Result>> {
    const body = cmd.body;
    const handler = body ? (this.handlers[body] as ((c: unknown, link: SessionLink, commandId: number) => Promise<Partial<Result>>) | undefined) : undefined;
    if (!body || !handler) return Promise.reject(new VnsnapError('ERR_INVALID_ARGUMENT', `command ${cmd.id} has no body this agent knows`));
    return handler(cmd[body], link, cmd.id);
  }

  private progressTo(link: SessionLink, commandId: number): ProgressSink {
    return (vm) => void link.send({ progress: { commandId, vm: { host: this.o.agentId, ...vm } } });
  }

  /** Configure the switch; then the VNE's VMs adopted from a previous agent rejoin at the VNE's epoch. */
  private async configureVne(c: ConfigureVne__Output): Promise<Partial<Result>> {
    this.o.vnes.configure(c);
    await this.o.vms.attachAdopted(c.vne, c.epoch);
    await this.o.vms.saveStates(c.vne);
    return {};
  }

  /** A deleted VNE leaves the switch, and its VNI's device the kernel (vne-table.ts). */
  private async forgetVne(c: ForgetVne__Output): Promise<Partial<Result>> {
    await this.o.vnes.forget(c.vne, c.vni);
    return {};
  }

  private async startVm(c: StartVm__Output): Promise<Partial<Result>> {
    this.o.vnes.require(c.vne);
    if (!c.vm) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'StartVm without a VM');
    const vneVms = c.vneVms.map((v) => ({ name: v.name, macs: v.macs }));
    const vm = await this.o.vms.start(c.vne, c.vm, c.epoch, vneVms, c.keptDisk);
    const diskPath = this.o.vms.diskPath(vm);
    return diskPath ? { startVm: { diskPath } } : {};
  }

  /**
   * Stop the VM, keeping its disk unless discard_disk (then a kept disk of a VM that does not run
   * here is deleted too: the command is idempotent). The result says what was kept or discarded.
   */
  private async stopVm(c: StopVm__Output): Promise<Partial<Result>> {
    const discardDisk = c.discardDisk === true;
    const vm = this.o.vms.get(c.vne, c.vm);
    if (!vm) {
      const gone = discardDisk ? await this.o.vms.discardDisks(c.vne, [c.vm]) : [];
      return { stopVm: { diskPath: '', diskBytes: 0, killed: false, discardedPath: gone[0] ?? '' } };
    }
    const snap = this.o.snapshots.including(vm);
    if (snap !== undefined) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${c.vm} is part of snapshot ${snap} in progress`);
    const r = await this.o.vms.destroy(vm, { discardDisk });
    if (r.killed) this.o.log.warn({ vm: vm.key }, 'VM stopped, but its hypervisor had to be killed: writes it had not flushed are lost');
    this.o.log.info({ vm: vm.key, keptDisk: r.diskPath, discarded: r.discardedPath }, 'VM stopped');
    return { stopVm: { diskPath: r.diskPath ?? '', diskBytes: r.diskBytes ?? 0, killed: r.killed === true, discardedPath: r.discardedPath ?? '' } };
  }

  private async discardDisks(c: DiscardDisks__Output): Promise<Partial<Result>> {
    return { discardDisks: { discardedPaths: await this.o.vms.discardDisks(c.vne, c.vms) } };
  }

  private async deleteArtefacts(c: DeleteArtefacts__Output): Promise<Partial<Result>> {
    for (const p of c.paths) await this.o.store.delete(p);
    if (c.storePrefix) await this.o.store.deleteByPrefix(c.storePrefix);
    return {};
  }

  private async validateArtefacts(c: ValidateArtefacts__Output): Promise<Partial<Result>> {
    const problems: string[] = [];
    for (const a of c.artefacts) {
      const p = await this.o.store.verify({ path: a.path, size: Number(a.size), sha256: a.sha256 });
      if (p) problems.push(p);
    }
    return { validate: { problems } };
  }
}
