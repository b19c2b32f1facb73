/**
 * Stopping a VNE while some of its hosts are unreachable (issue 12, docs/operations.md "A lost
 * host"): what an operator expects from `vnsnap vne stop` when a host is down is that the VNE
 * ends stopped, not that the command fails and leaves it FAILED.
 *
 * Rules (stopVmsOf):
 *   - every VM on a connected agent gets StopVm; a VM on an agent that is not connected (or
 *     whose session ends during the StopVm: ERR_AGENT_DISCONNECTED) cannot be stopped now and
 *     is recorded as fenced at the VNE's current generation (catalog fenced_vms): when its
 *     agent registers again it is told to stop it (vne-health.ts), and a later `vne start`
 *     runs the fresh instances under a new generation (nextStartGeneration) so frames of a
 *     fenced instance still running are dropped on the wire;
 *   - any other StopVm failure (a connected agent that could not stop its VM) is an error: the
 *     VNE is FAILED naming those VMs, as before — nothing vouches that such a VM is gone;
 *   - otherwise the VNE is DEFINED; with fenced VMs its state_reason names them and says they
 *     are stopped when their host returns (also in the response's VNE and a `vm.fenced` event).
 * No flag is needed: the unreachable host's VMs cannot be stopped by waiting either, and fencing
 * is what makes the stop safe (docs/cli.md, `vne stop`).
 */
import { VnsnapError, isVnsnapError } from '../proto/core/errors';
import type { Result__Output } from '../proto/gen/vnsnap/v1/Result';
import type { Vne__Output } from '../proto/gen/vnsnap/v1/Vne';
import { sendOk, type AgentLink, type SendOptions } from './agent-link';
import type { Catalog } from './catalog';
import type { EventBus } from './events';
import { vmsByAgent } from './vne-config';

export interface VneStopDeps {
  catalog: Catalog;
  agents: AgentLink;
  events: EventBus;
}

/** The state_reason of a VNE stopped with VMs on unreachable hosts. */
export function fencedStopReason(fenced: readonly { vm: string; agent: string }[]): string {
  const list = [...fenced].sort((x, y) => x.vm.localeCompare(y.vm)).map((f) => `${f.vm} on ${f.agent}`);
  const many = list.length > 1;
  return `stopped without VM${many ? 's' : ''} ${list.join(', ')} (host unreachable): fenced, ${many ? 'they are' : 'it is'} stopped when ${many ? 'their hosts return' : 'its host returns'}`;
}

/** What a stop does with disks (kept-disks.ts): the caller records each StopVm's result. */
export interface StopDisks {
  /** StopVm.discard_disk for every VM. */
  discardDisk: boolean;
  /** Called with each successful StopVm's result. */
  stopped(vm: string, agent: string, r: Result__Output): void;
  /** Where a stopped VM is placed (the host of its kept disk, else the definition's host). */
  placeOf(vm: string, definitionHost: string): string;
  /** A note for the vne.stopped event once every StopVm answered ("2 disks kept"), or ''. */
  summary(): string;
}

/**
 * StopVm for every VM of a started VNE; the VNE ends DEFINED (each VM placed where disks.placeOf
 * says) or FAILED (rules above). Resolves with the VNE as stored.
 */
export async function stopVmsOf(vne: Vne__Output, deps: VneStopDeps, cmd: SendOptions, disks: StopDisks): Promise<Vne__Output> {
  const { agents: link, catalog, events } = deps;
  const failures: string[] = [];
  const fenced: { vm: string; agent: string }[] = [];
  let firstError: unknown;
  await Promise.all(
    [...vmsByAgent(vne)].flatMap(([agent, vms]) =>
      vms.map(async (vm) => {
        if (!link.isConnected(agent)) {
          fenced.push({ vm, agent });
          return;
        }
        await sendOk(link, agent, { stopVm: { vne: vne.name, vm, discardDisk: disks.discardDisk } }, cmd).then((r) => disks.stopped(vm, agent, r), (e: Error) => {
          if (isVnsnapError(e, 'ERR_AGENT_DISCONNECTED')) {
            fenced.push({ vm, agent });
            return;
          }
          failures.push(`${vm} on ${agent}: ${e.message}`);
          firstError ??= e;
        });
      }),
    ),
  );
  if (failures.length > 0) {
    const message = `VNE "${vne.name}" could not be stopped completely: ${failures.sort().join('; ')}`;
    catalog.tx(() => {
      if (fenced.length > 0) catalog.addFenced(vne.name, fenced.map((f) => ({ ...f, generation: vne.generation })));
      catalog.updateVne(vne.name, { state: 'VNE_STATE_FAILED', stateReason: message });
    });
    const code = firstError instanceof VnsnapError ? firstError.code : 'ERR_INTERNAL';
    throw new VnsnapError(code, message);
  }
  const placement: Record<string, string> = {};
  for (const vm of vne.vms) placement[vm.name] = disks.placeOf(vm.name, vm.host);
  const stateReason = fenced.length > 0 ? fencedStopReason(fenced) : '';
  const stored = catalog.tx(() => {
    if (fenced.length > 0) catalog.addFenced(vne.name, fenced.map((f) => ({ ...f, generation: vne.generation })));
    return catalog.updateVne(vne.name, { state: 'VNE_STATE_DEFINED', placement, stateReason });
  });
  for (const f of fenced) events.publish({ kind: 'vm.fenced', vne: vne.name, agent: f.agent, message: `${f.vm} on unreachable ${f.agent} fenced by vne stop (generation ${vne.generation}); stopped when the host returns` });
  const message = [stateReason, disks.summary()].filter((m) => m !== '').join('; ');
  events.publish({ kind: 'vne.stopped', vne: vne.name, ...(message ? { message } : {}) });
  return stored;
}

/**
 * The generation a `vne start` runs the VMs under: the VNE's own, or the next one when an
 * instance fenced at that generation (or later) may still run on an away host — the fresh
 * instances must not share a generation with it.
 */
export function nextStartGeneration(vne: Vne__Output, catalog: Pick<Catalog, 'fencedOf'>): number {
  const live = catalog.fencedOf(vne.name).some((f) => !f.stopped && f.generation >= vne.generation);
  return live ? vne.generation + 1 : vne.generation;
}
