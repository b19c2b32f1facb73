/**
 * TCP frames for offload tests, built byte by byte with a reference checksum: a TCP super-frame
 * as a TAP with offloads hands it over (partial checksum, a virtio_net_hdr with GSO), and the
 * check that a plain frame's TCP checksum is right. Shared by the offload unit tests and the
 * port compliance tests of ports that carry super-frames.
 */
import { GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN } from '../../switch/native-io';

export const ETH = 14;

/** Reference one's-complement sum of big-endian 16-bit words (folded, not complemented). */
export function sum16(b: Buffer, init = 0): number {
  let s = init;
  for (let i = 0; i + 1 < b.length; i += 2) s += b.readUInt16BE(i);
  if (b.length % 2) s += (b[b.length - 1] as number) << 8;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

export function pseudo(frame: Buffer, v6: boolean, l4len: number): number {
  const addrs = v6 ? frame.subarray(ETH + 8, ETH + 40) : frame.subarray(ETH + 12, ETH + 20);
  return sum16(addrs, 6 + l4len);
}

/** Is the TCP checksum of this plain frame right? */
export function tcpChecksumOk(frame: Buffer, v6: boolean): boolean {
  const l4 = v6 ? ETH + 40 : ETH + 20;
  return sum16(frame.subarray(l4), pseudo(frame, v6, frame.length - l4)) === 0xffff;
}

export interface Built {
  frame: Buffer;
  meta: Buffer;
  payload: Buffer;
  hdrs: number;
}

/** A TCP super-frame as a TAP with offloads hands it over: partial checksum, GSO header. */
export function superFrame(opts: { v6?: boolean; payload?: number; mss?: number; flags?: number; seq?: number } = {}): Built {
  const v6 = opts.v6 ?? false;
  const plen = opts.payload ?? 10_000;
  const mss = opts.mss ?? 1448;
  const ipLen = v6 ? 40 : 20;
  const thl = 32; // 12 bytes of options: NOP NOP timestamp
  const hdrs = ETH + ipLen + thl;
  const payload = Buffer.alloc(plen);
  for (let i = 0; i < plen; i++) payload[i] = (i * 7 + 3) & 0xff;
  const f = Buffer.alloc(hdrs + plen);
  Buffer.from('020000000002020000000001', 'hex').copy(f, 0);
  f.writeUInt16BE(v6 ? 0x86dd : 0x0800, 12);
  const ip = ETH;
  if (!v6) {
    f[ip] = 0x45;
    f[ip + 1] = 0;
    f.writeUInt16BE(ipLen + thl + plen, ip + 2);
    f.writeUInt16BE(0x1234, ip + 4);
    f.writeUInt16BE(0x4000, ip + 6); // DF
    f[ip + 8] = 64;
    f[ip + 9] = 6;
    Buffer.from([10, 0, 0, 1, 10, 0, 0, 2]).copy(f, ip + 12);
    f.writeUInt16BE(0xffff - sum16(f.subarray(ip, ip + 20)), ip + 10);
  } else {
    f.writeUInt32BE(0x60000000, ip);
    f.writeUInt16BE(thl + plen, ip + 4);
    f[ip + 6] = 6;
    f[ip + 7] = 64;
    Buffer.from('fd000000000000000000000000000001fd000000000000000000000000000002', 'hex').copy(f, ip + 8);
  }
  const th = ETH + ipLen;
  f.writeUInt16BE(40000, th);
  f.writeUInt16BE(5201, th + 2);
  f.writeUInt32BE(opts.seq ?? 0xfffff000, th + 4); // wraps around 2^32 inside the frame
  f.writeUInt32BE(5000, th + 8);
  f[th + 12] = (thl / 4) << 4;
  f[th + 13] = opts.flags ?? 0x18; // ACK | PSH
  f.writeUInt16BE(502, th + 14);
  Buffer.from([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]).copy(f, th + 20);
  payload.copy(f, hdrs);
  // Partial checksum, as the kernel leaves it: the pseudo-header sum, not complemented.
  f.writeUInt16BE(pseudo(f, v6, thl + plen), th + 16);
  const meta = Buffer.alloc(VNET_HDR_LEN);
  meta[0] = 1; // NEEDS_CSUM
  meta[1] = v6 ? GSO_TCPV6 : GSO_TCPV4;
  meta.writeUInt16LE(hdrs, 2);
  meta.writeUInt16LE(mss, 4);
  meta.writeUInt16LE(ETH + ipLen, 6);
  meta.writeUInt16LE(16, 8);
  return { frame: f, meta, payload, hdrs };
}
