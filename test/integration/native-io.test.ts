/**
 * Integration tests of the native I/O addon on real devices: a TAP opened by this process and
 * moved into a network namespace, and a packet socket on the host end of a veth pair whose
 * other end is in that namespace. The namespace's kernel is the peer: it answers ARP and ICMP
 * echo requests we write, and sends UDP bursts we read. Needs root.
 *
 * Everything is named after this process (namespace `vnio-<pid>`, links `vnio<pid>t/a/b`) and
 * removed in after(), also when a test fails.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { nativeIo, NativeIo, Poller } from '../../switch/native-io';
import { sleep, until } from '../support/wait';

function sh(cmd: string, args: readonly string[], allowFail = false): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  } catch (e) {
    if (allowFail) return '';
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.stderr?.trim() || err.message}`);
  }
}

const tag = String(process.pid % 100000);
const NS = `vnio-${tag}`;
const TAP = `vnio${tag}t`;
const VA = `vnio${tag}a`; // host side, packet socket
const VB = `vnio${tag}b`; // namespace side

const nsx = (...args: string[]) => sh('ip', ['netns', 'exec', NS, ...args]);

// Addresses. "ours" is the switch side (the addon), "theirs" the namespace kernel.
const TAP_THEIR_MAC = mac('02:76:6e:69:6f:01');
const TAP_OUR_MAC = mac('02:76:6e:69:6f:02');
const TAP_THEIR_IP = ip4('10.77.0.1');
const TAP_OUR_IP = ip4('10.77.0.2');
const VETH_THEIR_MAC = mac('02:76:6e:69:6f:11');
const VETH_OUR_MAC = mac('02:76:6e:69:6f:12');
const VETH_THEIR_IP = ip4('10.78.0.1');
const VETH_OUR_IP = ip4('10.78.0.2');

function mac(s: string): Buffer {
  return Buffer.from(s.split(':').map((h) => parseInt(h, 16)));
}
function ip4(s: string): Buffer {
  return Buffer.from(s.split('.').map(Number));
}
function macStr(b: Buffer): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}
function ipStr(b: Buffer): string {
  return [...b].join('.');
}

function checksum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length % 2) sum += b[b.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function eth(dst: Buffer, src: Buffer, type: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(14);
  dst.copy(h, 0);
  src.copy(h, 6);
  h.writeUInt16BE(type, 12);
  return Buffer.concat([h, payload]);
}

function arp(op: number, sha: Buffer, spa: Buffer, tha: Buffer, tpa: Buffer): Buffer {
  const a = Buffer.alloc(28);
  a.writeUInt16BE(1, 0); // Ethernet
  a.writeUInt16BE(0x0800, 2); // IPv4
  a[4] = 6;
  a[5] = 4;
  a.writeUInt16BE(op, 6);
  sha.copy(a, 8);
  spa.copy(a, 14);
  tha.copy(a, 18);
  tpa.copy(a, 24);
  return a;
}

function icmpEcho(type: 0 | 8, id: number, seq: number, data: Buffer): Buffer {
  const m = Buffer.alloc(8 + data.length);
  m[0] = type;
  m.writeUInt16BE(id, 4);
  m.writeUInt16BE(seq, 6);
  data.copy(m, 8);
  m.writeUInt16BE(checksum(m), 2);
  return m;
}

function ipv4(src: Buffer, dst: Buffer, proto: number, payload: Buffer, id: number): Buffer {
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h.writeUInt16BE(20 + payload.length, 2);
  h.writeUInt16BE(id, 4);
  h[8] = 64;
  h[9] = proto;
  src.copy(h, 12);
  dst.copy(h, 16);
  h.writeUInt16BE(checksum(h), 10);
  return Buffer.concat([h, payload]);
}

function echoData(seq: number): Buffer {
  const d = Buffer.alloc(56);
  for (let i = 0; i < d.length; i++) d[i] = (seq * 7 + i) & 0xff;
  return d;
}

interface Parsed {
  dst: string;
  src: string;
  type: number;
  payload: Buffer;
}
function parse(f: Buffer): Parsed {
  return { dst: macStr(f.subarray(0, 6)), src: macStr(f.subarray(6, 12)), type: f.readUInt16BE(12), payload: f.subarray(14) };
}

/** Checks an IPv4 echo reply exactly, except the IP id and DF bit, which the kernel chooses. */
function assertEchoReply(frame: Buffer, ourMac: Buffer, theirMac: Buffer, theirIp: Buffer, ourIp: Buffer, id: number, seq: number): void {
  const p = parse(frame);
  assert.equal(p.dst, macStr(ourMac));
  assert.equal(p.src, macStr(theirMac));
  assert.equal(p.type, 0x0800);
  const ip = p.payload;
  const expectedIcmp = icmpEcho(0, id, seq, echoData(seq));
  assert.equal(ip.length, 20 + expectedIcmp.length, 'no padding, no trailer');
  assert.equal(ip[0], 0x45);
  assert.equal(ip.readUInt16BE(2), 20 + expectedIcmp.length);
  assert.equal(ip.readUInt16BE(6) & 0xbfff, 0, 'not fragmented');
  assert.equal(ip[8], 64, 'ttl');
  assert.equal(ip[9], 1, 'ICMP');
  assert.equal(checksum(ip.subarray(0, 20)), 0, 'IP header checksum');
  assert.equal(ipStr(ip.subarray(12, 16)), ipStr(theirIp));
  assert.equal(ipStr(ip.subarray(16, 20)), ipStr(ourIp));
  assert.deepEqual(ip.subarray(20), expectedIcmp);
}

