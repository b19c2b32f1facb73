/**
 * VneHealth: what the coordinator believes about the VMs of started VNEs while their agents come
 * and go, so that it never reports a VNE whose agent is gone as RUNNING-as-if-fine, nor as
 * FAILED while its VMs may well run on.
 *
 * Rules (docs/control-plane.md, "Agents that leave and come back"):
 *   - agent left (session ended, or no heartbeat for dead_after_ms): every RUNNING (or already
 *     DEGRADED) VNE with a VM placed on it is DEGRADED, its state_reason naming every agent away
 *     (event `vne.degraded` naming this agent and its VMs; a SNAPSHOTTING one gets the event now
 *     and the state when its snapshot aborts); those VMs read UNMANAGED. Snapshots and restores
 *     of a DEGRADED VNE are refused (except a restore that places the lost agents' VMs
 *     elsewhere, which fences them).
 *   - agent (re)registered with the VMs it runs:
 *       * a reported VM the catalog does not place on that agent at the VNE's current generation
 *         (restored elsewhere, fenced, stopped, deleted, or of an older generation) is stopped
 *         (StopVm), its fenced record marked stopped: no two instances of a VM run for one
 *         generation; a fenced instance the agent does not report is gone (the host rebooted,
 *         its process died): its record is marked stopped too; a DEFINED VNE whose stop left
 *         fenced VMs (vne-stop.ts) drops its state_reason once every one is stopped;
 *       * a VM placed there but not reported died while the agent was away: its VNE becomes
 *         FAILED (event `vne.failed` naming the VM) and the VM reads DEAD;
 *       * each RUNNING, DEGRADED or FAILED VNE with reported VMs there is configured again (the
 *         survivors of a VNE that just failed keep their network): ConfigureVne at the current
 *         generation and epoch to that agent (its ports come back there) and, when its tunnel
 *         endpoint changed, to the other connected agents of the VNE; once the agent
 *         acknowledged, a DEGRADED VNE whose agents are all connected is RUNNING again (event
 *         `vne.recovered`), one with agents still away keeps a state_reason naming them.
 *     VNEs with an operation in flight (start, stop, restore, snapshot) are neither fenced nor
 *     configured again: that operation's commands to the lost session failed and it settles the
 *     state (a snapshot aborts); only the died-while-away rule applies to them.
 *   - sweep (dead_after_ms after the coordinator's start): an agent of a RUNNING VNE that has
 *     not registered since is treated as having left.
 *   - a snapshot or restore ending on a VNE with an agent away leaves it DEGRADED, not RUNNING
 *     (afterSnapshot in snapshot-sequencer.ts, the restore's failure path).
 *
 * Which VMs died is kept in the catalog's file (dead-vms.ts): a VM reported DEAD stays DEAD
 * across a coordinator restart, until a start, stop or restore replaces the VNE's VMs.
 */
import { VnsnapError } from '../proto/core/errors';
import type { Logger } from '../proto/core/log';
import type { RunningVm__Output } from '../proto/gen/vnsnap/v1/RunningVm';
import type { VmStatus__Output } from '../proto/gen/vnsnap/v1/VmStatus';
import type { Vne__Output } from '../proto/gen/vnsnap/v1/Vne';
import { sendOk, type AgentLink } from './agent-link';
import type { Catalog } from './catalog';
import { DeadVms } from './dead-vms';
import type { EventBus } from './events';
import { configureVneFor, placementOf, vmsByAgent } from './vne-config';
import { withDiskStatus, type BaseVmStatus } from './vm-disks';

export interface VneHealthOptions {
  catalog: Catalog;
  agents: AgentLink;
  events: EventBus;
  log: Logger;
  /** A start, stop, update, delete, restore or snapshot of this VNE is in flight. */
  busy: (vne: string) => boolean;
  commandTimeoutMs?: number;
  /** The coordinator's clock (ms), for when a VM was found dead. */
  now: () => number;
}

