/**
 * Client for the switch daemon's control socket: a unix socket speaking JSON lines,
 * `{"id":N,"op":...}` → `{"id":N,"ok":true|false,...}`.
 */
import * as net from 'node:net';

export interface ControlReply {
  id: number;
  ok: boolean;
  error?: string;
  [k: string]: unknown;
}

export class ControlClient {
  private nextId = 1;
  private buf = '';
  private readonly pending = new Map<number, { resolve: (r: ControlReply) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private closedError: Error | null = null;

  private constructor(
    private readonly sock: net.Socket,
    readonly path: string,
  ) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    const fail = (e: Error): void => {
      this.closedError = e;
      for (const [, p] of this.pending) {
        clearTimeout(p.timer);
        p.reject(e);
      }
      this.pending.clear();
    };
    sock.on('error', (e) => fail(new Error(`control socket ${path}: ${e.message}`)));
    sock.on('close', () => fail(new Error(`control socket ${path} closed`)));
  }

  static connect(path: string, timeoutMs = 5000): Promise<ControlClient> {
    return new Promise((resolve, reject) => {
      const sock = net.createConnection(path);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error(`connect ${path}: timed out`));
      }, timeoutMs);
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.removeAllListeners('error');
        resolve(new ControlClient(sock, path));
      });
      sock.once('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`connect ${path}: ${e.message}`));
      });
    });
  }

  private onData(d: string): void {
    this.buf += d;
    let i: number;
    while ((i = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, i).trim();
      this.buf = this.buf.slice(i + 1);
      if (!line) continue;
      let msg: ControlReply;
      try {
        msg = JSON.parse(line) as ControlReply;
      } catch {
        continue; // not for us
      }
      const p = typeof msg.id === 'number' ? this.pending.get(msg.id) : undefined;
      if (!p) continue;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      p.resolve(msg);
    }
  }

  /** Send one request and resolve with its reply (ok or not); rejects on timeout or a closed socket. */
  request(body: Record<string, unknown>, timeoutMs = 10_000): Promise<ControlReply> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`control ${this.path}: no reply to ${JSON.stringify(body)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.sock.write(JSON.stringify({ id, ...body }) + '\n');
    });
  }

  /** Like request(), but rejects when the reply is not ok. */
  async call(body: Record<string, unknown>, timeoutMs = 10_000): Promise<ControlReply> {
    const r = await this.request(body, timeoutMs);
    if (!r.ok) throw new Error(`${String(body.op)} on ${this.path}: ${r.error ?? JSON.stringify(r)}`);
    return r;
  }

  close(): void {
    this.sock.destroy();
  }
}
