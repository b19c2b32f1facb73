/**
 * A small QMP client (QEMU Machine Protocol, JSON over a unix socket) for the QEMU driver.
 *
 *   const q = await QmpClient.connect(path, { timeoutMs: 10_000, isAlive: () => proc.exitCode === null });
 *   await q.execute('stop');
 *   const r = await q.execute<{ status: string }>('query-status');
 *   q.on('event', (e) => ...)              // every event: { event, data, timestamp }
 *   await q.waitEvent('MIGRATION', (d) => d.status === 'completed', 30_000)
 *
 * - connect() retries while the socket does not exist yet (QEMU creates it while starting), reads
 *   the greeting and negotiates capabilities (`qmp_capabilities`).
 * - Every command carries an id; replies are matched by id, so commands may overlap.
 * - Every command has a timeout (ERR_TIMEOUT); a QMP error reply is ERR_DRIVER with QEMU's
 *   class and description; a closed connection (QEMU died) rejects every pending command and
 *   every later one with ERR_DRIVER "QMP connection to <name> closed".
 * - Commands are written the moment execute() is called: several execute() calls without an
 *   await between them are pipelined on the socket (QEMU runs them in order, one reply each).
 *   prepare() serialises a command ahead (outside a pause); its send() only adds the id.
 * - Every reply is also emitted as a 'reply' QmpRoundTrip (command, wall-clock send and receive
 *   instants): the cut traces (cut-qmp-trace.ts) are made from these and from the events'
 *   QEMU timestamps and receive instants.
 */
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { nowUs } from '../../../proto/core/clock';
import { VnsnapError } from '../../../proto/core/errors';

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** Wall-clock time QEMU stamped on the event, in microseconds. */
  timestampUs: number;
  /** performance.now() when the event was parsed here. */
  receivedAt: number;
  /** Wall-clock microseconds when the event was parsed here. */
  receivedUnixUs: number;
}

/** One command's round trip on this connection (emitted as 'reply', error replies included). */
export interface QmpRoundTrip {
  cmd: string;
  /** Wall-clock microseconds: written to the socket, reply parsed. */
  sentUnixUs: number;
  replyUnixUs: number;
  ok: boolean;
}

/** A command serialised ahead: send() writes it (with a fresh id) and resolves with its return. */
export interface PreparedCommand<T> {
  readonly cmd: string;
  send(timeoutMs?: number): Promise<T>;
}

interface Pending {
  cmd: string;
  sentUnixUs: number;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export interface QmpConnectOptions {
  /** Give up connecting after this long (default 10 s). */
  timeoutMs?: number;
  /** Called between attempts: return false to stop retrying (e.g. the QEMU process exited). */
  isAlive?: () => boolean;
  /** A name for messages (default: the socket path). */
  name?: string;
  /** Default per-command timeout (default 30 s). */
  commandTimeoutMs?: number;
}

export class QmpClient extends EventEmitter {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closedWith: Error | undefined;
  readonly commandTimeoutMs: number;

  private constructor(
    private readonly sock: net.Socket,
    readonly name: string,
    commandTimeoutMs: number,
  ) {
    super();
    this.commandTimeoutMs = commandTimeoutMs;
  }

