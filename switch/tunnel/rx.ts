/**
 * The tunnel's receive side: one batch of datagrams from the underlay, each checked in order
 * (known peer address, well-formed Geneve without a critical option it does not understand,
 * known VNI, peer part of that VNE, current generation) and dropped with a named counter at the first check it fails. Data frames go to
 * the bridge with the epoch of their header (and count toward the peer's per-epoch received
 * count); markers and acks go to the marker logic. Control packets never reach a port.
 *
 * A data frame's epoch counts toward the peer's received count at most one past the marker
 * window (topEpoch + MARKER_EPOCHS_AHEAD + 1; `dataEpochAhead` counts the frames clamped): no
 * marker this switch accepts can ask about a higher epoch, so the clamp changes no marker
 * check, and forged epochs cannot grow the per-epoch counts. The frame itself is forwarded
 * with its own epoch (and held at the port under the frame rules).
 *
 * With UDP GRO, entry i may stand for segs[i] datagrams (all with the same Geneve header, hence
 * one epoch) coalesced into one TCP super-frame; counts are per datagram (the sender's marker
 * counts the datagrams the kernel accepted, tx-batch.ts). The super-frame goes on whole with the
 * virtio_net_hdr GRO built: to the snapshot rules it is one frame, delivered, held and recorded
 * whole at a port with offloads (snapshot/delivery.ts), cut into segments at a port without.
 */
import type { Forwarding } from '../bridge/forwarding';
import { MARKER_EPOCHS_AHEAD } from '../options';
import { isSuperFrame, VNET_HDR_LEN } from '../offload';
import type { Markers } from '../snapshot/markers';
import type { SwitchCounters } from '../stats';
import type { Peer, Vne } from '../tables';
import { decode } from './geneve';
import type { TunnelTransport } from './transport';

export interface TunnelRxTables {
  peersByAddr: ReadonlyMap<number, Peer>;
  vnesByVni: ReadonlyMap<number, Vne>;
}

export function onTunnelBatch(t: TunnelTransport, count: number, tables: TunnelRxTables, counters: SwitchCounters, fwd: Forwarding, markers: Markers): void {
  const rx = t.rx;
  const slab = rx.slab;
  const offs = rx.offs;
  const segsOf = rx.segs;
  const meta = rx.meta;
  for (let i = 0; i < count; i++) {
    const off = offs !== undefined ? (offs[i] as number) : i * rx.slotSize + rx.headroom;
    const len = rx.lens[i] as number;
    const segs = segsOf !== undefined ? (segsOf[i] as number) : 1;
    counters.tunnelRx += segs;
    const peer = tables.peersByAddr.get((rx.ips[i] as number) * 65536 + (rx.ports[i] as number));
    if (peer === undefined) {
      counters.unknownPeer += segs;
      continue;
    }
    const d = decode(slab, off, len);
    if (d === null) {
      counters.malformed += segs;
      continue;
    }
    if (d.kind === 'unknownCritical') {
      counters.unknownCriticalOption += segs; // RFC 8926 §3.5: MUST drop
      continue;
    }
    const v = tables.vnesByVni.get(d.vni);
    if (v === undefined) {
      counters.unknownVni += segs;
      continue;
    }
    const vp = v.peers.get(peer.idx);
    if (vp === undefined) {
      counters.peerNotInVne += segs;
      continue;
    }
    switch (d.kind) {
      case 'data': {
        if (d.generation !== v.generation) {
          if (d.generation < v.generation) counters.oldGeneration += segs;
          else counters.newerGeneration += segs;
          break;
        }
        const ceiling = v.topEpoch + MARKER_EPOCHS_AHEAD + 1;
        if (d.epoch > ceiling) counters.dataEpochAhead += segs;
        vp.recv.inc(d.epoch > ceiling ? ceiling : d.epoch, segs);
        const m = isSuperFrame(meta, i * VNET_HDR_LEN) ? (meta as Buffer) : null;
        fwd.forward(v, null, peer.idx, slab, off + d.payloadOffset, len - d.payloadOffset, false, d.epoch, m, i * VNET_HDR_LEN);
        break;
      }
      case 'marker':
        markers.onMarker(v, vp, d.epoch, d.generation, d.count);
        break;
      case 'ack':
        markers.onAck(v, peer, d.epoch, d.generation);
        break;
      case 'foreign':
        counters.foreign += segs;
        break;
    }
  }
}
