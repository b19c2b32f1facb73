/**
 * bench:vm-net (issue 13): the network a VM gets on vnsnap against what an operator gets from the
 * kernel, measured with iperf3 between two guests inside the guests, in one run:
 *
 *   vnsnap   two test guests (docs/guest.md) as one VNE of a real deployment on two namespaced
 *            hosts (coordinator + two agents with the QEMU driver, test/support/cluster.ts), in
 *            the NIC mode the agent ships as the default for QEMU VMs where its in-kernel data
 *            path runs (DEFAULT_NIC_MODE: tap-bpf since 2026-12-06, the agents' default
 *            configuration turning the data path on; tap-vnet before: QEMU's TAP with
 *            vnet_hdr=on, the switch on its host side through a packet socket with
 *            PACKET_VNET_HDR, through both switches and the Geneve tunnel as the agent runs it); also, as extra rows, nic=tap (vnet_hdr=off) and nic=stream (QEMU's
 *            stream netdev to the switch's unix socket); with --bpf also nic=tap-bpf (the agent's
 *            in-kernel data path on QEMU's TAP), with its own during-snapshot figure and the
 *            programs' counters of frames carried in the kernel and punted to the switch (while
 *            the switch does not turn the fast path on, every frame is punted: the figure is then
 *            the switch's path through the program's punt)
 *   kernel   the same guests, same QEMU command line (the driver's qemuCmdline), on QEMU's TAP
 *            with vnet_hdr=on (vhost off) in a Linux bridge per host + kernel VXLAN between the
 *            two namespaces (vm-net-kernel.ts)
 *
 * Per path: iperf3 TCP, one stream each way (a→b and b→a, `runs` runs of `seconds` each),
 * 64-byte-frame UDP a→b as fast as the guest sends (`runs` runs; datagrams received per second),
 * the machine's busy cores per Gbit/s during the TCP runs (/proc/stat), and during one TCP run
 * per direction the busiest threads of the hosts' processes (vm-net-threads.ts). On the vnsnap
 * path also the TCP throughput a→b while the coordinator takes a background snapshot of the VNE
 * every `--snapshot-every-ms` (default once a second), or back to back when one takes longer (one
 * client of the coordinator: snapshot-loop.ts; `snapshot_ms` and `snapshot_busy_share` in the
 * JSON say which), each such run just after an idle run a→b of the same length (the ratio
 * `during_snapshot_over_alternated_idle` holds the snapshot runs against those idle runs, taken
 * beside them; `during_snapshot_over_idle_a_to_b` against the path's idle runs minutes before),
 * and on nic=tap-bpf's. On every path the TCP payload bytes per frame the sending QEMU handed over and
 * the receiving QEMU was given (the switch ports' counters; the kernel path's TAPs').
 *
 *   npm run bench:vm-net -- [--runs N] [--seconds S] [--udp-rate R] [--memory MiB] [--extra-nics LIST] [--tunnel-offload on|off] [--bpf] [--same-hosts] [--snapshot-every-ms N] [--memory-mode migration|tracked] [--json]
 *
 * With --json stdout is exactly one JSON object (progress goes to stderr). Everything it creates
 * is named vmnb* (namespaces, VNEs, directories) and removed at the end, on failure and on
 * SIGINT/SIGTERM; traffic stays inside its namespaces. Run it alone: it uses QEMU, namespaces and
 * most of a 2-core machine.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { QemuDriverSpec__Output } from '../../proto/gen/vnsnap/v1/QemuDriverSpec';
import { buildGuest, channelStatus, ensureAptPackages, ensureQemu, guestImageRoots, kernelCmdline, STATUS_CHANNEL_NAME, type GuestImage } from '../guest/qemu-guest';
import { checkDataPathSupport } from '../../agent/bpf-dp/loader';
import type { NicMode } from '../../agent/drivers/qemu/cmdline';
import { DEFAULT_NIC_MODE } from '../../agent/drivers/qemu/nic-backend';
import type { DataPathStats } from '../../switch/bpf-dp/layout';
import { Cluster } from '../support/cluster';
import { Topology } from '../support/netns';
import { forEachFlag, helpExit, usageExit } from './args';
import { errMsg, killRunning } from './proc';
import { startKernelPath } from './vm-net-kernel';
import { coveredShare, cpuCount, loadAverage, summarize, tcpRun, udpRun, warmUp, type Direction, type GuestPair, type PairGuest, type PairSetup, type Summary, type TcpRun, type UdpRun } from './vm-net-measure';
import { addTicks, busiestThreads, sampleProcesses, sampleThreads, type ThreadSample } from './vm-net-threads';
import { agentDataPathStats, dataPathSplit, HOSTS, portFrames, removeInstanceDirs, snapshotLoop, startVnsnapPair, vmTapPackets, type DataPathSplit, type VnsnapPair } from './vm-net-vnsnap';

const NAME = 'bench:vm-net';
const USAGE = 'usage: npm run bench:vm-net -- [--runs N] [--seconds S] [--udp-rate R] [--memory MiB] [--extra-nics LIST] [--tunnel-offload on|off] [--bpf] [--same-hosts] [--snapshot-every-ms N] [--memory-mode migration|tracked] [--json] [--help]';
const HELP = `${USAGE}

  --runs N        runs per measurement (default 3)
  --seconds S     seconds per iperf3 run (default 10)
  --udp-rate R    iperf3 -b for the 64-byte UDP runs (default 0: as fast as the guest sends)
  --memory MiB    guest memory (default 256)
  --tunnel-offload on|off
                  the agents' tunnelOffload (UDP GSO/GRO on the Geneve tunnel; default: the
                  agent's default, on where the kernel has it)
  --extra-nics L  vnsnap NIC modes measured as extra rows besides the default, comma-separated
                  (tap, stream; default tap,stream; none for no extra row)
  --bpf           also measure vnsnap's in-kernel data path (switch/bpf/, as the agent loads it):
                  (1) between the kernel path's hosts: known guests' frames through tc bpf and
                  VXLAN in external mode with GBP carrying the epoch colour, broadcasts through
                  the bridge (docs/nic-offloads.md); a row "bpf_dataplane" with the programs'
                  counters; (2) through the agents, the vnsnap row's deployment with
                  nic=tap-bpf: fields "vnsnap_tap_bpf" beside "vnsnap" in tcp_mbps, udp64_kpps,
                  cpu_per_gbps, "during_snapshot_tcp_mbps_vnsnap_tap_bpf", and a row
                  "vnsnap_tap_bpf" with the frames the agents' programs carried in the kernel
                  and punted to the switch (fast_path on/off says which path was measured)
  --same-hosts    with --bpf: also run the kernel path between the vnsnap deployment's own
                  hosts, over its underlay (each host's veth to a bridge in a third namespace),
                  beside the nic=tap-bpf guests (the default row's where tap-bpf is the
                  default), and alternate TCP runs between the two pairs
                  (the "kernel" row's hosts have one veth between them, and it runs minutes
                  apart): "same_hosts_paired" with both paths' figures and their ratios
  --snapshot-every-ms N
                  the interval of the background snapshots during the "during snapshot" TCP
                  runs (each just after an idle run of its own: the ratio
                  during_snapshot_over_alternated_idle holds them against those idle runs, and
                  during_snapshot_over_idle_a_to_b against the path's runs minutes before):
                  one started every N ms, or as soon as the previous one ended when it
                  took longer (default 1000, at least 100); the loop starts afresh with each
                  run, so each run's first snapshot starts with it (during_snapshot.every_ms in
                  the JSON; snapshot_ms and snapshot_busy_share, the share of the runs' wall
                  time a snapshot was under way, say whether the loop ran back to back)
  --memory-mode M how vnsnap's guests are snapshotted (qemu extra memory, docs/incremental-memory.md):
                  migration (default: QEMU's background snapshot of the whole RAM) or tracked
                  (the agent saves the blocks the guest wrote since the previous snapshot); the
                  kernel path's guests are the same either way (settings.memory_mode in the JSON)
  --json          one JSON object on stdout:
                  {"tcp_mbps":{"vnsnap":N,"kernel":N},"udp64_kpps":{...},"cpu_per_gbps":{...},
                   "during_snapshot_tcp_mbps":N,"ratios":{...},"tap":{...},"stream":{...},...};
                  "vnsnap" is always the NIC mode the agent ships as the default for QEMU VMs
Needs root, qemu-system-x86_64 (installed if missing) and the test guest (built if missing).`;

interface Options {
  runs: number;
  seconds: number;
  udpRate: string;
  memoryMib: number;
  extraNics: ExtraNic[];
  tunnelOffload?: boolean;
  bpf: boolean;
  sameHosts: boolean;
  /** The snapshot loop's interval during the snapshot runs (snapshot-loop.ts --every-ms). */
  snapshotEveryMs: number;
  /** The vnsnap guests' qemu extra memory (--memory-mode). */
  memoryMode: 'migration' | 'tracked';
  json: boolean;
}

