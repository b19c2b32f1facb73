/**
 * MigrateRecovery: migrations that a coordinator finds at their switchover when an agent
 * registers (docs/migration.md "A coordinator restart mid-migration"). The catalog keeps no
 * migration in flight, only each VM's placement, which moves to the destination at the
 * switchover before MigrateFinish is sent; an agent whose session ended at that point holds the
 * migration (agent/migrate-runner.ts sessionLost: a source paused at its switchover stays
 * paused for a while, a destination with the VM's ports attached waits for the state) and
 * reports it in Register.migrating. What the catalog says is carried out:
 *
 *   source, held      the catalog places the VM on the destination: MigrateFinish to the source
 *                     (QEMU sends the rest, the source stops), then MigrateResume to the
 *                     destination if it is connected (else its own registration does it). The
 *                     VM is not in the source's running list for VneHealth (it would be fenced
 *                     as "placed elsewhere" and stopped before it could finish). If the finish
 *                     fails, the source resumed the VM: the catalog goes back to the source and
 *                     the destination is cancelled.
 *                     The catalog places it on the source (the switchover was not reached):
 *                     MigrateCancel: it runs on at the source (the destination, which holds
 *                     its side too, is cancelled when it reports it).
 *   destination, held the catalog places the VM here: it counts as running (not DEAD) and
 *                     MigrateResume is sent (shared with the agent's own resume: it completes
 *                     once the source finished). If it fails the VM is gone: DEAD, the VNE
 *                     FAILED with the reason. Placed elsewhere: MigrateCancel (the waiting VM
 *                     and its disk removed).
 *
 * Everything else of a returning agent is VneHealth's (vne-health.ts), which gets the running
 * list this returns. Commands are idempotent on the agents, so a coordinator that restarts again
 * repeats them safely.
 */
import type { Logger } from '../proto/core/log';
import type { MigratingVm__Output } from '../proto/gen/vnsnap/v1/MigratingVm';
import type { RunningVm__Output } from '../proto/gen/vnsnap/v1/RunningVm';
import { sendOk, type AgentLink } from './agent-link';
import type { Catalog } from './catalog';
import { DeadVms } from './dead-vms';
import type { EventBus } from './events';
import { configureVneFor, placementOf } from './vne-config';

export interface MigrateRecoveryOptions {
  agents: AgentLink;
  catalog: Catalog;
  log: Logger;
  events?: EventBus;
  now: () => number;
  commandTimeoutMs?: number;
}

export class MigrateRecovery {
  private readonly dead: DeadVms;
  /** Settlements under way (tests await them). */
  readonly pending = new Set<Promise<void>>();

  constructor(private readonly o: MigrateRecoveryOptions) {
    this.dead = new DeadVms(o.catalog);
  }

  /**
   * An agent registered with migrations held at their switchover: settle each as the catalog
   * says, and return the running list for VneHealth (held sources being finished left out, held
   * destinations placed here put in).
   */
  joined(agentId: string, running: readonly RunningVm__Output[], migrating: readonly MigratingVm__Output[]): RunningVm__Output[] {
    const out = [...running];
    for (const m of migrating) {
      const vne = this.o.catalog.getVne(m.vne);
      const placed = vne ? placementOf(vne)[m.vm] : undefined;
      const key = (r: RunningVm__Output) => r.vne === m.vne && r.vm === m.vm;
      if (m.outgoing && placed === m.peerAgent) {
        const i = out.findIndex(key);
        if (i >= 0) out.splice(i, 1);
        this.track(this.finish(agentId, m));
      } else if (!m.outgoing && vne && placed === agentId) {
        if (!out.some(key)) out.push({ vne: m.vne, vm: m.vm, epoch: vne.epoch, generation: vne.generation });
        this.track(this.resume(agentId, m));
      } else {
        this.o.log.warn({ agent: agentId, vne: m.vne, vm: m.vm, migration: m.migrationId, placed }, 'a migration held at its switchover that the catalog did not switch: cancelled');
        this.track(this.cancel([agentId], m));
      }
    }
    return out;
  }

