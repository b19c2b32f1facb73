/**
 * Scale benchmark (issue 3): one coordinator and many simulated agents, snapshot and restore.
 *
 *   npm run bench:scale -- [--json] [--agents N] [--vms-per-agent N] [--workers N] [--runs N]
 *                          [--mode precopy|background] [--peers N] [--frame-rate HZ]
 *                          [--memory-mib N] [--dirty-rate MIBS] [--tick-ms MS] [--warmup S]
 *                          [--settle S] [--coordinator-log-level L] [--tmp DIR]
 *
 * Defaults: 100 agents × 10 VMs in 4 worker processes, one VNE of 1000 VMs, 1 run, precopy.
 *
 * - The coordinator runs alone in its own process (dist/coordinator/main.js, a temporary --db
 *   and --store-dir, log level info as in production, its logs counted and dropped), so its CPU
 *   (utime + stime from /proc/PID/stat) and peak RSS (VmHWM from /proc/PID/status) are its own.
 * - The agents run as Agent instances in `--workers` processes (scale-worker.ts), each with its
 *   own Switch, UDP tunnel on 127.0.0.1 (ephemeral port) and sim driver; all share one store
 *   directory (the coordinator's --store-dir), as agents on a shared filesystem would.
 * - One VNE spans every agent (scale-topology.ts): each VM sends to VMs on `--peers` other
 *   agents, so every data frame crosses a Geneve tunnel and the cut is one cut over all VMs.
 * - Per run: CreateSnapshot (mode --mode) through the gRPC API, GetSnapshot for the per-VM cut
 *   instants and phases, traffic for a moment, RestoreSnapshot (stop_running, same placement),
 *   traffic for --settle seconds, then the consistency check over every VM (below), then
 *   DeleteSnapshot so runs do not fill the disk.
 *
 * Cut skew ("commit skew" in --json, its historical name) = max − min of VmSnapshot.cut_unix_us
 * over every VM of the snapshot: what the VMs' cuts spread over, agents' work included.
 * Commit fan-out skew = max − min of the instants the agents' session streams delivered the
 * SnapshotCommit (each worker stamps them, scale-worker.ts): what the coordinator's fan-out
 * spreads over, before any agent-side work. With --workers equal to --agents each agent has its
 * own process, so one agent's cut cannot delay another's receipt. Its own part is reported
 * beside it: the spread of the coordinator's write instants (SnapshotCommit.sent_unix_us, stamped
 * as each agent's commit is written), and the longest write → receipt of one agent.
 *
 * Consistent means, for every VM: after the restore it runs at the snapshot's epoch; it has no
 * more orphans, duplicates and gaps than at the cut (the sim driver keeps each VM's state at
 * the cut); every stream to and from it has continued past the cut; and over the whole VNE the
 * frames in flight at the cut (Σ sent − expected over every sender/receiver pair, from the cut
 * states) equal the frames recorded as channel state plus those the switches reported lost.
 *
 * With --json exactly one JSON object goes to stdout:
 *   {"agents":N,"vms":N,"commit_skew_ms":N,"coordinator_rss_mib":N,"snapshot_s":N,"restore_s":N,"consistent":true|false,
 *    "workers":N,"runs":N,"cut_skew_ms":{"median":N,"p95":N,"max":N},"commit_fanout_skew_ms":{"median":N,"p95":N,"max":N},
 *    "commit_send_spread_ms":{"median":N,"p95":N,"max":N},"commit_lag_ms":{"median":N,"p95":N,"max":N},"load":[1-min,5-min,15-min]}
 * (medians over the runs unless named; RSS is the peak); progress goes to stderr. Everything started is
 * stopped at the end, on failure and on SIGINT/SIGTERM, and the temporary directory removed.
 *
 * This machine has 2 cores shared by the coordinator, the workers and the bench itself, so the
 * sim VMs are kept light (1 MiB memory, 2 frames/s to each peer, no memory dirtied, 100 ms tick).
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import * as grpc from '@grpc/grpc-js';
import type { CoordinatorServiceClient } from '../../proto/gen/vnsnap/v1/CoordinatorService';
import type { Snapshot__Output } from '../../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotEvent__Output } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import { loadVnsnap } from '../../proto/core/grpc';
import { forEachFlag, usageExit } from './args';
import { errMsg, median, sleep } from './proc';
import type { FromWorker, ToWorker, VmCounters, WorkerSimOptions } from './scale-ipc';
import { cpuSeconds, memoryMib } from './scale-proc';
import { agentId, buildVne, peersOf, vmName } from './scale-topology';

const TARGET_SKEW_MS = 50;
const TARGET_FANOUT_SKEW_MS = 50;
const TARGET_RSS_MIB = 200;
const VNE = 'scale';

interface Options {
  json: boolean;
  agents: number;
  vmsPerAgent: number;
  workers: number;
  runs: number;
  mode: 'precopy' | 'background';
  peers: number;
  frameRateHz: number;
  memoryMib: number;
  dirtyRateMibS: number;
  tickMs: number;
  warmupS: number;
  settleS: number;
  coordinatorLogLevel: string;
  tmp: string;
  /**
   * The coordinator's dead_after_ms (a config file key); 0: its default (3000). The bench's
   * default is 10 s: 25 agents share one process and, on this 2-core machine, a fraction of a
   * core, so one agent's heartbeat waits for its neighbours' work in a way a host's agent's
   * does not; with 3 s, agents were declared dead under load (see docs/performance.md).
   */
  deadAfterMs: number;
}

