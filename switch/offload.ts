/**
 * Offload helpers for the switch's slow paths: a TCP super-frame (virtio_net_hdr with GSO) that
 * must become ordinary frames — delivered to a port without offloads, injected from channel
 * state (recorded whole) into a port without offloads, or sent on a tunnel without
 * segmentation offload. The per-byte work is native (switch/native/offload.c).
 */
import { GSO_NONE, nativeIo, VNET_HDR_LEN } from './native-io';

export { VNET_HDR_LEN };

/** Is the frame whose virtio_net_hdr is at meta[off] a super-frame? */
export function isSuperFrame(meta: Buffer | undefined, off: number): boolean {
  return meta !== undefined && meta[off + 1] !== GSO_NONE;
}

/**
 * Cut a super-frame into ordinary frames (new buffers) of at most maxFrame bytes (0: its own
 * MSS decides). null when it cannot be segmented (malformed); the caller counts a drop.
 */
export function segmentFrame(frame: Buffer, meta: Buffer, metaOff: number, maxFrame: number): Buffer[] | null {
  return nativeIo().gsoSegment(frame, meta, metaOff, maxFrame, 0);
}
