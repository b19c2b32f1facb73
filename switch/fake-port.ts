/**
 * In-memory fakes for fast unit tests without root (wireguard-go's tuntest/bindtest), with a
 * configurable batch size so the batch paths of the switch run in tests (batch size > 1).
 *
 *  - fakePortPair(): a switch-side Port and the VM side that writes frames into it and sees
 *    what the switch delivers. The VM's frames queue until pump()ed (or automatically on the
 *    next event-loop turn with `auto`), then reach the switch in batches of `batchSize`.
 *  - FakeUdpNetwork + FakeTunnelTransport: datagrams between tunnel endpoints held in flight
 *    until the test delivers, drops or reorders them (or automatically with `auto`).
 */
import type { Port, RxBatch } from './port';
import { newRxBatch } from './port';
import type { TunnelTransport, UdpRxBatch } from './tunnel-transport';
import { newUdpRxBatch } from './tunnel-transport';

export interface FakePortOptions {
  batchSize?: number;
  /** Deliver the VM's frames to the switch automatically on the next turn (default false). */
  auto?: boolean;
  /** Frames accepted per send() call before the rest are dropped (default unlimited). */
  txCapacity?: number;
}

export class FakeVm {
  /** Frames the switch delivered to this VM, in order (copies). */
  readonly received: Buffer[] = [];
  onFrame: ((f: Buffer) => void) | undefined;
  constructor(private readonly port: FakePort) {}

  /** The VM writes a frame to its NIC. */
  send(frame: Buffer): void {
    this.port.queueFromVm(Buffer.from(frame));
  }

  /** Frames written and not yet read by the switch. */
  get pending(): number {
    return this.port.pendingCount;
  }

  /** Hand one batch to the switch now; returns its size. */
  pump(): number {
    return this.port.pumpOne();
  }

  pumpAll(): number {
    let n = 0;
    let k: number;
    while ((k = this.port.pumpOne()) > 0) n += k;
    return n;
  }
}

export class FakePort implements Port {
  readonly kind = 'fake' as const;
  readonly rx: RxBatch;
  readonly vm: FakeVm;
  private pending: Buffer[] = [];
  private onBatch: ((n: number) => void) | undefined;
  private scheduled = false;
  closed = false;
  readonly batchSizes: number[] = [];

  constructor(
    readonly name: string,
    private readonly opts: FakePortOptions = {},
  ) {
    this.rx = newRxBatch(opts.batchSize ?? 8);
    this.vm = new FakeVm(this);
  }

  get pendingCount(): number {
    return this.pending.length;
  }

  open(onBatch: (n: number) => void): void {
    this.onBatch = onBatch;
  }

  queueFromVm(frame: Buffer): void {
    this.pending.push(frame);
    if (this.opts.auto && !this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.vm.pumpAll();
      });
    }
  }

  pumpOne(): number {
    if (!this.onBatch || this.closed || this.pending.length === 0) return 0;
    const max = this.rx.lens.length;
    const n = Math.min(max, this.pending.length);
    const batch = this.pending.splice(0, n);
    batch.forEach((f, i) => {
      const off = i * this.rx.slotSize + this.rx.headroom;
      f.copy(this.rx.slab, off);
      this.rx.lens[i] = f.length;
    });
    this.batchSizes.push(n);
    this.onBatch(n);
    return n;
  }

  drain(): Promise<number> {
    return Promise.resolve(this.vm.pumpAll());
  }

  send(frames: readonly Buffer[], count: number): number {
    if (this.closed) return 0;
    const n = Math.min(count, this.opts.txCapacity ?? Infinity);
    for (let i = 0; i < n; i++) {
      const f = Buffer.from(frames[i] as Buffer);
      this.vm.received.push(f);
      this.vm.onFrame?.(f);
    }
    return n;
  }

  close(): void {
    this.closed = true;
  }
}

export function fakePortPair(name: string, opts: FakePortOptions = {}): { port: FakePort; vm: FakeVm } {
  const port = new FakePort(name, opts);
  return { port, vm: port.vm };
}

export interface Datagram {
  fromIp: number;
  fromPort: number;
  toIp: number;
  toPort: number;
  data: Buffer;
}

export class FakeUdpNetwork {
  readonly inFlight: Datagram[] = [];
  private readonly endpoints = new Map<number, FakeTunnelTransport>();
  private scheduled = false;
  delivered = 0;
  dropped = 0;

  constructor(private readonly opts: { auto?: boolean; batchSize?: number } = {}) {}

  endpoint(ip: number, port: number): FakeTunnelTransport {
    const t = new FakeTunnelTransport(this, ip, port, this.opts.batchSize ?? 8);
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
  ) {
    this.rx = newUdpRxBatch(batchSize, 2048);
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
