/**
 * The tunnel side of an agent's in-kernel data path (switch/bpf/vnsnap-dp.bpf.c): one ordinary
 * VXLAN device per VNI, which peers' vn_tx sends to and vn_rx reads from, its FDB (MAC → peer),
 * and the punt device where vn_rx hands the switch what it does not carry.
 *
 *   peer ──UDP <port>──▶ vx<h6><vni> (VXLAN VNI, gbp, nolearning, GRO off; vn_rx on ingress) ──▶ the VM's TAP
 *   the VM's TAP (vn_tx) ──redirect, GBP in skb->mark──▶ vx<h6><vni> ──its FDB: MAC → peer──▶ UDP <port>
 *                                              vn_rx's punt: redirect into ──▶ vr<h> ═veth═ vp<h>
 *
 * Why ordinary devices, not one external (collect-metadata) device: an external device
 * allocates a metadata dst for every packet it receives, freed through a hurried RCU callback,
 * which keeps the machine's RCU grace periods running back to back and costs latency-bound
 * guests their throughput (docs/nic-offloads.md, "The external device's receive cost"). An
 * ordinary device allocates nothing per packet; in exchange it has one VNI, sends only through
 * its own FDB (mirrored from the switch's: switch/bpf-dp/fdb-mirror.ts, kernel-tunnel.ts), and
 * keeps no tunnel metadata, so vn_rx reads the VNI, GBP and sending peer from the outer headers
 * (GRO off on the device so no skb mixes two peers' datagrams). All devices of a namespace on
 * one UDP port must be of one kind (the kernel refuses mixing at up), so a legacy external
 * device of this prefix is removed.
 *
 * Guarantees: device names derive from the data path's prefix (one set per agent, within
 * IFNAMSIZ); ensureReceivingSide is idempotent (reuses the punt pair an earlier agent left,
 * writes vn_cfg); ensureVniDevice reuses a VNI's device whose attributes are exactly these
 * (re-attaching vn_rx, rewriting vn_vxdevs), re-creates one that differs, and writes vn_vxdevs
 * only once the device is up with vn_rx on it; VniDevices runs every operation in call order
 * (one queue). A failing step is ERR_DRIVER naming it; removeReceivingSide is quiet when the
 * devices are gone.
 */
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { VnsnapError } from '../../proto/core/errors';
import type { KernelTunnel } from '../../switch/bpf-dp/kernel-tunnel';
import type { DataPathMaps } from '../../switch/bpf-dp/maps';
import { exec } from '../drivers/exec';
import { attachDataPath, type LoadedDataPath } from './loader';
import { disableIpv6 } from '../link-ipv6';

/** The data path's VXLAN UDP port by default: beside Geneve's 6081. Every host of a network must use the same. */
export const DP_VXLAN_PORT = 6082;

export interface ReceivingSide {
  /** The device vn_rx punts into (its ingress): the switch reads it. */
  punt: string;
  /** The punt device's veth peer (carries nothing). */
  puntPeer: string;
  puntIfindex: number;
}

const run = (cmd: string, args: string[]): Promise<string> => exec(cmd, args, { timeoutMs: 60_000 });

const hash = (prefix: string): string => createHash('sha256').update(prefix).digest('hex');

/** The receiving side's device names for data path `prefix` (`legacyVxlan`: the external device of earlier builds). */
export function receivingSideNames(prefix: string): { punt: string; puntPeer: string; legacyVxlan: string } {
  const h = hash(prefix).slice(0, 10);
  return { punt: `vr${h}`, puntPeer: `vp${h}`, legacyVxlan: `vx${h}` };
}

/** VNI `vni`'s VXLAN device of data path `prefix`: vx + 6 hex of the prefix + the VNI in 6 hex (14 characters). */
export function vniDeviceName(prefix: string, vni: number): string {
  return `vx${hash(prefix).slice(0, 6)}${vni.toString(16).padStart(6, '0')}`;
}

/** The pattern of every VNI device of `prefix`. */
const vniDevicePattern = (prefix: string): RegExp => new RegExp(`^vx${hash(prefix).slice(0, 6)}[0-9a-f]{6}$`);

