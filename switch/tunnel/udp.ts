/**
 * The tunnel's UDP socket through the native addon: recvmmsg fills the rx slab with many
 * datagrams per wakeup, sendmmsg sends a whole batch in one system call.
 */
import { nativeIo, Poller, VNET_HDR_LEN } from '../native-io';
import type { TunnelTransport, UdpRxBatch } from './transport';
import { newUdpRxBatch } from './transport';

export class UdpTransport implements TunnelTransport {
  readonly rx: UdpRxBatch;
  readonly localPort: number;
  private readonly fd: number;
  private poller: Poller | undefined;
  private closed = false;

  /** UDP_GRO is on: received entries may be coalesced TCP super-frames (rx.offs/segs/meta). */
  readonly gro: boolean;
  /** Offloads requested: super-frames are segmented here and sent with UDP_SEGMENT. */
  readonly gso: boolean;

  /**
   * opts.offload: UDP GRO on receive (64 KiB slots; entries per batch up to maxBatch * 64) and
   * segmentation + UDP GSO on send (sendGso). Without it, one datagram per slot, as before.
   */
  constructor(address: string, port: number, opts: { maxBatch?: number; slotSize?: number; offload?: boolean } = {}) {
    const r = nativeIo().udpOpen(address, port, { gro: opts.offload === true });
    this.fd = r.fd;
    this.localPort = r.port;
    this.gro = r.gro === true;
    this.gso = opts.offload === true;
    if (this.gro) {
      const maxBatch = opts.maxBatch ?? 64;
      const entries = maxBatch * 64;
      const rx = newUdpRxBatch(maxBatch, Math.max(opts.slotSize ?? 0, 65536));
      rx.lens = new Uint32Array(entries);
      rx.ips = new Uint32Array(entries);
      rx.ports = new Uint32Array(entries);
      rx.offs = new Uint32Array(entries);
      rx.segs = new Uint32Array(entries);
      rx.meta = Buffer.alloc(entries * VNET_HDR_LEN);
      this.rx = rx;
    } else {
      this.rx = newUdpRxBatch(opts.maxBatch ?? 64, opts.slotSize ?? 2048);
    }
  }

  open(onBatch: (count: number) => void): void {
    const r = this.rx;
    const maxBatch = r.slab.length / r.slotSize;
    this.poller = this.gro
      ? nativeIo().createPoller(this.fd, 'udp', r.slab, r.slotSize, r.headroom, maxBatch, r.lens, r.ips, r.ports, onBatch, {
          gro: true,
          meta: r.meta as Buffer,
          offs: r.offs as Uint32Array,
          segs: r.segs as Uint32Array,
        })
      : nativeIo().createPoller(this.fd, 'udp', r.slab, r.slotSize, r.headroom, r.lens.length, r.lens, r.ips, r.ports, onBatch);
    this.poller.start();
  }

  sendGso(dgrams: readonly Buffer[], ips: Uint32Array, ports: Uint32Array, count: number, metas: Buffer, segs: Uint32Array, maxFrame: number): number {
    if (this.closed) return 0;
    return nativeIo().udpSend(this.fd, dgrams, ips, ports, count, metas, segs, maxFrame);
  }

  send(dgrams: readonly Buffer[], ips: Uint32Array, ports: Uint32Array, count: number): number {
    if (this.closed) return 0;
    return nativeIo().udpSend(this.fd, dgrams, ips, ports, count);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller?.stop();
    nativeIo().close(this.fd);
  }
}
