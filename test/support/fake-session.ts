/**
 * A fake SessionTransport for unit tests of the agent: no gRPC. Every dial opens a FakeStream
 * that records what the agent wrote; the test plays the coordinator through it (welcome, refuse,
 * command, end). Pass `transport.factory` as AgentOptions.session or CoordinatorSession's
 * transport.
 */
import type { AgentMessage } from '../../proto/gen/vnsnap/v1/AgentMessage';
import type { Command__Output } from '../../proto/gen/vnsnap/v1/Command';
import type { Result } from '../../proto/gen/vnsnap/v1/Result';
import type { ReconnectOptions, SessionFactory, SessionStream, SessionTransport, StreamEvents } from '../../agent/session';

export class FakeStream implements SessionStream {
  readonly written: AgentMessage[] = [];
  closed = false;
  private readonly waiters: { commandId: number; resolve: (r: Result) => void }[] = [];

  constructor(private readonly events: StreamEvents) {}

  write(m: AgentMessage): void {
    if (this.closed) throw new Error('write on a closed fake stream');
    this.written.push(m);
    const r = m.result;
    if (!r) return;
    for (const w of this.waiters.filter((x) => x.commandId === r.commandId)) w.resolve(r);
  }

  /** The Result of a command: at once if written already, else when it is. */
  result(commandId: number): Promise<Result> {
    const done = this.results.find((r) => r.commandId === commandId);
    if (done) return Promise.resolve(done);
    return new Promise((resolve) => this.waiters.push({ commandId, resolve }));
  }

  /** Send a command and await its Result. */
  run(cmd: Command__Output): Promise<Result> {
    this.command(cmd);
    return this.result(cmd.id);
  }

  close(): void {
    this.closed = true;
  }

  // ── the coordinator's side ──

  welcome(heartbeatIntervalMs: number, deadAfterMs = 3000): void {
    this.events.message({ msg: 'welcome', welcome: { heartbeatIntervalMs, deadAfterMs, coordinatorId: 'fake' } });
  }

  refuse(reason: string): void {
    this.events.message({ msg: 'refused', refused: reason });
  }

  command(cmd: Command__Output): void {
    this.events.message({ msg: 'command', command: cmd });
  }

  /** The stream ends from the coordinator's side (or the network). */
  end(err?: Error): void {
    this.events.end(err);
  }

  get heartbeats(): { seq: number; unixMs: number }[] {
    const out: { seq: number; unixMs: number }[] = [];
    for (const m of this.written) if (m.heartbeat) out.push({ seq: Number(m.heartbeat.seq), unixMs: Number(m.heartbeat.unixMs) });
    return out;
  }

  get results(): Result[] {
    return this.written.flatMap((m) => (m.result ? [m.result] : []));
  }
}

export class FakeSessionTransport implements SessionTransport {
  readonly streams: FakeStream[] = [];
  closed = false;
  /** What the factory was given, per build. */
  readonly builds: { coordinator: string; reconnect: ReconnectOptions }[] = [];

  readonly factory: SessionFactory = (coordinator, reconnect) => {
    this.builds.push({ coordinator, reconnect });
    this.closed = false;
    return this;
  };

  open(events: StreamEvents): FakeStream {
    const s = new FakeStream(events);
    this.streams.push(s);
    return s;
  }

  close(): void {
    this.closed = true;
  }

  /** The stream of the latest dial. */
  get last(): FakeStream {
    const s = this.streams[this.streams.length - 1];
    if (!s) throw new Error('no stream was opened');
    return s;
  }
}
