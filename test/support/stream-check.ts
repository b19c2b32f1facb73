/**
 * A checkable TCP byte stream between two "VMs": the client sends consecutive 64-bit counters
 * as fast as the connection takes them; the server checks that every 8-byte word is exactly
 * the next counter, so any gap, duplicate, reordering or corrupt byte is detected.
 *
 *   node stream-check.js server PORT            prints {"bytes":N,"words":N,"errors":N,"firstError":...} on exit (SIGTERM) or when the client closes
 *   node stream-check.js client HOST PORT SECS  sends for SECS seconds, prints {"sent":N}
 */
import * as net from 'node:net';

function server(port: number): void {
  let expect = 0n;
  let bytes = 0;
  let errors = 0;
  let firstError: string | null = null;
  let carry = Buffer.alloc(0);
  const report = (): void => {
    process.stdout.write(JSON.stringify({ bytes, words: Number(expect), errors, firstError }) + '\n');
  };
  const srv = net.createServer((s) => {
    s.on('data', (d: Buffer) => {
      bytes += d.length;
      const buf = carry.length ? Buffer.concat([carry, d]) : d;
      const whole = buf.length - (buf.length % 8);
      for (let o = 0; o < whole; o += 8) {
        const v = buf.readBigUInt64BE(o);
        if (v !== expect) {
          errors++;
          firstError ??= `expected ${expect} got ${v} at byte ${bytes - d.length + o}`;
          expect = v;
        }
        expect++;
      }
      carry = Buffer.from(buf.subarray(whole));
    });
    s.on('close', () => {
      report();
      srv.close();
      process.exit(0);
    });
    s.on('error', () => undefined);
  });
  srv.listen(port, () => process.stderr.write('listening\n'));
  process.on('SIGTERM', () => {
    report();
    process.exit(0);
  });
}

function client(host: string, port: number, secs: number): void {
  const chunk = Buffer.alloc(64 * 1024);
  let next = 0n;
  const s = net.connect(port, host);
  const end = Date.now() + secs * 1000;
  const fill = (): Buffer => {
    const b = Buffer.allocUnsafe(chunk.length);
    for (let o = 0; o < b.length; o += 8) b.writeBigUInt64BE(next++, o);
    return b;
  };
  const pump = (): void => {
    while (Date.now() < end) {
      if (!s.write(fill())) {
        s.once('drain', pump);
        return;
      }
    }
    s.end(() => {
      process.stdout.write(JSON.stringify({ sent: Number(next) * 8 }) + '\n');
      process.exit(0);
    });
  };
  s.on('connect', pump);
  s.on('error', (e) => {
    process.stderr.write(`stream-check client: ${e.message}\n`);
    process.exit(1);
  });
}

const [mode, a, b, c] = process.argv.slice(2);
if (mode === 'server') server(Number(a));
else if (mode === 'client') client(a as string, Number(b), Number(c));
else {
  process.stderr.write('usage: stream-check server PORT | client HOST PORT SECONDS\n');
  process.exit(2);
}
