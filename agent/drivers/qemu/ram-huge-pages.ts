/**
 * A QEMU's guest RAM mapped with huge pages again before a background snapshot's cut, so that
 * QEMU's own work in the pause does not walk it one 4 KiB page at a time.
 *
 * Why: after `migrate` (capability background-snapshot) QEMU 7.2's migration thread, with the VM
 * stopped, first reads one byte of every page of guest RAM (ram_write_tracking_prepare: the pages
 * must be populated before they are write-protected), then write-protects all of it. Guest RAM is
 * anonymous memory QEMU marks MADV_HUGEPAGE, so on a fresh VM it is mapped with 2 MiB pages and
 * that walk costs ~1 ms. But the snapshot itself splits them: QEMU lifts the write protection
 * 4 KiB at a time as it saves pages, and the kernel splits every huge mapping it touches. From the
 * second snapshot on, the walk is over 4 KiB mappings: 11-18 ms of the migration thread on a core
 * (its QEMU main thread boosted), the largest part of QEMU's side of the pause measured on the
 * 2-core host (docs/performance.md, "Where QEMU's part of a background pause goes"). The kernel's
 * khugepaged puts them back only slowly (here 4096 pages every 10 s). MADV_COLLAPSE (Linux >= 6.1)
 * does it at once: ahead of each background snapshot's cut (at its begin, while the VM runs), the
 * agent asks for it with the small program agent/native/thp-collapse.c (process_madvise).
 *
 * Which memory: the process's anonymous private read-write mappings that QEMU marked both
 * MADV_HUGEPAGE (VmFlags `hg`) and MADV_DONTFORK (`dc`), which it does for its RAM blocks only,
 * never executable (TCG's code buffer is `hg` too), cut to whole 2 MiB pages. Mappings already
 * all huge (a fresh VM's) are skipped, so the first snapshot of a VM starts no program.
 *
 * Cost: the kernel copies the small pages into huge ones (20-55 ms of CPU per 128 MiB measured,
 * outside any pause; the guest's accesses to a range wait while it is copied). Only 2 MiB pages
 * that hold data of the QEMU's own are collapsed (the program reads /proc/PID/pagemap): guest RAM
 * the guest never wrote, which the previous snapshot's populate walk mapped to the shared zero
 * page, would otherwise become 2 MiB of real memory each (MADV_COLLAPSE does that).
 *
 * Guarantees: never rejects and never fails a snapshot: where the kernel, the permissions or the
 * program do not allow it, nothing changes and a debug line says why. Bounded (COLLAPSE_BOUND_MS).
 * VNSNAP_QEMU_RAM_COLLAPSE=0 turns it off.
 */
import * as fs from 'node:fs';
import { builtProgram, spawnProc } from '../exec';

/** Set to 0 to take background snapshots without collapsing guest RAM first. */
export const RAM_COLLAPSE_ENV = 'VNSNAP_QEMU_RAM_COLLAPSE';
/** The longest the collapse may take before it is killed (the snapshot goes on without it). */
export const COLLAPSE_BOUND_MS = 5000;

const HUGE = 2 * 1024 * 1024;

export interface RamRange {
  start: bigint;
  length: number;
  /** Bytes of the range already mapped huge (smaps AnonHugePages). */
  hugeBytes: number;
}

export function ramCollapseEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env[RAM_COLLAPSE_ENV] !== '0';
}

/** The guest RAM mappings in a /proc/PID/smaps text, cut to whole 2 MiB pages (module comment). */
export function guestRamRanges(smaps: string): RamRange[] {
  const out: RamRange[] = [];
  // A mapping's block: its header line, then "Key: value" lines up to VmFlags.
  for (const block of smaps.split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+ *(\S*)/.exec(block);
    const flags = /^VmFlags:(.*)$/m.exec(block)?.[1]?.trim().split(/\s+/) ?? [];
    if (!head || head[3] !== 'rw-p' || head[4] || !flags.includes('hg') || !flags.includes('dc') || flags.includes('ex')) continue;
    const h = BigInt(HUGE);
    const start = ((BigInt(`0x${head[1]}`) + h - 1n) / h) * h;
    const end = (BigInt(`0x${head[2]}`) / h) * h;
    if (end <= start) continue;
    const hugeKib = Number(/^AnonHugePages:\s+(\d+) kB/m.exec(block)?.[1] ?? 0);
    out.push({ start, length: Number(end - start), hugeBytes: hugeKib * 1024 });
  }
  return out;
}

/** The collapse program built with the native addon, or null when it was not built. */
export function collapseProgram(): string | null {
  return builtProgram('vnsnap-thp-collapse');
}

export interface CollapseLog {
  debug(o: object, msg: string): void;
}

export interface CollapseResult {
  /** Ranges asked for (0: nothing to do, or not possible). */
  ranges: number;
  bytes: number;
  ms: number;
}

/** Map QEMU `pid`'s guest RAM with huge pages again (module comment); resolves when done or given up. */
export interface CollapseOptions {
  /** The collapse program (default: collapseProgram()). */
  program?: string | null;
  /** /proc/PID/smaps (default: read from /proc). */
  readSmaps?: (pid: number) => Promise<string>;
  env?: NodeJS.ProcessEnv;
}

export async function collapseGuestRam(pid: number | undefined, log: CollapseLog, o: CollapseOptions = {}): Promise<CollapseResult> {
  const none: CollapseResult = { ranges: 0, bytes: 0, ms: 0 };
  if (pid === undefined || !ramCollapseEnabled(o.env)) return none;
  const program = o.program === undefined ? collapseProgram() : o.program;
  if (!program) {
    log.debug({ pid }, 'guest RAM not collapsed to huge pages: vnsnap-thp-collapse not built');
    return none;
  }
  let ranges: RamRange[];
  try {
    ranges = guestRamRanges(await (o.readSmaps ?? ((p: number) => fs.promises.readFile(`/proc/${p}/smaps`, 'utf8')))(pid)).filter((r) => r.hugeBytes < r.length);
  } catch (e) {
    log.debug({ pid, err: (e as Error).message }, 'guest RAM not collapsed to huge pages: smaps not readable');
    return none;
  }
  if (ranges.length === 0) return none;
  const t0 = performance.now();
  const res = await spawnProc(program, [String(pid), ...ranges.map((r) => `0x${r.start.toString(16)}:${r.length}`)], { timeoutMs: COLLAPSE_BOUND_MS }).exited;
  const ms = Math.round((performance.now() - t0) * 10) / 10;
  if (res.code !== 0) log.debug({ pid, code: res.code, timedOut: res.timedOut, output: res.output.trim() }, 'guest RAM not (all) collapsed to huge pages');
  return { ranges: ranges.length, bytes: ranges.reduce((n, r) => n + r.length, 0), ms };
}
