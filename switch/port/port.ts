/**
 * The Port interface: one VM vNIC as the switch sees it.
 *
 * Reception is batched (wireguard-go's Read(bufs, sizes, offset)): a port hands the switch a
 * slab with many frames at once; frame i sits at `i * slotSize + headroom` with length
 * `lens[i]`, and the headroom lets the tunnel write its Geneve header in front of the frame
 * without a copy. The slab is only valid during the callback. Transmission is batched too:
 * the switch collects the frames for a port while it processes a batch and writes them in one
 * call at the end.
 */

export interface RxBatch {
  slab: Buffer;
  slotSize: number;
  headroom: number;
  lens: Uint32Array;
  /**
   * Ports with offloads: frame i's virtio_net_hdr at meta[10i, 10i + 10) (native-io's
   * VNET_HDR_LEN); all zero for an ordinary frame, gso_type (byte 1) != 0 for a TCP super-frame
   * (up to 64 KiB, cut into MSS-sized segments wherever it goes to a place without offloads).
   */
  meta?: Buffer;
}

export type PortKind = 'tap' | 'packet' | 'stream' | 'fake';

export interface Port {
  readonly name: string;
  readonly kind: PortKind;
  /** The batch descriptor the port fills; stable for the port's life. */
  readonly rx: RxBatch;
  /** Begin delivering received frames: onBatch(count) with `rx` filled. */
  open(onBatch: (count: number) => void): void;
  /**
   * Read, now, everything the VM has written and not yet delivered (through onBatch), so that
   * after a VM pause the switch sees every frame the VM wrote before it. Resolves with the
   * number of frames read.
   */
  drain(): Promise<number>;
  /**
   * True when the port takes TCP super-frames: send() then honours `metas` (a virtio_net_hdr
   * per frame, 10 bytes each; null or absent = all ordinary frames). Ports without it are
   * only ever given ordinary frames. The switch's own TAPs (vnet_hdr) and packet sockets
   * opened with PACKET_VNET_HDR (on a QEMU TAP with vnet_hdr=on) set it; stream ports never do.
   */
  readonly offload?: boolean;
  /**
   * Frames of send() the kernel refused one by one (too long for the device, a header it
   * rejects), dropped alone while the rest of their batch went on; each is also one of the
   * caller's drops. Ports that write through the kernel (fd-port.ts) keep it.
   */
  readonly txRefused?: number;
  /** Write frames to the VM; returns how many were accepted (the rest are dropped by the caller's count). */
  send(frames: readonly Buffer[], count: number, metas?: Buffer | null): number;
  close(): void;
}

/** Slot size of ports with offloads: a 64 KiB super-frame (IP length <= 65535, + Ethernet) plus headroom. */
export const OFFLOAD_SLOT_SIZE = 65536 + 128;

/** Frame slot sizes shared by the ports (room for a 1500-byte MTU frame plus headroom). */
export const DEFAULT_SLOT_SIZE = 2048;
export const DEFAULT_HEADROOM = 64;
export const DEFAULT_MAX_BATCH = 64;

export function newRxBatch(maxBatch = DEFAULT_MAX_BATCH, slotSize = DEFAULT_SLOT_SIZE, headroom = DEFAULT_HEADROOM): RxBatch {
  return { slab: Buffer.alloc(maxBatch * slotSize), slotSize, headroom, lens: new Uint32Array(maxBatch) };
}
