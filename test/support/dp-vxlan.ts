/**
 * The in-kernel data path's VXLAN device of a namespaced host (agent/bpf-dp/rx-side.ts: vx<hash>),
 * as the QEMU end-to-end tests read it: how many packets it received, which says the kernel
 * carried the VMs' frames between the hosts (the switches never see them).
 *
 * Guarantees: at most one such device per host (an assertion otherwise); undefined where the
 * host has none (its agent does not run the data path).
 */
import { strict as assert } from 'node:assert';
import type { Topology } from './netns';

/** Packets received by `host`'s data path VXLAN device; undefined when it has none. */
export function dataPathVxlanRx(topo: Topology, host: string): number | undefined {
  const links = JSON.parse(topo.exec(host, 'ip', ['-s', '-j', '-d', 'link', 'show', 'type', 'vxlan'])) as { ifname: string; stats64: { rx: { packets: number } } }[];
  const vx = links.filter((l) => /^vx[0-9a-f]{10}$/.test(l.ifname));
  assert.ok(vx.length <= 1, `${host}: one data path VXLAN device, got ${links.map((l) => l.ifname).join(', ')}`);
  return vx[0]?.stats64.rx.packets;
}
