/**
 * The agent's state directory: one record per VM it runs, so that a new agent (after a restart,
 * a crash or an upgrade) finds the VMs the old one left running and adopts them instead of
 * leaving them unmanaged (docs/agent-restart.md).
 *
 *   <stateDir>/vms/<vne>_<vm>/vm.json     (the agent's `stateDir`, default /var/lib/vnsnap)
 *
 * A record holds a format version, the VM's spec, its process when the VM is one (pid AND the
 * process's start time, field 22 of /proc/PID/stat: a pid the kernel gave to another program
 * since is never taken for the VM; a Xen domain has none, its driver checks the domid), the epoch and generation the agent last knew, and the driver's own state (the QEMU
 * driver: its instance directory, QMP socket, TAP devices). The VM is its process: the record
 * says which process it is.
 *
 * Guarantees:
 *  - A record is written atomically (proto/store/atomic-file.ts): a reader sees the old record
 *    or the whole new one, never part of one; a crash leaves at most a temporary file, ignored.
 *  - Versions: a record of an older format is read (upgraded in memory); a record of a NEWER
 *    format than this agent knows makes scan() fail with ERR_UNSUPPORTED_VERSION and one line
 *    naming the file, before anything is touched (the caller refuses to start: an older agent
 *    must not adopt, stop or rewrite what a newer one left).
 *  - A malformed record (not JSON, missing fields) is reported by scan() with its reason and
 *    skipped, never adopted; the caller removes it.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VnsnapError } from '../proto/core/errors';
import type { VmSpec__Output } from '../proto/gen/vnsnap/v1/VmSpec';
import { AtomicFile, isTempName } from '../proto/store/atomic-file';

/** The format this agent writes (and the newest it reads). */
export const VM_STATE_FORMAT = 1;
export const DEFAULT_STATE_DIR = '/var/lib/vnsnap';
const FILE = 'vm.json';

/** Which process a VM is: its pid and the kernel's start time of that pid (clock ticks since boot). */
export interface ProcessIdentity {
  pid: number;
  startTime: string;
}

export interface VmStateRecord {
  format: number;
  /** The agent that wrote it. */
  agent: string;
  vne: string;
  vm: string;
  /** The driver kind that runs it (VmSpec.driver.kind). */
  driver: string;
  spec: VmSpec__Output;
  /** The VM's process (QEMU); absent for a VM that is not a host process (a Xen domain: the driver checks its domid). */
  process?: ProcessIdentity;
  /** The switch epoch and VNE generation the agent last knew (informational: ports come back at ConfigureVne's). */
  epoch: number;
  generation: number;
  /** The driver's own state (opaque here; the driver checks it). */
  driverState: unknown;
  writtenUnixMs: number;
}

/**
 * The disk chain a VM runs on, as far as the store holds it (docs/storage.md "Incremental
 * disks"): `layers` are the store's artefacts of the layers below the VM's current top, in
 * order (layer 0 the full base), as its last snapshot (or the restore it came from) stored
 * them; `top` is the local image file the last of them holds. When the chain's base is not
 * stored yet (a VM booted from its spec's base), `layers` is empty and `top` is that base. A
 * driver keeps it in its part of the VM's record; a record without one (an older record) means
 * "unknown": the next snapshot stores a full image.
 */
export interface DiskChainRecord {
  layers: { path: string; size: number; sha256: string }[];
  top: string;
}

/** A DiskChainRecord read back from a record; undefined (unknown: a full image next time) when absent or malformed. */
export function parseDiskChain(v: unknown): DiskChainRecord | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const o = v as Record<string, unknown>;
  if (typeof o.top !== 'string' || !o.top.startsWith('/') || !Array.isArray(o.layers)) return undefined;
  const layers: DiskChainRecord['layers'] = [];
  for (const l of o.layers as unknown[]) {
    const a = (typeof l === 'object' && l !== null ? l : {}) as Record<string, unknown>;
    if (typeof a.path !== 'string' || a.path === '' || typeof a.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(a.sha256)) return undefined;
    if (typeof a.size !== 'number' || !Number.isSafeInteger(a.size) || a.size < 0) return undefined;
    layers.push({ path: a.path, size: a.size, sha256: a.sha256 });
  }
  return { layers, top: o.top };
}

/** What scan() found. */
export interface ScanResult {
  records: { dir: string; record: VmStateRecord }[];
  /** Records that cannot be read (malformed), with the reason: never adopted. */
  unreadable: { dir: string; reason: string }[];
}

/**
 * The fields of /proc/PID/stat from field 3 (state) on, so field N is at index N − 3; undefined
 * if there is no such process. "PID (COMM) STATE PPID ..." where COMM may hold spaces and
 * parentheses: the fields start after the last ")".
 */
export function procStatFields(pid: number): string[] | undefined {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** The start time of process `pid` (field 22 of /proc/PID/stat), or undefined if there is no such process. */
export function processStartTime(pid: number): string | undefined {
  const rest = procStatFields(pid);
  if (rest === undefined) return undefined;
  // rest[0] is field 3 (state), so field 22 is rest[19]. A zombie (Z) or dead (X) process is gone:
  // it only waits for a parent (here perhaps a PID 1 that does not reap) to collect it.
  if (rest[0] === 'Z' || rest[0] === 'X') return undefined;
  const v = rest[19];
  return v !== undefined && /^\d+$/.test(v) ? v : undefined;
}

/** The identity of a live process (throws ERR_NOT_FOUND if it is gone). */
export function processIdentity(pid: number): ProcessIdentity {
  const startTime = processStartTime(pid);
  if (startTime === undefined) throw new VnsnapError('ERR_NOT_FOUND', `process ${pid} is not running`);
  return { pid, startTime };
}

/** Is the process still the one the record names (same pid AND same start time)? */
export function isSameProcess(p: ProcessIdentity): boolean {
  return processStartTime(p.pid) === p.startTime;
}

/** A record's directory name: "<vne>_<vm>", with anything but [A-Za-z0-9_.-] replaced. */
export function recordDirName(vne: string, vm: string): string {
  const safe = (s: string): string => s.replace(/[^A-Za-z0-9_.-]/g, '-');
  return `${safe(vne)}_${safe(vm)}`;
}

function str(o: Record<string, unknown>, k: string): string {
  const v = o[k];
  if (typeof v !== 'string' || v === '') throw new Error(`"${k}" is not a non-empty string`);
  return v;
}

function num(o: Record<string, unknown>, k: string): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new Error(`"${k}" is not a non-negative integer`);
  return v;
}

