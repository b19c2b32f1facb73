/**
 * What a QEMU agent killed at the wrong moment leaves behind, found and removed by the next
 * agent on start, after the adoption and before it registers (docs/agent-restart.md, "Crash
 * leftovers"): a QEMU prepared by a restore (started with -incoming, paused, never recorded), the
 * instance directory and TAP devices (with their veth pairs) of a QEMU that was killed (or died), a
 * partial snapshot file.
 *
 * An instance directory is `<workDir>/<prefix>-<vne>_<vm>-<agent pid>-<n>`; its TAPs are
 * `<prefix><first 8 hex of sha256(dir)>n<i>` (driver.ts prepare()), a tap-vnet TAP's veth pair
 * `...v<i>`/`...g<i>` (vm-veth.ts). What is removed, and only that:
 *  - a process whose command line names an instance directory of ours (under workDir, with our
 *    prefix) that no adopted VM nor any record left alone uses, which runs in this agent's network namespace (a
 *    QEMU of another namespace serves another agent), and whose directory's creating agent is
 *    gone (its pid runs no process: a live agent's directory is its own business). It is
 *    SIGKILLed only while it is still the process seen (same start time). Nothing else is ever
 *    signalled: not a process naming another prefix or a path outside workDir.
 *  - an instance directory (and its TAPs) under the same conditions, once no live process of
 *    any namespace names it — except the disk images of a recorded VM reported dead (it died
 *    while no agent ran): they are its last disk, kept in place and named in the log;
 *  - in an adopted VM's directory, the partial snapshot files a dead agent's snapshot or restore left
 *    (memory streams, frozen disk copies, restore memory, fingerprints) — never a disk overlay.
 * Each removal is logged in one line. Failures are logged and skipped: cleaning never stops the
 * agent from starting. The agent's state directory (and its disks/) is not this module's.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { describeError } from '../../../proto/core/errors';
import type { Logger } from '../../../proto/core/log';
import { processStartTime } from '../../vm-state';
import { exec } from '../exec';
import { parseQemuSavedState } from './adopt';

/** Files a snapshot or a restore leaves only while it runs (migration.ts, driver.ts). */
// Not frozen.qcow2 (a restored VM's disk backs onto it) nor disk-e*.qcow2 (the overlays).
const DISK = /^(disk0\.qcow2|disk-e\d+-\d+\.qcow2|frozen\.qcow2)$/;
const PARTIAL = /^(mem-e\d+-\d+\.img(\.done\d+)?|frozen-e\d+-\d+\.qcow2|restore\.mem|fp-[0-9a-f]+\.bin)$/;

export interface LeftoverOptions {
  workDir: string;
  prefix: string;
  /** Instance directories of the VMs this agent adopted: kept, their partial snapshot files removed. */
  adoptedDirs: readonly string[];
  /** Instance directories of records left alone (another agent's): never touched. */
  otherDirs: readonly string[];
  /** Instance directories of recorded VMs reported dead: their disk images are kept. */
  deadDirs: readonly string[];
  log: Logger;
  /** The TAP devices of this network namespace with the prefix (default: `ip -o link show`). */
  listLinks: () => Promise<string[]>;
  /** Delete a network device (default: `ip link del`). */
  deleteLink: (name: string) => Promise<void>;
  /** /proc (tests pass another view only through these functions; default the real one). */
  procRoot?: string;
}

/** What was removed, one line each (also logged). */
export type LeftoverReport = string[];

/** The TAP name tag of an instance directory: driver.ts prepare() names its TAPs with it, so leftovers finds them. */
export function tapTag(dir: string): string {
  return createHash('sha256').update(dir).digest('hex').slice(0, 8);
}

