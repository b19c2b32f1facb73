/**
 * The server side of AgentService.Session: one live session per agent id.
 *
 * Session lifecycle (docs/control-plane.md, "Sessions"):
 *   - the first message must be Register (within dead_after_ms), else the stream is ended;
 *   - with TLS the agent's certificate is its identity: it may register only as the certificate's
 *     CN or one of its DNS SANs; any other id is answered `refused` and the stream ends with
 *     PERMISSION_DENIED naming both ids. A Register for an id that has a live session, made with
 *     a certificate for that id, replaces the old session at once: only the holder of the key
 *     can make it, and the old one is a restarted agent's stale session (its in-flight commands
 *     fail with ERR_AGENT_DISCONNECTED, `left` then `joined` fire). Over plaintext (loopback
 *     only) there is no proof of identity and a second session for a live id is refused;
 *   - otherwise Welcome, then — in the same turn, before any other command — every pending
 *     SnapshotAbort the catalog holds for that agent (acknowledged ones are deleted), then the
 *     `joined` event;
 *   - any message from the agent proves it alive; none for dead_after_ms, or the stream ending,
 *     makes it DISCONNECTED: every command in flight to it fails with ERR_AGENT_DISCONNECTED and
 *     the `left` event fires.
 *   - heartbeats update the agent's last-seen time in the catalog in one transaction per
 *     heartbeat interval for all agents (not one fsynced write per heartbeat: with 100 agents
 *     those took the coordinator's whole CPU); a disconnect writes it at once.
 *
 * Commands: `send` numbers each command (one counter for the coordinator), writes it to the
 * stream at once and keeps {resolve, reject, onProgress} by id until its Result arrives.
 * Progress for an unknown or finished command is ignored; so is a Result nobody waits for.
 *
 * Clock offsets: every command is stamped with the instant it is written (Command.sent_unix_us),
 * and a Result that carries the agent's receipt and send instants gives one NTP-style sample of
 * that agent's clock offset (clock-offset.ts), kept per session: clockOffset() is what the
 * snapshot's cut instant is converted with (cut-instant.ts).
 */
import { EventEmitter } from 'node:events';
import { status, type ServerDuplexStream } from '@grpc/grpc-js';
import { VnsnapError } from '../proto/core/errors';
import { toServiceError } from '../proto/core/grpc-status';
import { peerIdentity, type PeerIdentity } from '../proto/core/tls';
import type { AgentMessage__Output } from '../proto/gen/vnsnap/v1/AgentMessage';
import type { CoordinatorMessage } from '../proto/gen/vnsnap/v1/CoordinatorMessage';
import type { Register__Output } from '../proto/gen/vnsnap/v1/Register';
import type { Result__Output } from '../proto/gen/vnsnap/v1/Result';
import type { RunningVm__Output } from '../proto/gen/vnsnap/v1/RunningVm';
import type { VmProgress__Output } from '../proto/gen/vnsnap/v1/VmProgress';
import type { Logger } from '../proto/core/log';
import type { Startable } from '../proto/core/lifecycle';
import { commandName, type AgentLink, type CommandBody, type SendOptions } from './agent-link';
import type { Catalog } from './catalog';
import { nowUs, systemClock, type Clock, type TimerHandle } from '../proto/core/clock';
import { ClockOffset, offsetSample, type OffsetSample } from './clock-offset';

export type SessionCall = ServerDuplexStream<AgentMessage__Output, CoordinatorMessage>;

export interface AgentRegistryOptions {
  catalog: Catalog;
  log: Logger;
  coordinatorId: string;
  clock?: Clock;
  heartbeatIntervalMs?: number;
  deadAfterMs?: number;
  /** Default per-command timeout when the caller gives none (0: none). */
  commandTimeoutMs?: number;
  /** Wall-clock µs for the commands' stamps and the offsets' samples (default: clock.ts nowUs). */
  nowUs?: () => number;
}

interface InFlight {
  agentId: string;
  name: string;
  resolve: (r: Result__Output) => void;
  reject: (e: VnsnapError) => void;
  onProgress?: (p: VmProgress__Output) => void;
  timer?: TimerHandle;
  detach?: () => void;
  /** The coordinator's instant of writing the command (µs). */
  sentUnixUs: number;
}

class Session {
  deadTimer?: TimerHandle;
  closed = false;
  readonly inFlight = new Set<number>();
  /** The agent's clock offset, from this session's round trips. */
  readonly offset = new ClockOffset();
  constructor(
    readonly agentId: string,
    readonly call: SessionCall,
    readonly register: Register__Output,
    readonly connectedUnixMs: number,
  ) {}
}

