/**
 * The restore gate: a VM port seen through the agent that forwards everything, and while held
 * keeps the frames the switch delivers (copies, bounded by maxBytes; beyond it frames are dropped
 * and counted) instead of passing them to the VM. RestorePrepare attaches restored VMs behind a
 * held gate; RestoreResume injects each port's recorded channel state with the gate open, then
 * delivers what was held, in order, so frames from peers that resumed first cannot overtake the
 * channel state.
 *
 * Metadata (offload) travels as 10 bytes per frame, the switch's per-frame metadata stride.
 * The switch's own gated ports will replace this class (openGate), after which it goes away.
 */
import type { Port, RxBatch } from '../switch/port/port';

/** Bytes of offload metadata per frame in a batch's metadata buffer. */
const META_STRIDE = 10;

/**
 * A VM port seen through the agent: forwards everything, and while `held` keeps the frames the
 * switch delivers (copies, bounded) instead of passing them to the VM — the restore gate.
 */
export class RestoreGatePort implements Port {
  private held: { frame: Buffer; meta: Buffer | null }[] | null = null;
  private heldBytes = 0;
  private passthrough = false;
  drops = 0;

  constructor(
    readonly inner: Port,
    private readonly maxBytes: number,
  ) {}

  get name(): string {
    return this.inner.name;
  }
  get kind(): Port['kind'] {
    return this.inner.kind;
  }
  get rx(): RxBatch {
    return this.inner.rx;
  }
  get offload(): boolean | undefined {
    return this.inner.offload;
  }
  get holding(): boolean {
    return this.held !== null;
  }

  open(onBatch: (count: number) => void): void {
    this.inner.open(onBatch);
  }
  drain(): Promise<number> {
    return this.inner.drain();
  }
  close(): void {
    this.held = null;
    this.inner.close();
  }

  hold(): void {
    this.held ??= [];
  }

  send(frames: readonly Buffer[], count: number, metas?: Buffer | null): number {
    if (this.held === null || this.passthrough) return this.inner.send(frames, count, metas);
    for (let i = 0; i < count; i++) {
      const f = frames[i] as Buffer;
      if (this.heldBytes + f.length > this.maxBytes) {
        this.drops++;
        continue;
      }
      const meta = metas ? Buffer.from(metas.subarray(i * META_STRIDE, i * META_STRIDE + META_STRIDE)) : null;
      this.held.push({ frame: Buffer.from(f), meta });
      this.heldBytes += f.length;
    }
    return count;
  }

  /** Run `first` with the gate open (the injection), then deliver what was held, then stay open. */
  release(first?: () => void): void {
    const held = this.held ?? [];
    this.passthrough = true;
    try {
      first?.();
    } finally {
      this.passthrough = false;
    }
    this.held = null;
    this.heldBytes = 0;
    if (held.length === 0) return;
    const frames = held.map((h) => h.frame);
    const anyMeta = held.some((h) => h.meta !== null);
    let metas: Buffer | null = null;
    if (anyMeta) {
      metas = Buffer.alloc(held.length * META_STRIDE);
      held.forEach((h, i) => h.meta?.copy(metas as Buffer, i * META_STRIDE));
    }
    this.inner.send(frames, frames.length, metas);
  }
}
