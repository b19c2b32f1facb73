/**
 * bench:ram-track — what one memory snapshot of a running guest costs when the agent captures
 * only the pages written since the previous one (RamWriteTracker, agent/drivers/qemu/ram-track.ts),
 * against QEMU's own background snapshot, which saves the whole non-zero RAM every time. The
 * question it answers (docs/incremental-memory.md): can snapshots once a second be afforded on
 * a host whose cores the guests need (issue 13's "TCP while snapshots run once a second", issue
 * 15's wall time)?
 *
 * In one run, side by side, four TCG test guests (docs/guest.md; RAM `--memory` MiB, the guest's
 * memory load rewriting `--load-mib` MiB at `--load-rate` MiB/s, no disk, no network):
 *   qemu     two guests with QEMU's usual RAM: each round, `stop` and `migrate` with the
 *            background-snapshot capability written back to back to a socket this process reads
 *            (as bench:snapshot's bare_qemu), QEMU resumes the VM itself; the stream SHA-256'd
 *            as it arrives (the least a store does with it);
 *   tracked  two guests with their RAM as a shared memfd, tracked from their start: each round,
 *            `--pre-rounds` rounds while the guest runs (a scan of the written pages and those
 *            pages read, widened to `--block-kib` blocks, the unit an incremental image would
 *            keep), then `stop`, one more round (what was written since: the pause's copy), the
 *            device state alone saved by `migrate` with x-ignore-shared to a socket this process
 *            reads, `cont`; then every block read SHA-256'd on the thread pool. As an agent would
 *            run it, the rounds before the stop are done for both VMs before either stops (the
 *            begin, ahead of the cut), so one VM's reads never fall inside the other's pause.
 * Rounds alternate between the pair, both VMs of a pair at once, one round every `--every-ms`.
 * Per snapshot: the pause (QEMU's STOP → RESUME event timestamps), the wall time (stop → last
 * byte hashed), the bytes captured, and the CPU it cost: QEMU's threads other than its vCPUs
 * (/proc/PID/task/TID/schedstat) over the snapshot, plus this process's own over the round
 * (process.cpuUsage) shared out evenly between the round's VMs.
 * Over the whole run, each guest's memory-load progress (pages touched per second, from its
 * VNSTAT lines): what tracking and snapshots cost the guests.
 *
 *   npm run bench:ram-track -- [--rounds N] [--every-ms N] [--memory MiB] [--load-mib N]
 *                              [--load-rate N] [--block-kib N] [--pre-rounds N] [--json] [--help]
 *
 * Needs root, QEMU, Linux 6.7+ (asynchronous userfaultfd write protection). Prefix `vnrb`:
 * a temporary directory; every QEMU is killed on exit, also on failure or SIGINT.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, webcrypto } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { QmpClient, type QmpEvent } from '../../agent/drivers/qemu/qmp';
import { blockRuns, RamWriteTracker, trackedRamArgs, trackedRamEnv } from '../../agent/drivers/qemu/ram-track';
import { nativeIo } from '../../switch/native-io';
import { buildGuest, ensureQemu, guestFiles, qemuArgs, serialStatuses, type GuestImage } from '../guest/qemu-guest';
import { stopChild } from '../support/netns';
import { sleep, until } from '../support/wait';
import { forEachFlag, helpExit, usageExit, wholeArg } from './args';
import { median, stats, type Stats } from './snapshot-figures';

const NAME = 'bench:ram-track';
const USAGE = 'usage: npm run bench:ram-track -- [--rounds N] [--every-ms N] [--memory MiB] [--load-mib N] [--load-rate N] [--block-kib N] [--pre-rounds N] [--json] [--help]';
const HELP = `${USAGE}

Memory snapshots of running test guests: QEMU's background snapshot (the whole RAM every time)
against the agent's capture of the pages written since the previous snapshot, side by side.
  --rounds N      snapshots per mode (default 10)
  --every-ms N    one round every N ms, alternating the modes (default 1000)
  --memory MiB    guest RAM (default 256)
  --load-mib N    the guest's memory load: MiB it rewrites (default 32)
  --load-rate N   ... at N MiB/s (default 8)
  --block-kib N   the unit the capture reads and hashes (a power of two, default 64)
  --pre-rounds N  rounds of the tracked capture while the guest runs, before its stop (default 1)
  --json          one JSON object on stdout (progress on stderr)
Needs root, QEMU and Linux 6.7 or later.`;

interface Options {
  rounds: number;
  everyMs: number;
  memoryMib: number;
  loadMib: number;
  loadRate: number;
  blockKib: number;
  preRounds: number;
  json: boolean;
}

function parseArgs(argv: readonly string[]): Options {
  const o: Options = { rounds: 10, everyMs: 1000, memoryMib: 256, loadMib: 32, loadRate: 8, blockKib: 64, preRounds: 1, json: false };
  const usage = (msg: string): never => usageExit(NAME, USAGE, msg);
  forEachFlag(argv, usage, (flag, value, arg) => {
    if (flag === '--rounds') o.rounds = wholeArg(flag, value(), 1, usage);
    else if (flag === '--every-ms') o.everyMs = wholeArg(flag, value(), 0, usage);
    else if (flag === '--memory') o.memoryMib = wholeArg(flag, value(), 64, usage);
    else if (flag === '--load-mib') o.loadMib = wholeArg(flag, value(), 0, usage);
    else if (flag === '--load-rate') o.loadRate = wholeArg(flag, value(), 1, usage);
    else if (flag === '--block-kib') o.blockKib = wholeArg(flag, value(), 4, usage);
    else if (flag === '--pre-rounds') o.preRounds = wholeArg(flag, value(), 0, usage);
    else if (flag === '--json') o.json = true;
    else if (flag === '--help' || flag === '-h') helpExit(HELP);
    else usage(`unknown argument ${JSON.stringify(arg)}`);
  });
  if ((o.blockKib & (o.blockKib - 1)) !== 0) usage(`--block-kib needs a power of two, got ${o.blockKib}`);
  if (o.loadMib >= o.memoryMib / 2) usage(`--load-mib (${o.loadMib}) must be under half of --memory (${o.memoryMib})`);
  return o;
}

const say = (m: string): void => void process.stderr.write(`${m}\n`);

interface Guest {
  name: string;
  mode: 'qemu' | 'tracked';
  dir: string;
  proc: ChildProcess;
  qmp: QmpClient;
  tracker?: RamWriteTracker;
}

interface Shot {
  pauseMs: number;
  wallMs: number;
  bytes: number;
  cpuS: number;
  /** The tracked capture's parts (ms): rounds before the stop, `stop`, the stopped round, the device state. */
  split?: { preMs: number; stopMs: number; finalReadMs: number; finalMiB: number; deviceStateMs: number; deviceStateKiB: number };
}

