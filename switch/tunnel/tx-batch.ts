/**
 * The tunnel's transmit batch: every datagram the switch sends during one batch of work (data
 * frames with their Geneve header, markers, acks) is queued here and leaves in one sendmmsg
 * (or one UDP_SEGMENT send per super-frame with offloads) at the end of the batch.
 *
 * Marker counts (DESIGN.md): only what the kernel accepted counts toward a peer's per-epoch
 * `sent` count, because the receiver can only match what went out. A super-frame counts as the
 * datagrams it became.
 *
 * Errors: a datagram the kernel refuses (EPERM from a firewall rule, ENETUNREACH while a route
 * is gone, ...) makes the native send throw with `sent` = the entries before it. That one is
 * dropped like a lost packet and the rest of the batch goes on: a send error must never take
 * the switch (and the agent with its VMs) down.
 */
import { segmentFrame, VNET_HDR_LEN } from '../offload';
import type { SwitchCounters } from '../stats';
import type { Peer, VnePeer } from '../tables';
import { DATA_HEADER_LEN, encodeData, writeDataHeader } from './geneve';
import type { TunnelTransport } from './transport';

export class TunnelTx {
  transport: TunnelTransport | undefined;
  private readonly cap = 4096;
  private readonly tx: Buffer[] = [];
  private readonly ips = new Uint32Array(this.cap);
  private readonly ports = new Uint32Array(this.cap);
  private readonly vps: (VnePeer | null)[] = [];
  private readonly epochs = new Uint32Array(this.cap);
  /** virtio_net_hdr per queued datagram (flags and gso_type zeroed for ordinary ones). */
  private readonly meta = Buffer.alloc(this.cap * VNET_HDR_LEN);
  /** Datagrams the kernel accepted per queued entry (a super-frame is many). */
  private readonly segs = new Uint32Array(this.cap);
  private gsoCount = 0;
  private count = 0;

  constructor(
    private readonly counters: SwitchCounters,
    /** The largest inner Ethernet frame the underlay carries without fragmentation. */
    private readonly innerFrameMax: number,
  ) {}

  /**
   * Queue a data frame of VNE (vni, generation) for peer vp, stamped with `epoch`. inPlace: the
   * frame has DATA_HEADER_LEN bytes of headroom in its slab, where the header is written.
   */
  sendData(vni: number, generation: number, vp: VnePeer, slab: Buffer, off: number, len: number, inPlace: boolean, epoch: number, m: Buffer | null, moff: number): void {
    if (m !== null && this.transport?.gso !== true) {
      // No segmentation offload on this tunnel: send the segments one datagram each.
      const segs = segmentFrame(slab.subarray(off, off + len), m, moff, this.innerFrameMax);
      if (segs === null) {
        this.counters.gsoErrors++;
        return;
      }
      for (const sg of segs) this.queue(encodeData(vni, epoch, generation, sg), vp.peer, vp, epoch, null, 0);
      return;
    }
    let dgram: Buffer;
    if (inPlace) {
      writeDataHeader(slab, off - DATA_HEADER_LEN, vni, epoch, generation);
      dgram = slab.subarray(off - DATA_HEADER_LEN, off + len);
    } else {
      dgram = encodeData(vni, epoch, generation, slab.subarray(off, off + len));
    }
    this.queue(dgram, vp.peer, vp, epoch, m, moff);
  }

  /** Queue one datagram; vp (data frames only) gets it counted under `epoch` once it is sent. */
  queue(dgram: Buffer, peer: Peer, vp: VnePeer | null, epoch: number, m: Buffer | null, moff: number): void {
    if (this.transport === undefined) {
      this.counters.tunnelTxDrops++;
      return;
    }
    if (this.count === this.cap) this.flush();
    const i = this.count++;
    this.tx[i] = dgram;
    this.ips[i] = peer.ip;
    this.ports[i] = peer.port;
    this.vps[i] = vp;
    this.epochs[i] = epoch;
    const at = i * VNET_HDR_LEN;
    if (m !== null) {
      m.copy(this.meta, at, moff, moff + VNET_HDR_LEN);
      this.gsoCount++;
    } else {
      this.meta[at] = 0;
      this.meta[at + 1] = 0;
    }
  }

  flush(): void {
    const n = this.count;
    const t = this.transport;
    if (n === 0 || t === undefined) return;
    let off = 0;
    while (off < n) {
      const whole = off === 0;
      const tx = whole ? this.tx : this.tx.slice(off);
      const ips = whole ? this.ips : this.ips.subarray(off);
      const ports = whole ? this.ports : this.ports.subarray(off);
      let sent: number;
      let failed = false;
      const gso = this.gsoCount > 0 && t.sendGso !== undefined;
      const segs = whole ? this.segs : this.segs.subarray(off);
      try {
        sent = gso
          ? (t.sendGso as NonNullable<TunnelTransport['sendGso']>)(tx, ips, ports, n - off, whole ? this.meta : this.meta.subarray(off * VNET_HDR_LEN), segs, this.innerFrameMax)
          : t.send(tx, ips, ports, n - off);
      } catch (e) {
        const at = (e as { sent?: unknown }).sent;
        if ((e as { code?: unknown }).code !== 'ERR_NATIVE_IO' || typeof at !== 'number') throw e;
        sent = Math.min(at, n - off);
        failed = true;
        this.counters.tunnelTxErrors++;
      }
      if (gso) {
        // Every datagram the kernel accepted counts toward markers (a super-frame is many),
        // including those of a super-frame cut short by an error.
        let dgrams = 0;
        const upto = failed ? Math.min(n, off + sent + 1) : n;
        for (let i = off; i < upto; i++) {
          const k = segs[i - off] as number;
          if (k === 0) continue;
          dgrams += k;
          this.vps[i]?.sent.inc(this.epochs[i] as number, k);
        }
        this.counters.tunnelTx += dgrams;
      } else {
        this.counters.tunnelTx += sent;
        // Only what the kernel accepted counts toward markers: the receiver can match it.
        for (let i = off; i < off + sent; i++) this.vps[i]?.sent.inc(this.epochs[i] as number);
      }
      if (!failed) {
        this.counters.tunnelTxDrops += n - off - sent;
        break;
      }
      this.counters.tunnelTxDrops++;
      off += sent + 1;
    }
    this.tx.length = 0;
    this.vps.length = 0;
    this.count = 0;
    this.gsoCount = 0;
  }
}
