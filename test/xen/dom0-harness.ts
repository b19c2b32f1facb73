/**
 * What the programs that run INSIDE the test bed's dom0 share (dom0-e2e.ts, dom0-restart.ts):
 * the CLI against the dom0 coordinator, the daemons (coordinator, agent) as child processes that
 * can be killed and started again, the two stream endpoints of the test VNE, a guest's checked
 * stream status read from its Xen console log, and the "intact" verdict on it.
 *
 * Everything here runs as root in dom0 with /var/lib/vnsnap as the product's directory (the
 * dom0 root is a throw-away qcow2 overlay: nothing outlives the run).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { xenNames } from '../../agent/drivers/xen/driver';
import { run } from '../bench/proc';
import { parseStatuses, type GuestStatus } from './guest-config';
import { FatalWait, sleep, until } from '../support/wait';
import { AGENT_NODE_FLAGS } from '../../agent/node-flags';

export const REPO = path.resolve(__dirname, '..', '..', '..');
export const VAR = '/var/lib/vnsnap';
export const VNE = 'xenvne';

export type Cli = { code: number; stdout: string; stderr: string };

export function cli(args: string[], timeoutMs = 600_000): Promise<Cli> {
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(REPO, 'dist/coordinator/cli/main.js'), ...args], { timeout: timeoutMs, maxBuffer: 32 << 20, env: { ...process.env, VNSNAP_INSECURE_PLAINTEXT: '1' } }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

export async function sh(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.trim() || `exit ${r.code}`}`);
  return r.stdout;
}

/**
 * A daemon of the product (node SCRIPT ARGS), its stderr appended to /vnxen/NAME.log. start()
 * resolves on its "ready" line (or after 60 s, or rejects when it exits first).
 */
export class Daemon {
  proc: ChildProcess | null = null;
  /** How the last process ended when it was not killed through kill() (it failed by itself). */
  failed: string | null = null;
  constructor(
    readonly name: string,
    private readonly args: string[],
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {}

  start(): Promise<void> {
    this.failed = null;
    const p = spawn(process.execPath, this.args, { stdio: ['ignore', 'pipe', fs.openSync(`/vnxen/${this.name}.log`, 'a')], env: this.env });
    this.proc = p;
    return new Promise((resolve, reject) => {
      let buf = '';
      p.stdout?.on('data', (d: Buffer) => {
        buf += d.toString();
        if (buf.includes('"ready"') || /listening|ready/i.test(buf)) resolve();
      });
      p.on('exit', (c, s) => {
        if (this.proc === p) this.failed = `${this.name} exited ${c ?? s} (see /vnxen/${this.name}.log)`;
        reject(new Error(`${this.name} exited ${c ?? s}: ${buf}`));
      });
      setTimeout(() => resolve(), 60_000);
    });
  }

  /** Throws FatalWait (for an `until` callback) if the process ended by itself. */
  check(): void {
    if (this.failed) throw new FatalWait(this.failed);
  }

  /** Send `signal` and wait for the process to be gone. */
  async kill(signal: NodeJS.Signals): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill(signal);
    await gone;
  }
}

export function coordinatorDaemon(): Daemon {
  fs.mkdirSync(`${VAR}/store`, { recursive: true });
  // Heartbeats every 2 s, dead after 30 s: in the TCG-nested dom0 a live capture stalls the
  // agent's event loop for seconds, and the default 3 s once declared it dead mid-snapshot.
  fs.writeFileSync(`${VAR}/coordinator.json`, JSON.stringify({ commandTimeoutMs: 900_000, heartbeatIntervalMs: 2000, deadAfterMs: 30_000 }));
  return new Daemon('coordinator', [path.join(REPO, 'dist/coordinator/main.js'), '--config', `${VAR}/coordinator.json`, '--listen', '127.0.0.1:7443', '--insecure-plaintext', '--db', `${VAR}/catalog.db`, '--store-dir', `${VAR}/store`, '--log-level', 'info']);
}