const ifindexOf = (dev: string): Promise<number | undefined> =>
  fsp.readFile(`/sys/class/net/${dev}/ifindex`, 'utf8').then((s) => Number(s.trim()), () => undefined);

interface LinkInfo {
  ifname?: string;
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
}

/** A VNI device's attributes as they must be: ordinary (not external), the VNI, the port, GBP, no learning, no remote or local. */
export interface VniDeviceAttrs {
  kind: string | undefined;
  id: unknown;
  port: unknown;
  gbp: boolean;
  learning: boolean;
  external: boolean;
  remote: unknown;
  local: unknown;
}

/** The attributes `ip -d link` shows for `dev` (undefined when it is gone). */
export async function vniDeviceAttrs(dev: string): Promise<VniDeviceAttrs | undefined> {
  const out = await run('ip', ['-d', '-j', 'link', 'show', 'dev', dev]).catch(() => '[]');
  const l = (JSON.parse(out) as LinkInfo[])[0]?.linkinfo;
  if (!l) return undefined;
  const d = l.info_data ?? {};
  return { kind: l.info_kind, id: d['id'], port: d['port'], gbp: d['gbp'] === true, learning: d['learning'] === true, external: d['external'] === true, remote: d['remote'], local: d['local'] };
}

const wanted = (vni: number, port: number): VniDeviceAttrs => ({ kind: 'vxlan', id: vni, port, gbp: true, learning: false, external: false, remote: undefined, local: undefined });

async function vniDeviceMatches(dev: string, vni: number, port: number): Promise<boolean> {
  return JSON.stringify(await vniDeviceAttrs(dev)) === JSON.stringify(wanted(vni, port));
}

async function step(what: string, f: () => Promise<unknown>): Promise<void> {
  try {
    await f();
  } catch (e) {
    throw new VnsnapError('ERR_DRIVER', `in-kernel data path tunnel: ${what} failed: ${(e as Error).message.split('\n')[0] ?? ''}`, { cause: e });
  }
}

/** Make (or reuse) the punt pair of `dp`, remove a legacy external VXLAN device, and write the punt device to vn_cfg. */
export async function ensureReceivingSide(dp: LoadedDataPath, maps: DataPathMaps): Promise<ReceivingSide> {
  const n = receivingSideNames(dp.prefix);
  if ((await ifindexOf(n.legacyVxlan)) !== undefined) await step(`removing the external device ${n.legacyVxlan} of an earlier build`, () => run('ip', ['link', 'del', n.legacyVxlan]));
  if ((await ifindexOf(n.punt)) === undefined || (await ifindexOf(n.puntPeer)) === undefined) {
    await run('ip', ['link', 'del', n.punt]).catch(() => undefined);
    await step(`creating the punt pair ${n.punt}/${n.puntPeer}`, () => run('ip', ['link', 'add', n.punt, 'type', 'veth', 'peer', 'name', n.puntPeer]));
  }
  for (const d of [n.punt, n.puntPeer]) await disableIpv6(d);
  for (const d of [n.punt, n.puntPeer]) await step(`bringing ${d} up`, () => run('ip', ['link', 'set', d, 'up']));
  const puntIfindex = await ifindexOf(n.punt);
  if (puntIfindex === undefined) throw new VnsnapError('ERR_DRIVER', `in-kernel data path receiving side: ${n.punt} vanished while being set up`);
  maps.setDevices(0, puntIfindex);
  return { punt: n.punt, puntPeer: n.puntPeer, puntIfindex };
}

