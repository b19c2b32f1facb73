/**
 * The Port compliance suite (test/support/compliance/port.ts) over a `nic: 'tap-bpf'` port as the
 * QEMU driver opens it (openTapPort): the in-kernel data path's vn_tx on a vnet_hdr TAP held as
 * QEMU holds it, the port reading and writing the TAP's veth end `v`. With the fast path off
 * (the switch does not fill the FDB yet) every frame the VM sends must reach the switch through
 * the program's punt, whole and in order, super-frames with their header; what the switch writes
 * reaches the VM as on tap-vnet; the data path comes with its receiving side (VXLAN device with
 * vn_rx, punt device, both in vn_cfg). Links are named vncb*, the pins vnit-tapbpf-<pid> (and
 * the receiving side's devices named from it); all removed. The TAP gets no IPv6 from openTapPort.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { unloadDataPath } from '../../agent/bpf-dp/loader';
import { receivingSideNames, removeReceivingSide } from '../../agent/bpf-dp/rx-side';
import { openTapPort, removeVmVeth, vethNames } from '../../agent/drivers/qemu/vm-veth';
import { DataPathMaps } from '../../switch/bpf-dp/maps';
import type { PacketPort } from '../../switch/port/fd-port';
import { describePortCompliance, describeSuperFrameCompliance, type VnetVmSide } from '../support/compliance/port';
import { makeFrame, vmMac } from '../support/frames';
import { sh } from '../support/netns';
import { superFrame, tcpChecksumOk } from '../support/tcp-frames';
import { vnetTap } from '../support/vnet-tap';
import { until } from '../support/wait';

const TAP = 'vncbn0';
const PREFIX = `vnit-tapbpf-${process.pid}`;

async function tapBpfPort(): Promise<{ port: PacketPort; vm: VnetVmSide; dispose(): Promise<void> }> {
  const side = vnetTap(TAP);
  try {
    sh('sysctl', ['-qw', `net.ipv6.conf.${TAP}.disable_ipv6=1`], { allowFail: true });
    sh('ip', ['link', 'set', TAP, 'up']);
    const port = await openTapPort('q', TAP, 'tap-bpf', PREFIX);
    const v = vethNames(TAP);
    await until('the TAP and its pair up', () => [TAP, v.sw, v.gro].every((l) => ['up', 'unknown'].includes(fs.readFileSync(`/sys/class/net/${l}/operstate`, 'utf8').trim())), 5000);
    return {
      port,
      vm: side.vm,
      dispose: async () => {
        side.close();
        await removeVmVeth(TAP);
      },
    };
  } catch (e) {
    side.close();
    await removeVmVeth(TAP);
    throw e;
  }
}

describe('nic tap-bpf port', function () {
  this.timeout(30_000);
  after(async () => {
    await removeReceivingSide(PREFIX);
    await unloadDataPath(PREFIX);
  });

  it('reads what the program punts: the VM\'s frames reach the port through v, each counted once by vn_tx', async () => {
    const t = await tapBpfPort();
    const maps = new DataPathMaps(`/sys/fs/bpf/${PREFIX}/maps`);
    try {
      assert.match(sh('tc', ['filter', 'show', 'dev', TAP, 'ingress']), /vn_tx/);
      const rx = receivingSideNames(PREFIX);
      const ifindex = (d: string): number => Number(fs.readFileSync(`/sys/class/net/${d}/ifindex`, 'utf8').trim());
      assert.deepEqual(maps.devices(), { vxlanIfindex: 0, puntIfindex: ifindex(rx.punt) }, 'the receiving side is set up with the data path');
      const got: Buffer[] = [];
      t.port.open((n) => {
        for (let i = 0; i < n; i++) {
          const off = i * t.port.rx.slotSize + t.port.rx.headroom;
          got.push(Buffer.from(t.port.rx.slab.subarray(off, off + (t.port.rx.lens[i] as number))));
        }
      });
      const before = maps.stats().txPunt;
      const frames = [1, 2, 3].map((seq) => makeFrame({ dst: vmMac(2), src: vmMac(1), sender: 1, seq, epoch: 0 }, 100));
      await t.vm.write(frames, []);
      await until('3 frames at the port', () => got.length >= 3, 5000);
      assert.deepEqual(got, frames);
      assert.equal(maps.stats().txPunt - before, 3);
    } finally {
      maps.close();
      t.port.close();
      await t.dispose();
    }
  });

  it('takes IPv6 off the TAP: no link-local address of the host in the VM\'s network', async function () {
    if (!fs.existsSync('/proc/sys/net/ipv6')) this.skip(); // a kernel without IPv6
    const tap = 'vncbn1';
    sh('ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap']);
    try {
      sh('ip', ['link', 'set', tap, 'up']);
      assert.equal(fs.readFileSync(`/proc/sys/net/ipv6/conf/${tap}/disable_ipv6`, 'utf8').trim(), '0', 'a new TAP has IPv6 on');
      const port = await openTapPort('q1', tap, 'tap-bpf', PREFIX);
      port.close();
      assert.equal(fs.readFileSync(`/proc/sys/net/ipv6/conf/${tap}/disable_ipv6`, 'utf8').trim(), '1');
      assert.equal(sh('ip', ['-6', 'addr', 'show', 'dev', tap]).trim(), '');
    } finally {
      await removeVmVeth(tap);
      sh('ip', ['link', 'del', tap], { allowFail: true });
    }
  });

  describePortCompliance('packet on a tap-bpf TAP (read through the program\'s punt into v)', async () => {
    const q = await tapBpfPort();
    return { port: q.port, vm: { write: (f) => q.vm.write(f, []), received: () => q.vm.received().map((r) => r.frame) }, dispose: q.dispose };
  });
  describeSuperFrameCompliance('packet on a tap-bpf TAP (read through the program\'s punt into v)', tapBpfPort, { build: superFrame, checksumOk: tcpChecksumOk, groToVm: true });
});
