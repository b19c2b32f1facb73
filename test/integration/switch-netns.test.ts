/**
 * The switch for real: three switch daemons in namespaced hosts joined by a bridged veth
 * underlay, TAP ports whose interface side lives in a "VM" namespace, and two VNEs on the
 * same hosts. Everything is named with the prefix `vnit` and removed in after(). The daemons run
 * with their defaults: TAPs with offloads and a tunnel with UDP GSO/GRO, so TCP crosses as
 * super-frames, and a cut under load records some of them whole.
 */
import { strict as assert } from 'node:assert';
import { ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { startCapture, stopChild } from '../support/netns';
import { Overlay } from '../support/overlay';
import { pseudo } from '../support/tcp-frames';
import { sleep, until } from '../support/wait';

function ping(ov: Overlay, from: string, to: string, count = 3): { sent: number; received: number } {
  const out = ov.topo.exec(from, 'ping', ['-c', String(count), '-i', '0.2', '-W', '1', to], { allowFail: true });
  const m = /(\d+) packets transmitted, (\d+) received/.exec(out);
  return { sent: Number(m?.[1] ?? count), received: Number(m?.[2] ?? 0) };
}

describe('switch on namespaced hosts (TAP ports, Geneve tunnels)', function () {
  this.timeout(120_000);
  const ov = new Overlay({
    prefix: 'vnit',
    hosts: {
      h1: [
        { name: 'b1', vne: 'blue', ip: '192.168.77.1/24' },
        { name: 'b2', vne: 'blue', ip: '192.168.77.2/24' },
        { name: 'r1', vne: 'red', ip: '192.168.77.101/24' },
      ],
      h2: [
        { name: 'b3', vne: 'blue', ip: '192.168.77.3/24' },
        { name: 'r2', vne: 'red', ip: '192.168.77.102/24' },
      ],
      h3: [{ name: 'b4', vne: 'blue', ip: '192.168.77.4/24' }],
    },
    vnes: [
      { name: 'blue', vni: 100 },
      { name: 'red', vni: 200 },
    ],
  });
  const captures: ChildProcess[] = [];

  before(async () => {
    await ov.build();
  });

  after(async () => {
    await Promise.all(captures.map((c) => stopChild(c)));
    await ov.destroy();
  });

  it('pings between VMs on the same host and across hosts', () => {
    assert.deepEqual(ping(ov, 'b1', '192.168.77.2'), { sent: 3, received: 3 });
    assert.deepEqual(ping(ov, 'b1', '192.168.77.3'), { sent: 3, received: 3 });
    assert.deepEqual(ping(ov, 'b3', '192.168.77.4'), { sent: 3, received: 3 });
    assert.deepEqual(ping(ov, 'r1', '192.168.77.102'), { sent: 3, received: 3 });
  });

  it('keeps VNEs apart: a red VM cannot reach blue VMs in the same subnet on the same hosts', () => {
    assert.deepEqual(ping(ov, 'r1', '192.168.77.1', 2), { sent: 2, received: 0 });
    assert.deepEqual(ping(ov, 'r2', '192.168.77.3', 2), { sent: 2, received: 0 });
    assert.deepEqual(ping(ov, 'b4', '192.168.77.102', 2), { sent: 2, received: 0 });
  });

  it('moves iperf3 TCP traffic across hosts', async () => {
    const server = ov.topo.spawn('b3', 'iperf3', ['-s', '-1', '-B', '192.168.77.3']);
    captures.push(server);
    await iperfListening(ov, 'b3', 5201);
    const out = JSON.parse(ov.topo.exec('b1', 'iperf3', ['-c', '192.168.77.3', '-t', '2', '-J'])) as IperfResult;
    const gbps = out.end.sum_received.bits_per_second / 1e9;
    assert.ok(gbps > 0.05, `throughput ${gbps} Gbit/s`);
  });

  it('shows on the wire as Geneve with the VNE\'s VNI, decodable by tshark', async () => {
    const file = path.join(ov.dir, 'underlay.pcap');
    const cap = await startCapture(ov.topo, 'h1', ov.underlayIf.get('h1') as string, file, ['udp port 6081']);
    assert.deepEqual(ping(ov, 'b1', '192.168.77.3', 2), { sent: 2, received: 2 });
    assert.deepEqual(ping(ov, 'r1', '192.168.77.102', 2), { sent: 2, received: 2 });
    await sleep(300); // let the capture write the last packets out
    await cap.stop();
    const out = ov.topo.exec('h1', 'tshark', ['-r', file, '-Y', 'geneve && icmp', '-T', 'fields', '-e', 'geneve.vni', '-e', 'ip.dst'], { timeoutMs: 60_000 });
    const rows = out.trim().split('\n').map((l) => l.trim().split('\t'));
    // Outer and inner ip.dst: the inner one (second) says which VM pair it was.
    const byVni = new Map<string, Set<string>>();
    for (const [vniHex, dsts] of rows) {
      const vni = String(Number(vniHex)); // tshark prints the VNI as 0x000064
      const inner = (dsts ?? '').split(',').pop() as string;
      byVni.set(vni, (byVni.get(vni) ?? new Set()).add(inner));
    }
    assert.deepEqual([...(byVni.get('100') ?? [])].sort(), ['192.168.77.1', '192.168.77.3']);
    assert.deepEqual([...(byVni.get('200') ?? [])].sort(), ['192.168.77.101', '192.168.77.102']);
    assert.deepEqual([...byVni.keys()].sort(), ['100', '200']);
  });

  it('cuts under iperf3 load: channel state recorded on every host, super-frames whole, no frame the rules must deliver is lost, no marker reaches a VM', async () => {
    // Captures on every blue VM's interface to prove no marker/control packet arrives there.
    const vmCaps = ['b1', 'b2', 'b3', 'b4'].map((vm) => {
      const file = path.join(ov.dir, `${vm}.pcap`);
      const iface = ov.topo.exec(vm, 'ip', ['-o', 'link', 'show']).split('\n').map((l) => l.split(': ')[1]?.split('@')[0]).find((n) => n && n !== 'lo') as string;
      return startCapture(ov.topo, vm, iface, file, ['-s', '128']).then((c) => ({ vm, file, c }));
    });
    const caps = await Promise.all(vmCaps);
    const tcpSrv = ov.topo.spawn('b3', 'iperf3', ['-s', '-1', '-B', '192.168.77.3', '-p', '5202']);
    const udpSrv = ov.topo.spawn('b4', 'iperf3', ['-s', '-1', '-B', '192.168.77.4', '-p', '5203']);
    captures.push(tcpSrv, udpSrv);
    await iperfListening(ov, 'b3', 5202);
    await iperfListening(ov, 'b4', 5203);
    // TCP at a rate the machine sustains alongside everything else (an unbounded flow on two
    // shared cores makes kernel queues outside the switch overflow, which is not what this
    // test is about), and a UDP stream whose every missing datagram iperf3 counts.
    const tcp = spawnJson(ov, 'b1', ['-c', '192.168.77.3', '-p', '5202', '-t', '9', '-b', '300M', '-J']);
    const udp = spawnJson(ov, 'b2', ['-c', '192.168.77.4', '-p', '5203', '-u', '-b', '10M', '-l', '1000', '-t', '9', '-J']);
    await sleep(1500);
    const states: Record<string, Record<string, unknown>>[] = [];
    // The first cut is made for super-frames to be in flight across it: h2 (b3's host) cuts
    // first, the others once b3 has received a few more super-frames of b1's stream — all of
    // the old epoch, so recorded. Hosts cutting within a millisecond of each other now and then
    // catch no TCP super-frame in flight at all.
    const superOut = async (): Promise<number> => (await ov.stats('h2'))['port.b3.superFramesOut'] as number;
    const before = await superOut();
    const first = { host: 'h2', until: () => until('b3 received super-frames after its cut', async () => (await superOut()) >= before + 5, 5000) };
    // Then at least three cuts in all; more (up to eight, inside the streams' 9 s) until a
    // super-frame was in flight across one (the first cut's arrangement catches one most times,
    // not every time: a loaded machine may have only single segments in flight then).
    for (let k = 1; k <= 8 && (k <= 3 || recordedSuperFrames(states).length === 0); k++) {
      states.push(await ov.snapshot('blue', k, { frames: true, ...(k === 1 ? { first } : {}) }));
      await sleep(800);
    }
    const [tcpOut, udpOut] = await Promise.all([tcp, udp]);
    assert.ok(tcpOut.end.sum_received.bits_per_second > 1e7, 'TCP kept flowing through the cuts');
    assert.equal(udpOut.end.sum?.lost_packets, 0, 'no UDP datagram lost across three cuts');
    for (const st of states) {
      for (const [host, r] of Object.entries(st)) {
        assert.equal(r['lostFrames'], 0, `${host}: no in-flight frame lost on the wire`);
      }
    }
    // Frames crossed the cuts in flight and were recorded as channel state somewhere.
    assert.ok(recordedIn(states) > 0, `some channel state was recorded under load (${states.length} cuts)`);
    // Among them (the first cut) TCP super-frames of b1's stream to b3 (GSO on h1's tunnel, GRO on h2's), recorded
    // whole at b3's port with the virtio_net_hdr the switch writes to the TAP: exactly the header
    // GRO builds (partial checksum at the TCP checksum, gso_size the segments' payload), the frame
    // one IPv4 packet of the stream whose TCP checksum field holds the pseudo-header sum.
    const supers = recordedSuperFrames(states);
    assert.ok(supers.length > 0, `a super-frame was recorded whole under load (${states.length} cuts, ${recordedIn(states)} frames recorded)`);
    for (const { host, port, frame: f, hdr } of supers) {
      assert.deepEqual([host, port], ['h2', 'b3'], 'TCP data flows b1 → b3 only');
      const thl = ((f[34 + 12] as number) >> 4) * 4;
      const gso = hdr.readUInt16LE(4);
      assert.deepEqual(
        {
          flags: hdr[0],
          gsoType: hdr[1],
          hdrLen: hdr.readUInt16LE(2),
          csumStart: hdr.readUInt16LE(6),
          csumOffset: hdr.readUInt16LE(8),
          ethertype: f.readUInt16BE(12),
          ipTotalLength: f.readUInt16BE(16),
          protocol: f[23],
          src: [...f.subarray(26, 30)].join('.'),
          dst: [...f.subarray(30, 34)].join('.'),
          dport: f.readUInt16BE(36),
          tcpCsum: f.readUInt16BE(50),
        },
        {
          flags: 1, // VIRTIO_NET_HDR_F_NEEDS_CSUM
          gsoType: 1, // VIRTIO_NET_HDR_GSO_TCPV4
          hdrLen: 34 + thl,
          csumStart: 34,
          csumOffset: 16,
          ethertype: 0x0800,
          ipTotalLength: f.length - 14,
          protocol: 6,
          src: '192.168.77.1',
          dst: '192.168.77.3',
          dport: 5202,
          tcpCsum: pseudo(f, false, f.length - 34),
        },
      );
      assert.ok(f.length - 34 - thl > gso && gso > 0 && gso <= 1500, `a super-frame of several segments: ${f.length - 34 - thl} payload bytes, gso_size ${gso}`);
    }
    for (const h of ['h1', 'h2', 'h3']) {
      const s = await ov.stats(h);
      for (const [k, v] of Object.entries(s)) {
        if (/\.(holdDrops|heldBytes)$/.test(k) || k === 'tunnelTxDrops' || k === 'malformed' || k === 'unknownPeer') assert.equal(v, 0, `${h} ${k}`);
        if (/^port\.b\d\.epoch$/.test(k)) assert.equal(v, states.length, `${h} ${k}: one epoch per cut`);
      }
      assert.ok((s['markersReceived'] as number) >= 6, `${h} received markers from both peers for 3 snapshots`);
      if (h === 'h1') assert.ok((s['port.b1.superFramesIn'] as number) > 0, 'b1 sent super-frames (TSO on its TAP)');
      if (h === 'h2') assert.ok((s['port.b3.superFramesOut'] as number) > 0, 'b3 received super-frames (GRO on the tunnel)');
    }
    for (const { vm, file, c } of caps) {
      await c.stop();
      // Anything but IPv4/ARP/IPv6, or anything tunnel-shaped, would be a leak (a marker, an ack).
      const leaked = ov.topo.exec(vm, 'tshark', ['-r', file, '-Y', '!(eth.type == 0x0800 || eth.type == 0x0806 || eth.type == 0x86dd) || geneve || udp.port == 6081', '-T', 'fields', '-e', 'frame.number', '-e', 'eth.type'], { timeoutMs: 60_000 }).trim();
      assert.equal(leaked, '', `${vm}: only IPv4/ARP/IPv6 frames reach the VM`);
      const frames = Number(/(\d+)/.exec(ov.topo.exec(vm, 'capinfos', ['-c', '-M', file]).split('\n').find((l) => l.includes('Number of packets')) ?? '')?.[1] ?? 0);
      assert.ok(frames > 100, `${vm}: the capture saw the traffic (${frames} frames)`);
    }
  });
});

interface IperfResult {
  end: { sum_received: { bits_per_second: number }; sum?: { lost_packets: number } };
}

function spawnJson(ov: Overlay, ns: string, args: string[]): Promise<IperfResult> {
  const c = ov.topo.spawn(ns, 'iperf3', args);
  let out = '';
  c.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve, reject) => {
    c.on('exit', (code) => {
      try {
        resolve(JSON.parse(out) as IperfResult);
      } catch {
        reject(new Error(`iperf3 ${args.join(' ')} exited ${code}: ${out.slice(-500)}`));
      }
    });
  });
}

