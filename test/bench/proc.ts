/**
 * Asynchronous process helpers for the benchmarks (the Topology helpers are synchronous, which
 * would keep SIGINT handlers from running during a multi-second iperf3 run).
 */
import { ChildProcess, spawn, SpawnOptions } from 'node:child_process';

// The benches' sleep is the tests' one.
export { sleep } from '../support/wait';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

const running = new Set<ChildProcess>();

/** Run a command to completion without blocking the event loop; killed after timeoutMs. */
export function run(cmd: string, args: readonly string[], opts: { timeoutMs?: number; spawn?: SpawnOptions } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts.spawn });
    running.add(child);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout?.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 60_000);
    const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
      clearTimeout(timer);
      running.delete(child);
      resolve({ code, signal, stdout, stderr, timedOut });
    };
    child.once('error', (e) => {
      stderr += String(e);
      finish(null, null);
    });
    child.once('close', finish);
  });
}

/** Run a command inside a network namespace (full name). */
export function runInNs(nsFull: string, cmd: string, args: readonly string[], opts: { timeoutMs?: number } = {}): Promise<RunResult> {
  return run('ip', ['netns', 'exec', nsFull, cmd, ...args], opts);
}

/** SIGKILL every process started by run() that is still running (for signal/cleanup paths). */
export function killRunning(): void {
  for (const c of running) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
  running.clear();
}

/**
 * Keep a child's stdout/stderr flowing (a full pipe would block it) and remember the last
 * `max` characters of each, for error reports.
 */
export function collectOutput(child: ChildProcess, max = 16_384): { stdout: () => string; stderr: () => string } {
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => {
    out = (out + d.toString()).slice(-max);
  });
  child.stderr?.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-max);
  });
  return { stdout: () => out, stderr: () => err };
}


export function median(xs: readonly number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

export function errMsg(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
