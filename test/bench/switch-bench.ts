/**
 * Switch benchmark: vnsnap's switch against Open vSwitch (userspace datapath) and kernel Geneve,
 * VM namespace to VM namespace across two host namespaces joined by a veth underlay.
 *
 *   npm run bench:switch -- [--json] [--only vnsnap,ovs,kernel] [--duration S] [--runs N]
 *                           [--udp-rate B] [--udp-streams N] [--daemon PATH] [--snapshot-interval MS]
 *                           [--kernel-tunnel geneve|vxlan|auto]
 *
 * For each dataplane (set up, measured, torn down in turn): iperf3 TCP vm1→vm2 (Gbit/s) and
 * 64-byte-frame UDP (frames/s delivered to vm2's interface, kpps), medians of --runs runs;
 * for vnsnap also TCP while both daemons take a snapshot (cut + marker channel recording)
 * every second. With --json, exactly one JSON object goes to stdout; progress goes to stderr.
 *
 * Nothing is pinned: this machine has 2 cores, which iperf3's client, server and the two
 * dataplane hosts share, so every figure here includes that contention.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Topology } from '../support/netns';
import { forEachFlag, usageExit } from './args';
import { setupKernel, setupOvs, setupVnsnap, Dataplane, DataplaneName, VnsnapDataplane, INNER_MTU } from './dataplanes';
import { tcpRun, udp64Run, TcpResult, UdpResult } from './iperf';
import { ovsAvailable, ovsVersion } from './ovs';
import { errMsg, killRunning, median, sleep } from './proc';

const PREFIX = 'vnbench';
const ALL: DataplaneName[] = ['vnsnap', 'ovs', 'kernel'];

interface Options {
  json: boolean;
  only: DataplaneName[];
  duration: number;
  runs: number;
  udpRate: string;
  udpStreams: number;
  daemon: string;
  snapshotIntervalMs: number;
  kernelTunnel: 'geneve' | 'vxlan' | 'auto';
}

function usage(msg?: string): never {
  usageExit('switch-bench', 'usage: switch-bench [--json] [--only vnsnap|ovs|kernel[,..]]... [--duration S] [--runs N] [--udp-rate B] [--udp-streams N] [--daemon PATH] [--snapshot-interval MS] [--kernel-tunnel geneve|vxlan|auto]', msg);
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    json: false,
    only: [],
    duration: 5,
    runs: 3,
    udpRate: '0',
    udpStreams: 1,
    daemon: path.resolve(__dirname, '../../switch/cmd/daemon.js'),
    snapshotIntervalMs: 1000,
    kernelTunnel: 'auto',
  };
  forEachFlag(argv, usage, (flag, val, a) => {
    switch (flag) {
      case '--json':
        o.json = true;
        break;
      case '--only':
        for (const n of val().split(',').map((s) => s.trim()).filter(Boolean)) {
          if (!ALL.includes(n as DataplaneName)) usage(`unknown dataplane ${n}`);
          if (!o.only.includes(n as DataplaneName)) o.only.push(n as DataplaneName);
        }
        break;
      case '--duration':
        o.duration = Number(val());
        if (!(o.duration >= 1)) usage('--duration must be >= 1 second');
        break;
      case '--runs':
        o.runs = Number(val());
        if (!Number.isInteger(o.runs) || o.runs < 1) usage('--runs must be a positive integer');
        break;
      case '--udp-rate':
        o.udpRate = val();
        break;
      case '--udp-streams':
        o.udpStreams = Number(val());
        if (!Number.isInteger(o.udpStreams) || o.udpStreams < 1) usage('--udp-streams must be a positive integer');
        break;
      case '--daemon':
        o.daemon = path.resolve(val());
        break;
      case '--snapshot-interval':
        o.snapshotIntervalMs = Number(val());
        if (!(o.snapshotIntervalMs >= 50)) usage('--snapshot-interval must be >= 50 ms');
        break;
      case '--kernel-tunnel': {
        const v = val();
        if (v !== 'geneve' && v !== 'vxlan' && v !== 'auto') usage('--kernel-tunnel is geneve, vxlan or auto');
        o.kernelTunnel = v;
        break;
      }
      case '-h':
      case '--help':
        usage();
        break;
      default:
        usage(`unknown argument ${a}`);
    }
  });
  if (o.only.length === 0) o.only = [...ALL];
  return o;
}

// ---- progress / cleanup -------------------------------------------------------------------

let opts: Options;
const log = (msg: string): void => {
  process.stderr.write(`[switch-bench] ${msg}\n`);
};

let currentTopo: Topology | null = null;
let currentDp: Dataplane | null = null;
let tmpRoot: string | null = null;
let shuttingDown = false;

async function teardown(): Promise<void> {
  killRunning();
  const dp = currentDp;
  currentDp = null;
  if (dp) await dp.close().catch((e) => log(`closing ${dp.name}: ${errMsg(e)}`));
  const topo = currentTopo;
  currentTopo = null;
  if (topo) await topo.destroy().catch((e) => log(`destroying topology: ${errMsg(e)}`));
}

function removeTmp(): void {
  if (tmpRoot) fs.rmSync(tmpRoot, { recursive: true, force: true });
  tmpRoot = null;
}

function onSignal(sig: NodeJS.Signals): void {
  if (shuttingDown) return;
  shuttingDown = true;
  log(`${sig}: cleaning up`);
  void teardown()
    .finally(removeTmp)
    .finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
}

// ---- measurements ---------------------------------------------------------------------------

async function warmup(topo: Topology, dp: Dataplane): Promise<void> {
  // First packets resolve ARP (VMs, and OVS's tunnel neighbour) and MAC learning; retry a bit.
  let last = '';
  for (let attempt = 0; attempt < 5; attempt++) {
    if (shuttingDown) throw new Error('interrupted');
    try {
      await tcpRun(topo, dp.endpoints, 1);
      return;
    } catch (e) {
      last = errMsg(e);
      await sleep(1000);
    }
  }
  throw new Error(`no connectivity vm1→vm2 over ${dp.name}: ${last}`);
}

async function tcpRuns(topo: Topology, dp: Dataplane, label: string): Promise<number | null> {
  const vals: number[] = [];
  for (let r = 0; r < opts.runs; r++) {
    if (shuttingDown) break;
    try {
      const t: TcpResult = await tcpRun(topo, dp.endpoints, opts.duration);
      vals.push(t.gbps);
      log(`${label} TCP run ${r + 1}/${opts.runs}: ${t.gbps.toFixed(3)} Gbit/s (retransmits ${t.retransmits ?? '?'})`);
    } catch (e) {
      log(`${label} TCP run ${r + 1}/${opts.runs} failed: ${errMsg(e)}`);
    }
  }
  return median(vals);
}

async function udpRuns(topo: Topology, dp: Dataplane): Promise<number | null> {
  const vals: number[] = [];
  for (let r = 0; r < opts.runs; r++) {
    if (shuttingDown) break;
    try {
      const u: UdpResult = await udp64Run(topo, dp.endpoints, opts.duration, opts.udpRate, opts.udpStreams);
      vals.push(u.kpps);
      log(
        `${dp.name} UDP64 run ${r + 1}/${opts.runs}: ${u.kpps.toFixed(1)} kpps delivered to vm2 ` +
          `(frames ${u.frameBytes.toFixed(0)} B; iperf3 sent ${u.sentKpps.toFixed(1)} kpps, server got ${u.appKpps.toFixed(1)} kpps)`,
      );
    } catch (e) {
      log(`${dp.name} UDP64 run ${r + 1}/${opts.runs} failed: ${errMsg(e)}`);
    }
  }
  return median(vals);
}

interface SnapshotStats {
  done: number;
  cutMs: number[];
  channelMs: number[];
  error: string | null;
  lastChannelState: unknown[];
  /** Per snapshot: [epoch, channelState ms, lostFrames h1, lostFrames h2]. */
  perEpoch: Array<[number, number, ...Array<number | null>]>;
}