export interface AgentRegistryEvents {
  /** endpointChanged: its tunnel endpoint or data path port differs from the one it last registered (or it is new). */
  joined: [agentId: string, running: RunningVm__Output[], endpointChanged: boolean];
  left: [agentId: string, reason: string];
}

export class AgentRegistry extends EventEmitter<AgentRegistryEvents> implements AgentLink, Startable {
  readonly heartbeatIntervalMs: number;
  readonly deadAfterMs: number;
  private readonly commandTimeoutMs: number;
  private readonly clock: Clock;
  private readonly nowUs: () => number;
  private readonly sessions = new Map<string, Session>();
  /** Each agent's in-kernel data path port as it last registered it with this coordinator (not in the catalog). */
  private readonly dataPathPorts = new Map<string, number>();
  private readonly pending = new Map<number, InFlight>();
  private readonly unregistered = new Set<SessionCall>();
  private nextCommandId = 1;
  private stopped = false;
  /** Last-seen times not yet written to the catalog, and the timer that writes them. */
  private readonly seen = new Map<string, number>();
  private seenTimer?: TimerHandle;

  constructor(private readonly opts: AgentRegistryOptions) {
    super();
    this.clock = opts.clock ?? systemClock;
    this.nowUs = opts.nowUs ?? nowUs;
    this.heartbeatIntervalMs = opts.heartbeatIntervalMs ?? 1000;
    this.deadAfterMs = opts.deadAfterMs ?? 3000;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 120_000;
  }

  start(): void {
    this.stopped = false;
  }

  /** End every session (their commands fail with ERR_AGENT_DISCONNECTED). */
  stop(): void {
    this.stopped = true;
    this.flushSeen();
    for (const s of [...this.sessions.values()]) this.drop(s, 'coordinator stopping', true);
    for (const c of [...this.unregistered]) c.end();
    this.unregistered.clear();
  }

  isConnected(agentId: string): boolean {
    return this.sessions.has(agentId);
  }

  connectedIds(): string[] {
    return [...this.sessions.keys()].sort();
  }

  /** The agent's tunnel endpoint, with its data path port when it registered one with this coordinator. */
  endpoint(agentId: string): { address: string; port: number; dataPathPort?: number } | undefined {
    const s = this.sessions.get(agentId);
    const dp = this.dataPathPorts.get(agentId);
    const dataPath = dp ? { dataPathPort: dp } : {};
    if (s) return { address: s.register.tunnelAddress, port: s.register.tunnelPort, ...dataPath };
    const a = this.opts.catalog.getAgent(agentId);
    return a ? { address: a.tunnelAddress, port: a.tunnelPort, ...dataPath } : undefined;
  }

  /** The Register of the agent's current session (undefined when not connected). */
  registration(agentId: string): Register__Output | undefined {
    return this.sessions.get(agentId)?.register;
  }

  /**
   * The agent's clock offset (its clock minus the coordinator's, µs) and the round trip it was
   * taken from, estimated from its current session's command round trips; undefined before one
   * (a new session, an older agent).
   */
  clockOffset(agentId: string): OffsetSample | undefined {
    return this.sessions.get(agentId)?.offset.estimate();
  }

  /** VMs the agent reported running when it registered. */
  reportedRunning(agentId: string): RunningVm__Output[] {
    return this.sessions.get(agentId)?.register.running ?? [];
  }

  /** The gRPC handler for AgentService.Session. */
  attach(call: SessionCall): void {
    const log = this.opts.log;
    if (this.stopped) {
      call.emit('error', { code: status.UNAVAILABLE, details: 'coordinator is stopping' });
      return;
    }
    let session: Session | undefined;
    this.unregistered.add(call);
    let registerTimer: TimerHandle | undefined = this.clock.setTimeout(() => {
      registerTimer = undefined;
      if (session) return;
      this.unregistered.delete(call);
      log.warn({ peer: safePeer(call) }, 'agent session sent no Register in time; closing it');
      call.emit('error', { code: status.DEADLINE_EXCEEDED, details: `no Register within ${this.deadAfterMs} ms` });
    }, this.deadAfterMs);

    const onGone = (reason: string) => {
      this.clock.clearTimeout(registerTimer);
      this.unregistered.delete(call);
      if (session) this.drop(session, reason, false);
    };
    call.on('data', (m: AgentMessage__Output) => {
      if (session) {
        if (!session.closed) this.onMessage(session, m);
        return;
      }
      if (m.msg !== 'register' || !m.register) {
        this.unregistered.delete(call);
        this.clock.clearTimeout(registerTimer);
        call.write({ refused: 'the first message of a session must be Register' });
        call.end();
        return;
      }
      this.clock.clearTimeout(registerTimer);
      registerTimer = undefined;
      this.unregistered.delete(call);
      session = this.onRegister(call, m.register);
    });
    call.on('end', () => onGone('session ended by the agent'));
    call.on('cancelled', () => onGone('session cancelled'));
    call.on('error', (e: Error) => onGone(`session error: ${e.message}`));
    call.on('close', () => onGone('session closed'));
  }

