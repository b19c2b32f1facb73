/**
 * Unit tests of the native I/O addon on loopback UDP (no namespaces or devices needed).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { nativeIo, NativeIo, Poller } from '../../switch/native-io';
import { Worker } from 'node:worker_threads';
import { once, sleep, until } from '../support/wait';

const LOOPBACK = 0x7f000001;

interface Received {
  data: Buffer;
  ip: number;
  port: number;
}

/** A udp poller that copies every datagram out of the slab. */
function udpReceiver(io: NativeIo, fd: number, maxBatch: number, slotSize = 2048, headroom = 16) {
  const slab = Buffer.alloc(slotSize * maxBatch);
  const lens = new Uint32Array(maxBatch);
  const ips = new Uint32Array(maxBatch);
  const ports = new Uint32Array(maxBatch);
  const got: Received[] = [];
  const batchSizes: number[] = [];
  let onBatchHook: ((count: number) => void) | undefined;
  const poller: Poller = io.createPoller(fd, 'udp', slab, slotSize, headroom, maxBatch, lens, ips, ports, (count) => {
    batchSizes.push(count);
    for (let i = 0; i < count; i++) {
      const off = i * slotSize + headroom;
      got.push({ data: Buffer.from(slab.subarray(off, off + lens[i]!)), ip: ips[i]!, port: ports[i]! });
    }
    onBatchHook?.(count);
  });
  return {
    poller,
    got,
    batchSizes,
    setHook(h: (count: number) => void) {
      onBatchHook = h;
    },
  };
}

function payload(i: number): Buffer {
  // distinct contents and lengths: a header with the index, then a pattern depending on it
  const len = 8 + ((i * 37) % 700);
  const b = Buffer.alloc(len);
  b.writeUInt32BE(0xdecafbad, 0);
  b.writeUInt32BE(i, 4);
  for (let j = 8; j < len; j++) b[j] = (i + j) & 0xff;
  return b;
}

function send(io: NativeIo, fd: number, frames: Buffer[], port: number, ip = LOOPBACK): number {
  const ips = new Uint32Array(frames.length).fill(ip);
  const ports = new Uint32Array(frames.length).fill(port);
  return io.udpSend(fd, frames, ips, ports, frames.length);
}

/** Lets 20 ms pass: used where a test checks that nothing more arrives (time is the point). */
const tick = () => sleep(20);
/** Datagrams on loopback arrive within microseconds: poll often. */
const FAST = { everyMs: 2 };

function assertNativeError(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof Error);
    assert.equal((e as { code?: string }).code, 'ERR_NATIVE_IO');
    assert.match(e.message, message);
    return true;
  });
}

