/**
 * One worker process of scale-bench: runs many Agent instances (each with its own Switch, UDP
 * tunnel on 127.0.0.1 with an ephemeral port, and sim driver) against the coordinator, and
 * answers the parent's questions about its VMs over the IPC channel (scale-ipc.ts).
 *
 * Each agent's session transport stamps the instant a SnapshotCommit arrives on its stream
 * (before the agent handles it): the spread of those instants is the coordinator's commit
 * fan-out skew, which bench:scale reports apart from the cut skew.
 *
 * Started by scale-bench with child_process.fork; never run by hand. When the parent goes away
 * (its IPC channel closes) or on SIGTERM/SIGINT the worker stops its agents and exits.
 */
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { Agent } from '../../agent/agent';
import { grpcSessionTransport, type SessionFactory } from '../../agent/session';
import { SimDriver, type SimVmState } from '../sim/driver';
import { createLogger, type Logger } from '../../proto/core/log';
import type { FromWorker, ToWorker, VmCounters, WorkerInit, WorkerQuery } from './scale-ipc';

const agents = new Map<string, { agent: Agent; driver: SimDriver }>();
let log: Logger | undefined;
let stopping: Promise<void> | undefined;
/** snapshot id → agent id → µs when the agent's stream delivered SnapshotCommit, and the coordinator's send stamp. */
const commitsReceived = new Map<string, Record<string, { at: number; sent: number }>>();
const lag = monitorEventLoopDelay({ resolution: 10 });
lag.enable();

function send(m: FromWorker): void {
  if (process.connected) process.send?.(m);
}

function counters(s: SimVmState): VmCounters {
  return {
    epoch: s.epoch,
    status: s.status,
    sent: s.sent,
    expected: s.expected,
    gaps: s.gaps,
    duplicates: s.duplicates,
    orphans: s.orphans,
    framesSent: s.framesSent,
    framesReceived: s.framesReceived,
    rxQueueDrops: s.rxQueueDrops,
  };
}

/** The production gRPC transport, with the arrival of each SnapshotCommit stamped for `agentId`. */
function stampingSession(agentId: string): SessionFactory {
  return (coordinator, reconnect) => {
    const t = grpcSessionTransport(coordinator, reconnect);
    return {
      open: (events) =>
        t.open({
          message: (msg) => {
            const commit = msg.command?.snapshotCommit;
            if (commit?.snapshotId) {
              const at = Math.round((performance.timeOrigin + performance.now()) * 1000);
              commitsReceived.set(commit.snapshotId, { ...commitsReceived.get(commit.snapshotId), [agentId]: { at, sent: Number(commit.sentUnixUs ?? 0) } });
            }
            events.message(msg);
          },
          end: (err) => events.end(err),
        }),
      close: () => t.close(),
    };
  };
}

async function init(m: WorkerInit): Promise<void> {
  log = createLogger('agent', { level: m.logLevel });
  const started = await Promise.all(
    m.agents.map(async ({ id, tunnelPort }) => {
      const driver = new SimDriver({ tickMs: m.sim.tickMs, passIntervalMs: m.sim.passIntervalMs, frameBytes: m.sim.frameBytes });
      const agent = new Agent({
        id,
        coordinator: m.coordinator,
        tunnel: { address: '127.0.0.1', port: tunnelPort },
        storeConfig: { kind: 'local', dir: m.storeRoot },
        drivers: [driver],
        logger: log,
        hostname: id,
        session: stampingSession(id),
      });
      agents.set(id, { agent, driver });
      const connected = new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`agent ${id} did not connect within 30 s`)), 30_000);
        agent.once('connected', () => {
          clearTimeout(t);
          resolve();
        });
      });
      await agent.start();
      await connected;
      return { id, tunnelPort: agent.boundTunnelPort };
    }),
  );
  send({ type: 'ready', id: m.id, agents: started });
}

function query(m: WorkerQuery): void {
  const states: Record<string, { now?: VmCounters; cut?: VmCounters }> = {};
  for (const q of m.vms) {
    const a = agents.get(q.agent);
    if (!a) continue;
    const key = `${q.vne}/${q.vm}`;
    const now = a.agent.vmState(q.vne, q.vm) as SimVmState | undefined;
    const cut = m.cutEpoch !== undefined ? a.driver.cutState(key, m.cutEpoch) : undefined;
    states[key] = { ...(now ? { now: counters(now) } : {}), ...(cut ? { cut: counters(cut) } : {}) };
  }
  send({ type: 'states', id: m.id, states });
}

function stopAll(): Promise<void> {
  stopping ??= Promise.allSettled([...agents.values()].map((a) => a.agent.stop())).then(() => undefined);
  return stopping;
}

function exitAfterStop(code: number): void {
  const hard = setTimeout(() => process.exit(code), 10_000);
  hard.unref();
  void stopAll().finally(() => process.exit(code));
}

process.on('message', (m: ToWorker) => {
  const fail = (e: unknown) => send({ type: 'error', id: m.id, message: e instanceof Error ? e.message : String(e) });
  try {
    if (m.type === 'init') init(m).catch(fail);
    else if (m.type === 'query') query(m);
    else if (m.type === 'commits') send({ type: 'commits', id: m.id, received: commitsReceived.get(m.snapshotId) ?? {} });
    else if (m.type === 'stats') {
      send({ type: 'stats', id: m.id, maxLagMs: lag.max / 1e6, p99LagMs: lag.percentile(99) / 1e6 });
      lag.reset();
    }
    else if (m.type === 'stop') {
      void stopAll().then(() => {
        send({ type: 'stopped', id: m.id });
        process.disconnect?.();
        setImmediate(() => process.exit(0));
      });
    }
  } catch (e) {
    fail(e);
  }
});
process.on('disconnect', () => exitAfterStop(0));
process.on('SIGTERM', () => exitAfterStop(143));
process.on('SIGINT', () => exitAfterStop(130));
process.on('unhandledRejection', (e) => log?.error({ err: String(e) }, 'unhandled rejection in scale worker'));
