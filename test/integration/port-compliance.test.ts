/**
 * The Port compliance suite (test/support/compliance/port.ts) over the kernel-backed ports: a
 * TAP the switch owns (with and without offloads) and a packet socket on an existing interface
 * (one end of a veth pair), and a packet socket with PACKET_VNET_HDR on a TAP whose character
 * side is held with IFF_VNET_HDR by the addon's tapOpen, standing in for QEMU's vnet_hdr=on
 * (that one also passes the super-frame checks). The VM side is a packet socket on the TAP's
 * interface, the veth's other end, or the TAP's fd. Links are named `vncp*`, have IPv6 off, and
 * are removed after each test.
 */
import * as fs from 'node:fs';
import { PacketPort, TapPort } from '../../switch/port/fd-port';
import { createVmVeth, removeVmVeth } from '../../agent/drivers/qemu/vm-veth';
import { nativeIo, VNET_HDR_LEN } from '../../switch/native-io';
import type { Port } from '../../switch/port/port';
import { newRxBatch, OFFLOAD_SLOT_SIZE } from '../../switch/port/port';
import { describePortCompliance, describeSuperFrameCompliance, PortUnderTest, VmSide, VnetVmSide } from '../support/compliance/port';
import { superFrame, tcpChecksumOk } from '../support/tcp-frames';
import { sh } from '../support/netns';
import { until } from '../support/wait';

const linkExists = (l: string): boolean => fs.existsSync(`/sys/class/net/${l}`);

function up(ifname: string): void {
  sh('sysctl', ['-qw', `net.ipv6.conf.${ifname}.disable_ipv6=1`], { allowFail: true });
  sh('ip', ['link', 'set', ifname, 'up']);
}

async function operUp(...links: string[]): Promise<void> {
  // A TAP reports "unknown" (it has no carrier detection); a veth end reports "up".
  await until(`${links.join(', ')} operationally up`, () => links.every((l) => ['up', 'unknown'].includes(fs.readFileSync(`/sys/class/net/${l}/operstate`, 'utf8').trim())), 5000);
}

/** A packet socket on `ifname` playing the VM: what it sends enters the port, what it reads left it. */
function packetVm(ifname: string): { vm: VmSide; close(): void } {
  const p: Port = new PacketPort('vm', ifname);
  const received: Buffer[] = [];
  p.open((n) => {
    for (let i = 0; i < n; i++) {
      const off = i * p.rx.slotSize + p.rx.headroom;
      received.push(Buffer.from(p.rx.slab.subarray(off, off + (p.rx.lens[i] as number))));
    }
  });
  return {
    vm: {
      write: (frames) => {
        const n = p.send(frames, frames.length);
        return n === frames.length ? Promise.resolve() : Promise.reject(new Error(`the VM side wrote ${n} of ${frames.length} frames`));
      },
      received: () => received,
    },
    close: () => p.close(),
  };
}

function tap(offload: boolean): () => Promise<PortUnderTest> {
  return async () => {
    const port = new TapPort('t', 'vncpt0', 8, { offload });
    try {
      up('vncpt0');
      await operUp('vncpt0');
      const side = packetVm('vncpt0');
      return { port, vm: side.vm, dispose: () => side.close() };
    } catch (e) {
      port.close();
      throw e;
    }
  };
}

async function packet(): Promise<PortUnderTest> {
  if (linkExists('vncpa0')) sh('ip', ['link', 'del', 'vncpa0']);
  sh('ip', ['link', 'add', 'vncpa0', 'type', 'veth', 'peer', 'name', 'vncpb0']);
  for (const l of ['vncpa0', 'vncpb0']) {
    // FACTS: without this the packet socket sees 64 KiB GSO frames with partial checksums.
    sh('ethtool', ['-K', l, 'tx', 'off', 'tso', 'off', 'gso', 'off', 'gro', 'off', 'rxvlan', 'off', 'txvlan', 'off']);
    up(l);
  }
  await operUp('vncpa0', 'vncpb0');
  const port = new PacketPort('p', 'vncpa0', 8);
  const side = packetVm('vncpb0');
  return {
    port,
    vm: side.vm,
    dispose: () => {
      side.close();
      if (linkExists('vncpa0')) sh('ip', ['link', 'del', 'vncpa0'], { allowFail: true });
    },
  };
}

/**
 * QEMU's side of a vnet_hdr=on TAP, played by the addon: the TAP fd opened with IFF_VNET_HDR and
 * TUNSETOFFLOAD(CSUM|TSO4|TSO6) (what QEMU does for a guest that negotiated TSO). Frames are
 * read and written raw, header included, so the test sees exactly what the kernel gives QEMU.
 */