function usage(msg?: string): never {
  usageExit('scale-bench', 'usage: scale-bench [--json] [--agents N] [--vms-per-agent N] [--workers N] [--runs N] [--mode precopy|background] [--peers N] [--frame-rate HZ] [--memory-mib N] [--dirty-rate MIBS] [--tick-ms MS] [--warmup S] [--settle S] [--coordinator-log-level L] [--tmp DIR] [--dead-after-ms MS]', msg);
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    json: false,
    agents: 100,
    vmsPerAgent: 10,
    workers: 4,
    runs: 1,
    mode: 'precopy',
    peers: 3,
    frameRateHz: 2,
    memoryMib: 1,
    // The smallest non-zero rate (1 MiB/s) dirties a 1 MiB VM's whole memory every second: on a
    // starved machine pre-copy then never converges (measured: 15 passes, 3 GiB for 200 VMs).
    dirtyRateMibS: 0,
    tickMs: 100,
    warmupS: 3,
    settleS: 3,
    coordinatorLogLevel: 'info',
    tmp: os.tmpdir(),
    deadAfterMs: 10_000,
  };
  const ints: Partial<Record<string, keyof Options>> = {
    '--agents': 'agents',
    '--vms-per-agent': 'vmsPerAgent',
    '--workers': 'workers',
    '--runs': 'runs',
    '--peers': 'peers',
    '--frame-rate': 'frameRateHz',
    '--memory-mib': 'memoryMib',
    '--dirty-rate': 'dirtyRateMibS',
    '--tick-ms': 'tickMs',
    '--dead-after-ms': 'deadAfterMs',
  };
  forEachFlag(argv, usage, (flag, val, a) => {
    const key = ints[flag];
    if (key) {
      const n = Number(val());
      if (!Number.isInteger(n) || n < (key === 'dirtyRateMibS' || key === 'frameRateHz' || key === 'peers' ? 0 : 1)) usage(`${flag} needs a positive integer`);
      (o as unknown as Record<string, number>)[key] = n;
      return;
    }
    switch (flag) {
      case '--json':
        o.json = true;
        break;
      case '--mode': {
        const m = val();
        if (m !== 'precopy' && m !== 'background') usage('--mode is precopy or background');
        o.mode = m;
        break;
      }
      case '--warmup':
        o.warmupS = Number(val());
        if (!(o.warmupS >= 0)) usage('--warmup needs seconds >= 0');
        break;
      case '--settle':
        o.settleS = Number(val());
        if (!(o.settleS > 0)) usage('--settle needs seconds > 0');
        break;
      case '--coordinator-log-level':
        o.coordinatorLogLevel = val();
        break;
      case '--tmp':
        o.tmp = val();
        break;
      case '-h':
      case '--help':
        usage();
        break;
      default:
        usage(`unknown option ${a}`);
    }
  });
  if (o.agents > 999) usage('--agents is at most 999');
  if (o.vmsPerAgent > 99) usage('--vms-per-agent is at most 99');
  o.workers = Math.min(o.workers, o.agents);
  return o;
}

