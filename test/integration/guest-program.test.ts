/**
 * The guest's workload program (test/guest/src/vnguest.c) on the host, without QEMU: compiled
 * with gcc, run on loopback and on a disk image file. Proves that its checks are not vacuous:
 * a gap, a duplicate or a corrupt word in a stream is counted, a reconnect is counted on both
 * sides, and a disk that is behind or ahead of the in-memory record counter is reported.
 */
import { strict as assert } from 'node:assert';
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { stopChild } from '../support/netns';
import { GuestImage, GuestStatus, queryStatus, REPO_ROOT } from '../guest/qemu-guest';
import { until } from '../support/wait';

const REC = 4096;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

function hello(name: string, index: number, connNo = 1, nonce = 0x1234n): Buffer {
  const h = Buffer.alloc(64);
  h.write('VNSH', 0, 'latin1');
  h[4] = 1;
  h.writeBigUInt64BE(nonce, 8);
  h.writeBigUInt64BE(BigInt(connNo), 16);
  h.writeBigUInt64BE(BigInt(index), 24);
  h.write(name, 32, 'latin1');
  return h;
}

function words(from: number, count: number): Buffer {
  const b = Buffer.alloc(count * 8);
  for (let i = 0; i < count; i++) b.writeBigUInt64BE(BigInt(from + i), i * 8);
  return b;
}

// The disk record format of vnguest.c (make_record), to forge a record "from the future".
const M64 = (1n << 64n) - 1n;
function mix64(x: bigint): bigint {
  x ^= x >> 33n;
  x = (x * 0xff51afd7ed558ccdn) & M64;
  x ^= x >> 33n;
  x = (x * 0xc4ceb9fe1a85ec53n) & M64;
  x ^= x >> 33n;
  return x;
}
function makeRecord(seq: number): Buffer {
  const r = Buffer.alloc(REC);
  r.write('VNSREC01', 0, 'latin1');
  r.writeBigUInt64BE(BigInt(seq), 8);
  r.writeBigUInt64BE(0x42n, 16);
  r.writeBigUInt64BE(0n, 24);
  for (let o = 32; o < REC - 8; o += 8) r.writeBigUInt64BE(mix64(BigInt(seq) ^ BigInt(o)), o);
  let h = 1469598103934665603n;
  for (let o = 0; o < REC - 8; o += 8) h = mix64(h ^ r.readBigUInt64BE(o));
  r.writeBigUInt64BE(h, REC - 8);
  return r;
}

function connectSend(port: number, chunks: Buffer[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => {
      for (const c of chunks) s.write(c);
      s.end();
    });
    s.on('close', () => resolve());
    s.on('error', reject);
  });
}

