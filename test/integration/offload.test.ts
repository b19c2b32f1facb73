/**
 * Offloads for real: two switch daemons in namespaced hosts joined by a veth underlay (MTU
 * 1500), vnet_hdr TAPs with TSO whose interface side is a "VM" namespace, and one TAP without
 * offloads on the same switch. TCP byte streams must arrive intact whichever way they go
 * (super-frame → tunnel segmentation + UDP GSO → GRO + coalescing → super-frame; super-frame →
 * segmented for a port without offloads), the counters must show that super-frames really
 * flowed, and a snapshot under load must match its marker counts exactly (every segment
 * counted on both sides). Everything is named with the prefix `vnof` and removed in after().
 */
import { strict as assert } from 'node:assert';
import { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { stopChild, Topology, waitForJsonLine } from '../support/netns';
import { ControlClient } from '../support/overlay';

const HOSTS = ['10.79.0.1', '10.79.0.2'];

/** A tiny TCP sender/receiver: the receiver prints the byte count and SHA-256 of what it got. */
const STREAM_JS = `
const net = require('net'), crypto = require('crypto');
const [mode, a, b] = process.argv.slice(2);
if (mode === 'server') {
  net.createServer((s) => {
    const h = crypto.createHash('sha256'); let n = 0;
    s.on('data', (d) => { h.update(d); n += d.length; });
    s.on('end', () => { console.log(JSON.stringify({ bytes: n, sha: h.digest('hex') })); s.end(); });
  }).listen(Number(a), () => console.log(JSON.stringify({ listening: true })));
} else {
  const total = Number(b); const chunk = Buffer.alloc(1 << 16); let seed = 7;
  const h = crypto.createHash('sha256'); let sent = 0;
  const s = net.connect(5001, a, () => {
    const more = () => {
      while (sent < total) {
        for (let i = 0; i < chunk.length; i += 4) { seed = (seed * 1103515245 + 12345) >>> 0; chunk.writeUInt32BE(seed, i); }
        const c = chunk.subarray(0, Math.min(chunk.length, total - sent)); h.update(c); sent += c.length;
        if (!s.write(Buffer.from(c))) { s.once('drain', more); return; }
      }
      s.end(); console.log(JSON.stringify({ bytes: sent, sha: h.digest('hex') }));
    };
    more();
  });
  s.on('data', () => {}); s.on('close', () => process.exit(0));
}
`;

describe('switch offloads on namespaced hosts (vnet_hdr TAPs, UDP GSO/GRO)', function () {
  this.timeout(120_000);
  const topo = new Topology('vnof');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnof-'));
  const script = path.join(dir, 'stream.js');
  const daemons: ChildProcess[] = [];
  const controls: ControlClient[] = [];

  async function stats(i: number): Promise<Record<string, number>> {
    const r = await (controls[i] as ControlClient).call({ op: 'stats' });
    return r['stats'] as Record<string, number>;
  }

  /** Send `bytes` from VM namespace `from` to `toIp` (a server in `to`); both ends' hashes must agree. */
  async function transfer(from: string, to: string, toIp: string, bytes: number): Promise<void> {
    const server = topo.spawn(to, process.execPath, [script, 'server', '5001']);
    try {
      await waitForJsonLine<{ listening?: boolean }>(server, (v) => v.listening === true);
      const got = waitForJsonLine<{ bytes?: number; sha?: string }>(server, (v) => typeof v.bytes === 'number', 60_000);
      const client = topo.spawn(from, process.execPath, [script, 'client', toIp, String(bytes)]);
      const sent = await waitForJsonLine<{ bytes?: number; sha?: string }>(client, (v) => typeof v.bytes === 'number', 60_000);
      const recv = await got;
      assert.equal(recv.bytes, bytes);
      assert.equal(recv.sha, sent.sha, `${from} → ${to}: the byte stream arrived intact`);
      await stopChild(client);
    } finally {
      await stopChild(server);
    }
  }

  before(async () => {
    fs.writeFileSync(script, STREAM_JS);
    for (const n of ['h1', 'h2', 'vm1', 'vm2', 'vm3']) topo.addNamespace(n);
    topo.veth('h1', 'vnofu1', 'h2', 'vnofu2', `${HOSTS[0]}/24`, `${HOSTS[1]}/24`, 1500);
    const ports = [
      [
        { name: 'vm1', vne: 'blue', type: 'tap', ifname: 'vnoft1' },
        { name: 'vm3', vne: 'blue', type: 'tap', ifname: 'vnoft3', offload: false },
      ],
      [{ name: 'vm2', vne: 'blue', type: 'tap', ifname: 'vnoft2' }],
    ];
    for (const i of [0, 1]) {
      const id = `h${i + 1}`;
      const peer = `h${2 - i}`;
      const ctl = path.join(dir, `${id}.sock`);
      const cfg = {
        id,
        tunnel: { address: HOSTS[i], port: 6081 },
        control: ctl,
        peers: [{ id: peer, address: HOSTS[1 - i], port: 6081 }],
        vnes: [{ name: 'blue', vni: 300, peers: [peer] }],
        ports: ports[i],
      };
      const file = path.join(dir, `${id}.json`);
      fs.writeFileSync(file, JSON.stringify(cfg));
      const child = topo.spawn(id, process.execPath, [path.resolve(__dirname, '../../switch/cmd/daemon.js'), '--config', file, '--log-level', 'warn']);
      daemons.push(child);
      await waitForJsonLine<{ event?: string }>(child, (v) => v.event === 'ready', 20_000);
      controls.push(await ControlClient.connect(ctl));
    }
    topo.moveLink('h1', 'vnoft1', 'vm1', '192.168.79.1/24', 1400);
    topo.moveLink('h2', 'vnoft2', 'vm2', '192.168.79.2/24', 1400);
    topo.moveLink('h1', 'vnoft3', 'vm3', '192.168.79.3/24', 1400);
    // ARP and MAC learning
    for (const [from, to] of [
      ['vm1', '192.168.79.2'],
      ['vm1', '192.168.79.3'],
      ['vm2', '192.168.79.3'],
    ] as const) {
      topo.exec(from, 'ping', ['-c', '2', '-i', '0.2', '-W', '1', to], { allowFail: true });
    }
  });

  after(async () => {
    for (const c of controls) c.close();
    await Promise.all(daemons.map((d) => stopChild(d)));
    await topo.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the VM-side interfaces of offload TAPs have TSO on, the plain TAP has not', () => {
    assert.match(topo.exec('vm1', 'ethtool', ['-k', 'vnoft1'], { allowFail: true }), /tcp-segmentation-offload: on/);
    assert.match(topo.exec('vm3', 'ethtool', ['-k', 'vnoft3'], { allowFail: true }), /tcp-segmentation-offload: off/);
  });

  it('carries a TCP stream across hosts intact, as super-frames segmented and coalesced again', async () => {
    const before = [await stats(0), await stats(1)];
    await transfer('vm1', 'vm2', '192.168.79.2', 32 << 20);
    const after = [await stats(0), await stats(1)];
    const d = (i: number, k: string): number => ((after[i] as Record<string, number>)[k] ?? 0) - ((before[i] as Record<string, number>)[k] ?? 0);
    const superFrames = d(0, 'port.vm1.rxFrames');
    const datagrams = d(0, 'tunnelTx');
    assert.ok(datagrams >= (32 << 20) / 1400, `at least one datagram per MSS: ${datagrams}`);
    assert.ok(datagrams > 2 * superFrames, `h1 read super-frames from vm1's TAP (${superFrames} frames → ${datagrams} datagrams)`);
    assert.ok(d(1, 'tunnelRx') >= datagrams * 0.99, 'h2 counted (nearly) every datagram');
    assert.ok(d(1, 'port.vm2.txFrames') < d(1, 'tunnelRx') / 2, `h2 coalesced (${d(1, 'tunnelRx')} datagrams → ${d(1, 'port.vm2.txFrames')} frames)`);
    assert.equal(d(0, 'gsoErrors') + d(1, 'gsoErrors'), 0);
    assert.equal(d(1, 'malformed') + d(1, 'oversize') + d(0, 'oversize'), 0);
  });

  it('segments super-frames for a port without offloads (same host and from the tunnel)', async () => {
    const before = await stats(0);
    await transfer('vm1', 'vm3', '192.168.79.3', 8 << 20);
    await transfer('vm2', 'vm3', '192.168.79.3', 8 << 20);
    const after = await stats(0);
    assert.equal((after['gsoErrors'] ?? 0) - (before['gsoErrors'] ?? 0), 0);
    assert.ok((after['port.vm3.txFrames'] ?? 0) - (before['port.vm3.txFrames'] ?? 0) >= (16 << 20) / 1400, 'vm3 got MSS-sized frames');
  });

  it('a snapshot under load matches its marker counts exactly: every segment counted on both sides', async () => {
    const server = topo.spawn('vm2', process.execPath, [script, 'server', '5001']);
    await waitForJsonLine<{ listening?: boolean }>(server, (v) => v.listening === true);
    const client = topo.spawn('vm1', process.execPath, [script, 'client', '192.168.79.2', String(256 << 20)]);
    try {
      await new Promise((r) => setTimeout(r, 500));
      for (let k = 1; k <= 3; k++) {
        const cuts = await Promise.all(controls.map((c) => c.call({ op: 'snapshot', vne: 'blue', epoch: k })));
        for (const c of cuts) assert.equal(c['ok'], true, JSON.stringify(c));
        const cs = await Promise.all(controls.map((c) => c.call({ op: 'channelState', vne: 'blue', epoch: k })));
        for (const c of cs) {
          assert.equal(c['ok'], true, JSON.stringify(c));
          assert.equal(c['lostFrames'], 0, `snapshot ${k}: the markers' counts were matched (${JSON.stringify(c)})`);
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      const st = await stats(1);
      assert.ok((st['tunnelRx'] ?? 0) > 0);
    } finally {
      await stopChild(client);
      await stopChild(server);
    }
  });
});