const guests: Guest[] = [];

async function startGuest(image: GuestImage, o: Options, name: string, mode: Guest['mode'], root: string): Promise<Guest> {
  const dir = fs.mkdtempSync(path.join(root, `${name}-`));
  const args = qemuArgs({
    image, dir, memMiB: o.memoryMib, mac: `52:54:00:72:62:0${guests.length + 1}`, netdev: `hubport,id=n0,hubid=${guests.length}`, statusChannel: false,
    params: { name, memMiB: o.loadMib, memRateMiB: o.loadRate, disk: 'none', reportSecs: 1 },
    extraArgs: [...(mode === 'tracked' ? trackedRamArgs(o.memoryMib * 1024) : []), '-name', `${name},debug-threads=on`],
  });
  const proc = spawn('qemu-system-x86_64', args, { stdio: 'ignore', env: { ...process.env, ...(mode === 'tracked' ? trackedRamEnv() : {}) } });
  const g: Guest = { name, mode, dir, proc, qmp: undefined as unknown as QmpClient };
  guests.push(g);
  g.qmp = await QmpClient.connect(guestFiles(dir).qmpSock, { isAlive: () => proc.exitCode === null && proc.signalCode === null, timeoutMs: 30_000, name });
  const caps = mode === 'tracked' ? ['events', 'x-ignore-shared'] : ['events', 'background-snapshot'];
  await g.qmp.execute('migrate-set-capabilities', { capabilities: caps.map((capability) => ({ capability, state: true })) });
  await g.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 8 * 1024 * 1024 * 1024 });
  if (mode === 'tracked') g.tracker = RamWriteTracker.start(proc.pid as number);
  return g;
}

