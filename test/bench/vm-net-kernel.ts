/**
 * The kernel path of bench:vm-net: what an operator gets without vnsnap. Two namespaced hosts
 * joined by a veth underlay (MTU 1500); on each a Linux bridge holding a VXLAN device (VNI 100,
 * UDP 4789, to the other host) and a TAP that QEMU opens with `vnet_hdr=on` (vhost off: this
 * kernel has no vhost-net), so the guests' TSO super-frames and partial checksums go into the
 * kernel whole and are segmented (or carried by GSO) at the VXLAN device.
 *
 * The QEMU command line is the QEMU driver's own (agent/drivers/qemu/cmdline.ts qemuCmdline with
 * the same spec, NIC mode tap-vnet, the same TCG RAM padding), so the guests differ from the
 * vnsnap path's only in what is behind the TAP. Each QEMU is started in its own session
 * (setsid), as the driver starts every VM so it outlives the agent: with the kernel's session
 * scheduling groups (sched_autogroup, on by default) a QEMU that shares the bench's session is
 * scheduled in one group with the bench's other children, one in its own session in a group of
 * its own. Before, only the kernel path's QEMUs shared the bench's session: between the same
 * hosts nic=tap-bpf then measured 0.92x the kernel path's TCP, after this change 1.02x with
 * nothing else changed on either path (docs/performance.md, "VM NIC throughput"). Everything is named with the Topology's prefix
 * and lives in its namespaces; close() kills the QEMUs and removes the namespaces and files.
 *
 * With dataplane 'bpf' the frames between known guests go through vnsnap's in-kernel data path
 * instead (switch/bpf/vnsnap-dp.bpf.c, loaded and pinned per host by agent/bpf-dp/loader.ts, its
 * maps written with switch/bpf-dp/maps.ts: both guests' MACs in the FDB, one epoch): tc programs
 * on the TAP's and the VNI's VXLAN device's ingress (an ordinary device as the agent makes it: the
 * VNI, GBP carrying the epoch colour, no learning, GRO off, the peer's MAC in its FDB). What
 * the program does not decide in the kernel (broadcast: ARP) it leaves to the stack behind the
 * TAP (the port has no punt device), here the same Linux bridge and a plain VXLAN on another UDP
 * port, standing in for the switch's flooding; the bench reports how many frames took each way.
 *
 * `object` loads another build of the program than the installed one (vm-net-ab.ts compares two).
 * The other dataplanes are vm-net-ab.ts's variants, each one structural difference between the
 * bridge and the program on its own (KernelDataplane).
 *
 * With `shared` hosts (SharedHosts) the path is built inside existing namespaces, the vnsnap
 * deployment's, over their underlay, and close() removes only its own devices and QEMUs.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { attachDataPath, loadDataPath, unloadDataPath } from '../../agent/bpf-dp/loader';
import { qemuCmdline, qemuVersion, tcgRamPadKib, vmFiles } from '../../agent/drivers/qemu/cmdline';
import type { DataPathStats } from '../../switch/bpf-dp/layout';
import { DataPathMaps } from '../../switch/bpf-dp/maps';
import { stopChild, Topology } from '../support/netns';
import { FatalWait, until } from '../support/wait';
import { guestPair, type Direction, type GuestPair, type PairSetup } from './vm-net-measure';

const UNDERLAY = ['10.79.0.1', '10.79.0.2'] as const;
const VNI = 100;
const VXLAN_PORT = 4789;
const QEMU = 'qemu-system-x86_64';
/**
 * Behind the TAPs: a Linux bridge (the operator's kernel path), or vnsnap's in-kernel data path;
 * the others are the A/B bench's variants, each one structural difference between the two
 * (module comment): 'bridge-clsact' the bridge path with vn_tx on each TAP's ingress and no port
 * in its map (one lookup, TC_ACT_OK: the cost of clsact and a program on the TAP at all);
 * 'bpf-fixed' the program built with VN_FIXED_TUNNEL on an ordinary VXLAN device (fixed VNI and
 * remote, GBP); 'bpf-external' the earlier product path: the program built with
 * VN_EXTERNAL_TUNNEL on one external device (the tunnel key per frame); 'bpf-tx-bridge-rx' that
 * build sends (external device), the bridge receives (an ordinary GBP VXLAN device in it);
 * 'bridge-tx-bpf-rx' the bridge sends (an ordinary GBP VXLAN device in it, the peer's MAC on it),
 * that build's vn_rx receives (external device).
 */
