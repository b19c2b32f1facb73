/**
 * The three dataplanes of the switch benchmark, all on the same shape:
 *
 *   vm1 ── h1 ══ veth underlay (MTU 1500, 10.77.0.0/24) ══ h2 ── vm2
 *
 * with inner addresses 192.168.77.1/24 (vm1) and 192.168.77.2/24 (vm2), inner MTU 1400 on the
 * VM interfaces for all three (1500 − 50 of Geneve/UDP/IP/Ethernet − vnsnap's 8-byte option,
 * rounded down), VNI 100. Only namespaces of the given Topology are touched.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ChildProcess } from 'node:child_process';
import { stopChild, Topology, waitForJsonLine } from '../support/netns';
import { ControlClient } from './control-client';
import { Endpoints } from './iperf';
import { startOvsHost, OvsHost } from './ovs';
import { collectOutput } from './proc';

export const UNDERLAY = ['10.77.0.1', '10.77.0.2'] as const;
export const UNDERLAY_PREFIX = 24;
export const INNER = ['192.168.77.1', '192.168.77.2'] as const;
export const INNER_PREFIX = 24;
export const INNER_MTU = 1400;
export const UNDERLAY_MTU = 1500;
export const VNI = 100;
export const GENEVE_PORT = 6081;

export type DataplaneName = 'vnsnap' | 'ovs' | 'kernel';

export interface Dataplane {
  name: DataplaneName;
  /** vm1 → vm2 */
  endpoints: Endpoints;
  describe: string;
  /** Stop what topo.destroy() does not (sockets, clients); topo.destroy() follows. */
  close(): Promise<void>;
}

/** h1, h2, vm1, vm2 and the underlay veth u1 (h1) — u2 (h2), optionally addressed. */
function base(topo: Topology, addressUnderlay: boolean): void {
  for (const n of ['h1', 'h2', 'vm1', 'vm2']) topo.addNamespace(n);
  topo.veth(
    'h1', 'u1', 'h2', 'u2',
    addressUnderlay ? `${UNDERLAY[0]}/${UNDERLAY_PREFIX}` : undefined,
    addressUnderlay ? `${UNDERLAY[1]}/${UNDERLAY_PREFIX}` : undefined,
    UNDERLAY_MTU,
  );
}

function endpoints(serverIf: string): Endpoints {
  return { clientNs: 'vm1', serverNs: 'vm2', serverAddr: INNER[1], serverIf };
}

export const VXLAN_PORT = 4789;

/** Does this kernel have the geneve link type? (Some minimal kernels build VXLAN but not GENEVE.) */
export function kernelHasGeneve(topo: Topology, ns: string): boolean {
  const name = 'vnbgtest';
  topo.exec(ns, 'ip', ['link', 'add', name, 'type', 'geneve', 'id', '1', 'remote', '127.0.0.2', 'dstport', String(GENEVE_PORT)], { allowFail: true });
  const ok = topo.exec(ns, 'ip', ['link', 'show', 'dev', name], { allowFail: true }) !== '';
  topo.exec(ns, 'ip', ['link', 'del', name], { allowFail: true });
  return ok;
}

/**
 * (c) Kernel tunnel: per host a geneve device (or, when the kernel lacks CONFIG_GENEVE and
 * tunnel is 'auto', a VXLAN device: same 50-byte overhead, same kernel offload paths) and a veth
 * to the VM, in a Linux bridge.
 */
export async function setupKernel(topo: Topology, tunnel: 'geneve' | 'vxlan' | 'auto' = 'auto'): Promise<Dataplane & { tunnel: 'geneve' | 'vxlan' }> {
  base(topo, true);
  let kind: 'geneve' | 'vxlan' = tunnel === 'vxlan' ? 'vxlan' : 'geneve';
  if (tunnel === 'auto' && !kernelHasGeneve(topo, 'h1')) kind = 'vxlan';
  const dstport = kind === 'geneve' ? GENEVE_PORT : VXLAN_PORT;
  for (const i of [0, 1]) {
    const h = `h${i + 1}`;
    const vm = `vm${i + 1}`;
    const vmIf = `vnbk${i + 1}`;
    const hostIf = `vnbkp${i + 1}`;
    // 1450 = underlay 1500 − 50 bytes of outer Ethernet/IP/UDP/tunnel header (the kernel only
    // derives this itself when given a lower device).
    topo.exec(h, 'ip', ['link', 'add', 'gnv0', 'mtu', String(UNDERLAY_MTU - 50), 'type', kind, 'id', String(VNI), 'remote', UNDERLAY[1 - i] as string, 'dstport', String(dstport)]);
    topo.exec(h, 'ip', ['link', 'add', 'br0', 'type', 'bridge']);
    topo.veth(vm, vmIf, h, hostIf, `${INNER[i]}/${INNER_PREFIX}`, undefined, INNER_MTU);
    topo.exec(h, 'ip', ['link', 'set', 'gnv0', 'master', 'br0']);
    topo.exec(h, 'ip', ['link', 'set', hostIf, 'master', 'br0']);
    topo.exec(h, 'ip', ['link', 'set', 'gnv0', 'up']);
    topo.exec(h, 'ip', ['link', 'set', 'br0', 'up']);
  }
  const mtu = topo.exec('h1', 'cat', ['/sys/class/net/gnv0/mtu'], { allowFail: true }).trim();
  return {
    name: 'kernel',
    tunnel: kind,
    endpoints: endpoints('vnbk2'),
    describe:
      `kernel ${kind} (id ${VNI}, dstport ${dstport}, device MTU ${mtu}) + Linux bridge + veth to the VM (MTU ${INNER_MTU}), default offloads` +
      (kind !== tunnel && tunnel === 'auto' ? ' [this kernel has no geneve link type (CONFIG_GENEVE unset): VXLAN used instead]' : ''),
    close: async () => undefined,
  };
}

