/**
 * Ports backed by a file descriptor the native addon reads in batches: a TAP device the switch
 * owns (TapPort) and a packet socket on an existing interface (PacketPort: a QEMU TAP held by
 * QEMU, a Xen vifD.N). Both read many frames per event-loop wakeup into the port's slab.
 *
 * drain() reads synchronously until the fd would block: after the VM is paused, that is
 * exactly the set of frames it wrote before the pause.
 *
 * send() writes a batch and never throws: a frame the kernel refuses on its own (too long for
 * the device, a header it rejects) is dropped alone and counted in txRefused, the rest of the
 * batch goes on; an error of the socket or the device (gone, down, closed) ends the batch and
 * counts in writeErrors. Either way the frames not written are the caller's drops.
 */
import { VnsnapError } from '../../proto/core/errors';
import { nativeIo, Poller, VNET_HDR_LEN } from '../native-io';
import type { Port, PortKind, RxBatch } from './port';
import { DEFAULT_HEADROOM, DEFAULT_MAX_BATCH, newRxBatch, OFFLOAD_SLOT_SIZE } from './port';

/** The most frames one drain reads. */
export const DRAIN_MAX_FRAMES = 2048;

class FdPort implements Port {
  readonly rx: RxBatch;
  private poller: Poller | undefined;
  private fd: number;
  /** Where send() writes: fd, or a separate write-only socket (PacketPort's writeIfname). */
  private writeFd: number;
  /** The write options, with the addon's per-frame refusal counter (read back after each send). */
  private readonly writeOpts: { refused: Uint32Array; splitFlushTail?: boolean };
  private readonly unused = new Uint32Array(1);
  /** Batches ended by an error of the socket or the device. */
  writeErrors = 0;
  /** Frames the kernel refused one by one (EMSGSIZE, EINVAL, ENOMEM, EFAULT); each is also a drop of the caller's. */
  txRefused = 0;

  /** offload: the fd reads and writes frames behind a virtio_net_hdr (a TAP or packet socket opened with vnetHdr). */
  constructor(
    readonly name: string,
    readonly kind: PortKind,
    fd: number,
    maxBatch = DEFAULT_MAX_BATCH,
    readonly offload = false,
    write?: { fd: number; splitFlushTail: boolean },
  ) {
    this.fd = fd;
    this.writeFd = write?.fd ?? fd;
    this.writeOpts = { refused: new Uint32Array(1), ...(write?.splitFlushTail === true ? { splitFlushTail: true } : {}) };
    if (offload) {
      this.rx = newRxBatch(maxBatch, OFFLOAD_SLOT_SIZE, DEFAULT_HEADROOM);
      this.rx.meta = Buffer.alloc(maxBatch * VNET_HDR_LEN);
    } else {
      this.rx = newRxBatch(maxBatch);
    }
  }

  open(onBatch: (count: number) => void): void {
    if (this.fd < 0) throw new VnsnapError('ERR_STATE', `port ${this.name} is closed`);
    const io = nativeIo();
    const r = this.rx;
    this.poller = r.meta
      ? io.createPoller(this.fd, 'vnet', r.slab, r.slotSize, r.headroom, r.lens.length, r.lens, this.unused, this.unused, onBatch, { meta: r.meta })
      : io.createPoller(this.fd, 'frames', r.slab, r.slotSize, r.headroom, r.lens.length, r.lens, this.unused, this.unused, onBatch);
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

  send(frames: readonly Buffer[], count: number, metas?: Buffer | null): number {
    if (this.fd < 0 || count === 0) return 0;
    try {
      if (this.offload) return nativeIo().writeFramesVnet(this.writeFd, frames, count, metas ?? null, this.writeOpts);
      return nativeIo().writeFrames(this.writeFd, frames, count, this.writeOpts);
    } catch (e) {
      // EIO while the interface is down, ENXIO/EBADF when it is gone: the frames are dropped
      // (and counted by the caller), the switch keeps running.
      this.writeErrors++;
      const written = (e as { written?: unknown }).written;
      return typeof written === 'number' ? written : 0;
    } finally {
      const r = this.writeOpts.refused;
      if (r[0] !== 0) {
        this.txRefused += r[0]!;
        r[0] = 0;
      }
    }
  }

  close(): void {
    this.poller?.stop();
    this.poller = undefined;
    if (this.writeFd >= 0 && this.writeFd !== this.fd) nativeIo().close(this.writeFd);
    if (this.fd >= 0) nativeIo().close(this.fd);
    this.fd = this.writeFd = -1;
  }
}

/**
 * A TAP device owned by the switch; its interface side goes to the VM (a bridge, a namespace).
 * With `offload` (only for TAPs whose interface side is a namespace or a bridge — never one a
 * QEMU backend must restore onto: FACTS.md, vnet_hdr) the TAP is opened with IFF_VNET_HDR and
 * TSO/checksum offloads: the kernel hands over up to 64 KiB TCP super-frames and accepts them.
 */
export class TapPort extends FdPort {
  readonly ifname: string;
  /** TUNSETOFFLOAD worked (super-frames may arrive); false with offload requested = headers only. */
  readonly kernelOffloads: boolean;
  constructor(name: string, ifname: string, maxBatch?: number, opts: { offload?: boolean } = {}) {
    const r = nativeIo().tapOpen(ifname, { vnetHdr: opts.offload === true });
    super(name, 'tap', r.fd, maxBatch, r.vnetHdr === true);
    this.ifname = r.name;
    this.kernelOffloads = r.offloads === true;
  }
}

/**
 * A packet socket on an existing interface. Without offload the caller turns the interface's
 * offloads off first (switch/native/packet.c); with `offload` (PACKET_VNET_HDR: a QEMU TAP
 * opened with vnet_hdr=on) they stay on and frames come and go behind their virtio_net_hdr,
 * TCP super-frames whole, through the same 'vnet' poller and writeFramesVnet as a vnet TAP.
 *
 * `writeIfname` (with offload): send() writes to a second, write-only packet socket on that
 * interface instead — the switch's end of the veth pair whose other end coalesces with GRO and
 * redirects into the QEMU TAP (agent/drivers/qemu/vm-veth.ts), so the guest receives super-frames
 * whole; super-frames ending in PSH/FIN/URG are written split before their last segment
 * (splitFlushTail). Frames the switch writes never come back to it: the write socket reads
 * nothing, and the read socket ignores what leaves the TAP (PACKET_IGNORE_OUTGOING).
 */
export class PacketPort extends FdPort {
  readonly ifname: string;
  readonly writeIfname: string | undefined;
  constructor(name: string, ifname: string, maxBatch?: number, opts: { offload?: boolean; writeIfname?: string } = {}) {
    const io = nativeIo();
    const r = io.packetOpen(ifname, { vnetHdr: opts.offload === true });
    let w: { fd: number } | undefined;
    try {
      if (opts.writeIfname !== undefined) {
        if (opts.offload !== true) throw new VnsnapError('ERR_INVALID_ARGUMENT', `port ${name}: a separate write interface (${opts.writeIfname}) needs offload`);
        w = io.packetOpen(opts.writeIfname, { vnetHdr: true, writeOnly: true });
      }
    } catch (e) {
      io.close(r.fd);
      throw e;
    }
    super(name, 'packet', r.fd, maxBatch, r.vnetHdr === true, w && { fd: w.fd, splitFlushTail: true });
    this.ifname = ifname;
    this.writeIfname = opts.writeIfname;
  }
}