export function agentDaemon(imageRoots: readonly string[]): Daemon {
  fs.writeFileSync(`${VAR}/agent.json`, JSON.stringify({ id: 'h1', coordinator: '127.0.0.1:7443', tunnel: '127.0.0.1:0', store: `${VAR}/store`, drivers: ['xen'], imageRoots, logLevel: 'info', insecurePlaintext: true }));
  // dom0-trace.ts: the stack of a bad buffer size goes to the agent's log.
  return new Daemon('agent', [...AGENT_NODE_FLAGS, path.join(REPO, 'dist/agent/main.js'), '-c', `${VAR}/agent.json`], { ...process.env, NODE_OPTIONS: `--require ${path.join(__dirname, 'dom0-trace.js')}` });
}

/** The stream endpoints of the test VNE: guest a and guest b stream to each other. */
export const ENDS = [
  { name: 'a', ip: '10.9.0.1', mac: '00:16:3e:09:00:01', peer: '10.9.0.2' },
  { name: 'b', ip: '10.9.0.2', mac: '00:16:3e:09:00:02', peer: '10.9.0.1' },
];

/** The Xen console log of the VNE's guest `vm`. */
export const guestLog = (vm: string): string => `/var/log/xen/console/guest-${xenNames(`${VNE}/${vm}`, 1).domName}.log`;

/** The guest's status lines in its log after byte `offset`. */
export function statusesAfter(logFile: string, offset = 0): GuestStatus[] {
  return fs.existsSync(logFile) ? parseStatuses(fs.readFileSync(logFile, 'utf8').slice(offset)) : [];
}

/** What is wrong with a stream status (null = intact: no error, no reconnect, all connected). */
export function intact(s: GuestStatus): string | null {
  if (s.totals.errors !== 0) return `${s.name}: ${s.totals.errors} errors (${s.in.map((i) => i.first_error).join('; ')})`;
  if (s.totals.reconnects !== 0) return `${s.name}: ${s.totals.reconnects} reconnects`;
  if (!s.out.every((o) => o.connected) || !s.in.every((i) => i.open) || s.in.length === 0) return `${s.name}: a stream is not connected`;
  return null;
}

/** The VNE as `vnsnap vne show --json` gives it: state, reason, and each VM's run state. */
export interface VneShown {
  state: string;
  stateReason?: string;
  vmStatus?: { vm: string; host: string; hostReachable: boolean; state: string }[];
}

export async function vneShow(): Promise<VneShown> {
  const r = await cli(['vne', 'show', VNE, '--json'], 300_000);
  if (r.code !== 0) throw new Error(`vne show: ${r.stderr.trim() || `exit ${r.code}`}`);
  return JSON.parse(r.stdout) as VneShown;
}

/** "a RUNNING, b DEAD" from a VneShown (for steps and comparisons). */
export const vmStates = (v: VneShown): string => (v.vmStatus ?? []).map((s) => `${s.vm} ${s.state.replace('VM_RUN_STATE_', '')}${s.hostReachable ? '' : ' (host unreachable)'}`).join(', ');

/**
 * Wait until every endpoint's last status (in its log after byte `marker`) shows the streams
 * open and at least `minGrowth` bytes received beyond `after`; returns those statuses.
 */
export async function flowing(o: { ends: readonly string[]; logOf: (vm: string) => string; after: Map<string, number>; marker: Map<string, number>; what: string; minGrowth?: number; timeoutMs?: number; check?: () => void }): Promise<Map<string, GuestStatus>> {
  const res = new Map<string, GuestStatus>();
  await until(
    o.what,
    () => {
      o.check?.();
      for (const vm of o.ends) {
        const last = statusesAfter(o.logOf(vm), o.marker.get(vm) ?? 0).pop();
        if (!last || last.in.length === 0) return Promise.resolve(null);
        if (last.totals.received < (o.after.get(vm) ?? 0) + (o.minGrowth ?? 64 * 1024)) return Promise.resolve(null);
        res.set(vm, last);
      }
      return Promise.resolve(true);
    },
    { timeoutMs: o.timeoutMs ?? 900_000, everyMs: 500 },
  );
  return res;
}

