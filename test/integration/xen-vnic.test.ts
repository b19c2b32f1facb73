/**
 * A Xen vNIC's dom0 plumbing for real (agent/drivers/xen/vnic-link.ts, network.ts openVnicPort),
 * without Xen: the vif is played by a veth end in the bridge (`vnxst0`, TSO on, no tx-gso-robust,
 * like netback's vif) whose peer `vnxsp0` a packet socket with PACKET_VNET_HDR reads as the guest.
 * Checked: vnicUp makes the bridge and the pair with their offload settings, a second vnicUp (an
 * adopting agent) keeps them, a half-made pair is made again, vnicDown removes everything and is
 * quiet when it is gone; a 64 KiB super-frame the switch writes reaches the vif whole (three
 * frames: GRO's super-frame and the two tail segments), where the same write through a TAP in
 * the bridge (the plumbing before) reaches it as MSS segments; a broadcast each way crosses once
 * and never comes back to its writer. Links are named `vnx?t0`/`vnxs?0` and removed after each test.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { openVnicPort, vethOf } from '../../agent/drivers/xen/network';
import { vnicDown, vnicUp } from '../../agent/drivers/xen/vnic-link';
import { TapPort } from '../../switch/port/fd-port';
import type { Port } from '../../switch/port/port';
import { makeFrame, parseFrame, vmMac } from '../support/frames';
import { sh } from '../support/netns';
import { superFrame } from '../support/tcp-frames';
import { until } from '../support/wait';

const BRIDGE = 'vnxbt0';
const V = vethOf(BRIDGE);
const VIF = 'vnxst0';
const GUEST = 'vnxsp0';
const OLD_TAP = 'vnxot0';
const exists = (l: string): boolean => fs.existsSync(`/sys/class/net/${l}`);
const ifindex = (l: string): number => Number(fs.readFileSync(`/sys/class/net/${l}/ifindex`, 'utf8'));
const master = (l: string): string => fs.realpathSync(`/sys/class/net/${l}/master`).split('/').pop() as string;
const txPackets = (l: string): number => Number(fs.readFileSync(`/sys/class/net/${l}/statistics/tx_packets`, 'utf8'));

/** Every frame a port reads, copied. */
function collect(p: Port): Buffer[] {
  const got: Buffer[] = [];
  p.open((n) => {
    for (let i = 0; i < n; i++) {
      const off = i * p.rx.slotSize + p.rx.headroom;
      got.push(Buffer.from(p.rx.slab.subarray(off, off + (p.rx.lens[i] as number))));
    }
  });
  return got;
}

const isTcp = (f: Buffer): boolean => f.length > 54 && f.readUInt16BE(12) === 0x0800 && f[23] === 6;

function cleanup(): void {
  for (const l of [V.sw, BRIDGE, VIF, OLD_TAP]) if (exists(l)) sh('ip', ['link', 'del', l], { allowFail: true });
}

