/**
 * The kernel plumbing of one Xen vNIC in dom0: a bridge that the domain's `vifD.N` joins (Xen's
 * `vif-bridge` hotplug script) and a veth pair whose bridge end sits beside the vif while the
 * switch holds a packet socket on the other end (docs/xen.md, "Network").
 *
 *   vifD.N ══ bridge vnxb<h><i> ══ vnxg<h><i> (GRO on) ══veth══ vnxv<h><i> (TSO off) ◀══ switch (PACKET_VNET_HDR)
 *
 * Why a veth pair and not a TAP the switch owns: what the switch writes to a TAP (or to any
 * packet socket) is a super-frame built from a user-supplied virtio_net_hdr, marked
 * SKB_GSO_DODGY, and netback has no tx-gso-robust, so the vif cut every 64 KiB super-frame into
 * MSS segments for the guest. Written to the TSO-less switch end of the pair, the super-frame is
 * segmented there, the bridge end's GRO coalesces the segments into a super-frame the kernel
 * built (not DODGY), and the bridge hands it to the vif whole. The other way, a PV guest's TSO
 * super-frame (netback builds it without DODGY) crosses the bridge and the pair whole and the
 * switch reads it with its virtio_net_hdr. The bridge has two ports, so it never sends back
 * where a frame came from: nothing the switch writes returns to it, and nothing needs
 * isolating.
 *
 * Guarantees: vnicUp is idempotent and repairs (an adopting agent finds the pair and bridge the
 * dead agent left and reuses them; a missing or half-made pair is made again); the pair has no
 * IPv6 (it carries only the guest's and the switch's frames); the bridge is the anchor across a
 * restore (a new vifD.N joins the same bridge). vnicDown removes the pair and the bridge and is
 * quiet when they are gone. A failing step is ERR_DRIVER naming it.
 */
import * as fsp from 'node:fs/promises';
import { VnsnapError } from '../../../proto/core/errors';
import { exec } from '../exec';
import { disableIpv6 } from '../../link-ipv6';

/** The pair of one vNIC: the switch's end and the end in the bridge. */
export interface VnicVeth {
  sw: string;
  br: string;
}

const present = (name: string): Promise<boolean> =>
  fsp.access(`/sys/class/net/${name}`).then(
    () => true,
    () => false,
  );

async function ip(what: string, args: string[]): Promise<void> {
  try {
    await exec('ip', args, { timeoutMs: 60_000 });
  } catch (e) {
    throw new VnsnapError('ERR_DRIVER', `xen vNIC: ${what} failed: ${(e as Error).message}`, { cause: e });
  }
}

async function ethtool(dev: string, feature: string, on: boolean): Promise<void> {
  try {
    await exec('ethtool', ['-K', dev, feature, on ? 'on' : 'off'], { timeoutMs: 60_000 });
  } catch (e) {
    throw new VnsnapError('ERR_DRIVER', `xen vNIC: ethtool -K ${dev} ${feature} failed: ${(e as Error).message}`, { cause: e });
  }
}

/** Make the pair with its offload settings (TSO off where the switch writes, GRO on in the bridge). */
async function makePair(v: VnicVeth): Promise<void> {
  for (const l of [v.sw, v.br]) if (await present(l)) await exec('ip', ['link', 'del', l], { timeoutMs: 60_000 }).catch(() => undefined);
  await ip(`ip link add ${v.sw} (veth, peer ${v.br})`, ['link', 'add', v.sw, 'type', 'veth', 'peer', 'name', v.br]);
  for (const l of [v.sw, v.br]) await disableIpv6(l);
  // TSO off on the switch's end: veth then hands the segments to the peer's NAPI, where GRO
  // coalesces them (with TSO on, the DODGY super-frame would pass whole and be cut at the vif).
  await ethtool(v.sw, 'tso', false);
  await ethtool(v.br, 'gro', true);
}

/** The pair there with GRO on its bridge end (what an earlier vnicUp made)? */
async function pairReady(v: VnicVeth): Promise<boolean> {
  if (!(await present(v.sw)) || !(await present(v.br))) return false;
  const k = await exec('ethtool', ['-k', v.br], { timeoutMs: 60_000 }).catch(() => '');
  return /^generic-receive-offload: on/m.test(k);
}

/** The bridge (made when missing) with the pair's bridge end in it, everything up. */
export async function vnicUp(bridge: string, v: VnicVeth): Promise<void> {
  if (!(await present(bridge))) await ip(`ip link add ${bridge} (bridge)`, ['link', 'add', bridge, 'type', 'bridge', 'forward_delay', '0']);
  if (!(await pairReady(v))) await makePair(v);
  await ip(`ip link set ${v.br} master ${bridge}`, ['link', 'set', v.br, 'master', bridge]);
  for (const l of [v.br, v.sw, bridge]) await ip(`ip link set ${l} up`, ['link', 'set', l, 'up']);
}

/** Remove the pair and the bridge (a vif still in it leaves it); nothing when they are gone. */
export async function vnicDown(bridge: string, v: VnicVeth): Promise<void> {
  for (const l of [v.sw, bridge]) if (await present(l)) await exec('ip', ['link', 'del', l], { timeoutMs: 60_000 }).catch(() => undefined);
}