/** Wait until an iperf3 server in `vm` listens on its TCP control port. */
function iperfListening(ov: Overlay, vm: string, port: number): Promise<boolean> {
  return until(`iperf3 listening in ${vm} on ${port}`, () => ov.topo.exec(vm, 'ss', ['-ltnH', `sport = :${port}`], { allowFail: true }).includes(`:${port}`), 10_000);
}

/** Frames recorded as channel state over the snapshots' per-host states (taken with frames). */
function recordedIn(states: Record<string, Record<string, unknown>>[]): number {
  return states.flatMap((st) => Object.values(st).flatMap((r) => Object.values(r['ports'] as Record<string, string[]>))).reduce((a, b) => a + b.length, 0);
}

/** The super-frames recorded over the snapshots' states: where, the frame and its virtio_net_hdr. */
function recordedSuperFrames(states: Record<string, Record<string, unknown>>[]): { host: string; port: string; frame: Buffer; hdr: Buffer }[] {
  const out: { host: string; port: string; frame: Buffer; hdr: Buffer }[] = [];
  for (const st of states) {
    for (const [host, r] of Object.entries(st)) {
      const frames = r['ports'] as Record<string, string[]>;
      for (const [port, hdrs] of Object.entries(r['vnetHdrs'] as Record<string, (string | null)[]>)) {
        hdrs.forEach((h, i) => {
          if (h !== null) out.push({ host, port, frame: Buffer.from(frames[port]?.[i] as string, 'base64'), hdr: Buffer.from(h, 'base64') });
        });
      }
    }
  }
  return out;
}
