/**
 * Loads, pins, attaches and removes the in-kernel data path (switch/bpf/vnsnap-dp.bpf.c, compiled
 * at install into build/bpf/vnsnap-dp.bpf.o by switch/bpf/build.sh) for one agent.
 *
 * Why here: loading is a host set-up step the agent does with system tools (bpftool loads the
 * object and pins its programs and maps under /sys/fs/bpf/<prefix>/, so each agent has its own
 * maps and they outlive the agent as its VMs' TAPs do; iproute2's tc attaches a pinned program
 * to a device's clsact ingress). The switch then opens the pinned maps (switch/bpf-dp/maps.ts).
 *
 * Guarantees: where the data path cannot run — the object was not built (no clang or libbpf-dev
 * at install), bpftool or tc is missing, the bpf file system cannot be mounted, the kernel
 * refuses the programs — loadDataPath throws ERR_FAILED_PRECONDITION with one line naming what
 * is missing; it never leaves a half-pinned directory behind. attach replaces whatever filter
 * was on the device's ingress at the same preference (so an adopting agent re-attaches
 * idempotently); unloadDataPath removes the pins (programs still attached stay until their
 * device goes). A failing tc step is ERR_DRIVER naming the step.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VnsnapError } from '../../proto/core/errors';
import { exec } from '../drivers/exec';

/** The compiled object (switch/bpf/build.sh). */
export const DP_OBJECT = path.join(__dirname, '..', '..', '..', 'build', 'bpf', 'vnsnap-dp.bpf.o');
export const BPFFS = '/sys/fs/bpf';

export type DpProgram = 'vn_tx' | 'vn_rx' | 'vn_rx_test';

export interface LoadedDataPath {
  prefix: string;
  /** /sys/fs/bpf/<prefix> */
  dir: string;
  /** The pinned maps' directory (DataPathMaps' argument). */
  mapsDir: string;
  /** The pinned program's path. */
  prog(p: DpProgram): string;
}

const run = (cmd: string, args: string[]): Promise<string> => exec(cmd, args, { timeoutMs: 60_000 });

function refuse(what: string, cause?: unknown): never {
  throw new VnsnapError('ERR_FAILED_PRECONDITION', `the in-kernel data path (nic tap-bpf) cannot run here: ${what}`, cause === undefined ? undefined : { cause });
}

async function hasProgram(cmd: string): Promise<boolean> {
  for (const d of (process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    if (await fsp.access(path.join(d, cmd), fs.constants.X_OK).then(() => true, () => false)) return true;
  }
  return false;
}

async function ensureBpffs(): Promise<void> {
  const mounts = await fsp.readFile('/proc/mounts', 'utf8');
  if (mounts.split('\n').some((l) => l.split(' ')[1] === BPFFS && l.split(' ')[2] === 'bpf')) return;
  await run('mount', ['-t', 'bpf', 'bpf', BPFFS]).catch((e: unknown) => refuse(`cannot mount the bpf file system on ${BPFFS}: ${(e as Error).message}`, e));
}

/** Throws ERR_FAILED_PRECONDITION when the data path cannot be loaded on this host (module comment). */
export async function checkDataPathSupport(object = DP_OBJECT): Promise<void> {
  if (!(await fsp.access(object).then(() => true, () => false))) refuse(`${object} was not built (install clang and libbpf-dev, then run npm install)`);
  for (const tool of ['bpftool', 'tc']) if (!(await hasProgram(tool))) refuse(`${tool} is not installed`);
}

function layout(prefix: string): LoadedDataPath {
  if (!/^[a-z0-9][a-z0-9-]{0,39}$/.test(prefix)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `in-kernel data path prefix "${prefix}": 1-40 lowercase letters, digits and dashes`);
  const dir = path.join(BPFFS, prefix);
  return { prefix, dir, mapsDir: path.join(dir, 'maps'), prog: (p) => path.join(dir, 'progs', p) };
}

/** Load the object afresh and pin it under /sys/fs/bpf/<prefix>/ (an earlier set there is replaced). */
export async function loadDataPath(prefix: string, object = DP_OBJECT): Promise<LoadedDataPath> {
  const dp = layout(prefix);
  await checkDataPathSupport(object);
  await ensureBpffs();
  await fsp.rm(dp.dir, { recursive: true, force: true });
  await fsp.mkdir(dp.dir, { recursive: true });
  try {
    await run('bpftool', ['prog', 'loadall', object, path.join(dp.dir, 'progs'), 'type', 'classifier', 'pinmaps', dp.mapsDir]);
  } catch (e) {
    await fsp.rm(dp.dir, { recursive: true, force: true });
    refuse(`bpftool could not load ${object}: ${(e as Error).message.split('\n')[0] ?? ''}`, e);
  }
  return dp;
}

/** The pinned set under /sys/fs/bpf/<prefix>/ as an earlier agent left it, or undefined. */
export async function pinnedDataPath(prefix: string): Promise<LoadedDataPath | undefined> {
  const dp = layout(prefix);
  const ok = await Promise.all([dp.prog('vn_tx'), dp.prog('vn_rx'), path.join(dp.mapsDir, 'vn_ports')].map((p) => fsp.access(p).then(() => true, () => false)));
  return ok.every(Boolean) ? dp : undefined;
}

/**
 * tc, in network namespace `netns` (a name under /var/run/netns) when given: entered with nsenter,
 * not `ip netns exec`, which remounts /sys and so hides the pins under /sys/fs/bpf.
 */
const tc = (netns: string | undefined, args: string[]): Promise<string> => (netns ? run('nsenter', [`--net=/var/run/netns/${netns}`, 'tc', ...args]) : run('tc', args));

/** Attach program `p` to `dev`'s ingress (clsact, direct action), replacing an earlier one. */
export async function attachDataPath(dp: LoadedDataPath, dev: string, p: DpProgram, netns?: string): Promise<void> {
  try {
    await tc(netns, ['qdisc', 'replace', 'dev', dev, 'clsact']);
    await tc(netns, ['filter', 'replace', 'dev', dev, 'ingress', 'pref', '1', 'handle', '1', 'bpf', 'da', 'object-pinned', dp.prog(p)]);
  } catch (e) {
    throw new VnsnapError('ERR_DRIVER', `in-kernel data path: attaching ${p} to ${dev} failed: ${(e as Error).message}`, { cause: e });
  }
}

/** Remove `dev`'s clsact qdisc (and with it the program); quiet when the device or qdisc is gone. */
export async function detachDataPath(dev: string, netns?: string): Promise<void> {
  await tc(netns, ['qdisc', 'del', 'dev', dev, 'clsact']).catch(() => undefined);
}

/** Remove the pins of `prefix`; quiet when there are none. */
export async function unloadDataPath(prefix: string): Promise<void> {
  await fsp.rm(layout(prefix).dir, { recursive: true, force: true });
}
