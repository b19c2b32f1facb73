/**
 * A child process's exit code and whole output, for tests that run the CLI or another command
 * and assert on what it printed. One place for the collection (both streams read to the end,
 * 'close' not 'exit', so nothing printed is missed), and for the CLI run against a coordinator on
 * loopback in plaintext, which the CLI unit tests share.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';

export interface ChildOutput {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Everything `child` prints and its exit code; SIGKILL after `timeoutMs` when given. */
export function childOutput(child: ChildProcess, timeoutMs?: number): Promise<ChildOutput> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    const t = timeoutMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (t) clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

/** The compiled CLI's entry point. */
export const CLI_MAIN = path.resolve(__dirname, '../../coordinator/cli/main.js');

/**
 * `vnsnap ARGS` as a child of this process, talking plaintext to a coordinator on loopback (the
 * in-process fake): VNSNAP_COORDINATOR from the caller's environment is not passed on.
 */
export function runCliPlaintext(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<ChildOutput> {
  const base = { ...process.env };
  delete base.VNSNAP_COORDINATOR;
  base.VNSNAP_INSECURE_PLAINTEXT = '1';
  return childOutput(spawn(process.execPath, [CLI_MAIN, ...args], { env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] }));
}