describe('Xen vNIC plumbing: bridge + veth pair with GRO (no Xen)', function () {
  this.timeout(30_000);
  const closers: (() => void)[] = [];

  beforeEach(cleanup);
  afterEach(() => {
    for (const c of closers.splice(0)) c();
    cleanup();
  });

  /** The bridge with the pair, and the stand-in vif in it; the guest's packet socket on its peer. */
  async function plumb(): Promise<{ guest: Port; got: Buffer[] }> {
    await vnicUp(BRIDGE, V);
    sh('ip', ['link', 'add', VIF, 'type', 'veth', 'peer', 'name', GUEST]);
    for (const l of [VIF, GUEST, BRIDGE]) sh('sysctl', ['-qw', `net.ipv6.conf.${l}.disable_ipv6=1`], { allowFail: true });
    sh('ip', ['link', 'set', VIF, 'master', BRIDGE, 'up']);
    sh('ip', ['link', 'set', GUEST, 'up']);
    await until('the stand-in vif forwarding', () => fs.readFileSync(`/sys/class/net/${VIF}/brport/state`, 'utf8').trim() === '3', 5000);
    const guest = openVnicPort('guest', GUEST);
    closers.push(() => guest.close());
    return { guest, got: collect(guest) };
  }

  it('vnicUp makes the bridge and the pair (GRO on the bridge end, TSO off the switch end, no IPv6); again keeps them; a half-made pair is made again; vnicDown removes all', async () => {
    await vnicUp(BRIDGE, V);
    assert.equal(master(V.br), BRIDGE);
    assert.ok(!fs.existsSync(`/sys/class/net/${V.sw}/master`), 'the switch end is not in the bridge');
    assert.match(sh('ethtool', ['-k', V.br]), /^generic-receive-offload: on$/m);
    assert.match(sh('ethtool', ['-k', V.sw]), /^tcp-segmentation-offload: off$/m);
    for (const l of [V.sw, V.br, BRIDGE]) assert.equal(Number(fs.readFileSync(`/sys/class/net/${l}/flags`, 'utf8')) & 1, 1, `${l} administratively up`);
    if (fs.existsSync(`/proc/sys/net/ipv6/conf/${V.sw}`)) for (const l of [V.sw, V.br]) assert.equal(fs.readFileSync(`/proc/sys/net/ipv6/conf/${l}/disable_ipv6`, 'utf8').trim(), '1');
    const before = [ifindex(BRIDGE), ifindex(V.sw)];
    await vnicUp(BRIDGE, V);
    assert.deepEqual([ifindex(BRIDGE), ifindex(V.sw)], before, 'the same bridge and pair');
    sh('ethtool', ['-K', V.br, 'gro', 'off']);
    await vnicUp(BRIDGE, V);
    assert.notEqual(ifindex(V.sw), before[1], 'a pair without GRO is made again');
    assert.equal(ifindex(BRIDGE), before[0], 'in the same bridge');
    assert.equal(master(V.br), BRIDGE);
    await vnicDown(BRIDGE, V);
    assert.deepEqual([V.sw, V.br, BRIDGE].filter(exists), []);
    await vnicDown(BRIDGE, V);
  });

  it('a 64 KiB super-frame the switch writes reaches the vif whole: three frames, the payload exact', async () => {
    const { got } = await plumb();
    const sw = openVnicPort('sw', V.sw);
    closers.push(() => sw.close());
    const sf = superFrame({ payload: 65535 - 20 - 32, mss: 1348 });
    const tx0 = txPackets(VIF);
    assert.equal(sw.send([sf.frame], 1, sf.meta), 1);
    await until('the whole payload at the guest', () => got.filter(isTcp).reduce((n, f) => n + f.length - sf.hdrs, 0) >= sf.payload.length, 5000);
    const tcp = got.filter(isTcp);
    assert.equal(tcp.length, 3, `frames at the guest: ${tcp.map((f) => f.length).join(' ')}`);
    assert.equal((tcp[0] as Buffer).length, sf.hdrs + (Math.ceil(sf.payload.length / 1348) - 2) * 1348, 'the first n-2 segments as one super-frame');
    assert.deepEqual(Buffer.concat(tcp.map((f) => f.subarray(sf.hdrs))), sf.payload);
    // The bridge's own multicast (an IPv6 MLD report of the bridge device) may cross the vif too:
    // every frame it transmits reaches the guest's end of the pair, so count those apart.
    const other = got.filter((f) => !isTcp(f)).length;
    assert.equal(txPackets(VIF) - tx0 - other, 3, 'the vif transmitted the super-frame as three frames');
  });

  it('before: the same super-frame written to a TAP in the bridge reaches the vif as MSS segments (SKB_GSO_DODGY, no tx-gso-robust)', async () => {
    const { got } = await plumb();
    const old = new TapPort('old', OLD_TAP, undefined, { offload: true });
    closers.push(() => old.close());
    sh('ip', ['link', 'set', OLD_TAP, 'master', BRIDGE, 'up']);
    await until('the TAP forwarding', () => fs.readFileSync(`/sys/class/net/${OLD_TAP}/brport/state`, 'utf8').trim() === '3', 5000);
    const sf = superFrame({ payload: 65535 - 20 - 32, mss: 1348 });
    assert.equal(old.send([sf.frame], 1, sf.meta), 1);
    await until('the whole payload at the guest', () => got.filter(isTcp).reduce((n, f) => n + f.length - sf.hdrs, 0) >= sf.payload.length, 5000);
    assert.equal(got.filter(isTcp).length, Math.ceil(sf.payload.length / 1348));
  });

  it('a broadcast crosses once each way and never returns to its writer', async () => {
    const { guest, got } = await plumb();
    const sw = openVnicPort('sw', V.sw);
    closers.push(() => sw.close());
    const atSwitch = collect(sw);
    const fromSwitch = makeFrame({ dst: 0xffff_ffff_ffff, src: vmMac(1), sender: 1, seq: 1, epoch: 0 }, 100);
    const fromGuest = makeFrame({ dst: 0xffff_ffff_ffff, src: vmMac(2), sender: 2, seq: 2, epoch: 0 }, 100);
    assert.equal(sw.send([fromSwitch], 1, Buffer.alloc(10)), 1);
    assert.equal(guest.send([fromGuest], 1, Buffer.alloc(10)), 1);
    const test = (xs: Buffer[]): number[] => xs.map(parseFrame).filter((f) => f !== null).map((f) => f.sender);
    await until('each broadcast at the other side', () => test(got).includes(1) && test(atSwitch).includes(2), 5000);
    // A third frame each way, written after: once it is there, anything looping would be too.
    assert.equal(sw.send([makeFrame({ dst: vmMac(2), src: vmMac(1), sender: 1, seq: 3, epoch: 0 }, 100)], 1, Buffer.alloc(10)), 1);
    assert.equal(guest.send([makeFrame({ dst: vmMac(1), src: vmMac(2), sender: 2, seq: 4, epoch: 0 }, 100)], 1, Buffer.alloc(10)), 1);
    await until('the unicasts', () => test(got).length === 2 && test(atSwitch).length === 2, 5000);
    assert.deepEqual(test(got), [1, 1], 'the guest got the switch\'s frames once, never its own');
    assert.deepEqual(test(atSwitch), [2, 2], 'the switch got the guest\'s frames once, never its own');
  });
});
