/**
 * QEMU's own part of a background pause given a core: the VM's QEMU main thread at SCHED_FIFO
 * (priority PAUSE_BOOST_PRIORITY) from just before the cut's `stop` until its RESUME, then every
 * thread of that QEMU back at SCHED_OTHER.
 *
 * Why: once the agent has written `migrate`, the rest of a background pause is QEMU's (device
 * state saved, RAM write-protected, the resume scheduled on its main loop: ~2 ms on a quiet
 * machine). On a host whose cores run the guests' vCPUs at 100 % that work waits for a core
 * behind them, and the pause with it (bare QEMU's own background snapshot took 24–70 ms median
 * on a busy 2-core host, docs/performance.md). Nice values did not help there (a niced thread
 * still shares a core by weight); a realtime thread runs as soon as it is runnable. The
 * migration thread QEMU starts at `migrate` inherits the main thread's policy, so the device
 * state it saves in the pause runs at the same priority; `chrt --all-tasks` puts it back with
 * the main thread.
 *
 * QEMU's QMP monitor thread (`IO mon_iothread`, found by the name QEMU gives it with `-name
 * …,debug-threads=on`, which the command line always sets) is raised with the main thread: it
 * reads the cut's commands off the socket, one at a time (without out-of-band, QEMU reads the next
 * command only once the previous one answered), so each of `stop`, `blockdev-snapshot` and
 * `migrate` waited for it to get a core again: in a QEMU trace of bench:snapshot's background cuts,
 * `blockdev-snapshot` was read 0.3-26 ms after the STOP (median 5-8 ms), with the main thread idle.
 * A QEMU whose threads are not named (started without debug-threads) gets its main thread only.
 *
 * The window is the pause: the boost is applied right before `stop` is written and undone at
 * the RESUME, on any failure of the cut, or when the bound (BOOST_BOUND_MS) runs out, whichever
 * comes first — a QMP that never answers cannot leave a realtime thread behind while the agent
 * runs. Both are sched_setscheduler(2) calls made by the agent itself (the addon's
 * setThreadPolicy: microseconds, nothing else runs), not `chrt` processes: each `chrt`, even
 * forked from the agent's small shell at SCHED_FIFO 1, was a fork and an exec at a realtime
 * priority on the host's busy cores in the very milliseconds the stop needed them, and QEMU's
 * trace showed its vCPU threads parked 2-22 ms after such a boosted `stop` was dispatched
 * against 0.1-3 ms unboosted (docs/performance.md, "The vCPUs' exit at a boosted stop"). Where
 * the addon lacks the call (built from older sources) the boost goes through `chrt` as before
 * (util-linux, run by the agent's shell: ChrtShell), started and not waited for. Should the agent die inside the window, the kernel's realtime
 * throttling (kernel.sched_rt_runtime_us, 950000 of every 1000000 µs by default) still leaves
 * the other threads 5 % of each core until the VM's QEMU is restarted or its policy reset.
 *
 * Guarantees: a QEMU is boosted only when every one of its threads runs SCHED_OTHER (what the
 * release restores is then exactly what was found; a QEMU an operator gave realtime threads is
 * left alone). release() is idempotent, runs the restore only after the boost's own `chrt`
 * exited (never before it, which would leave the boost in place), and never rejects: where
 * raising is not permitted or `chrt` is missing nothing changes and the cut runs unboosted (a
 * debug line says why). VNSNAP_QEMU_PAUSE_BOOST=0 turns the boost off.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { nativeIo } from '../../../switch/native-io';

/** SCHED_FIFO priority of QEMU's main thread in the pause (1 lowest … 99; the kernel's own threads run at 50 and 99). */
export const PAUSE_BOOST_PRIORITY = 10;
/** The longest a boost stays in place when neither RESUME nor a failure ends it first. */
export const BOOST_BOUND_MS = 2000;
/** Set to 0 to cut without the boost. */
export const PAUSE_BOOST_ENV = 'VNSNAP_QEMU_PAUSE_BOOST';

/** Linux's SCHED_OTHER (the policy field of /proc/PID/task/TID/stat). */
export const SCHED_OTHER = 0;

/** The scheduling policy of each thread of a process. */
export type ThreadPolicies = (pid: number) => number[];
/** The thread id of a QEMU's QMP monitor thread, undefined when none is found. */
export type MonitorThread = (pid: number) => number | undefined;

