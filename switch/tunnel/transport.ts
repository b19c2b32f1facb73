/**
 * The tunnel's UDP side (wireguard-go's conn/): one socket serving every peer switch.
 *
 * Like ports, it is batched: `open(onBatch)` delivers many datagrams per wakeup in `rx`
 * (datagram i at `i * slotSize + headroom`, source in ips[i]/ports[i], IPv4 host order), and
 * `send` takes a batch with one destination per datagram (sendmmsg in the native transport).
 */
import type { RxBatch } from '../port/port';

export interface UdpRxBatch extends RxBatch {
  ips: Uint32Array;
  ports: Uint32Array;
  /**
   * With UDP GRO (offloads): entry i is at slab[offs[i], offs[i] + lens[i]) and stands for
   * segs[i] datagrams that carried the same Geneve header (one epoch); when segs[i] > 1 it is a
   * coalesced TCP super-frame whose virtio_net_hdr is at meta[10i]. Absent: entry i is datagram i
   * at i * slotSize + headroom.
   */
  offs?: Uint32Array;
  segs?: Uint32Array;
}

export interface TunnelTransport {
  readonly rx: UdpRxBatch;
  /** The bound local UDP port. */
  readonly localPort: number;
  open(onBatch: (count: number) => void): void;
  /** Send dgrams[i] to ips[i]:ports[i] for i < count; returns how many were sent. */
  send(dgrams: readonly Buffer[], ips: Uint32Array, ports: Uint32Array, count: number): number;
  /** sendGso may be used (offloads on). */
  readonly gso?: boolean;
  /**
   * Offloads (optional): like send, but entry i with a GSO virtio_net_hdr at metas[10i] is a
   * Geneve header + TCP super-frame, cut into inner frames of at most maxFrame bytes and sent
   * as several datagrams; segs[i] receives how many datagrams of entry i went out. Returns how
   * many entries went out entirely.
   */
  sendGso?(dgrams: readonly Buffer[], ips: Uint32Array, ports: Uint32Array, count: number, metas: Buffer, segs: Uint32Array, maxFrame: number): number;
  close(): void;
}

export function newUdpRxBatch(maxBatch: number, slotSize: number): UdpRxBatch {
  return {
    slab: Buffer.alloc(maxBatch * slotSize),
    slotSize,
    headroom: 0,
    lens: new Uint32Array(maxBatch),
    ips: new Uint32Array(maxBatch),
    ports: new Uint32Array(maxBatch),
  };
}

export function ipv4ToInt(ip: string): number {
  const parts = ip.split('.');
  if (parts.length !== 4) throw new Error(`not an IPv4 address: ${ip}`);
  let v = 0;
  for (const p of parts) {
    const n = Number(p);
    if (!/^\d{1,3}$/.test(p) || n > 255) throw new Error(`not an IPv4 address: ${ip}`);
    v = v * 256 + n;
  }
  return v;
}

export function intToIpv4(v: number): string {
  return [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join('.');
}