function parseArgs(argv: readonly string[]): Options {
  const o: Options = { runs: 3, seconds: 10, udpRate: '0', memoryMib: 256, extraNics: ['tap', 'stream'], bpf: false, sameHosts: false, snapshotEveryMs: 1000, memoryMode: 'migration', json: false };
  const usage = (msg: string): never => usageExit(NAME, USAGE, msg);
  const int = (v: string, flag: string, min: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) usage(`${flag} wants an integer >= ${min}, got ${v}`);
    return n;
  };
  forEachFlag(argv, usage, (flag, value, arg) => {
    if (flag === '--runs') o.runs = int(value(), flag, 1);
    else if (flag === '--seconds') o.seconds = int(value(), flag, 2);
    else if (flag === '--memory') o.memoryMib = int(value(), flag, 64);
    else if (flag === '--udp-rate') {
      o.udpRate = value();
      if (!/^\d+[KMG]?$/.test(o.udpRate)) usage(`--udp-rate wants an iperf3 rate (e.g. 0, 50M), got ${o.udpRate}`);
    } else if (flag === '--extra-nics') {
      const v = value();
      const list = v === 'none' ? [] : v.split(',');
      for (const n of list) if (!Object.hasOwn(EXTRA_VNE, n)) usage(`--extra-nics takes tap, stream or none, got ${n}`);
      o.extraNics = list as ExtraNic[];
    }
    else if (flag === '--tunnel-offload') {
      const v = value();
      if (v !== 'on' && v !== 'off') usage(`--tunnel-offload takes on or off, got ${v}`);
      o.tunnelOffload = v === 'on';
    } else if (flag === '--bpf') o.bpf = true;
    else if (flag === '--same-hosts') o.sameHosts = true;
    else if (flag === '--snapshot-every-ms') o.snapshotEveryMs = int(value(), flag, 100);
    else if (flag === '--memory-mode') {
      const m = value();
      if (m !== 'migration' && m !== 'tracked') usage(`--memory-mode must be migration or tracked, got "${m}"`);
      o.memoryMode = m as Options['memoryMode'];
    } else if (flag === '--json') o.json = true;
    else if (flag === '--help' || flag === '-h') helpExit(HELP);
    else usage(`unknown argument ${arg}`);
  });
  if (o.sameHosts && !o.bpf) usage('--same-hosts runs beside the nic=tap-bpf row: give --bpf too');
  return o;
}

