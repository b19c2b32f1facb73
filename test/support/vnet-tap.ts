/**
 * QEMU's side of a vnet_hdr=on TAP for the in-kernel data path's tests: the TAP's character side
 * held by the addon with IFF_VNET_HDR and TSO (as QEMU holds it for a guest that negotiated TSO),
 * and a reader of everything an fd delivers (a TAP's frames with their header split off, or a
 * packet socket's frames). Frames are copied out of the read slab as they arrive.
 */
import { nativeIo, VNET_HDR_LEN } from '../../switch/native-io';
import { newRxBatch, OFFLOAD_SLOT_SIZE } from '../../switch/port/port';
import type { VnetVmSide } from './compliance/port';

export interface FdReader {
  /** Every frame read so far, in order; `meta` is its virtio_net_hdr (empty without one). */
  got: { meta: Buffer; frame: Buffer }[];
  stop(): void;
}

/** Read everything `fd` delivers; `headerLen` bytes in front of each frame are its header. */
export function fdReader(fd: number, headerLen: number): FdReader {
  const rx = newRxBatch(16, OFFLOAD_SLOT_SIZE);
  const got: FdReader['got'] = [];
  const none = new Uint32Array(1);
  const poller = nativeIo().createPoller(fd, 'frames', rx.slab, rx.slotSize, rx.headroom, 16, rx.lens, none, none, (n) => {
    for (let i = 0; i < n; i++) {
      const start = i * rx.slotSize + rx.headroom;
      const b = rx.slab.subarray(start, start + (rx.lens[i] as number));
      got.push({ meta: Buffer.from(b.subarray(0, headerLen)), frame: Buffer.from(b.subarray(headerLen)) });
    }
  });
  poller.start();
  return { got, stop: () => poller.stop() };
}

/** Open TAP `ifname` as QEMU does with vnet_hdr=on and play the VM on it; close() stops and closes. */
export function vnetTap(ifname: string): { fd: number; vm: VnetVmSide; close(): void } {
  const io = nativeIo();
  const t = io.tapOpen(ifname, { vnetHdr: true });
  if (t.offloads !== true) {
    io.close(t.fd);
    throw new Error(`${ifname}: TUNSETOFFLOAD refused`);
  }
  const r = fdReader(t.fd, VNET_HDR_LEN);
  const write = async (frames: readonly Buffer[], metas: readonly Buffer[]): Promise<void> => {
    const out = frames.map((f, i) => Buffer.concat([metas[i] ?? Buffer.alloc(VNET_HDR_LEN), f]));
    const n = io.writeFrames(t.fd, out, out.length);
    if (n !== out.length) throw new Error(`${ifname}: wrote ${n} of ${out.length} frames as the VM`);
  };
  return {
    fd: t.fd,
    vm: { write, received: () => r.got },
    close: () => {
      r.stop();
      io.close(t.fd);
    },
  };
}
