/**
 * What an agent is told about a VNE (ConfigureVne): VNI, generation, the peer switches (the
 * other agents hosting VMs of the VNE, at the tunnel endpoints they registered, with their
 * in-kernel data path ports) and the static
 * MAC → agent table of the placement (MACs of the agent's own VMs name the agent itself), and
 * the VNE's current epoch (where an agent that re-adopted running VMs attaches their ports).
 */
import { VnsnapError } from '../proto/core/errors';
import type { ConfigureVne } from '../proto/gen/vnsnap/v1/ConfigureVne';
import type { PeerEndpoint } from '../proto/gen/vnsnap/v1/PeerEndpoint';
import type { Vne__Output } from '../proto/gen/vnsnap/v1/Vne';
import type { AgentLink } from './agent-link';

/** VM → agent: the VNE's placement, else each VM's defined host. */
export function placementOf(vne: Vne__Output): Record<string, string> {
  const out: Record<string, string> = {};
  for (const vm of vne.vms) out[vm.name] = vne.placement[vm.name] || vm.host;
  return out;
}

/** The VMs of a VNE grouped by the agent they run on now (placement, else the VM's host), in the VNE's VM order. */
export function vmsByAgent(vne: Vne__Output): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const [vm, a] of Object.entries(placementOf(vne))) out.set(a, [...(out.get(a) ?? []), vm]);
  return out;
}

/**
 * Agent `h` as a peer: its tunnel endpoint, and its in-kernel data path port when it has one
 * (left out when 0, so a peer list without data paths reads as before).
 */
export function peerEndpoint(h: string, link: Pick<AgentLink, 'endpoint'>): PeerEndpoint {
  const ep = link.endpoint(h);
  if (!ep) throw new VnsnapError('ERR_AGENT_DISCONNECTED', `agent "${h}" has never registered: its tunnel endpoint is unknown`);
  return { agentId: h, address: ep.address, port: ep.port, ...(ep.dataPathPort ? { dataPathPort: ep.dataPathPort } : {}) };
}

export function configureVneFor(vne: Vne__Output, agentId: string, link: Pick<AgentLink, 'endpoint'>): ConfigureVne {
  const placement = placementOf(vne);
  const hosts = [...new Set(Object.values(placement))].sort();
  const peers = hosts.filter((h) => h !== agentId).map((h) => peerEndpoint(h, link));
  const macs = vne.vms.flatMap((vm) => vm.macs.map((mac) => ({ mac: mac.toLowerCase(), agentId: placement[vm.name] as string })));
  return { vne: vne.name, vni: vne.vni, generation: vne.generation, epoch: vne.epoch, peers, macs };
}