/** VNSNAP_SCALE_PROF=<dir>: CPU profiles of the coordinator and the workers go there (.cpuprofile). */
function profArgs(who: string): string[] {
  const dir = process.env.VNSNAP_SCALE_PROF;
  // One directory per process: its worker threads write their own profiles beside the main thread's.
  return dir ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(dir, who)}`] : [];
}

let quiet = false;
function say(msg: string): void {
  process.stderr.write(`scale-bench: ${msg}\n`);
}
function out(line = ''): void {
  if (!quiet) process.stdout.write(`${line}\n`);
}

// ───────────────────────────── processes ─────────────────────────────

interface Coordinator {
  child: ChildProcess;
  pid: number;
  address: string;
  logBytes: () => number;
  logLines: () => number;
  tail: () => string;
}

function startCoordinator(dir: string, logLevel: string, deadAfterMs: number): Promise<Coordinator> {
  const main = path.resolve(__dirname, '../../coordinator/main.js');
  const config: string[] = [];
  if (deadAfterMs > 0) {
    fs.writeFileSync(path.join(dir, 'coordinator.json'), JSON.stringify({ deadAfterMs }));
    config.push('--config', path.join(dir, 'coordinator.json'));
  }
  const child = spawn(process.execPath, [...profArgs('coordinator'), main, '--listen', '127.0.0.1:0', '--insecure-plaintext', '--db', path.join(dir, 'catalog.db'), '--store-dir', path.join(dir, 'store'), '--log-level', logLevel, ...config], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let bytes = 0;
  let lines = 0;
  let tail = '';
  child.stderr?.on('data', (d: Buffer) => {
    bytes += d.length;
    for (const c of d) if (c === 10) lines++;
    tail = (tail + d.toString()).slice(-8192);
  });
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`the coordinator did not report ready within 20 s: ${tail}`)), 20_000);
    const rl = readline.createInterface({ input: child.stdout as NodeJS.ReadableStream });
    rl.on('line', (line) => {
      try {
        const m = JSON.parse(line) as { event?: string; address?: string };
        if (m.event === 'ready' && m.address) {
          clearTimeout(t);
          resolve({ child, pid: child.pid as number, address: m.address, logBytes: () => bytes, logLines: () => lines, tail: () => tail });
        }
      } catch {
        /* not ours */
      }
    });
    child.once('exit', (code, sig) => {
      clearTimeout(t);
      reject(new Error(`the coordinator exited (${code ?? sig}) before it was ready: ${tail}`));
    });
  });
}

class Worker {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (m: FromWorker) => void; reject: (e: Error) => void }>();
  private tail = '';
  readonly exited: Promise<void>;

  constructor(
    readonly child: ChildProcess,
    readonly agents: string[],
  ) {
    child.stderr?.on('data', (d: Buffer) => {
      this.tail = (this.tail + d.toString()).slice(-8192);
    });
    child.on('message', (m: FromWorker) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.type === 'error') p.reject(new Error(`worker ${child.pid}: ${m.message}`));
      else p.resolve(m);
    });
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, sig) => {
        for (const p of this.pending.values()) p.reject(new Error(`worker ${child.pid} exited (${code ?? sig}): ${this.tail.slice(-2000)}`));
        this.pending.clear();
        resolve();
      }),
    );
  }

  stderrTail(): string {
    return this.tail;
  }

  request<T extends FromWorker>(m: WithoutId<ToWorker>, timeoutMs = 60_000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`worker ${this.child.pid}: no answer to ${m.type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (r) => {
          clearTimeout(t);
          resolve(r as T);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      });
      if (!this.child.connected) return reject(new Error(`worker ${this.child.pid} is gone`));
      this.child.send({ ...m, id } as ToWorker);
    });
  }
}

type WithoutId<T> = T extends unknown ? Omit<T, 'id'> : never;

/**
 * One distinct free UDP port on 127.0.0.1 per agent, chosen by the kernel. The agents cannot
 * simply bind port 0: the switch's udpOpen sets SO_REUSEADDR, with which Linux may hand two
 * UDP sockets the same ephemeral port (two agents then share a tunnel port and the coordinator
 * refuses the second as a duplicate peer). Every probe socket stays open until all are chosen.
 */
async function freeUdpPorts(n: number): Promise<number[]> {
  const socks = await Promise.all(
    Array.from({ length: n }, () => new Promise<dgram.Socket>((resolve, reject) => {
      const s = dgram.createSocket('udp4');
      s.once('error', reject);
      s.bind(0, '127.0.0.1', () => resolve(s));
    })),
  );
  const ports = socks.map((s) => s.address().port);
  await Promise.all(socks.map((s) => new Promise<void>((r) => s.close(() => r()))));
  return ports;
}

const children = new Set<ChildProcess>();
let tmpDir: string | undefined;
let cleaning: Promise<void> | undefined;

async function cleanup(workers: Worker[]): Promise<void> {
  cleaning ??= (async () => {
    // Workers first (their agents close their sessions), then the coordinator.
    await Promise.allSettled(workers.map((w) => (w.child.connected ? w.request({ type: 'stop' }, 15_000) : Promise.resolve())));
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    }
    const deadline = Date.now() + 8000;
    for (const c of children) {
      while (c.exitCode === null && c.signalCode === null && Date.now() < deadline) await sleep(50);
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
    children.clear();
    if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
    tmpDir = undefined;
  })();
  return cleaning;
}

// ───────────────────────────── gRPC ─────────────────────────────

function unary<Req, Res>(client: CoordinatorServiceClient, method: string, req: Req, deadlineS = 300): Promise<Res> {
  return new Promise((resolve, reject) => {
    const fn = (client as unknown as Record<string, (r: Req, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: Res) => void) => void>)[method];
    if (!fn) return reject(new Error(`no method ${method}`));
    fn.call(client, req, new grpc.Metadata(), { deadline: Date.now() + deadlineS * 1000 }, (e, r) => (e ? reject(new Error(`${method}: ${e.details || e.message}`)) : resolve(r as Res)));
  });
}

interface StreamResult {
  done?: Snapshot__Output;
  /** Client-side receive time (ms since epoch) of each state, and the coordinator's time. */
  states: { state: string; atMs: number; coordinatorMs: number }[];
  vmEvents: number;
  notes: { note: string; atMs: number }[];
  startMs: number;
  endMs: number;
}

