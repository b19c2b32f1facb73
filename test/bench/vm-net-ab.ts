/**
 * An A/B comparison of the kernel path (Linux bridge + VXLAN) and vnsnap's in-kernel data path
 * (switch/bpf/vnsnap-dp.bpf.c, the same program the agents load) for bench:vm-net: two guest
 * pairs, each on its own two namespaced hosts (vm-net-kernel.ts, 'bridge' and 'bpf'), booted
 * once, and TCP runs alternating between the two pairs (which goes first swapped every round),
 * so both meet the same load on a shared machine. Why it exists: the rows of bench:vm-net run
 * minutes apart, and a difference of a few percent between the two paths is below the load's
 * drift between them.
 *
 *   node dist/test/bench/vm-net-ab.js [--rounds N] [--seconds S] [--object FILE [--object FILE]]
 *                                     [--pair KIND[:FILE] ...]
 *
 * --object loads that build of the program on a bpf pair (the same maps' layout) instead of the
 * installed one; given twice, two bpf pairs run, so two builds are compared against the same
 * bridge in one run. --pair (repeatable, instead of --object) names each pair after the bridge:
 * KIND is one of vm-net-kernel.ts's KernelDataplane variants (bpf, bridge-clsact, bpf-fixed,
 * bpf-external, bpf-tx-bridge-rx, bridge-tx-bpf-rx, bridge), FILE another build of the program for it; the
 * pairs' hosts are numbered in the order given, so giving the same kinds in another order swaps
 * which hosts carry which (a pair's own speed differs). 'bpf-fixed' without FILE compiles its
 * build (clang) into the run's directory, and the external variants their VN_EXTERNAL_TUNNEL build. Prints one line per run and, at the end, the
 * medians and the ratio of medians as one JSON object on stdout. Beside each run's throughput
 * and busy cores: the machine's RCU and TIMER softirqs per second during it (a VXLAN device in
 * external mode allocates a metadata dst for every frame it receives and frees it through RCU,
 * so a pair through one runs the machine's RCU grace periods continuously: docs/nic-offloads.md,
 * "The external device's receive cost") and the bytes iperf3 received per frame the receiving
 * TAP delivered to QEMU (the super-frames' size). --rcu-load puts a load of that RCU kind
 * (external) or its control (ordinary) beside the pairs from the warm-up's end to the last run
 * (vm-net-rcu-load.ts), so the bridge's loss under it can be measured. Everything is named vmnba* /
 * vmnbb<i>* and removed at the end, on failure and on SIGINT/SIGTERM. Needs root, QEMU, the test
 * guest and the built program, as bench:vm-net --bpf does.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildGuest, channelStatus, ensureQemu, kernelCmdline, STATUS_CHANNEL_NAME } from '../guest/qemu-guest';
import { Topology } from '../support/netns';
import { forEachFlag, usageExit } from './args';
import { errMsg, killRunning } from './proc';
import { RCU_LOAD_MODES, startRcuLoad, type RcuLoad, type RcuLoadMode } from './vm-net-rcu-load';
import { EXTERNAL_DATAPLANES, externalTunnelObject, fixedTunnelObject, KERNEL_DATAPLANES, startKernelPath, type KernelDataplane, type KernelPath } from './vm-net-kernel';
import { loadAverage, softirqRate, softirqSample, summarize, tcpRun, warmUp, type Direction, type PairGuest, type PairSetup, type Summary, type TcpRun } from './vm-net-measure';

/** One TCP run and what the machine and the receiving TAP did during it (module comment). */
interface AbRun extends TcpRun {
  /** the machine's RCU and TIMER softirqs per second during the run */
  rcuPerS: number;
  timerPerS: number;
  /** bytes iperf3 received per frame the receiving guest's TAP delivered to QEMU */
  bytesPerFrame: number;
}

/** A TCP run on one pair, with the softirq rates and the frames delivered around it. */
async function abRun(p: KernelPath, d: Direction, seconds: number): Promise<AbRun> {
  const s0 = softirqSample();
  const f0 = p.frames(d);
  const w0 = Date.now();
  const r = await tcpRun(p.guests, d, seconds);
  const secs = (Date.now() - w0) / 1000;
  const s1 = softirqSample();
  const delivered = p.frames(d).delivered - f0.delivered;
  return { ...r, rcuPerS: softirqRate(s0, s1, 'RCU', secs), timerPerS: softirqRate(s0, s1, 'TIMER', secs), bytesPerFrame: delivered > 0 ? r.bytes / delivered : 0 };
}

