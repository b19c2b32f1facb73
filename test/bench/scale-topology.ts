/**
 * The VNE scale-bench defines: one VNE spanning every agent, `vmsPerAgent` sim VMs on each.
 * VM i of agent a sends to VM i of the next `peers` agents (a+1, a+2, ... mod agents), so every
 * VM sends to and receives from `peers` VMs on other hosts and every frame crosses a tunnel.
 * With fewer agents than that, the peers are the other VMs of the same agent.
 */
import type { Vne } from '../../proto/gen/vnsnap/v1/Vne';

export interface TopologyOptions {
  vne: string;
  vni: number;
  agents: number;
  vmsPerAgent: number;
  peers: number;
  memoryMib: number;
  dirtyRateMibS: number;
  frameRateHz: number;
}

export function agentId(a: number): string {
  return `agent-${String(a).padStart(3, '0')}`;
}

export function vmName(a: number, i: number): string {
  return `vm-${String(a).padStart(3, '0')}-${String(i).padStart(2, '0')}`;
}

function mac(g: number): string {
  const b = [0x52, 0x54, 0x00, (g >> 16) & 0xff, (g >> 8) & 0xff, g & 0xff];
  return b.map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** Who VM i of agent a sends to. */
export function peersOf(o: Pick<TopologyOptions, 'agents' | 'vmsPerAgent' | 'peers'>, a: number, i: number): string[] {
  const out = new Set<string>();
  if (o.agents > 1) {
    for (let k = 1; k <= o.peers && k < o.agents; k++) out.add(vmName((a + k) % o.agents, i));
  } else {
    for (let k = 1; k <= o.peers && k < o.vmsPerAgent; k++) out.add(vmName(a, (i + k) % o.vmsPerAgent));
  }
  return [...out];
}

export function buildVne(o: TopologyOptions): Vne {
  const vms: NonNullable<Vne['vms']> = [];
  for (let a = 0; a < o.agents; a++) {
    for (let i = 0; i < o.vmsPerAgent; i++) {
      vms.push({
        name: vmName(a, i),
        host: agentId(a),
        macs: [mac(a * o.vmsPerAgent + i + 1)],
        driver: { sim: { memoryMib: o.memoryMib, dirtyRateMibS: o.dirtyRateMibS, frameRateHz: o.frameRateHz, peers: peersOf(o, a, i) } },
      });
    }
  }
  return { name: o.vne, vni: o.vni, vms };
}