function qemuTapSide(ifname: string): { vm: VnetVmSide; close(): void } {
  const io = nativeIo();
  const r = io.tapOpen(ifname, { vnetHdr: true });
  if (r.offloads !== true) {
    io.close(r.fd);
    throw new Error(`TUNSETOFFLOAD failed on ${ifname}`);
  }
  const rx = newRxBatch(8, OFFLOAD_SLOT_SIZE);
  const got: { frame: Buffer; meta: Buffer }[] = [];
  const unused = new Uint32Array(1);
  const poller = io.createPoller(r.fd, 'frames', rx.slab, rx.slotSize, rx.headroom, 8, rx.lens, unused, unused, (n) => {
    for (let i = 0; i < n; i++) {
      const off = i * rx.slotSize + rx.headroom;
      const b = rx.slab.subarray(off, off + (rx.lens[i] as number));
      got.push({ meta: Buffer.from(b.subarray(0, VNET_HDR_LEN)), frame: Buffer.from(b.subarray(VNET_HDR_LEN)) });
    }
  });
  poller.start();
  const write = (frames: readonly Buffer[], metas?: readonly Buffer[]): Promise<void> => {
    const raw = frames.map((f, i) => Buffer.concat([metas?.[i] ?? Buffer.alloc(VNET_HDR_LEN), f]));
    const n = io.writeFrames(r.fd, raw, raw.length);
    return n === raw.length ? Promise.resolve() : Promise.reject(new Error(`the QEMU side wrote ${n} of ${raw.length} frames`));
  };
  return {
    vm: { write, received: () => got },
    close: () => {
      poller.stop();
      io.close(r.fd);
    },
  };
}

/** A PacketPort with offloads on vncpq0, a TAP held by qemuTapSide (QEMU's TAP with vnet_hdr=on). */
async function qemuTap(): Promise<{ port: PacketPort; vm: VnetVmSide; dispose(): void }> {
  const side = qemuTapSide('vncpq0');
  try {
    up('vncpq0');
    await operUp('vncpq0');
    const port = new PacketPort('q', 'vncpq0', 8, { offload: true });
    return { port, vm: side.vm, dispose: () => side.close() };
  } catch (e) {
    side.close();
    throw e;
  }
}

/**
 * The same TAP, but the switch writes through the veth pair with GRO that the QEMU driver puts
 * in front of a tap-vnet VM's TAP (createVmVeth): vncpq1 behind vncpq1's pair vncpv1/vncpg1.
 */
async function qemuTapViaVeth(): Promise<{ port: PacketPort; vm: VnetVmSide; dispose(): Promise<void> }> {
  const side = qemuTapSide('vncpn1');
  try {
    up('vncpn1');
    await operUp('vncpn1');
    const v = await createVmVeth('vncpn1');
    await operUp(v.sw, v.gro);
    const port = new PacketPort('q', 'vncpn1', 8, { offload: true, writeIfname: v.sw });
    return {
      port,
      vm: side.vm,
      dispose: async () => {
        side.close();
        await removeVmVeth('vncpn1');
      },
    };
  } catch (e) {
    side.close();
    await removeVmVeth('vncpn1');
    throw e;
  }
}

describePortCompliance('tap', tap(false));
describePortCompliance('tap with offloads (vnet_hdr)', tap(true));
describePortCompliance('packet (veth end)', packet);
describePortCompliance('packet with offloads (PACKET_VNET_HDR) on a vnet_hdr TAP', async () => {
  const q = await qemuTap();
  const frames = (): Buffer[] => q.vm.received().map((r) => r.frame);
  const vm: VmSide = { write: (f) => q.vm.write(f, []), received: frames };
  return { port: q.port, vm, dispose: q.dispose };
}, { maxFrame: 1514 });
describeSuperFrameCompliance('packet with offloads (PACKET_VNET_HDR) on a vnet_hdr TAP', qemuTap, { build: superFrame, checksumOk: tcpChecksumOk, segmentsToVm: true });
describePortCompliance('packet with offloads on a vnet_hdr TAP, writing through a veth pair with GRO', async () => {
  const q = await qemuTapViaVeth();
  const vm: VmSide = { write: (f) => q.vm.write(f, []), received: () => q.vm.received().map((r) => r.frame) };
  return { port: q.port, vm, dispose: q.dispose };
});
describeSuperFrameCompliance('packet with offloads on a vnet_hdr TAP, writing through a veth pair with GRO', qemuTapViaVeth, { build: superFrame, checksumOk: tcpChecksumOk, groToVm: true });