/** "h2 (host of vm2, vm3)" for each disconnected agent of the VNE. */
export function lostAgents(vne: Vne__Output, link: Pick<AgentLink, 'isConnected'>): string[] {
  return [...vmsByAgent(vne)].filter(([a]) => !link.isConnected(a)).map(([a, vms]) => `${a} (host of ${vms.sort().join(', ')})`);
}

/** The state_reason of a DEGRADED VNE: which agents are away, with their VMs. */
export function degradedReason(vne: Vne__Output, link: Pick<AgentLink, 'isConnected'>): string {
  const lost = lostAgents(vne, link);
  return `agent${lost.length > 1 ? 's' : ''} ${lost.join(', ')} disconnected: ${lost.length > 1 ? 'their' : 'its'} VMs are unmanaged; snapshots and restores are refused until ${lost.length > 1 ? 'they are' : 'it is'} back`;
}

/** FAILED_PRECONDITION for an operation refused while the VNE is degraded. */
export function degradedError(vne: Vne__Output, link: Pick<AgentLink, 'isConnected'>, what: string, hint: string): VnsnapError {
  const lost = lostAgents(vne, link);
  const who = lost.length > 0 ? `agent${lost.length > 1 ? 's' : ''} ${lost.join(', ')} ${lost.length > 1 ? 'are' : 'is'} disconnected` : 'an agent of it is disconnected';
  return new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" is degraded: ${who}; ${what} refused until ${lost.length > 1 ? 'they are' : 'it is'} back${hint}`);
}

export class VneHealth {
  private readonly dead: DeadVms;

  constructor(private readonly o: VneHealthOptions) {
    this.dead = new DeadVms(o.catalog);
  }

  /** A new start, stop or restore replaced the VNE's VMs: none is dead any more. */
  forget(vne: string): void {
    this.dead.forget(vne);
  }

  /** The VNE with its per-VM status filled in. */
  describe(vne: Vne__Output): Vne__Output {
    const placement = placementOf(vne);
    const vmStatus: BaseVmStatus[] = vne.vms.map((vm) => {
      const host = placement[vm.name] as string;
      const reachable = this.o.agents.isConnected(host);
      let state: VmStatus__Output['state'] = 'VM_RUN_STATE_RUNNING';
      if (vne.state === 'VNE_STATE_DEFINED') state = 'VM_RUN_STATE_STOPPED';
      else if (this.dead.has(vne.name, vm.name)) state = 'VM_RUN_STATE_DEAD';
      else if (!reachable) state = 'VM_RUN_STATE_UNMANAGED';
      return { vm: vm.name, host, hostReachable: reachable, state };
    });
    return withDiskStatus(this.o.catalog.disks, vne, vmStatus);
  }

  agentLeft(agentId: string, reason: string): void {
    const { catalog, events, log } = this.o;
    for (const vne of catalog.listVnes()) {
      if (vne.state !== 'VNE_STATE_RUNNING' && vne.state !== 'VNE_STATE_DEGRADED' && vne.state !== 'VNE_STATE_SNAPSHOTTING') continue;
      const vms = vmsByAgent(vne).get(agentId);
      if (!vms) continue;
      // A snapshot in flight aborts (its commands to the agent fail) and leaves it DEGRADED.
      if (vne.state !== 'VNE_STATE_SNAPSHOTTING') catalog.updateVne(vne.name, { state: 'VNE_STATE_DEGRADED', stateReason: degradedReason(vne, this.o.agents) });
      const message = `agent ${agentId} disconnected (${reason}): ${vms.sort().join(', ')} unmanaged; snapshots and restores refused until it is back`;
      log.warn({ vne: vne.name, agent: agentId, vms }, 'agent of a running VNE disconnected: VNE degraded');
      events.publish({ kind: 'vne.degraded', vne: vne.name, agent: agentId, message });
    }
  }

