import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { nativeIo } from '../../switch/native-io';

/** A client in another process: connects to `sock`, writes `file`'s bytes, ends, exits 0 once every byte was taken. */
const WRITER = `
const net = require('node:net'), fs = require('node:fs');
const s = net.connect(process.argv[1], () => s.end(fs.readFileSync(process.argv[2])));
s.on('close', (err) => process.exit(err ? 1 : 0));
s.on('error', () => process.exit(2));
`;

describe('unix sink (native/unix_sink.c: one connection read on a thread of its own)', () => {
  const io = nativeIo();
  let dir = '';
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-unixsink-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('takes 4 MiB (many times the socket buffer) while the event loop is blocked, and resolves with exactly those bytes', async () => {
    const sock = path.join(dir, 's.sock');
    const file = path.join(dir, 'payload');
    const payload = randomBytes(4 << 20);
    fs.writeFileSync(file, payload);
    const [h, ended] = io.unixSinkListen(sock);
    try {
      // spawnSync blocks this loop until the writer exits, which it does only once the sink took
      // every byte: a sink read on the loop would leave it stuck past the timeout.
      const r = spawnSync(process.execPath, ['-e', WRITER, sock, file], { timeout: 20_000 });
      assert.equal(r.status, 0, `writer: status ${String(r.status)} signal ${String(r.signal)} ${r.stderr.toString()}`);
      const got = await ended;
      assert.equal(got.length, payload.length);
      assert.ok(got.equals(payload));
    } finally {
      io.unixSinkClose(h);
    }
    io.unixSinkClose(h); // idempotent, after the settling too
  });

  it('a connection closed at once gives an empty Buffer; an existing socket file at the path is replaced', async () => {
    const sock = path.join(dir, 's.sock');
    const old = net.createServer();
    await new Promise<void>((r) => old.listen(sock, () => r()));
    old.close();
    fs.writeFileSync(path.join(dir, 'x'), '');
    const [h, ended] = io.unixSinkListen(sock);
    const c = net.connect(sock, () => c.end());
    assert.deepEqual(await ended, Buffer.alloc(0));
    io.unixSinkClose(h);
  });

  it('more than maxBytes rejects with ERR_NATIVE_IO; a close before any connection rejects ("closed"); a bind that cannot be made throws at the call', async () => {
    const sock = path.join(dir, 'a.sock');
    const [h1, big] = io.unixSinkListen(sock, { maxBytes: 1000 });
    const c = net.connect(sock, () => c.end(Buffer.alloc(5000, 7)));
    c.on('error', () => undefined); // the sink stops reading: the writer may see EPIPE
    await assert.rejects(big, (e: NodeJS.ErrnoException) => e.code === 'ERR_NATIVE_IO' && /more than 1000 bytes/.test(e.message));
    io.unixSinkClose(h1);

    const [h2, never] = io.unixSinkListen(path.join(dir, 'b.sock'), { fifoPriority: 0 });
    io.unixSinkClose(h2);
    await assert.rejects(never, (e: NodeJS.ErrnoException) => e.code === 'ERR_NATIVE_IO' && /closed before the peer's end/.test(e.message));

    assert.throws(() => io.unixSinkListen(path.join(dir, 'no-such-dir', 'c.sock')), (e: NodeJS.ErrnoException) => e.code === 'ERR_NATIVE_IO' && /bind/.test(e.message));
    assert.throws(() => io.unixSinkListen(sock, { fifoPriority: 100 }), (e: NodeJS.ErrnoException) => e.code === 'ERR_INVALID_ARGUMENT');
  });

  it('a close while the peer is connected but silent ends the read (the thread does not wait for the peer)', async () => {
    const sock = path.join(dir, 's.sock');
    const [h, ended] = io.unixSinkListen(sock);
    const c = net.connect(sock);
    await new Promise<void>((r) => c.once('connect', () => c.write(Buffer.from('part'), () => r())));
    io.unixSinkClose(h);
    await assert.rejects(ended, (e: NodeJS.ErrnoException) => e.code === 'ERR_NATIVE_IO' && /closed/.test(e.message));
    c.destroy();
  });
});
