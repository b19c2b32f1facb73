/**
 * Leftovers of crashed QEMU driver test runs: every such test works under /tmp/vnqm-test-<pid>*
 * and names its TAPs vnqm<8 hex>n<i>; sweepVnqm() kills the QEMUs of runs whose process is gone
 * (found by their pid files), removes their directories and the vnqm TAPs. Call it under the
 * integration lock only: it removes every vnqm TAP, a concurrent run's included.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const VNQM_ROOT_PREFIX = '/tmp/vnqm-test-';

/** Kill QEMUs left by a crashed run (by their pid files), remove their directories and vnqm TAPs. */
export function sweepVnqm(): void {
  for (const d of fs.readdirSync('/tmp')) {
    const root = `/tmp/${d}`;
    if (!root.startsWith(VNQM_ROOT_PREFIX) || root === `${VNQM_ROOT_PREFIX}${process.pid}`) continue;
    const pidAlive = Number(d.slice(VNQM_ROOT_PREFIX.length - 5));
    if (Number.isInteger(pidAlive) && pidAlive > 0 && fs.existsSync(`/proc/${pidAlive}`)) continue; // another live test run
    const walk = (dir: string): void => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.name === 'qemu.pid') {
          const pid = Number(fs.readFileSync(p, 'utf8').trim());
          try {
            if (pid > 0 && fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) process.kill(pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
      }
    };
    try {
      walk(root);
    } catch {
      /* raced */
    }
    fs.rmSync(root, { recursive: true, force: true });
  }
  const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
  for (const m of links.matchAll(/^\d+: (vnqm[0-9a-f]{8}n\d+)[@:]/gm)) {
    try {
      execFileSync('ip', ['link', 'del', m[1] as string], { stdio: 'ignore' });
    } catch {
      /* gone */
    }
  }
}
