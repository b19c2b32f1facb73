/**
 * An in-memory Port for fast unit tests without root (wireguard-go's tun/tuntest), with a
 * configurable batch size so the batch paths of the switch run in tests (batch size > 1).
 *
 * fakePortPair(): a switch-side Port and the VM side that writes frames into it and sees what
 * the switch delivers. The VM's frames queue until pump()ed (or automatically on the next
 * event-loop turn with `auto`), then reach the switch in batches of `batchSize`. Only tests,
 * benches and the simulated driver import this module.
 */
import { VNET_HDR_LEN } from '../../offload';
import type { Port, RxBatch } from '../port';
import { newRxBatch } from '../port';

export interface FakePortOptions {
  batchSize?: number;
  /** Deliver the VM's frames to the switch automatically on the next turn (default false). */
  auto?: boolean;
  /** Frames accepted per send() call before the rest are dropped (default unlimited). */
  txCapacity?: number;
  /** The port takes super-frames: frames carry a virtio_net_hdr both ways (default false). */
  offload?: boolean;
}

export class FakeVm {
  /** Frames the switch delivered to this VM, in order (copies). */
  readonly received: Buffer[] = [];
  /** With offload: the virtio_net_hdr of each received frame (copies), in order. */
  readonly receivedMeta: Buffer[] = [];
  onFrame: ((f: Buffer) => void) | undefined;
  constructor(private readonly port: FakePort) {}

  /** The VM writes a frame to its NIC (with offload, optionally with its virtio_net_hdr). */
  send(frame: Buffer, meta?: Buffer): void {
    this.port.queueFromVm(Buffer.from(frame), meta);
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
  private pendingMeta: (Buffer | undefined)[] = [];
  private onBatch: ((n: number) => void) | undefined;
  private scheduled = false;
  closed = false;
  readonly batchSizes: number[] = [];

  constructor(
    readonly name: string,
    private readonly opts: FakePortOptions = {},
  ) {
    this.rx = newRxBatch(opts.batchSize ?? 8);
    if (opts.offload === true) this.rx.meta = Buffer.alloc(this.rx.lens.length * VNET_HDR_LEN);
    this.vm = new FakeVm(this);
  }

  get offload(): boolean {
    return this.opts.offload === true;
  }

  get pendingCount(): number {
    return this.pending.length;
  }

  open(onBatch: (n: number) => void): void {
    this.onBatch = onBatch;
  }

  queueFromVm(frame: Buffer, meta?: Buffer): void {
    this.pending.push(frame);
    this.pendingMeta.push(meta);
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
    const metas = this.pendingMeta.splice(0, n);
    batch.forEach((f, i) => {
      const off = i * this.rx.slotSize + this.rx.headroom;
      f.copy(this.rx.slab, off);
      this.rx.lens[i] = f.length;
      const rm = this.rx.meta;
      if (rm !== undefined) {
        rm.fill(0, i * VNET_HDR_LEN, (i + 1) * VNET_HDR_LEN);
        metas[i]?.copy(rm, i * VNET_HDR_LEN, 0, VNET_HDR_LEN);
      }
    });
    this.batchSizes.push(n);
    this.onBatch(n);
    return n;
  }

  drain(): Promise<number> {
    return Promise.resolve(this.vm.pumpAll());
  }

  send(frames: readonly Buffer[], count: number, metas?: Buffer | null): number {
    if (this.closed) return 0;
    const n = Math.min(count, this.opts.txCapacity ?? Infinity);
    for (let i = 0; i < n; i++) {
      const f = Buffer.from(frames[i] as Buffer);
      this.vm.received.push(f);
      if (this.opts.offload === true) this.vm.receivedMeta.push(metas ? Buffer.from(metas.subarray(i * VNET_HDR_LEN, (i + 1) * VNET_HDR_LEN)) : Buffer.alloc(VNET_HDR_LEN));
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