/** CPU seconds of QEMU pid's threads other than its vCPUs (schedstat: ns on a CPU). */
function qemuNonVcpuS(pid: number): number {
  let ns = 0;
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      if (fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').startsWith('CPU ')) continue;
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      /* a thread that ended meanwhile */
    }
  }
  return ns / 1e9;
}

const ownCpuS = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

/** Listens at sock for one connection; resolves with its bytes' count and SHA-256 once it closes. */
async function hashingSink(sock: string): Promise<{ done: Promise<{ bytes: number; end: number }>; close: () => void }> {
  fs.rmSync(sock, { force: true });
  let resolveDone!: (v: { bytes: number; end: number }) => void;
  let rejectDone!: (e: unknown) => void;
  const done = new Promise<{ bytes: number; end: number }>((res, rej) => ((resolveDone = res), (rejectDone = rej)));
  const server = net.createServer((s) => {
    server.close();
    const h = createHash('sha256');
    let bytes = 0;
    s.on('data', (d: Buffer) => {
      bytes += d.length;
      h.update(d);
    });
    s.on('end', () => {
      h.digest();
      resolveDone({ bytes, end: performance.now() });
    });
    s.on('error', rejectDone);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(sock, () => resolve());
  });
  done.catch(() => undefined);
  return { done, close: () => (server.close(), fs.rmSync(sock, { force: true })) };
}

/** Event waits a failure may leave unawaited: their rejection at cleanup must not hide the failure. */
function handled(...ps: Promise<unknown>[]): void {
  for (const p of ps) p.catch(() => undefined);
}

async function pauseOf(stop: Promise<QmpEvent>, resume: Promise<QmpEvent>): Promise<number> {
  const [s, e] = await Promise.all([stop, resume]);
  return (e.timestampUs - s.timestampUs) / 1000;
}

/** QEMU's background snapshot of g (bench:snapshot's bare_qemu), the stream hashed as it arrives. */
async function qemuShot(g: Guest): Promise<Shot> {
  const sink = await hashingSink(path.join(g.dir, 'snap.sock'));
  try {
    const cpu0 = qemuNonVcpuS(g.proc.pid as number);
    const stop = g.qmp.waitEvent('STOP', undefined, 30_000);
    const resume = g.qmp.waitEvent('RESUME', undefined, 60_000);
    const end = g.qmp.waitEvent('MIGRATION', (d) => ['completed', 'failed', 'cancelled'].includes(String(d.status)), 300_000);
    handled(stop, resume, end);
    const t0 = performance.now();
    await Promise.all([g.qmp.execute('stop'), g.qmp.execute('migrate', { uri: `unix:${path.join(g.dir, 'snap.sock')}` })]);
    const st = await end;
    if (st.data.status !== 'completed') throw new Error(`${g.name}: background snapshot ${String(st.data.status)}`);
    const got = await sink.done;
    const pauseMs = await pauseOf(stop, resume);
    return { pauseMs, wallMs: got.end - t0, bytes: got.bytes, cpuS: qemuNonVcpuS(g.proc.pid as number) - cpu0 };
  } finally {
    sink.close();
  }
}

/** Blocks read by a tracked capture's rounds. */
interface Capture {
  bufs: Buffer[];
  bytes: number;
  t0: number;
  cpu0: number;
}