/** (b) Open vSwitch, userspace (netdev) datapath, tap ports, OVS-native Geneve tunnel. */
export async function setupOvs(topo: Topology, tmp: string): Promise<Dataplane & { hosts: OvsHost[] }> {
  base(topo, false);
  const hosts: OvsHost[] = [];
  for (const i of [0, 1]) {
    hosts.push(
      await startOvsHost(topo, tmp, {
        host: `h${i + 1}`,
        underlayIf: `u${i + 1}`,
        underlayCidr: `${UNDERLAY[i]}/${UNDERLAY_PREFIX}`,
        peerAddress: UNDERLAY[1 - i] as string,
        vni: VNI,
        tapName: `vnbo${i + 1}`,
        vmNs: `vm${i + 1}`,
        vmCidr: `${INNER[i]}/${INNER_PREFIX}`,
        vmMtu: INNER_MTU,
        tunnel: 'geneve',
      }),
    );
  }
  return {
    name: 'ovs',
    hosts,
    endpoints: endpoints('vnbo2'),
    describe:
      'OVS userspace datapath per host: own ovsdb-server + ovs-vswitchd (rundir/db/logs in a temp dir); ' +
      'brphy(netdev: underlay veth, underlay IP on brphy) + brint(netdev: type=tap port moved to the VM ns, ' +
      `geneve port key=${VNI} remote_ip=peer)`,
    close: async () => undefined,
  };
}

export interface VnsnapDataplane extends Dataplane {
  daemons: ChildProcess[];
  controls: ControlClient[];
  logs: Array<{ stdout: () => string; stderr: () => string }>;
  ready: unknown[];
}

/** (a) vnsnap's switch daemon, one per host, per the daemon contract (config file, ready line, control socket). */
export async function setupVnsnap(topo: Topology, tmp: string, daemonPath: string): Promise<VnsnapDataplane> {
  if (!fs.existsSync(daemonPath)) throw new Error(`switch daemon not found at ${daemonPath} (not built yet?)`);
  base(topo, true);
  const daemons: ChildProcess[] = [];
  const logs: Array<{ stdout: () => string; stderr: () => string }> = [];
  const controls: ControlClient[] = [];
  const ready: unknown[] = [];
  const dp: VnsnapDataplane = {
    name: 'vnsnap',
    endpoints: endpoints('vnbt2'),
    describe: `vnsnap switch daemon per host (${daemonPath}), TAP ports, Geneve over UDP ${GENEVE_PORT}`,
    daemons,
    controls,
    logs,
    ready,
    close: async () => {
      for (const c of controls) c.close();
      // SIGTERM is the daemon's clean stop; topo.destroy() would do the same, but stopping
      // here first lets us notice a daemon that does not exit on SIGTERM.
      await Promise.all(daemons.map((d) => stopChild(d, 5000)));
    },
  };
  try {
    for (const i of [0, 1]) {
      const id = `h${i + 1}`;
      const peer = `h${2 - i}`;
      const ctl = path.join(tmp, `${id}.sock`);
      const config = {
        id,
        tunnel: { address: UNDERLAY[i], port: GENEVE_PORT },
        control: ctl,
        peers: [{ id: peer, address: UNDERLAY[1 - i], port: GENEVE_PORT }],
        vnes: [{ name: 'blue', vni: VNI, generation: 1, peers: [peer] }],
        ports: [{ name: `vm${i + 1}`, vne: 'blue', type: 'tap', ifname: `vnbt${i + 1}` }],
      };
      const file = path.join(tmp, `${id}.json`);
      fs.writeFileSync(file, JSON.stringify(config, null, 2));
      const child = topo.spawn(id, process.execPath, [daemonPath, '--config', file]);
      daemons.push(child);
      const log = collectOutput(child);
      logs.push(log);
      try {
        ready.push(await waitForJsonLine<{ event?: string }>(child, (v) => v.event === 'ready', 20_000));
      } catch (e) {
        throw new Error(`daemon ${id}: ${(e as Error).message}\nstdout: ${log.stdout().slice(-2000)}`);
      }
      controls.push(await ControlClient.connect(ctl));
    }
    // Bring the VM sides up only once both daemons listen: a frame a VM sends (IPv6 DAD,
    // router solicitation) before the peer's tunnel socket exists is lost on the wire.
    for (const i of [0, 1]) topo.moveLink(`h${i + 1}`, `vnbt${i + 1}`, `vm${i + 1}`, `${INNER[i]}/${INNER_PREFIX}`, INNER_MTU);
  } catch (e) {
    await dp.close();
    throw e;
  }
  dp.describe += `; ready lines: ${ready.map((r) => JSON.stringify(r)).join(' ')}`;
  return dp;
}