/** Start the coordinator and agent h1 and wait until the agent is registered. */
export async function startProduct(imageRoots: readonly string[], say: (s: string) => void): Promise<{ coordinator: Daemon; agent: Daemon }> {
  const coordinator = coordinatorDaemon();
  await coordinator.start();
  const agent = agentDaemon(imageRoots);
  await agent.start();
  say('coordinator and agent up');
  await until(
    'agent registered',
    async () => {
      agent.check();
      const a = await cli(['agents', '--json']);
      if (!a.stdout.includes('"h1"')) console.log(`agents: ${a.code} ${a.stdout.slice(0, 200)} ${a.stderr.slice(0, 300)}`);
      return a.stdout.includes('"h1"') ? true : null;
    },
    { timeoutMs: 600_000, everyMs: 500 },
  );
  return { coordinator, agent };
}

/** Define and start the test VNE of `vms` (ENDS entries) on h1, each with the given xl config. */
export async function startVne(vms: readonly (typeof ENDS)[number][], config: (v: (typeof ENDS)[number]) => string): Promise<void> {
  const vne = { name: VNE, vni: 77, vms: vms.map((v) => ({ name: v.name, host: 'h1', macs: [v.mac], driver: { xen: { config: config(v) } } })) };
  fs.writeFileSync(`${VAR}/vne.json`, JSON.stringify(vne));
  let r = await cli(['vne', 'define', `${VAR}/vne.json`, '--json']);
  if (r.code !== 0) throw new Error(`vne define: ${r.stderr}`);
  r = await cli(['vne', 'start', VNE, '--json']);
  if (r.code !== 0) throw new Error(`vne start: ${r.stderr}`);
}

/** Stop the VNE (best effort) and the daemons (SIGTERM, 2 s at the most). */
export async function stopProduct(daemons: (Daemon | undefined)[], others: ChildProcess[] = []): Promise<void> {
  await cli(['vne', 'stop', VNE]).catch(() => undefined);
  const procs = [...others, ...daemons.map((d) => d?.proc)].filter((p): p is ChildProcess => !!p && p.exitCode === null && p.signalCode === null);
  const exits = procs.map((p) => new Promise((r) => p.once('exit', r)));
  for (const p of procs.reverse()) p.kill('SIGTERM');
  await Promise.race([Promise.all(exits), sleep(2000)]);
}

/** What every dom0 program's result file holds (besides its own fields). */
export interface Dom0Result {
  steps: string[];
  ok?: boolean;
  error?: string;
  totalMs?: number;
}

/** A step logger: "+12.3s what" to the result's steps and to the program's output. */
export function stepper(prefix: string, out: Dom0Result, t0: number): (s: string) => void {
  return (s) => {
    const line = `+${((Date.now() - t0) / 1000).toFixed(1)}s ${s}`;
    out.steps.push(line);
    console.log(`${prefix}: ${line}`);
  };
}

/**
 * Run a dom0 program's body: a throw marks the result failed (with its stack); in every case the
 * result is written to `file`, `cleanup` runs, and the process exits 0 only if `out.ok`.
 */
export async function dom0Main(o: { out: Dom0Result; file: string; t0: number; step: (s: string) => void; body: () => Promise<void>; cleanup: () => Promise<void> }): Promise<void> {
  try {
    await o.body();
  } catch (e) {
    o.out.error = (e as Error).stack ?? String(e);
    o.out.ok = false;
    o.step(`FAILED: ${String(e)}`);
  } finally {
    o.out.totalMs = Date.now() - o.t0;
    fs.writeFileSync(o.file, JSON.stringify(o.out, null, 2));
    await o.cleanup();
    process.exit(o.out.ok ? 0 : 1);
  }
}
