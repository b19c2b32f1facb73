/**
 * The channel-state artefact of one switch port: the in-flight frames recorded for a
 * snapshot, in delivery order, as a simple length-prefixed file:
 *
 *   "VNSCHAN1"  u32 BE frame count   then per frame: u32 BE length, the Ethernet frame
 *
 * Readers cap every length (a frame is at most 64 KiB + headers) and the count against the
 * file size, so a truncated or hostile file is an ERR_DATA_LOSS error, never a huge allocation.
 */
import { VnsnapError } from '../core/errors';

export const CHANNEL_MAGIC = Buffer.from('VNSCHAN1');
const MAX_FRAME = 65536 + 256;

export function encodeChannel(frames: readonly Buffer[]): Buffer {
  let size = 12;
  for (const f of frames) size += 4 + f.length;
  const out = Buffer.alloc(size);
  CHANNEL_MAGIC.copy(out, 0);
  out.writeUInt32BE(frames.length, 8);
  let o = 12;
  for (const f of frames) {
    out.writeUInt32BE(f.length, o);
    f.copy(out, o + 4);
    o += 4 + f.length;
  }
  return out;
}

export function decodeChannel(buf: Buffer, source = 'channel state'): Buffer[] {
  const bad = (why: string): VnsnapError => new VnsnapError('ERR_DATA_LOSS', `${source}: not a channel-state file (${why})`);
  if (buf.length < 12 || !buf.subarray(0, 8).equals(CHANNEL_MAGIC)) throw bad('bad magic');
  const n = buf.readUInt32BE(8);
  if (n > (buf.length - 12) / 4) throw bad(`count ${n} exceeds the file`);
  const frames: Buffer[] = [];
  let o = 12;
  for (let i = 0; i < n; i++) {
    if (o + 4 > buf.length) throw bad('truncated');
    const len = buf.readUInt32BE(o);
    if (len > MAX_FRAME) throw bad(`frame ${i} of ${len} bytes`);
    if (o + 4 + len > buf.length) throw bad('truncated');
    frames.push(Buffer.from(buf.subarray(o + 4, o + 4 + len)));
    o += 4 + len;
  }
  if (o !== buf.length) throw bad('trailing bytes');
  return frames;
}