const GUESTS: [PairGuest, PairGuest] = [
  { name: 'a', cidr: '192.168.89.1/24', mac: '52:54:00:89:00:01' },
  { name: 'b', cidr: '192.168.89.2/24', mac: '52:54:00:89:00:02' },
];
const VNE_VNET = 'vmnbv';
/** The extra rows: NIC mode → [VNE name, VNI, what the path is]. */
const EXTRA_VNE = {
  tap: ['vmnbt', 3090, 'QEMU -netdev tap,vnet_hdr=off (nic=tap) → packet socket → switch → Geneve → switch → packet socket → TAP'],
  stream: ['vmnbs', 3091, 'QEMU -netdev stream (nic=stream) → unix socket → switch → Geneve → switch → unix socket'],
} as const;
type ExtraNic = keyof typeof EXTRA_VNE;
/** The nic=tap-bpf row (--bpf). */
const VNE_BPF = 'vmnbp';
const VNI_BPF = 3092;
/** What each NIC mode's vnsnap row goes through. */
const NIC_PATH: Record<NicMode, string> = {
  'tap-vnet': 'QEMU -netdev tap,vnet_hdr=on (nic=tap-vnet) → packet socket with PACKET_VNET_HDR → switch → Geneve (the tunnel as the agent runs it) → switch → TAP',
  'tap-bpf': "QEMU -netdev tap,vnet_hdr=on (nic=tap-bpf, agents with dataPath on) → tc bpf vn_tx on the TAP → VXLAN-GBP (UDP 6082, kernel GSO/GRO) → vn_rx → the peer's TAP, all in the kernel; what it does not carry (broadcast, unknown, a port being cut, late/early frames) punted into the port's veth end → packet socket → switch → Geneve → switch; the kernel-carried share is in data_path",
  tap: EXTRA_VNE.tap[2],
  stream: EXTRA_VNE.stream[2],
};
const ALL_VNES = [VNE_VNET, EXTRA_VNE.tap[0], EXTRA_VNE.stream[0], VNE_BPF];

/** One path's figures. */
interface PathResult {
  describe: string;
  tcp: Record<Direction, TcpRun[]>;
  udp: UdpRun[];
  threads: Record<Direction, { thread: string; cores: number }[]>;
  /**
   * Per direction: TCP payload bytes per frame the sending guest's QEMU handed over (sent) and per
   * frame the receiving guest's QEMU was given (delivered): at the switch ports on the vnsnap
   * paths, at the TAPs on the kernel path
   */
  bytesPerFrame?: Record<Direction, { sent: number; delivered: number }>;
}

interface Hooks {
  namespaces: string[];
  /** frames the sending VM's NIC backend handed over and the receiving VM's backend was given so far (switch ports, or the kernel path's TAPs) */
  frames?: (dir: Direction) => { sent: number; delivered: number };
}

let say: (s: string) => void = (s) => console.log(s);

async function measure(label: string, pair: GuestPair, o: Options, describe: string, h: Hooks): Promise<PathResult> {
  say(`${label}: warm-up`);
  await warmUp(pair);
  const r: PathResult = { describe, tcp: { 'a->b': [], 'b->a': [] }, udp: [], threads: { 'a->b': [], 'b->a': [] } };
  const frames: Record<Direction, { bytes: number; sent: number; delivered: number }> = { 'a->b': { bytes: 0, sent: 0, delivered: 0 }, 'b->a': { bytes: 0, sent: 0, delivered: 0 } };
  for (let i = 0; i < o.runs; i++) {
    for (const dir of ['a->b', 'b->a'] as const) {
      const t0 = sampleThreads(h.namespaces);
      const f0 = h.frames?.(dir);
      const w0 = Date.now();
      const run = await tcpRun(pair, dir, o.seconds);
      if (f0 && h.frames) {
        const f1 = h.frames(dir);
        frames[dir].bytes += run.bytes;
        frames[dir].sent += f1.sent - f0.sent;
        frames[dir].delivered += f1.delivered - f0.delivered;
      }
      if (i === 0) r.threads[dir] = busiestThreads(t0, sampleThreads(h.namespaces), (Date.now() - w0) / 1000);
      r.tcp[dir].push(run);
      say(`${label}: TCP ${dir} run ${i + 1}: ${run.mbps.toFixed(0)} Mbit/s, ${run.retransmits} retransmits, ${run.busyCores.toFixed(2)} busy cores (${run.cpuPerGbps.toFixed(2)} per Gbit/s)`);
    }
  }
  const per = (d: Direction): { sent: number; delivered: number } => ({ sent: frames[d].bytes / Math.max(1, frames[d].sent), delivered: frames[d].bytes / Math.max(1, frames[d].delivered) });
  if (h.frames) r.bytesPerFrame = { 'a->b': per('a->b'), 'b->a': per('b->a') };
  for (let i = 0; i < o.runs; i++) {
    const u = await udpRun(pair, 'a->b', o.seconds, o.udpRate);
    r.udp.push(u);
    say(`${label}: UDP 64 B a->b run ${i + 1}: ${u.kpps.toFixed(1)} kpps received of ${u.sentKpps.toFixed(1)} sent`);
  }
  return r;
}

const tcpAll = (r: PathResult): TcpRun[] => [...r.tcp['a->b'], ...r.tcp['b->a']];
const tcpSummary = (r: PathResult): Summary => summarize(tcpAll(r).map((x) => x.mbps));
const cpuSummary = (r: PathResult): Summary => summarize(tcpAll(r).map((x) => x.cpuPerGbps));
const udpSummary = (r: PathResult): Summary => summarize(r.udp.map((x) => x.kpps));
const round = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d;

/** The pair every path starts, its guests' NIC mode `nic` (the kernel path sets its own). */
function setupOf(image: GuestImage, o: Options, nic?: string): PairSetup {
  return { guests: GUESTS, specOf: specOf(image, o, nic), ready: (sock) => channelStatus(sock, 8000) };
}

function specOf(image: GuestImage, o: Options, nic?: string): (g: PairGuest) => QemuDriverSpec__Output {
  return (g) => ({
    memoryMib: o.memoryMib,
    cpus: 1,
    kernel: image.kernel,
    initrd: image.initrd,
    append: kernelCmdline({ name: g.name, ip: g.cidr, mtu: 1400, disk: 'none', iperf: true, reportSecs: 60 }),
    disk: '',
    // The memory mode is vnsnap's (the kernel path, no nic given, keeps QEMU's usual RAM).
    extra: { channel: STATUS_CHANNEL_NAME, ...(nic ? { nic } : {}), ...(nic && o.memoryMode !== 'migration' ? { memory: o.memoryMode } : {}) },
  });
}

/** What the in-kernel data path's row needs: bpftool to load it, the object npm install built with clang. */
async function ensureBpf(): Promise<void> {
  ensureAptPackages(['clang', 'bpftool'], ['clang', 'libbpf-dev', 'bpftool']);
  await checkDataPathSupport();
}

