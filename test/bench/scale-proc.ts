/**
 * /proc readings of one process for scale-bench: CPU time (utime + stime of /proc/PID/stat) and
 * memory (VmRSS, VmHWM of /proc/PID/status). Linux only.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { procStatFields } from '../../agent/vm-state';

let ticks: number | undefined;

/** Clock ticks per second (getconf CLK_TCK; 100 when that is not available). */
export function clockTicks(): number {
  if (ticks === undefined) {
    try {
      ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticks = 100;
    }
  }
  return ticks;
}

/** CPU seconds (user + system) the process has used so far; null when it is gone. */
export function cpuSeconds(pid: number): number | null {
  const rest = procStatFields(pid);
  if (rest === undefined) return null;
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  return (utime + stime) / clockTicks();
}

/** VmRSS and VmHWM (peak RSS) in MiB; null when the process is gone. */
export function memoryMib(pid: number): { rss: number; hwm: number } | null {
  let status: string;
  try {
    status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const kib = (key: string): number => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status);
    return m ? Number(m[1]) : 0;
  };
  return { rss: kib('VmRSS') / 1024, hwm: kib('VmHWM') / 1024 };
}
