/**
 * The kernel path of bench:vm-net: what an operator gets without vnsnap. Two namespaced hosts
 * joined by a veth underlay (MTU 1500); on each a Linux bridge holding a VXLAN device (VNI 100,
 * UDP 4789, to the other host) and a TAP that QEMU opens with `vnet_hdr=on` (vhost off: this
 * kernel has no vhost-net), so the guests' TSO super-frames and partial checksums go into the
 * kernel whole and are segmented (or carried by GSO) at the VXLAN device.
 *
 * The QEMU command line is the QEMU driver's own (agent/drivers/qemu/cmdline.ts qemuCmdline with
 * the same spec, NIC mode tap-vnet, the same TCG RAM padding), so the guests differ from the
 * vnsnap path's only in what is behind the TAP. Everything is named with the Topology's prefix
 * and lives in its namespaces; close() kills the QEMUs and removes the namespaces and files.
 *
 * With dataplane 'bpf' the bridge is replaced by the prototype of vnsnap's in-kernel data path
 * (bpf/vxlan-gbp-redirect.bpf.c; docs/nic-offloads.md "The remaining gap"): a VXLAN device in
 * external mode with GBP and two tc programs that redirect frames between it and the TAP,
 * colouring each with an epoch. It needs clang (the bench installs it when asked for the row).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { qemuCmdline, qemuVersion, tcgRamPadKib, vmFiles } from '../../agent/drivers/qemu/cmdline';
import { stopChild, Topology } from '../support/netns';
import { FatalWait, until } from '../support/wait';
import { guestPair, type Direction, type GuestPair, type PairSetup } from './vm-net-measure';

const UNDERLAY = ['10.79.0.1', '10.79.0.2'] as const;
const VNI = 100;
const VXLAN_PORT = 4789;
const QEMU = 'qemu-system-x86_64';
/** Behind the TAPs: a Linux bridge (the operator's kernel path), or the in-kernel data path's prototype. */
export type KernelDataplane = 'bridge' | 'bpf';
/** The prototype's program (the source, next to the compiled bench: compiled per host at start). */
const BPF_SOURCE = path.join(__dirname, '..', '..', '..', 'test', 'bench', 'bpf', 'vxlan-gbp-redirect.bpf.c');
/** The epoch colour both hosts' programs use (one epoch: no snapshot runs on the prototype). */
const BPF_EPOCH = 7;

export interface KernelPath {
  guests: GuestPair;
  describe: string;
  /** Frames the sending guest's TAP received from QEMU and the receiving guest's TAP sent to it, so far. */
  frames(dir: Direction): { sent: number; delivered: number };
  close(): Promise<void>;
}