describe('native-io (unit)', function () {
  this.timeout(10_000);
  let io: NativeIo;
  const fds: number[] = [];
  const open = (ip = '127.0.0.1', port = 0) => {
    const s = io.udpOpen(ip, port);
    fds.push(s.fd);
    return s;
  };

  before(() => {
    io = nativeIo();
  });

  after(() => {
    for (const fd of fds) {
      try {
        io.close(fd);
      } catch {
        /* closed by the test */
      }
    }
  });

  it('loads through nativeIo() with the whole contract', () => {
    for (const f of ['tapOpen', 'packetOpen', 'udpOpen', 'close', 'writeFrames', 'udpSend', 'createPoller'] as const) {
      assert.equal(typeof io[f], 'function', f);
    }
    assert.equal(nativeIo(), io, 'loaded once');
  });

  it('udpOpen on 127.0.0.1:0 binds an ephemeral port; an explicit port is honoured', () => {
    const a = open();
    assert.ok(Number.isInteger(a.fd) && a.fd > 2);
    assert.ok(a.port > 0 && a.port < 65536);
    const port = a.port;
    io.close(a.fd);
    fds.splice(fds.indexOf(a.fd), 1); // its number may be reused at once: never close it twice
    const b = open('127.0.0.1', port); // free again: the explicit port is bound
    assert.equal(b.port, port);
  });

  it('exchanges 100 distinct datagrams in batches, with exact contents and source address', async () => {
    const a = open();
    const b = open();
    const rx = udpReceiver(io, b.fd, 64);
    rx.poller.start();
    const frames = Array.from({ length: 100 }, (_, i) => payload(i));
    assert.equal(send(io, a.fd, frames, b.port), 100);
    await until('100 datagrams', () => rx.got.length >= 100, FAST);
    await tick();
    rx.poller.stop();
    assert.equal(rx.got.length, 100);
    for (let i = 0; i < 100; i++) {
      assert.deepEqual(rx.got[i]!.data, frames[i], `datagram ${i}`);
      assert.equal(rx.got[i]!.ip, LOOPBACK);
      assert.equal(rx.got[i]!.port, a.port);
    }
    assert.ok(Math.max(...rx.batchSizes) > 1, `batch sizes ${rx.batchSizes.join(',')}`);
    assert.ok(Math.max(...rx.batchSizes) <= 64);
    assert.equal(rx.batchSizes.reduce((x, y) => x + y, 0), 100);
    const st = rx.poller.stats?.();
    assert.equal(st?.frames, 100);
    assert.equal(st?.active, false);
  });

  it('reports the source address of datagrams from several senders', async () => {
    const b = open();
    const senders = [open(), open(), open()];
    const rx = udpReceiver(io, b.fd, 16);
    senders.forEach((s, k) => assert.equal(send(io, s.fd, [Buffer.from(`from-${k}`)], b.port), 1));
    await until('3 datagrams', () => rx.poller.poll() === 0 && rx.got.length === 3, FAST);
    assert.deepEqual(
      rx.got.map((g) => [g.data.toString(), g.ip, g.port]),
      senders.map((s, k) => [`from-${k}`, LOOPBACK, s.port]),
    );
  });

  it('udpSend sends to per-datagram destinations (ips/ports arrays)', async () => {
    const a = open();
    const r1 = open();
    const r2 = open();
    const rx1 = udpReceiver(io, r1.fd, 8);
    const rx2 = udpReceiver(io, r2.fd, 8);
    const frames = ['x0', 'y0', 'x1', 'y1'].map((s) => Buffer.from(s));
    const ips = new Uint32Array([LOOPBACK, LOOPBACK, LOOPBACK, LOOPBACK]);
    const ports = new Uint32Array([r1.port, r2.port, r1.port, r2.port]);
    assert.equal(io.udpSend(a.fd, frames, ips, ports, 4), 4);
    await until('4 datagrams at two receivers', () => (rx1.poller.poll(), rx2.poller.poll(), rx1.got.length + rx2.got.length === 4), FAST);
    assert.deepEqual(rx1.got.map((g) => g.data.toString()), ['x0', 'x1']);
    assert.deepEqual(rx2.got.map((g) => g.data.toString()), ['y0', 'y1']);
  });

  it('udpSend with count < frames.length sends only count; count 0 sends nothing', async () => {
    const a = open();
    const b = open();
    const rx = udpReceiver(io, b.fd, 8);
    const frames = [Buffer.from('one'), Buffer.from('two'), Buffer.from('three')];
    const ips = new Uint32Array(3).fill(LOOPBACK);
    const ports = new Uint32Array(3).fill(b.port);
    assert.equal(io.udpSend(a.fd, frames, ips, ports, 0), 0);
    assert.equal(io.udpSend(a.fd, frames, ips, ports, 2), 2);
    await tick();
    assert.equal(rx.poller.poll(), 2);
    assert.deepEqual(rx.got.map((g) => g.data.toString()), ['one', 'two']);
    assert.equal(rx.poller.poll(), 0);
  });

  it('poll() reads synchronously and calls onBatch before returning', async () => {
    const a = open();
    const b = open();
    const rx = udpReceiver(io, b.fd, 4);
    assert.equal(rx.poller.poll(), 0, 'nothing queued yet');
    assert.equal(send(io, a.fd, [0, 1, 2, 3, 4, 5].map(payload), b.port), 6);
    await tick();
    assert.equal(rx.poller.poll(), 4);
    assert.equal(rx.got.length, 4);
    assert.equal(rx.poller.poll(), 2);
    assert.equal(rx.poller.poll(), 0);
    assert.deepEqual(rx.got.map((g) => g.data), [0, 1, 2, 3, 4, 5].map(payload));
  });

  it('drops datagrams longer than the slot (slotSize - headroom) and counts them', async () => {
    const a = open();
    const b = open();
    const rx = udpReceiver(io, b.fd, 8, 256, 56); // room for 200 bytes
    const frames = [Buffer.alloc(200, 1), Buffer.alloc(201, 2), Buffer.alloc(10, 3), Buffer.alloc(1000, 4), Buffer.alloc(1, 5)];
    assert.equal(send(io, a.fd, frames, b.port), 5);
    await tick();
    assert.equal(rx.poller.poll(), 3);
    assert.deepEqual(rx.got.map((g) => g.data), [frames[0], frames[2], frames[4]]);
    assert.equal(rx.poller.stats?.().truncated, 2);
  });

  it('stop() from inside onBatch stops after that batch; the rest stays queued', async () => {
    const a = open();
    const b = open();
    const rx = udpReceiver(io, b.fd, 10);
    rx.setHook(() => rx.poller.stop());
    rx.poller.start();
    assert.equal(send(io, a.fd, Array.from({ length: 50 }, (_, i) => payload(i)), b.port), 50);
    await until('a first batch', () => rx.got.length > 0, FAST);
    await tick();
    await tick();
    assert.equal(rx.got.length, 10);
    assert.equal(rx.poller.stats?.().active, false);
    rx.setHook(() => undefined);
    rx.poller.stop(); // idempotent
    assert.equal(rx.poller.poll(), 10);
    rx.poller.start(); // restart after stop
    await until('50 datagrams', () => rx.got.length === 50, FAST);
    rx.poller.stop();
    assert.deepEqual(rx.got.map((g) => g.data.readUInt32BE(4)), Array.from({ length: 50 }, (_, i) => i));
  });

  it('onBatch runs with the poller as `this`, and poll() from inside onBatch is refused', async () => {
    const a = open();
    const b = open();
    const slab = Buffer.alloc(4 * 64);
    const u = () => new Uint32Array(4);
    let self: unknown;
    let inner: unknown;
    const p = io.createPoller(b.fd, 'udp', slab, 64, 0, 4, u(), u(), u(), function (this: unknown) {
      // eslint-disable-next-line @typescript-eslint/no-this-alias -- the test checks what `this` is
      self = this;
      try {
        p.poll();
      } catch (e) {
        inner = e;
      }
    });
    send(io, a.fd, [Buffer.from('x')], b.port);
    await tick();
    assert.equal(p.poll(), 1);
    assert.equal(self, p);
    assert.ok(inner instanceof Error);
    assert.equal((inner as { code?: string }).code, 'ERR_NATIVE_IO');
  });

  it('close(fd) stops its poller; a new socket reusing the fd number is not read by the old poller', async () => {
    const a = open();
    const b = io.udpOpen('127.0.0.1', 0);
    const rx = udpReceiver(io, b.fd, 8);
    rx.poller.start();
    io.close(b.fd);
    assert.equal(rx.poller.stats?.().active, false);
    assert.equal(rx.poller.stats?.().closed, true);
    const c = open(); // likely the same fd number
    const rxc = udpReceiver(io, c.fd, 8);
    rxc.poller.start();
    assert.equal(send(io, a.fd, [Buffer.from('to-c')], c.port), 1);
    await until('the datagram to c', () => rxc.got.length === 1, FAST);
    rxc.poller.stop();
    assert.equal(rx.got.length, 0);
    assertNativeError(() => rx.poller.start(), /fd was closed/);
    assertNativeError(() => rx.poller.poll(), /fd was closed/);
    rx.poller.stop(); // still fine
  });

  it('refuses a second started poller on the same fd', () => {
    const b = open();
    const r1 = udpReceiver(io, b.fd, 4);
    const r2 = udpReceiver(io, b.fd, 4);
    r1.poller.start();
    try {
      assertNativeError(() => r2.poller.start(), /another poller/);
    } finally {
      r1.poller.stop();
    }
    r2.poller.start();
    r2.poller.stop();
  });

  it('an exception thrown by onBatch in poll() propagates to the caller', async () => {
    const a = open();
    const b = open();
    const u = () => new Uint32Array(2);
    const p = io.createPoller(b.fd, 'udp', Buffer.alloc(2 * 100), 100, 0, 2, u(), u(), u(), () => {
      throw new Error('boom');
    });
    send(io, a.fd, [Buffer.from('x')], b.port);
    await tick();
    assert.throws(() => p.poll(), /boom/);
    assert.equal(p.poll(), 0);
  });

  it('errors name the operation and the reason, with code ERR_NATIVE_IO', () => {
    assertNativeError(() => io.packetOpen('vnio-nosuch0'), /^packetOpen\(vnio-nosuch0\): if_nametoindex: No such device$/);
    assertNativeError(() => io.tapOpen('vnio/bad'), /^tapOpen\(vnio\/bad\): ioctl TUNSETIFF: Invalid argument$/);
    assertNativeError(() => io.tapOpen('vnio-name-far-too-long'), /^tapOpen\(vnio-name-far-too-long\): interface name longer than 15 bytes$/);
    assertNativeError(() => io.packetOpen(''), /^packetOpen\(\): invalid interface name/);
    assertNativeError(() => io.udpOpen('not-an-ip', 0), /^udpOpen\(not-an-ip:0\): not an IPv4 address$/);
    assertNativeError(() => io.udpOpen('192.0.2.77', 0), /^udpOpen\(192\.0\.2\.77:0\): bind: Cannot assign requested address$/);
    assertNativeError(() => io.close(987654), /^close\(987654\): close: Bad file descriptor$/);
    assertNativeError(() => io.createPoller(987654, 'udp', Buffer.alloc(64), 64, 0, 1, new Uint32Array(1), new Uint32Array(1), new Uint32Array(1), () => undefined), /fstat: Bad file descriptor/);
    assertNativeError(() => io.writeFrames(987654, [Buffer.from('x')], 1), /^writeFrames\(fd 987654\): write: Bad file descriptor$/);
    try {
      io.packetOpen('vnio-nosuch0');
    } catch (e) {
      assert.equal((e as { errnoCode?: string }).errnoCode, 'ENODEV');
      assert.equal((e as { errno?: number }).errno, -19);
    }
  });

  it('rejects bad arguments with ERR_INVALID_ARGUMENT', () => {
    const b = open();
    const u = (n: number) => new Uint32Array(n);
    const bad = (fn: () => unknown) =>
      assert.throws(fn, (e: unknown) => (e as { code?: string }).code === 'ERR_INVALID_ARGUMENT');
    bad(() => io.udpSend(b.fd, [Buffer.from('x')], u(1), u(1), 2)); // count > length
    bad(() => io.udpSend(b.fd, [Buffer.from('x')], u(1), new Uint32Array([70000]), 1)); // port out of range
    bad(() => io.udpSend(b.fd, ['x' as unknown as Buffer], u(1), u(1), 1));
    bad(() => io.writeFrames(b.fd, [Buffer.from('x')], 2));
    bad(() => io.udpOpen('127.0.0.1', 70000));
    bad(() => io.createPoller(b.fd, 'udp', Buffer.alloc(100), 64, 0, 2, u(2), u(2), u(2), () => undefined)); // slab too small
    bad(() => io.createPoller(b.fd, 'udp', Buffer.alloc(128), 64, 64, 2, u(2), u(2), u(2), () => undefined)); // headroom >= slot
    bad(() => io.createPoller(b.fd, 'udp', Buffer.alloc(128), 64, 0, 2, u(1), u(2), u(2), () => undefined)); // lens too short
    bad(() => io.createPoller(b.fd, 'nope' as 'udp', Buffer.alloc(128), 64, 0, 2, u(2), u(2), u(2), () => undefined));
  });

  it('a socket whose GSO failed is closed; the next socket on its fd number uses GSO', async () => {
    const rx = open();
    const r = udpReceiver(io, rx.fd, 64);
    r.poller.start();
    // Eight equal-sized datagrams to one destination: one UDP_SEGMENT message when GSO works.
    const frames = Array.from({ length: 8 }, (_, i) => Buffer.alloc(1000, i));
    const a = io.udpOpen('127.0.0.1', 0);
    io.udpSetNoCheck!(a.fd, true); // the kernel refuses UDP_SEGMENT on this socket (EINVAL)
    assert.equal(send(io, a.fd, frames, rx.port), 8);
    assert.deepEqual(io.udpSocketStats!(a.fd), { gsoBroken: true, gsoMessages: 0, splitMessages: 1 });
    io.close(a.fd);
    const b = open();
    assert.equal(b.fd, a.fd, 'the new socket got the closed socket\'s fd number');
    assert.deepEqual(io.udpSocketStats!(b.fd), { gsoBroken: false, gsoMessages: 0, splitMessages: 0 });
    assert.equal(send(io, b.fd, frames, rx.port), 8);
    assert.deepEqual(io.udpSocketStats!(b.fd), { gsoBroken: false, gsoMessages: 1, splitMessages: 0 });
    await until('16 datagrams at the receiver', () => r.got.length === 16, FAST);
    r.poller.stop();
    assert.deepEqual(r.got.map((g) => g.data), [...frames, ...frames]);
  });

  it('socket state is checked against the file the fd names: a socket closed behind the addon\'s back leaves nothing to its fd\'s next owner', () => {
    const rx = open();
    const a = io.udpOpen('127.0.0.1', 0);
    io.udpSetNoCheck!(a.fd, true);
    assert.equal(send(io, a.fd, [Buffer.alloc(500, 1), Buffer.alloc(500, 2)], rx.port), 2);
    assert.equal(io.udpSocketStats!(a.fd).gsoBroken, true);
    fs.closeSync(a.fd); // not through io.close(): the addon is not told
    const f = fs.openSync('/dev/null', 'r');
    try {
      assert.equal(f, a.fd, 'the new file got the closed socket\'s fd number');
      assert.deepEqual(io.udpSocketStats!(f), { gsoBroken: false, gsoMessages: 0, splitMessages: 0 });
    } finally {
      fs.closeSync(f);
    }
  });

  it('a worker thread and the main thread send GSO batches at the same time; every datagram arrives intact', async () => {
    const rx = open();
    const tx = open();
    const r = udpReceiver(io, rx.fd, 256);
    r.poller.start();
    const BATCHES = 10;
    const N = 64;
    // The worker loads its own instance of the addon (its own send arena and socket table).
    const w = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const io = require(workerData.modPath).nativeIo();
       const tx = io.udpOpen('127.0.0.1', 0);
       const frames = Array.from({ length: ${N} }, () => Buffer.alloc(200, 0xee));
       const ips = new Uint32Array(${N}).fill(${LOOPBACK});
       const ports = new Uint32Array(${N}).fill(workerData.port);
       let sent = 0;
       for (let k = 0; k < ${BATCHES}; k++) sent += io.udpSend(tx.fd, frames, ips, ports, ${N});
       const stats = io.udpSocketStats(tx.fd);
       io.close(tx.fd);
       parentPort.postMessage({ sent, port: tx.port, stats });`,
      { eval: true, workerData: { modPath: require.resolve('../../switch/native-io'), port: rx.port } },
    );
    const done = once(w, 'message', 'the worker to finish sending');
    const frames = Array.from({ length: N }, () => Buffer.alloc(200, 0x11));
    let sent = 0;
    for (let k = 0; k < BATCHES; k++) sent += send(io, tx.fd, frames, rx.port);
    const [msg] = (await done) as [{ sent: number; port: number; stats: { gsoMessages: number; gsoBroken: boolean } }];
    await w.terminate();
    assert.equal(sent, BATCHES * N);
    assert.equal(msg.sent, BATCHES * N);
    assert.equal(msg.stats.gsoBroken, false);
    assert.ok(msg.stats.gsoMessages > 0, 'the worker sent UDP_SEGMENT messages');
    await until('every datagram at the receiver', () => r.got.length === 2 * BATCHES * N, FAST);
    r.poller.stop();
    const from = (port: number, fill: number) => r.got.filter((g) => g.port === port && g.data.equals(Buffer.alloc(200, fill))).length;
    assert.equal(from(tx.port, 0x11), BATCHES * N);
    assert.equal(from(msg.port, 0xee), BATCHES * N);
  });
});

describe('native UDP: one socket per port', () => {
  it('refuses a second bind of the same port, and ephemeral ports are never shared', () => {
    const io = nativeIo();
    const a = io.udpOpen('127.0.0.1', 0);
    const opened = [a.fd];
    try {
      assert.throws(() => io.udpOpen('127.0.0.1', a.port), (e: Error & { code?: string }) => e.code === 'ERR_NATIVE_IO' && /Address already in use/.test(e.message));
      const ports = new Set<number>([a.port]);
      for (let i = 0; i < 100; i++) {
        const s = io.udpOpen('127.0.0.1', 0);
        opened.push(s.fd);
        assert.ok(!ports.has(s.port), `ephemeral port ${s.port} handed out twice`);
        ports.add(s.port);
      }
    } finally {
      for (const fd of opened) io.close(fd);
    }
  });
});

