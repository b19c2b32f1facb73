/**
 * Network namespaces as hosts and as VMs, for integration tests and benchmarks.
 *
 * Everything a Topology creates is named with its prefix (namespaces `<prefix>-<name>`), so a
 * leftover is easy to find, and `destroy()` removes it all: processes first (SIGTERM, then
 * SIGKILL), then namespaces (which takes their veths and TAPs with them). Call destroy() in an
 * `after`/`finally` so a failing test cleans up too. `sweep(prefix)` removes leftovers of an
 * earlier crashed run.
 */
import { ChildProcess, execFileSync, spawn, SpawnOptions } from 'node:child_process';

export function sh(cmd: string, args: readonly string[], opts: { allowFail?: boolean; timeoutMs?: number } = {}): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024 });
  } catch (e) {
    if (opts.allowFail) return '';
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.stderr?.trim() || err.message}`);
  }
}

/** Remove every namespace whose name starts with prefix (leftovers of a crashed run). */
export function sweep(prefix: string): void {
  const out = sh('ip', ['netns', 'list'], { allowFail: true });
  for (const line of out.split('\n')) {
    const name = line.split(' ')[0];
    if (name && name.startsWith(prefix)) {
      killNamespacePids(name);
      sh('ip', ['netns', 'del', name], { allowFail: true });
    }
  }
}

function killNamespacePids(ns: string): void {
  const pids = sh('ip', ['netns', 'pids', ns], { allowFail: true }).split('\n').filter(Boolean);
  for (const pid of pids) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

export class Topology {
  readonly prefix: string;
  private readonly namespaces: string[] = [];
  private readonly children: ChildProcess[] = [];

  constructor(prefix: string) {
    if (!/^[a-z0-9]{2,8}$/.test(prefix)) throw new Error(`topology prefix must be 2-8 lowercase letters/digits: ${prefix}`);
    this.prefix = prefix;
    sweep(`${prefix}-`);
  }

  /** Full namespace name for a short name. */
  ns(name: string): string {
    return `${this.prefix}-${name}`;
  }

  addNamespace(name: string): string {
    const full = this.ns(name);
    sh('ip', ['netns', 'add', full]);
    this.namespaces.push(full);
    this.exec(name, 'ip', ['link', 'set', 'lo', 'up']);
    return full;
  }

  /** A veth pair between two namespaces (short names), with optional IPv4 addresses (CIDR). */
  veth(aNs: string, aIf: string, bNs: string, bIf: string, aAddr?: string, bAddr?: string, mtu = 1500): void {
    sh('ip', ['link', 'add', aIf, 'netns', this.ns(aNs), 'mtu', String(mtu), 'type', 'veth', 'peer', 'name', bIf, 'netns', this.ns(bNs), 'mtu', String(mtu)]);
    if (aAddr) this.exec(aNs, 'ip', ['addr', 'add', aAddr, 'dev', aIf]);
    if (bAddr) this.exec(bNs, 'ip', ['addr', 'add', bAddr, 'dev', bIf]);
    this.exec(aNs, 'ip', ['link', 'set', aIf, 'up']);
    this.exec(bNs, 'ip', ['link', 'set', bIf, 'up']);
  }

  /** Move an interface from one namespace to another and optionally address it and bring it up. */
  moveLink(fromNs: string, ifname: string, toNs: string, addr?: string, mtu?: number): void {
    this.exec(fromNs, 'ip', ['link', 'set', ifname, 'netns', this.ns(toNs)]);
    if (mtu) this.exec(toNs, 'ip', ['link', 'set', ifname, 'mtu', String(mtu)]);
    if (addr) this.exec(toNs, 'ip', ['addr', 'add', addr, 'dev', ifname]);
    this.exec(toNs, 'ip', ['link', 'set', ifname, 'up']);
  }

  exec(ns: string, cmd: string, args: readonly string[], opts: { allowFail?: boolean; timeoutMs?: number } = {}): string {
    return sh('ip', ['netns', 'exec', this.ns(ns), cmd, ...args], opts);
  }

  /** Spawn a long-running process inside a namespace; it is killed by destroy(). */
  spawn(ns: string, cmd: string, args: readonly string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', this.ns(ns), cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.children.push(child);
    return child;
  }

  async destroy(): Promise<void> {
    await Promise.all(this.children.map((c) => stopChild(c)));
    for (const ns of this.namespaces.reverse()) {
      killNamespacePids(ns);
      sh('ip', ['netns', 'del', ns], { allowFail: true });
    }
    this.namespaces.length = 0;
  }
}

/** SIGTERM, then SIGKILL after a grace period; resolves when the process has exited. */
export function stopChild(c: ChildProcess, graceMs = 3000): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => c.kill('SIGKILL'), graceMs);
    c.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    c.kill('SIGTERM');
  });
}

/** Resolve with the first stdout line of `child` that parses as JSON and satisfies pred. */
export function waitForJsonLine<T>(child: ChildProcess, pred: (v: T) => boolean, timeoutMs = 15_000): Promise<T> {
  return new Promise((resolve, reject) => {
    let buf = '';
    let errBuf = '';
    const timer = setTimeout(() => done(new Error(`timed out waiting for a line from the process; stderr: ${errBuf.slice(-2000)}`)), timeoutMs);
    const onData = (d: Buffer): void => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          const v = JSON.parse(line) as T;
          if (pred(v)) return done(undefined, v);
        } catch {
          /* not JSON */
        }
      }
    };
    const onErr = (d: Buffer): void => {
      errBuf += d.toString();
    };
    const onExit = (code: number | null): void => done(new Error(`process exited (${code}) before it was ready; stderr: ${errBuf.slice(-2000)}`));
    function done(err?: Error, v?: T): void {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.stderr?.off('data', onErr);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolve(v as T);
    }
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onErr);
    child.once('exit', onExit);
  });
}

/** A tcpdump capture in a namespace, started for real (its "listening on" seen) before resolving. */
export async function startCapture(topo: Topology, ns: string, iface: string, file: string, args: readonly string[] = []): Promise<{ stop: () => Promise<void> }> {
  // --immediate-mode: without it packets wait in a TPACKET_V3 block for up to a second and are
  // lost when the capture is stopped sooner.
  const c = topo.spawn(ns, 'tcpdump', ['-i', iface, '-w', file, '-U', '--immediate-mode', ...args]);
  await new Promise<void>((resolve, reject) => {
    let err = '';
    const t = setTimeout(() => reject(new Error(`tcpdump on ${ns}/${iface} did not start: ${err}`)), 10_000);
    c.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
      if (err.includes('listening on')) {
        clearTimeout(t);
        resolve();
      }
    });
    c.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`tcpdump on ${ns}/${iface} exited (${code}): ${err}`));
    });
  });
  return {
    stop: () =>
      new Promise<void>((resolve) => {
        if (c.exitCode !== null) return resolve();
        c.once('exit', () => resolve());
        c.kill('SIGINT');
      }),
  };
}