/**
 * Every interval: "snapshot" with the next epoch to both daemons at the same time, then
 * "channelState" for that epoch to both. Runs until stop() resolves; an iteration that takes
 * longer than the interval delays the next one (no overlap). Stops at the first failure,
 * since the daemons' epochs may then disagree.
 */
function snapshotLoop(dp: VnsnapDataplane, firstEpoch: number, intervalMs: number): { stop: () => Promise<SnapshotStats>; nextEpoch: () => number } {
  const st: SnapshotStats = { done: 0, cutMs: [], channelMs: [], error: null, lastChannelState: [], perEpoch: [] };
  let epoch = firstEpoch;
  let stopping = false;
  let wake: (() => void) | null = null;
  const loop = (async () => {
    while (!stopping) {
      const t0 = Date.now();
      try {
        await Promise.all(dp.controls.map((c) => c.call({ op: 'snapshot', vne: 'blue', epoch }, 10_000)));
        const t1 = Date.now();
        const cs = await Promise.all(dp.controls.map((c) => c.call({ op: 'channelState', vne: 'blue', epoch }, 15_000)));
        const t2 = Date.now();
        st.cutMs.push(t1 - t0);
        st.channelMs.push(t2 - t1);
        st.lastChannelState = cs;
        st.perEpoch.push([epoch, t2 - t1, ...cs.map((r) => (typeof r.lostFrames === 'number' ? r.lostFrames : null))]);
        st.done++;
        epoch++;
      } catch (e) {
        st.error = `epoch ${epoch}: ${errMsg(e)}`;
        epoch++; // a daemon may have accepted it
        return;
      }
      const wait = intervalMs - (Date.now() - t0);
      if (wait > 0 && !stopping) {
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, wait);
        });
        wake = null;
      }
    }
  })();
  return {
    nextEpoch: () => epoch,
    stop: async () => {
      stopping = true;
      (wake as (() => void) | null)?.();
      await loop;
      return st;
    },
  };
}

