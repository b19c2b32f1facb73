/**
 * The other port kinds for real: a packet socket on an existing interface (the way the switch
 * reaches a QEMU TAP or a Xen vifD.N) and QEMU's stream netdev protocol over a unix socket.
 * Namespaces and links are named with the prefix `vnpt` and removed in after().
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fakePortPair } from '../../switch/port/porttest/fake-port';
import { PacketPort, TapPort } from '../../switch/port/fd-port';
import { StreamPort } from '../../switch/port/stream-port';
import { Switch } from '../../switch/switch';
import { makeFrame, parseFrame, vmMac } from '../support/frames';
import { sh, Topology } from '../support/netns';
import { sleep, until } from '../support/wait';
import { spawn } from 'node:child_process';

describe('packet-socket port on an existing interface', function () {
  this.timeout(60_000);
  let topo: Topology;
  let sw: Switch | undefined;

  before(() => {
    topo = new Topology('vnpt');
    topo.addNamespace('vma');
    topo.addNamespace('vmb');
  });

  after(async () => {
    sw?.stop();
    await topo.destroy();
    for (const l of ['vnptp0', 'vnptt0']) if (fs.existsSync(`/sys/class/net/${l}`)) sh('ip', ['link', 'del', l], { allowFail: true });
  });

  it('switches between a veth end (packet socket) and a TAP: ping both ways', () => {
    // The veth's host end stays in our namespace, like QEMU's TAP on a host; the other end is the "VM".
    sh('ip', ['link', 'add', 'vnptp0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', topo.ns('vma')]);
    sh('ip', ['link', 'set', 'vnptp0', 'up']);
    // FACTS: without this the packet socket sees 64 KiB GSO frames with partial checksums.
    sh('ethtool', ['-K', 'vnptp0', 'tx', 'off', 'tso', 'off', 'gso', 'off', 'gro', 'off', 'rxvlan', 'off', 'txvlan', 'off']);
    topo.exec('vma', 'ethtool', ['-K', 'eth0', 'tx', 'off', 'tso', 'off', 'gso', 'off']);
    topo.exec('vma', 'ip', ['addr', 'add', '192.168.79.1/24', 'dev', 'eth0']);
    topo.exec('vma', 'ip', ['link', 'set', 'eth0', 'up']);
    const s = new Switch({ id: 'pk' });
    sw = s;
    s.configureVne({ name: 'blue', vni: 1 });
    s.attachPort('blue', new PacketPort('a', 'vnptp0'));
    s.attachPort('blue', new TapPort('b', 'vnptt0'));
    sh('ip', ['link', 'set', 'vnptt0', 'netns', topo.ns('vmb')]);
    topo.exec('vmb', 'ip', ['addr', 'add', '192.168.79.2/24', 'dev', 'vnptt0']);
    topo.exec('vmb', 'ip', ['link', 'set', 'vnptt0', 'up']);
    return new Promise<void>((resolve, reject) => {
      // The switch runs in this process: ping asynchronously so the event loop keeps turning.
      const p = spawn('ip', ['netns', 'exec', topo.ns('vma'), 'ping', '-c', '3', '-i', '0.2', '-W', '2', '192.168.79.2']);
      let out = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.on('exit', () => {
        try {
          assert.match(out, /3 packets transmitted, 3 received/);
          const st = s.stats();
          assert.ok((st.ports['a']?.rxFrames as number) >= 3 && (st.ports['b']?.rxFrames as number) >= 3, JSON.stringify(st));
          resolve();
        } catch (e) {
          reject(e);
        }
      });
    });
  });
});

describe('stream port (QEMU -netdev stream protocol over a unix socket)', function () {
  this.timeout(30_000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnpt-stream-'));
  const sock = path.join(dir, 'vm.sock');
  let sw: Switch;
  let sp: StreamPort;
  const peer = fakePortPair('peer', { batchSize: 8 });

  before(async () => {
    sw = new Switch({ id: 'st' });
    sw.configureVne({ name: 'blue', vni: 1 });
    sp = new StreamPort('qemu', sock);
    await sp.listen();
    sw.attachPort('blue', sp);
    sw.attachPort('blue', peer.port);
  });

  after(() => {
    sw.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function connect(): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const c = net.connect(sock, () => resolve(c));
      c.once('error', reject);
    });
  }

  const lp = (f: Buffer): Buffer => {
    const h = Buffer.alloc(4);
    h.writeUInt32BE(f.length);
    return Buffer.concat([h, f]);
  };

  it('parses length-prefixed frames split across reads, and frames the switch sends arrive length-prefixed', async () => {
    const c = await connect();
    await until('the stream port to accept the VM', () => sp.connected);
    const frames = [1, 2, 3].map((i) => makeFrame({ dst: vmMac(9), src: vmMac(1), sender: 1, seq: i, epoch: 0 }));
    const wire = Buffer.concat(frames.map(lp));
    c.write(wire.subarray(0, 30)); // a frame split across writes
    await sleep(50); // the two halves reach the port in separate reads
    c.write(wire.subarray(30));
    await until('three frames at the peer VM', () => peer.vm.received.length === 3);
    assert.deepEqual(peer.vm.received.map((f) => parseFrame(f)?.seq), [1, 2, 3]);
    // And back: the peer VM answers; learned MAC → one length-prefixed frame on the socket.
    let got = Buffer.alloc(0);
    c.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
    peer.vm.send(makeFrame({ dst: vmMac(1), src: vmMac(9), sender: 9, seq: 7, epoch: 0 }));
    peer.vm.pumpAll();
    await until('the length-prefixed frame on the socket', () => got.length >= 64);
    assert.equal(got.readUInt32BE(0), 60);
    assert.equal(parseFrame(got.subarray(4, 64))?.seq, 7);
    c.destroy();
  });

  it('drops a connection that does not speak the protocol, and accepts the VM reconnecting', async () => {
    const bad = await connect();
    await until('the stream port to accept the VM', () => sp.connected);
    bad.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0]));
    await until('the bad connection to be dropped', () => bad.destroyed || bad.readableEnded, 2000).catch(() => undefined);
    await until('the stream port to drop the connection', () => !sp.connected);
    assert.equal(sp.badFrames, 1);
    const good = await connect();
    await until('the stream port to accept the VM', () => sp.connected);
    const before = peer.vm.received.length;
    good.write(lp(makeFrame({ dst: vmMac(9), src: vmMac(1), sender: 1, seq: 42, epoch: 0 })));
    await until('the frame from the reconnected VM', () => peer.vm.received.length === before + 1);
    assert.equal(parseFrame(peer.vm.received[before] as Buffer)?.seq, 42);
    good.destroy();
  });
});