  private track(p: Promise<void>): void {
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
  }

  private get opts(): { timeoutMs: number } {
    return { timeoutMs: this.o.commandTimeoutMs ?? 120_000 };
  }

  private async finish(source: string, m: MigratingVm__Output): Promise<void> {
    const { agents, catalog, log } = this.o;
    const ids = { migrationId: m.migrationId, vne: m.vne, vm: m.vm };
    try {
      await sendOk(agents, source, { migrateFinish: { ...ids, toAgent: m.peerAgent } }, this.opts);
    } catch (e) {
      log.warn({ agent: source, ...ids, error: (e as Error).message }, 'finishing a held migration failed: the VM runs on at its source');
      const cur = catalog.getVne(m.vne);
      if (cur && placementOf(cur)[m.vm] === m.peerAgent) catalog.updateVne(cur.name, { placement: { ...placementOf(cur), [m.vm]: source } });
      await this.cancel([m.peerAgent], m);
      this.reconfigure(m.vne);
      return;
    }
    log.info({ agent: source, ...ids, to: m.peerAgent }, 'a held migration finished as the catalog says');
    this.o.events?.publish({ kind: 'migration.complete', vne: m.vne, message: `migration ${m.migrationId}: ${m.vm} ${source} → ${m.peerAgent} finished after a coordinator restart` });
    this.reconfigure(m.vne);
    if (agents.isConnected(m.peerAgent)) await this.resume(m.peerAgent, { ...m, outgoing: false, peerAgent: source });
  }

  private async resume(dest: string, m: MigratingVm__Output): Promise<void> {
    const { agents, catalog, log } = this.o;
    const ids = { migrationId: m.migrationId, vne: m.vne, vm: m.vm };
    try {
      const r = await sendOk(agents, dest, { migrateResume: ids }, this.opts);
      if (r.migrateResume?.diskPath) catalog.disks.put({ vne: m.vne, vm: m.vm, host: dest, path: r.migrateResume.diskPath, bytes: 0, keptUnixMs: 0 });
      log.info({ agent: dest, ...ids }, 'a held migration resumed at its destination');
    } catch (e) {
      const cur = catalog.getVne(m.vne);
      if (!cur || placementOf(cur)[m.vm] !== dest) return;
      const message = `VM ${m.vm} of VNE ${m.vne} did not resume at ${dest} after its migration ${m.migrationId} (${(e as Error).message}): restore a snapshot or stop and start the VNE`;
      this.dead.add(m.vne, [m.vm], dest, this.o.now());
      catalog.updateVne(m.vne, { state: 'VNE_STATE_FAILED', stateReason: message });
      log.warn({ agent: dest, ...ids, error: (e as Error).message }, 'a held migration did not resume: VNE failed');
      this.o.events?.publish({ kind: 'vne.failed', vne: m.vne, agent: dest, message });
    }
  }

  private async cancel(agentIds: readonly string[], m: MigratingVm__Output): Promise<void> {
    const ids = { migrationId: m.migrationId, vne: m.vne, vm: m.vm };
    await Promise.all(
      agentIds.filter((a) => a && this.o.agents.isConnected(a)).map((a) =>
        sendOk(this.o.agents, a, { migrateCancel: ids }, this.opts).catch((e: Error) => this.o.log.warn({ agent: a, ...ids, error: e.message }, 'MigrateCancel of a held migration failed')),
      ),
    );
  }

  /** The VNE's MAC routes as the catalog places its VMs now, to every connected agent of it. */
  private reconfigure(name: string): void {
    const { agents, catalog, log } = this.o;
    const vne = catalog.getVne(name);
    if (!vne) return;
    for (const a of new Set(Object.values(placementOf(vne)))) {
      if (!agents.isConnected(a)) continue;
      sendOk(agents, a, { configureVne: configureVneFor(vne, a, agents) }, this.opts).catch((e: Error) => log.warn({ vne: name, agent: a, error: e.message }, 'ConfigureVne after a held migration failed'));
    }
  }
}
