/**
 * The agent's session with the coordinator (docs/control-plane.md): dial, Register, Welcome,
 * Heartbeats at the Welcome's interval, reconnect with backoff, and the coordinator's
 * dead_after_ms the rest of the agent uses to abort snapshots orphaned by a lost session.
 *
 * Two layers, so the agent can be driven without gRPC:
 *  - SessionTransport: opens one bidirectional stream of AgentService.Session per attempt
 *    (grpcSessionTransport in production; tests give a fake that records what was written and
 *    pushes CoordinatorMessages).
 *  - CoordinatorSession: the protocol over it, on an injected Clock (heartbeat and backoff timers
 *    are testable on a manual clock).
 *
 * Guarantees:
 *  - One stream at a time. A lost stream (error, end, refusal) is retried after a backoff that
 *    starts at reconnect.initialMs, doubles up to reconnect.maxMs, and resets on a Welcome.
 *  - Every Command is handed over with the SessionLink of the stream it came in on: what is sent
 *    on a link whose stream is gone is dropped (the coordinator failed that command already).
 *  - `down` is called once per stream that ended while current (not on stop()), with whether the
 *    stream had been welcomed.
 */
import * as grpc from '@grpc/grpc-js';
import type { Clock, TimerHandle } from '../proto/core/clock';
import { describeError, VnsnapError } from '../proto/core/errors';
import { loadVnsnap, SESSION_KEEPALIVE } from '../proto/core/grpc';
import type { Logger } from '../proto/core/log';
import type { AgentMessage } from '../proto/gen/vnsnap/v1/AgentMessage';
import type { AgentServiceClient } from '../proto/gen/vnsnap/v1/AgentService';
import type { Command__Output } from '../proto/gen/vnsnap/v1/Command';
import type { CoordinatorMessage__Output } from '../proto/gen/vnsnap/v1/CoordinatorMessage';
import type { Register } from '../proto/gen/vnsnap/v1/Register';
import type { Welcome__Output } from '../proto/gen/vnsnap/v1/Welcome';
import type { AgentMetrics } from './metrics';

/** One open stream of AgentService.Session, as the transport hands it out. */
export interface SessionStream {
  write(m: AgentMessage): void;
  /** End and cancel the stream; the transport may still report `end` afterwards (ignored). */
  close(): void;
}

/** What a stream reports: each coordinator message, and its end (once or more; the first counts). */
export interface StreamEvents {
  message(m: CoordinatorMessage__Output): void;
  end(err?: Error): void;
}

/** Opens session streams to one coordinator. */
export interface SessionTransport {
  open(events: StreamEvents): SessionStream;
  /** Release the transport (the gRPC channel); no stream is opened afterwards. */
  close(): void;
}

export interface ReconnectOptions {
  initialMs: number;
  maxMs: number;
}

/** Builds the transport when the agent starts (default: grpcSessionTransport). */
export type SessionFactory = (coordinator: string, reconnect: ReconnectOptions) => SessionTransport;

/**
 * The production transport: a grpc-js AgentService client, one Session call per stream, over
 * `credentials` (mutual TLS, proto/core/tls.ts; plaintext when none are given).
 */
export const grpcSessionTransportWith =
  (credentials?: grpc.ChannelCredentials): SessionFactory =>
  (coordinator, reconnect) =>
    openGrpcTransport(coordinator, reconnect, credentials ?? grpc.credentials.createInsecure());

/** The plaintext transport (a loopback coordinator, by configuration only). */
export const grpcSessionTransport: SessionFactory = grpcSessionTransportWith();

function openGrpcTransport(coordinator: string, reconnect: ReconnectOptions, credentials: grpc.ChannelCredentials): SessionTransport {
  const pkg = loadVnsnap();
  const client = new pkg.vnsnap.v1.AgentService(coordinator, credentials, {
    'grpc.initial_reconnect_backoff_ms': reconnect.initialMs,
    'grpc.max_reconnect_backoff_ms': reconnect.maxMs,
    ...SESSION_KEEPALIVE,
  }) as unknown as AgentServiceClient;
  return {
    open(events) {
      const call = client.Session();
      call.on('data', (m: CoordinatorMessage__Output) => events.message(m));
      call.on('error', (e: Error) => events.end(e));
      call.on('end', () => events.end());
      call.on('close', () => events.end());
      return {
        write: (m) => call.write(m),
        close() {
          try {
            call.end();
          } catch {
            /* already closed */
          }
          call.cancel();
        },
      };
    },
    close: () => client.close(),
  };
}

/** The stream a command came in on: its Progress and Result go back on it, or nowhere. */
export interface SessionLink {
  /** Send on this stream; false (and nothing sent) once the stream is no longer the current one. */
  send(m: AgentMessage): boolean;
}

/** What the session asks of, and tells, the rest of the agent. */
export interface SessionHandlers {
  /** The Register message for a new stream (built at each attempt: it lists the VMs running now). */
  register(): Register;
  command(link: SessionLink, cmd: Command__Output): void;
  up(welcome: Welcome__Output): void;
  /** A current stream ended (not by stop()); `wasUp` if it had been welcomed. */
  down(wasUp: boolean, err?: Error): void;
  refused(reason: string): void;
}

export interface CoordinatorSessionOptions {
  coordinator: string;
  transport: SessionFactory;
  clock: Clock;
  log: Logger;
  metrics: Pick<AgentMetrics, 'connected' | 'reconnects'>;
  reconnect?: Partial<ReconnectOptions>;
  handlers: SessionHandlers;
}