/** Cleanups run in reverse order, once, on the normal end, on failure and on SIGINT/SIGTERM. */
const cleanups: (() => Promise<void>)[] = [];
async function cleanup(): Promise<void> {
  while (cleanups.length > 0) {
    const f = cleanups.pop() as () => Promise<void>;
    try {
      await f();
    } catch (e) {
      process.stderr.write(`${NAME}: cleanup: ${errMsg(e)}\n`);
    }
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (o.json) say = (s) => process.stderr.write(`${s}\n`);
  if (process.getuid?.() !== 0) usageExit(NAME, USAGE, 'needs root (namespaces, TAPs, QEMU)');
  let interrupted = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (interrupted) return;
      interrupted = true;
      process.stderr.write(`${NAME}: ${sig}: cleaning up\n`);
      killRunning();
      void cleanup().then(() => process.exit(130));
    });
  }
  ensureQemu();
  const image = buildGuest();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmnb-'));
  cleanups.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
  removeInstanceDirs(ALL_VNES);
  const load0 = loadAverage();
  say(`${NAME}: ${o.runs} runs of ${o.seconds} s, guests ${o.memoryMib} MiB / 1 vCPU (TCG) / MTU 1400, ${cpuCount()} host CPUs, load ${load0.join(' ')}`);

  // (b) kernel: QEMU's TAP with vnet_hdr=on, Linux bridge + VXLAN
  const topo = new Topology('vmnbk');
  const kpath = await startKernelPath(topo, dir, setupOf(image, o));
  cleanups.push(() => kpath.close());
  const kernel = await measure('kernel', kpath.guests, o, kpath.describe, { namespaces: [topo.ns('h1'), topo.ns('h2')], frames: (d) => kpath.frames(d) });
  await (cleanups.pop() as () => Promise<void>)();
  let bpf: PathResult | undefined;
  let bpfStats: DataPathStats[] | undefined;
  if (o.bpf) {
    await ensureBpf();
    const bpath = await startKernelPath(topo, dir, setupOf(image, o), 'bpf');
    cleanups.push(() => bpath.close());
    bpf = await measure('bpf data path', bpath.guests, o, bpath.describe, { namespaces: [topo.ns('h1'), topo.ns('h2')], frames: (d) => bpath.frames(d) });
    bpfStats = bpath.bpfStats?.();
    await (cleanups.pop() as () => Promise<void>)();
  }

  // (a) vnsnap: a real deployment, the default NIC mode (then nic=tap-bpf with --bpf, then the extra NIC modes)
  const c = new Cluster({ prefix: 'vmnbc', hosts: [...HOSTS], drivers: ['qemu'], imageRoots: guestImageRoots(image), heartbeatIntervalMs: 1000, deadAfterMs: 10_000, ...(o.tunnelOffload !== undefined ? { tunnelOffload: o.tunnelOffload } : {}), ...(o.bpf ? { dataPath: true } : {}) });
  cleanups.push(async () => {
    await c.destroy();
    removeInstanceDirs(ALL_VNES);
  });
  await c.start();
  const hostNs = HOSTS.map((h) => c.topo.ns(h));
  // What each host's VM handed over (rx) and was given (tx), read by `read` (on host h1 guest a, on h2 guest b).
  const framesBy = (read: (host: string, vm: string) => { rx: number; tx: number }) => (dir: Direction): { sent: number; delivered: number } => {
    const [a, b] = [read('h1', 'a'), read('h2', 'b')];
    return dir === 'a->b' ? { sent: a.rx, delivered: b.tx } : { sent: b.rx, delivered: a.tx };
  };
  const frames = (vne: string) => framesBy((host, vm) => portFrames(c, host, vne, vm));

  // The row "vnsnap": the NIC mode the agent ships as the default for QEMU VMs.
  const vpair = await startVnsnapPair(c, VNE_VNET, 3089, setupOf(image, o, DEFAULT_NIC_MODE));
  cleanups.push(() => vpair.close());
  // tap-bpf: counted at the VMs' TAPs (the kernel carries the frames past the switch's ports)
  const defaultFrames = DEFAULT_NIC_MODE === 'tap-bpf' ? framesBy((host) => vmTapPackets(c, host)) : frames(VNE_VNET);
  const vnsnap = await measure('vnsnap', vpair.guests, o, NIC_PATH[DEFAULT_NIC_MODE], { namespaces: hostNs, frames: defaultFrames });
  const { during, snaps } = await duringSnapshots(c, vpair, o, 'vnsnap');
  // --same-hosts beside the default row when that is nic=tap-bpf (else beside the tap-bpf row below)
  const paired = o.sameHosts && DEFAULT_NIC_MODE === 'tap-bpf' ? await sameHostsPaired(c, image, o, dir, vpair.guests) : undefined;
  await (cleanups.pop() as () => Promise<void>)();

  // nic=tap-bpf through the agents (unless it is the default, measured above); a failure of this
  // row is reported in its place and the other rows' figures are kept.
  let tapBpf: TapBpfRow | { error: string } | undefined;
  if (o.bpf && DEFAULT_NIC_MODE !== 'tap-bpf') {
    // at the VMs' TAPs: the kernel carries the frames past the switch's ports
    tapBpf = await tapBpfRow(c, image, o, hostNs, framesBy((host) => vmTapPackets(c, host)), dir).catch((e: unknown) => {
      say(`vnsnap nic=tap-bpf: failed: ${errMsg(e)}`);
      return { error: errMsg(e) };
    });
  }

  const extra: Partial<Record<ExtraNic, PathResult>> = {};
  for (const nic of o.extraNics) {
    const [vne, vni, describe] = EXTRA_VNE[nic];
    const pair = await startVnsnapPair(c, vne, vni, setupOf(image, o, nic));
    cleanups.push(() => pair.close());
    extra[nic] = await measure(`vnsnap nic=${nic}`, pair.guests, o, describe, { namespaces: hostNs, frames: frames(vne) });
    await (cleanups.pop() as () => Promise<void>)();
  }
  const load1 = loadAverage();
  await cleanup();
  report(o, { kernel, vnsnap, extra, during, snaps, load: [load0, load1], ...(bpf ? { bpf, bpfStats } : {}), ...(tapBpf ? { tapBpf } : {}), ...(paired ? { paired } : {}) });
}