/** A frames poller that copies what it reads. */
function frameReader(io: NativeIo, fd: number, maxBatch = 64, slotSize = 2048, headroom = 64) {
  const slab = Buffer.alloc(slotSize * maxBatch);
  const lens = new Uint32Array(maxBatch);
  const got: Buffer[] = [];
  const batchSizes: number[] = [];
  const poller: Poller = io.createPoller(fd, 'frames', slab, slotSize, headroom, maxBatch, lens, new Uint32Array(0), new Uint32Array(0), (n) => {
    batchSizes.push(n);
    for (let i = 0; i < n; i++) {
      const off = i * slotSize + headroom;
      got.push(Buffer.from(slab.subarray(off, off + lens[i]!)));
    }
  });
  return { poller, got, batchSizes };
}

/** Frames cross a TAP or veth within microseconds: poll often. */
const FAST = { everyMs: 5 };

/** Runs a Node script inside the namespace that sends `count` UDP datagrams 'burst-<i>'. */
function udpBurstFromNamespace(dstIp: string, port: number, count: number, size = 0): void {
  const script = `
    const s = require('dgram').createSocket('udp4');
    let n = 0;
    for (let i = 0; i < ${count}; i++) {
      const b = Buffer.alloc(Math.max(${size}, 12)); b.write('burst-' + i);
      s.send(b.subarray(0, ${size} || ('burst-' + i).length), ${port}, '${dstIp}', (e) => { if (e) throw e; if (++n === ${count}) s.close(); });
    }`;
  nsx(process.execPath, '-e', script);
}

function udpPayloads(frames: Buffer[], dstPort: number): string[] {
  const out: string[] = [];
  for (const f of frames) {
    const p = parse(f);
    if (p.type !== 0x0800 || p.payload[9] !== 17) continue;
    const ihl = (p.payload[0]! & 0xf) * 4;
    const udp = p.payload.subarray(ihl);
    if (udp.readUInt16BE(2) !== dstPort) continue;
    out.push(udp.subarray(8, udp.readUInt16BE(4)).toString());
  }
  return out;
}