export type KernelDataplane = 'bridge' | 'bpf' | 'bridge-clsact' | 'bpf-fixed' | 'bpf-external' | 'bpf-tx-bridge-rx' | 'bridge-tx-bpf-rx';
export const KERNEL_DATAPLANES: readonly KernelDataplane[] = ['bridge', 'bpf', 'bridge-clsact', 'bpf-fixed', 'bpf-external', 'bpf-tx-bridge-rx', 'bridge-tx-bpf-rx'];
/** The variants that need the VN_EXTERNAL_TUNNEL build (externalTunnelObject). */
export const EXTERNAL_DATAPLANES: readonly KernelDataplane[] = ['bpf-external', 'bpf-tx-bridge-rx', 'bridge-tx-bpf-rx'];
/** The in-kernel data path's UDP port; the bridge's VXLAN (broadcasts on the bpf row) keeps VXLAN_PORT. */
const BPF_VXLAN_PORT = 4790;
/** The epoch both hosts' ports are in (one epoch: no snapshot runs on this row). */
const BPF_EPOCH = 7;
/**
 * The split variants' UDP ports: host i's external device sends to (and listens on) 4791 + i, so
 * the other host receives that direction on an ordinary device of the same port, beside its own
 * external device on the other port (two VXLAN devices of different modes cannot share a port).
 */
const SPLIT_PORT = 4791;
export interface KernelPath {
  guests: GuestPair;
  describe: string;
  /** Frames the sending guest's TAP received from QEMU and the receiving guest's TAP sent to it, so far. */
  frames(dir: Direction): { sent: number; delivered: number };
  /** The bpf row: each host's in-kernel data path counters (frames the kernel carried, frames left to the bridge). */
  bpfStats?(): DataPathStats[];
  close(): Promise<void>;
}

/**
 * Hosts that exist already (the vnsnap deployment's, test/support/cluster.ts): the kernel path is
 * built inside them over their own underlay (its devices and addresses), beside what runs there,
 * and close() removes only what it added. So the kernel path and vnsnap are measured between the
 * same namespaces over the same underlay (the deployment's: a veth to a bridge in a third
 * namespace, where the path's own hosts have one veth between them).
 */
export interface SharedHosts {
  /** Each host's underlay device, in host order (h1, h2). */
  devices: readonly [string, string];
  /** Each host's underlay address, in host order. */
  addresses: readonly [string, string];
}

/** The kernel path's devices on each host; removed by close() on shared hosts. */
const DEVICES = ['vmnbtap', 'vx0', 'br0', 'vxd', 'vxs'];
const isBpf = (d: KernelDataplane): boolean => d !== 'bridge';

