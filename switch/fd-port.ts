/**
 * Ports backed by a file descriptor the native addon reads in batches: a TAP device the switch
 * owns (TapPort) and a packet socket on an existing interface (PacketPort: a QEMU TAP held by
 * QEMU, a Xen vifD.N). Both read many frames per event-loop wakeup into the port's slab.
 *
 * drain() reads synchronously until the fd would block: after the VM is paused, that is
 * exactly the set of frames it wrote before the pause.
 */
import { VnsnapError } from '../proto/errors';
import { nativeIo, Poller } from './native-io';
import type { Port, PortKind, RxBatch } from './port';
import { DEFAULT_MAX_BATCH, newRxBatch } from './port';

/** The most frames one drain reads. */
export const DRAIN_MAX_FRAMES = 2048;

class FdPort implements Port {
  readonly rx: RxBatch;
  private poller: Poller | undefined;
  private fd: number;
  private readonly unused = new Uint32Array(1);
  writeErrors = 0;

  constructor(
    readonly name: string,
    readonly kind: PortKind,
    fd: number,
    maxBatch = DEFAULT_MAX_BATCH,
  ) {
    this.fd = fd;
    this.rx = newRxBatch(maxBatch);
  }

  open(onBatch: (count: number) => void): void {
    if (this.fd < 0) throw new VnsnapError('ERR_STATE', `port ${this.name} is closed`);
    const io = nativeIo();
    this.poller = io.createPoller(this.fd, 'frames', this.rx.slab, this.rx.slotSize, this.rx.headroom, this.rx.lens.length, this.rx.lens, this.unused, this.unused, onBatch);
    this.poller.start();
  }

  drain(): Promise<number> {
    let n = 0;
    if (this.poller) {
      let k: number;
      // Bounded by what a paused VM can have queued (a TAP queues at most its txqueuelen,
      // 1000 frames by default): a VM that keeps running cannot keep the switch here.
      for (let i = 0; n < DRAIN_MAX_FRAMES && (k = this.poller.poll()) > 0; i++) n += k;
    }
    return Promise.resolve(n);
  }

  send(frames: readonly Buffer[], count: number): number {
    if (this.fd < 0 || count === 0) return 0;
    try {
      return nativeIo().writeFrames(this.fd, frames, count);
    } catch (e) {
      // EIO while the interface is down, ENXIO/EBADF when it is gone: the frames are dropped
      // (and counted by the caller), the switch keeps running.
      this.writeErrors++;
      const written = (e as { written?: unknown }).written;
      return typeof written === 'number' ? written : 0;
    }
  }

  close(): void {
    this.poller?.stop();
    this.poller = undefined;
    if (this.fd >= 0) nativeIo().close(this.fd);
    this.fd = -1;
  }
}

/** A TAP device owned by the switch; its interface side goes to the VM (a bridge, a namespace). */
export class TapPort extends FdPort {
  readonly ifname: string;
  constructor(name: string, ifname: string, maxBatch?: number) {
    const { fd, name: actual } = nativeIo().tapOpen(ifname);
    super(name, 'tap', fd, maxBatch);
    this.ifname = actual;
  }
}

/** A packet socket on an existing interface (turn the interface's offloads off first). */
export class PacketPort extends FdPort {
  readonly ifname: string;
  constructor(name: string, ifname: string, maxBatch?: number) {
    const { fd } = nativeIo().packetOpen(ifname);
    super(name, 'packet', fd, maxBatch);
    this.ifname = ifname;
  }
}