/** Our instance directory named in a process's argv (NUL-separated), or undefined. */
export function instanceDirIn(cmdline: string, workDir: string, prefix: string): string | undefined {
  const base = workDir.replace(/\/+$/, '');
  for (const arg of cmdline.split('\0')) {
    // Paths appear inside QEMU options ("unix:DIR/qmp.sock,server=on", "path=DIR/console.log").
    const i = arg.indexOf(`${base}/${prefix}-`);
    if (i < 0) continue;
    const name = arg.slice(i + base.length + 1).split(/[/,]/)[0] as string;
    if (/^[A-Za-z0-9_.-]+$/.test(name) && name !== '.' && name !== '..') return path.join(base, name);
  }
  return undefined;
}

/** The pid of the agent that made an instance directory (its name's second-to-last field). */
export function creatorPid(dir: string): number | undefined {
  const m = /-(\d+)-\d+$/.exec(path.basename(dir));
  return m ? Number(m[1]) : undefined;
}

interface Proc {
  pid: number;
  startTime: string;
  dir: string;
  sameNetns: boolean;
}

async function ourProcesses(o: LeftoverOptions): Promise<Proc[]> {
  const proc = o.procRoot ?? '/proc';
  const selfNs = await fsp.readlink(path.join(proc, 'self', 'ns', 'net')).catch(() => '');
  const out: Proc[] = [];
  for (const n of await fsp.readdir(proc)) {
    if (!/^\d+$/.test(n)) continue;
    const pid = Number(n);
    if (pid === process.pid) continue;
    let cmdline: string;
    try {
      cmdline = await fsp.readFile(path.join(proc, n, 'cmdline'), 'utf8');
    } catch {
      continue; // gone, or not ours to read
    }
    const dir = instanceDirIn(cmdline, o.workDir, o.prefix);
    const startTime = processStartTime(pid);
    if (!dir || startTime === undefined) continue;
    const ns = await fsp.readlink(path.join(proc, n, 'ns', 'net')).catch(() => '?');
    out.push({ pid, startTime, dir, sameNetns: ns === selfNs && selfNs !== '' });
  }
  return out;
}

/** Is the agent that made `dir` still running (and not this one)? Then the directory is its own. */
function creatorAlive(dir: string): boolean {
  const pid = creatorPid(dir);
  return pid !== undefined && pid !== process.pid && processStartTime(pid) !== undefined;
}

/** Find and remove what dead agents left (see the header). Returns one line per thing removed. */
export async function cleanQemuLeftovers(o: LeftoverOptions): Promise<LeftoverReport> {
  const report: LeftoverReport = [];
  const done = (line: string, fields: Record<string, unknown>): void => {
    report.push(line);
    o.log.warn(fields, line);
  };
  const adopted = new Set(o.adoptedDirs.map((d) => path.resolve(d)));
  const dead = new Set(o.deadDirs.map((d) => path.resolve(d)));
  const keep = new Set([...adopted, ...o.otherDirs.map((d) => path.resolve(d))]);
  const procs = await ourProcesses(o);
  const stray = (p: Proc): boolean => !keep.has(p.dir) && p.sameNetns && !creatorAlive(p.dir);
  for (const p of procs.filter(stray)) {
    if (processStartTime(p.pid) !== p.startTime) continue; // gone, or its pid is another program's now
    try {
      process.kill(p.pid, 'SIGKILL');
      done(`killed stray QEMU ${p.pid} (instance ${p.dir}: no VM of this agent)`, { pid: p.pid, dir: p.dir });
    } catch (e) {
      o.log.warn({ pid: p.pid, err: describeError(e) }, 'killing a stray QEMU failed');
    }
  }
  // A directory stays while a live process outside this namespace (another agent's) names it.
  const named = new Set(procs.filter((p) => !stray(p)).map((p) => p.dir));
  let names: string[] = [];
  try {
    names = await fsp.readdir(o.workDir);
  } catch {
    /* no work directory: nothing was ever started */
  }
  const links = new Set(await o.listLinks().catch(() => [] as string[]));
  for (const n of names.sort()) {
    if (!n.startsWith(`${o.prefix}-`)) continue;
    const dir = path.join(o.workDir, n);
    if (adopted.has(dir)) await removePartials(dir, done, o.log);
    if (keep.has(dir)) continue;
    if (named.has(dir) || creatorAlive(dir)) continue;
    const tag = tapTag(dir);
    // The TAPs (n<i>) and the switch's ends of their veth pairs (v<i>; the peer goes with it).
    for (const l of [...links].filter((x) => new RegExp(`^${o.prefix}${tag}[nv]\\d+$`).test(x)).sort()) {
      try {
        await o.deleteLink(l);
        done(`deleted ${/n\d+$/.test(l) ? 'TAP' : 'veth pair'} ${l} of a dead instance (${dir})`, { tap: l, dir });
      } catch (e) {
        o.log.warn({ tap: l, err: describeError(e) }, 'deleting a leftover TAP failed');
      }
    }
    try {
      if (dead.has(dir) && (await keepDisks(dir, done))) continue;
      await fsp.rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
      done(`removed instance directory ${dir} (no VM of this agent)`, { dir });
    } catch (e) {
      o.log.warn({ dir, err: describeError(e) }, 'removing a leftover instance directory failed');
    }
  }
  return report;
}