function consume(call: grpc.ClientReadableStream<SnapshotEvent__Output>): Promise<StreamResult> {
  const r: StreamResult = { states: [], vmEvents: 0, notes: [], startMs: Date.now(), endMs: 0 };
  return new Promise((resolve, reject) => {
    call.on('data', (e: SnapshotEvent__Output) => {
      const now = Date.now();
      if (e.event === 'state' && e.state) r.states.push({ state: e.state, atMs: now, coordinatorMs: Number(e.timeUnixMs) });
      else if (e.event === 'vm') r.vmEvents++;
      else if (e.event === 'note' && e.note) r.notes.push({ note: e.note, atMs: now });
      else if (e.event === 'done' && e.done) r.done = e.done;
    });
    call.on('error', (e: grpc.ServiceError) => reject(new Error(e.details || e.message)));
    call.on('end', () => {
      r.endMs = Date.now();
      resolve(r);
    });
  });
}

// ───────────────────────────── measurements ─────────────────────────────

interface PhaseStat {
  name: string;
  medianMs: number | null;
  maxMs: number | null;
}

interface RunResult {
  snapshotId: string;
  epoch: number;
  commitSkewMs: number;
  /** Spread of the instants the agents received SnapshotCommit. */
  fanoutSkewMs: number;
  /** Spread of the instants the coordinator wrote them (its own part of fanoutSkewMs). */
  fanoutSendMs: number;
  /** The longest time from the coordinator's write to an agent's receipt. */
  fanoutLagMs: number;
  pauseMedianMs: number | null;
  pauseMaxMs: number | null;
  snapshotS: number;
  /** Coordinator state durations (PRECOPY, COMMITTING, PERSISTING) in seconds. */
  states: Record<string, number>;
  vmPhases: PhaseStat[];
  vmEvents: number;
  restoreS: number;
  restoreNotes: { note: string; atS: number }[];
  restorePhases: PhaseStat[];
  coordinatorCpu: { snapshotS: number; restoreS: number };
  rssAfterSnapshotMib: number;
  rssAfterRestoreMib: number;
  artefacts: number;
  sizeMib: number;
  channelFrames: number;
  lostFrames: number;
  consistency: Consistency;
}

interface Consistency {
  consistent: boolean;
  checkedVms: number;
  inFlightAtCut: number;
  recorded: number;
  lost: number;
  gapsAfter: number;
  problems: string[];
}

function phaseStats(vms: Snapshot__Output['vms'], names: string[]): PhaseStat[] {
  return names.map((name) => {
    const ds: number[] = [];
    for (const v of vms) for (const p of v.phases) if (p.phase === name) ds.push((Number(p.endUnixUs) - Number(p.startUnixUs)) / 1000);
    return { name: name.replace(/^PHASE_/, '').toLowerCase(), medianMs: median(ds), maxMs: ds.length ? Math.max(...ds) : null };
  });
}

function checkConsistency(o: Options, states: Map<string, { now?: VmCounters; cut?: VmCounters }>, epoch: number, recorded: number, lost: number): Consistency {
  const problems: string[] = [];
  const note = (p: string) => {
    if (problems.length < 20) problems.push(p);
    else if (problems.length === 20) problems.push('…');
  };
  let inFlight = 0;
  let gapsAfter = 0;
  let checked = 0;
  const key = (a: number, i: number) => `${VNE}/${vmName(a, i)}`;
  for (let a = 0; a < o.agents; a++) {
    for (let i = 0; i < o.vmsPerAgent; i++) {
      const name = vmName(a, i);
      const s = states.get(key(a, i));
      if (!s?.now) {
        note(`${name}: not running after the restore`);
        continue;
      }
      if (!s.cut) {
        note(`${name}: no state at the cut of epoch ${epoch}`);
        continue;
      }
      checked++;
      const { now, cut } = s;
      if (now.status !== 'running') note(`${name}: ${now.status} after the restore`);
      if (now.epoch !== epoch) note(`${name}: at epoch ${now.epoch} after the restore, the snapshot's is ${epoch}`);
      if (now.orphans !== cut.orphans) note(`${name}: ${now.orphans - cut.orphans} orphan frames after the restore`);
      if (now.duplicates !== cut.duplicates) note(`${name}: ${now.duplicates - cut.duplicates} duplicate frames after the restore`);
      gapsAfter += now.gaps - cut.gaps;
      if (now.gaps !== cut.gaps) note(`${name}: ${now.gaps - cut.gaps} frames missing after the restore`);
      for (const p of peersOf(o, a, i)) {
        if ((now.sent[p] ?? 0) <= (cut.sent[p] ?? 0)) note(`${name} → ${p}: nothing sent since the restore (at ${now.sent[p] ?? 0}, cut at ${cut.sent[p] ?? 0})`);
        // In flight at the cut on this stream: sent before the sender's cut, not received before the receiver's.
        const [pa, pi] = p.slice(3).split('-').map(Number) as [number, number];
        const r = states.get(key(pa, pi));
        if (r?.cut) {
          const d = (cut.sent[p] ?? 0) - (r.cut.expected[name] ?? 0);
          if (d < 0) note(`${name} → ${p}: the receiver's cut saw ${-d} frames the sender's cut had not sent (orphans)`);
          inFlight += d;
        }
        if (r?.now && r.cut && (r.now.expected[name] ?? 0) <= (r.cut.expected[name] ?? 0)) note(`${name} → ${p}: the receiver got nothing since the restore`);
      }
    }
  }
  if (inFlight !== recorded + lost) note(`frames in flight at the cut: ${inFlight}; recorded as channel state: ${recorded}, reported lost: ${lost}`);
  return { consistent: problems.length === 0, checkedVms: checked, inFlightAtCut: inFlight, recorded, lost, gapsAfter, problems };
}

