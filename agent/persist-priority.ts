/**
 * The agent's snapshot persist work yields to the host's guests: the store's hashing worker
 * (proto/store/chunk-hasher.ts: each memory stream's and disk layer's SHA-256s and content-defined
 * cuts, about a fifth of the agent's CPU per snapshot) runs at SCHED_IDLE, set once when the
 * agent starts.
 *
 * Why: on a host whose cores the guests keep busy, every core-second the persist work takes is
 * one the guests lose (bench:vm-net's TCP while snapshots run: docs/performance.md, "`snapnet`").
 * A nice value would not do it: with the kernel's session scheduling groups
 * (kernel.sched_autogroup_enabled=1) a nice value weighs a thread only against its own session,
 * and each QEMU runs in a session of its own; a SCHED_IDLE thread yields to the other sessions'
 * runnable threads too (measured: 6 % of a contended core against 50 % at nice 19). A snapshot's
 * cut is not slowed by it: the store's writes are held while a VM is paused (image-stream.ts
 * holdStoreWrites), so the worker has nothing to do in a pause; only the persist after the
 * resume takes what the guests leave idle, plus the small share the kernel still gives a
 * SCHED_IDLE thread on a contended core (and a guest that writes a page its background snapshot
 * has not saved yet waits for it, leaving its core to the persist meanwhile).
 *
 * Guarantees: only the hashing worker's thread (never the event loop, which carries the switch,
 * reads the streams and answers QMP); the chunks and digests are the same. VNSNAP_AGENT_PERSIST_IDLE=0
 * leaves the worker at the default policy. Where the addon lacks the entry point or the kernel
 * refuses, nothing changes and nothing fails: the priority is an optimisation.
 */
import { hashWorkerIdle } from '../proto/store/chunk-hasher';

/** Set to 0 to keep the store's hashing worker at the default policy. */
export const PERSIST_IDLE_ENV = 'VNSNAP_AGENT_PERSIST_IDLE';

/** Whether the environment leaves the persist work at SCHED_IDLE (anything but "0"). */
export function persistIdleEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env[PERSIST_IDLE_ENV] !== '0';
}

/** Put the store's hashing worker at SCHED_IDLE unless the environment says not to; says whether it asked. */
export function lowerPersistPriority(env: NodeJS.ProcessEnv = process.env): boolean {
  if (!persistIdleEnabled(env)) return false;
  hashWorkerIdle();
  return true;
}