  private onRegister(call: SessionCall, reg: Register__Output): Session | undefined {
    const log = this.opts.log;
    const id = reg.agentId.trim();
    if (!id) {
      call.write({ refused: 'Register.agent_id is empty' });
      call.end();
      return undefined;
    }
    const peer = peerOf(call);
    if (peer && peer.commonName !== id && !peer.dnsNames.includes(id)) {
      const msg = `the certificate of agent "${peer.commonName}" cannot register as agent "${id}"`;
      log.warn({ agent: id, certificate: peer.commonName }, 'agent registered with another id than its certificate; refused');
      call.write({ refused: msg });
      call.emit('error', toServiceError(new VnsnapError('ERR_PERMISSION_DENIED', msg)));
      return undefined;
    }
    const old = this.sessions.get(id);
    if (old && peer) {
      log.warn({ agent: id }, 'agent registered again with its certificate; replacing its stale session');
      this.drop(old, `replaced by a new session of agent ${id}`, true);
    } else if (old) {
      log.warn({ agent: id }, 'agent id already has a live session; refusing the new one');
      call.write({ refused: `agent id "${id}" already has a live session` });
      call.end();
      return undefined;
    }
    const now = this.clock.now();
    const before = this.opts.catalog.getAgent(id);
    // a data path port its peers were not told (unknown counts as 0) changes the endpoint too
    const dataPathChanged = (this.dataPathPorts.get(id) ?? 0) !== (reg.dataPathPort ?? 0);
    this.dataPathPorts.set(id, reg.dataPathPort ?? 0);
    const endpointChanged = !before || before.tunnelAddress !== reg.tunnelAddress || before.tunnelPort !== reg.tunnelPort || dataPathChanged;
    const s = new Session(id, call, reg, now);
    this.sessions.set(id, s);
    this.opts.catalog.upsertAgent({
      id,
      hostname: reg.hostname,
      version: reg.version,
      tunnelAddress: reg.tunnelAddress,
      tunnelPort: reg.tunnelPort,
      drivers: reg.drivers,
      connectedUnixMs: now,
      lastSeenUnixMs: now,
    });
    call.write({ welcome: { heartbeatIntervalMs: this.heartbeatIntervalMs, deadAfterMs: this.deadAfterMs, coordinatorId: this.opts.coordinatorId } });
    this.armDeadTimer(s);
    log.info({ agent: id, hostname: reg.hostname, tunnel: `${reg.tunnelAddress}:${reg.tunnelPort}`, running: reg.running.length }, 'agent registered');
    this.deliverPendingAborts(id);
    this.emit('joined', id, reg.running, endpointChanged);
    return s;
  }

  private deliverPendingAborts(agentId: string): void {
    for (const p of this.opts.catalog.pendingAborts(agentId)) {
      this.send(agentId, { snapshotAbort: { snapshotId: p.snapshotId, vne: p.vne, epoch: p.epoch, storePrefix: p.storePrefix } }).then(
        (r) => {
          if (r.ok) this.opts.catalog.removePendingAbort(p.snapshotId, agentId);
          else this.opts.log.warn({ agent: agentId, snapshot: p.snapshotId, error: r.errorMessage }, 'pending SnapshotAbort failed on the agent; kept for its next session');
        },
        (e: Error) => this.opts.log.warn({ agent: agentId, snapshot: p.snapshotId, error: e.message }, 'pending SnapshotAbort not delivered; kept'),
      );
    }
  }

  private armDeadTimer(s: Session): void {
    this.clock.clearTimeout(s.deadTimer);
    s.deadTimer = this.clock.setTimeout(() => {
      this.opts.log.warn({ agent: s.agentId, deadAfterMs: this.deadAfterMs }, 'agent missed its heartbeats; marking it disconnected');
      this.drop(s, `no heartbeat for ${this.deadAfterMs} ms`, true);
    }, this.deadAfterMs);
  }