/**
 * Parse one record's text. Throws ERR_UNSUPPORTED_VERSION for a newer format than this agent
 * knows, and a plain Error with the reason for a malformed record.
 */
export function parseVmState(text: string, file: string): VmStateRecord {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`not JSON (${(e as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('not a JSON object');
  const o = raw as Record<string, unknown>;
  const format = num(o, 'format');
  if (format > VM_STATE_FORMAT) {
    throw new VnsnapError('ERR_UNSUPPORTED_VERSION', `VM state ${file} has format ${format}, newer than this agent reads (${VM_STATE_FORMAT}): a newer agent left it; run that version (this one touches nothing)`);
  }
  if (format < 1) throw new Error(`unknown format ${format}`);
  const p = o.process;
  if (p !== undefined && (typeof p !== 'object' || p === null)) throw new Error('"process" is not an object');
  const proc = p as Record<string, unknown> | undefined;
  const spec = o.spec;
  if (typeof spec !== 'object' || spec === null || typeof (spec as { name?: unknown }).name !== 'string') throw new Error('"spec" is not a VM spec');
  return {
    format,
    agent: str(o, 'agent'),
    vne: str(o, 'vne'),
    vm: str(o, 'vm'),
    driver: str(o, 'driver'),
    spec: spec as VmSpec__Output,
    ...(proc ? { process: { pid: num(proc, 'pid'), startTime: str(proc, 'startTime') } } : {}),
    epoch: num(o, 'epoch'),
    generation: num(o, 'generation'),
    driverState: o.driverState ?? null,
    writtenUnixMs: typeof o.writtenUnixMs === 'number' ? o.writtenUnixMs : 0,
  };
}

/** The records of one agent's state directory. */
export class VmStateDir {
  readonly vmsDir: string;

  constructor(readonly root: string) {
    this.vmsDir = path.join(root, 'vms');
  }

  dirOf(vne: string, vm: string): string {
    return path.join(this.vmsDir, recordDirName(vne, vm));
  }

  /** Write (or replace) a VM's record atomically. */
  async write(r: Omit<VmStateRecord, 'format' | 'writtenUnixMs'>): Promise<void> {
    const rec: VmStateRecord = { format: VM_STATE_FORMAT, ...r, writtenUnixMs: Date.now() };
    const final = path.join(this.dirOf(r.vne, r.vm), FILE);
    const f = await AtomicFile.create(final, final);
    try {
      await f.write(Buffer.from(JSON.stringify(rec, null, 2) + '\n'));
      await f.commit();
    } catch (e) {
      await f.abort();
      throw e;
    }
  }

  /** Remove a VM's record (idempotent). */
  async remove(vne: string, vm: string): Promise<void> {
    await this.removeDir(this.dirOf(vne, vm));
  }

  async removeDir(dir: string): Promise<void> {
    await fsp.rm(dir, { recursive: true, force: true });
  }

  /**
   * Remove the temporary files an interrupted write left (in vms/ and in each record's
   * directory); returns their paths. Call it only after scan() accepted the directory.
   */
  async removeTemps(): Promise<string[]> {
    const removed: string[] = [];
    const names = await fsp.readdir(this.vmsDir).catch(() => [] as string[]);
    for (const n of names.sort()) {
      const p = path.join(this.vmsDir, n);
      const inner = isTempName(n) ? [] : await fsp.readdir(p).catch(() => [] as string[]);
      for (const t of [...(isTempName(n) ? [p] : []), ...inner.filter(isTempName).map((f) => path.join(p, f))]) {
        await fsp.rm(t, { recursive: true, force: true });
        removed.push(t);
      }
    }
    return removed;
  }

  /**
   * Every record. Throws ERR_UNSUPPORTED_VERSION (before returning anything) if any record is of
   * a newer format than this agent reads.
   */
  async scan(): Promise<ScanResult> {
    let names: string[];
    try {
      names = await fsp.readdir(this.vmsDir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { records: [], unreadable: [] };
      throw new VnsnapError('ERR_CONFIG', `cannot read the VM state directory ${this.vmsDir}: ${(e as Error).message}`, { cause: e });
    }
    const out: ScanResult = { records: [], unreadable: [] };
    for (const n of names.sort()) {
      if (isTempName(n)) continue;
      const dir = path.join(this.vmsDir, n);
      const file = path.join(dir, FILE);
      let text: string;
      try {
        text = await fsp.readFile(file, 'utf8');
      } catch (e) {
        out.unreadable.push({ dir, reason: `cannot read ${file}: ${(e as Error).message}` });
        continue;
      }
      try {
        out.records.push({ dir, record: parseVmState(text, file) });
      } catch (e) {
        if (e instanceof VnsnapError) throw e;
        out.unreadable.push({ dir, reason: `${file}: ${(e as Error).message}` });
      }
    }
    return out;
  }
}
