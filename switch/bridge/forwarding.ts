/**
 * The learning bridge of a VNE: where a frame's fate is decided. One forwarding function for
 * both ingresses — a local port, or a peer switch through the tunnel:
 *
 *   learn   the source MAC behind the ingress (never a multicast source; fdb.ts);
 *   look up the destination: a local port → the snapshot rules at that port (delivery.ts);
 *           a peer → the tunnel (tx-batch.ts), unless the frame came from a tunnel (split
 *           horizon: `tunnelHairpinDrops`); the ingress port itself → dropped;
 *   flood   unknown unicast, multicast, broadcast: to every local port but the ingress, and to
 *           the VNE's flood peers of that ingress (every peer from a port, none from a tunnel;
 *           the lists are computed on configuration change, tables.ts).
 *
 * FDB owners: a local port's id (>= 0), or -(peer index + 1) for a peer switch.
 * A frame read from a port carries that port's epoch; one from a tunnel carries the epoch in
 * its Geneve header. Super-frames (m !== null) are forwarded whole, once.
 */
import type { Delivery } from '../snapshot/delivery';
import type { SwitchCounters } from '../stats';
import type { LocalPort, Vne } from '../tables';
import { DATA_HEADER_LEN } from '../tunnel/geneve';
import type { TunnelTx } from '../tunnel/tx-batch';
import { isSuperFrame, VNET_HDR_LEN } from '../offload';
import { BROADCAST_MAC, isGroupMac, macAt } from './mac';

export class Forwarding {
  /** The FDB's clock (seconds), advanced by the switch's tick. */
  fdbTick = 0;

  constructor(
    private readonly counters: SwitchCounters,
    private readonly delivery: Delivery,
    private readonly tunnel: TunnelTx,
    private readonly portsById: readonly (LocalPort | undefined)[],
    private readonly innerFrameMax: number,
  ) {}

  /**
   * Forward one frame of VNE v. `from` is the ingress port, or null for a frame from peer
   * `peerIdx` through the tunnel. inPlace: the frame has room for a Geneve header in front.
   */
  forward(v: Vne, from: LocalPort | null, peerIdx: number, slab: Buffer, off: number, len: number, inPlace: boolean, epoch: number, m: Buffer | null, moff: number): void {
    const owner = from !== null ? from.id : -(peerIdx + 1);
    const dst = macAt(slab, off);
    const src = macAt(slab, off + 6);
    if (!isGroupMac(src)) v.fdb.learn(src, owner, this.fdbTick);
    const entry = dst === BROADCAST_MAC || isGroupMac(dst) ? undefined : v.fdb.lookup(dst);
    if (entry !== undefined) {
      const to = entry.owner;
      if (to >= 0) {
        if (to !== owner) {
          const dp = this.portsById[to];
          if (dp) this.delivery.deliver(dp, slab, off, len, epoch, m, moff);
        }
      } else if (from === null) {
        // Split horizon: never forward from one tunnel into another — except to the new host of
        // a VM that migrated away from here, for frames sent before their sender learnt it.
        const vp = entry.relay === true && to !== owner ? v.peers.get(-to - 1) : undefined;
        if (vp) {
          this.counters.movedRelayed++;
          this.tunnel.sendData(v.vni, v.generation, vp, slab, off, len, inPlace, epoch, m, moff);
        } else this.counters.tunnelHairpinDrops++;
      } else {
        const vp = v.peers.get(-to - 1);
        if (vp) this.tunnel.sendData(v.vni, v.generation, vp, slab, off, len, inPlace, epoch, m, moff);
      }
      return;
    }
    this.counters.floods++;
    for (const dp of v.ports) if (dp !== from) this.delivery.deliver(dp, slab, off, len, epoch, m, moff);
    const peers = from === null ? v.floodPeersFromTunnel : v.floodPeersFromPort;
    for (const vp of peers) this.tunnel.sendData(v.vni, v.generation, vp, slab, off, len, inPlace, epoch, m, moff);
  }

  /** A batch read from local port lp (its epoch stamps every frame); ends with one flush. */
  onPortBatch(lp: LocalPort, count: number, flush: () => void): void {
    const rx = lp.port.rx;
    const slab = rx.slab;
    const meta = rx.meta;
    const v = lp.vne;
    const epoch = lp.epoch;
    const max = this.innerFrameMax;
    const inPlace = rx.headroom >= DATA_HEADER_LEN;
    for (let i = 0; i < count; i++) {
      const off = i * rx.slotSize + rx.headroom;
      const len = rx.lens[i] as number;
      // A TCP super-frame from a TAP with offloads: one forwarding decision for all its
      // segments, which share its epoch; it is segmented wherever it meets no offloads.
      const m = isSuperFrame(meta, i * VNET_HDR_LEN) ? (meta as Buffer) : null;
      lp.stats.rxFrames++;
      if (m !== null) lp.stats.superFramesIn++;
      if (len < 14) {
        lp.stats.runts++;
        continue;
      }
      if (len > max && m === null && v.peers.size > 0) this.counters.oversize++;
      this.forward(v, lp, -1, slab, off, len, inPlace, epoch, m, i * VNET_HDR_LEN);
    }
    flush();
  }
}