describe('guest program (vnguest) on the host: stream, disk and memory checks', function () {
  this.timeout(60_000);
  let tmp = '';
  let tool: GuestImage;
  const procs: ChildProcess[] = [];

  const run = (args: string[]): ChildProcess => {
    const p = spawn(tool.tool, ['run', 'bind=127.0.0.1', 'disk=none', 'report=3600', 'vport=none', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(p);
    return p;
  };
  const st = (port: number): GuestStatus => queryStatus(tool, null, `127.0.0.1:${port}`);
  /** Every thread of `p` stopped (after SIGSTOP): it writes nothing more until SIGCONT. */
  const stopped = (p: ChildProcess): Promise<boolean> => {
    const state = (stat: string): string => stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3); // "pid (comm) S ..."
    const task = `/proc/${p.pid}/task`;
    return until(`process ${p.pid} stopped`, () => fs.readdirSync(task).every((t) => 'tT'.includes(state(fs.readFileSync(`${task}/${t}/stat`, 'utf8')))), { timeoutMs: 5000, everyMs: 5 });
  };
  const ready = (port: number): Promise<GuestStatus> => until(`status on ${port}`, () => st(port), { timeoutMs: 10_000, everyMs: 100 });

  before(function () {
    try {
      execFileSync('sh', ['-c', 'command -v gcc && test -e /usr/lib/x86_64-linux-gnu/libc.a'], { stdio: 'ignore' });
    } catch {
      this.skip(); // build-guest.sh installs gcc and libc6-dev; this test only uses them
    }
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vngp-'));
    const bin = path.join(tmp, 'vnguest');
    execFileSync('gcc', ['-O2', '-static', '-pthread', '-Wall', '-Wextra', '-Werror', '-o', bin, path.join(REPO_ROOT, 'test/guest/src/vnguest.c')], { stdio: ['ignore', 'pipe', 'pipe'] });
    tool = { kernel: '', initrd: '', tool: bin };
  });

  afterEach(async () => {
    await Promise.all(procs.map((p) => stopChild(p, 1000)));
    procs.length = 0;
  });

  after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('streams between two instances with every byte checked and zero errors', async () => {
    const [la, lb, sa, sb] = [await freePort(), await freePort(), await freePort(), await freePort()];
    run(['name=a', `listen=${la}`, `status=${sa}`, `peers=127.0.0.1:${lb}`]);
    run(['name=b', `listen=${lb}`, `status=${sb}`, `peers=127.0.0.1:${la}@512`]);
    await ready(sa);
    await ready(sb);
    await until('bytes both ways', () => (st(sa).in[0]?.bytes ?? 0) > 200_000 && (st(sb).in[0]?.bytes ?? 0) > 10_000_000, { timeoutMs: 20_000, everyMs: 200 });
    const a = st(sa);
    const b = st(sb);
    assert.equal(a.in[0]!.from, 'b');
    assert.equal(b.in[0]!.from, 'a');
    for (const s of [a, b]) {
      assert.equal(s.totals.errors, 0);
      assert.equal(s.out[0]!.connected, true);
      assert.equal(s.out[0]!.reconnects, 0);
      assert.equal(s.in[0]!.reconnects, 0);
    }
    // the rate limit holds roughly (512 KiB/s from b to a)
    const rate = a.in[0]!.bytes / (a.uptime_ms / 1000);
    assert.ok(rate < 512 * 1024 * 1.5, `rate ${rate} B/s`);
  });

  it('counts a gap, a duplicate and a corrupt word in a stream as errors', async () => {
    const [l, s] = [await freePort(), await freePort()];
    run(['name=rx', `listen=${l}`, `status=${s}`]);
    await ready(s);
    const corrupt = words(300, 10);
    corrupt[5 * 8 + 3] = corrupt[5 * 8 + 3]! ^ 0x40; // word 305, one bit
    // 0..99 ok, then a gap (200..), then a duplicate of 209, then 210..299 ok, then a corrupt word
    const dupe = words(209, 1);
    await connectSend(l, [hello('evil', 0), words(0, 100), words(200, 10), dupe, words(210, 90), corrupt]);
    const r = await until('the connection to close', () => {
      const v = st(s).in[0];
      return v && !v.open ? v : undefined;
    }, { timeoutMs: 5000, everyMs: 100 });
    assert.equal(r.from, 'evil');
    assert.equal(r.bytes, (100 + 10 + 1 + 90 + 10) * 8); // after the hello
    // the gap (expected 100, got 200), the duplicate (expected 210, got 209) and the corrupt word
    // (and the word after it, as the checker resynchronises on what arrived)
    assert.ok(r.errors >= 3, `errors ${r.errors}`);
    assert.match(r.first_error, /expected word 100 got 200/);
    assert.equal(r.close_reason, 'eof');
  });

  it('a clean stream has no errors, and a second connection of the same stream counts as a reconnect', async () => {
    const [l, s] = [await freePort(), await freePort()];
    run(['name=rx', `listen=${l}`, `status=${s}`]);
    await ready(s);
    await connectSend(l, [hello('tx', 3, 1), words(0, 1000)]);
    await connectSend(l, [hello('tx', 3, 2), words(0, 10)]);
    const r = await until('two closed connections', () => {
      const v = st(s).in[0];
      return v && !v.open && v.connections === 2 ? v : undefined;
    }, { timeoutMs: 5000, everyMs: 100 });
    assert.equal(r.errors, 0);
    assert.equal(r.reconnects, 1);
    assert.equal(r.reboots, 0);
    assert.equal(r.words, 10);
    assert.equal(r.bytes, 1010 * 8);
  });

  it('a sender whose connection breaks reconnects and counts it', async () => {
    const [l, s] = [await freePort(), await freePort()];
    let conns = 0;
    const sockets: net.Socket[] = [];
    const srv = net.createServer((c) => {
      conns++;
      sockets.push(c);
      c.on('error', () => undefined);
      c.on('data', () => undefined);
      if (conns === 1) setTimeout(() => c.destroy(), 300); // break the first connection
    });
    await new Promise<void>((r) => srv.listen(l, '127.0.0.1', r));
    try {
      run(['name=tx', `status=${s}`, `peers=127.0.0.1:${l}@256`]);
      await ready(s);
      const o = await until('the reconnect', () => {
        const v = st(s).out[0];
        return v && v.connects === 2 && v.connected ? v : undefined;
      }, { timeoutMs: 10_000, everyMs: 100 });
      assert.equal(o.reconnects, 1);
      assert.equal(o.errors, 1);
      assert.ok(o.last_error.length > 0);
    } finally {
      sockets.forEach((c) => c.destroy());
      srv.close();
    }
  });

  it('disk writer: continues after the last record, and reports a disk behind or ahead of memory', async () => {
    const img = path.join(tmp, 'disk.img');
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, 4 << 20); // 1024 slots
    const s = await freePort();
    const p = run([`disk=${img}`, 'diskrate=100', `status=${s}`]);
    await ready(s);
    await until('20 records', () => st(s).disk.records >= 20, { timeoutMs: 10_000, everyMs: 100 });
    const s1 = st(s);
    assert.equal(s1.disk.enabled, true);
    assert.equal(s1.disk.slots, 1024);
    assert.equal(s1.disk.errors, 0, s1.disk.first_error);
    assert.equal(s1.disk.check_ok, s1.disk.checks);

    // behind: while the writer is stopped, wipe its last two records (memory still says they are
    // there). The writer checks the slots of its last two records, so this is caught wherever
    // SIGSTOP landed (even between a check and the next write).
    p.kill('SIGSTOP');
    await stopped(p);
    const scan = JSON.parse(execFileSync(tool.tool, ['disk-scan', img], { encoding: 'utf8' })) as { last_record: number; valid: number; corrupt: number };
    assert.equal(scan.corrupt, 0);
    assert.equal(scan.valid, scan.last_record);
    const fd = fs.openSync(img, 'r+');
    fs.writeSync(fd, Buffer.alloc(2 * REC), 0, 2 * REC, (scan.last_record - 2) * REC);
    fs.fsyncSync(fd);
    p.kill('SIGCONT');
    await until('behind reported', () => st(s).disk.behind > 0, { timeoutMs: 5000, everyMs: 100 });
    assert.match(st(s).disk.first_error, /disk behind memory/);

    // restart on the same disk: it continues after the last record it finds. First the writer
    // goes two records past the wiped ones, so the restarted one finds its last two intact.
    await until('two records past the wiped ones', () => st(s).disk.records >= scan.last_record + 2, { timeoutMs: 5000, everyMs: 20 });
    await stopChild(p, 1000);
    const scan2 = JSON.parse(execFileSync(tool.tool, ['disk-scan', img], { encoding: 'utf8' })) as { last_record: number };
    const s2 = await freePort();
    const p2 = run([`disk=${img}`, 'diskrate=100', `status=${s2}`]);
    await ready(s2);
    await until('more records', () => st(s2).disk.records > scan2.last_record + 5, { timeoutMs: 10_000, everyMs: 100 });
    const c = st(s2);
    assert.equal(c.disk.start_record, scan2.last_record);
    assert.equal(c.disk.errors, 0, c.disk.first_error);

    // ahead: a record from the future appears on the disk while memory does not know it. Two
    // records ahead, not one: SIGSTOP may land between the writer's check and its write of the
    // next record, which would overwrite a planted next record with the same bytes.
    p2.kill('SIGSTOP');
    await stopped(p2);
    const scan3 = JSON.parse(execFileSync(tool.tool, ['disk-scan', img], { encoding: 'utf8' })) as { last_record: number };
    fs.writeSync(fd, makeRecord(scan3.last_record + 2), 0, REC, (scan3.last_record + 1) * REC);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    p2.kill('SIGCONT');
    await until('ahead reported', () => st(s2).disk.ahead > 0, { timeoutMs: 5000, everyMs: 100 });
    assert.match(st(s2).disk.first_error, /disk ahead of memory/);
  });

  it('memory load: touches pages at the given rate and verifies them on every pass', async () => {
    const s = await freePort();
    run(['mem=4', 'memrate=16', `status=${s}`]);
    await ready(s);
    const m = await until('two passes', () => {
      const v = st(s).mem;
      return v.passes >= 2 ? v : undefined;
    }, { timeoutMs: 10_000, everyMs: 200 });
    assert.equal(m.enabled, true);
    assert.equal(m.errors, 0, m.first_error);
    const rate = m.pages_touched / 256 / (st(s).uptime_ms / 1000);
    assert.ok(rate > 8 && rate < 24, `rate ${rate} MiB/s`);
  });
});