  /**
   * Every agent of a RUNNING VNE that is not connected is treated as having left (a coordinator
   * that restarted learns this way, dead_after_ms after its start, which agents did not return).
   */
  sweep(reason: string): void {
    const missing = new Set<string>();
    for (const vne of this.o.catalog.listVnes()) {
      if (vne.state !== 'VNE_STATE_RUNNING') continue;
      for (const a of Object.values(placementOf(vne))) if (!this.o.agents.isConnected(a)) missing.add(a);
    }
    for (const a of [...missing].sort()) this.agentLeft(a, reason);
  }

  agentJoined(agentId: string, running: readonly RunningVm__Output[], endpointChanged = true): void {
    const { catalog, log, events } = this.o;
    const current = new Set<string>();
    for (const r of running) {
      const vne = catalog.getVne(r.vne);
      if (vne && this.o.busy(vne.name)) {
        current.add(`${r.vne}/${r.vm}`);
        continue;
      }
      const placedHere = !!vne && vne.state !== 'VNE_STATE_DEFINED' && placementOf(vne)[r.vm] === agentId;
      const stale = !placedHere || (r.generation !== 0 && r.generation < (vne?.generation ?? 0));
      if (stale) this.fence(agentId, r, vne);
      else current.add(`${r.vne}/${r.vm}`);
    }
    // A fenced instance this agent no longer runs (its host rebooted, its process died) is gone.
    const reported = new Set(running.map((r) => `${r.vne}/${r.vm}`));
    for (const vne of catalog.listVnes()) {
      for (const f of catalog.fencedOf(vne.name)) {
        if (f.agent !== agentId || f.stopped || reported.has(`${vne.name}/${f.vm}`)) continue;
        this.fencedStopped(vne.name, f.vm, agentId);
        events.publish({ kind: 'vm.fenced', vne: vne.name, agent: agentId, message: `the fenced instance of ${f.vm} on ${agentId} (generation ${f.generation}) is gone: ${agentId} registered without it` });
      }
    }
    for (const vne of catalog.listVnes()) {
      if (!['VNE_STATE_RUNNING', 'VNE_STATE_DEGRADED', 'VNE_STATE_SNAPSHOTTING', 'VNE_STATE_FAILED'].includes(vne.state)) continue;
      const mine = vmsByAgent(vne).get(agentId);
      if (!mine) continue;
      const lost = mine.filter((vm) => !current.has(`${vne.name}/${vm}`)).sort();
      const newlyDead = lost.filter((vm) => !this.dead.has(vne.name, vm));
      if (newlyDead.length > 0) {
        this.dead.add(vne.name, newlyDead, agentId, this.o.now());
        const message = `VM${lost.length > 1 ? 's' : ''} ${lost.join(', ')} of VNE ${vne.name} died while agent ${agentId} was away (it registered without ${lost.length > 1 ? 'them' : 'it'}): restore a snapshot or stop and start the VNE`;
        catalog.updateVne(vne.name, { state: 'VNE_STATE_FAILED', stateReason: message });
        log.warn({ vne: vne.name, agent: agentId, lost }, 'VMs lost: VNE failed');
        events.publish({ kind: 'vne.failed', vne: vne.name, agent: agentId, message });
      }
      // The VMs that survived keep their network, whatever became of the others.
      if (lost.length < mine.length && vne.state !== 'VNE_STATE_SNAPSHOTTING' && !this.o.busy(vne.name)) this.reattach(agentId, catalog.getVne(vne.name) ?? vne, endpointChanged);
    }
  }