/** Build both hosts (or use `shared` ones) and boot one guest on each; resolves once both guests answer on their channels. */
export async function startKernelPath(topo: Topology, dir: string, setup: PairSetup, dataplane: KernelDataplane = 'bridge', shared?: SharedHosts, object?: string): Promise<KernelPath> {
  const qemus: ChildProcess[] = [];
  const maps: DataPathMaps[] = [];
  const underlay = shared ? shared.addresses : UNDERLAY;
  const close = async (): Promise<void> => {
    await Promise.all(qemus.map((q) => stopChild(q, 2000)));
    for (const m of maps.splice(0)) m.close();
    if (shared) for (const h of ['h1', 'h2']) for (const d of DEVICES) topo.exec(h, 'ip', ['link', 'del', d], { allowFail: true });
    else await topo.destroy();
    if (isBpf(dataplane)) for (const h of ['h1', 'h2']) await unloadDataPath(`${topo.prefix}-${h}`);
  };
  try {
    if (!shared) {
      topo.addNamespace('h1');
      topo.addNamespace('h2');
      topo.veth('h1', 'vmnbu1', 'h2', 'vmnbu2', `${UNDERLAY[0]}/24`, `${UNDERLAY[1]}/24`, 1500);
    }
    const version = await qemuVersion(QEMU);
    const socks: string[] = [];
    for (const i of [0, 1] as const) {
      const h = `h${i + 1}`;
      const g = setup.guests[i];
      topo.exec(h, 'ip', ['tuntap', 'add', 'dev', 'vmnbtap', 'mode', 'tap', 'vnet_hdr']);
      topo.exec(h, 'ip', ['link', 'add', 'vx0', 'type', 'vxlan', 'id', String(VNI), 'remote', underlay[1 - i] as string, 'dstport', String(VXLAN_PORT), 'dev', shared ? shared.devices[i] : `vmnbu${i + 1}`]);
      topo.exec(h, 'ip', ['link', 'add', 'br0', 'type', 'bridge']);
      for (const l of ['vx0', 'vmnbtap']) topo.exec(h, 'ip', ['link', 'set', l, 'master', 'br0', 'up']);
      topo.exec(h, 'ip', ['link', 'set', 'br0', 'up']);
      if (isBpf(dataplane)) maps.push(await bpfDataplane(topo, h, i, { remote: underlay[1 - i] as string, underlay: shared ? shared.devices[i] : `vmnbu${i + 1}`, mac: g.mac, peerMac: setup.guests[i === 0 ? 1 : 0].mac }, dataplane, object));
      const files = vmFiles(path.join(dir, `kernel-${g.name}`));
      fs.mkdirSync(files.dir, { recursive: true });
      const args = qemuCmdline({ spec: setup.specOf(g), files, accel: 'tcg', nics: [{ mode: 'tap-vnet', mac: g.mac, target: 'vmnbtap' }], disk: false, incoming: false, ramPadKib: tcgRamPadKib('tcg', version) });
      // detached: its own session, as the QEMU driver starts every VM (process.ts spawn), so
      // both paths' QEMUs are scheduled alike (module comment)
      const q = topo.spawn(h, QEMU, args, { stdio: ['ignore', 'ignore', fs.openSync(files.stderrLog, 'w')], detached: true });
      qemus.push(q);
      socks.push(files.channelSock);
    }
    for (const s of socks) {
      await until(`guest channel ${s}`, async () => {
        if (qemus.some((q) => q.exitCode !== null)) throw new FatalWait(`a kernel-path QEMU exited: ${fs.readFileSync(path.join(path.dirname(s), 'qemu.stderr'), 'utf8').trim()}`);
        if (!fs.existsSync(s)) return undefined;
        return setup.ready(s).then(() => true, () => undefined);
      }, { timeoutMs: 120_000, everyMs: 500 });
    }
    const vxMtu = topo.exec('h1', 'cat', ['/sys/class/net/vx0/mtu']).trim();
    return {
      guests: guestPair(setup, socks),
      frames: (dir) => {
        const [from, to] = dir === 'a->b' ? ['h1', 'h2'] : ['h2', 'h1'];
        return { sent: tapPackets(topo, from, 'rx'), delivered: tapPackets(topo, to, 'tx') };
      },
      ...(isBpf(dataplane) ? { bpfStats: () => maps.map((m) => m.stats()) } : {}),
      describe:
        dataplane !== 'bridge' && dataplane !== 'bpf'
          ? `variant ${dataplane} (vm-net-kernel.ts KernelDataplane) of the bridge and the in-kernel data path`
          : dataplane === 'bpf'
          ? `QEMU (own session) -netdev tap,vnet_hdr=on (vhost off) → vnsnap's in-kernel data path (tc bpf: FDB, epoch colour in VXLAN GBP, redirect) → the VNI's ordinary kernel VXLAN device (VNI ${VNI}, GBP, UDP ${BPF_VXLAN_PORT}, its FDB naming the peer) over a veth underlay (MTU 1500); broadcasts through a Linux bridge + VXLAN (device MTU ${vxMtu})`
          : `QEMU (own session) -netdev tap,vnet_hdr=on (vhost off) on a Linux bridge + kernel VXLAN (VNI ${VNI}, UDP ${VXLAN_PORT}, device MTU ${vxMtu}) over ${shared ? "the vnsnap deployment's hosts and underlay (each host's veth to a bridge in a third namespace; the agents running beside)" : 'a veth underlay (MTU 1500)'}`,
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/** Compile the program with VN_FIXED_TUNNEL (the 'bpf-fixed' variant's build) into `dir` by the install's build script; returns the object's path. */
export function fixedTunnelObject(dir: string): string {
  const out = path.resolve(dir, 'vnsnap-dp-fixed.bpf.o');
  execFileSync('sh', [path.join(__dirname, '..', '..', '..', 'switch', 'bpf', 'build.sh'), out, `-DVN_FIXED_TUNNEL=${VNI}`], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (!fs.existsSync(out)) throw new Error(`the VN_FIXED_TUNNEL build was not made (${out}): clang or libbpf-dev missing`);
  return out;
}

/** Compile the program with VN_EXTERNAL_TUNNEL (EXTERNAL_DATAPLANES' build) into `dir`; returns the object's path. */
export function externalTunnelObject(dir: string): string {
  const out = path.resolve(dir, 'vnsnap-dp-external.bpf.o');
  execFileSync('sh', [path.join(__dirname, '..', '..', '..', 'switch', 'bpf', 'build.sh'), out, '-DVN_EXTERNAL_TUNNEL'], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (!fs.existsSync(out)) throw new Error(`the VN_EXTERNAL_TUNNEL build was not made (${out}): clang or libbpf-dev missing`);
  return out;
}

/** One host's side of the pair for bpfDataplane. */
interface HostSide {
  remote: string;
  underlay: string;
  mac: string;
  peerMac: string;
}

/**
 * vnsnap's in-kernel data path on one host (module comment): loaded under /sys/fs/bpf/<prefix>-<host>,
 * attached to the TAP and the VNI's ordinary VXLAN device (GBP, no learning, GRO off, the peer's
 * MAC in its FDB, vn_vxdevs naming it), the FDB holding both guests;
 * or one of the A/B bench's variants of it (KernelDataplane). `index` is the host's (0, 1).
 */
async function bpfDataplane(topo: Topology, host: string, index: number, side: HostSide, variant: KernelDataplane, object?: string): Promise<DataPathMaps> {
  const ns = topo.ns(host);
  const ip = (...args: string[]): string => topo.exec(host, 'ip', args);
  // an ordinary VXLAN device with GBP, to the peer at `port`: what the bridge path's vx0 is, plus GBP
  const fixedVxlan = (dev: string, port: number): void => void ip('link', 'add', dev, 'type', 'vxlan', 'id', String(VNI), 'remote', side.remote, 'dstport', String(port), 'gbp', 'nolearning', 'dev', side.underlay);
  const split = variant === 'bpf-tx-bridge-rx' || variant === 'bridge-tx-bpf-rx';
  if (variant === 'bpf-fixed') fixedVxlan('vxd', BPF_VXLAN_PORT);
  else if (variant === 'bpf') {
    // the product's device (agent/bpf-dp/rx-side.ts ensureVniDevice) and its FDB entry (VniDevices.setFdb)
    ip('link', 'add', 'vxd', 'type', 'vxlan', 'id', String(VNI), 'dstport', String(BPF_VXLAN_PORT), 'gbp', 'nolearning');
    topo.exec(host, 'ethtool', ['-K', 'vxd', 'gro', 'off']);
    topo.exec(host, 'bridge', ['fdb', 'replace', side.peerMac, 'dev', 'vxd', 'dst', side.remote, 'self', 'permanent']);
  } else ip('link', 'add', 'vxd', 'type', 'vxlan', 'external', 'gbp', 'dstport', String(split ? SPLIT_PORT + index : BPF_VXLAN_PORT));
  ip('link', 'set', 'vxd', 'up');
  if (split) {
    // the bridge's side of the split: an ordinary device in br0 on the port the peer's external device uses
    fixedVxlan('vxs', SPLIT_PORT + 1 - index);
    ip('link', 'set', 'vxs', 'master', 'br0', 'up');
    if (variant === 'bridge-tx-bpf-rx') topo.exec(host, 'bridge', ['fdb', 'replace', side.peerMac, 'dev', 'vxs', 'master', 'static', 'sticky']);
    else topo.exec(host, 'bridge', ['fdb', 'replace', side.mac, 'dev', 'vmnbtap', 'master', 'static', 'sticky']);
  }
  const ifindex = (dev: string): number => Number(topo.exec(host, 'cat', [`/sys/class/net/${dev}/ifindex`]).trim());
  const dp = await loadDataPath(`${topo.prefix}-${host}`, object);
  if (variant !== 'bridge-tx-bpf-rx') await attachDataPath(dp, 'vmnbtap', 'vn_tx', ns);
  if (variant === 'bpf' || variant === 'bpf-fixed' || variant === 'bpf-external' || variant === 'bridge-tx-bpf-rx') await attachDataPath(dp, 'vxd', 'vn_rx', ns);
  const m = new DataPathMaps(dp.mapsDir);
  if (variant === 'bridge-clsact') return m; // no port: vn_tx returns TC_ACT_OK for every frame
  m.setDevices(ifindex('vxd'), 0);
  m.setVniDevice(VNI, ifindex('vxd'));
  m.setPeer(VNI, side.remote);
  // the bridge sends GBP 0 (no mark): the port's epoch 0 is then the frames' colour
  m.setPort(ifindex('vmnbtap'), { vni: VNI, epoch: variant === 'bridge-tx-bpf-rx' ? 0 : BPF_EPOCH, puntIfindex: 0, fast: true, generation: 0 });
  m.setFdb(VNI, side.mac, { ifindex: ifindex('vmnbtap') });
  m.setFdb(VNI, side.peerMac, { peer: side.remote });
  return m;
}

/** The packet counter of a host's guest TAP in one direction (rx: from QEMU, tx: to QEMU). */
function tapPackets(topo: Topology, host: string, dir: 'rx' | 'tx'): number {
  const j = JSON.parse(topo.exec(host, 'ip', ['-j', '-s', 'link', 'show', 'dev', 'vmnbtap'])) as Array<{ stats64?: Record<string, { packets?: number }> }>;
  const n = j[0]?.stats64?.[dir]?.packets;
  if (typeof n !== 'number') throw new Error(`no ${dir} packet counter for vmnbtap on ${host}`);
  return n;
}