  /** Connect (retrying until the socket appears), read the greeting, negotiate capabilities. */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const name = opts.name ?? path;
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    let lastErr: unknown;
    for (;;) {
      if (opts.isAlive && !opts.isAlive()) throw new VnsnapError('ERR_DRIVER', `QMP ${name}: QEMU exited before its monitor accepted a connection`, { cause: lastErr });
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(path);
          s.once('connect', () => {
            s.removeAllListeners('error');
            resolve(s);
          });
          s.once('error', (e) => {
            s.destroy();
            reject(e);
          });
        });
        const c = new QmpClient(sock, name, opts.commandTimeoutMs ?? 30_000);
        await c.handshake(Math.max(1000, deadline - Date.now()));
        return c;
      } catch (e) {
        lastErr = e;
        if (e instanceof VnsnapError) throw e;
        if (Date.now() > deadline) throw new VnsnapError('ERR_TIMEOUT', `QMP ${name}: no monitor after ${opts.timeoutMs ?? 10_000} ms (${(e as Error).message})`, { cause: e });
        await sleep(20);
      }
    }
  }

  private handshake(timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.sock.destroy();
        reject(new VnsnapError('ERR_TIMEOUT', `QMP ${this.name}: no greeting within ${timeoutMs} ms`));
      }, timeoutMs);
      let greeted = false;
      this.sock.setEncoding('utf8');
      this.sock.on('data', (d: string) => {
        this.buf += d;
        let i: number;
        while ((i = this.buf.indexOf('\n')) >= 0) {
          const line = this.buf.slice(0, i).trim();
          this.buf = this.buf.slice(i + 1);
          if (line === '') continue;
          let msg: Record<string, unknown>;
          try {
            msg = JSON.parse(line) as Record<string, unknown>;
          } catch {
            continue;
          }
          if (!greeted && 'QMP' in msg) {
            greeted = true;
            this.execute('qmp_capabilities', undefined, timeoutMs).then(
              () => {
                clearTimeout(timer);
                resolve();
              },
              (e: Error) => {
                clearTimeout(timer);
                this.sock.destroy();
                reject(e);
              },
            );
            continue;
          }
          this.dispatch(msg);
        }
      });
      this.sock.on('error', (e) => this.fail(new VnsnapError('ERR_DRIVER', `QMP connection to ${this.name} failed: ${e.message}`, { cause: e })));
      this.sock.on('close', () => {
        this.fail(new VnsnapError('ERR_DRIVER', `QMP connection to ${this.name} closed (QEMU exited?)`));
        clearTimeout(timer);
        if (!greeted) reject(new VnsnapError('ERR_DRIVER', `QMP ${this.name}: connection closed before the greeting`));
      });
    });
  }

  private dispatch(msg: Record<string, unknown>): void {
    if (typeof msg.event === 'string') {
      const ts = msg.timestamp as { seconds?: number; microseconds?: number } | undefined;
      const ev: QmpEvent = {
        event: msg.event,
        data: (msg.data as Record<string, unknown> | undefined) ?? {},
        timestampUs: ts ? (ts.seconds ?? 0) * 1e6 + (ts.microseconds ?? 0) : 0,
        receivedAt: performance.now(),
        receivedUnixUs: nowUs(),
      };
      this.emit('event', ev);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    if (id === undefined) return;
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (this.listenerCount('reply') > 0) this.emit('reply', { cmd: p.cmd, sentUnixUs: p.sentUnixUs, replyUnixUs: nowUs(), ok: !('error' in msg) } satisfies QmpRoundTrip);
    if ('error' in msg) {
      const err = msg.error as { class?: string; desc?: string };
      p.reject(new VnsnapError('ERR_DRIVER', `QMP ${p.cmd} on ${this.name}: ${err.class ?? 'Error'}: ${err.desc ?? 'unknown error'}`));
    } else p.resolve(msg.return);
  }

  private fail(e: Error): void {
    if (this.closedWith) return;
    this.closedWith = e;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new VnsnapError('ERR_DRIVER', `QMP ${p.cmd} on ${this.name}: ${e.message}`, { cause: e }));
    }
    this.pending.clear();
    this.emit('close', e);
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  /** Run a command; resolves with its `return` value. Written at once (see the module comment). */
  execute<T = unknown>(cmd: string, args?: Record<string, unknown>, timeoutMs = this.commandTimeoutMs): Promise<T> {
    return this.prepare<T>(cmd, args).send(timeoutMs);
  }

  /** Serialise a command now; each send() writes it with a new id (no JSON work at send time but the id). */
  prepare<T = unknown>(cmd: string, args?: Record<string, unknown>): PreparedCommand<T> {
    // `{"execute":…,"arguments":…,"id":"vnN"}`: everything up to the id's value is fixed.
    const head = JSON.stringify(args === undefined ? { execute: cmd } : { execute: cmd, arguments: args }).slice(0, -1) + ',"id":"';
    return { cmd, send: (timeoutMs = this.commandTimeoutMs) => this.sendLine<T>(cmd, head, timeoutMs) };
  }

  private sendLine<T>(cmd: string, head: string, timeoutMs: number): Promise<T> {
    if (this.closedWith) return Promise.reject(new VnsnapError('ERR_DRIVER', `QMP ${cmd} on ${this.name}: ${this.closedWith.message}`));
    const id = `vn${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new VnsnapError('ERR_TIMEOUT', `QMP ${cmd} on ${this.name}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { cmd, sentUnixUs: nowUs(), resolve: resolve as (v: unknown) => void, reject, timer });
      this.sock.write(`${head}${id}"}\n`);
    });
  }

  /**
   * The next event named `name` whose data satisfies `match` (registered now: call it before the
   * command that causes the event). Rejects on timeout or when the connection closes.
   */
  waitEvent(name: string, match: (data: Record<string, unknown>) => boolean = () => true, timeoutMs = this.commandTimeoutMs): Promise<QmpEvent> {
    return new Promise<QmpEvent>((resolve, reject) => {
      if (this.closedWith) {
        reject(new VnsnapError('ERR_DRIVER', `QMP ${this.name}: waiting for ${name}: ${this.closedWith.message}`));
        return;
      }
      const onEvent = (e: QmpEvent): void => {
        if (e.event !== name || !match(e.data)) return;
        done();
        resolve(e);
      };
      const onClose = (e: Error): void => {
        done();
        reject(new VnsnapError('ERR_DRIVER', `QMP ${this.name}: waiting for ${name}: ${e.message}`, { cause: e }));
      };
      const timer = setTimeout(() => {
        done();
        reject(new VnsnapError('ERR_TIMEOUT', `QMP ${this.name}: no ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  close(): void {
    this.sock.destroy();
    this.fail(new VnsnapError('ERR_DRIVER', `QMP connection to ${this.name} closed by the driver`));
  }
}
