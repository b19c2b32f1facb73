/**
 * The in-kernel data path's VXLAN devices of a namespaced host (agent/bpf-dp/rx-side.ts: one
 * vx<hash><vni> per VNI), as the QEMU end-to-end tests read them: how many packets they received,
 * which says the kernel carried the VMs' frames between the hosts (the switches never see them).
 *
 * Guarantees: the sum over every such device of the host (one agent per host); undefined where
 * the host has none (its agent does not run the data path).
 */
import { strict as assert } from 'node:assert';
import type { Topology } from './netns';

/** Packets received by `host`'s data path VXLAN devices; undefined when it has none. */
export function dataPathVxlanRx(topo: Topology, host: string): number | undefined {
  const links = JSON.parse(topo.exec(host, 'ip', ['-s', '-j', '-d', 'link', 'show', 'type', 'vxlan'])) as { ifname: string; stats64: { rx: { packets: number } } }[];
  const vx = links.filter((l) => /^vx[0-9a-f]{12}$/.test(l.ifname));
  assert.ok(new Set(vx.map((l) => l.ifname.slice(0, 8))).size <= 1, `${host}: one agent's data path VXLAN devices, got ${links.map((l) => l.ifname).join(', ')}`);
  return vx.length === 0 ? undefined : vx.reduce((n, l) => n + l.stats64.rx.packets, 0);
}
