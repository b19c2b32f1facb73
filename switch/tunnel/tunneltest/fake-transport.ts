/**
 * An in-memory underlay for fast unit tests without root (wireguard-go's conn/bindtest):
 * FakeUdpNetwork carries datagrams between FakeTunnelTransport endpoints and holds them in
 * flight until the test delivers, drops or reorders them (or delivers them automatically on the
 * next event-loop turn with `auto`). Reception is batched (`batchSize`, default 8) so the
 * switch's batch paths run in tests. Only tests and benches import this module.
 *
 * With `offload` every endpoint models UDP GSO on send and a GRO that always gets a whole burst:
 * a TCP super-frame the switch hands to sendGso travels as one in-flight entry standing for the
 * datagrams the kernel would make of it (`segs`, counted by the real segmentation code), and is
 * received as one coalesced entry with its virtio_net_hdr — so it reaches the far switch whole,
 * marker counts stay per datagram, and dropping the entry loses all its datagrams at once.
 */
import { isSuperFrame, VNET_HDR_LEN } from '../../offload';
import { nativeIo } from '../../native-io';
import { DATA_HEADER_LEN } from '../geneve';
import type { TunnelTransport, UdpRxBatch } from '../transport';
import { newUdpRxBatch } from '../transport';

export interface Datagram {
  fromIp: number;
  fromPort: number;
  toIp: number;
  toPort: number;
  data: Buffer;
  /** offload: the virtio_net_hdr of a super-frame entry. */
  meta?: Buffer;
  /** offload: the datagrams this entry stands for (default 1). */
  segs?: number;
}

export class FakeUdpNetwork {
  readonly inFlight: Datagram[] = [];
  private readonly endpoints = new Map<number, FakeTunnelTransport>();
  private scheduled = false;
  delivered = 0;
  dropped = 0;

  constructor(private readonly opts: { auto?: boolean; batchSize?: number; offload?: boolean } = {}) {}

  endpoint(ip: number, port: number): FakeTunnelTransport {
    const t = new FakeTunnelTransport(this, ip, port, this.opts.batchSize ?? 8, this.opts.offload === true);
    this.endpoints.set(ip * 65536 + port, t);
    return t;
  }

  transmit(d: Datagram): void {
    this.inFlight.push(d);
    if (this.opts.auto && !this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.deliverAll();
      });
    }
  }

  /** Deliver the datagrams at the given in-flight indices (in that order), batched per receiver. */
  deliver(indices: readonly number[]): void {
    const picked = indices.map((i) => this.inFlight[i]).filter((d): d is Datagram => d !== undefined);
    const set = new Set(indices);
    const rest = this.inFlight.filter((_, i) => !set.has(i));
    this.inFlight.length = 0;
    this.inFlight.push(...rest);
    const byDest = new Map<number, Datagram[]>();
    for (const d of picked) {
      const k = d.toIp * 65536 + d.toPort;
      const l = byDest.get(k) ?? [];
      l.push(d);
      byDest.set(k, l);
    }
    for (const [k, list] of byDest) {
      const ep = this.endpoints.get(k);
      if (!ep) {
        this.dropped += list.length;
        continue;
      }
      ep.receive(list);
      this.delivered += list.length;
    }
  }

  deliverAll(): void {
    while (this.inFlight.length > 0) this.deliver(this.inFlight.map((_, i) => i));
  }

  drop(indices: readonly number[]): void {
    const set = new Set(indices);
    const rest = this.inFlight.filter((_, i) => !set.has(i));
    this.dropped += this.inFlight.length - rest.length;
    this.inFlight.length = 0;
    this.inFlight.push(...rest);
  }
}

export class FakeTunnelTransport implements TunnelTransport {
  readonly rx: UdpRxBatch;
  private onBatch: ((n: number) => void) | undefined;
  closed = false;

  constructor(
    private readonly net: FakeUdpNetwork,
    readonly ip: number,
    readonly localPort: number,
    batchSize: number,
    /** GSO on send, GRO on receive (see the header). */
    readonly gso = false,
  ) {
    this.rx = newUdpRxBatch(batchSize, gso ? 65536 + 256 : 2048);
    if (gso) {
      this.rx.offs = new Uint32Array(batchSize);
      this.rx.segs = new Uint32Array(batchSize);
      this.rx.meta = Buffer.alloc(batchSize * VNET_HDR_LEN);
    }
  }

  sendGso(dgrams: readonly Buffer[], ips: Uint32Array, ports: Uint32Array, count: number, metas: Buffer, segs: Uint32Array, maxFrame: number): number {
    if (this.closed) return 0;
    for (let i = 0; i < count; i++) {
      const d = dgrams[i] as Buffer;
      let meta: Buffer | undefined;
      let n = 1;
      if (isSuperFrame(metas, i * VNET_HDR_LEN)) {
        meta = Buffer.from(metas.subarray(i * VNET_HDR_LEN, (i + 1) * VNET_HDR_LEN));
        n = nativeIo().gsoSegment(d, meta, 0, maxFrame, DATA_HEADER_LEN)?.length ?? 0;
      }
      segs[i] = n;
      if (n === 0) continue; // the kernel would refuse it: nothing went out
      this.net.transmit({ fromIp: this.ip, fromPort: this.localPort, toIp: ips[i] as number, toPort: ports[i] as number, data: Buffer.from(d), ...(meta ? { meta, segs: n } : {}) });
    }
    return count;
  }

  open(onBatch: (n: number) => void): void {
    this.onBatch = onBatch;
  }

  send(dgrams: readonly Buffer[], ips: Uint32Array, ports: Uint32Array, count: number): number {
    if (this.closed) return 0;
    for (let i = 0; i < count; i++) {
      this.net.transmit({ fromIp: this.ip, fromPort: this.localPort, toIp: ips[i] as number, toPort: ports[i] as number, data: Buffer.from(dgrams[i] as Buffer) });
    }
    return count;
  }

  receive(list: readonly Datagram[]): void {
    if (!this.onBatch || this.closed) return;
    const max = this.rx.lens.length;
    for (let start = 0; start < list.length; start += max) {
      const chunk = list.slice(start, start + max);
      chunk.forEach((d, i) => {
        d.data.copy(this.rx.slab, i * this.rx.slotSize);
        this.rx.lens[i] = d.data.length;
        if (this.gso) {
          (this.rx.offs as Uint32Array)[i] = i * this.rx.slotSize;
          (this.rx.segs as Uint32Array)[i] = d.segs ?? 1;
          const m = this.rx.meta as Buffer;
          m.fill(0, i * VNET_HDR_LEN, (i + 1) * VNET_HDR_LEN);
          d.meta?.copy(m, i * VNET_HDR_LEN);
        }
        this.rx.ips[i] = d.fromIp;
        this.rx.ports[i] = d.fromPort;
      });
      this.onBatch(chunk.length);
    }
  }

  close(): void {
    this.closed = true;
  }
}