/** Make (or adopt) VNI `vni`'s device of `dp` on UDP `port`, vn_rx on it, then vn_vxdevs naming it (module comment); its ifindex. */
export async function ensureVniDevice(dp: LoadedDataPath, maps: DataPathMaps, vni: number, port: number): Promise<number> {
  const dev = vniDeviceName(dp.prefix, vni);
  if ((await ifindexOf(dev)) !== undefined && !(await vniDeviceMatches(dev, vni, port))) {
    maps.removeVniDevice(vni);
    await step(`removing ${dev}, whose attributes differ`, () => run('ip', ['link', 'del', dev]));
  }
  if ((await ifindexOf(dev)) === undefined) {
    await step(`creating ${dev} (VXLAN VNI ${vni}, gbp, nolearning, UDP ${port})`, () => run('ip', ['link', 'add', dev, 'type', 'vxlan', 'id', String(vni), 'dstport', String(port), 'gbp', 'nolearning']));
  }
  // GRO off: the device's GRO compares no outer header, so it could merge two peers' datagrams of one inner flow into one skb
  await step(`turning GRO off on ${dev}`, () => run('ethtool', ['-K', dev, 'gro', 'off']));
  await disableIpv6(dev);
  await step(`bringing ${dev} up`, () => run('ip', ['link', 'set', dev, 'up']));
  await attachDataPath(dp, dev, 'vn_rx');
  const ifindex = await ifindexOf(dev);
  if (ifindex === undefined) throw new VnsnapError('ERR_DRIVER', `in-kernel data path tunnel: ${dev} vanished while being set up`);
  maps.setVniDevice(vni, ifindex);
  return ifindex;
}

/** Remove VNI `vni`'s device of `prefix` (vn_vxdevs' entry first, so vn_tx punts rather than sends to a vanishing device). */
export async function removeVniDevice(prefix: string, maps: DataPathMaps | undefined, vni: number): Promise<void> {
  maps?.removeVniDevice(vni);
  await run('ip', ['link', 'del', vniDeviceName(prefix, vni)]).catch(() => undefined);
}

/** The VNI devices of `prefix` present now (names). */
export async function vniDevices(prefix: string): Promise<string[]> {
  const out = await run('ip', ['-j', 'link', 'show', 'type', 'vxlan']).catch(() => '[]');
  const re = vniDevicePattern(prefix);
  return (JSON.parse(out) as LinkInfo[]).map((l) => l.ifname ?? '').filter((n) => re.test(n));
}

/** Remove the receiving side's devices of data path `prefix`: the punt pair and every VNI device (vn_rx goes with its device). */
export async function removeReceivingSide(prefix: string): Promise<void> {
  const n = receivingSideNames(prefix);
  for (const d of [n.legacyVxlan, n.punt, ...(await vniDevices(prefix))]) await run('ip', ['link', 'del', d]).catch(() => undefined);
}

/**
 * The kernel tunnel the switch drives (switch/bpf-dp/kernel-tunnel.ts) on this agent's data
 * path: VNI devices made or adopted, their FDB written with iproute2's `bridge`, in call order.
 */
export class VniDevices implements KernelTunnel {
  private q: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly dp: LoadedDataPath,
    private readonly maps: DataPathMaps,
    private readonly port: number,
  ) {}

  private enqueue(f: () => Promise<unknown>): Promise<void> {
    const p = this.q.then(f).then(() => undefined);
    this.q = p.catch(() => undefined);
    return p;
  }

  addVni(vni: number): Promise<void> {
    return this.enqueue(() => ensureVniDevice(this.dp, this.maps, vni, this.port));
  }

  removeVni(vni: number): Promise<void> {
    return this.enqueue(() => removeVniDevice(this.dp.prefix, this.maps, vni));
  }

  setFdb(vni: number, mac: string, peer: string): Promise<void> {
    const dev = vniDeviceName(this.dp.prefix, vni);
    return this.enqueue(() => step(`the FDB entry ${mac} → ${peer} on ${dev}`, () => run('bridge', ['fdb', 'replace', mac, 'dev', dev, 'dst', peer, 'self', 'permanent'])));
  }

  removeFdb(vni: number, mac: string): Promise<void> {
    const dev = vniDeviceName(this.dp.prefix, vni);
    return this.enqueue(() => run('bridge', ['fdb', 'del', mac, 'dev', dev, 'self']).catch(() => undefined));
  }

  idle(): Promise<void> {
    return this.enqueue(async () => undefined);
  }
}
