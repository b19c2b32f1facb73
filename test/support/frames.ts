/**
 * Test frames: Ethernet frames whose payload says who sent them, their sequence number and the
 * sender's snapshot epoch at the moment it wrote them, so tests can check every delivery.
 */
import { writeMac } from '../../switch/bridge/mac';

export const TEST_ETHERTYPE = 0x88b5; // IEEE local experimental
export const TEST_MAGIC = 0x564e534e; // "VNSN"

export interface TestFrame {
  dst: number;
  src: number;
  sender: number;
  seq: number;
  epoch: number;
}

export function vmMac(i: number): number {
  return 0x02_00_00_00_00_00 + i;
}

export function makeFrame(f: TestFrame, size = 60): Buffer {
  const b = Buffer.alloc(Math.max(size, 28));
  writeMac(b, 0, f.dst);
  writeMac(b, 6, f.src);
  b.writeUInt16BE(TEST_ETHERTYPE, 12);
  b.writeUInt32BE(TEST_MAGIC, 14);
  b.writeUInt16BE(f.sender, 18);
  b.writeUInt32BE(f.seq, 20);
  b.writeUInt32BE(f.epoch, 24);
  return b;
}

/** Parse a test frame; null if it is not one (e.g. a control packet that leaked). */
export function parseFrame(b: Buffer): TestFrame | null {
  if (b.length < 28 || b.readUInt16BE(12) !== TEST_ETHERTYPE || b.readUInt32BE(14) !== TEST_MAGIC) return null;
  const mac = (o: number): number => b.readUInt16BE(o) * 0x1_0000_0000 + b.readUInt32BE(o + 2);
  return { dst: mac(0), src: mac(6), sender: b.readUInt16BE(18), seq: b.readUInt32BE(20), epoch: b.readUInt32BE(24) };
}

/** A small seeded PRNG (mulberry32) so a failing seed can be replayed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
