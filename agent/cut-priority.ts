/**
 * The agent's event-loop thread at a raised scheduling priority while it cuts VMs: from a
 * commit's receipt until the agent's part of its VMs' pauses is done (snapshot-runner.ts says
 * when, per mode). A VM's pause contains the agent's reaction
 * to QEMU's STOP (the drain, then `migrate` or `cont`): on a host whose cores are busy with
 * guests, a woken agent at the default priority waited for a core (the cut traces' loop stalls
 * of 15-40 ms around the STOP), and every such wait lengthens the pause. At nice CUT_NICE the
 * scheduler prefers it to the threads of its own session; where the kernel groups tasks by
 * session (kernel.sched_autogroup_enabled=1) that is all a nice value does: the stalls measured
 * at CUT_NICE on such a host were still 85-90 % run-queue wait behind other sessions' threads
 * (the guests' vCPUs), and raising the agent's whole session changed nothing measurable
 * (docs/performance.md, "QEMU's pause at SCHED_FIFO"). The window is the cut's own, bounded by it
 * (tens of ms per VM); the agent's other work in it (dataplane batches) gains the same, which is
 * why it ends as soon as the rest of the pause is QEMU's own work.
 *
 * Guarantees: only the calling thread (the event loop; Linux's nice value is per thread: the
 * libuv pool, which compresses store chunks, keeps its own) is raised, and only while a hold is
 * taken; the last release puts back the value found at the first hold. Holds nest (two VNEs
 * committing at once). Where raising is not permitted (no CAP_SYS_NICE) nothing changes and no
 * error is raised: the priority is an optimisation, never a condition of the cut.
 */
import * as os from 'node:os';

/** The nice value of the agent's event-loop thread during a cut (-20 highest … 19 lowest). */
export const CUT_NICE = -10;

let holds = 0;
/** The thread's nice value before the first hold, when this module changed it. */
let restoreTo: number | undefined;

/** Raise the event loop's priority (idempotent release returned); see the module comment. */
export function raiseCutPriority(nice = CUT_NICE): () => void {
  if (holds++ === 0) {
    restoreTo = undefined;
    try {
      const before = os.getPriority(0);
      if (before > nice) {
        os.setPriority(0, nice);
        restoreTo = before;
      }
    } catch {
      /* not permitted: the cut runs at the thread's priority */
    }
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    if (--holds > 0 || restoreTo === undefined) return;
    try {
      os.setPriority(0, restoreTo);
    } catch {
      /* lowering one's own priority is always permitted */
    }
    restoreTo = undefined;
  };
}
