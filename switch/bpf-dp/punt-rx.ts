/**
 * The switch's reading of the in-kernel data path's punt device (vr<hash>, agent/bpf-dp/rx-side.ts):
 * the frames from peers that vn_rx did not carry to a VM, each behind a 16-byte struct vn_punt
 * (switch/bpf-dp/layout.ts decodePuntAt), handed to the bridge exactly as a tunnel frame from that
 * peer with that colour (switch/tunnel/rx.ts does the same for the switch's own Geneve).
 *
 * Why it exists: vn_rx carries a frame to a VM only when the destination port is on the data
 * path, its fast flag is on and the frame's colour is the port's epoch. Everything else — late
 * (colour below the port's epoch: sent before the sender's cut, received after this port's),
 * early (above), unknown (no local data path port for that MAC, or the port being cut) — must
 * meet the snapshot rules in the switch: late frames delivered and recorded as channel state,
 * early ones held until the port's cut, unknown ones forwarded by the switch's FDB. The bridge
 * applies those rules at the destination port from the frame's epoch alone (delivery.ts), so the
 * punt reason is not needed to decide: it only says why the kernel gave up.
 *
 * The colour is the low 16 bits of the sender's port epoch. It is widened against the VNE's
 * highest epoch here (topEpoch): ports of neighbouring hosts differ by at most one epoch during
 * a snapshot, so the signed 16-bit difference is exact across the wrap (as in vn_rx).
 *
 * Counts: vn_rx counts only the frames it carries (vn_counts, read into the markers through
 * KernelCounts); a punted frame is counted here, in the peer's per-epoch received count, by the
 * datagrams it was on the wire (a GRO super-frame: its payload over gso_size), so the marker
 * check sees every datagram once — in the kernel's counts or in the switch's.
 *
 * Generation: the header carries the generation (modulo 4) the frame came with; a frame of
 * another generation than the VNE's here is dropped, as the switch's Geneve check drops one
 * (a restore in place moved the VNE on while the old generation's frames were in flight).
 *
 * Guarantees: a frame without a valid header, of an unknown VNI, of another generation, or from
 * an address that is no peer of that VNE is dropped and counted (malformed, unknownVni,
 * otherGeneration, unknownPeer); a super-frame
 * goes on whole with its virtio_net_hdr made relative to the inner frame (csum_start and hdr_len
 * less the header). Nothing here reaches a port but through the bridge's rules.
 */
import type { Forwarding } from '../bridge/forwarding';
import { MARKER_EPOCHS_AHEAD } from '../options';
import { isSuperFrame, VNET_HDR_LEN } from '../offload';
import type { RxBatch } from '../port/port';
import type { Vne, VnePeer } from '../tables';
import { decodePuntAt, genBits, PUNT_HEADER_LEN } from './layout';

export interface PuntCounters {
  /** Frames read from the punt device. */
  frames: number;
  /** Of those, by vn_punt's reason. */
  late: number;
  early: number;
  unknown: number;
  malformed: number;
  unknownVni: number;
  unknownPeer: number;
  /** Dropped: sent under another generation of the VNE (modulo 4) than this switch's. */
  otherGeneration: number;
}

export const newPuntCounters = (): PuntCounters => ({ frames: 0, late: 0, early: 0, unknown: 0, malformed: 0, unknownVni: 0, unknownPeer: 0, otherGeneration: 0 });

/** A 16-bit colour widened to the epoch nearest `ref` (module comment). */
export function widenColour(colour: number, ref: number): number {
  const d = (((colour - (ref & 0xffff)) & 0xffff) << 16) >> 16;
  return Math.max(0, ref + d);
}

/** How many datagrams a GRO super-frame was (its TCP payload over gso_size); 1 for a frame. */
export function datagramsOf(frame: Buffer, off: number, len: number, meta: Buffer | null, moff: number): number {
  if (meta === null) return 1;
  const gsoSize = meta.readUInt16LE(moff + 4);
  const csumStart = meta.readUInt16LE(moff + 6);
  if (gsoSize === 0 || csumStart + 13 > len) return 1;
  const payload = len - csumStart - ((frame[off + csumStart + 12] as number) >> 4) * 4;
  return payload > 0 ? Math.ceil(payload / gsoSize) : 1;
}

function peerOf(v: Vne, ip: number): VnePeer | undefined {
  for (const vp of v.peers.values()) if (vp.peer.ip === ip) return vp;
  return undefined;
}

/** Hand one batch read from the punt device to the bridge (module comment). */
export function onPuntBatch(rx: RxBatch, count: number, vnesByVni: ReadonlyMap<number, Vne>, fwd: Forwarding, c: PuntCounters): void {
  const slab = rx.slab;
  const meta = rx.meta;
  for (let i = 0; i < count; i++) {
    const off = i * rx.slotSize + rx.headroom;
    const len = rx.lens[i] as number;
    c.frames++;
    const h = len >= PUNT_HEADER_LEN + 14 ? decodePuntAt(slab, off, len) : null;
    if (h === null || h.reason === 'error') {
      c.malformed++;
      continue;
    }
    c[h.reason]++;
    const v = vnesByVni.get(h.vni);
    if (v === undefined) {
      c.unknownVni++;
      continue;
    }
    if (h.generation !== genBits(v.generation)) {
      c.otherGeneration++;
      continue;
    }
    const vp = peerOf(v, h.peerIp);
    if (vp === undefined) {
      c.unknownPeer++;
      continue;
    }
    const moff = i * VNET_HDR_LEN;
    const m = isSuperFrame(meta, moff) ? (meta as Buffer) : null;
    if (m !== null) {
      // The header made relative to the inner frame.
      if ((m[moff] as number) & 1) m.writeUInt16LE(m.readUInt16LE(moff + 6) - PUNT_HEADER_LEN, moff + 6);
      const hl = m.readUInt16LE(moff + 2);
      m.writeUInt16LE(hl > PUNT_HEADER_LEN ? hl - PUNT_HEADER_LEN : 0, moff + 2);
    }
    const inner = off + PUNT_HEADER_LEN;
    const innerLen = len - PUNT_HEADER_LEN;
    const epoch = widenColour(h.colour, v.topEpoch);
    const ceiling = v.topEpoch + MARKER_EPOCHS_AHEAD + 1;
    vp.recv.inc(epoch > ceiling ? ceiling : epoch, datagramsOf(slab, inner, innerLen, m, moff));
    fwd.forward(v, null, vp.peer.idx, slab, inner, innerLen, false, epoch, m, moff);
  }
}
