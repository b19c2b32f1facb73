/**
 * A whole vnsnap deployment on namespaced hosts, as real processes, for end-to-end and fault
 * tests:
 *
 *   <prefix>-ul   the underlay: a Linux bridge br0 (SUBNET.254/24) and the coordinator
 *                 (vnsnap-coordinator, listening on SUBNET.254:7443, catalog in the cluster's
 *                 directory, the cluster's store)
 * Every gRPC link is mutual TLS with certificates of the process's test PKI (pki.ts): the
 * coordinator's names SUBNET.254, each agent's certificate its id, the CLI an operator's
 * (`tlsArgs`; `operator`, `pki` for tests that present others).
 *   <prefix>-hN   one namespace per host, joined to br0 by a veth (SUBNET.N/24), running one
 *                 vnsnap-agent (drivers ["sim"], run as test/sim/agent-main.js; tunnel
 *                 SUBNET.N:6081, metrics + /debug/vms (enabled) on 127.0.0.1:9464 of its namespace)
 *
 * Every agent and the coordinator name one store (cluster-store.ts; option `store`): 'local' (the
 * default) a content-addressed store in the cluster's directory (like a shared filesystem; with
 * `storeTmpfsMib` a tmpfs of that size, unmounted by destroy()), 'files' the whole-file layout
 * there, 's3' a bucket on a Ceph RGW started for the cluster. Tests read snapshots only through
 * `openStore()` (the SnapshotStore API), so they pass on every kind. Everything is driven
 * through the real `vnsnap` CLI (`cli`, `cliJson`, `cliStream`, run in the underlay namespace)
 * and sim VM state is read through the agents' /debug/vms (`vms`). Processes are killed with
 * `kill` (SIGKILL for the fault tests) and started again with `startAgent`/`startCoordinator`;
 * `partition` cuts a host off from the coordinator while its agent and VMs run on; `loseHost`
 * cuts it off and kills every process in its namespace (a machine that died).
 * destroy() removes everything: processes, namespaces (and their nft tables), the mount, the
 * directory — call it in `after`, it is idempotent. Logs (pino JSON) go to files in the
 * cluster's directory; `logTail()` shows them when a test fails.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { decodeChannel } from '../../proto/artefacts/channel-state';
import { parseSimImage, type SimGuestState, type SimVmState } from '../sim/driver';
import { decodeManifest } from '../../proto/artefacts/manifest';
import { readDigest } from '../../proto/store/artefact-digest';
import { storedSize } from '../../proto/store/cas-index';
import { chunkObject } from '../../proto/store/pack-format';
import { CasStore } from '../../proto/store/cas-store';
import type { SnapshotStore } from '../../proto/store/snapshot-store';
import { ClusterStore, type ClusterStoreKind } from './cluster-store';
import { sh, Topology, waitForJsonLine } from './netns';
import { sleep, until } from './wait';
import { childOutput } from './child-output';
import { AGENT_NODE_FLAGS } from '../../agent/node-flags';
import { testPki, type TestPki, type TlsFiles } from './pki';

// Kept for the tests and benches that import them from here; new code imports ./wait.
export { sleep, until } from './wait';

const DIST = path.resolve(__dirname, '../..');
const CLI = path.join(DIST, 'coordinator/cli/main.js');
const COORDINATOR = path.join(DIST, 'coordinator/main.js');
const AGENT = path.join(DIST, 'agent/main.js');
/** The agent with the simulated driver added (test-only entry point): spawned when the hosts run sim VMs. */
const SIM_AGENT = path.join(DIST, 'test/sim/agent-main.js');
export const METRICS_PORT = 9464;

