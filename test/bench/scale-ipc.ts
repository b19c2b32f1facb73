/**
 * The messages between scale-bench (the parent) and its scale-worker processes, over the
 * child_process IPC channel. One request gets one reply with the same `id`.
 */
import type { SimGuestState } from '../sim/state';

/** The sim driver's knobs for every agent of a worker (kept light: 2 cores run 1000 VMs). */
export interface WorkerSimOptions {
  /** The VM clock tick (sending, dirtying), ms. */
  tickMs: number;
  /** Pause between pre-copy passes, ms. */
  passIntervalMs: number;
  /** Data frame size, bytes. */
  frameBytes: number;
}

export interface WorkerInit {
  type: 'init';
  id: number;
  coordinator: string;
  /** The agents to run, each with the UDP port of its tunnel on 127.0.0.1. */
  agents: { id: string; tunnelPort: number }[];
  storeRoot: string;
  sim: WorkerSimOptions;
  /** pino level of the agents' logs (they go to the worker's stderr). */
  logLevel: string;
}

/** The per-VM fields of SimGuestState the consistency check needs (no memory hash). */
export type VmCounters = Pick<SimGuestState, 'epoch' | 'sent' | 'expected' | 'gaps' | 'duplicates' | 'orphans' | 'framesSent' | 'framesReceived'> & {
  status: string;
  rxQueueDrops: number;
};

export interface WorkerQuery {
  type: 'query';
  id: number;
  /** VMs to report, each on the agent that runs it. */
  vms: { agent: string; vne: string; vm: string }[];
  /** Also report each VM's state at the cut to this epoch (the sim driver keeps it). */
  cutEpoch?: number;
}

export interface WorkerStop {
  type: 'stop';
  id: number;
}

/** Event-loop delay of the worker since the last `stats` (or since init). */
export interface WorkerStatsQuery {
  type: 'stats';
  id: number;
}

/** When each agent of the worker received SnapshotCommit of one snapshot. */
export interface WorkerCommitsQuery {
  type: 'commits';
  id: number;
  snapshotId: string;
}

export type ToWorker = WorkerInit | WorkerQuery | WorkerStop | WorkerStatsQuery | WorkerCommitsQuery;

export interface WorkerReady {
  type: 'ready';
  id: number;
  agents: { id: string; tunnelPort: number }[];
}

export interface WorkerStates {
  type: 'states';
  id: number;
  /** "vne/vm" → now, and at the cut when asked. Missing VMs are absent. */
  states: Record<string, { now?: VmCounters; cut?: VmCounters }>;
}

export interface WorkerStopped {
  type: 'stopped';
  id: number;
}

export interface WorkerError {
  type: 'error';
  id: number;
  message: string;
}

export interface WorkerStats {
  type: 'stats';
  id: number;
  maxLagMs: number;
  p99LagMs: number;
}

export interface WorkerCommits {
  type: 'commits';
  id: number;
  /**
   * agent id → `at`: wall-clock µs (performance.timeOrigin + now) at which its session stream
   * delivered the SnapshotCommit, before the agent handled it; `sent`: the coordinator's stamp of
   * the instant it wrote that commit to the agent's stream (SnapshotCommit.sent_unix_us, 0 if
   * absent). Agents that got none are absent.
   */
  received: Record<string, { at: number; sent: number }>;
}

export type FromWorker = WorkerReady | WorkerStates | WorkerStopped | WorkerError | WorkerStats | WorkerCommits;