interface VnsnapExtra {
  snapshotsDone: number;
  cutMsMedian: number | null;
  channelMsMedian: number | null;
  error: string | null;
  lastChannelState: unknown[];
  lossySnapshots: number;
}

async function tcpDuringSnapshots(topo: Topology, dp: VnsnapDataplane): Promise<{ gbps: number | null; extra: VnsnapExtra }> {
  const vals: number[] = [];
  let epoch = 1;
  const all: SnapshotStats = { done: 0, cutMs: [], channelMs: [], error: null, lastChannelState: [], perEpoch: [] };
  for (let r = 0; r < opts.runs && !shuttingDown && !all.error; r++) {
    const loop = snapshotLoop(dp, epoch, opts.snapshotIntervalMs);
    let t: TcpResult | null = null;
    let err = '';
    try {
      t = await tcpRun(topo, dp.endpoints, opts.duration);
    } catch (e) {
      err = errMsg(e);
    }
    const st = await loop.stop();
    epoch = loop.nextEpoch();
    all.done += st.done;
    all.cutMs.push(...st.cutMs);
    all.channelMs.push(...st.channelMs);
    all.perEpoch.push(...st.perEpoch);
    all.lastChannelState = st.lastChannelState.length ? st.lastChannelState : all.lastChannelState;
    if (st.error) all.error = st.error;
    if (t && !st.error) {
      vals.push(t.gbps);
      log(
        `vnsnap TCP during snapshots run ${r + 1}/${opts.runs}: ${t.gbps.toFixed(3)} Gbit/s (retransmits ${t.retransmits ?? '?'}), ` +
          `${st.done} snapshots, cut median ${median(st.cutMs) ?? '-'} ms, channelState median ${median(st.channelMs) ?? '-'} ms`,
      );
    } else {
      log(`vnsnap TCP during snapshots run ${r + 1}/${opts.runs} failed: ${err || st.error}`);
    }
  }
  if (all.perEpoch.length) {
    log(`per snapshot [epoch, channelState ms, lostFrames h1, lostFrames h2]: ${JSON.stringify(all.perEpoch)}`);
  }
  const lossy = all.perEpoch.filter((e) => e.slice(2).some((x) => typeof x === 'number' && x > 0)).length;
  if (lossy) log(`${lossy}/${all.perEpoch.length} snapshots reported lostFrames > 0 (their recordings end only after the daemon's grace period)`);
  if (all.lastChannelState.length) log(`last channelState replies: ${JSON.stringify(all.lastChannelState).slice(0, 1500)}`);
  return {
    gbps: all.error ? null : median(vals),
    extra: {
      snapshotsDone: all.done,
      cutMsMedian: median(all.cutMs),
      channelMsMedian: median(all.channelMs),
      error: all.error,
      lastChannelState: all.lastChannelState,
      lossySnapshots: lossy,
    },
  };
}