export interface ClusterOptions {
  /** Namespace/interface prefix, 2-8 lowercase letters/digits. */
  prefix: string;
  /** Host (agent) ids. Default h1, h2, h3. */
  hosts?: string[];
  /** First three octets of the underlay subnet. Default 10.<150 + hash of prefix>.0. */
  subnet?: string;
  /** The store every agent and the coordinator name (cluster-store.ts). Default 'local'. */
  store?: ClusterStoreKind;
  /** Make the shared store's directory a tmpfs of this many MiB (kinds 'local' and 'files'). */
  storeTmpfsMib?: number;
  heartbeatIntervalMs?: number;
  deadAfterMs?: number;
  /** The agents' hypervisor drivers. Default ["sim"]. */
  drivers?: string[];
  /** The agents' image roots (agent config imageRoots); the cluster's directory is added. Default: the agent's default. */
  imageRoots?: string[];
  /**
   * The agents' tunnelOffload key; absent: the agent's default (UDP GSO/GRO where the kernel has
   * them), and startAgent then checks that the agent did turn them on, so the cluster tests run
   * over the offloaded tunnel.
   */
  tunnelOffload?: boolean;
  /**
   * The agents' dataPath key (the in-kernel data path for tap-bpf NICs): true requires it, false
   * turns it off; absent: the agent's default (on where it can run, with the QEMU driver).
   */
  dataPath?: boolean;
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface DebugVm {
  vne: string;
  vm: string;
  restoreId?: string;
  ports: { name: string; epoch: number | null }[];
  state: SimVmState | null;
}

/** A decoded sim data frame (test/sim/driver.ts frame layout). */
export interface SimFrame {
  type: number;
  epoch: number;
  seq: number;
  src: string;
  dst: string;
}

export function parseSimFrame(f: Buffer): SimFrame | undefined {
  if (f.length < 33 || f.readUInt16BE(12) !== 0x88b5 || f[14] !== 0x56 || f[15] !== 0x53) return undefined;
  const sl = f[30] as number;
  const dl = f[31 + sl] as number;
  return {
    type: f[16] as number,
    epoch: f.readUInt32BE(18),
    seq: f.readUInt32BE(22) * 0x1_0000_0000 + f.readUInt32BE(26),
    src: f.toString('utf8', 31, 31 + sl),
    dst: f.toString('utf8', 32 + sl, 32 + sl + dl),
  };
}

function subnetOf(prefix: string): string {
  const h = createHash('sha256').update(prefix).digest();
  return `10.${150 + ((h[0] as number) % 100)}.${h[1] as number}`;
}

export class Cluster {
  readonly topo: Topology;
  readonly dir: string;
  /** The local store's directory (kinds 'local' and 'files'; empty with 's3'). */
  readonly storeDir: string;
  /** The store's kind and config (what the agents and the coordinator are given). */
  readonly storage: ClusterStore;
  readonly dbFile: string;
  readonly hosts: string[];
  readonly subnet: string;
  readonly coordinatorAddress: string;
  private coordinator: ChildProcess | undefined;
  private readonly agents = new Map<string, ChildProcess>();
  private mounted = false;
  private destroyed = false;
  private readonly logs = new Map<string, string>();
  readonly pki: TestPki;
  /** The operator certificate the CLI presents. */
  readonly operator: TlsFiles;