const NAME = 'vm-net-ab';
const USAGE = 'usage: node dist/test/bench/vm-net-ab.js [--rounds N] [--seconds S] [--object FILE [--object FILE]] [--pair KIND[:FILE] ...] [--rcu-load external|ordinary]';

const GUESTS: [PairGuest, PairGuest] = [
  { name: 'a', cidr: '192.168.89.1/24', mac: '52:54:00:89:00:01' },
  { name: 'b', cidr: '192.168.89.2/24', mac: '52:54:00:89:00:02' },
];

async function main(): Promise<void> {
  const o = { rounds: 4, seconds: 8, objects: [] as string[], pairs: [] as { kind: KernelDataplane; object?: string }[], rcuLoad: undefined as RcuLoadMode | undefined };
  const usage = (msg: string): never => usageExit(NAME, USAGE, msg);
  forEachFlag(process.argv.slice(2), usage, (flag, value, arg) => {
    if (flag === '--rounds') o.rounds = Number(value());
    else if (flag === '--seconds') o.seconds = Number(value());
    else if (flag === '--object') o.objects.push(path.resolve(value()));
    else if (flag === '--rcu-load') {
      const m = value();
      if (!(RCU_LOAD_MODES as readonly string[]).includes(m)) usage(`--rcu-load ${m}: one of ${RCU_LOAD_MODES.join(', ')}`);
      o.rcuLoad = m as RcuLoadMode;
    } else if (flag === '--pair') {
      const [kind, file] = value().split(':') as [string, string | undefined];
      if (!(KERNEL_DATAPLANES as readonly string[]).includes(kind)) usage(`--pair ${kind}: one of ${KERNEL_DATAPLANES.join(', ')}`);
      o.pairs.push({ kind: kind as KernelDataplane, ...(file ? { object: path.resolve(file) } : {}) });
    }
    else usage(`unknown argument ${arg}`);
  });
  if (!Number.isInteger(o.rounds) || o.rounds < 1 || !Number.isInteger(o.seconds) || o.seconds < 2) usage('--rounds >= 1 and --seconds >= 2, integers');
  if (o.objects.length > 2) usage('at most two --object');
  if (o.objects.length > 0 && o.pairs.length > 0) usage('--object or --pair, not both');
  if (o.pairs.length > 6) usage('at most six --pair');
  const specs = o.pairs.length > 0 ? o.pairs : (o.objects.length > 0 ? o.objects : [undefined]).map((object) => ({ kind: 'bpf' as KernelDataplane, ...(object ? { object } : {}) }));
  ensureQemu();
  const image = buildGuest();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmnbab-'));
  const setup: PairSetup = {
    guests: GUESTS,
    specOf: (g) => ({ memoryMib: 256, cpus: 1, kernel: image.kernel, initrd: image.initrd, append: kernelCmdline({ name: g.name, ip: g.cidr, mtu: 1400, disk: 'none', iperf: true, reportSecs: 60 }), disk: '', extra: { channel: STATUS_CHANNEL_NAME } }),
    ready: (sock) => channelStatus(sock, 8000),
  };
  const paths: KernelPath[] = [];
  let load: RcuLoad | undefined;
  const cleanup = async (): Promise<void> => {
    await load?.close().catch((e: unknown) => process.stderr.write(`${NAME}: cleanup: ${errMsg(e)}\n`));
    load = undefined;
    for (const p of paths.splice(0)) await p.close().catch((e: unknown) => process.stderr.write(`${NAME}: cleanup: ${errMsg(e)}\n`));
    fs.rmSync(dir, { recursive: true, force: true });
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => void cleanup().then(() => process.exit(130)));
  try {
    // the pairs: the bridge, then one bpf pair per object (each on its own two hosts)
    const pairs: { label: string; path: KernelPath }[] = [];
    const bridge = await startKernelPath(new Topology('vmnba'), path.join(dir, 'a'), setup, 'bridge');
    paths.push(bridge);
    pairs.push({ label: 'bridge', path: bridge });
    for (const [i, spec] of specs.entries()) {
      const object = spec.object ?? (spec.kind === 'bpf-fixed' ? fixedTunnelObject(dir) : EXTERNAL_DATAPLANES.includes(spec.kind) ? externalTunnelObject(dir) : undefined);
      const p = await startKernelPath(new Topology(`vmnbb${i}`), path.join(dir, `b${i}`), setup, spec.kind, undefined, object);
      paths.push(p);
      pairs.push({ label: `${spec.kind}${i}`, path: p });
    }
    for (const p of pairs) await warmUp(p.path.guests);
    if (o.rcuLoad) load = startRcuLoad(o.rcuLoad);
    const sent0 = load?.sent() ?? 0;
    const runs = new Map<string, AbRun[]>(pairs.map((p) => [p.label, []]));
    const load0 = loadAverage();
    const t0 = new Date().toISOString();
    for (let i = 0; i < o.rounds; i++) {
      for (const d of ['a->b', 'b->a'] as Direction[]) {
        // which pair goes first rotates every round
        const order = pairs.map((_, k) => pairs[(k + i) % pairs.length] as (typeof pairs)[number]);
        for (const p of order) {
          const r = await abRun(p.path, d, o.seconds);
          runs.get(p.label)?.push(r);
          process.stderr.write(`${new Date().toISOString()} ${p.label} ${d} round ${i + 1}: ${r.mbps.toFixed(0)} Mbit/s, ${r.retransmits} retransmits, ${r.busyCores.toFixed(2)} busy cores, RCU ${r.rcuPerS.toFixed(0)}/s, TIMER ${r.timerPerS.toFixed(0)}/s, ${r.bytesPerFrame.toFixed(0)} B per frame delivered\n`);
        }
      }
    }
    const br = runs.get('bridge') ?? [];
    // the machine during a pair's runs: busy cores, RCU and TIMER softirqs per second, bytes per delivered frame
    const machine = (rs: AbRun[]): Record<string, Summary> => ({
      busy_cores: summarize(rs.map((r) => r.busyCores)),
      rcu_softirqs_per_s: summarize(rs.map((r) => Math.round(r.rcuPerS))),
      timer_softirqs_per_s: summarize(rs.map((r) => Math.round(r.timerPerS))),
      bytes_per_frame_delivered: summarize(rs.map((r) => Math.round(r.bytesPerFrame))),
    });
    const brMed = summarize(br.map((r) => r.mbps)).median || 1;
    process.stdout.write(
      `${JSON.stringify({
        utc: [t0, new Date().toISOString()],
        load_average: [load0, loadAverage()],
        ...(o.rcuLoad && load ? { rcu_load: { mode: o.rcuLoad, datagrams_sent: load.sent() - sent0 } } : {}),
        bridge: { tcp_mbps: summarize(br.map((r) => r.mbps)), ...machine(br), runs: br.map((r) => Math.round(r.mbps)) },
        bpf: specs.map((spec, i) => {
          const rs = runs.get(`${spec.kind}${i}`) ?? [];
          return {
            kind: spec.kind,
            hosts: `vmnbb${i}`,
            object: spec.object ?? (spec.kind === 'bpf-fixed' ? 'VN_FIXED_TUNNEL build' : EXTERNAL_DATAPLANES.includes(spec.kind) ? 'VN_EXTERNAL_TUNNEL build' : spec.kind === 'bridge' ? null : 'build/bpf/vnsnap-dp.bpf.o'),
            tcp_mbps: summarize(rs.map((r) => r.mbps)),
            ...machine(rs),
            runs: rs.map((r) => Math.round(r.mbps)),
            programs: pairs[i + 1]?.path.bpfStats?.() ?? null,
            ratio_of_medians: Math.round((summarize(rs.map((r) => r.mbps)).median / brMed) * 1000) / 1000,
            ratio_within_rounds: summarize(rs.map((r, k) => r.mbps / (br[k]?.mbps || 1))),
          };
        }),
      })}\n`,
    );
  } finally {
    killRunning();
    await cleanup();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${NAME}: ${errMsg(e)}\n`);
  process.exit(1);
});
