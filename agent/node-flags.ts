/**
 * The Node.js (V8) flags vnsnap-agent runs with, and the check that it was started with them
 * (main.ts logs a warning when one is missing; the unit, agent/systemd/vnsnap-agent.service, and
 * main.js's own `#!` line pass them).
 *
 * `--single-threaded-gc`: V8 collects garbage on the event-loop thread alone, with no helper
 * threads. Why: the agent's event-loop thread runs at SCHED_FIFO through a snapshot's cut window
 * (cut-priority.ts), which on a host whose cores are busy with guests starves V8's GC helper
 * threads (SCHED_OTHER). With them, Node 20's V8 sweeps its C++ heap (cppgc) concurrently and the
 * event loop's incremental sweep task re-posts itself at once while a helper still holds pages: a
 * busy loop through the event loop (a task, an eventfd write, an epoll wake-up, the task again)
 * for as long as the starved helper does not run — at a realtime policy, on a core the guests
 * needed. Measured (docs/performance.md, "The agent's garbage collection on one thread"): with
 * the helpers, 29 % of the agents' event-loop samples were garbage collection during tracked
 * snapshots taken once a second, 17.5 points of them that loop, and the agents spent 0.39–0.41
 * core-s per snapshot; with `--single-threaded-gc` 0.13–0.16, and the guests' TCP during the
 * snapshots went from 0.61 to 0.85 of idle in the same bench. On one thread the collector does the
 * same marking and sweeping without the hand-offs, so nothing else gets slower: the agent's heap
 * is small (tens of MiB) and its large buffers are outside it.
 *
 * Guarantees: AGENT_NODE_FLAGS is the one list every launcher passes (the unit, the `#!` line,
 * the test cluster); missingNodeFlags() names those a process's execArgv lacks, in list order.
 */

/** The flags, in the order a launcher passes them before the script. */
export const AGENT_NODE_FLAGS: readonly string[] = ['--single-threaded-gc'];

/** The flags of `wanted` that `execArgv` (process.execArgv) lacks, in order. */
export function missingNodeFlags(execArgv: readonly string[], wanted: readonly string[] = AGENT_NODE_FLAGS): string[] {
  return wanted.filter((f) => !execArgv.includes(f));
}
