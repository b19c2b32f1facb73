/**
 * The drivers' one way to run a program (qemu-img, ip, xl, xenstore-read, cp, lvcreate): async,
 * so a driver never blocks the event loop that also runs the switch's dataplane (a synchronous
 * `ip tuntap add` or `qemu --version` stalled every port of the host for its duration).
 *
 *   spawnProc(cmd, args, {timeoutMs})  → Proc: `exited` resolves (never rejects) with the exit
 *                                         code, signal, output and when each piece arrived
 *   exec(cmd, args, {timeoutMs})       → stdout; rejects with an ExecError
 *   builtProgram(name)                 → a small program built with the native addon
 *                                         (build/Release/NAME), or null when it was not built
 *
 * Guarantees: the result is taken at 'close', not 'exit' ('exit' can come before the last of
 * stdout was read: `qemu-img info --output=json` was once parsed as an empty string under load);
 * a command still running at `timeoutMs` is killed with SIGKILL and reported as ERR_TIMEOUT; a
 * program that cannot be started (ENOENT, EACCES) is code -1 in a Proc and ERR_DRIVER from exec.
 * Output is kept as timed chunks (stdout and stderr interleaved as they came) because the Xen
 * driver times xl's steps by when its messages arrived.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { nowUs } from '../../proto/core/clock';
import { VnsnapError } from '../../proto/core/errors';

export interface ProcResult {
  /** Exit code; null if killed by a signal; -1 if the program could not be started. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** stdout and stderr interleaved, as they came. */
  output: string;
  /** The output with the instant (wall clock, µs) each piece arrived. */
  chunks: { atUs: number; text: string }[];
  exitUnixUs: number;
  timedOut: boolean;
}

export interface Proc {
  /** Resolves when the program exited and its output was read; never rejects. */
  readonly exited: Promise<ProcResult>;
  kill(): void;
}

export interface ExecOptions {
  /** Kill with SIGKILL after this long (no limit when absent). */
  timeoutMs?: number;
}

/** A failed run: ERR_DRIVER (non-zero exit, not startable) or ERR_TIMEOUT; the result attached. */
export class ExecError extends VnsnapError {
  constructor(
    readonly cmd: string,
    readonly args: readonly string[],
    readonly result: ProcResult,
  ) {
    const last = (result.stderr.trim() || result.output.trim()).split('\n').slice(-3).join(' | ');
    const how = result.timedOut ? 'timed out' : result.code === -1 ? 'could not be started' : result.code === null ? `was killed (${result.signal})` : `failed (exit ${result.code})`;
    super(result.timedOut ? 'ERR_TIMEOUT' : 'ERR_DRIVER', `${cmd} ${args.join(' ')} ${how}${last ? `: ${last}` : ''}`);
    this.name = 'ExecError';
  }
}

export function spawnProc(cmd: string, args: readonly string[], opts: ExecOptions = {}): Proc {
  let child: ChildProcess | undefined;
  const exited = new Promise<ProcResult>((resolve) => {
    const chunks: { atUs: number; text: string }[] = [];
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const done = (code: number | null, signal: NodeJS.Signals | null, extra = ''): void => {
      if (timer) clearTimeout(timer);
      if (extra) chunks.push({ atUs: nowUs(), text: extra });
      resolve({ code, signal, stdout, stderr: stderr + extra, output: chunks.map((c) => c.text).join(''), chunks, exitUnixUs: nowUs(), timedOut });
    };
    const c = spawn(cmd, [...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    c.stdout?.on('data', (d: Buffer) => {
      const text = d.toString();
      stdout += text;
      chunks.push({ atUs: nowUs(), text });
    });
    c.stderr?.on('data', (d: Buffer) => {
      const text = d.toString();
      stderr += text;
      chunks.push({ atUs: nowUs(), text });
    });
    const timer = opts.timeoutMs
      ? setTimeout(() => {
          timedOut = true;
          c.kill('SIGKILL');
        }, opts.timeoutMs)
      : undefined;
    c.on('error', (e) => done(-1, null, String(e)));
    c.on('close', (code, signal) => done(code, signal));
  });
  return { exited, kill: () => void child?.kill('SIGKILL') };
}

/** Run to completion; stdout on exit 0, else an ExecError. */
export async function exec(cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<string> {
  const r = await spawnProc(cmd, args, opts).exited;
  if (r.code !== 0) throw new ExecError(cmd, args, r);
  return r.stdout;
}

/** The program `name` node-gyp built beside the addon (binding.gyp), or null when it was not built. */
export function builtProgram(name: string): string | null {
  // Compiled: dist/agent/drivers/ → the repository's build/; from source: agent/drivers/.
  for (const up of [3, 2]) {
    const p = path.join(__dirname, ...Array<string>(up).fill('..'), 'build', 'Release', name);
    if (fs.existsSync(p)) return p;
  }
  return null;
}
