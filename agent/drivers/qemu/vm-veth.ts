/**
 * The veth pair in front of a `nic: 'tap-vnet'` VM's TAP, so TCP super-frames reach the guest
 * whole (docs/nic-offloads.md, "Switch → guest").
 *
 * Why it exists: a super-frame the switch writes straight to the TAP's packet socket is built
 * from a user-supplied virtio_net_hdr, so the kernel marks it SKB_GSO_DODGY and cuts it into MSS
 * segments at the TAP (which never has tx-gso-robust): QEMU and the guest then handle ~45
 * frames instead of one. Through this pair the kernel rebuilds the super-frame itself:
 *
 *   switch ──write──▶ <tap>v<i> ══veth══ <tap>g<i> (GRO) ──tc ingress: mirred redirect──▶ <tap> ──▶ QEMU
 *
 * The DODGY super-frame is segmented at `v` (TSO off there, so veth hands its segments to the
 * peer's NAPI), GRO on `g` coalesces them into a super-frame the kernel built (not DODGY), and a
 * u32 match-all rule redirects everything arriving on `g` to the TAP's transmit, which passes
 * it whole to QEMU when the guest negotiated TSO (and segments it otherwise). The switch keeps
 * reading the TAP itself (PacketPort with writeIfname = `v`).
 *
 * Guarantees: names are the TAP's with its `n<i>` suffix replaced by `v<i>` / `g<i>` (as short
 * as the TAP's, so within IFNAMSIZ, and found by leftovers.ts with the TAPs); the pair gets the
 * TAP's MTU and no IPv6, so it carries only what the switch writes; ensureVmVeth reuses a
 * complete pair (an adopting agent: the pair belongs to the VM's instance, like the TAP, and
 * outlives the agent) and rebuilds an incomplete one; removeVmVeth deletes the pair (the rule
 * goes with `g`) and is quiet when it is already gone. A failing step is ERR_DRIVER naming it.
 */
import * as fsp from 'node:fs/promises';
import { VnsnapError } from '../../../proto/core/errors';
import { DataPathPort } from '../../../switch/bpf-dp/port';
import { PacketPort } from '../../../switch/port/fd-port';
import { exec } from '../exec';
import type { NicMode } from './cmdline';
import { attachTapBpf } from './tap-bpf';
import { disableIpv6 } from '../../link-ipv6';

export interface VmVeth {
  /** The switch's end: it writes here. */
  sw: string;
  /** The peer: GRO on, its ingress redirected to the TAP. */
  gro: string;
}

type Run = (cmd: string, args: string[]) => Promise<unknown>;
const run: Run = (cmd, args) => exec(cmd, args, { timeoutMs: 60_000 });

/** The pair's names for a TAP named `<stem>n<i>` (driver.ts prepare()). */
export function vethNames(tap: string): VmVeth {
  const m = /^(.*)n(\d+)$/.exec(tap);
  if (!m) throw new VnsnapError('ERR_INVALID_ARGUMENT', `TAP ${tap}: not a VM TAP name (<stem>n<index>)`);
  return { sw: `${m[1]}v${m[2]}`, gro: `${m[1]}g${m[2]}` };
}

const linkExists = (name: string): Promise<boolean> =>
  fsp.access(`/sys/class/net/${name}`).then(
    () => true,
    () => false,
  );

async function step(what: string, cmd: string, args: string[]): Promise<void> {
  try {
    await run(cmd, args);
  } catch (e) {
    throw new VnsnapError('ERR_DRIVER', `veth pair for a VM TAP: ${what} failed: ${(e as Error).message}`, { cause: e });
  }
}

/** Is the pair there with its redirect rule (what an earlier agent made)? */
async function complete(v: VmVeth, tap: string): Promise<boolean> {
  if (!(await linkExists(v.sw)) || !(await linkExists(v.gro))) return false;
  const out = await exec('tc', ['filter', 'show', 'dev', v.gro, 'ingress'], { timeoutMs: 60_000 }).catch(() => '');
  return out.includes(`Redirect to device ${tap})`);
}

