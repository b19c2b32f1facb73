/**
 * The vnsnap path of bench:vm-net: the two guests as one VNE of a real deployment (coordinator
 * and two agents with the QEMU driver on namespaced hosts, test/support/cluster.ts), one guest
 * per host, so every frame between them crosses both agents' switches and the Geneve tunnel.
 * The NIC mode is the VMs' extra.nic (tap-vnet: QEMU's TAP with vnet_hdr=on read by a packet
 * socket with PACKET_VNET_HDR; tap: the same with vnet_hdr=off), the tunnel is the one the agent
 * runs (its configuration has no offload switch of its own yet).
 *
 * Also here: background snapshots of the VNE through one client of the coordinator, back to back at most
 * once per interval (bench:vm-net's --snapshot-every-ms) while something else runs (each deleted once complete, so the store does not
 * fill), the frame counters of a VM's switch port (the agent's /metrics), and for nic tap-bpf the
 * agent's in-kernel data path counters: frames its programs carried in the kernel and frames they
 * punted to the switch (so a figure says which path it measured).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import type { QemuDriverSpec__Output } from '../../proto/gen/vnsnap/v1/QemuDriverSpec';
import { BPFFS } from '../../agent/bpf-dp/loader';
import { dataPathPrefix } from '../../agent/drivers/qemu/tap-bpf';
import { STAT_NAMES, type DataPathStats } from '../../switch/bpf-dp/layout';
import { DataPathMaps } from '../../switch/bpf-dp/maps';
import { Cluster, METRICS_PORT } from '../support/cluster';
import { sh } from '../support/netns';
import { instanceDir, QEMU_WORKDIR } from '../support/qemu-vne';
import { FatalWait, until } from '../support/wait';
import { guestPair, type GuestPair, type PairSetup } from './vm-net-measure';
import type { SnapshotLoopRecord } from './snapshot-loop';

export const HOSTS = ['h1', 'h2'] as const;

export interface VnsnapPair {
  vne: string;
  guests: GuestPair;
  /** Stop and delete the VNE (its snapshots too). */
  close(): Promise<void>;
}

