/**
 * Geneve (RFC 8926) encapsulation with vnsnap's option.
 *
 * Layout of every packet a vnsnap switch sends on a tunnel (UDP payload):
 *
 *   0                   1                   2                   3
 *   |Ver|  Opt Len  |O|C|  Rsvd.  |    Protocol Type (0x6558)     |
 *   |        Virtual Network Identifier (VNI)       |    Reserved   |
 *   |   Option Class (0xFFF5)      |     Type      |R R R| Length  |
 *   |                     option data (Length * 4 bytes)            |
 *   |                inner Ethernet frame (data packets)            |
 *
 * Data packets (O=0) carry one non-critical option, type 0x01, 8 bytes: the source port's
 * snapshot epoch (u32) and the VNE generation (u32) — 20 header bytes in all, so a frame can be
 * encapsulated in place in 20 bytes of headroom. Control packets (O=1, C=1) carry no inner
 * frame (protocol type 0) and one critical option: 0x82 marker (epoch, generation, count of epoch<k data frames
 * sent on this tunnel as u64) or 0x83 marker acknowledgement (epoch, generation).
 * Option class 0xFFF5 is in IANA's "Experimental Use" range (0xFFF0–0xFFFF).
 *
 * decode() never throws on wire input: malformed packets return null and are counted by the
 * caller.
 *
 * Critical options (RFC 8926 §3.5): an option whose type has its high bit set must be
 * understood, or the packet MUST be dropped. decode() walks every option of every packet (data
 * and control, whatever the header's C bit says) and returns `unknownCritical` when one is
 * critical and not one of vnsnap's own (class 0xFFF5, types 0x01, 0x82, 0x83); the caller drops
 * and counts it. vnsnap's own control packets, whose only critical option is 0x82 or 0x83, are
 * understood and pass; a control packet without a marker or ack is not understood at all and
 * stays malformed (null).
 */

export const GENEVE_PORT = 6081;
export const PROTO_ETHERNET = 0x6558;
/** Control packets carry no payload: protocol type 0 so decoders do not look for a frame. */
export const PROTO_NONE = 0x0000;
export const VNSNAP_OPTION_CLASS = 0xfff5;
export const OPT_EPOCH = 0x01;
export const OPT_MARKER = 0x82;
export const OPT_MARKER_ACK = 0x83;
/** The high bit of an option's type: the option is critical (RFC 8926 §3.5). */
export const OPT_CRITICAL = 0x80;
/** Bytes of a data packet's Geneve header including the epoch option. */
export const DATA_HEADER_LEN = 20;
const BASE_LEN = 8;
const MAX_VNI = 0xff_ffff;

export type Decoded =
  | { kind: 'data'; vni: number; epoch: number; generation: number; payloadOffset: number }
  | { kind: 'marker'; vni: number; epoch: number; generation: number; count: number }
  | { kind: 'ack'; vni: number; epoch: number; generation: number }
  /** A well-formed Geneve data packet without vnsnap's option (not from a vnsnap switch). */
  | { kind: 'foreign'; vni: number; payloadOffset: number }
  /** A packet with a critical option this switch does not understand: must be dropped. */
  | { kind: 'unknownCritical'; vni: number };

/** vnsnap's own options: the only critical ones this switch understands. */
function isOwnOption(cls: number, type: number): boolean {
  return cls === VNSNAP_OPTION_CLASS && (type === OPT_EPOCH || type === OPT_MARKER || type === OPT_MARKER_ACK);
}

/** Write the 20-byte data header at buf[off..off+20). */
export function writeDataHeader(buf: Buffer, off: number, vni: number, epoch: number, generation: number): void {
  buf[off] = 3; // version 0, option length 3 words (12 bytes)
  buf[off + 1] = 0; // O=0, C=0
  buf.writeUInt16BE(PROTO_ETHERNET, off + 2);
  buf.writeUInt32BE((vni << 8) >>> 0, off + 4);
  buf.writeUInt16BE(VNSNAP_OPTION_CLASS, off + 8);
  buf[off + 10] = OPT_EPOCH;
  buf[off + 11] = 2; // 2 words of data
  buf.writeUInt32BE(epoch >>> 0, off + 12);
  buf.writeUInt32BE(generation >>> 0, off + 16);
}

/** A whole data packet (header + copy of frame) in a new buffer. */
export function encodeData(vni: number, epoch: number, generation: number, frame: Buffer): Buffer {
  const b = Buffer.allocUnsafe(DATA_HEADER_LEN + frame.length);
  writeDataHeader(b, 0, vni, epoch, generation);
  frame.copy(b, DATA_HEADER_LEN);
  return b;
}

