/**
 * The in-kernel data path's tunnel side as the agent makes it (agent/bpf-dp/rx-side.ts), for
 * real: the punt pair in vn_cfg and an external device of an earlier build removed; one ordinary
 * VXLAN device per VNI (attributes exact: the VNI, the port, gbp, no learning, no remote, GRO
 * off) with vn_rx on its ingress and vn_vxdevs naming it; reused when asked again, re-created on
 * another port, removed with its vn_vxdevs entry; its FDB written by VniDevices exactly after
 * set, move and removal; and a VXLAN-GBP frame from a peer host (a namespace across a veth
 * underlay, an ordinary kernel VXLAN device there, the packet marked so it carries a GBP) that
 * no local port owns reaches the punt device behind its header, reason unknown, with the VNI,
 * colour, generation and peer read from the outer headers. Pins vnit-bpfrx, links vnbr*,
 * namespace vnbr-hb; the devices are removed with removeReceivingSide, all even when a test fails.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { loadDataPath, unloadDataPath, type LoadedDataPath } from '../../agent/bpf-dp/loader';
import { ensureReceivingSide, ensureVniDevice, receivingSideNames, removeReceivingSide, removeVniDevice, vniDeviceAttrs, vniDeviceName, VniDevices } from '../../agent/bpf-dp/rx-side';
import { decodePunt, PUNT_HEADER_LEN } from '../../switch/bpf-dp/layout';
import { DataPathMaps } from '../../switch/bpf-dp/maps';
import { nativeIo } from '../../switch/native-io';
import { sh, Topology } from '../support/netns';
import { fdReader, type FdReader } from '../support/vnet-tap';
import { until } from '../support/wait';

const PREFIX = 'vnit-bpfrx';
const PORT = 48877;
const VNI = 5152;
const A_IP = '10.79.0.1';
const B_IP = '10.79.0.2';

const ifindex = (dev: string): number => Number(fs.readFileSync(`/sys/class/net/${dev}/ifindex`, 'utf8').trim());
const exists = (dev: string): boolean => fs.existsSync(`/sys/class/net/${dev}`);
const gro = (dev: string): string | undefined => /generic-receive-offload: (\w+)/.exec(sh('ethtool', ['-k', dev]))?.[1];
/** The device's FDB entries written with a destination (MAC → dst), sorted. */
const kernelFdb = (dev: string): string[] =>
  (JSON.parse(sh('bridge', ['-j', 'fdb', 'show', 'dev', dev])) as { mac: string; dst?: string; state?: string }[])
    .filter((e) => e.dst !== undefined)
    .map((e) => `${e.mac} ${e.dst ?? ''} ${e.state ?? ''}`)
    .sort();