/** One round of a tracked capture: the runs written since the last scan, widened to blocks, read now. */
function captureRound(g: Guest, c: Capture, blockSize: number): Buffer {
  const t = g.tracker as RamWriteTracker;
  const blocks = blockRuns(t.scan(), blockSize, t.length);
  const buf = Buffer.allocUnsafe(blocks.bytes);
  t.read(blocks, buf);
  c.bufs.push(buf);
  c.bytes += blocks.bytes;
  return buf;
}

/**
 * The tracked capture's begin, as an agent would run it ahead of the cut: `preRounds` rounds with
 * the guest running. Done for every VM before any VM stops, so one VM's reads never fall inside
 * another's pause.
 */
function trackedBegin(g: Guest, blockSize: number, preRounds: number): Capture {
  const c: Capture = { bufs: [], bytes: 0, t0: performance.now(), cpu0: qemuNonVcpuS(g.proc.pid as number) };
  for (let i = 0; i < preRounds; i++) captureRound(g, c, blockSize);
  return c;
}

/**
 * The tracked capture's cut: `stop`, the last round, the device state alone (x-ignore-shared), `cont`;
 * then every block read SHA-256'd on the thread pool (webcrypto), as a store's hashing worker would.
 */
async function trackedCut(g: Guest, c: Capture, blockSize: number): Promise<Shot> {
  const sink = await hashingSink(path.join(g.dir, 'dev.sock'));
  try {
    const stop = g.qmp.waitEvent('STOP', undefined, 30_000);
    const resume = g.qmp.waitEvent('RESUME', undefined, 60_000);
    const end = g.qmp.waitEvent('MIGRATION', (d) => ['completed', 'failed', 'cancelled'].includes(String(d.status)), 60_000);
    handled(stop, resume, end);
    const tStop = performance.now();
    await g.qmp.execute('stop');
    const tStopped = performance.now();
    const last = captureRound(g, c, blockSize);
    const tRead = performance.now();
    await g.qmp.execute('migrate', { uri: `unix:${path.join(g.dir, 'dev.sock')}` });
    const st = await end;
    if (st.data.status !== 'completed') throw new Error(`${g.name}: device state ${String(st.data.status)}`);
    // QEMU emits the completion before its cleanup moves the VM out of finish-migrate, and refuses
    // `cont` until then ("Migration is not finalized yet"): no event marks that step.
    await until(`${g.name} out of finish-migrate`, async () => (await g.qmp.execute<{ status: string }>('query-status')).status !== 'finish-migrate', { timeoutMs: 10_000, everyMs: 1 });
    const tSaved = performance.now();
    await g.qmp.execute('cont');
    const hashes: Promise<ArrayBuffer>[] = [];
    for (const buf of c.bufs) for (let off = 0; off < buf.length; off += blockSize) hashes.push(webcrypto.subtle.digest('SHA-256', buf.subarray(off, off + blockSize)));
    await Promise.all(hashes);
    const dev = await sink.done;
    const wallMs = Math.max(dev.end, performance.now()) - c.t0;
    const pauseMs = await pauseOf(stop, resume);
    return {
      pauseMs, wallMs, bytes: c.bytes + dev.bytes, cpuS: qemuNonVcpuS(g.proc.pid as number) - c.cpu0,
      split: { preMs: tStop - c.t0, stopMs: tStopped - tStop, finalReadMs: tRead - tStopped, finalMiB: last.length / 1048576, deviceStateMs: tSaved - tRead, deviceStateKiB: dev.bytes / 1024 },
    };
  } finally {
    sink.close();
  }
}

/** One round of `mode` over its VMs at once; this process's CPU over the round shared out evenly. */
async function round(mode: Guest['mode'], vms: Guest[], o: Options): Promise<Shot[]> {
  const own0 = ownCpuS();
  let shots: Shot[];
  if (mode === 'qemu') shots = await Promise.all(vms.map((g) => qemuShot(g)));
  else {
    const begun = vms.map((g) => trackedBegin(g, o.blockKib * 1024, o.preRounds));
    shots = await Promise.all(vms.map((g, i) => trackedCut(g, begun[i] as Capture, o.blockKib * 1024)));
  }
  const own = (ownCpuS() - own0) / vms.length;
  return shots.map((x) => ({ ...x, cpuS: x.cpuS + own }));
}