/**
 * The commit fan-out of one snapshot, ms: `skew`, max − min of the agents' receipt instants; `send`,
 * max − min of the coordinator's own write instants (its part of the skew; the rest is the
 * network and the receiving processes); `lag`, the largest receipt − write of one agent.
 */
async function fanout(workers: Worker[], snapshotId: string, agents: number): Promise<{ skew: number; send: number; lag: number }> {
  const got: { at: number; sent: number }[] = [];
  for (const w of workers) {
    const r = await w.request<Extract<FromWorker, { type: 'commits' }>>({ type: 'commits', snapshotId });
    got.push(...Object.values(r.received));
  }
  if (got.length !== agents) throw new Error(`snapshot ${snapshotId}: ${got.length} of ${agents} agents stamped a SnapshotCommit`);
  const at = got.map((g) => g.at);
  const sent = got.map((g) => g.sent);
  if (sent.some((s) => s <= 0)) throw new Error(`snapshot ${snapshotId}: a SnapshotCommit without the coordinator's send stamp`);
  return { skew: (Math.max(...at) - Math.min(...at)) / 1000, send: (Math.max(...sent) - Math.min(...sent)) / 1000, lag: Math.max(...got.map((g) => g.at - g.sent)) / 1000 };
}

/** Nearest-rank percentile of xs (NaN when empty). */
function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] as number;
}

async function queryAll(workers: Worker[], o: Options, epoch: number): Promise<Map<string, { now?: VmCounters; cut?: VmCounters }>> {
  const states = new Map<string, { now?: VmCounters; cut?: VmCounters }>();
  await Promise.all(
    workers.map(async (w) => {
      const vms = w.agents.flatMap((id) => {
        const a = Number(id.slice('agent-'.length));
        return Array.from({ length: o.vmsPerAgent }, (_, i) => ({ agent: id, vne: VNE, vm: vmName(a, i) }));
      });
      const r = await w.request<Extract<FromWorker, { type: 'states' }>>({ type: 'query', vms, cutEpoch: epoch }, 120_000);
      for (const [k, v] of Object.entries(r.states)) states.set(k, v);
    }),
  );
  return states;
}

