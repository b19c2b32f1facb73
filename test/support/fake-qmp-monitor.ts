/**
 * A QMP monitor on a real unix socket for unit tests of the QEMU driver's QMP use: it answers a
 * command only when told to (reply / error), so a test sees which commands reached it before
 * any reply was sent — pipelining, not one await per reply — and sends events with the
 * timestamp it is given. Every command line it reads is recorded in `lines`, in order.
 * fakeMonitorPerTest() gives each test of a suite a fresh monitor and a client connected to it,
 * in a temporary directory removed after the test.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { QmpClient } from '../../agent/drivers/qemu/qmp';

export interface MonitorLine {
  execute: string;
  arguments?: Record<string, unknown>;
  id: string;
}

export class FakeMonitor {
  readonly lines: MonitorLine[] = [];
  private conn: net.Socket | undefined;
  private constructor(
    readonly server: net.Server,
    readonly path: string,
  ) {}

  /** Listen on `dir`/mon.sock; the greeting and qmp_capabilities are answered by themselves. */
  static async start(dir: string): Promise<FakeMonitor> {
    const p = path.join(dir, 'mon.sock');
    const server = net.createServer();
    const m = new FakeMonitor(server, p);
    server.on('connection', (c) => {
      m.conn = c;
      c.write('{"QMP": {"version": {}, "capabilities": []}}\n');
      let buf = '';
      c.on('data', (d) => {
        buf += d.toString();
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const msg = JSON.parse(buf.slice(0, i)) as MonitorLine;
          buf = buf.slice(i + 1);
          if (msg.execute === 'qmp_capabilities') c.write(`{"return": {}, "id": "${msg.id}"}\n`);
          else m.lines.push(msg);
        }
      });
    });
    await new Promise<void>((r) => server.listen(p, r));
    return m;
  }

  /** The commands received so far, by name. */
  commands(): string[] {
    return this.lines.map((l) => l.execute);
  }

  /** The id of the first command `execute` received (throws when there is none). */
  idOf(execute: string): string {
    const l = this.lines.find((x) => x.execute === execute);
    if (!l) throw new Error(`the monitor received no ${execute}`);
    return l.id;
  }

  reply(id: string): void {
    this.conn?.write(`{"return": {}, "id": "${id}"}\n`);
  }

  error(id: string, desc: string): void {
    this.conn?.write(`${JSON.stringify({ error: { class: 'GenericError', desc }, id })}\n`);
  }

  event(name: string, unixUs: number, data: Record<string, unknown> = {}): void {
    this.conn?.write(`${JSON.stringify({ event: name, data, timestamp: { seconds: Math.floor(unixUs / 1e6), microseconds: unixUs % 1e6 } })}\n`);
  }

  /** A command's return value (reply() returns {}). */
  replyWith(id: string, value: unknown): void {
    this.conn?.write(`${JSON.stringify({ return: value, id })}\n`);
  }

  close(): void {
    this.conn?.destroy();
    this.server.close();
  }
}

/** A fresh monitor and a QmpClient ('fake') on it for every test of the calling suite (beforeEach / afterEach). */
export function fakeMonitorPerTest(prefix: string): { mon: FakeMonitor; q: QmpClient } {
  const ctx = {} as { mon: FakeMonitor; q: QmpClient };
  let dir = '';
  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    ctx.mon = await FakeMonitor.start(dir);
    ctx.q = await QmpClient.connect(ctx.mon.path, { name: 'fake', timeoutMs: 5000, commandTimeoutMs: 5000 });
  });
  afterEach(() => {
    ctx.q?.close();
    ctx.mon?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return ctx;
}