/** Pages the guest's memory load touched per second between its first and last VNSTAT line of the run. */
function memRate(g: Guest, fromMs: number): number | null {
  const st = serialStatuses(guestFiles(g.dir).serialLog).filter((s) => s.uptime_ms >= fromMs);
  const a = st[0];
  const b = st[st.length - 1];
  if (!a || !b || b.uptime_ms <= a.uptime_ms) return null;
  return Math.round(((b.mem.pages_touched - a.mem.pages_touched) * 1000) / (b.uptime_ms - a.uptime_ms));
}

/** Every guest stopped, each whatever the others' failures. */
async function cleanup(): Promise<void> {
  for (const g of guests) {
    try {
      g.tracker?.close();
      g.qmp?.close();
    } catch {
      /* closing a broken connection: the process is stopped below all the same */
    }
    await stopChild(g.proc);
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('bench:ram-track needs root (QEMU, /proc/PID/pagemap of another process)');
  if (!nativeIo().uffdWriteTrackingAvailable()) throw new Error('this kernel has no asynchronous userfaultfd write protection (Linux 6.7 or later)');
  ensureQemu();
  const load0 = os.loadavg()[0] as number;
  const startedAt = new Date().toISOString();
  const image = buildGuest();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vnrb-'));
  try {
    say(`${NAME}: 4 test guests (${o.memoryMib} MiB, load ${o.loadMib} MiB at ${o.loadRate} MiB/s): 2 with QEMU's RAM, 2 tracked ...`);
    const pairs = { qemu: [] as Guest[], tracked: [] as Guest[] };
    for (const mode of ['qemu', 'tracked'] as const) for (let i = 1; i <= 2; i++) pairs[mode].push(await startGuest(image, o, `${mode}${i}`, mode, root));
    await until('every guest program to start', () => guests.every((g) => {
      const log = guestFiles(g.dir).serialLog;
      return fs.existsSync(log) && fs.readFileSync(log, 'utf8').includes('VNGUEST-READY');
    }), { timeoutMs: 180_000, everyMs: 250 });
    // One round of each first (not counted): the tracked guests' first scan holds all of their boot.
    await round('tracked', pairs.tracked, o);
    await round('qemu', pairs.qemu, o);
    const uptimeAtStart = Math.max(...guests.map((g) => serialStatuses(guestFiles(g.dir).serialLog).at(-1)?.uptime_ms ?? 0));
    const shots = { qemu: [] as Shot[], tracked: [] as Shot[] };
    for (let r = 0; r < o.rounds; r++) {
      for (const mode of ['qemu', 'tracked'] as const) {
        const t0 = performance.now();
        const one = await round(mode, pairs[mode], o);
        shots[mode].push(...one);
        const sp = one.map((x) => x.split).filter((x) => x !== undefined);
        if (sp.length) say(`    tracked split: ${sp.map((x) => `pre ${x.preMs.toFixed(1)} stop ${x.stopMs.toFixed(1)} final ${x.finalReadMs.toFixed(1)} ms/${x.finalMiB.toFixed(2)} MiB, device state ${x.deviceStateMs.toFixed(1)} ms/${x.deviceStateKiB.toFixed(0)} KiB`).join('; ')}`);
        say(`  round ${r + 1} ${mode}: pauses ${one.map((s) => s.pauseMs.toFixed(1)).join(', ')} ms, ${one.map((s) => (s.bytes / 1048576).toFixed(1)).join(', ')} MiB, CPU ${one.map((s) => s.cpuS.toFixed(3)).join(', ')} s, wall ${one.map((s) => s.wallMs.toFixed(0)).join(', ')} ms`);
        const left = o.everyMs / 2 - (performance.now() - t0);
        if (left > 0) await sleep(left); // the pace of the run, not a wait for an event
      }
    }
    const fig = (xs: Shot[], f: (s: Shot) => number): Stats => stats(xs.map(f));
    const rate = (ms: Guest[]): (number | null)[] => ms.map((g) => memRate(g, uptimeAtStart));
    const r3 = (x: number): number => Math.round(x * 1000) / 1000;
    const med = (xs: Shot[], f: (s: Shot) => number): number => median(xs.map(f));
    const out = {
      rounds: o.rounds,
      every_ms: o.everyMs,
      memory_mib: o.memoryMib,
      load: { mib: o.loadMib, mib_per_s: o.loadRate },
      block_kib: o.blockKib,
      pre_rounds: o.preRounds,
      pause_ms: { qemu_background: fig(shots.qemu, (s) => s.pauseMs), tracked: fig(shots.tracked, (s) => s.pauseMs) },
      snapshot_ms: { qemu_background: fig(shots.qemu, (s) => s.wallMs), tracked: fig(shots.tracked, (s) => s.wallMs) },
      mib_per_snapshot: { qemu_background: fig(shots.qemu, (s) => s.bytes / 1048576), tracked: fig(shots.tracked, (s) => s.bytes / 1048576) },
      tracked_split_ms: {
        stop: fig(shots.tracked, (s) => s.split?.stopMs ?? 0),
        final_read: fig(shots.tracked, (s) => s.split?.finalReadMs ?? 0),
        final_mib: fig(shots.tracked, (s) => s.split?.finalMiB ?? 0),
        device_state: fig(shots.tracked, (s) => s.split?.deviceStateMs ?? 0),
      },
      cpu_s_per_snapshot: { qemu_background: { median: r3(med(shots.qemu, (s) => s.cpuS)), max: r3(Math.max(...shots.qemu.map((s) => s.cpuS))) }, tracked: { median: r3(med(shots.tracked, (s) => s.cpuS)), max: r3(Math.max(...shots.tracked.map((s) => s.cpuS))) } },
      guest_pages_touched_per_s: { qemu_background: rate(pairs.qemu), tracked: rate(pairs.tracked) },
      ratios: {
        pause_tracked_over_qemu: r3(med(shots.tracked, (s) => s.pauseMs) / med(shots.qemu, (s) => s.pauseMs)),
        cpu_tracked_over_qemu: r3(med(shots.tracked, (s) => s.cpuS) / med(shots.qemu, (s) => s.cpuS)),
        wall_tracked_over_qemu: r3(med(shots.tracked, (s) => s.wallMs) / med(shots.qemu, (s) => s.wallMs)),
      },
      load_1m: { start: load0, end: os.loadavg()[0] as number },
      utc: { start: startedAt, end: new Date().toISOString() },
    };
    if (o.json) process.stdout.write(`${JSON.stringify(out)}\n`);
    else {
      say(`pause ms (median/p95/max): QEMU background ${JSON.stringify(out.pause_ms.qemu_background)}, tracked ${JSON.stringify(out.pause_ms.tracked)}`);
      say(`per snapshot: MiB ${JSON.stringify(out.mib_per_snapshot)}; CPU s ${JSON.stringify(out.cpu_s_per_snapshot)}; wall ms ${JSON.stringify(out.snapshot_ms)}`);
      say(`guest pages touched per s: ${JSON.stringify(out.guest_pages_touched_per_s)}; ratios tracked/QEMU ${JSON.stringify(out.ratios)}`);
    }
  } finally {
    await cleanup();
    fs.rmSync(root, { recursive: true, force: true });
  }
}

process.on('SIGINT', () => void cleanup().finally(() => process.exit(130)));
// Whatever ends this process (a crash included), no guest outlives it.
process.on('exit', () => {
  for (const g of guests) if (g.proc.exitCode === null && g.proc.signalCode === null) g.proc.kill('SIGKILL');
});
main().catch(async (e: unknown) => {
  say(`${NAME}: ${e instanceof Error ? e.message : String(e)}`);
  await cleanup();
  process.exit(1);
});