/** A control packet (O and C set, protocol type 0) with one critical vnsnap option. */
function encodeControl(vni: number, type: number, epoch: number, generation: number, extraWords: number): Buffer {
  const dataWords = 2 + extraWords;
  const b = Buffer.alloc(BASE_LEN + 4 + dataWords * 4);
  b[0] = 1 + dataWords; // option length in words: 4-byte option header + data
  b[1] = 0xc0; // O and C
  b.writeUInt16BE(PROTO_NONE, 2);
  b.writeUInt32BE((vni << 8) >>> 0, 4);
  b.writeUInt16BE(VNSNAP_OPTION_CLASS, 8);
  b[10] = type;
  b[11] = dataWords;
  b.writeUInt32BE(epoch >>> 0, 12);
  b.writeUInt32BE(generation >>> 0, 16);
  return b;
}

export function encodeMarker(vni: number, epoch: number, generation: number, count: number): Buffer {
  const b = encodeControl(vni, OPT_MARKER, epoch, generation, 2);
  b.writeUInt32BE(Math.floor(count / 0x1_0000_0000), 20);
  b.writeUInt32BE(count % 0x1_0000_0000, 24);
  return b;
}

export function encodeAck(vni: number, epoch: number, generation: number): Buffer {
  return encodeControl(vni, OPT_MARKER_ACK, epoch, generation, 0);
}

export function isValidVni(vni: number): boolean {
  return Number.isInteger(vni) && vni >= 0 && vni <= MAX_VNI;
}

/**
 * Decode the Geneve packet at buf[off..off+len). Returns null when it is malformed, of an
 * unknown version, or a control packet this switch does not understand; `unknownCritical` when
 * it carries a critical option that is not vnsnap's.
 */
export function decode(buf: Buffer, off: number, len: number): Decoded | null {
  if (len < BASE_LEN) return null;
  const b0 = buf[off] as number;
  if (b0 >> 6 !== 0) return null; // version 0 only
  const optLen = (b0 & 0x3f) * 4;
  const hdrLen = BASE_LEN + optLen;
  if (hdrLen > len) return null;
  const control = ((buf[off + 1] as number) & 0x80) !== 0;
  const proto = buf.readUInt16BE(off + 2);
  const vni = buf.readUInt32BE(off + 4) >>> 8;
  // Walk the options, remembering ours.
  let p = off + BASE_LEN;
  const end = off + hdrLen;
  let ourType = -1;
  let ourData = -1;
  let ourLen = 0;
  let unknownCritical = false;
  while (p < end) {
    if (p + 4 > end) return null;
    const cls = buf.readUInt16BE(p);
    const type = buf[p + 2] as number;
    const dlen = ((buf[p + 3] as number) & 0x1f) * 4;
    if (p + 4 + dlen > end) return null;
    if ((type & OPT_CRITICAL) !== 0 && !isOwnOption(cls, type)) unknownCritical = true;
    if (cls === VNSNAP_OPTION_CLASS && ourType < 0) {
      ourType = type;
      ourData = p + 4;
      ourLen = dlen;
    }
    p += 4 + dlen;
  }
  if (control) {
    // A control packet is understood only as vnsnap's marker or ack (else null, malformed).
    if (unknownCritical && (ourType === OPT_MARKER || ourType === OPT_MARKER_ACK)) return { kind: 'unknownCritical', vni };
    if (ourType === OPT_MARKER && ourLen >= 16) {
      return {
        kind: 'marker',
        vni,
        epoch: buf.readUInt32BE(ourData),
        generation: buf.readUInt32BE(ourData + 4),
        count: buf.readUInt32BE(ourData + 8) * 0x1_0000_0000 + buf.readUInt32BE(ourData + 12),
      };
    }
    if (ourType === OPT_MARKER_ACK && ourLen >= 8) {
      return { kind: 'ack', vni, epoch: buf.readUInt32BE(ourData), generation: buf.readUInt32BE(ourData + 4) };
    }
    return null;
  }
  if (unknownCritical) return { kind: 'unknownCritical', vni };
  if (proto !== PROTO_ETHERNET) return null;
  if (len - hdrLen < 14) return null; // no room for an Ethernet header
  if (ourType === OPT_EPOCH && ourLen >= 8) {
    return { kind: 'data', vni, epoch: buf.readUInt32BE(ourData), generation: buf.readUInt32BE(ourData + 4), payloadOffset: hdrLen };
  }
  return { kind: 'foreign', vni, payloadOffset: hdrLen };
}
