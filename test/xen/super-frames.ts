/**
 * Runs INSIDE the test bed's dom0 (dom0-e2e.ts): what crosses a Xen vNIC's plumbing
 * (agent/drivers/xen/vnic-link.ts) as super-frames, for docs/xen.md's network facts. For a
 * window it reads, with its own packet sockets (PACKET_VNET_HDR, incoming frames only), the
 * guest's frames as they leave netback (`vifD.0`) and the switch's frames as GRO on the pair's
 * bridge end rebuilt them (`vnxg…`), and samples the vif's transmit counters (frames netback
 * queued toward the guest). A frame longer than LONG bytes is a super-frame (MTU 1500 here).
 */
import * as fs from 'node:fs';
import { PacketPort } from '../../switch/port/fd-port';
import { sleep } from '../support/wait';

const LONG = 1600;

export interface Seen {
  frames: number;
  superFrames: number;
  maxLen: number;
}

export interface SuperFrameReport {
  /** Incoming on vifD.0: what the guest sent, as netback built it. */
  fromGuest: Seen;
  /** Incoming on the pair's bridge end: what the switch wrote, after GRO. */
  towardGuest: Seen;
  /** vifD.0 transmit counters over the window (toward the guest). */
  vifTx: { packets: number; bytes: number; bytesPerPacket: number };
}

function watch(ifname: string): { seen: Seen; close: () => void } {
  const seen: Seen = { frames: 0, superFrames: 0, maxLen: 0 };
  const p = new PacketPort(`probe-${ifname}`, ifname, undefined, { offload: true });
  p.open((n) => {
    for (let i = 0; i < n; i++) {
      const len = p.rx.lens[i] as number;
      seen.frames++;
      if (len > LONG) seen.superFrames++;
      seen.maxLen = Math.max(seen.maxLen, len);
    }
  });
  return { seen, close: () => p.close() };
}

const stat = (ifname: string, what: string): number => Number(fs.readFileSync(`/sys/class/net/${ifname}/statistics/${what}`, 'utf8'));

/** Watch `vif` and the bridge end `br` for `windowMs` (a measurement window, not a wait for an event). */
export async function superFrames(vif: string, br: string, windowMs: number): Promise<SuperFrameReport> {
  const a = watch(vif);
  const b = watch(br);
  const p0 = stat(vif, 'tx_packets');
  const b0 = stat(vif, 'tx_bytes');
  try {
    await sleep(windowMs);
  } finally {
    a.close();
    b.close();
  }
  const packets = stat(vif, 'tx_packets') - p0;
  const bytes = stat(vif, 'tx_bytes') - b0;
  return { fromGuest: a.seen, towardGuest: b.seen, vifTx: { packets, bytes, bytesPerPacket: packets ? Math.round(bytes / packets) : 0 } };
}