type Snaps = {
  /** The loop's interval (--snapshot-every-ms). */
  everyMs: number;
  completed: number;
  failed: string[];
  pausesMs: number[];
  /** Each completed snapshot end to end (the create call to its final record), and its delete. */
  snapshotMs: number[];
  deleteMs: number[];
  /** The share of the snapshot runs' wall time (each tcpRun call) during which a snapshot (or its delete) was under way. */
  busyShare: number;
  /** Seconds of the snapshot runs (what `processes` is averaged over). */
  windowS: number;
  /** Seconds of the idle runs between them (what `processesIdle` is averaged over). */
  idleWindowS: number;
  /** Cores per process (hosts and the coordinator's namespace) over all the runs, busiest first: where the snapshots' CPU goes. */
  processes: { thread: string; cores: number }[];
  /** The same processes over the idle TCP runs a->b alternated with the snapshot runs, for comparison. */
  processesIdle: { thread: string; cores: number }[];
  /** The idle TCP runs a->b, one just before each snapshot run. */
  idleRuns: TcpRun[];
};

/**
 * TCP a->b while the coordinator takes a background snapshot of the pair's VNE every
 * `o.snapshotEveryMs`, `o.runs` times, each snapshot run just after an idle run of the same
 * length (idle, snapshots, idle, snapshots, …): the machine moves a run's throughput by ±20 %
 * within minutes, so the idle figure the snapshot runs are held against is taken beside them,
 * pair by pair, as well as in the path's own idle runs minutes before.
 */
async function duringSnapshots(c: Cluster, pair: VnsnapPair, o: Options, label: string): Promise<{ during: TcpRun[]; snaps: Snaps }> {
  const during: TcpRun[] = [];
  const snaps: Snaps = { everyMs: o.snapshotEveryMs, completed: 0, failed: [], pausesMs: [], snapshotMs: [], deleteMs: [], busyShare: 0, windowS: 0, idleWindowS: 0, processes: [], processesIdle: [], idleRuns: [] };
  const namespaces = [...HOSTS.map((h) => c.topo.ns(h)), c.topo.ns('ul')];
  const idleTicks: ThreadSample = new Map();
  const duringTicks: ThreadSample = new Map();
  const runWindows: [number, number][] = [];
  const busy: [number, number][] = [];
  for (let i = 0; i < o.runs; i++) {
    const i0 = sampleProcesses(namespaces);
    const w0 = Date.now();
    const idle = await tcpRun(pair.guests, 'a->b', o.seconds);
    addTicks(idleTicks, i0, sampleProcesses(namespaces));
    snaps.idleWindowS += (Date.now() - w0) / 1000;
    snaps.idleRuns.push(idle);
    say(`${label}: TCP a->b idle, before snapshot run ${i + 1}: ${idle.mbps.toFixed(0)} Mbit/s, ${idle.retransmits} retransmits, ${idle.busyCores.toFixed(2)} busy cores`);
    const p0 = sampleProcesses(namespaces);
    const loop = snapshotLoop(c, pair.vne, o.snapshotEveryMs);
    const r0 = Date.now();
    const run = await tcpRun(pair.guests, 'a->b', o.seconds).finally(async () => {
      runWindows.push([r0, Date.now()]);
      const s = await loop.stop();
      busy.push(...s.busyUnixMs);
      snaps.completed += s.completed;
      snaps.failed.push(...s.failed);
      snaps.pausesMs.push(...s.pausesMs);
      snaps.snapshotMs.push(...s.snapshotMs);
      snaps.deleteMs.push(...s.deleteMs);
      addTicks(duringTicks, p0, sampleProcesses(namespaces));
      snaps.windowS += (Date.now() - r0) / 1000;
    });
    during.push(run);
    say(`${label}: TCP a->b during snapshots, run ${i + 1}: ${run.mbps.toFixed(0)} Mbit/s, ${run.retransmits} retransmits, ${run.busyCores.toFixed(2)} busy cores (${(run.mbps / (idle.mbps || 1)).toFixed(3)}x the idle run before it; ${snaps.completed} snapshots so far, ${snaps.failed.length} failed)`);
  }
  snaps.busyShare = coveredShare(busy, runWindows);
  snaps.processesIdle = busiestThreads(new Map(), idleTicks, snaps.idleWindowS);
  snaps.processes = busiestThreads(new Map(), duringTicks, snaps.windowS);
  return { during, snaps };
}

interface Paired {
  describe: string;
  tapBpf: Record<Direction, TcpRun[]>;
  kernel: Record<Direction, TcpRun[]>;
}

/**
 * --same-hosts: the kernel path built inside the deployment's hosts over their underlay, beside the
 * running nic=tap-bpf guests (separate L2 networks: VNE vs bridge + VXLAN 100), and TCP runs
 * alternating between the two pairs, which goes first swapped every round, so both paths meet
 * the same load on a shared machine.
 */
async function sameHostsPaired(c: Cluster, image: GuestImage, o: Options, dir: string, tapBpf: GuestPair): Promise<Paired> {
  const sdir = path.join(dir, 'same-hosts');
  fs.mkdirSync(sdir);
  const k = await startKernelPath(c.topo, sdir, setupOf(image, o), 'bridge', { devices: [`${c.topo.prefix}u0`, `${c.topo.prefix}u1`], addresses: [c.hostAddress('h1'), c.hostAddress('h2')] });
  cleanups.push(() => k.close());
  try {
    await warmUp(k.guests);
    const r: Paired = { describe: k.describe, tapBpf: { 'a->b': [], 'b->a': [] }, kernel: { 'a->b': [], 'b->a': [] } };
    for (let i = 0; i < o.runs; i++) {
      for (const dir of ['a->b', 'b->a'] as const) {
        const order: ['tapBpf' | 'kernel', GuestPair][] = i % 2 === 0 ? [['tapBpf', tapBpf], ['kernel', k.guests]] : [['kernel', k.guests], ['tapBpf', tapBpf]];
        for (const [which, pair] of order) {
          const run = await tcpRun(pair, dir, o.seconds);
          r[which][dir].push(run);
          say(`same hosts, alternating: ${which === 'tapBpf' ? 'nic=tap-bpf' : 'kernel path'} TCP ${dir} run ${i + 1}: ${run.mbps.toFixed(0)} Mbit/s, ${run.busyCores.toFixed(2)} busy cores (${run.cpuPerGbps.toFixed(2)} per Gbit/s)`);
        }
      }
    }
    return r;
  } finally {
    await (cleanups.pop() as () => Promise<void>)();
  }
}

