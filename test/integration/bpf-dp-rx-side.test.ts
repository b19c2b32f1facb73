/**
 * The in-kernel data path's receiving side as the agent makes it (agent/bpf-dp/rx-side.ts), for
 * real: the VXLAN device (external, gbp, its own UDP port) with vn_rx on its ingress, the punt
 * pair, and their ifindexes in vn_cfg; reused when asked again, re-created on another port; and a
 * VXLAN-GBP frame from a peer host (a namespace across a veth underlay, an ordinary kernel VXLAN
 * device there) that no local port owns reaches the punt device behind its header, reason
 * unknown, naming the peer and the VNI. Pins vnit-bpfrx, links vnbr*, namespace vnbr-hb; the
 * receiving side's devices are removed with removeReceivingSide, all even when a test fails.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { loadDataPath, unloadDataPath, type LoadedDataPath } from '../../agent/bpf-dp/loader';
import { ensureReceivingSide, receivingSideNames, removeReceivingSide } from '../../agent/bpf-dp/rx-side';
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
const vxlanInfo = (dev: string): unknown => {
  const d = (JSON.parse(sh('ip', ['-d', '-j', 'link', 'show', 'dev', dev])) as { linkinfo: { info_kind: string; info_data: { external?: boolean; gbp?: boolean; port: number } } }[])[0]?.linkinfo;
  return { kind: d?.info_kind, external: d?.info_data.external, gbp: d?.info_data.gbp, port: d?.info_data.port };
};

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

  it('makes the VXLAN device (external, gbp, its port) with vn_rx and the punt pair, their ifindexes in vn_cfg', async () => {
    const rx = await ensureReceivingSide(dp, maps as DataPathMaps, PORT);
    assert.deepEqual(vxlanInfo(n.vxlan), { kind: 'vxlan', external: true, gbp: true, port: PORT });
    assert.match(sh('tc', ['filter', 'show', 'dev', n.vxlan, 'ingress']), /vn_rx/);
    assert.deepEqual(maps?.devices(), { vxlanIfindex: ifindex(n.vxlan), puntIfindex: ifindex(n.punt) });
    assert.deepEqual([rx.vxlanIfindex, rx.puntIfindex], [ifindex(n.vxlan), ifindex(n.punt)]);
    for (const d of [n.vxlan, n.punt, n.puntPeer]) assert.notEqual(fs.readFileSync(`/sys/class/net/${d}/operstate`, 'utf8').trim(), 'down', d);
  });

  it('reuses the devices when asked again (an adopting agent), and re-creates the VXLAN device for another port', async () => {
    const first = maps?.devices();
    const again = await ensureReceivingSide(dp, maps as DataPathMaps, PORT);
    assert.deepEqual({ vxlanIfindex: again.vxlanIfindex, puntIfindex: again.puntIfindex }, first);
    const moved = await ensureReceivingSide(dp, maps as DataPathMaps, PORT + 1);
    assert.notEqual(moved.vxlanIfindex, first?.vxlanIfindex);
    assert.equal(moved.puntIfindex, first?.puntIfindex);
    assert.deepEqual(vxlanInfo(n.vxlan), { kind: 'vxlan', external: true, gbp: true, port: PORT + 1 });
    assert.deepEqual(maps?.devices(), { vxlanIfindex: ifindex(n.vxlan), puntIfindex: ifindex(n.punt) });
    assert.match(sh('tc', ['filter', 'show', 'dev', n.vxlan, 'ingress']), /vn_rx/);
    await ensureReceivingSide(dp, maps as DataPathMaps, PORT);
  });

  it('hands the switch a peer\'s VXLAN-GBP frame that no local port owns, behind its header (unknown, VNI, peer)', async () => {
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
    const p = io.packetOpen(n.punt);
    fd = p.fd;
    reader = fdReader(p.fd, 0);
    const got = reader.got;
    topo.exec('hb', 'ping', ['-c', '1', '-W', '1', '192.168.79.1'], { allowFail: true }); // its ARP request crosses the tunnel
    const arp = await until('the peer\'s ARP request at the punt device', () => got.find((g) => g.frame.length > PUNT_HEADER_LEN + 14 && g.frame.readUInt16BE(PUNT_HEADER_LEN + 12) === 0x0806)?.frame, 5000);
    assert.deepEqual(decodePunt(arp), { vni: VNI, colour: 0, reason: 'unknown', generation: 0, peer: B_IP });
    assert.deepEqual(arp.subarray(PUNT_HEADER_LEN, PUNT_HEADER_LEN + 6), Buffer.alloc(6, 0xff), 'the frame whole after the header: a broadcast');
    // Every datagram vn_rx punted is read at the device, behind its header: the counter and the
    // frames read meet (the peer may still send its own packets — a retried ARP, IPv6 neighbour
    // discovery — so the two are compared once the reader has caught up, not at one instant).
    const read = (): number => got.filter((g) => decodePunt(g.frame) !== null).length;
    await until('every punted frame read at the device', () => (maps?.stats().rxPunt === read() ? true : undefined), 5000);
    assert.equal(maps?.stats().rxPunt, read());
  });
});
