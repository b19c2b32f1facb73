/**
 * The in-kernel data path for real (switch/bpf/vnsnap-dp.bpf.c, loaded and attached by
 * agent/bpf-dp/loader.ts, its maps written by switch/bpf-dp/maps.ts): two hosts — this test's
 * own network namespace (host a) and a namespace (host b) — joined by a veth underlay, each with
 * the VNI's ordinary VXLAN device as the agent makes it (agent/bpf-dp/rx-side.ts: the VNI, GBP,
 * no learning, GRO off; its FDB naming the peer, vn_vxdevs naming it), a VM TAP whose character side the addon holds with
 * IFF_VNET_HDR and TSO (as QEMU does), and a punt device the switch would read.
 *
 * Asserted exactly: frames and TCP super-frames cross from TAP to TAP in the kernel, byte for
 * byte, and the per-(peer, epoch) counters on both sides equal the datagrams carried; a frame
 * whose colour is not the receiving port's epoch reaches the punt device behind its header
 * (late, early), and a broadcast from a VM reaches its port's punt device, not the peer; the VNE
 * generation (mod 4) crosses the wire in GBP's D and A bits (delivered when it is the port's,
 * punted with it in the header when not); a frame from an address that is no peer of the VNE
 * (vn_peers) is punted, not carried.
 * Everything is named vnbd* (the namespace vnbd-hb) and removed even when a test fails.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { attachDataPath, loadDataPath, unloadDataPath } from '../../agent/bpf-dp/loader';
import { decodePunt, PUNT_HEADER_LEN } from '../../switch/bpf-dp/layout';
import { DataPathMaps } from '../../switch/bpf-dp/maps';
import { nativeIo, VNET_HDR_LEN } from '../../switch/native-io';
import { makeFrame, parseFrame, vmMac } from '../support/frames';
import { sh, Topology } from '../support/netns';
import { superFrame } from '../support/tcp-frames';
import { fdReader, vnetTap, type FdReader } from '../support/vnet-tap';
import { until } from '../support/wait';

const VNI = 5151;
const PORT = '48879'; // the VXLAN devices' UDP port: not 4789, so no other VXLAN device here is in the way
const A_IP = '10.78.0.1';
const B_IP = '10.78.0.2';
const MAC_A = '02:00:00:00:00:01';
const MAC_B = '02:00:00:00:00:02';
const ROOT_LINKS = ['vnbdu0', 'vnbdx0', 'vnbdp0', 'vnbdt0'];

const ifindex = (dev: string, topo?: Topology): number => Number((topo ? topo.exec('hb', 'cat', [`/sys/class/net/${dev}/ifindex`]) : fs.readFileSync(`/sys/class/net/${dev}/ifindex`, 'utf8')).trim());

function removeRootLinks(): void {
  for (const l of ROOT_LINKS) if (fs.existsSync(`/sys/class/net/${l}`)) sh('ip', ['link', 'del', l], { allowFail: true });
}

describe('in-kernel data path between two hosts (tc bpf + VXLAN GBP)', function () {
  this.timeout(60_000);
  const io = nativeIo();
  let topo: Topology;
  const fds: number[] = [];
  const readers: FdReader[] = [];
  const taps: { close(): void }[] = [];
  let a: DataPathMaps | undefined;
  let b: DataPathMaps | undefined;
  let tapA: FdReader['got'];
  let tapB: FdReader['got'];
  let puntA: FdReader['got'];
  let tapAfd: number;
  let tapBfd: number;
  let ifA: { tap: number; punt: number };

  before(async () => {
    removeRootLinks();
    topo = new Topology('vnbd');
    topo.addNamespace('hb');
    sh('ip', ['link', 'add', 'vnbdu0', 'type', 'veth', 'peer', 'name', 'vnbdu1', 'netns', topo.ns('hb')]);
    sh('ip', ['addr', 'add', `${A_IP}/30`, 'dev', 'vnbdu0']);
    topo.exec('hb', 'ip', ['addr', 'add', `${B_IP}/30`, 'dev', 'vnbdu1']);
    topo.exec('hb', 'ethtool', ['-K', 'vnbdu1', 'gro', 'on']);
    sh('ethtool', ['-K', 'vnbdu0', 'gro', 'on']);
    // a's TAP and b's (opened here, then moved to b: the fd stays this process's)
    const ta = vnetTap('vnbdt0');
    taps.push(ta);
    const tb = vnetTap('vnbdt1');
    taps.push(tb);
    tapAfd = ta.fd;
    tapBfd = tb.fd;
    sh('ip', ['link', 'set', 'vnbdt1', 'netns', topo.ns('hb')]);
    sh('ip', ['link', 'add', 'vnbdp0', 'type', 'veth', 'peer', 'name', 'vnbdq0']);
    topo.exec('hb', 'ip', ['link', 'add', 'vnbdp1', 'type', 'veth', 'peer', 'name', 'vnbdq1']);
    const vx = ['link', 'add', '', 'type', 'vxlan', 'id', String(VNI), 'dstport', PORT, 'gbp', 'nolearning'];
    sh('ip', vx.map((x, i) => (i === 2 ? 'vnbdx0' : x)));
    topo.exec('hb', 'ip', vx.map((x, i) => (i === 2 ? 'vnbdx1' : x)));
    sh('ethtool', ['-K', 'vnbdx0', 'gro', 'off']);
    topo.exec('hb', 'ethtool', ['-K', 'vnbdx1', 'gro', 'off']);
    sh('bridge', ['fdb', 'replace', MAC_B, 'dev', 'vnbdx0', 'dst', B_IP, 'self', 'permanent']);
    topo.exec('hb', 'bridge', ['fdb', 'replace', MAC_A, 'dev', 'vnbdx1', 'dst', A_IP, 'self', 'permanent']);
    for (const l of ['vnbdu0', 'vnbdt0', 'vnbdp0', 'vnbdq0', 'vnbdx0']) sh('ip', ['link', 'set', l, 'up']);
    for (const l of ['vnbdu1', 'vnbdt1', 'vnbdp1', 'vnbdq1', 'vnbdx1']) topo.exec('hb', 'ip', ['link', 'set', l, 'up']);

    const dpA = await loadDataPath('vnit-bpfdp-a');
    const dpB = await loadDataPath('vnit-bpfdp-b');
    await attachDataPath(dpA, 'vnbdt0', 'vn_tx');
    await attachDataPath(dpA, 'vnbdx0', 'vn_rx');
    await attachDataPath(dpB, 'vnbdt1', 'vn_tx', topo.ns('hb'));
    await attachDataPath(dpB, 'vnbdx1', 'vn_rx', topo.ns('hb'));
    a = new DataPathMaps(dpA.mapsDir);
    b = new DataPathMaps(dpB.mapsDir);
    ifA = { tap: ifindex('vnbdt0'), punt: ifindex('vnbdp0') };
    const ifB = { tap: ifindex('vnbdt1', topo), punt: ifindex('vnbdp1', topo) };
    a.setDevices(0, ifA.punt);
    b.setDevices(0, ifB.punt);
    a.setVniDevice(VNI, ifindex('vnbdx0'));
    b.setVniDevice(VNI, ifindex('vnbdx1', topo));
    a.setPort(ifA.tap, { vni: VNI, epoch: 3, puntIfindex: ifA.punt, fast: true, generation: 0 });
    b.setPort(ifB.tap, { vni: VNI, epoch: 3, puntIfindex: ifB.punt, fast: true, generation: 0 });
    a.setPeer(VNI, B_IP);
    b.setPeer(VNI, A_IP);
    a.setFdb(VNI, MAC_A, { ifindex: ifA.tap });
    a.setFdb(VNI, MAC_B, { peer: B_IP });
    b.setFdb(VNI, MAC_B, { ifindex: ifB.tap });
    b.setFdb(VNI, MAC_A, { peer: A_IP });

    const pa = io.packetOpen('vnbdp0');
    fds.push(pa.fd);
    const pr = fdReader(pa.fd, 0);
    readers.push(pr);
    [tapA, tapB, puntA] = [ta.vm.received() as FdReader['got'], tb.vm.received() as FdReader['got'], pr.got];
  });

  after(async () => {
    for (const r of readers) r.stop();
    for (const t of taps) t.close();
    for (const fd of fds) io.close(fd);
    a?.close();
    b?.close();
    await topo?.destroy();
    removeRootLinks();
    await unloadDataPath('vnit-bpfdp-a');
    await unloadDataPath('vnit-bpfdp-b');
  });

  const write = (fd: number, frame: Buffer, meta: Buffer = Buffer.alloc(VNET_HDR_LEN)): void => {
    assert.equal(io.writeFrames(fd, [Buffer.concat([meta, frame])], 1), 1);
  };
  const test = (dst: number, src: number, seq: number): Buffer => makeFrame({ dst: vmMac(dst), src: vmMac(src), sender: src, seq, epoch: 3 }, 300);
  const ofTest = (r: FdReader['got'], seq: number): Buffer | undefined => r.find((g) => parseFrame(g.frame)?.seq === seq)?.frame;

  it('carries frames from TAP to TAP both ways in the kernel, counted per (VNI, peer, epoch) on both sides', async () => {
    const ab = test(2, 1, 1);
    const ba = test(1, 2, 2);
    write(tapAfd, ab);
    write(tapBfd, ba);
    assert.deepEqual(await until('a→b at b\'s TAP', () => ofTest(tapB, 1), 5000), ab);
    assert.deepEqual(await until('b→a at a\'s TAP', () => ofTest(tapA, 2), 5000), ba);
    assert.deepEqual([a?.count(VNI, B_IP, 3, 'sent'), b?.count(VNI, A_IP, 3, 'received'), b?.count(VNI, A_IP, 3, 'sent'), a?.count(VNI, B_IP, 3, 'received')], [1, 1, 1, 1]);
    assert.deepEqual([a?.stats().txRemote, a?.stats().rxFast, a?.stats().errors], [1, 1, 0]);
    assert.equal(puntA.length, 0, 'nothing punted');
  });

  it('carries a TCP super-frame whole to the tunnel and GRO-merged to the far TAP; counts are its segments', async () => {
    const sf = superFrame({ payload: 20 * 1348, mss: 1348 });
    const before = [a?.count(VNI, B_IP, 3, 'sent') ?? 0, b?.count(VNI, A_IP, 3, 'received') ?? 0];
    const isOurs = (f: Buffer): boolean => f.readUInt16BE(12) === 0x0800 && f.readUInt16BE(14 + 20) === 40000;
    write(tapAfd, sf.frame, sf.meta);
    const got = (): Buffer[] => tapB.filter((g) => isOurs(g.frame)).map((g) => g.frame.subarray(sf.hdrs));
    await until('the super-frame\'s payload at b\'s TAP', () => got().reduce((n, p) => n + p.length, 0) >= sf.payload.length, 5000);
    assert.deepEqual(Buffer.concat(got()), sf.payload, 'the payload, in order, byte for byte');
    assert.ok(got().length < 20, `fewer frames than segments reach b's TAP (${got().length})`);
    assert.deepEqual([(a?.count(VNI, B_IP, 3, 'sent') ?? 0) - (before[0] as number), (b?.count(VNI, A_IP, 3, 'received') ?? 0) - (before[1] as number)], [20, 20]);
  });

  it('hands the switch a frame of another epoch behind its header (late, early), and a VM\'s broadcast through its port', async () => {
    a?.setEpoch(ifA.tap, 4); // a cut first: b's colour 3 is late here
    write(tapBfd, test(1, 2, 10));
    const late = await until('the late frame at a\'s punt device', () => puntA.find((g) => parseFrame(g.frame.subarray(PUNT_HEADER_LEN))?.seq === 10)?.frame, 5000);
    assert.deepEqual(decodePunt(late), { vni: VNI, colour: 3, reason: 'late', generation: 0, peer: B_IP });
    b?.setEpoch(ifindex('vnbdt1', topo), 5); // b cut twice: colour 5 is early at a (epoch 4)
    write(tapBfd, test(1, 2, 11));
    const early = await until('the early frame at a\'s punt device', () => puntA.find((g) => parseFrame(g.frame.subarray(PUNT_HEADER_LEN))?.seq === 11)?.frame, 5000);
    assert.deepEqual(decodePunt(early), { vni: VNI, colour: 5, reason: 'early', generation: 0, peer: B_IP });
    assert.deepEqual(early.subarray(PUNT_HEADER_LEN), test(1, 2, 11));
    assert.equal(ofTest(tapA, 10) ?? ofTest(tapA, 11), undefined, 'neither reached a\'s VM in the kernel');
    assert.equal(a?.count(VNI, B_IP, 4, 'received'), 0);

    const bcast = test(1, 1, 12);
    bcast.fill(0xff, 0, 6);
    const sent = a?.stats().txRemote;
    write(tapAfd, bcast);
    assert.deepEqual(await until('the broadcast at a\'s port device', () => puntA.find((g) => parseFrame(g.frame)?.seq === 12)?.frame, 5000), bcast);
    assert.equal(a?.stats().txRemote, sent, 'not sent to the peer');
  });

  it("carries the VNE generation (mod 4) on the wire in GBP's D and A bits: the port's generation is delivered in the kernel, another is punted with it", async () => {
    const tb = ifindex('vnbdt1', topo);
    const pa = a?.port(ifA.tap);
    const pb = b?.port(tb);
    assert.ok(pa && pb);
    a?.setPort(ifA.tap, { ...pa, epoch: 6, generation: 3 });
    b?.setPort(tb, { ...pb, epoch: 6, generation: 3 }); // both bits set on the wire
    write(tapBfd, test(1, 2, 20));
    assert.deepEqual(await until("generation 3 at a's TAP", () => ofTest(tapA, 20), 5000), test(1, 2, 20));
    b?.setPort(tb, { ...pb, epoch: 6, generation: 2 }); // A only
    write(tapBfd, test(1, 2, 21));
    const other = await until("generation 2 at a's punt device", () => puntA.find((g) => parseFrame(g.frame.subarray(PUNT_HEADER_LEN))?.seq === 21)?.frame, 5000);
    assert.deepEqual(decodePunt(other), { vni: VNI, colour: 6, reason: 'unknown', generation: 2, peer: B_IP });
    assert.equal(ofTest(tapA, 21), undefined, "not delivered to a's VM");
  });

  it('punts a frame from an address that is no peer of the VNE (vn_peers) instead of carrying it, the peer named in its header', async () => {
    const tb = ifindex('vnbdt1', topo);
    const pb = b?.port(tb);
    assert.ok(pb);
    b?.setPort(tb, { ...pb, generation: 3 }); // a's port's epoch and generation (the test before): only the peer check stops it
    a?.removePeer(VNI, B_IP);
    try {
      write(tapBfd, test(1, 2, 40));
      const got = await until('b→a at a\'s punt device', () => puntA.find((g) => g.frame.length > PUNT_HEADER_LEN && parseFrame(g.frame.subarray(PUNT_HEADER_LEN))?.seq === 40)?.frame, 5000);
      assert.deepEqual(decodePunt(got), { vni: VNI, colour: 6, reason: 'unknown', generation: 3, peer: B_IP });
      assert.equal(ofTest(tapA, 40), undefined, 'not carried to a\'s TAP');
    } finally {
      a?.setPeer(VNI, B_IP);
    }
    write(tapBfd, test(1, 2, 41));
    assert.deepEqual(await until("a peer again: carried to a's TAP", () => ofTest(tapA, 41), 5000), test(1, 2, 41));
  });
});