  private onMessage(s: Session, m: AgentMessage__Output): void {
    this.armDeadTimer(s);
    switch (m.msg) {
      case 'heartbeat':
        this.seen.set(s.agentId, this.clock.now());
        this.seenTimer ??= this.clock.setTimeout(() => this.flushSeen(), this.heartbeatIntervalMs);
        return;
      case 'progress': {
        const p = m.progress;
        const f = p ? this.pending.get(p.commandId) : undefined;
        if (p?.vm && f && f.agentId === s.agentId) f.onProgress?.({ ...p.vm, host: p.vm.host || s.agentId });
        return;
      }
      case 'result': {
        const r = m.result;
        const f = r ? this.pending.get(r.commandId) : undefined;
        if (!r || !f || f.agentId !== s.agentId) return;
        s.offset.add(offsetSample(f.sentUnixUs, Number(r.commandReceivedUnixUs ?? 0), Number(r.sentUnixUs ?? 0), this.nowUs()));
        this.settle(r.commandId);
        f.resolve(r);
        return;
      }
      case 'register':
        this.opts.log.warn({ agent: s.agentId }, 'agent sent Register twice; ignored');
        return;
      default:
        return;
    }
  }

  /** Write the pending last-seen times, all in one transaction. */
  private flushSeen(): void {
    this.clock.clearTimeout(this.seenTimer);
    this.seenTimer = undefined;
    if (this.seen.size === 0) return;
    const seen = [...this.seen];
    this.seen.clear();
    this.opts.catalog.tx(() => {
      for (const [id, at] of seen) this.opts.catalog.touchAgent(id, at);
    });
  }

  private settle(id: number): void {
    const f = this.pending.get(id);
    if (!f) return;
    this.pending.delete(id);
    this.clock.clearTimeout(f.timer);
    f.detach?.();
    this.sessions.get(f.agentId)?.inFlight.delete(id);
  }

  private drop(s: Session, reason: string, endStream: boolean): void {
    if (s.closed) return;
    s.closed = true;
    this.clock.clearTimeout(s.deadTimer);
    if (this.sessions.get(s.agentId) === s) this.sessions.delete(s.agentId);
    const now = this.clock.now();
    this.seen.delete(s.agentId);
    this.opts.catalog.touchAgent(s.agentId, now);
    for (const id of [...s.inFlight]) {
      const f = this.pending.get(id);
      this.settle(id);
      f?.reject(new VnsnapError('ERR_AGENT_DISCONNECTED', `agent ${s.agentId} disconnected during ${f.name} (${reason})`));
    }
    if (endStream) {
      try {
        s.call.emit('error', { code: status.UNAVAILABLE, details: reason });
      } catch {
        // the stream may already be gone
      }
    }
    this.opts.log.info({ agent: s.agentId, reason }, 'agent disconnected');
    this.emit('left', s.agentId, reason);
  }

  send(agentId: string, body: CommandBody, opts: SendOptions = {}): Promise<Result__Output> {
    const name = commandName(body);
    const s = this.sessions.get(agentId);
    if (!s) return Promise.reject(new VnsnapError('ERR_AGENT_DISCONNECTED', `agent ${agentId} is not connected (${name} not sent)`));
    if (opts.signal?.aborted) return Promise.reject(new VnsnapError('ERR_CANCELLED', `${name} to agent ${agentId} cancelled`));
    const id = this.nextCommandId++;
    return new Promise<Result__Output>((resolve, reject) => {
      const sentUnixUs = this.nowUs();
      const f: InFlight = { agentId, name, resolve, reject, onProgress: opts.onProgress, sentUnixUs };
      const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
      if (timeoutMs > 0) {
        f.timer = this.clock.setTimeout(() => {
          this.settle(id);
          reject(new VnsnapError('ERR_TIMEOUT', `agent ${agentId}: ${name} got no result within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      if (opts.signal) {
        const signal = opts.signal;
        const onAbort = () => {
          this.settle(id);
          reject(new VnsnapError('ERR_CANCELLED', `${name} to agent ${agentId} cancelled`));
        };
        signal.addEventListener('abort', onAbort, { once: true });
        f.detach = () => signal.removeEventListener('abort', onAbort);
      }
      this.pending.set(id, f);
      s.inFlight.add(id);
      // Every command carries the instant it was written (the offset's sample); a commit also in
      // its own field: the agent's PHASE_COMMIT (the fan-out).
      const stamped = body.snapshotCommit ? { ...body, snapshotCommit: { ...body.snapshotCommit, sentUnixUs } } : body;
      s.call.write({ command: { id, sentUnixUs, ...stamped } });
    });
  }
}

/** The verified certificate identity of a session (undefined over plaintext). */
function peerOf(call: SessionCall): PeerIdentity | undefined {
  return typeof call.getAuthContext === 'function' ? peerIdentity(call) : undefined;
}

function safePeer(call: SessionCall): string {
  try {
    return call.getPeer();
  } catch {
    return 'unknown';
  }
}