/**
 * A recorded VM that died while no agent ran: its disk images are its last disk (the writes
 * since its last snapshot), so they stay where they are; the rest of the directory goes.
 * Returns false when it holds no disk image (then the whole directory may go).
 */
async function keepDisks(dir: string, done: (line: string, f: Record<string, unknown>) => void): Promise<boolean> {
  const files = await fsp.readdir(dir);
  const disks = files.filter((f) => DISK.test(f)).sort();
  if (disks.length === 0) return false;
  for (const f of files.filter((x) => !DISK.test(x))) await fsp.rm(path.join(dir, f), { recursive: true, force: true });
  done(`kept the disk images of a VM that died while no agent ran: ${dir} (${disks.join(', ')}); delete them when they are not needed`, { dir, disks });
  return true;
}

async function removePartials(dir: string, done: (line: string, f: Record<string, unknown>) => void, log: Logger): Promise<void> {
  let files: string[];
  try {
    files = await fsp.readdir(dir);
  } catch {
    return;
  }
  for (const f of files.filter((x) => PARTIAL.test(x)).sort()) {
    try {
      await fsp.rm(path.join(dir, f), { force: true });
      done(`removed partial snapshot file ${path.join(dir, f)} (a dead agent's snapshot or restore)`, { file: path.join(dir, f) });
    } catch (e) {
      log.warn({ file: path.join(dir, f), err: describeError(e) }, 'removing a partial snapshot file failed');
    }
  }
}

/** The network devices of this namespace whose name starts with `prefix` (`ip -o link show`). */
async function linksWithPrefix(prefix: string): Promise<string[]> {
  const out = await exec('ip', ['-o', 'link', 'show'], { timeoutMs: 60_000 });
  return out
    .split('\n')
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
    .filter((n): n is string => n !== undefined && n.startsWith(prefix));
}

/**
 * The QEMU driver's cleaning with the real `ip` and /proc: its adopted VMs' directories are
 * kept, and those named by records left alone (their driver state, when it is a QEMU one).
 */
export function cleanDriverLeftovers(o: { workDir: string; prefix: string; adoptedDirs: string[]; otherStates: readonly unknown[]; deadStates: readonly unknown[]; log: Logger }): Promise<LeftoverReport> {
  const dirsOf = (states: readonly unknown[]): string[] => {
    const dirs: string[] = [];
    for (const st of states) {
      try {
        dirs.push(parseQemuSavedState(st, o.workDir).dir);
      } catch {
        /* not a QEMU VM's state */
      }
    }
    return dirs;
  };
  return cleanQemuLeftovers({
    workDir: o.workDir,
    prefix: o.prefix,
    adoptedDirs: o.adoptedDirs,
    otherDirs: dirsOf(o.otherStates),
    deadDirs: dirsOf(o.deadStates),
    log: o.log,
    listLinks: () => linksWithPrefix(o.prefix),
    deleteLink: async (name) => void (await exec('ip', ['link', 'del', name], { timeoutMs: 60_000 })),
  });
}
