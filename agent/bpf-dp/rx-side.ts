/**
 * The receiving side of an agent's in-kernel data path (switch/bpf/vnsnap-dp.bpf.c, vn_rx): the
 * VXLAN device that peers' vn_tx sends to and vn_rx reads from, and the punt device where vn_rx
 * hands the switch what it does not carry.
 *
 *   peer ──UDP <port>──▶ vx<h> (VXLAN external, gbp; vn_rx on ingress) ──▶ the VM's TAP
 *                                              └─ punt: redirect into ──▶ vr<h> ═veth═ vp<h>
 *
 * Why it exists: vn_tx redirects frames for peers to the device named in vn_cfg and vn_rx runs on
 * that device's ingress, so both must exist, in the agent's network namespace, before a port's
 * fast path can be turned on. The VXLAN device is in external (collect-metadata) mode, so one
 * device serves every VNI and peer (the program sets and reads the tunnel key), with GBP, which
 * carries the epoch colour; it listens on its own UDP port beside the Geneve tunnel's.
 *
 * Guarantees: device names derive from the data path's prefix (one set per agent, within
 * IFNAMSIZ); ensureReceivingSide is idempotent — it reuses devices an earlier agent of the same
 * prefix left (they outlive the agent, as its pins and VMs' TAPs do), re-creates a VXLAN device
 * whose port or mode differs, re-attaches vn_rx and rewrites vn_cfg — and returns the ifindexes
 * it wrote; the punt pair carries nothing but punted frames (no IPv6, no addresses). A failing
 * step is ERR_DRIVER naming it; removeReceivingSide is quiet when the devices are gone.
 */
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { VnsnapError } from '../../proto/core/errors';
import type { DataPathMaps } from '../../switch/bpf-dp/maps';
import { exec } from '../drivers/exec';
import { attachDataPath, type LoadedDataPath } from './loader';
import { disableIpv6 } from '../link-ipv6';

/** The data path's VXLAN UDP port by default: beside Geneve's 6081. Every host of a network must use the same. */
export const DP_VXLAN_PORT = 6082;

export interface ReceivingSide {
  /** The VXLAN device (external, gbp): vn_tx sends through it, vn_rx runs on its ingress. */
  vxlan: string;
  /** The device vn_rx punts into (its ingress): the switch reads it. */
  punt: string;
  /** The punt device's veth peer (carries nothing). */
  puntPeer: string;
  vxlanIfindex: number;
  puntIfindex: number;
}

const run = (cmd: string, args: string[]): Promise<string> => exec(cmd, args, { timeoutMs: 60_000 });

/** The receiving side's device names for data path `prefix`. */
export function receivingSideNames(prefix: string): Pick<ReceivingSide, 'vxlan' | 'punt' | 'puntPeer'> {
  const h = createHash('sha256').update(prefix).digest('hex').slice(0, 10);
  return { vxlan: `vx${h}`, punt: `vr${h}`, puntPeer: `vp${h}` };
}

const ifindexOf = (dev: string): Promise<number | undefined> =>
  fsp.readFile(`/sys/class/net/${dev}/ifindex`, 'utf8').then((s) => Number(s.trim()), () => undefined);

interface LinkInfo {
  linkinfo?: { info_kind?: string; info_data?: { external?: boolean; gbp?: boolean; port?: number } };
}

async function vxlanMatches(dev: string, port: number): Promise<boolean> {
  const out = await run('ip', ['-d', '-j', 'link', 'show', 'dev', dev]).catch(() => '[]');
  const d = (JSON.parse(out) as LinkInfo[])[0]?.linkinfo;
  return d?.info_kind === 'vxlan' && d.info_data?.external === true && d.info_data.gbp === true && d.info_data.port === port;
}

async function step(what: string, f: () => Promise<unknown>): Promise<void> {
  try {
    await f();
  } catch (e) {
    throw new VnsnapError('ERR_DRIVER', `in-kernel data path receiving side: ${what} failed: ${(e as Error).message.split('\n')[0] ?? ''}`, { cause: e });
  }
}

/** Make (or reuse) the VXLAN and punt devices of `dp`, attach vn_rx and write their ifindexes to vn_cfg. */
export async function ensureReceivingSide(dp: LoadedDataPath, maps: DataPathMaps, port = DP_VXLAN_PORT): Promise<ReceivingSide> {
  const n = receivingSideNames(dp.prefix);
  if ((await ifindexOf(n.vxlan)) !== undefined && !(await vxlanMatches(n.vxlan, port))) await step(`removing the stale ${n.vxlan}`, () => run('ip', ['link', 'del', n.vxlan]));
  if ((await ifindexOf(n.vxlan)) === undefined) await step(`creating ${n.vxlan} (VXLAN external gbp, UDP ${port})`, () => run('ip', ['link', 'add', n.vxlan, 'type', 'vxlan', 'external', 'gbp', 'dstport', String(port)]));
  if ((await ifindexOf(n.punt)) === undefined || (await ifindexOf(n.puntPeer)) === undefined) {
    await run('ip', ['link', 'del', n.punt]).catch(() => undefined);
    await step(`creating the punt pair ${n.punt}/${n.puntPeer}`, () => run('ip', ['link', 'add', n.punt, 'type', 'veth', 'peer', 'name', n.puntPeer]));
  }
  for (const d of [n.punt, n.puntPeer]) await disableIpv6(d);
  for (const d of [n.vxlan, n.punt, n.puntPeer]) await step(`bringing ${d} up`, () => run('ip', ['link', 'set', d, 'up']));
  await attachDataPath(dp, n.vxlan, 'vn_rx');
  const vxlanIfindex = await ifindexOf(n.vxlan);
  const puntIfindex = await ifindexOf(n.punt);
  if (vxlanIfindex === undefined || puntIfindex === undefined) throw new VnsnapError('ERR_DRIVER', `in-kernel data path receiving side: ${n.vxlan} or ${n.punt} vanished while being set up`);
  maps.setDevices(vxlanIfindex, puntIfindex);
  return { ...n, vxlanIfindex, puntIfindex };
}

/** Remove the receiving side's devices of data path `prefix` (vn_rx goes with its device). */
export async function removeReceivingSide(prefix: string): Promise<void> {
  const n = receivingSideNames(prefix);
  for (const d of [n.vxlan, n.punt]) await run('ip', ['link', 'del', d]).catch(() => undefined);
}