interface TapBpfRow {
  path: PathResult;
  during: TcpRun[];
  snaps: Snaps;
  /** What the agents' programs did over the row (all its runs): frames carried in the kernel, punted to the switch. */
  dataPath: DataPathSplit;
  /** The same over the during-snapshot runs only (and the idle run before them). */
  duringSplit: DataPathSplit;
  /** --same-hosts: TCP runs alternating with the kernel path's between the same hosts. */
  paired?: Paired;
}

/** The nic=tap-bpf row: the vnsnap row's guests and hosts, QEMU started by the agents' driver with nic tap-bpf. */
async function tapBpfRow(c: Cluster, image: GuestImage, o: Options, hostNs: string[], frames: Hooks['frames'], dir: string): Promise<TapBpfRow> {
  const pair = await startVnsnapPair(c, VNE_BPF, VNI_BPF, setupOf(image, o, 'tap-bpf'));
  cleanups.push(() => pair.close());
  try {
    const s0 = HOSTS.map((h) => agentDataPathStats(c, h));
    const path = await measure('vnsnap nic=tap-bpf', pair.guests, o, NIC_PATH['tap-bpf'], { namespaces: hostNs, ...(frames ? { frames } : {}) });
    const s1 = HOSTS.map((h) => agentDataPathStats(c, h));
    const { during, snaps } = await duringSnapshots(c, pair, o, 'vnsnap nic=tap-bpf');
    const s2 = HOSTS.map((h) => agentDataPathStats(c, h));
    const dataPath = dataPathSplit(s0, s2);
    const duringSplit = dataPathSplit(s1, s2);
    say(`vnsnap nic=tap-bpf: during the snapshot runs the programs carried ${duringSplit.kernelCarried} frames and punted ${duringSplit.punted} (${snaps.completed} snapshots)`);
    const paired = o.sameHosts ? await sameHostsPaired(c, image, o, dir, pair.guests) : undefined;
    say(`vnsnap nic=tap-bpf: the agents' programs carried ${dataPath.kernelCarried} frames in the kernel and punted ${dataPath.punted} to the switch (${dataPath.errors} errors)`);
    return { path, during, snaps, dataPath, duringSplit, ...(paired ? { paired } : {}) };
  } finally {
    await (cleanups.pop() as () => Promise<void>)();
  }
}

interface Results {
  kernel: PathResult;
  vnsnap: PathResult;
  extra: Partial<Record<ExtraNic, PathResult>>;
  during: TcpRun[];
  snaps: Snaps;
  load: [number, number, number][];
  bpf?: PathResult;
  /** The bpf row's programs' counters, per host. */
  bpfStats?: DataPathStats[] | undefined;
  tapBpf?: TapBpfRow | { error: string };
  /** --same-hosts run beside the default row (when the default is nic=tap-bpf). */
  paired?: Paired;
}

function pathJson(r: PathResult): Record<string, unknown> {
  const dirs = (f: (x: TcpRun) => number) => ({ 'a->b': summarize(r.tcp['a->b'].map(f)), 'b->a': summarize(r.tcp['b->a'].map(f)) });
  return {
    describe: r.describe,
    tcp_mbps: tcpSummary(r),
    tcp_mbps_by_direction: dirs((x) => x.mbps),
    retransmits_by_direction: dirs((x) => x.retransmits),
    cpu_per_gbps: cpuSummary(r),
    busy_cores: summarize(tcpAll(r).map((x) => x.busyCores)),
    udp64_kpps: udpSummary(r),
    udp64_sent_kpps: summarize(r.udp.map((x) => x.sentKpps)),
    busiest_threads: r.threads,
    ...(r.bytesPerFrame ? { tcp_bytes_per_frame: r.bytesPerFrame } : {}),
  };
}

/** A during-snapshot measurement: throughput, retransmits, busy cores, the snapshots and where the CPU went (the idle runs alternated with them vs the snapshot runs). */
function duringJson(runs: TcpRun[], s: Snaps): Record<string, unknown> {
  return {
    tcp_mbps: summarize(runs.map((x) => x.mbps)),
    // the idle run just before each snapshot run, and each snapshot run over it
    idle_alternated_tcp_mbps: summarize(s.idleRuns.map((x) => x.mbps)),
    runs_mbps: { idle_alternated: s.idleRuns.map((x) => round(x.mbps)), during: runs.map((x) => round(x.mbps)) },
    over_idle_before_each: summarize(runs.map((x, i) => x.mbps / (s.idleRuns[i]?.mbps || 1))),
    retransmits: summarize(runs.map((x) => x.retransmits)),
    busy_cores: summarize(runs.map((x) => x.busyCores)),
    every_ms: s.everyMs,
    snapshots_completed: s.completed,
    snapshots_failed: s.failed,
    pause_ms: summarize(s.pausesMs),
    // end to end per snapshot: over every_ms means the loop ran them back to back
    snapshot_ms: summarize(s.snapshotMs),
    delete_ms: summarize(s.deleteMs),
    // the share of the runs' wall time a snapshot was under way: 1 when the loop ran back to back
    snapshot_busy_share: round(s.busyShare, 3),
    busiest_processes: { idle_runs_alternated: s.processesIdle, during_snapshots: s.processes },
    // each process's CPU over the snapshot runs, less what it used at the idle runs' rate, per completed snapshot
    core_s_per_snapshot: s.processes.map((p) => ({ thread: p.thread, core_s: round(((p.cores - (s.processesIdle.find((q) => q.thread === p.thread)?.cores ?? 0)) * s.windowS) / (s.completed || 1), 3) })),
  };
}

