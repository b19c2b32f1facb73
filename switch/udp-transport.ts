/**
 * The tunnel's UDP socket through the native addon: recvmmsg fills the rx slab with many
 * datagrams per wakeup, sendmmsg sends a whole batch in one system call.
 */
import { nativeIo, Poller } from './native-io';
import type { TunnelTransport, UdpRxBatch } from './tunnel-transport';
import { newUdpRxBatch } from './tunnel-transport';

export class UdpTransport implements TunnelTransport {
  readonly rx: UdpRxBatch;
  readonly localPort: number;
  private readonly fd: number;
  private poller: Poller | undefined;
  private closed = false;

  constructor(address: string, port: number, opts: { maxBatch?: number; slotSize?: number } = {}) {
    const { fd, port: bound } = nativeIo().udpOpen(address, port);
    this.fd = fd;
    this.localPort = bound;
    this.rx = newUdpRxBatch(opts.maxBatch ?? 64, opts.slotSize ?? 2048);
  }

  open(onBatch: (count: number) => void): void {
    const r = this.rx;
    this.poller = nativeIo().createPoller(this.fd, 'udp', r.slab, r.slotSize, r.headroom, r.lens.length, r.lens, r.ips, r.ports, onBatch);
    this.poller.start();
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
