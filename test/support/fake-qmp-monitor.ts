/**
 * A QMP monitor on a real unix socket for unit tests of the QEMU driver's QMP use: it answers a
 * command only when told to (reply / error), so a test sees which commands reached it before
 * any reply was sent — pipelining, not one await per reply — and sends events with the
 * timestamp it is given. Every command line it reads is recorded in `lines`, in order.
 */
import * as net from 'node:net';
import * as path from 'node:path';

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

  event(name: string, unixUs: number): void {
    this.conn?.write(`${JSON.stringify({ event: name, data: {}, timestamp: { seconds: Math.floor(unixUs / 1e6), microseconds: unixUs % 1e6 } })}\n`);
  }

  close(): void {
    this.conn?.destroy();
    this.server.close();
  }
}