/** The nic=tap-bpf row's own object: its figures, its during-snapshot runs, what its programs carried and punted. */
function tapBpfJson(tb: TapBpfRow): Record<string, unknown> {
  const dp = tb.dataPath;
  return {
    tcp_mbps: round(tcpSummary(tb.path).median),
    udp64_kpps: round(udpSummary(tb.path).median),
    cpu_per_gbps: round(cpuSummary(tb.path).median, 2),
    during_snapshot: { ...duringJson(tb.during, tb.snaps), data_path: { frames_carried_in_kernel: tb.duringSplit.kernelCarried, frames_punted_to_switch: tb.duringSplit.punted, errors: tb.duringSplit.errors } },
    // Which path the figures measured: the kernel's (fast path on) or the switch's through the punt.
    fast_path: dp.kernelCarried > 0 ? 'on' : 'off',
    data_path: { frames_carried_in_kernel: dp.kernelCarried, frames_punted_to_switch: dp.punted, errors: dp.errors, per_host: Object.fromEntries(HOSTS.map((h, i) => [h, dp.perHost[i]])) },
  };
}

/** The alternating runs of --same-hosts: both paths' figures, the ratio of their medians and the ratio within each pair of runs. */
function pairedJson(p: Paired): Record<string, unknown> {
  const all = (x: Record<Direction, TcpRun[]>): TcpRun[] => [...x['a->b'], ...x['b->a']];
  const [t, k] = [all(p.tapBpf), all(p.kernel)];
  const fig = (runs: TcpRun[]): Record<string, unknown> => ({ tcp_mbps: summarize(runs.map((x) => x.mbps)), cpu_per_gbps: summarize(runs.map((x) => x.cpuPerGbps)), retransmits: summarize(runs.map((x) => x.retransmits)) });
  const med = (runs: TcpRun[], f: (x: TcpRun) => number): number => summarize(runs.map(f)).median;
  return {
    describe: p.describe,
    vnsnap_tap_bpf: fig(t),
    kernel: fig(k),
    runs_mbps: { vnsnap_tap_bpf: t.map((x) => round(x.mbps)), kernel: k.map((x) => round(x.mbps)) },
    ratios: {
      tcp: round(med(t, (x) => x.mbps) / (med(k, (x) => x.mbps) || 1), 3),
      cpu_per_gbps: round(med(t, (x) => x.cpuPerGbps) / (med(k, (x) => x.cpuPerGbps) || 1), 3),
      tcp_within_pairs: summarize(t.map((x, i) => x.mbps / (k[i]?.mbps || 1))),
    },
  };
}

