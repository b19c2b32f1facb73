/**
 * MAC addresses as numbers.
 *
 * On the hot path a MAC is read straight out of the frame as one 48-bit integer (exact in a
 * JS double), which makes it a cheap Map key; strings are only for configuration and display.
 */
import { VnsnapError } from '../../proto/core/errors';

const TWO32 = 0x1_0000_0000;

/** The 48-bit MAC at buf[off..off+6) as a number. */
export function macAt(buf: Buffer, off: number): number {
  return buf.readUInt16BE(off) * TWO32 + buf.readUInt32BE(off + 2);
}

/** Group (multicast/broadcast) bit: the low bit of the first octet. */
export function isGroupMac(mac: number): boolean {
  return Math.floor(mac / 0x100_0000_0000) % 2 === 1;
}

export const BROADCAST_MAC = 0xffff_ffff_ffff;

export function parseMac(s: string): number {
  const m = /^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$/i.exec(s.trim());
  if (!m) throw new VnsnapError('ERR_INVALID_ARGUMENT', `not a MAC address: "${s}" (expected six hex octets like 52:54:00:12:34:56)`);
  let v = 0;
  for (let i = 1; i <= 6; i++) v = v * 256 + parseInt(m[i] as string, 16);
  return v;
}

export function formatMac(mac: number): string {
  const out: string[] = [];
  let v = mac;
  for (let i = 0; i < 6; i++) {
    out.unshift((v % 256).toString(16).padStart(2, '0'));
    v = Math.floor(v / 256);
  }
  return out.join(':');
}

/** Write a MAC number into buf at off (6 bytes). */
export function writeMac(buf: Buffer, off: number, mac: number): void {
  buf.writeUInt16BE(Math.floor(mac / TWO32), off);
  buf.writeUInt32BE(mac % TWO32, off + 2);
}
