/**
 * The Port compliance suite (test/support/compliance/port.ts) over the kernel-backed ports: a
 * TAP the switch owns (with and without offloads) and a packet socket on an existing interface
 * (one end of a veth pair). The VM side is a packet socket on the TAP's interface, or on the
 * veth's other end. Links are named `vncp*`, have IPv6 off, and are removed after each test.
 */
import * as fs from 'node:fs';
import { PacketPort, TapPort } from '../../switch/port/fd-port';
import type { Port } from '../../switch/port/port';
import { describePortCompliance, PortUnderTest, VmSide } from '../support/compliance/port';
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

describePortCompliance('tap', tap(false));
describePortCompliance('tap with offloads (vnet_hdr)', tap(true));
describePortCompliance('packet (veth end)', packet);