function report(o: Options, r: Results): void {
  const tcpV = tcpSummary(r.vnsnap).median;
  const tcpK = tcpSummary(r.kernel).median;
  const cpuV = cpuSummary(r.vnsnap).median;
  const cpuK = cpuSummary(r.kernel).median;
  const during = summarize(r.during.map((x) => x.mbps));
  const idleAb = summarize(r.vnsnap.tcp['a->b'].map((x) => x.mbps)).median;
  const idleAlt = summarize(r.snaps.idleRuns.map((x) => x.mbps)).median;
  // The nic=tap-bpf row, when it ran (--bpf) and did not fail: its figures beside "vnsnap"'s.
  const tb = r.tapBpf && 'path' in r.tapBpf ? r.tapBpf : undefined;
  const tbTcp = tb && tcpSummary(tb.path).median;
  const tbCpu = tb && cpuSummary(tb.path).median;
  const tbDuring = tb && summarize(tb.during.map((x) => x.mbps));
  const tbIdleAb = tb && summarize(tb.path.tcp['a->b'].map((x) => x.mbps)).median;
  const tbIdleAlt = tb && summarize(tb.snaps.idleRuns.map((x) => x.mbps)).median;
  const beside = <T>(v: T | undefined): { vnsnap_tap_bpf?: T } => (v === undefined ? {} : { vnsnap_tap_bpf: v });
  const paired = tb?.paired ?? r.paired;
  const out = {
    tcp_mbps: { vnsnap: round(tcpV), kernel: round(tcpK), ...beside(tbTcp && round(tbTcp)) },
    udp64_kpps: { vnsnap: round(udpSummary(r.vnsnap).median), kernel: round(udpSummary(r.kernel).median), ...beside(tb && round(udpSummary(tb.path).median)) },
    cpu_per_gbps: { vnsnap: round(cpuV, 2), kernel: round(cpuK, 2), ...beside(tbCpu && round(tbCpu, 2)) },
    during_snapshot_tcp_mbps: round(during.median),
    ...(tbDuring ? { during_snapshot_tcp_mbps_vnsnap_tap_bpf: round(tbDuring.median) } : {}),
    ratios: {
      tcp_vnsnap_over_kernel: round(tcpV / (tcpK || 1), 3),
      cpu_per_gbps_vnsnap_over_kernel: round(cpuV / (cpuK || 1), 3),
      during_snapshot_over_idle_a_to_b: round(during.median / (idleAb || 1), 3),
      during_snapshot_over_alternated_idle: round(during.median / (idleAlt || 1), 3),
      ...(tb && tbTcp !== undefined && tbCpu !== undefined && tbDuring && tbIdleAb !== undefined && tbIdleAlt !== undefined
        ? {
            tcp_vnsnap_tap_bpf_over_kernel: round(tbTcp / (tcpK || 1), 3),
            cpu_per_gbps_vnsnap_tap_bpf_over_kernel: round(tbCpu / (cpuK || 1), 3),
            during_snapshot_over_idle_a_to_b_vnsnap_tap_bpf: round(tbDuring.median / (tbIdleAb || 1), 3),
            during_snapshot_over_alternated_idle_vnsnap_tap_bpf: round(tbDuring.median / (tbIdleAlt || 1), 3),
          }
        : {}),
    },
    ...Object.fromEntries(Object.entries(r.extra).map(([nic, p]) => [nic, { tcp_mbps: round(tcpSummary(p).median), udp64_kpps: round(udpSummary(p).median), cpu_per_gbps: round(cpuSummary(p).median, 2) }])),
    ...(r.bpf
      ? { bpf_dataplane: { tcp_mbps: round(tcpSummary(r.bpf).median), udp64_kpps: round(udpSummary(r.bpf).median), cpu_per_gbps: round(cpuSummary(r.bpf).median, 2), tcp_over_kernel: round(tcpSummary(r.bpf).median / (tcpK || 1), 3), cpu_over_kernel: round(cpuSummary(r.bpf).median / (cpuSummary(r.kernel).median || 1), 3), programs: r.bpfStats ?? null } }
      : {}),
    ...(r.tapBpf ? { vnsnap_tap_bpf: tb ? tapBpfJson(tb) : r.tapBpf } : {}),
    ...(paired ? { same_hosts_paired: pairedJson(paired) } : {}),
    settings: { default_nic: DEFAULT_NIC_MODE, tunnel_offload: o.tunnelOffload ?? 'default', runs: o.runs, seconds: o.seconds, udp_rate: o.udpRate, guest_memory_mib: o.memoryMib, memory_mode: o.memoryMode, host_cpus: cpuCount() },
    load_average: { start: r.load[0], end: r.load[1] },
    during_snapshot: duringJson(r.during, r.snaps),
    paths: { vnsnap: pathJson(r.vnsnap), kernel: pathJson(r.kernel), ...Object.fromEntries(Object.entries(r.extra).map(([nic, p]) => [nic, pathJson(p)])), ...(r.bpf ? { bpf_dataplane: pathJson(r.bpf) } : {}), ...(tb ? { vnsnap_tap_bpf: pathJson(tb.path) } : {}) },
  };
  if (o.json) {
    process.stdout.write(`${JSON.stringify(out)}\n`);
    return;
  }
  const f = (s: Summary, d = 0): string => `${s.median.toFixed(d)} / ${s.p95.toFixed(d)} / ${s.max.toFixed(d)}`;
  const rows: [string, PathResult][] = [[`vnsnap (${DEFAULT_NIC_MODE}, the default)`, r.vnsnap], ['kernel (TAP vnet_hdr=on + bridge + VXLAN)', r.kernel], ...Object.entries(r.extra).map(([nic, p]): [string, PathResult] => [`vnsnap nic=${nic} (extra)`, p]), ...(r.bpf ? [['in-kernel data path (tc bpf + VXLAN-GBP)', r.bpf] as [string, PathResult]] : []), ...(tb ? [['vnsnap nic=tap-bpf (agents)', tb.path] as [string, PathResult]] : [])];
  console.log(`\n${NAME}: medians / p95 / max of ${o.runs} runs of ${o.seconds} s`);
  console.log(`${'path'.padEnd(44)}${'TCP a->b Mbit/s'.padEnd(22)}${'TCP b->a Mbit/s'.padEnd(22)}${'UDP 64 B kpps'.padEnd(22)}cores per Gbit/s`);
  for (const [name, p] of rows) {
    console.log(
      `${name.padEnd(44)}${f(summarize(p.tcp['a->b'].map((x) => x.mbps))).padEnd(22)}${f(summarize(p.tcp['b->a'].map((x) => x.mbps))).padEnd(22)}${f(udpSummary(p), 1).padEnd(22)}${f(cpuSummary(p), 2)}`,
    );
  }
  console.log(`vnsnap TCP a->b idle, each run just before a snapshot run: ${f(summarize(r.snaps.idleRuns.map((x) => x.mbps)))} Mbit/s`);
  console.log(`vnsnap TCP a->b while a background snapshot runs every ${r.snaps.everyMs} ms: ${f(during)} Mbit/s (${r.snaps.completed} snapshots, ${r.snaps.failed.length} failed; pauses ${f(summarize(r.snaps.pausesMs), 1)} ms, each snapshot ${f(summarize(r.snaps.snapshotMs))} ms end to end, one under way ${(r.snaps.busyShare * 100).toFixed(0)} % of the runs)`);
  if (tb) {
    const dp = tb.dataPath;
    console.log(`vnsnap nic=tap-bpf TCP a->b during snapshots: ${f(summarize(tb.during.map((x) => x.mbps)))} Mbit/s (${tb.snaps.completed} snapshots, ${tb.snaps.failed.length} failed); programs: ${dp.kernelCarried} frames carried in the kernel, ${dp.punted} punted to the switch (fast path ${dp.kernelCarried > 0 ? 'on' : 'off'})`);
  } else if (r.tapBpf && 'error' in r.tapBpf) console.log(`vnsnap nic=tap-bpf: failed: ${r.tapBpf.error}`);
  if (paired) {
    const pj = pairedJson(paired) as { ratios: { tcp: number; cpu_per_gbps: number } };
    const med = (x: Record<Direction, TcpRun[]>): number => summarize([...x['a->b'], ...x['b->a']].map((y) => y.mbps)).median;
    console.log(`alternating TCP runs between the same hosts: nic=tap-bpf ${med(paired.tapBpf).toFixed(0)} Mbit/s, kernel path ${med(paired.kernel).toFixed(0)} (TCP ${pj.ratios.tcp}x, CPU per Gbit/s ${pj.ratios.cpu_per_gbps}x)`);
  }
  console.log(`ratios: TCP vnsnap/kernel ${out.ratios.tcp_vnsnap_over_kernel}, CPU per Gbit/s vnsnap/kernel ${out.ratios.cpu_per_gbps_vnsnap_over_kernel}, during-snapshot/idle ${out.ratios.during_snapshot_over_idle_a_to_b} (against the idle runs alternated with the snapshot runs ${out.ratios.during_snapshot_over_alternated_idle})`);
  for (const [name, p] of rows) {
    const b = p.bytesPerFrame;
    if (b) console.log(`${name}: TCP payload bytes per frame from the sending QEMU / to the receiving QEMU: a->b ${b['a->b'].sent.toFixed(0)} / ${b['a->b'].delivered.toFixed(0)}, b->a ${b['b->a'].sent.toFixed(0)} / ${b['b->a'].delivered.toFixed(0)}`);
    for (const dir of ['a->b', 'b->a'] as const) console.log(`${name}: busiest threads during TCP ${dir}: ${p.threads[dir].map((t) => `${t.thread} ${t.cores.toFixed(2)}`).join(', ')}`);
  }
  console.log(`load average: start ${r.load[0]?.join(' ')}, end ${r.load[1]?.join(' ')}`);
}

main().catch(async (e) => {
  process.stderr.write(`${NAME}: ${errMsg(e)}\n`);
  killRunning();
  await cleanup();
  process.exit(1);
});