describe('in-kernel data path: the agent\'s receiving side', function () {
  this.timeout(60_000);
  const io = nativeIo();
  const n = receivingSideNames(PREFIX);
  let dp: LoadedDataPath;
  let maps: DataPathMaps | undefined;
  let topo: Topology | undefined;
  let reader: FdReader | undefined;
  let fd: number | undefined;

  before(async () => {
    await removeReceivingSide(PREFIX);
    sh('ip', ['link', 'del', 'vnbru0'], { allowFail: true });
    dp = await loadDataPath(PREFIX);
    maps = new DataPathMaps(dp.mapsDir);
  });

  after(async () => {
    reader?.stop();
    if (fd !== undefined) io.close(fd);
    maps?.close();
    await topo?.destroy();
    sh('ip', ['link', 'del', 'vnbru0'], { allowFail: true });
    await removeReceivingSide(PREFIX);
    await unloadDataPath(PREFIX);
  });

  it('makes the punt pair, its ifindex in vn_cfg, and removes an external device of an earlier build', async () => {
    sh('ip', ['link', 'add', n.legacyVxlan, 'type', 'vxlan', 'external', 'gbp', 'dstport', String(PORT + 2)]);
    const rx = await ensureReceivingSide(dp, maps as DataPathMaps);
    assert.equal(exists(n.legacyVxlan), false);
    assert.deepEqual(maps?.devices(), { vxlanIfindex: 0, puntIfindex: ifindex(n.punt) });
    assert.equal(rx.puntIfindex, ifindex(n.punt));
    for (const d of [n.punt, n.puntPeer]) assert.notEqual(fs.readFileSync(`/sys/class/net/${d}/operstate`, 'utf8').trim(), 'down', d);
    const again = await ensureReceivingSide(dp, maps as DataPathMaps);
    assert.equal(again.puntIfindex, rx.puntIfindex, 'reused');
  });

  it('makes a VNI\'s ordinary device (exact attributes, GRO off, up) with vn_rx and vn_vxdevs naming it; reuses, re-creates on another port, removes', async () => {
    const dev = vniDeviceName(PREFIX, VNI);
    assert.equal(dev.length <= 15, true);
    const i1 = await ensureVniDevice(dp, maps as DataPathMaps, VNI, PORT);
    assert.deepEqual(await vniDeviceAttrs(dev), { kind: 'vxlan', id: VNI, port: PORT, gbp: true, learning: false, external: false, remote: undefined, local: undefined });
    assert.equal(gro(dev), 'off');
    assert.notEqual(fs.readFileSync(`/sys/class/net/${dev}/operstate`, 'utf8').trim(), 'down');
    assert.match(sh('tc', ['filter', 'show', 'dev', dev, 'ingress']), /vn_rx/);
    assert.equal(i1, ifindex(dev));
    assert.equal(maps?.vniDevice(VNI), i1);
    assert.equal(await ensureVniDevice(dp, maps as DataPathMaps, VNI, PORT), i1, 'adopted as it is');
    const i2 = await ensureVniDevice(dp, maps as DataPathMaps, VNI, PORT + 1);
    assert.notEqual(i2, i1);
    assert.deepEqual(await vniDeviceAttrs(dev), { kind: 'vxlan', id: VNI, port: PORT + 1, gbp: true, learning: false, external: false, remote: undefined, local: undefined });
    assert.equal(maps?.vniDevice(VNI), i2);
    assert.match(sh('tc', ['filter', 'show', 'dev', dev, 'ingress']), /vn_rx/);
    await removeVniDevice(PREFIX, maps, VNI);
    assert.equal(exists(dev), false);
    assert.equal(maps?.vniDevice(VNI), undefined);
  });

  it('writes the VNI device\'s FDB in call order: exact entries after set, move and removal; removes the device with its FDB', async () => {
    const t = new VniDevices(dp, maps as DataPathMaps, PORT);
    const dev = vniDeviceName(PREFIX, VNI);
    await t.addVni(VNI);
    assert.equal(maps?.vniDevice(VNI), ifindex(dev));
    void t.setFdb(VNI, '02:00:00:00:00:0a', '10.79.0.7');
    void t.setFdb(VNI, '02:00:00:00:00:0b', '10.79.0.8');
    await t.idle();
    assert.deepEqual(kernelFdb(dev), ['02:00:00:00:00:0a 10.79.0.7 permanent', '02:00:00:00:00:0b 10.79.0.8 permanent']);
    void t.setFdb(VNI, '02:00:00:00:00:0a', '10.79.0.9');
    void t.removeFdb(VNI, '02:00:00:00:00:0b');
    await t.idle();
    assert.deepEqual(kernelFdb(dev), ['02:00:00:00:00:0a 10.79.0.9 permanent']);
    await t.removeFdb(VNI, '02:00:00:00:00:0a');
    assert.deepEqual(kernelFdb(dev), []);
    await assert.rejects(t.setFdb(VNI + 1, '02:00:00:00:00:0c', '10.79.0.7'), (e: Error & { code?: string }) => e.code === 'ERR_DRIVER', 'no device for that VNI');
    // a deleted VNE (ForgetVne): the device goes with its FDB, vn_vxdevs' entry first; again is quiet
    void t.setFdb(VNI, '02:00:00:00:00:0d', '10.79.0.7');
    await t.removeVni(VNI);
    assert.equal(exists(dev), false);
    assert.equal(maps?.vniDevice(VNI), undefined);
    await t.removeVni(VNI);
  });

  it('hands the switch a peer\'s VXLAN-GBP frame that no local port owns, behind its header (unknown; VNI, colour, generation and peer from the outer headers)', async () => {
    await ensureVniDevice(dp, maps as DataPathMaps, VNI, PORT);
    // The punt device is read from before the peer exists: the peer's device sends its own packets
    // (IPv6 neighbour discovery) as soon as it is up, and every one vn_rx punts must be read.
    const p = io.packetOpen(n.punt);
    fd = p.fd;
    reader = fdReader(p.fd, 0);
    const got = reader.got;
    const before = maps?.stats().rxPunt ?? 0;
    topo = new Topology('vnbr');
    topo.addNamespace('hb');
    sh('ip', ['link', 'add', 'vnbru0', 'type', 'veth', 'peer', 'name', 'vnbru1', 'netns', topo.ns('hb')]);
    sh('ip', ['addr', 'add', `${A_IP}/30`, 'dev', 'vnbru0']);
    sh('ip', ['link', 'set', 'vnbru0', 'up']);
    topo.exec('hb', 'ip', ['addr', 'add', `${B_IP}/30`, 'dev', 'vnbru1']);
    topo.exec('hb', 'ip', ['link', 'set', 'vnbru1', 'up']);
    topo.exec('hb', 'ip', ['link', 'add', 'vnbrx1', 'type', 'vxlan', 'id', String(VNI), 'remote', A_IP, 'local', B_IP, 'dstport', String(PORT), 'gbp']);
    topo.exec('hb', 'ip', ['addr', 'add', '192.168.79.2/24', 'dev', 'vnbrx1']);
    topo.exec('hb', 'ip', ['link', 'set', 'vnbrx1', 'up']);
    // a unicast frame to a MAC no port owns, marked: the peer's device sends the mark as GBP (D bit: generation 1, policy 7)
    topo.exec('hb', 'ip', ['neigh', 'replace', '192.168.79.1', 'lladdr', '02:79:00:00:00:01', 'dev', 'vnbrx1', 'nud', 'permanent']);
    topo.exec('hb', 'ping', ['-c', '1', '-W', '1', '-m', String(0x400007), '192.168.79.1'], { allowFail: true });
    const ping = await until('the peer\'s ICMP echo at the punt device', () => got.find((g) => g.frame.length > PUNT_HEADER_LEN + 14 && g.frame.readUInt16BE(PUNT_HEADER_LEN + 12) === 0x0800)?.frame, 5000);
    assert.deepEqual(decodePunt(ping), { vni: VNI, colour: 7, reason: 'unknown', generation: 1, peer: B_IP });
    assert.deepEqual(ping.subarray(PUNT_HEADER_LEN, PUNT_HEADER_LEN + 6), Buffer.from('027900000001', 'hex'), 'the frame whole after the header');
    // Every datagram vn_rx punted is read at the device, behind its header: the counter and the
    // frames read meet (the peer may still send its own packets — a retried ARP, IPv6 neighbour
    // discovery — so the two are compared once the reader has caught up, not at one instant).
    const read = (): number => got.filter((g) => decodePunt(g.frame) !== null).length;
    await until('every punted frame read at the device', () => ((maps?.stats().rxPunt ?? 0) - before === read() ? true : undefined), 5000);
    assert.equal((maps?.stats().rxPunt ?? 0) - before, read());
  });
});
