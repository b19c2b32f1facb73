/**
 * The Xen driver's naming and network plumbing: deterministic domain, bridge and veth names from
 * the VM key, the VM's xl configuration as the driver writes it (from the checked configuration,
 * with resolved image paths and the vifs the driver sets), and the switch's side of each vNIC.
 *
 * Every vNIC is a `vif` whose backend `vifD.N` the hotplug script puts into a bridge the driver
 * made (`vnxb<hash><i>`), together with the bridge end (`vnxg<hash><i>`, GRO on) of a veth pair
 * whose other end (`vnxv<hash><i>`) the switch reads and writes through packet sockets with
 * PACKET_VNET_HDR (vnic-link.ts says why: super-frames cross whole both ways). The bridge and
 * the pair survive the domain and the agent, so a restored domain (new domid, new vifD.N) lands
 * on the same port and an adopting agent reopens its sockets on the same pair.
 */
import { createHash } from 'node:crypto';
import { PacketPort } from '../../../switch/port/fd-port';
import type { Port } from '../../../switch/port/port';
import type { VmStartContext, VmStartSpec } from '../driver';
import type { XenHost } from './xl';
import type { VnicVeth } from './vnic-link';
import type { CheckedXenConfig } from '../../../proto/specs/xen-config';
import { formatXlConfig, xlString } from '../../../proto/specs/xl-config';
import { formatDiskSpec } from '../../../proto/specs/xl-disk';

export interface DiskRef {
  kind: 'file';
  path: string;
}

/** Deterministic short names from the VM key (interface names are at most 15 characters). */
export function xenNames(id: string, nics: number): { domName: string; bridges: string[]; veths: VnicVeth[] } {
  const h = createHash('sha256').update(id).digest('hex').slice(0, 8);
  const domName = `vnsnap-${id.replace(/[^A-Za-z0-9_.-]/g, '-')}`.slice(0, 60);
  const bridges = Array.from({ length: nics }, (_, i) => `vnxb${h}${i}`);
  return { domName, bridges, veths: bridges.map(vethOf) };
}

/** The veth pair beside bridge `vnxb<hash><i>`: `vnxv<hash><i>` (the switch's end), `vnxg<hash><i>` (in the bridge). */
export function vethOf(bridge: string): VnicVeth {
  const tail = bridge.slice('vnxb'.length);
  return { sw: `vnxv${tail}`, br: `vnxg${tail}` };
}


/** Where the checked configuration's images resolved (image-root.ts): what the written config names. */
export interface ResolvedImages {
  kernel?: string;
  ramdisk?: string;
  /** One per checked disk, in order ('' for an empty CD-ROM drive). */
  disks: string[];
}

/**
 * The VM's xl configuration, written from the checked one (proto/specs/xen-config.ts): its
 * entries in order with the kernel, ramdisk and disk targets replaced by their resolved paths
 * and each disk in canonical form, then the driver's `name` and one bridged `vif` per MAC (the
 * given name and vif were dropped by the check). Also the file-backed disk the snapshots copy:
 * the first disk that is not a CD-ROM.
 */
export function xenConfig(checked: CheckedXenConfig, images: ResolvedImages, domName: string, macs: string[], bridges: string[]): { config: string; disk?: DiskRef } {
  const entries = checked.entries.map((e) => {
    if (e.key === 'kernel' && images.kernel) return { key: e.key, value: xlString(images.kernel) };
    if (e.key === 'ramdisk' && images.ramdisk) return { key: e.key, value: xlString(images.ramdisk) };
    if (e.key === 'disk') return { key: e.key, value: { kind: 'list' as const, items: checked.disks.map((d, i) => xlString(formatDiskSpec({ ...d, target: images.disks[i] ?? '' }))) } };
    return e;
  });
  const vif = `vif = [ ${macs.map((m, i) => `'mac=${m},bridge=${bridges[i]}'`).join(', ')} ]\n`;
  const config = formatXlConfig(entries) + `name = "${domName}"\n` + vif;
  const i = checked.disks.findIndex((d) => d.devtype !== 'cdrom' && d.target !== '');
  const diskPath = i >= 0 ? images.disks[i] : undefined;
  return { config, ...(diskPath ? { disk: { kind: 'file' as const, path: diskPath } } : {}) };
}

/**
 * The switch's port on a vNIC's veth end: reads there, writes there through a second, write-only
 * socket (super-frames ending in PSH/FIN/URG split before their last segment, so GRO on the
 * bridge end delivers them in order: switch/port/fd-port.ts).
 */
export const openVnicPort = (portName: string, sw: string): Port => new PacketPort(portName, sw, undefined, { offload: true, writeIfname: sw });

/** The switch's side of each vNIC (openVnicPort, unless `openPort` says otherwise), each bridged with its vif. */
export async function attachPorts(host: XenHost, spec: VmStartSpec, ctx: VmStartContext, openPort: (portName: string, ifname: string) => Port = openVnicPort): Promise<{ ports: Port[]; bridges: string[] }> {
  const names = xenNames(spec.id, spec.macs.length);
  const ports: Port[] = [];
  try {
    for (let i = 0; i < spec.macs.length; i++) {
      const v = names.veths[i] as VnicVeth;
      await host.bridgeUp(names.bridges[i] as string, v);
      ports.push(openPort(ctx.portNames[i] as string, v.sw));
    }
  } catch (e) {
    for (const p of ports) p.close();
    await removeBridges(host, names.bridges);
    throw e;
  }
  return { ports, bridges: names.bridges };
}

/** Remove the bridges (`vnxb<hash><i>`) and the veth pair beside each. */
async function removeBridges(host: XenHost, bridges: string[]): Promise<void> {
  for (const b of bridges) await host.bridgeDown(b, vethOf(b)).catch(() => undefined);
}

export async function detachPorts(host: XenHost, vm: { ports: Port[]; bridges: string[] }): Promise<void> {
  for (const p of vm.ports) p.close();
  await removeBridges(host, vm.bridges);
}