interface Stream {
  io: SessionStream;
  open: boolean;
  welcomed: boolean;
  heartbeat?: TimerHandle;
  seq: number;
}

/** The stream of a record whose transport.open() has not returned yet. */
const NOT_OPEN: SessionStream = {
  write: () => {
    throw new VnsnapError('ERR_STATE', 'session stream not open yet');
  },
  close: () => undefined,
};

const DEFAULT_DEAD_AFTER_MS = 3000;
const DEFAULT_HEARTBEAT_MS = 1000;

export class CoordinatorSession {
  private transport: SessionTransport | undefined;
  private current: Stream | undefined;
  private reconnectTimer: TimerHandle | undefined;
  private readonly reconnect: ReconnectOptions;
  private backoffMs: number;
  private attempts = 0;
  private stopping = false;
  private deadAfter = DEFAULT_DEAD_AFTER_MS;
  /** The last failed attempt's error, so a new reason (a refused certificate) is logged once at warn. */
  private lastFailure = '';

  constructor(private readonly o: CoordinatorSessionOptions) {
    this.reconnect = { initialMs: o.reconnect?.initialMs ?? 500, maxMs: o.reconnect?.maxMs ?? 5000 };
    this.backoffMs = this.reconnect.initialMs;
  }

  /** True while a stream is open and welcomed. */
  get connected(): boolean {
    return this.current?.welcomed === true;
  }

  /** The coordinator's dead_after_ms from the last Welcome (default 3 s). */
  get deadAfterMs(): number {
    return this.deadAfter;
  }

  start(): void {
    if (this.transport) return;
    this.stopping = false;
    this.transport = this.o.transport(this.o.coordinator, this.reconnect);
    this.dial();
  }

  /** Close the stream and the transport; no reconnect, no `down`. */
  stop(): void {
    this.stopping = true;
    this.o.clock.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const s = this.current;
    this.current = undefined;
    if (s) this.close(s);
    this.transport?.close();
    this.transport = undefined;
  }

  private dial(): void {
    if (this.stopping || !this.transport) return;
    if (this.attempts++ > 0) this.o.metrics.reconnects.inc();
    // The stream's events name the record they belong to (a late event of an old stream is ignored).
    const s: Stream = { io: NOT_OPEN, open: true, welcomed: false, seq: 0 };
    this.current = s;
    s.io = this.transport.open({ message: (m) => this.onMessage(s, m), end: (e) => this.onEnd(s, e) });
    this.write(s, { register: this.o.handlers.register() });
  }

  private onMessage(s: Stream, m: CoordinatorMessage__Output): void {
    if (s !== this.current || !s.open) return;
    if (m.msg === 'welcome' && m.welcome) {
      s.welcomed = true;
      this.backoffMs = this.reconnect.initialMs;
      this.deadAfter = m.welcome.deadAfterMs || DEFAULT_DEAD_AFTER_MS;
      const every = m.welcome.heartbeatIntervalMs || DEFAULT_HEARTBEAT_MS;
      const beat = (): void => {
        s.heartbeat = this.o.clock.setTimeout(beat, every);
        this.write(s, { heartbeat: { seq: ++s.seq, unixMs: this.o.clock.now() } });
      };
      s.heartbeat = this.o.clock.setTimeout(beat, every);
      this.o.metrics.connected.set(1);
      this.o.log.info({ coordinator: m.welcome.coordinatorId, heartbeatMs: every }, 'session up');
      this.o.handlers.up(m.welcome);
    } else if (m.msg === 'refused') {
      this.o.log.warn({ reason: m.refused }, 'coordinator refused the session');
      this.o.handlers.refused(m.refused ?? '');
      this.onEnd(s, new VnsnapError('ERR_UNAVAILABLE', `refused: ${m.refused}`));
    } else if (m.msg === 'command' && m.command) {
      this.o.handlers.command({ send: (msg) => this.write(s, msg) }, m.command);
    }
  }

  private close(s: Stream): void {
    if (!s.open) return;
    s.open = false;
    this.o.clock.clearTimeout(s.heartbeat);
    s.io.close();
  }

  private onEnd(s: Stream, err?: Error): void {
    if (!s.open) return;
    const wasUp = s.welcomed;
    this.close(s);
    if (this.current !== s) return;
    this.current = undefined;
    this.o.metrics.connected.set(0);
    const why = err ? describeError(err) : 'stream ended';
    // grpc-js stamps its connection errors with the time: compare without it.
    const reason = wasUp ? '' : why.replace(/\s*\(\d{4}-\d\d-\d\dT[^)]*\)/g, '');
    if (wasUp) this.o.log.warn({ err: why }, 'session lost');
    else if (reason !== this.lastFailure) this.o.log.warn({ err: why }, 'session attempt failed (retrying; logged again when the reason changes)');
    else this.o.log.debug({ err: why }, 'session attempt failed');
    this.lastFailure = reason;
    this.o.handlers.down(wasUp, err);
    if (this.stopping) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, this.reconnect.maxMs);
    this.reconnectTimer = this.o.clock.setTimeout(() => {
      this.reconnectTimer = undefined;
      this.dial();
    }, delay);
  }

  private write(s: Stream, msg: AgentMessage): boolean {
    if (!s.open || s !== this.current) return false;
    try {
      s.io.write(msg);
      return true;
    } catch (e) {
      this.o.log.warn({ err: describeError(e) }, 'write to session failed');
      return false;
    }
  }
}