/** The name QEMU 7.2 gives its QMP monitor's I/O thread (with debug-threads=on). */
export const MONITOR_THREAD_NAME = 'IO mon_iothread';
/** Run `chrt` with these arguments; rejects when it fails. */
export type Chrt = (args: string[]) => Promise<void>;
/** Set thread `tid` to SCHED_FIFO at `priority` (fifo) or to SCHED_OTHER, at once; throws when refused. */
export type SetPolicy = (tid: number, fifo: boolean, priority: number) => void;

let nativeSet: SetPolicy | null | undefined;

/** The addon's setThreadPolicy (switch/native/sched.c) as a SetPolicy, or null when the addon is not built or lacks it. */
export function nativeSetPolicy(): SetPolicy | null {
  if (nativeSet !== undefined) return nativeSet;
  try {
    const io = nativeIo();
    nativeSet = typeof io.setThreadPolicy === 'function' ? (tid, fifo, priority) => io.setThreadPolicy(tid, fifo ? 1 : 0, fifo ? priority : 0) : null;
  } catch {
    nativeSet = null;
  }
  return nativeSet;
}

/** Where the boost says why it was not applied (debug) or not undone (warn): the job's logger. */
export interface BoostLog {
  debug(o: object, msg: string): void;
  warn(o: object, msg: string): void;
}

export interface PauseBoostOptions {
  log: BoostLog;
  priority?: number;
  boundMs?: number;
  chrt?: Chrt;
  /** The system call that boosts and restores (default: nativeSetPolicy(); null: `chrt` through the shell). */
  setPolicy?: SetPolicy | null;
  /** The thread ids of a process (default: /proc/PID/task). */
  threads?: (pid: number) => number[];
  policies?: ThreadPolicies;
  monitorThread?: MonitorThread;
  /**
   * Raise every thread of QEMU, its vCPUs and helpers (RCU) among them, not only the main and
   * monitor threads: for a pause in which QEMU itself waits for them (a tracked cut's `stop` and
   * device state: tracked-job.ts), where a host's realtime threads would otherwise hold them off
   * for up to the kernel's realtime throttling period.
   */
  allThreads?: boolean;
  /**
   * With allThreads: the priority of the threads other than the main and monitor threads (default
   * `priority`). Below QEMU's main thread, so that it always gets a core to kick a vCPU that is
   * still running its guest at the raised priority out of it.
   */
  othersPriority?: number;
  /** The vCPU threads of a process (default: vcpuThreads(), by the names QEMU gives them). */
  vcpus?: (pid: number) => number[];
}

/** The names QEMU 7.2 gives its vCPU threads with debug-threads=on: `CPU 0/TCG`, `CPU 1/KVM`, single-threaded TCG's `ALL CPUs/TCG`. */
export const VCPU_THREAD_NAME = /^(CPU \d+|ALL CPUs)\//;

/** The vCPU threads of QEMU `pid` by their names (/proc/PID/task/TID/comm); [] when none or unreadable. */
export function vcpuThreads(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      try {
        if (VCPU_THREAD_NAME.test(fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8'))) out.push(Number(tid));
      } catch {
        /* the thread ended */
      }
    }
  } catch {
    /* gone */
  }
  return out;
}

/** The scheduling policy of thread `tid` of `pid` (/proc; throws when it is gone). */
export function threadPolicy(pid: number, tid: number | string = pid): number {
  const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  // Fields after the command's closing parenthesis start at field 3 (state); policy is field 41.
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[41 - 3]);
}

/** The QMP monitor thread of QEMU `pid` by its name (/proc/PID/task/TID/comm); undefined when none or unreadable. */
export function monitorThread(pid: number): number | undefined {
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      if (fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trimEnd() === MONITOR_THREAD_NAME) return Number(tid);
    }
  } catch {
    /* gone: the main thread's boost says so */
  }
  return undefined;
}

/** The thread ids of `pid` (/proc/PID/task; [] when the process is gone). */
export function threadIds(pid: number): number[] {
  try {
    return fs.readdirSync(`/proc/${pid}/task`).map(Number);
  } catch {
    return [];
  }
}

/** The policy of every thread of `pid` (/proc; throws when the process is gone). */
export function threadPolicies(pid: number): number[] {
  return fs.readdirSync(`/proc/${pid}/task`).map((tid) => threadPolicy(pid, tid));
}