/** Define and start VNE `vne` (one guest per host, in order), and wait until both guests answer. */
export async function startVnsnapPair(c: Cluster, vne: string, vni: number, setup: PairSetup): Promise<VnsnapPair> {
  const vms = setup.guests.map((g, i) => {
    // no disk: the VNE definition leaves the key out rather than naming an empty image
    const spec: Partial<QemuDriverSpec__Output> = { ...setup.specOf(g) };
    delete spec.disk;
    return { name: g.name, host: HOSTS[i], macs: [g.mac], driver: { qemu: spec } };
  });
  const file = path.join(c.dir, `${vne}.json`);
  fs.writeFileSync(file, JSON.stringify({ name: vne, vni, vms }, null, 2));
  const close = async (): Promise<void> => {
    await c.cli(['vne', 'stop', vne], 60_000);
    await c.cli(['vne', 'delete', vne, '--with-snapshots'], 60_000);
  };
  try {
    await c.cliJson(['vne', 'define', file]);
    await c.cliJson(['vne', 'start', vne]);
    const socks: string[] = [];
    for (const g of setup.guests) {
      const dir = instanceDir(g.name, vne);
      if (!dir) throw new Error(`VNE ${vne} started but no running QEMU of ${g.name} in ${QEMU_WORKDIR}`);
      const sock = path.join(dir, 'channel.sock');
      await until(`guest ${g.name} answers on its channel`, () => {
        if (!instanceDir(g.name, vne)) throw new FatalWait(`the QEMU of ${g.name} exited`);
        return setup.ready(sock).then(() => true);
      }, { timeoutMs: 120_000, everyMs: 500 });
      socks.push(sock);
    }
    return {
      vne,
      guests: guestPair(setup, socks),
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/** Remove what a crashed run left in the QEMU driver's work directory for these VNEs. */
export function removeInstanceDirs(vnes: readonly string[]): void {
  if (!fs.existsSync(QEMU_WORKDIR)) return;
  for (const d of fs.readdirSync(QEMU_WORKDIR)) if (vnes.some((v) => d.startsWith(`vnqm-${v}_`))) fs.rmSync(path.join(QEMU_WORKDIR, d), { recursive: true, force: true });
}

export interface SnapshotLoopResult {
  completed: number;
  failed: string[];
  /** Every VM's pause in the completed snapshots. */
  pausesMs: number[];
  /** Each completed snapshot end to end, from the create call to its final record. */
  snapshotMs: number[];
  /** Each completed snapshot's delete call. */
  deleteMs: number[];
  /** Every snapshot's [start, end] (Date.now() ms; the end its delete's return, or its final record or failure): when the loop was busy. */
  busyUnixMs: [number, number][];
}

export interface SnapshotLoop {
  /** Stop starting snapshots; resolves when the one under way has ended (and was deleted). */
  stop(): Promise<SnapshotLoopResult>;
}

/**
 * Background snapshots of `vne`, one started every `everyMs`, or when the last one ended if that is
 * later (never two at once), each deleted once complete: one long-lived client of the coordinator
 * in the underlay namespace (snapshot-loop.ts), not a CLI process per call.
 */
export function snapshotLoop(c: Cluster, vne: string, everyMs: number): SnapshotLoop {
  const args = [path.join(__dirname, 'snapshot-loop.js'), '--coordinator', c.coordinatorAddress, ...c.tlsArgs(), '--vne', vne, '--every-ms', String(everyMs)];
  const child = spawn('ip', ['netns', 'exec', c.topo.ns('ul'), process.execPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const r: SnapshotLoopResult = { completed: 0, failed: [], pausesMs: [], snapshotMs: [], deleteMs: [], busyUnixMs: [] };
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const x = JSON.parse(line) as SnapshotLoopRecord;
    r.busyUnixMs.push([x.startUnixMs, x.deletedUnixMs || x.doneUnixMs]);
    if (x.state === 'SNAPSHOT_STATE_COMPLETE' && x.deletedUnixMs > 0) {
      r.completed++;
      r.pausesMs.push(...x.pausesMs);
      r.snapshotMs.push(x.doneUnixMs - x.startUnixMs);
      r.deleteMs.push(x.deletedUnixMs - x.doneUnixMs);
    } else r.failed.push(`${x.state || 'call failed'}: ${x.error}`);
  });
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return {
    stop: async () => {
      child.stdin.end();
      const code = await exited;
      if (code !== 0) r.failed.push(`snapshot loop exited ${String(code)}: ${stderr.trim().split('\n').pop() ?? ''}`);
      return r;
    },
  };
}

/** Frames the switch of `host` read from (rx) and wrote to (tx) VM `vm`'s port. */
export function portFrames(c: Cluster, host: string, vne: string, vm: string): { rx: number; tx: number } {
  const text = c.topo.exec(host, 'curl', ['-sf', '--max-time', '20', `http://127.0.0.1:${METRICS_PORT}/metrics`]);
  const read = (what: string): number => {
    const m = new RegExp(`^vnsnap_switch_port_${what}_frames\\{[^}]*port="${vne}/${vm}/0"[^}]*\\} (\\d+)`, 'm').exec(text);
    if (!m) throw new Error(`no ${what}_frames metric for ${vne}/${vm}/0 on ${host}`);
    return Number(m[1]);
  };
  return { rx: read('rx'), tx: read('tx') };
}

/**
 * Packets the one TAP in `host`'s namespace received from its QEMU (rx) and sent to it (tx): a
 * tap-bpf VM's frames, which the kernel carries past the switch's port (whose counters then
 * stay still).
 */
export function vmTapPackets(c: Cluster, host: string): { rx: number; tx: number } {
  const j = JSON.parse(c.topo.exec(host, 'ip', ['-j', '-s', 'link', 'show', 'type', 'tun'])) as Array<{ ifname: string; stats64?: Record<string, { packets?: number }> }>;
  if (j.length !== 1) throw new Error(`expected one TAP in ${c.topo.ns(host)}, found ${j.map((x) => x.ifname).join(', ') || 'none'}`);
  const [rx, tx] = [j[0]?.stats64?.['rx']?.packets, j[0]?.stats64?.['tx']?.packets];
  if (typeof rx !== 'number' || typeof tx !== 'number') throw new Error(`no packet counters for ${j[0]?.ifname} in ${c.topo.ns(host)}`);
  return { rx, tx };
}

/**
 * The program counters (vn_stats) of the in-kernel data path the agent on `host` loaded for its
 * tap-bpf VMs, or zeros when it has loaded none. The agent runs under `ip netns exec`, whose
 * mount namespace has its own bpf file system, so its pins are read through /proc/<pid>/root.
 */
export function agentDataPathStats(c: Cluster, host: string): DataPathStats {
  const ns = c.topo.ns(host);
  const pid = sh('ip', ['netns', 'pids', ns]).split('\n').filter(Boolean).find((p) => {
    try {
      return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').some((a) => a.endsWith(path.join('agent', 'main.js')));
    } catch {
      return false; // the process ended between the listing and the read
    }
  });
  if (pid === undefined) throw new Error(`no vnsnap-agent process in namespace ${ns}`);
  const dir = path.join(`/proc/${pid}/root`, BPFFS, dataPathPrefix(QEMU_WORKDIR), 'maps');
  if (!fs.existsSync(dir)) return Object.fromEntries(STAT_NAMES.map((n) => [n, 0])) as DataPathStats;
  const m = new DataPathMaps(dir);
  try {
    return m.stats();
  } finally {
    m.close();
  }
}

/** What the data path did between two readings, over the hosts: frames carried in the kernel, punted to the switch. */
export interface DataPathSplit {
  perHost: DataPathStats[];
  /** vn_tx's frames to a peer or a local TAP and vn_rx's to a TAP */
  kernelCarried: number;
  /** vn_tx's and vn_rx's frames handed to the switch */
  punted: number;
  errors: number;
}

export function dataPathSplit(before: readonly DataPathStats[], after: readonly DataPathStats[]): DataPathSplit {
  const perHost = after.map((a, i) => Object.fromEntries(STAT_NAMES.map((n) => [n, a[n] - (before[i]?.[n] ?? 0)])) as DataPathStats);
  const sum = (f: (s: DataPathStats) => number): number => perHost.reduce((x, s) => x + f(s), 0);
  return { perHost, kernelCarried: sum((s) => s.txRemote + s.txLocal + s.rxFast), punted: sum((s) => s.txPunt + s.rxPunt), errors: sum((s) => s.errors) };
}
