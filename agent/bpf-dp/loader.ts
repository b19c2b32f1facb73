/**
 * Loads, pins, attaches and removes the in-kernel data path (switch/bpf/vnsnap-dp.bpf.c, compiled
 * at install into build/bpf/vnsnap-dp.bpf.o by switch/bpf/build.sh) for one agent.
 *
 * Why here: loading is a host set-up step the agent does with system tools (bpftool loads the
 * object and pins its programs and maps under /sys/fs/bpf/<prefix>/, so each agent has its own
 * maps and they outlive the agent as its VMs' TAPs do; iproute2's tc attaches a pinned program
 * to a device's clsact ingress). The switch then opens the pinned maps (switch/bpf-dp/maps.ts).
 *
 * The pins carry a stamp of the build that made them: an empty directory `stamp-<hash>` beside
 * `progs/` and `maps/`, the hash of the compiled object (its maps' layout and its programs). A
 * data path pinned by another build (another stamp, or none: builds before the stamp) is stale:
 * its maps may not have the layout this build's switch writes, so it is never adopted; the
 * agent replaces it (agent/bpf-dp/host-dp.ts) when no TAP would be left on the old program.
 *
 * Guarantees: where the data path cannot run — the object was not built (no clang or libbpf-dev
 * at install), bpftool or tc is missing, the bpf file system cannot be mounted, the kernel
 * refuses the programs — loadDataPath throws ERR_FAILED_PRECONDITION with one line naming what
 * is missing; it never leaves a half-pinned directory behind. attach replaces whatever filter
 * was on the device's ingress at the same preference (so an adopting agent re-attaches
 * idempotently); unloadDataPath removes the pins (programs still attached stay until their
 * device goes). A failing tc step is ERR_DRIVER naming the step.
 */
import { createHash } from 'node:crypto';
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

/**
 * `cmd` in network namespace `netns` (a name under /var/run/netns) when given: entered with
 * nsenter, not `ip netns exec`, which remounts /sys and so hides the pins under /sys/fs/bpf.
 */
const inNetns = (netns: string | undefined, cmd: string, args: string[]): Promise<string> => (netns ? run('nsenter', [`--net=/var/run/netns/${netns}`, cmd, ...args]) : run(cmd, args));

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

const STAMP_PREFIX = 'stamp-';

/** The build's stamp: the hash of the compiled object (module comment); undefined when it was not built. */
export async function dataPathStamp(object = DP_OBJECT): Promise<string | undefined> {
  const bytes = await fsp.readFile(object).catch(() => undefined);
  return bytes === undefined ? undefined : createHash('sha256').update(bytes).digest('hex').slice(0, 16);
}

/** Load the object afresh and pin it under /sys/fs/bpf/<prefix>/ with its stamp (an earlier set there is replaced). */
export async function loadDataPath(prefix: string, object = DP_OBJECT): Promise<LoadedDataPath> {
  const dp = layout(prefix);
  await checkDataPathSupport(object);
  await ensureBpffs();
  await fsp.rm(dp.dir, { recursive: true, force: true });
  await fsp.mkdir(dp.dir, { recursive: true });
  try {
    await run('bpftool', ['prog', 'loadall', object, path.join(dp.dir, 'progs'), 'type', 'classifier', 'pinmaps', dp.mapsDir]);
    await fsp.mkdir(path.join(dp.dir, `${STAMP_PREFIX}${(await dataPathStamp(object)) ?? 'unknown'}`));
  } catch (e) {
    await fsp.rm(dp.dir, { recursive: true, force: true });
    refuse(`bpftool could not load ${object}: ${(e as Error).message.split('\n')[0] ?? ''}`, e);
  }
  return dp;
}

/** A pinned set as an earlier agent left it: `current` when its stamp is this build's. */
export interface PinnedDataPath {
  dp: LoadedDataPath;
  /** The pins' stamp; undefined for pins of a build before stamps. */
  stamp: string | undefined;
  current: boolean;
}

/** The pinned set under /sys/fs/bpf/<prefix>/ as an earlier agent left it, or undefined when there is none. */
export async function pinnedDataPath(prefix: string, object = DP_OBJECT): Promise<PinnedDataPath | undefined> {
  const dp = layout(prefix);
  const ok = await Promise.all([dp.prog('vn_tx'), dp.prog('vn_rx'), path.join(dp.mapsDir, 'vn_ports')].map((p) => fsp.access(p).then(() => true, () => false)));
  if (!ok.every(Boolean)) return undefined;
  const stamp = (await fsp.readdir(dp.dir)).find((n) => n.startsWith(STAMP_PREFIX))?.slice(STAMP_PREFIX.length);
  const ours = await dataPathStamp(object);
  return { dp, stamp, current: stamp !== undefined && stamp === ours };
}

/** The devices of this network namespace (or of `netns`, a name under /var/run/netns) that run pinned program `prog` on their tc hooks. */
export async function devicesRunning(prog: string, netns?: string): Promise<string[]> {
  const show = JSON.parse(await run('bpftool', ['-j', 'prog', 'show', 'pinned', prog])) as { id: number };
  // tc filters name their program "id" (tcx links "prog_id").
  const net = JSON.parse(await inNetns(netns, 'bpftool', ['-j', 'net', 'show'])) as { tc?: { devname: string; id?: number; prog_id?: number }[] }[];
  return [...new Set(net.flatMap((n) => n.tc ?? []).filter((t) => (t.id ?? t.prog_id) === show.id).map((t) => t.devname))];
}

const tc = (netns: string | undefined, args: string[]): Promise<string> => inNetns(netns, 'tc', args);

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

/**
 * Take `dev` off the data path for good, checked: its clsact qdisc (and with it vn_tx) removed,
 * then read back. ERR_FAILED_PRECONDITION when the program may still run there (tc missing, the
 * qdisc still shown): a caller that goes on reading the device would see its frames twice.
 */
export async function leaveDataPath(dev: string, netns?: string): Promise<void> {
  await detachDataPath(dev, netns);
  let shown: string;
  try {
    shown = await tc(netns, ['qdisc', 'show', 'dev', dev]);
  } catch (e) {
    throw new VnsnapError('ERR_FAILED_PRECONDITION', `${dev}: cannot check that the in-kernel data path's program left it: ${(e as Error).message}`, { cause: e });
  }
  if (/\bclsact\b/.test(shown)) throw new VnsnapError('ERR_FAILED_PRECONDITION', `${dev}: the in-kernel data path's program could not be taken off it`);
}

/** Remove the pins of `prefix`; quiet when there are none. */
export async function unloadDataPath(prefix: string): Promise<void> {
  await fsp.rm(layout(prefix).dir, { recursive: true, force: true });
}