  constructor(readonly opts: ClusterOptions) {
    this.topo = new Topology(opts.prefix);
    this.hosts = opts.hosts ?? ['h1', 'h2', 'h3'];
    this.subnet = opts.subnet ?? subnetOf(opts.prefix);
    this.coordinatorAddress = `${this.subnet}.254:7443`;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `${opts.prefix}-`));
    this.storeDir = path.join(this.dir, 'store');
    this.dbFile = path.join(this.dir, 'catalog.db');
    fs.mkdirSync(this.storeDir);
    this.storage = new ClusterStore(opts.store ?? 'local', this.storeDir);
    this.pki = testPki();
    this.operator = this.pki.client('operator', 'operator');
  }

  /** The CLI's flags presenting `who` (default: the operator). */
  tlsArgs(who: TlsFiles = this.operator): string[] {
    return ['--ca', who.ca, '--cert', who.cert, '--key', who.key];
  }

  hostAddress(host: string): string {
    return `${this.subnet}.${this.hosts.indexOf(host) + 1}`;
  }

  /** Build the namespaces, start the coordinator and every agent, wait until all are connected. */
  async start(): Promise<void> {
    const t = this.topo;
    const p = this.opts.prefix;
    if (this.opts.storeTmpfsMib) {
      sh('mount', ['-t', 'tmpfs', '-o', `size=${this.opts.storeTmpfsMib}m,mode=0755`, `${p}-store`, this.storeDir]);
      this.mounted = true;
    }
    t.addNamespace('ul');
    t.exec('ul', 'ip', ['link', 'add', 'br0', 'type', 'bridge']);
    t.exec('ul', 'ip', ['addr', 'add', `${this.subnet}.254/24`, 'dev', 'br0']);
    t.exec('ul', 'ip', ['link', 'set', 'br0', 'up']);
    this.hosts.forEach((h, i) => {
      t.addNamespace(h);
      t.veth(h, `${p}u${i}`, 'ul', `${p}b${i}`, `${this.hostAddress(h)}/24`);
      t.exec('ul', 'ip', ['link', 'set', `${p}b${i}`, 'master', 'br0']);
    });
    await this.storage.start(t, this.subnet, this.dir);
    await this.startCoordinator();
    await Promise.all(this.hosts.map((h) => this.startAgent(h, false)));
    await this.waitConnected(this.hosts);
  }

  private logFile(name: string): string {
    const f = path.join(this.dir, `${name}.log`);
    this.logs.set(name, f);
    return f;
  }

  private pipeLog(child: ChildProcess, name: string): void {
    const out = fs.createWriteStream(this.logFile(name), { flags: 'a' });
    child.stderr?.pipe(out);
  }

  async startCoordinator(): Promise<void> {
    const cfg = path.join(this.dir, 'coordinator.json');
    fs.writeFileSync(
      cfg,
      JSON.stringify({
        listen: this.coordinatorAddress,
        db: this.dbFile,
        store: this.storage.config,
        heartbeatIntervalMs: this.opts.heartbeatIntervalMs ?? 1000,
        deadAfterMs: this.opts.deadAfterMs ?? 5000,
        logLevel: logLevel(),
        tls: this.pki.coordinator(this.opts.prefix, [`${this.subnet}.254`]),
      }),
    );
    const child = this.topo.spawn('ul', process.execPath, [...nodeArgs(), COORDINATOR, '--config', cfg]);
    this.pipeLog(child, 'coordinator');
    await waitForJsonLine<{ event: string }>(child, (v) => v.event === 'ready', 20_000);
    this.coordinator = child;
  }

  /** Start (again) the agent of `host`; `main` runs another build's agent/main.js (an upgrade). */
  async startAgent(host: string, wait = true, main?: string): Promise<void> {
    const cfg = path.join(this.dir, `${host}.json`);
    fs.writeFileSync(
      cfg,
      JSON.stringify({
        id: host,
        coordinator: this.coordinatorAddress,
        tunnel: `${this.hostAddress(host)}:6081`,
        ...(this.opts.tunnelOffload !== undefined ? { tunnelOffload: this.opts.tunnelOffload } : {}),
        ...(this.opts.dataPath !== undefined ? { dataPath: this.opts.dataPath } : {}),
        store: this.storage.config,
        stateDir: path.join(this.dir, 'state', host),
        metricsPort: METRICS_PORT,
        debugVms: true,
        logLevel: logLevel(),
        drivers: this.opts.drivers ?? ['sim'],
        ...(this.opts.imageRoots ? { imageRoots: [...this.opts.imageRoots, this.dir] } : {}),
        tls: this.pki.agent(host, [this.hostAddress(host)]),
      }),
    );
    const entry = main ?? ((this.opts.drivers ?? ['sim']).includes('sim') ? SIM_AGENT : AGENT);
    const child = this.topo.spawn(host, process.execPath, [...AGENT_NODE_FLAGS, ...nodeArgs(), entry, '--config', cfg]);
    this.pipeLog(child, host);
    const ready = await waitForJsonLine<{ event: string; tunnelOffload?: boolean }>(child, (v) => v.event === 'ready', 20_000);
    this.agents.set(host, child);
    if (main === undefined && ready.tunnelOffload !== (this.opts.tunnelOffload ?? true)) {
      throw new Error(`agent ${host} started with tunnelOffload ${String(ready.tunnelOffload)}, expected ${String(this.opts.tunnelOffload ?? true)} (its log says why)`);
    }
    if (wait) await this.waitConnected([host]);
  }

  /** Signal a process (an agent id or "coordinator"); SIGKILL waits until it is gone. */
  async kill(who: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const c = who === 'coordinator' ? this.coordinator : this.agents.get(who);
    if (!c || c.exitCode !== null || c.signalCode !== null) throw new Error(`${who} is not running`);
    const gone = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill(signal);
    if (signal === 'SIGKILL' || signal === 'SIGTERM') {
      await gone;
      if (who === 'coordinator') this.coordinator = undefined;
      else this.agents.delete(who);
    }
  }

  /**
   * The host dies as a machine would: cut off from the coordinator (partition), then its agent
   * and every other process in its network namespace (its VMs, wherever their cgroup or
   * session) SIGKILLed. Resolves with the pids killed once the agent is gone.
   */
  async loseHost(host: string): Promise<number[]> {
    this.partition(host, true);
    const agent = this.agents.get(host);
    const gone = agent && agent.exitCode === null && agent.signalCode === null ? new Promise<void>((r) => agent.once('exit', () => r())) : Promise.resolve();
    const pids = sh('ip', ['netns', 'pids', this.topo.ns(host)]).split(/\s+/).filter(Boolean).map(Number);
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    await gone;
    this.agents.delete(host);
    return pids;
  }

  /** The inode of a host's network namespace (as /proc/PID/ns/net of its processes reads). */
  netnsInode(host: string): number {
    return fs.statSync(`/run/netns/${this.topo.ns(host)}`).ino;
  }

  /** Every listed agent CONNECTED according to the coordinator. */
  async waitConnected(hosts: readonly string[], ms = 20_000): Promise<void> {
    await until(
      `agents ${hosts.join(', ')} connected`,
      async () => {
        const r = await this.cliJson<{ agents: { id: string; state: string }[] }>(['agents']);
        return hosts.every((h) => r.agents.some((a) => a.id === h && a.state === 'AGENT_STATE_CONNECTED'));
      },
      { timeoutMs: ms, everyMs: 200 },
    );
  }

  // ---- the CLI ----------------------------------------------------------------------------

  /** Run `vnsnap ARGS --coordinator <addr>` in the underlay namespace. */
  cli(args: readonly string[], timeoutMs = 120_000): Promise<CliResult> {
    return childOutput(spawn('ip', ['netns', 'exec', this.topo.ns('ul'), process.execPath, CLI, ...args, '--coordinator', this.coordinatorAddress, ...this.tlsArgs()], { stdio: ['ignore', 'pipe', 'pipe'] }), timeoutMs);
  }


  /** `vnsnap ARGS --json`, insisting on exit 0; the parsed output. */
  async cliJson<T>(args: readonly string[]): Promise<T> {
    const r = await this.cli([...args, '--json']);
    if (r.code !== 0) throw new Error(`vnsnap ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
    return JSON.parse(r.stdout) as T;
  }

  /**
   * A streaming command with --json (snapshot create, restore): `onEvent` sees every line as it
   * arrives (with the ms since the start); resolves with all of them, the exit code and stderr.
   */
  cliStream<E = Record<string, unknown>>(args: readonly string[], onEvent?: (e: E, ms: number) => void): { child: ChildProcess; done: Promise<{ code: number | null; events: E[]; stderr: string }> } {
    const t0 = Date.now();
    const c = spawn('ip', ['netns', 'exec', this.topo.ns('ul'), process.execPath, CLI, ...args, '--json', '--coordinator', this.coordinatorAddress, ...this.tlsArgs()], { stdio: ['ignore', 'pipe', 'pipe'] });
    const events: E[] = [];
    let buf = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (!line.trim()) continue;
        const e = JSON.parse(line) as E;
        events.push(e);
        onEvent?.(e, Date.now() - t0);
      }
    });
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const done = new Promise<{ code: number | null; events: E[]; stderr: string }>((resolve, reject) => {
      c.on('error', reject);
      c.on('close', (code) => resolve({ code, events, stderr }));
    });
    return { child: c, done };
  }

  // ---- agents' debug surface --------------------------------------------------------------

  /** The VMs an agent holds (GET /debug/vms in its namespace). */
  async vms(host: string): Promise<DebugVm[]> {
    const out = await new Promise<string>((resolve, reject) => {
      const c = spawn('ip', ['netns', 'exec', this.topo.ns(host), 'curl', '-sf', '--max-time', '20', `http://127.0.0.1:${METRICS_PORT}/debug/vms`], { stdio: ['ignore', 'pipe', 'pipe'] });
      let s = '';
      c.stdout.on('data', (d: Buffer) => (s += d.toString()));
      c.on('error', reject);
      c.on('close', (code) => (code === 0 ? resolve(s) : reject(new Error(`GET /debug/vms on ${host}: curl exit ${code}`))));
    });
    return (JSON.parse(out) as { vms: DebugVm[] }).vms;
  }

  /** Every VM of `vne` on every running agent: vm name → {host, vm}. */
  async vneVms(vne: string): Promise<Map<string, { host: string; vm: DebugVm }[]>> {
    const out = new Map<string, { host: string; vm: DebugVm }[]>();
    for (const h of this.hosts) {
      if (!this.agents.has(h)) continue;
      for (const v of await this.vms(h)) if (v.vne === vne) out.set(v.vm, [...(out.get(v.vm) ?? []), { host: h, vm: v }]);
    }
    return out;
  }

  // ---- the underlay -----------------------------------------------------------------------

  /** Drop `percent` % of the tunnel packets (UDP 6081) a host sends (nftables numgen; no netem here). */
  setLoss(host: string, percent: number): void {
    this.topo.exec(host, 'nft', ['delete', 'table', 'inet', 'vnsnaploss'], { allowFail: true });
    if (percent <= 0) return;
    this.topo.exec(host, 'nft', ['add', 'table', 'inet', 'vnsnaploss']);
    this.topo.exec(host, 'nft', ['add', 'chain', 'inet', 'vnsnaploss', 'out', '{ type filter hook output priority 0; policy accept; }']);
    this.topo.exec(host, 'nft', ['add', 'rule', 'inet', 'vnsnaploss', 'out', 'udp', 'dport', '6081', 'numgen', 'random', 'mod', '100', '<', String(percent), 'counter', 'drop']);
  }

  /**
   * Cut a host off from the coordinator (on: every TCP packet to or from its port 7443 dropped
   * in the host's namespace) or heal it (off). Its agent and VMs keep running, as on a host
   * whose network to the control plane failed; the tunnels between hosts are untouched.
   */
  partition(host: string, on: boolean): void {
    this.topo.exec(host, 'nft', ['delete', 'table', 'inet', 'vnsnapcut'], { allowFail: true });
    if (!on) return;
    const port = this.coordinatorAddress.split(':')[1] as string;
    this.topo.exec(host, 'nft', ['add', 'table', 'inet', 'vnsnapcut']);
    this.topo.exec(host, 'nft', ['add', 'chain', 'inet', 'vnsnapcut', 'out', '{ type filter hook output priority 0; policy accept; }']);
    this.topo.exec(host, 'nft', ['add', 'chain', 'inet', 'vnsnapcut', 'in', '{ type filter hook input priority 0; policy accept; }']);
    this.topo.exec(host, 'nft', ['add', 'rule', 'inet', 'vnsnapcut', 'out', 'tcp', 'dport', port, 'drop']);
    this.topo.exec(host, 'nft', ['add', 'rule', 'inet', 'vnsnapcut', 'in', 'tcp', 'sport', port, 'drop']);
  }

  /** Packets the loss rule of a host dropped so far. */
  lossDrops(host: string): number {
    const out = this.topo.exec(host, 'nft', ['list', 'table', 'inet', 'vnsnaploss'], { allowFail: true });
    const m = /counter packets (\d+)/.exec(out);
    return m ? Number(m[1]) : 0;
  }

  // ---- checks -----------------------------------------------------------------------------

  /**
   * The catalog is consistent (problems listed, empty when it is):
   *   - no snapshot of the VNE in a non-terminal state;
   *   - every COMPLETE snapshot has its manifest in the store, naming it, and every artefact it
   *     lists present with the listed size and SHA-256;
   *   - no ABORTED snapshot left anything in the store (the agents get `graceMs` to delete);
   *   - the VNE is RUNNING and every VM runs (status running) exactly once, on the agent its
   *     placement names, and no agent holds a VM of the VNE it does not name.
   */
  async consistencyProblems(vne: string, graceMs = 5000): Promise<string[]> {
    const end = Date.now() + graceMs;
    for (;;) {
      const problems = await this.consistencyOnce(vne);
      if (problems.length === 0 || Date.now() > end) return problems;
      // A poll, not until(): the answer after the grace is the problem list, not a timeout error.
      await sleep(250);
    }
  }

  private async consistencyOnce(vneName: string): Promise<string[]> {
    const problems: string[] = [];
    const { snapshots } = await this.cliJson<{ snapshots: CatalogSnapshot[] }>(['snapshot', 'list', '--vne', vneName]);
    const store = await this.openStore();
    for (const s of snapshots) {
      if (!['SNAPSHOT_STATE_COMPLETE', 'SNAPSHOT_STATE_ABORTED'].includes(s.state)) problems.push(`${s.id} is ${s.state}`);
      else if (s.state === 'SNAPSHOT_STATE_ABORTED') {
        const left = await store.list(`snapshots/${s.id}/`);
        if (left.length > 0) problems.push(`aborted ${s.id} left ${left.join(', ')}`);
      } else {
        problems.push(...(await this.completeSnapshotProblems(s)));
      }
    }
    const vne = await this.cliJson<{ state: string; placement: Record<string, string>; vms: { name: string }[] }>(['vne', 'show', vneName]);
    if (vne.state !== 'VNE_STATE_RUNNING') problems.push(`VNE ${vneName} is ${vne.state}`);
    const running = await this.vneVms(vneName);
    for (const vm of vne.vms) {
      const want = vne.placement[vm.name];
      const where = running.get(vm.name) ?? [];
      if (where.length !== 1 || where[0]?.host !== want) problems.push(`VM ${vm.name} should run on ${want}, found on [${where.map((w) => w.host).join(', ')}]`);
      for (const w of where) if (w.vm.state?.status !== 'running') problems.push(`VM ${vm.name} on ${w.host} is ${w.vm.state?.status ?? 'unknown'}`);
    }
    for (const [vm, where] of running) if (!vne.vms.some((v) => v.name === vm)) problems.push(`VM ${vm} (not in the VNE) runs on ${where.map((w) => w.host).join(', ')}`);
    return problems;
  }

  /** The cluster's store, as the test process reads it (the same config the agents have). */
  openStore(): Promise<SnapshotStore> {
    return this.storage.open();
  }

  /** A COMPLETE snapshot's manifest and artefacts, checked in the shared store (every byte read back). */
  async completeSnapshotProblems(s: CatalogSnapshot): Promise<string[]> {
    const problems: string[] = [];
    const store = await this.openStore();
    if (!s.manifestPath || (await store.stat(s.manifestPath)) === null) return [`complete ${s.id} has no manifest (${s.manifestPath})`];
    let body: ReturnType<typeof decodeManifest>['body'];
    try {
      body = decodeManifest(await store.get(s.manifestPath), s.manifestPath).body;
    } catch (e) {
      return [`complete ${s.id}: manifest unreadable: ${(e as Error).message}`];
    }
    if (body.snapshotId !== s.id || body.epoch !== s.epoch) problems.push(`manifest of ${s.id} names ${body.snapshotId}@${body.epoch}`);
    const listed = new Set(s.artefacts.map((a) => a.path));
    if (body.artefacts.length !== listed.size || body.artefacts.some((a) => !listed.has(a.path))) problems.push(`manifest and catalog of ${s.id} list different artefacts`);
    for (const a of body.artefacts) {
      if ((await store.stat(a.path)) === null) {
        problems.push(`${s.id}: artefact ${a.path} is missing`);
        continue;
      }
      // The digest as the manifest records it: a block image's is its chunk list's (artefact-digest.ts).
      let got: { size: number; sha256: string };
      try {
        got = await readDigest(store, a);
      } catch (e) {
        problems.push(`${s.id}: ${a.path} unreadable: ${(e as Error).message}`);
        continue;
      }
      if (got.size !== Number(a.size)) problems.push(`${s.id}: ${a.path} is ${got.size} bytes, listed ${a.size}`);
      if (got.sha256 !== a.sha256) problems.push(`${s.id}: ${a.path} checksum differs`);
    }
    return problems;
  }

  /**
   * Corrupt the first chunk of an artefact on disk (kind 'local': its bytes in the pack file
   * packs/xx/<id>, or the file chunks/xx/<sha> of a store written before packs) with `mutate`;
   * returns what puts the original bytes back. A chunk may be shared by other artefacts (that is
   * the point of the layout): they are corrupt too until the undo.
   */
  async tamperChunk(relPath: string, mutate: (chunk: Buffer) => void): Promise<() => void> {
    const store = await this.openStore();
    if (this.storage.kind !== 'local' || !(store instanceof CasStore)) throw new Error(`tamperChunk needs the cluster store 'local', not '${this.storage.kind}'`);
    const idx = await store.index(relPath);
    const first = idx?.chunks[0];
    if (!first) throw new Error(`${relPath} has no chunk in the store`);
    const at = chunkObject(first);
    const file = path.join(this.storeDir, at.key);
    const original = fs.readFileSync(file);
    const bytes = Buffer.from(original);
    const chunk = bytes.subarray(at.offset, at.offset + storedSize(first)); // as stored (maybe compressed)
    mutate(chunk);
    fs.writeFileSync(file, bytes);
    return () => fs.writeFileSync(file, original);
  }

  /** The guest state (sent/expected sequence numbers) of each VM in a complete snapshot's images. */
  async imageStates(s: CatalogSnapshot, memoryMib: Record<string, number>): Promise<Record<string, SimGuestState>> {
    const store = await this.openStore();
    const out: Record<string, SimGuestState> = {};
    for (const a of s.artefacts) {
      if (a.kind !== 'ARTEFACT_KIND_MEMORY') continue;
      out[a.owner] = parseSimImage(await store.get(a.path), a.path, (memoryMib[a.owner] ?? 4) * 256).state;
    }
    return out;
  }

  /** The recorded in-flight frames of a complete snapshot, per receiving VM (decoded). */
  async channelFrames(s: CatalogSnapshot): Promise<Record<string, SimFrame[]>> {
    const store = await this.openStore();
    const out: Record<string, SimFrame[]> = {};
    for (const a of s.artefacts) {
      if (a.kind !== 'ARTEFACT_KIND_CHANNEL') continue;
      const vm = a.owner.split('/')[1] ?? a.owner; // "<vne>/<vm>/<i>"
      const frames = decodeChannel(await store.get(a.path), a.path).map((f) => parseSimFrame(f.frame));
      out[vm] = [...(out[vm] ?? []), ...frames.filter((f): f is SimFrame => f !== undefined)];
    }
    return out;
  }

  /** `snapshot create VNE`, which must complete; its record. */
  async snapshotComplete(vne: string): Promise<CatalogSnapshot> {
    const r = await this.cliStream<StreamEvent>(['snapshot', 'create', vne]).done;
    if (r.code !== 0) throw new Error(`snapshot create ${vne} exited ${r.code}: ${r.stderr}`);
    const done = r.events.find((e) => e.done)?.done;
    if (done?.state !== 'SNAPSHOT_STATE_COMPLETE') throw new Error(`snapshot of ${vne} ended ${done?.state}: ${done?.error}`);
    return done;
  }

  /** The last lines of every log, for a failing test. */
  logTail(lines = 30): string {
    let out = '';
    for (const [name, f] of this.logs) {
      if (!fs.existsSync(f)) continue;
      const all = fs.readFileSync(f, 'utf8').trimEnd().split('\n');
      out += `--- ${name} (last ${Math.min(lines, all.length)} lines)\n${all.slice(-lines).join('\n')}\n`;
    }
    return out;
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    await this.topo.destroy();
    await this.storage.stop();
    if (this.mounted) {
      sh('umount', ['-l', this.storeDir], { allowFail: true });
      this.mounted = false;
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface CatalogSnapshot {
  id: string;
  vne: string;
  epoch: number;
  state: string;
  error: string;
  manifestPath: string;
  artefacts: { path: string; size: number; sha256: string; kind: string; owner: string }[];
  vms: { name: string; host: string; pauseMs: number; channelFrames: number }[];
  lostFrames: number;
}

/** `vnsnap vne show VNE --json`, the parts the agent-away and lost-host tests read. */
export interface VneView {
  state: string;
  stateReason: string;
  generation: number;
  placement: Record<string, string>;
  vmStatus: { vm: string; host: string; hostReachable: boolean; state: string }[];
  fenced: { vm: string; agent: string; generation: number; stopped: boolean }[];
}

/** One line of a streaming command's --json output (snapshot create, restore). */
export interface StreamEvent {
  note?: string;
  done?: CatalogSnapshot;
}

/** Each VM's status as "vm@host:reachable|unreachable:STATE", to assert exactly. */
export function vmStatusLines(v: VneView): string[] {
  return v.vmStatus.map((s) => `${s.vm}@${s.host}:${s.hostReachable ? 'reachable' : 'unreachable'}:${s.state}`);
}

/**
 * The coordinator's and agents' log level: info, or VNSNAP_CLUSTER_LOG_LEVEL (debugging: `debug`
 * adds, for instance, each tracked cut's steps from its job's begin: tracked-job.ts 'cut done').
 */
function logLevel(): string {
  return process.env.VNSNAP_CLUSTER_LOG_LEVEL || 'info';
}

/** Extra node flags for the coordinator and agents (debugging: VNSNAP_CLUSTER_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof"). */
function nodeArgs(): string[] {
  return (process.env.VNSNAP_CLUSTER_NODE_ARGS ?? '').split(' ').filter(Boolean);
}