// ───────────────────────────── main ─────────────────────────────

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  quiet = o.json;
  const nVms = o.agents * o.vmsPerAgent;
  const sim: WorkerSimOptions = { tickMs: o.tickMs, passIntervalMs: 10, frameBytes: 96 };
  const workers: Worker[] = [];
  let client: CoordinatorServiceClient | undefined;
  let interrupted = false;
  let coordTail: (() => string) | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    say(`${sig}: stopping everything`);
    client?.close();
    void cleanup(workers).finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    tmpDir = fs.mkdtempSync(path.join(o.tmp, 'vnsnap-scale-'));
    say(`${o.agents} agents × ${o.vmsPerAgent} VMs = ${nVms} sim VMs in ${o.workers} worker processes; one VNE; ${o.runs} run(s), ${o.mode}; temp ${tmpDir}`);
    const t0 = Date.now();
    const coord = await startCoordinator(tmpDir, o.coordinatorLogLevel, o.deadAfterMs);
    coordTail = coord.tail;
    const cpuStart = cpuSeconds(coord.pid) ?? 0;
    say(`coordinator pid ${coord.pid} at ${coord.address}`);

    // Workers: agents dealt out round-robin so each worker holds a mix.
    const byWorker: string[][] = Array.from({ length: o.workers }, () => []);
    for (let a = 0; a < o.agents; a++) byWorker[a % o.workers]?.push(agentId(a));
    const ports = await freeUdpPorts(o.agents);
    const portOf = new Map(Array.from({ length: o.agents }, (_, a) => [agentId(a), ports[a] as number]));
    const workerMain = path.resolve(__dirname, 'scale-worker.js');
    for (const ids of byWorker) {
      const child = fork(workerMain, [], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], execArgv: profArgs(`worker${workers.length}`) });
      children.add(child);
      workers.push(new Worker(child, ids));
    }
    const tAgents0 = Date.now();
    await Promise.all(workers.map((w) => w.request({ type: 'init', coordinator: coord.address, agents: w.agents.map((id) => ({ id, tunnelPort: portOf.get(id) ?? 0 })), storeRoot: path.join(tmpDir as string, 'store'), sim, logLevel: 'warn' }, 120_000)));
    const agentsUpS = (Date.now() - tAgents0) / 1000;
    say(`${o.agents} agents registered in ${agentsUpS.toFixed(2)} s`);

    const pkg = loadVnsnap();
    client = new pkg.vnsnap.v1.CoordinatorService(coord.address, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 256 << 20 }) as unknown as CoordinatorServiceClient;
    const vne = buildVne({ vne: VNE, vni: 4242, agents: o.agents, vmsPerAgent: o.vmsPerAgent, peers: o.peers, memoryMib: o.memoryMib, dirtyRateMibS: o.dirtyRateMibS, frameRateHz: o.frameRateHz });
    let t = Date.now();
    const cpuDefine0 = cpuSeconds(coord.pid) ?? 0;
    await unary(client, 'DefineVne', { vne });
    const defineS = (Date.now() - t) / 1000;
    t = Date.now();
    await unary(client, 'StartVne', { name: VNE });
    const startS = (Date.now() - t) / 1000;
    const cpuStartVne = (cpuSeconds(coord.pid) ?? 0) - cpuDefine0;
    const rssAfterStart = memoryMib(coord.pid)?.rss ?? 0;
    say(`VNE defined in ${defineS.toFixed(2)} s, ${nVms} VMs started in ${startS.toFixed(2)} s (coordinator CPU ${cpuStartVne.toFixed(2)} s, RSS ${rssAfterStart.toFixed(0)} MiB); ${o.warmupS} s of traffic`);
    await sleep(o.warmupS * 1000);

    const runs: RunResult[] = [];
    for (let run = 1; run <= o.runs; run++) {
      // Snapshot.
      const cpu0 = cpuSeconds(coord.pid) ?? 0;
      const snap = await consume(client.CreateSnapshot({ vne: VNE, mode: o.mode === 'precopy' ? 'SNAPSHOT_MODE_PRECOPY' : 'SNAPSHOT_MODE_BACKGROUND', description: `bench:scale run ${run}` }));
      const cpu1 = cpuSeconds(coord.pid) ?? 0;
      const rssAfterSnapshotMib = memoryMib(coord.pid)?.rss ?? 0;
      if (!snap.done || snap.done.state !== 'SNAPSHOT_STATE_COMPLETE') throw new Error(`snapshot ${snap.done?.id ?? '?'} did not complete: ${snap.done?.state ?? 'no final record'} ${snap.done?.error ?? ''}`);
      const rec = await unary<{ id: string }, Snapshot__Output>(client, 'GetSnapshot', { id: snap.done.id });
      const cuts = rec.vms.map((v) => Number(v.cutUnixUs)).filter((x) => x > 0);
      if (cuts.length !== nVms) throw new Error(`snapshot ${rec.id} has ${cuts.length} cut instants for ${nVms} VMs`);
      const commitSkewMs = (Math.max(...cuts) - Math.min(...cuts)) / 1000;
      const fan = await fanout(workers, rec.id, o.agents);
      const fanoutSkewMs = fan.skew;
      const pauses = rec.vms.map((v) => v.pauseMs);
      const at = (s: string) => snap.states.find((x) => x.state === s)?.coordinatorMs;
      const created = Number(rec.createdUnixMs);
      const completed = Number(rec.completedUnixMs);
      const committing = at('SNAPSHOT_STATE_COMMITTING');
      const persisting = at('SNAPSHOT_STATE_PERSISTING');
      const states: Record<string, number> = {};
      if (committing !== undefined) states.precopy = (committing - created) / 1000;
      if (committing !== undefined && persisting !== undefined) states.committing = (persisting - committing) / 1000;
      if (persisting !== undefined) states.persisting = (completed - persisting) / 1000;
      const channelFrames = rec.vms.reduce((n, v) => n + v.channelFrames, 0);
      say(`run ${run}: snapshot ${rec.id} complete in ${((snap.endMs - snap.startMs) / 1000).toFixed(2)} s, commit fan-out skew ${fanoutSkewMs.toFixed(1)} ms (coordinator's writes spread ${fan.send.toFixed(1)} ms, longest write → receipt ${fan.lag.toFixed(1)} ms), cut skew ${commitSkewMs.toFixed(1)} ms, ${channelFrames} channel frames, ${rec.lostFrames} lost`);

      // Let the VNE move on, then restore it to the cut.
      await sleep(1000);
      const cpu2 = cpuSeconds(coord.pid) ?? 0;
      const res = await consume(client.RestoreSnapshot({ snapshotId: rec.id, stopRunning: true }));
      const cpu3 = cpuSeconds(coord.pid) ?? 0;
      const rssAfterRestoreMib = memoryMib(coord.pid)?.rss ?? 0;
      if (!res.done) throw new Error(`restore of ${rec.id} ended without its final record`);
      const restoreS = (res.endMs - res.startMs) / 1000;
      say(`run ${run}: restored in ${restoreS.toFixed(2)} s; ${o.settleS} s of traffic, then the consistency check`);
      await sleep(o.settleS * 1000);
      const vmStates = await queryAll(workers, o, rec.epoch);
      const consistency = checkConsistency(o, vmStates, rec.epoch, channelFrames, rec.lostFrames);
      say(`run ${run}: ${consistency.consistent ? 'consistent' : `NOT consistent: ${consistency.problems.slice(0, 5).join('; ')}`}`);
      runs.push({
        snapshotId: rec.id,
        epoch: rec.epoch,
        commitSkewMs,
        fanoutSkewMs,
        fanoutSendMs: fan.send,
        fanoutLagMs: fan.lag,
        pauseMedianMs: median(pauses),
        pauseMaxMs: Math.max(...pauses),
        snapshotS: (snap.endMs - snap.startMs) / 1000,
        states,
        vmPhases: phaseStats(rec.vms, ['PHASE_PRECOPY', 'PHASE_PAUSE', 'PHASE_COPY', 'PHASE_CHANNEL', 'PHASE_PERSIST']),
        vmEvents: snap.vmEvents,
        restoreS,
        restoreNotes: res.notes.map((n) => ({ note: n.note, atS: (n.atMs - res.startMs) / 1000 })),
        restorePhases: [],
        coordinatorCpu: { snapshotS: cpu1 - cpu0, restoreS: cpu3 - cpu2 },
        rssAfterSnapshotMib,
        rssAfterRestoreMib,
        artefacts: rec.artefacts.length,
        sizeMib: Number(rec.sizeBytes) / (1 << 20),
        channelFrames,
        lostFrames: rec.lostFrames,
        consistency,
      });
      await unary(client, 'DeleteSnapshot', { id: rec.id }).catch((e: unknown) => say(`deleting ${rec.id} failed: ${errMsg(e)}`));
    }

    const mem = memoryMib(coord.pid);
    const cpuTotal = (cpuSeconds(coord.pid) ?? 0) - cpuStart;
    const wallS = (Date.now() - t0) / 1000;
    const workerCpu = workers.map((w) => cpuSeconds(w.child.pid as number) ?? 0);
    const workerRss = workers.map((w) => memoryMib(w.child.pid as number)?.hwm ?? 0);
    const logBytes = coord.logBytes();
    const logLines = coord.logLines();
    client.close();
    client = undefined;
    await cleanup(workers);

    const med = (f: (r: RunResult) => number | null): number => median(runs.map(f).filter((x): x is number => x !== null)) ?? NaN;
    const skew = med((r) => r.commitSkewMs);
    const rss = mem?.hwm ?? NaN;
    const consistent = runs.every((r) => r.consistency.consistent);
    const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;
    const spread = (xs: number[]) => ({ median: round(median(xs) ?? NaN), p95: round(percentile(xs, 95)), max: round(Math.max(...xs)) });
    const cutSkews = runs.map((r) => r.commitSkewMs);
    const fanoutSkews = runs.map((r) => r.fanoutSkewMs);
    const fanoutSpread = spread(fanoutSkews);
    const sendSpread = spread(runs.map((r) => r.fanoutSendMs));
    const lagSpread = spread(runs.map((r) => r.fanoutLagMs));
    const load = os.loadavg().map((l) => round(l, 2));
    if (o.json) {
      process.stdout.write(
        `${JSON.stringify({ agents: o.agents, vms: nVms, commit_skew_ms: round(skew), coordinator_rss_mib: round(rss, 1), snapshot_s: round(med((r) => r.snapshotS)), restore_s: round(med((r) => r.restoreS)), consistent, workers: o.workers, runs: runs.length, cut_skew_ms: spread(cutSkews), commit_fanout_skew_ms: fanoutSpread, commit_send_spread_ms: sendSpread, commit_lag_ms: lagSpread, load })}\n`,
      );
    } else {
      const f = (x: number | null | undefined, d = 1) => (x === null || x === undefined || Number.isNaN(x) ? '-' : x.toFixed(d));
      const met = (ok: boolean) => (ok ? 'met' : 'NOT met');
      out(`bench:scale — ${o.agents} agents × ${o.vmsPerAgent} VMs = ${nVms} sim VMs, one VNE, ${o.workers} worker processes, ${os.cpus().length} cores`);
      out(`sim VMs kept light for this machine: ${o.memoryMib} MiB memory, ${o.frameRateHz} frames/s to each of ${o.peers} peers on other agents, ${o.dirtyRateMibS} MiB/s dirtied, ${o.tickMs} ms tick`);
      out(`snapshot mode ${o.mode}; restore onto the same placement (stop_running); ${runs.length} run(s)${runs.length > 1 ? ', medians' : ''}`);
      out(`coordinator dead_after_ms ${o.deadAfterMs || 'default (3000)'}; load average at the end ${load.map((l) => l.toFixed(1)).join(' ')}`);
      out('');
      out(`commit fan-out skew (max − min receipt) median ${f(fanoutSpread.median)} ms, p95 ${f(fanoutSpread.p95)} ms, max ${f(fanoutSpread.max)} ms    target ≤ ${TARGET_FANOUT_SKEW_MS} ms: ${met(fanoutSpread.max <= TARGET_FANOUT_SKEW_MS)}`);
      out(`  of which the coordinator's writes (max − min send stamp) median ${f(sendSpread.median)} ms, max ${f(sendSpread.max)} ms; longest write → receipt median ${f(lagSpread.median)} ms, max ${f(lagSpread.max)} ms`);
      out(`cut skew (max − min cut instant)        median ${f(skew)} ms, p95 ${f(percentile(cutSkews, 95))} ms, max ${f(Math.max(...cutSkews))} ms    target ≤ ${TARGET_SKEW_MS} ms: ${met(skew <= TARGET_SKEW_MS)}`);
      out(`coordinator peak RSS (VmHWM)         ${f(rss)} MiB   target ≤ ${TARGET_RSS_MIB} MiB: ${met(rss <= TARGET_RSS_MIB)}`);
      out(`consistent                           ${consistent ? 'yes' : 'NO'}`);
      out('');
      out(`setup: agents up ${f(agentsUpS, 2)} s, DefineVne ${f(defineS, 2)} s, StartVne ${f(startS, 2)} s (coordinator CPU ${f(cpuStartVne, 2)} s)`);
      out(`snapshot  ${f(med((r) => r.snapshotS), 2)} s: precopy ${f(med((r) => r.states.precopy ?? null), 2)} s, committing ${f(med((r) => r.states.committing ?? null), 2)} s, persisting ${f(med((r) => r.states.persisting ?? null), 2)} s`);
      out(`  per VM (median / max ms): ${runs[0]?.vmPhases.map((p) => `${p.name} ${f(p.medianMs)} / ${f(p.maxMs)}`).join(', ')}`);
      out(`  VM pause median ${f(med((r) => r.pauseMedianMs))} ms, max ${f(med((r) => r.pauseMaxMs))} ms; ${f(med((r) => r.vmEvents), 0)} VM progress events streamed; ${f(med((r) => r.artefacts), 0)} artefacts, ${f(med((r) => r.sizeMib))} MiB`);
      out(`restore   ${f(med((r) => r.restoreS), 2)} s: ${runs[0]?.restoreNotes.map((n) => `${n.note.replace(/^restore: /, '').replace(/ on .*$/, '')} @${n.atS.toFixed(2)} s`).join(', ')}`);
      out(`coordinator CPU: ${f(cpuTotal, 2)} s over ${f(wallS, 1)} s (${f((100 * cpuTotal) / wallS, 0)} % of one core); snapshot ${f(med((r) => r.coordinatorCpu.snapshotS), 2)} s, restore ${f(med((r) => r.coordinatorCpu.restoreS), 2)} s`);
      out(`coordinator RSS: after start ${f(rssAfterStart)} MiB, after snapshot ${f(med((r) => r.rssAfterSnapshotMib))} MiB, after restore ${f(med((r) => r.rssAfterRestoreMib))} MiB, peak ${f(rss)} MiB; log ${logLines} lines, ${f(logBytes / 1024, 0)} KiB`);
      out(`workers: CPU ${workerCpu.map((c) => f(c, 1)).join(' / ')} s, peak RSS ${workerRss.map((m) => f(m, 0)).join(' / ')} MiB`);
      for (const [i, r] of runs.entries()) {
        const c = r.consistency;
        out(
          `run ${i + 1}: fan-out skew ${f(r.fanoutSkewMs)} ms (writes ${f(r.fanoutSendMs)} ms), cut skew ${f(r.commitSkewMs)} ms, snapshot ${f(r.snapshotS, 2)} s, restore ${f(r.restoreS, 2)} s; ${c.checkedVms} VMs checked, in flight at the cut ${c.inFlightAtCut}, recorded ${c.recorded}, lost ${c.lost}: ${c.consistent ? 'consistent' : `NOT consistent (${c.problems.join('; ')})`}`,
        );
      }
    }
    process.exitCode = consistent ? 0 : 1;
  } catch (e) {
    say(`failed: ${errMsg(e)}`);
    for (const w of workers) {
      const st = await w.request<Extract<FromWorker, { type: 'stats' }>>({ type: 'stats' }, 5000).catch(() => undefined);
      if (st) say(`worker ${w.child.pid}: event-loop delay max ${st.maxLagMs.toFixed(0)} ms, p99 ${st.p99LagMs.toFixed(0)} ms`);
      else say(`worker ${w.child.pid}: no answer (exit ${w.child.exitCode ?? w.child.signalCode ?? 'none yet'}): ${w.stderrTail().slice(-600)}`);
    }
    if (coordTail) say(`coordinator log (last lines):\n${coordTail().split('\n').slice(-15).join('\n')}`);
    client?.close();
    await cleanup(workers);
    process.exitCode = 1;
  }
}

void main();