/** Create the pair and its rule for `tap` (which must exist), replacing any partial one. */
export async function createVmVeth(tap: string): Promise<VmVeth> {
  const v = vethNames(tap);
  await removeVmVeth(tap);
  const mtu = (await fsp.readFile(`/sys/class/net/${tap}/mtu`, 'utf8')).trim();
  await step(`ip link add ${v.sw}`, 'ip', ['link', 'add', v.sw, 'mtu', mtu, 'type', 'veth', 'peer', 'name', v.gro, 'mtu', mtu]);
  try {
    for (const l of [v.sw, v.gro]) await disableIpv6(l);
    // TSO off on the switch's end: veth then hands segments to the peer's GRO (with TSO on it
    // bypasses NAPI and the peer sees 45 single frames).
    await step(`ethtool -K ${v.sw} tso off`, 'ethtool', ['-K', v.sw, 'tso', 'off']);
    await step(`ethtool -K ${v.gro} gro on`, 'ethtool', ['-K', v.gro, 'gro', 'on']);
    await step(`tc qdisc add dev ${v.gro} clsact`, 'tc', ['qdisc', 'add', 'dev', v.gro, 'clsact']);
    await step(`tc filter add dev ${v.gro} ingress (redirect to ${tap})`, 'tc', ['filter', 'add', 'dev', v.gro, 'ingress', 'u32', 'match', 'u32', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev', tap]);
    for (const l of [v.gro, v.sw]) await step(`ip link set ${l} up`, 'ip', ['link', 'set', l, 'up']);
  } catch (e) {
    await removeVmVeth(tap);
    throw e;
  }
  return v;
}

/** The pair of `tap` as it is (an adopted VM's), or a new one when it is missing or partial. */
export async function ensureVmVeth(tap: string): Promise<VmVeth> {
  const v = vethNames(tap);
  return (await complete(v, tap)) ? v : createVmVeth(tap);
}

/** Delete the pair of `tap` (and with it the rule); nothing when it does not exist. */
export async function removeVmVeth(tap: string): Promise<void> {
  const v = vethNames(tap);
  for (const l of [v.sw, v.gro]) {
    if (await linkExists(l)) await run('ip', ['link', 'del', l]).catch(() => undefined); // gone with its peer
  }
}

/**
 * The switch's port on a VM's TAP (driver.ts prepare(), adopt.ts): a packet socket reading the
 * TAP; for tap-vnet with offloads, writing through the TAP's veth pair (made here when missing).
 * The TAP gets no IPv6 (like the pair): the host's own link-local address, router solicitations and
 * MLD reports on it would be frames from the host in the VM's network. For tap-bpf the in-kernel data path's vn_tx is attached to the TAP (tap-bpf.ts) and the port
 * reads and writes the pair's `v` end, where the program hands it the TAP's frames (a
 * DataPathPort: it names the TAP, so a switch running the data path puts it on the fast path).
 * `dataPathPrefix` names the agent's pinned data path (dataPathPrefix()); tap-bpf only.
 */
export async function openTapPort(name: string, tap: string, nic: NicMode, dataPathPrefix?: string): Promise<PacketPort> {
  if (nic !== 'tap-vnet' && nic !== 'tap-bpf') return new PacketPort(name, tap);
  await disableIpv6(tap);
  const v = await ensureVmVeth(tap);
  if (nic === 'tap-vnet') return new PacketPort(name, tap, undefined, { offload: true, writeIfname: v.sw });
  if (dataPathPrefix === undefined) throw new VnsnapError('ERR_INVALID_ARGUMENT', `TAP ${tap}: nic tap-bpf needs the agent's data path prefix`);
  return new DataPathPort(name, v.sw, await attachTapBpf(dataPathPrefix, tap, v.sw));
}