/**
 * `chrt` run by one shell per agent instead of a process spawned from the agent at each cut:
 * spawning from Node forks the whole agent synchronously on its event loop (3 ms at 44 MiB of
 * RSS, 10 ms at 244 MiB, up to 57 ms, on the busy 2-core host), which would sit in the pause of
 * the agent's other VMs at the RESUME's restore. The shell is small to fork, raises itself to
 * SCHED_FIFO 1 where permitted (so a boost lands at once on a busy host; the `chrt` it forks
 * inherits that), reads one command line per request and answers `#RC MESSAGE`. It is started
 * ahead of the cut (startChrtShell(), at a background snapshot's begin), exits at the agent's end
 * (its stdin closes), and is started again after it died.
 */
/** How long the chrt shell may take to answer one request before it is killed. */
const CHRT_ANSWER_MS = 5000;

class ChrtShell {
  private child: ChildProcess | undefined;
  private readonly pending: { resolve: () => void; reject: (e: Error) => void; what: string }[] = [];
  private out = '';

  start(): ChildProcess {
    if (this.child) return this.child;
    const c = spawn('sh', ['-s'], { stdio: ['pipe', 'pipe', 'ignore'] });
    this.child = c;
    const gone = (why: string): void => {
      if (this.child !== c) return;
      this.child = undefined;
      for (const p of this.pending.splice(0)) p.reject(new Error(`${p.what}: the shell running chrt ${why}`));
    };
    c.on('error', (e) => gone(`failed: ${e.message}`));
    c.on('exit', (code) => gone(`exited (${code})`));
    c.stdin?.on('error', () => undefined); // the exit above says it
    c.stdout?.setEncoding('utf8');
    c.stdout?.on('data', (d: string) => {
      this.out += d;
      let i: number;
      while ((i = this.out.indexOf('\n')) >= 0) {
        const line = this.out.slice(0, i);
        this.out = this.out.slice(i + 1);
        const m = /^#(\d+) ?(.*)$/.exec(line);
        const p = m ? this.pending.shift() : undefined;
        if (!p || !m) continue;
        if (m[1] === '0') p.resolve();
        else p.reject(new Error(`${p.what}: ${m[2] || `exit ${m[1]}`}`));
      }
    });
    c.unref();
    (c.stdin as unknown as { unref?: () => void } | null)?.unref?.();
    (c.stdout as unknown as { unref?: () => void } | null)?.unref?.();
    c.stdin?.write('chrt --fifo --pid 1 $$ >/dev/null 2>&1\n');
    return c;
  }

  run(args: string[]): Promise<void> {
    const c = this.start();
    const what = `chrt ${args.join(' ')}`;
    return new Promise<void>((resolve, reject) => {
      // A shell that stops answering is killed (its requests fail, the next run starts another),
      // so a release never waits forever behind it.
      const t = setTimeout(() => {
        if (this.child === c) c.kill('SIGKILL');
      }, CHRT_ANSWER_MS);
      t.unref();
      const settle = <A extends unknown[]>(f: (...a: A) => void) => (...a: A): void => {
        clearTimeout(t);
        f(...a);
      };
      this.pending.push({ resolve: settle(resolve), reject: settle(reject), what });
      // Our own arguments only (flags and numbers): nothing to quote.
      c.stdin?.write(`out=$(${what} 2>&1); rc=$?; printf '#%d %s\\n' "$rc" "$(printf %s "$out" | tr '\\n' ' ')"\n`);
    });
  }
}

const shell = new ChrtShell();
/** `chrt` through the agent's shell (also the agent's own raise for its part of a cut: cut-priority.ts). */
export const runChrt: Chrt = (args) => shell.run(args);

/** Start the agent's chrt shell ahead of a cut (a background snapshot's begin), so the cut's boost does not. */
export function startChrtShell(): void {
  shell.start();
}

export function pauseBoostEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env[PAUSE_BOOST_ENV] !== '0';
}

/** A boost in place (or not: see `applied`); release() undoes it. */
export interface PauseBoost {
  /** Resolves true once the boost is in place, false when it was not applied. */
  readonly applied: Promise<boolean>;
  /** Undo the boost (idempotent); resolves once QEMU's threads are back at SCHED_OTHER. */
  release(): Promise<void>;
  /**
   * Put the vCPU threads alone back at SCHED_OTHER now (before a `cont`: a vCPU running its guest
   * at a realtime policy takes a core), every other thread staying raised until release(): the
   * migration thread that still has to leave finish-migrate after a save among them. False when
   * it cannot (the boost goes through `chrt`, or no vCPU thread is found by its name): the
   * caller then releases the whole boost.
   */
  lowerVcpus(): boolean;
}