describe('native-io (integration: TAP, packet socket)', function () {
  this.timeout(30_000);
  let io: NativeIo;
  const openFds = new Set<number>();

  before(function () {
    if (process.getuid?.() !== 0) this.skip();
    io = nativeIo();
    // leftovers of an earlier run with the same pid
    sh('ip', ['netns', 'del', NS], true);
    for (const l of [TAP, VA]) sh('ip', ['link', 'del', l], true);
    sh('ip', ['netns', 'add', NS]);
    nsx('sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1');
    nsx('ip', 'link', 'set', 'lo', 'up');
  });

  after(() => {
    for (const fd of openFds) {
      try {
        io.close(fd);
      } catch {
        /* already closed */
      }
    }
    sh('ip', ['netns', 'del', NS], true);
    for (const l of [TAP, VA]) sh('ip', ['link', 'del', l], true);
  });

  describe('TAP moved into a namespace', () => {
    let tapFd = -1;
    let rx: ReturnType<typeof frameReader>;

    before(() => {
      const tap = io.tapOpen(TAP);
      tapFd = tap.fd;
      openFds.add(tapFd);
      assert.equal(tap.name, TAP);
      sh('ip', ['link', 'set', TAP, 'netns', NS]);
      nsx('ip', 'link', 'set', TAP, 'address', macStr(TAP_THEIR_MAC));
      nsx('ip', 'addr', 'add', '10.77.0.1/24', 'dev', TAP);
      nsx('ip', 'link', 'set', TAP, 'up');
      nsx('ip', 'neigh', 'replace', '10.77.0.2', 'lladdr', macStr(TAP_OUR_MAC), 'dev', TAP, 'nud', 'permanent');
      rx = frameReader(io, tapFd);
      rx.poller.start();
    });

    beforeEach(() => {
      rx.got.length = 0;
      rx.batchSizes.length = 0;
    });

    it('tapOpen returns the kernel name; the fd stays usable after the move', () => {
      assert.match(nsx('ip', '-o', 'link', 'show', TAP), new RegExp(`${TAP}: <[^>]*UP[^>]*>`));
    });

    it('an ARP request written with writeFrames is answered with the exact ARP reply', async () => {
      const req = eth(mac('ff:ff:ff:ff:ff:ff'), TAP_OUR_MAC, 0x0806, arp(1, TAP_OUR_MAC, TAP_OUR_IP, Buffer.alloc(6), TAP_THEIR_IP));
      assert.equal(io.writeFrames(tapFd, [req], 1), 1);
      await until('the ARP reply', () => rx.got.some((f) => parse(f).type === 0x0806), FAST);
      const replies = rx.got.filter((f) => parse(f).type === 0x0806);
      assert.equal(replies.length, 1);
      const expected = eth(TAP_OUR_MAC, TAP_THEIR_MAC, 0x0806, arp(2, TAP_THEIR_MAC, TAP_THEIR_IP, TAP_OUR_MAC, TAP_OUR_IP));
      assert.deepEqual(replies[0], expected);
    });

    it('50 ICMP echo requests written in one call get 50 exact echo replies', async () => {
      const id = 0x5a5a;
      const reqs = Array.from({ length: 50 }, (_, seq) =>
        eth(TAP_THEIR_MAC, TAP_OUR_MAC, 0x0800, ipv4(TAP_OUR_IP, TAP_THEIR_IP, 1, icmpEcho(8, id, seq, echoData(seq)), 1000 + seq)),
      );
      assert.equal(io.writeFrames(tapFd, reqs, 50), 50);
      const isReply = (f: Buffer) => parse(f).type === 0x0800 && f[14 + 9] === 1 && f[14 + 20] === 0;
      await until('50 echo replies', () => rx.got.filter(isReply).length >= 50, FAST);
      await sleep(50);
      const replies = rx.got.filter(isReply);
      assert.equal(replies.length, 50);
      replies.forEach((f, seq) => assertEchoReply(f, TAP_OUR_MAC, TAP_THEIR_MAC, TAP_THEIR_IP, TAP_OUR_IP, id, seq));
    });

    it('frames the namespace sends are read by the poller in batches', async () => {
      udpBurstFromNamespace('10.77.0.2', 7777, 200); // synchronous: the frames queue on the TAP meanwhile
      await until('200 UDP frames', () => udpPayloads(rx.got, 7777).length >= 200, FAST);
      await sleep(50);
      assert.deepEqual(udpPayloads(rx.got, 7777), Array.from({ length: 200 }, (_, i) => `burst-${i}`));
      const first = rx.got.find((f) => udpPayloads([f], 7777).length === 1)!;
      const p = parse(first);
      assert.equal(p.dst, macStr(TAP_OUR_MAC));
      assert.equal(p.src, macStr(TAP_THEIR_MAC));
      assert.equal(ipStr(p.payload.subarray(12, 16)), '10.77.0.1');
      assert.equal(ipStr(p.payload.subarray(16, 20)), '10.77.0.2');
      assert.ok(Math.max(...rx.batchSizes) > 1, `batch sizes ${rx.batchSizes.join(',')}`);
      assert.ok(Math.max(...rx.batchSizes) <= 64);
    });

    it('frames longer than the slot are dropped, not delivered truncated', async () => {
      rx.poller.stop();
      const small = frameReader(io, tapFd, 8, 256, 56); // 200 bytes of room
      try {
        udpBurstFromNamespace('10.77.0.2', 7001, 1, 100); // 142-byte frame
        udpBurstFromNamespace('10.77.0.2', 7002, 1, 1000); // 1042 bytes: dropped
        udpBurstFromNamespace('10.77.0.2', 7003, 1, 158); // 200 bytes: exactly fits
        udpBurstFromNamespace('10.77.0.2', 7004, 1, 159); // 201 bytes: dropped
        let n = 0;
        await until('the frames that fit', () => (n += small.poller.poll()) >= 2, FAST);
        for (let k = 0; k < 5; k++) n += small.poller.poll();
        assert.equal(n, 2);
        assert.deepEqual(small.got.map((f) => f.length), [142, 200]);
        assert.deepEqual(udpPayloads(small.got, 7001).length + udpPayloads(small.got, 7003).length, 2);
        assert.equal(small.poller.stats?.().truncated, 2);
      } finally {
        rx.poller.start();
      }
    });

    it('deleting the TAP device while polling neither crashes nor spins; the poller stops for good', async () => {
      nsx('ip', 'link', 'del', TAP);
      await until('the poller to notice', () => rx.poller.stats?.().dead === true, FAST);
      const st = rx.poller.stats!();
      assert.equal(st.active, false);
      assert.match(String(st.lastError), /EBADFD/);
      const cpu0 = process.cpuUsage();
      await sleep(200);
      const cpu = process.cpuUsage(cpu0);
      assert.ok(cpu.user + cpu.system < 100_000, `no busy loop (${cpu.user + cpu.system} µs CPU in 200 ms)`);
      assert.throws(() => rx.poller.start(), (e: unknown) => (e as { code?: string }).code === 'ERR_NATIVE_IO');
      const errors = rx.poller.stats!().errors;
      assert.equal(rx.poller.poll(), 0, 'poll() on a dead poller reads nothing and does not throw');
      assert.equal(rx.poller.stats!().errors, errors + 1);
      assert.throws(
        () => io.writeFrames(tapFd, [Buffer.alloc(60)], 1),
        (e: unknown) => (e as { code?: string }).code === 'ERR_NATIVE_IO' && /File descriptor in bad state/.test(String((e as Error).message)),
      );
      io.close(tapFd);
      openFds.delete(tapFd);
    });
  });

  describe('packet socket on a veth end', () => {
    let pkt: { fd: number; ifindex: number };
    let rx: ReturnType<typeof frameReader>;

    before(() => {
      sh('ip', ['link', 'add', VA, 'type', 'veth', 'peer', 'name', VB]);
      sh('ip', ['link', 'set', VB, 'netns', NS]);
      sh('sysctl', ['-qw', `net.ipv6.conf.${VA}.disable_ipv6=1`]);
      sh('ethtool', ['-K', VA, 'tx', 'off', 'tso', 'off', 'gso', 'off']);
      nsx('ethtool', '-K', VB, 'tx', 'off', 'tso', 'off', 'gso', 'off');
      sh('ip', ['link', 'set', VA, 'up']);
      nsx('ip', 'link', 'set', VB, 'address', macStr(VETH_THEIR_MAC));
      nsx('ip', 'addr', 'add', '10.78.0.1/24', 'dev', VB);
      nsx('ip', 'link', 'set', VB, 'up');
      nsx('ip', 'neigh', 'replace', '10.78.0.2', 'lladdr', macStr(VETH_OUR_MAC), 'dev', VB, 'nud', 'permanent');
      pkt = io.packetOpen(VA);
      openFds.add(pkt.fd);
      rx = frameReader(io, pkt.fd);
      rx.poller.start();
    });

    beforeEach(() => {
      rx.got.length = 0;
      rx.batchSizes.length = 0;
    });

    it('packetOpen returns the interface index and puts the interface in promiscuous mode', () => {
      assert.equal(pkt.ifindex, Number(fs.readFileSync(`/sys/class/net/${VA}/ifindex`, 'utf8')));
      assert.match(sh('ip', ['-d', '-o', 'link', 'show', VA]), / promiscuity 1 /);
    });

    it('reads, in batches, the frames the other end sends', async () => {
      udpBurstFromNamespace('10.78.0.2', 7778, 100);
      await until('100 UDP frames', () => udpPayloads(rx.got, 7778).length >= 100, FAST);
      await sleep(50);
      assert.deepEqual(udpPayloads(rx.got, 7778), Array.from({ length: 100 }, (_, i) => `burst-${i}`));
      const f = rx.got.find((x) => udpPayloads([x], 7778).length === 1)!;
      assert.equal(parse(f).dst, macStr(VETH_OUR_MAC));
      assert.equal(parse(f).src, macStr(VETH_THEIR_MAC));
      assert.ok(Math.max(...rx.batchSizes) > 1, `batch sizes ${rx.batchSizes.join(',')}`);
    });

    it('writeFrames delivers to the other end (ARP and ICMP answered exactly), without reading its own frames back', async () => {
      const req = eth(mac('ff:ff:ff:ff:ff:ff'), VETH_OUR_MAC, 0x0806, arp(1, VETH_OUR_MAC, VETH_OUR_IP, Buffer.alloc(6), VETH_THEIR_IP));
      const id = 0x1234;
      const pings = Array.from({ length: 20 }, (_, seq) =>
        eth(VETH_THEIR_MAC, VETH_OUR_MAC, 0x0800, ipv4(VETH_OUR_IP, VETH_THEIR_IP, 1, icmpEcho(8, id, seq, echoData(seq)), seq)),
      );
      assert.equal(io.writeFrames(pkt.fd, [req, ...pings], 21), 21);
      const isReply = (f: Buffer) => parse(f).type === 0x0800 && f[14 + 9] === 1 && f[14 + 20] === 0;
      await until('ARP and echo replies', () => rx.got.some((f) => parse(f).type === 0x0806) && rx.got.filter(isReply).length >= 20, FAST);
      await sleep(50);
      const arps = rx.got.filter((f) => parse(f).type === 0x0806);
      assert.deepEqual(arps, [eth(VETH_OUR_MAC, VETH_THEIR_MAC, 0x0806, arp(2, VETH_THEIR_MAC, VETH_THEIR_IP, VETH_OUR_MAC, VETH_OUR_IP))]);
      const replies = rx.got.filter(isReply);
      assert.equal(replies.length, 20);
      replies.forEach((f, seq) => assertEchoReply(f, VETH_OUR_MAC, VETH_THEIR_MAC, VETH_THEIR_IP, VETH_OUR_IP, id, seq));
      assert.equal(rx.got.filter((f) => parse(f).src === macStr(VETH_OUR_MAC)).length, 0, 'own transmissions not read back');
    });

    it('does not read frames that other sockets transmit on the interface (PACKET_IGNORE_OUTGOING)', async () => {
      // A second packet socket on the same interface pings the namespace as 10.78.0.3: the
      // poller must see the reply (incoming) but not the request (outgoing on the interface).
      // (A packet socket never sees its own transmissions anyway; this is about the others.)
      const other = io.packetOpen(VA);
      openFds.add(other.fd);
      const mac3 = mac('02:76:6e:69:6f:13');
      const ip3 = ip4('10.78.0.3');
      nsx('ip', 'neigh', 'replace', '10.78.0.3', 'lladdr', macStr(mac3), 'dev', VB, 'nud', 'permanent');
      const ping = eth(VETH_THEIR_MAC, mac3, 0x0800, ipv4(ip3, VETH_THEIR_IP, 1, icmpEcho(8, 0x4242, 7, echoData(7)), 77));
      assert.equal(io.writeFrames(other.fd, [ping], 1), 1);
      await until('the echo reply to 10.78.0.3', () => rx.got.some((f) => parse(f).dst === macStr(mac3)), FAST);
      await sleep(50);
      const reply = rx.got.filter((f) => parse(f).dst === macStr(mac3));
      assert.equal(reply.length, 1);
      assertEchoReply(reply[0]!, mac3, VETH_THEIR_MAC, VETH_THEIR_IP, ip3, 0x4242, 7);
      assert.equal(rx.got.filter((f) => parse(f).src === macStr(mac3)).length, 0, 'the other socket\'s transmission was read');
      io.close(other.fd);
      openFds.delete(other.fd);
    });

    it('deleting the interface under a running poller does not crash; writes then fail with ERR_NATIVE_IO', async () => {
      sh('ip', ['link', 'del', VA]);
      await until('the poller to see the error', () => (rx.poller.stats?.().errors ?? 0) > 0, FAST);
      const st = rx.poller.stats!();
      assert.match(String(st.lastError), /ENETDOWN/);
      await sleep(100);
      assert.throws(
        () => io.writeFrames(pkt.fd, [Buffer.alloc(60)], 1),
        (e: unknown) => (e as { code?: string }).code === 'ERR_NATIVE_IO' && /^writeFrames\(fd \d+\): write: /.test((e as Error).message),
      );
      io.close(pkt.fd); // stops the poller first
      openFds.delete(pkt.fd);
      assert.equal(rx.poller.stats?.().active, false);
      assert.equal(rx.poller.stats?.().closed, true);
    });
  });
});
