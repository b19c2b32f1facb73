/**
 * The channel-state artefact of one switch port: the in-flight frames recorded for a
 * snapshot, in delivery order, as a simple length-prefixed file. Two formats, told apart by
 * their magic (the last character is the format version):
 *
 *   "VNSCHAN1"  u32 BE frame count, then per frame: u32 BE length, the Ethernet frame
 *   "VNSCHAN2"  u32 BE frame count, then per frame: u32 BE length, the frame's 10-byte
 *               virtio_net_hdr, the Ethernet frame (written since super-frames are recorded
 *               whole)
 *
 * In format 2 a frame whose header has gso_type NONE and no flags (all ten bytes zero) is an
 * ordinary frame (`vnetHdr: null`); any other header describes a TCP super-frame (GSO) that a
 * port with offloads takes whole and a port without gets as its segments. Format 1 files (every
 * snapshot written before) hold ordinary frames only and stay readable. A file of a newer
 * format ("VNSCHAN3" and up) is refused with ERR_UNSUPPORTED_VERSION in one line; encodeChannel
 * always writes format 2.
 *
 * Readers cap every length (a frame is at most 64 KiB + headers, a super-frame too) and the count
 * against the file size, so a truncated or hostile file is an ERR_DATA_LOSS error, never a huge
 * allocation.
 */
import { VnsnapError } from '../core/errors';

/** One recorded frame: an Ethernet frame, and its virtio_net_hdr when it is a super-frame. */
export interface ChannelFrame {
  frame: Buffer;
  /** The 10-byte virtio_net_hdr of a super-frame; null for an ordinary frame. */
  vnetHdr: Buffer | null;
}

export const CHANNEL_MAGIC_PREFIX = 'VNSCHAN';
export const CHANNEL_FORMAT = 2;
export const CHANNEL_MAGIC = Buffer.from(`${CHANNEL_MAGIC_PREFIX}${CHANNEL_FORMAT}`);
/** Size of a virtio_net_hdr (without num_buffers), as the switch's ports carry it. */
export const CHANNEL_VNET_HDR_LEN = 10;
const MAX_FRAME = 65536 + 256;
const HEAD = 12;

/** A plain frame as a ChannelFrame (no header). */
export function plainFrame(frame: Buffer): ChannelFrame {
  return { frame, vnetHdr: null };
}

export function encodeChannel(frames: readonly ChannelFrame[]): Buffer {
  let size = HEAD;
  for (const f of frames) size += 4 + CHANNEL_VNET_HDR_LEN + f.frame.length;
  const out = Buffer.alloc(size);
  CHANNEL_MAGIC.copy(out, 0);
  out.writeUInt32BE(frames.length, 8);
  let o = HEAD;
  for (const f of frames) {
    out.writeUInt32BE(f.frame.length, o);
    if (f.vnetHdr !== null) f.vnetHdr.copy(out, o + 4, 0, CHANNEL_VNET_HDR_LEN); // else left zero
    f.frame.copy(out, o + 4 + CHANNEL_VNET_HDR_LEN);
    o += 4 + CHANNEL_VNET_HDR_LEN + f.frame.length;
  }
  return out;
}

/** The format version of a channel-state file (the digit after the magic prefix); null if it is none. */
function formatOf(buf: Buffer): number | null {
  if (buf.length < 8 || buf.toString('latin1', 0, 7) !== CHANNEL_MAGIC_PREFIX) return null;
  const d = (buf[7] as number) - 0x30;
  return d >= 1 && d <= 9 ? d : null;
}

export function decodeChannel(buf: Buffer, source = 'channel state'): ChannelFrame[] {
  const bad = (why: string): VnsnapError => new VnsnapError('ERR_DATA_LOSS', `${source}: not a channel-state file (${why})`);
  const format = formatOf(buf);
  if (format === null) throw bad('bad magic');
  if (format > CHANNEL_FORMAT) {
    throw new VnsnapError('ERR_UNSUPPORTED_VERSION', `${source} has channel-state format ${format}, newer than this vnsnap reads (1 to ${CHANNEL_FORMAT}): upgrade vnsnap to restore it`);
  }
  if (buf.length < HEAD) throw bad('truncated');
  const hdrLen = format >= 2 ? CHANNEL_VNET_HDR_LEN : 0;
  const n = buf.readUInt32BE(8);
  if (n > (buf.length - HEAD) / (4 + hdrLen)) throw bad(`count ${n} exceeds the file`);
  const frames: ChannelFrame[] = [];
  let o = HEAD;
  for (let i = 0; i < n; i++) {
    if (o + 4 + hdrLen > buf.length) throw bad('truncated');
    const len = buf.readUInt32BE(o);
    if (len > MAX_FRAME) throw bad(`frame ${i} of ${len} bytes`);
    const at = o + 4 + hdrLen;
    if (at + len > buf.length) throw bad('truncated');
    const hdr = buf.subarray(o + 4, at);
    frames.push({ frame: Buffer.from(buf.subarray(at, at + len)), vnetHdr: hdrLen > 0 && hdr.some((b) => b !== 0) ? Buffer.from(hdr) : null });
    o = at + len;
  }
  if (o !== buf.length) throw bad('trailing bytes');
  return frames;
}