/** Build both hosts and boot one guest on each; resolves once both guests answer on their channels. */
export async function startKernelPath(topo: Topology, dir: string, setup: PairSetup, dataplane: KernelDataplane = 'bridge'): Promise<KernelPath> {
  const qemus: ChildProcess[] = [];
  const close = async (): Promise<void> => {
    await Promise.all(qemus.map((q) => stopChild(q, 2000)));
    await topo.destroy();
  };
  try {
    topo.addNamespace('h1');
    topo.addNamespace('h2');
    topo.veth('h1', 'vmnbu1', 'h2', 'vmnbu2', `${UNDERLAY[0]}/24`, `${UNDERLAY[1]}/24`, 1500);
    const version = await qemuVersion(QEMU);
    const socks: string[] = [];
    for (const i of [0, 1] as const) {
      const h = `h${i + 1}`;
      const g = setup.guests[i];
      topo.exec(h, 'ip', ['tuntap', 'add', 'dev', 'vmnbtap', 'mode', 'tap', 'vnet_hdr']);
      if (dataplane === 'bpf') bpfDataplane(topo, h, UNDERLAY[1 - i] as string, path.join(dir, `${h}.bpf.o`));
      else {
        topo.exec(h, 'ip', ['link', 'add', 'vx0', 'type', 'vxlan', 'id', String(VNI), 'remote', UNDERLAY[1 - i] as string, 'dstport', String(VXLAN_PORT), 'dev', `vmnbu${i + 1}`]);
        topo.exec(h, 'ip', ['link', 'add', 'br0', 'type', 'bridge']);
        for (const l of ['vx0', 'vmnbtap']) topo.exec(h, 'ip', ['link', 'set', l, 'master', 'br0', 'up']);
        topo.exec(h, 'ip', ['link', 'set', 'br0', 'up']);
      }
      const files = vmFiles(path.join(dir, `kernel-${g.name}`));
      fs.mkdirSync(files.dir, { recursive: true });
      const args = qemuCmdline({ spec: setup.specOf(g), files, accel: 'tcg', nics: [{ mode: 'tap-vnet', mac: g.mac, target: 'vmnbtap' }], disk: false, incoming: false, ramPadKib: tcgRamPadKib('tcg', version) });
      const q = topo.spawn(h, QEMU, args, { stdio: ['ignore', 'ignore', fs.openSync(files.stderrLog, 'w')] });
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
      describe:
        dataplane === 'bpf'
          ? `QEMU -netdev tap,vnet_hdr=on (vhost off) → tc bpf (redirect, epoch colour in VXLAN GBP) → kernel VXLAN, external mode (VNI ${VNI}, UDP ${VXLAN_PORT}, device MTU ${vxMtu}) over a veth underlay (MTU 1500); the prototype of the in-kernel data path`
          : `QEMU -netdev tap,vnet_hdr=on (vhost off) on a Linux bridge + kernel VXLAN (VNI ${VNI}, UDP ${VXLAN_PORT}, device MTU ${vxMtu}) over a veth underlay (MTU 1500)`,
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/**
 * The in-kernel data path's prototype on one host (bpf/vxlan-gbp-redirect.bpf.c, compiled here with
 * clang for this host's interface indexes): a VXLAN device in external mode with GBP, and the two
 * tc programs on the TAP's and the VXLAN device's ingress.
 */
function bpfDataplane(topo: Topology, host: string, remote: string, obj: string): void {
  topo.exec(host, 'ip', ['link', 'add', 'vx0', 'type', 'vxlan', 'external', 'gbp', 'dstport', String(VXLAN_PORT)]);
  for (const l of ['vx0', 'vmnbtap']) topo.exec(host, 'ip', ['link', 'set', l, 'up']);
  const ifindex = (dev: string): string => topo.exec(host, 'cat', [`/sys/class/net/${dev}/ifindex`]).trim();
  const remoteHex = `0x${remote.split('.').map((x) => Number(x).toString(16).padStart(2, '0')).join('')}`;
  const defines = [`-DVNI=${VNI}`, `-DREMOTE=${remoteHex}`, `-DEPOCH=${BPF_EPOCH}`, `-DVXIF=${ifindex('vx0')}`, `-DPORTIF=${ifindex('vmnbtap')}`];
  topo.exec(host, 'clang', ['-O2', '-g', '-target', 'bpf', `-I/usr/include/${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu`, ...defines, '-c', BPF_SOURCE, '-o', obj]);
  for (const [dev, section] of [['vmnbtap', 'tc_out'], ['vx0', 'tc_in']] as const) {
    topo.exec(host, 'tc', ['qdisc', 'add', 'dev', dev, 'clsact']);
    topo.exec(host, 'tc', ['filter', 'add', 'dev', dev, 'ingress', 'bpf', 'da', 'obj', obj, 'sec', section]);
  }
}

/** The packet counter of a host's guest TAP in one direction (rx: from QEMU, tx: to QEMU). */
function tapPackets(topo: Topology, host: string, dir: 'rx' | 'tx'): number {
  const j = JSON.parse(topo.exec(host, 'ip', ['-j', '-s', 'link', 'show', 'dev', 'vmnbtap'])) as Array<{ stats64?: Record<string, { packets?: number }> }>;
  const n = j[0]?.stats64?.[dir]?.packets;
  if (typeof n !== 'number') throw new Error(`no ${dir} packet counter for vmnbtap on ${host}`);
  return n;
}