const NOT_APPLIED: PauseBoost = { applied: Promise.resolve(false), release: () => Promise.resolve(), lowerVcpus: () => false };

/**
 * Boost QEMU `pid`'s main thread for a pause (see the module comment); the boost's `chrt` is
 * started at once and not waited for, so the caller writes `stop` right after.
 */
export function boostPause(pid: number | undefined, o: PauseBoostOptions): PauseBoost {
  if (pid === undefined) return NOT_APPLIED;
  const chrt = o.chrt ?? runChrt;
  try {
    const policies = (o.policies ?? threadPolicies)(pid);
    if (policies.some((p) => p !== SCHED_OTHER)) {
      o.log.debug({ pid, policies }, 'QEMU runs a thread that is not SCHED_OTHER: cut without the pause boost');
      return NOT_APPLIED;
    }
  } catch (e) {
    o.log.debug({ pid, err: (e as Error).message }, 'QEMU threads not readable: cut without the pause boost');
    return NOT_APPLIED;
  }
  const monitor = (o.monitorThread ?? monitorThread)(pid);
  const tids = o.allThreads ? (o.threads ?? threadIds)(pid) : monitor === undefined ? [pid] : [pid, monitor];
  const priority = o.priority ?? PAUSE_BOOST_PRIORITY;
  const set = o.setPolicy === undefined ? nativeSetPolicy() : o.setPolicy;
  let applied: Promise<boolean>;
  let restore: () => Promise<void>;
  if (set) {
    // At once, before `stop` is written: one system call per thread.
    let any = false;
    for (const tid of tids) {
      try {
        set(tid, true, tid === pid || tid === monitor ? priority : (o.othersPriority ?? priority));
        any = true;
      } catch (e) {
        o.log.debug({ pid, tid, err: (e as Error).message }, 'pause boost not applied');
      }
    }
    applied = Promise.resolve(any);
    restore = async () => {
      // Every thread, the migration thread started in the pause (it inherited the main thread's policy) among them.
      const failed: string[] = [];
      for (const tid of (o.threads ?? threadIds)(pid)) {
        try {
          set(tid, false, 0);
        } catch (e) {
          if ((e as { errnoCode?: string }).errnoCode !== 'ESRCH') failed.push(`${tid}: ${(e as Error).message}`);
        }
      }
      if (failed.length) o.log.warn({ pid, failed }, 'QEMU threads not put back at SCHED_OTHER after the pause');
    };
  } else {
    const raise = (tid: number): Promise<boolean> =>
      chrt(['--fifo', '--pid', String(priority), String(tid)]).then(
        () => true,
        (e: Error) => {
          o.log.debug({ pid, tid, err: e.message }, 'pause boost not applied');
          return false;
        },
      );
    // Restored together (--all-tasks), once every raise settled: any may have landed.
    applied = Promise.all(tids.map(raise)).then((r) => r.some(Boolean));
    const back = (): Promise<void> => chrt(['--other', '--all-tasks', '--pid', '0', String(pid)]);
    // Once more after a failure (a shell killed for not answering is started again).
    restore = () => back()
      .catch(back)
      .catch((e: Error) => o.log.warn({ pid, err: e.message }, 'QEMU threads not put back at SCHED_OTHER after the pause'));
  }
  let released: Promise<void> | undefined;
  const bound = setTimeout(() => {
    o.log.warn({ pid, boundMs: o.boundMs ?? BOOST_BOUND_MS }, 'the pause did not end within the boost bound: QEMU put back at SCHED_OTHER');
    void release();
  }, o.boundMs ?? BOOST_BOUND_MS);
  bound.unref();
  function release(): Promise<void> {
    released ??= (async () => {
      clearTimeout(bound);
      if (!(await applied)) return;
      await restore();
    })();
    return released;
  }
  function lowerVcpus(): boolean {
    if (!set || released) return false;
    const vcpus = (o.vcpus ?? vcpuThreads)(pid as number);
    if (vcpus.length === 0) return false;
    for (const tid of vcpus) {
      try {
        set(tid, false, 0);
      } catch (e) {
        if ((e as { errnoCode?: string }).errnoCode !== 'ESRCH') return false;
      }
    }
    return true;
  }
  return { applied, release, lowerVcpus };
}