  /** StopVm for an instance the catalog does not place on this agent at the current generation. */
  private fence(agentId: string, r: RunningVm__Output, vne: Vne__Output | undefined): void {
    const { log, events } = this.o;
    const why = !vne
      ? `VNE ${r.vne} does not exist`
      : vne.state === 'VNE_STATE_DEFINED'
        ? `VNE ${r.vne} is stopped`
        : placementOf(vne)[r.vm] && placementOf(vne)[r.vm] !== agentId
          ? `${r.vm} runs on ${placementOf(vne)[r.vm]} at generation ${vne.generation}`
          : `its generation ${r.generation} is older than the VNE's ${vne.generation}`;
    log.warn({ agent: agentId, vne: r.vne, vm: r.vm, generation: r.generation }, `stale VM instance on a returning agent (${why}); stopping it`);
    sendOk(this.o.agents, agentId, { stopVm: { vne: r.vne, vm: r.vm } }, { timeoutMs: this.o.commandTimeoutMs ?? 120_000 }).then(
      () => {
        if (vne) this.fencedStopped(r.vne, r.vm, agentId);
        events.publish({ kind: 'vm.fenced', vne: r.vne, agent: agentId, message: `stopped the stale instance of ${r.vm} on ${agentId} (generation ${r.generation}): ${why}` });
      },
      (e: Error) => log.warn({ agent: agentId, vne: r.vne, vm: r.vm, error: e.message }, 'StopVm of a stale instance failed; it is fenced by its generation on the wire'),
    );
  }

  /** A fenced instance is gone; a VNE stopped with it (vne-stop.ts) no longer says it is left. */
  private fencedStopped(vne: string, vm: string, agentId: string): void {
    const { catalog } = this.o;
    catalog.markFencedStopped(vne, vm, agentId);
    const v = catalog.getVne(vne);
    if (v?.state === 'VNE_STATE_DEFINED' && v.stateReason && catalog.fencedOf(vne).every((f) => f.stopped)) catalog.updateVne(vne, { stateReason: '' });
  }

  /** ConfigureVne at the current generation and epoch to the returning agent and its peers. */
  private reattach(agentId: string, vne: Vne__Output, endpointChanged: boolean): void {
    const { agents, catalog, log, events } = this.o;
    const opts = { timeoutMs: this.o.commandTimeoutMs ?? 120_000 };
    // The peers already know this agent unless its tunnel endpoint moved (n agents re-registering
    // after a coordinator restart would otherwise cost n² ConfigureVne).
    const peers = endpointChanged ? [...vmsByAgent(vne).keys()].filter((a) => a !== agentId && agents.isConnected(a)) : [];
    for (const p of peers) {
      sendOk(agents, p, { configureVne: configureVneFor(vne, p, agents) }, opts).catch((e: Error) => log.warn({ vne: vne.name, agent: p, error: e.message }, 'ConfigureVne of a peer (returning agent) failed'));
    }
    let body;
    try {
      body = { configureVne: configureVneFor(vne, agentId, agents) };
    } catch (e) {
      log.warn({ vne: vne.name, agent: agentId, error: (e as Error).message }, 'cannot configure the returning agent');
      return;
    }
    sendOk(agents, agentId, body, opts).then(
      () => {
        const now = catalog.getVne(vne.name);
        if (!now || now.state !== 'VNE_STATE_DEGRADED' || this.o.busy(now.name)) return;
        if (lostAgents(now, agents).length > 0) {
          catalog.updateVne(now.name, { stateReason: degradedReason(now, agents) });
          return;
        }
        catalog.updateVne(now.name, { state: 'VNE_STATE_RUNNING' });
        log.info({ vne: now.name, agent: agentId }, 'every agent of the VNE is back: running');
        events.publish({ kind: 'vne.recovered', vne: now.name, agent: agentId, message: `agent ${agentId} is back with its VMs: VNE running` });
      },
      (e: Error) => {
        const now = catalog.getVne(vne.name);
        if (!now || (now.state !== 'VNE_STATE_DEGRADED' && now.state !== 'VNE_STATE_RUNNING') || this.o.busy(now.name)) return;
        const message = `agent ${agentId} came back but could not re-attach VNE ${now.name}: ${e.message}`;
        catalog.updateVne(now.name, { state: 'VNE_STATE_FAILED', stateReason: message });
        log.warn({ vne: now.name, agent: agentId, error: e.message }, 'returning agent not configured: VNE failed');
        events.publish({ kind: 'vne.failed', vne: now.name, agent: agentId, message });
      },
    );
  }
}
