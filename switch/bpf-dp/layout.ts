/**
 * The byte layout of the in-kernel data path's maps and punt header (switch/bpf/vnsnap-dp.bpf.c),
 * in one place, so the program and the switch agree on every byte.
 *
 * Guarantees: each encoder returns a Buffer of exactly the map's key/value size, fields in the
 * host's byte order as the C structs hold them (x86-64 and arm64: little-endian); IPv4 addresses
 * are held as the kernel's bpf_tunnel_key holds them (host-order numbers, 10.0.0.1 =
 * 0x0a000001); the punt header is in network order and decodePunt refuses anything without its
 * magic (null).
 */
import { VnsnapError } from '../../proto/core/errors';

/** Port flag: the kernel may carry this port's frames (otherwise all are punted to the switch). */
export const PORT_FAST = 1;
/** Port flags bits 8-9: the VNE's generation modulo 4 (carried in GBP's D and A bits). */
const PORT_GEN_SHIFT = 8;
/** The generation bits the kernel keeps and carries: a generation modulo 4. */
export const genBits = (generation: number): number => generation & 3;
/** Counters' direction. */
export const DIR_SENT = 0;
export const DIR_RECEIVED = 1;
/** Why vn_rx punted a frame to the switch (struct vn_punt's reason). */
export const PUNT_REASONS = ['unknown', 'late', 'early', 'error'] as const;
export type PuntReason = (typeof PUNT_REASONS)[number];
/** The program's counters (enum vn_stat). */
export const STAT_NAMES = ['txRemote', 'txLocal', 'txPunt', 'rxFast', 'rxPunt', 'errors'] as const;
export type DataPathStats = Record<(typeof STAT_NAMES)[number], number>;
export const PUNT_HEADER_LEN = 16;
/** Where a punt header keeps the peer's underlay IPv4 address (network order). */
const PUNT_PEER_OFFSET = 12;
const PUNT_MAGIC = 0x564e5350;

export interface DpPort {
  vni: number;
  /** The port's snapshot epoch; frames carry its low 16 bits as their colour. */
  epoch: number;
  /** Where vn_tx punts this port's frames (received there, read by the switch as this port). */
  puntIfindex: number;
  /** The kernel may carry its frames (PORT_FAST). */
  fast: boolean;
  /**
   * The VNE's generation; the kernel keeps it modulo 4 (genBits), sends it with the port's
   * frames and carries a frame to the port only when it came with the same (decoded: those bits).
   */
  generation: number;
}

/** An FDB entry: a local port (its TAP's ifindex) or a peer host (its underlay IPv4). */
export type DpDest = { ifindex: number } | { peer: string };

export interface PuntHeader {
  vni: number;
  colour: number;
  reason: PuntReason;
  /** The generation the frame came with, modulo 4 (the reason field's high byte). */
  generation: number;
  /** The sending host's underlay address. */
  peer: string;
}

export function ipv4ToNum(ip: string): number {
  const p = ip.split('.').map(Number);
  if (p.length !== 4 || p.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `not an IPv4 address: ${ip}`);
  return ((p[0] as number) * 0x1000000 + (p[1] as number) * 0x10000 + (p[2] as number) * 0x100 + (p[3] as number)) >>> 0;
}

export const numToIpv4 = (n: number): string => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');

function macBytes(mac: string): Buffer {
  const b = Buffer.from(mac.split(':').map((x) => parseInt(x, 16)));
  if (b.length !== 6 || mac.split(':').some((x) => !/^[0-9a-fA-F]{2}$/.test(x))) throw new VnsnapError('ERR_INVALID_ARGUMENT', `not a MAC address: ${mac}`);
  return b;
}

const u32s = (...v: number[]): Buffer => {
  const b = Buffer.alloc(v.length * 4);
  v.forEach((x, i) => b.writeUInt32LE(x >>> 0, i * 4));
  return b;
};

export const u32Key = (n: number): Buffer => u32s(n);

export const encodePort = (p: DpPort): Buffer => u32s(p.vni, p.epoch, p.puntIfindex, (p.fast ? PORT_FAST : 0) | (genBits(p.generation) << PORT_GEN_SHIFT));

export function decodePort(b: Buffer): DpPort {
  const flags = b.readUInt32LE(12);
  return { vni: b.readUInt32LE(0), epoch: b.readUInt32LE(4), puntIfindex: b.readUInt32LE(8), fast: (flags & PORT_FAST) !== 0, generation: (flags >> PORT_GEN_SHIFT) & 3 };
}

export function encodeFdbKey(vni: number, mac: string): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt32LE(vni, 0);
  macBytes(mac).copy(b, 4);
  return b;
}

export const encodeFdbValue = (d: DpDest): Buffer => ('ifindex' in d ? u32s(d.ifindex, 0) : u32s(0, ipv4ToNum(d.peer)));

export const decodeFdbValue = (b: Buffer): DpDest => (b.readUInt32LE(0) !== 0 ? { ifindex: b.readUInt32LE(0) } : { peer: numToIpv4(b.readUInt32LE(4)) });

/** vn_counts' key (struct vn_count_key): the VNI, the peer host, the port's epoch, the direction. */
export const encodeCountKey = (vni: number, peer: string, epoch: number, dir: number): Buffer => u32s(vni, ipv4ToNum(peer), epoch, dir);

/** vn_peers' key (struct vn_peer_key): the VNI and a peer host of its VNE. */
export const encodePeerKey = (vni: number, peer: string): Buffer => u32s(vni, ipv4ToNum(peer));

export const encodeCfg = (vxlanIfindex: number, puntIfindex: number): Buffer => u32s(vxlanIfindex, puntIfindex);

export const decodeCfg = (b: Buffer): { vxlanIfindex: number; puntIfindex: number } => ({ vxlanIfindex: b.readUInt32LE(0), puntIfindex: b.readUInt32LE(4) });

/** A punt header's fields as read on the punt reader's per-frame path: the peer as its number. */
export type PuntFields = Omit<PuntHeader, 'peer'> & { peerIp: number };

/**
 * The header vn_rx puts in front of the frame at `off` (`len` bytes) of `buf`, or null when it
 * does not start with one; read in place, the peer left a number (no copy, no string per frame).
 */
export function decodePuntAt(buf: Buffer, off: number, len: number): PuntFields | null {
  if (len < PUNT_HEADER_LEN || buf.readUInt32BE(off) !== PUNT_MAGIC) return null;
  const field = buf.readUInt16BE(off + 10);
  const reason = PUNT_REASONS[field & 0xff];
  if (reason === undefined || field >> 8 > 3) return null;
  return { vni: buf.readUInt32BE(off + 4), colour: buf.readUInt16BE(off + 8), reason, generation: field >> 8, peerIp: buf.readUInt32BE(off + PUNT_PEER_OFFSET) };
}

/** The header vn_rx puts in front of a punted frame, or null when `frame` does not start with one. */
export function decodePunt(frame: Buffer): PuntHeader | null {
  const f = decodePuntAt(frame, 0, frame.length);
  if (f === null) return null;
  const { peerIp, ...rest } = f;
  return { ...rest, peer: numToIpv4(peerIp) };
}
