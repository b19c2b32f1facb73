/**
 * Where the CPU goes during a run of bench:vm-net: the CPU time of every thread of every process
 * in the given network namespaces (QEMU's vCPU and I/O threads, the agents' main and worker
 * threads), from /proc/PID/task/TID/stat, between two samples. The kernel's own work done in
 * softirq context on behalf of no process (bridge, VXLAN, TAP delivery) is not in these figures:
 * compare their sum with the machine's busy cores to see it. Also per process (all its threads,
 * ended ones included), for what runs in short-lived threads.
 */
import * as fs from 'node:fs';
import { sh } from '../support/netns';

/** CPU ticks (utime + stime) per thread, keyed "process/thread". */
export type ThreadSample = Map<string, number>;

function statOf(file: string): { comm: string; ticks: number } | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return undefined; // the thread ended between the listing and the read
  }
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  const rest = text.slice(close + 2).split(' ');
  // fields after the command: state(3) ... utime(14) stime(15), numbered from 1 with pid, comm
  return { comm: text.slice(open + 1, close), ticks: Number(rest[11]) + Number(rest[12]) };
}

/** Sample every thread of every process in the namespaces (full names). */
export function sampleThreads(namespaces: readonly string[]): ThreadSample {
  const out: ThreadSample = new Map();
  for (const ns of namespaces) {
    for (const pid of sh('ip', ['netns', 'pids', ns], { allowFail: true }).split('\n').filter(Boolean)) {
      const proc = statOf(`/proc/${pid}/stat`);
      if (!proc) continue;
      let tids: string[] = [];
      try {
        tids = fs.readdirSync(`/proc/${pid}/task`);
      } catch {
        continue;
      }
      for (const tid of tids) {
        const t = statOf(`/proc/${pid}/task/${tid}/stat`);
        if (!t) continue;
        // A QEMU the agent starts names its threads (`-name …,debug-threads=on`: "CPU 0/TCG",
        // "IO mon_iothread", ...); one started without it does not, and its unnamed threads are
        // listed by tid. Either way its main thread (tid = pid) is the main loop, where the NIC
        // backend's I/O runs.
        const thread = tid === pid ? 'main' : t.comm === proc.comm ? `thread ${tid}` : t.comm;
        out.set(`${ns.split('-').pop()} ${proc.comm}[${pid}] ${thread}`, t.ticks);
      }
    }
  }
  return out;
}

/**
 * Sample every process in the namespaces as a whole, keyed "process": /proc/PID/stat counts the
 * threads that already ended too (QEMU's migration thread of a background snapshot, an agent's
 * finished workers), which a sample of the live threads misses.
 */
export function sampleProcesses(namespaces: readonly string[]): ThreadSample {
  const out: ThreadSample = new Map();
  for (const ns of namespaces) {
    for (const pid of sh('ip', ['netns', 'pids', ns], { allowFail: true }).split('\n').filter(Boolean)) {
      const proc = statOf(`/proc/${pid}/stat`);
      if (proc) out.set(`${ns.split('-').pop()} ${proc.comm}[${pid}]`, proc.ticks);
    }
  }
  return out;
}

/** Add what each thread (or process) used between samples `a` and `b` to `acc`: several windows summed, for busiestThreads(new Map(), acc, their seconds). */
export function addTicks(acc: ThreadSample, a: ThreadSample, b: ThreadSample): void {
  for (const [k, v] of b) {
    const d = v - (a.get(k) ?? 0);
    if (d > 0) acc.set(k, (acc.get(k) ?? 0) + d);
  }
}

/** The busiest threads (or processes) between two samples over `seconds`: cores each (ticks are 1/100 s). */
export function busiestThreads(a: ThreadSample, b: ThreadSample, seconds: number, top = 8): { thread: string; cores: number }[] {
  const out: { thread: string; cores: number }[] = [];
  for (const [k, v] of b) {
    const d = v - (a.get(k) ?? 0);
    if (d > 0) out.push({ thread: k, cores: d / 100 / seconds });
  }
  return out.sort((x, y) => y.cores - x.cores).slice(0, top);
}