// ---- main -----------------------------------------------------------------------------------

interface Results {
  tcp_gbps: Record<DataplaneName, number | null>;
  udp64_kpps: Record<DataplaneName, number | null>;
  tcp_gbps_during_snapshots: { vnsnap: number | null };
}

async function main(): Promise<void> {
  opts = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) log('warning: not root; namespaces will fail');
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), `${PREFIX}-`));

  const res: Results = {
    tcp_gbps: { vnsnap: null, ovs: null, kernel: null },
    udp64_kpps: { vnsnap: null, ovs: null, kernel: null },
    tcp_gbps_during_snapshots: { vnsnap: null },
  };
  const notes: string[] = [];
  const described: string[] = [];
  let snapExtra: VnsnapExtra | null = null;
  log(
    `dataplanes ${opts.only.join(',')}; ${opts.runs} run(s) of ${opts.duration} s; UDP -l 18 -b ${opts.udpRate} -P ${opts.udpStreams}; inner MTU ${INNER_MTU}; ` +
      `${os.cpus().length} CPUs, nothing pinned`,
  );

  for (const name of opts.only) {
    if (shuttingDown) break;
    log(`=== ${name} ===`);
    try {
      if (name === 'ovs') {
        const why = ovsAvailable();
        if (why) throw new Error(why);
      }
      const topo = new Topology(PREFIX);
      currentTopo = topo;
      const dir = path.join(tmpRoot, name);
      fs.mkdirSync(dir);
      const dp: Dataplane =
        name === 'kernel' ? await setupKernel(topo, opts.kernelTunnel) : name === 'ovs' ? await setupOvs(topo, dir) : await setupVnsnap(topo, dir, opts.daemon);
      currentDp = dp;
      if (name === 'kernel' && (dp as Dataplane & { tunnel: string }).tunnel !== 'geneve') {
        notes.push('kernel: this kernel has no geneve link type (CONFIG_GENEVE is not set); the kernel baseline is VXLAN (same 50-byte overhead)');
      }
      described.push(`${name}: ${dp.describe}${name === 'ovs' ? ` [${ovsVersion()}]` : ''}`);
      log(`set up: ${dp.describe}`);
      await warmup(topo, dp);
      res.tcp_gbps[name] = await tcpRuns(topo, dp, name);
      res.udp64_kpps[name] = await udpRuns(topo, dp);
      if (name === 'vnsnap') {
        const vdp = dp as VnsnapDataplane;
        try {
          const s = await vdp.controls[0]?.request({ op: 'stats' }, 5000);
          log(`h1 stats after idle runs: ${JSON.stringify(s).slice(0, 1500)}`);
        } catch (e) {
          log(`stats: ${errMsg(e)}`);
        }
        const d = await tcpDuringSnapshots(topo, vdp);
        res.tcp_gbps_during_snapshots.vnsnap = d.gbps;
        snapExtra = d.extra;
        if (d.extra.error) notes.push(`vnsnap snapshots: ${d.extra.error}`);
        if (d.extra.lossySnapshots) {
          notes.push(`vnsnap snapshots: ${d.extra.lossySnapshots}/${d.extra.snapshotsDone} channelState replies had lostFrames > 0 (recording ended by the grace period, channelState median ${d.extra.channelMsMedian} ms)`);
        }
        for (const [i, c] of vdp.controls.entries()) {
          try {
            log(`h${i + 1} stats after snapshot runs: ${JSON.stringify(await c.request({ op: 'stats' }, 5000)).slice(0, 2000)}`);
          } catch (e) {
            log(`h${i + 1} stats: ${errMsg(e)}`);
          }
        }
        for (const [i, c] of vdp.daemons.entries()) {
          if (c.exitCode !== null || c.signalCode !== null) {
            notes.push(`vnsnap daemon h${i + 1} exited (${c.exitCode ?? c.signalCode}) during the bench; stderr: ${vdp.logs[i]?.stderr().slice(-1000)}`);
          }
        }
      }
      if (name === 'ovs' && res.tcp_gbps.ovs === null) {
        notes.push(`ovs: log tail h1: ${(dp as Dataplane & { hosts: { logTail(): string }[] }).hosts[0]?.logTail()}`);
      }
    } catch (e) {
      const m = `${name}: ${errMsg(e)}`;
      notes.push(m);
      log(`FAILED ${m}`);
    } finally {
      await teardown();
    }
  }
  removeTmp();
  if (shuttingDown) return;

  if (opts.json) {
    process.stdout.write(JSON.stringify(res) + '\n');
    for (const n of notes) log(`note: ${n}`);
    return;
  }
  const f = (v: number | null, d: number): string => (v === null ? 'n/a' : v.toFixed(d));
  const ratio = (a: number | null, b: number | null): string => (a === null || b === null || b === 0 ? 'n/a' : (a / b).toFixed(2));
  const out: string[] = [];
  out.push(`Switch benchmark: vm1 -> vm2 across two hosts, inner MTU ${INNER_MTU}; medians of ${opts.runs} x ${opts.duration} s; ${os.cpus().length} CPUs, nothing pinned`);
  out.push('');
  out.push(`${'dataplane'.padEnd(10)} ${'TCP Gbit/s'.padStart(11)} ${'UDP64 kpps'.padStart(11)}`);
  for (const n of ALL) {
    if (!opts.only.includes(n)) continue;
    out.push(`${n.padEnd(10)} ${f(res.tcp_gbps[n], 3).padStart(11)} ${f(res.udp64_kpps[n], 1).padStart(11)}`);
  }
  out.push('');
  if (opts.only.includes('vnsnap')) {
    out.push(`vnsnap TCP during snapshots every ${opts.snapshotIntervalMs} ms: ${f(res.tcp_gbps_during_snapshots.vnsnap, 3)} Gbit/s`);
    if (snapExtra) {
      out.push(
        `  snapshots completed: ${snapExtra.snapshotsDone}, cut (both daemons) median ${snapExtra.cutMsMedian ?? 'n/a'} ms, ` +
          `channelState median ${snapExtra.channelMsMedian ?? 'n/a'} ms, with lostFrames > 0: ${snapExtra.lossySnapshots}`,
      );
    }
    out.push(`ratios: TCP vnsnap/ovs ${ratio(res.tcp_gbps.vnsnap, res.tcp_gbps.ovs)}, vnsnap/kernel ${ratio(res.tcp_gbps.vnsnap, res.tcp_gbps.kernel)}; ` +
      `UDP64 vnsnap/ovs ${ratio(res.udp64_kpps.vnsnap, res.udp64_kpps.ovs)}, vnsnap/kernel ${ratio(res.udp64_kpps.vnsnap, res.udp64_kpps.kernel)}; ` +
      `TCP during-snapshots/idle ${ratio(res.tcp_gbps_during_snapshots.vnsnap, res.tcp_gbps.vnsnap)}`);
  }
  out.push('');
  for (const d of described) out.push(d);
  out.push('UDP64: iperf3 -u -l 18 (60-byte frames + FCS = 64), frames delivered to vm2\'s interface per second of sending.');
  if (notes.length) {
    out.push('');
    out.push('problems:');
    for (const n of notes) out.push(`  - ${n}`);
  }
  process.stdout.write(out.join('\n') + '\n');
}

main().catch(async (e) => {
  log(`fatal: ${e instanceof Error ? e.stack : String(e)}`);
  await teardown();
  removeTmp();
  process.exit(1);
});
