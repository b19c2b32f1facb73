/**
 * The Port compliance suite: one set of exact checks run against every Port implementation
 * (fake, stream, tap with and without offloads, packet), so the switch can rely on the contract
 * of switch/port/port.ts whatever sits behind a port:
 *  - what the VM writes reaches onBatch exactly (bytes), in order, in batches of at most
 *    rx.lens.length frames at `i * slotSize + headroom`; a port with offloads reports an
 *    all-zero virtio_net_hdr (gso_type 0) for an ordinary frame;
 *  - send(frames, n) returns n and the VM receives exactly those frames, in order (with
 *    offloads: the virtio_net_hdr given with each frame, where the VM side can see it);
 *  - drain() resolves once everything the VM wrote before it has gone through onBatch;
 *  - after close(): send() accepts nothing, drain() reads nothing, nothing more is delivered.
 * Frames are test frames (test/support/frames.ts); anything else a kernel interface carries
 * (IPv6 neighbour discovery, ...) is ignored on both sides.
 */
import { strict as assert } from 'node:assert';
import type { Port } from '../../../switch/port/port';
import { makeFrame, parseFrame, vmMac } from '../frames';
import { sum16, tcpChecksumOk } from '../tcp-frames';
import { until } from '../wait';

/** The VM side of a port under test. */
export interface VmSide {
  /** Write frames as the VM; resolves once they are handed to the port's transport. */
  write(frames: readonly Buffer[], metas?: readonly Buffer[]): Promise<void>;
  /** Frames the VM received so far (all of them, in order). */
  received(): readonly Buffer[];
  /** The virtio_net_hdr of each received frame, when the VM side can see it. */
  receivedMeta?(): readonly Buffer[];
}

export interface PortUnderTest {
  port: Port;
  vm: VmSide;
  /** Remove what the test created (the port may already be closed). */
  dispose(): Promise<void> | void;
}

export interface ComplianceOptions {
  /** Largest frame the port carries in these checks (default 1514). */
  maxFrame?: number;
}

const VNET_HDR = 10;

/** A run of test frames from VM 1, sizes cycling through 60..maxFrame. */
function frames(n: number, firstSeq: number, maxFrame: number): Buffer[] {
  const sizes = [60, 61, 128, 333, 1000, maxFrame];
  return Array.from({ length: n }, (_, i) => makeFrame({ dst: vmMac(2), src: vmMac(1), sender: 1, seq: firstSeq + i, epoch: 0 }, sizes[i % sizes.length]));
}

const testFrames = (xs: readonly Buffer[]): Buffer[] => xs.filter((f) => parseFrame(f) !== null);

/** Open the port and collect, as copies, every test frame it hands over (with its header, if any). */
function collect(p: Port): { got: Buffer[]; metas: Buffer[]; batches: number[] } {
  const out = { got: [] as Buffer[], metas: [] as Buffer[], batches: [] as number[] };
  p.open((n) => {
    const rx = p.rx;
    out.batches.push(n);
    for (let i = 0; i < n; i++) {
      const off = i * rx.slotSize + rx.headroom;
      const f = Buffer.from(rx.slab.subarray(off, off + (rx.lens[i] as number)));
      if (parseFrame(f) === null) continue;
      out.got.push(f);
      if (rx.meta) out.metas.push(Buffer.from(rx.meta.subarray(i * VNET_HDR, (i + 1) * VNET_HDR)));
    }
  });
  return out;
}

export function describePortCompliance(title: string, make: () => Promise<PortUnderTest>, opts: ComplianceOptions = {}): void {
  const maxFrame = opts.maxFrame ?? 1514;
  describe(`Port compliance: ${title}`, function () {
    this.timeout(30_000);
    let t: PortUnderTest;
    let made: PortUnderTest | undefined;

    beforeEach(async () => {
      made = undefined;
      t = made = await make();
    });

    afterEach(async () => {
      made?.port.close();
      await made?.dispose();
    });

    it('hands over what the VM writes: exact bytes, in order, in bounded batches', async () => {
      const c = collect(t.port);
      const sent = frames(40, 1, maxFrame);
      await t.vm.write(sent);
      await until('the 40 frames at the port', () => c.got.length >= sent.length, 5000);
      assert.deepEqual(c.got, sent);
      assert.ok(c.batches.every((n) => n >= 1 && n <= t.port.rx.lens.length), `batches ${c.batches.join(',')} within 1..${t.port.rx.lens.length}`);
      if (t.port.rx.meta) assert.deepEqual(c.metas, sent.map(() => Buffer.alloc(VNET_HDR)), 'ordinary frames carry an all-zero virtio_net_hdr');
    });

    it('writes what the switch sends: all accepted, exact bytes, in order', async () => {
      collect(t.port);
      const out = frames(40, 100, maxFrame);
      // Headers the VM side can see differ per frame (hdr_len = i); elsewhere they stay all-zero.
      const seesMeta = t.vm.receivedMeta !== undefined;
      const metas = t.port.offload === true ? Buffer.alloc(out.length * VNET_HDR) : null;
      if (metas !== null && seesMeta) out.forEach((_, i) => metas.writeUInt16LE(i, i * VNET_HDR + 2));
      assert.equal(t.port.send(out, out.length, metas), out.length);
      await until('the 40 frames at the VM', () => testFrames(t.vm.received()).length >= out.length, 5000);
      assert.deepEqual(testFrames(t.vm.received()), out);
      const rm = t.vm.receivedMeta?.();
      if (rm !== undefined && metas !== null) assert.deepEqual(rm, out.map((_, i) => metas.subarray(i * VNET_HDR, (i + 1) * VNET_HDR)));
    });

    it('drain() resolves once everything the VM wrote before it went through onBatch', async () => {
      const c = collect(t.port);
      const sent = frames(12, 200, maxFrame);
      await t.vm.write(sent);
      await t.port.drain();
      assert.deepEqual(c.got, sent);
    });

    it('after close(): send accepts nothing, drain reads nothing, nothing more is delivered', async () => {
      const c = collect(t.port);
      await t.vm.write(frames(3, 300, maxFrame));
      await t.port.drain();
      assert.equal(c.got.length, 3);
      const before = testFrames(t.vm.received()).length;
      t.port.close();
      assert.equal(t.port.send(frames(2, 400, maxFrame), 2), 0);
      await t.vm.write(frames(2, 500, maxFrame)).catch(() => undefined);
      assert.equal(await t.port.drain(), 0);
      assert.equal(c.got.length, 3);
      assert.equal(testFrames(t.vm.received()).length, before);
    });
  });
}

/** The VM side of a port with offloads, seeing every frame's virtio_net_hdr as the kernel gives it. */
export interface VnetVmSide {
  /** Write frames as the VM, frame i behind metas[i]. */
  write(frames: readonly Buffer[], metas: readonly Buffer[]): Promise<void>;
  /** Frames the VM received so far, each with its header. */
  received(): readonly { frame: Buffer; meta: Buffer }[];
}

export interface SuperFramePortUnderTest {
  port: Port;
  vm: VnetVmSide;
  dispose(): Promise<void> | void;
}

/**
 * The header fields the kernel keeps across a hop: flags, gso_type, gso_size, csum_start,
 * csum_offset. hdr_len is a hint the kernel rewrites (to the length of the skb's linear part),
 * so it is checked apart.
 */
export const vnetFields = (m: Buffer): number[] => [m[0] as number, m[1] as number, m.readUInt16LE(4), m.readUInt16LE(6), m.readUInt16LE(8)];

/** Is this one of superFrame()'s TCP frames (test/support/tcp-frames.ts: to port 5201)? */
function isTestTcp(f: Buffer): boolean {
  if (f.length < 54) return false;
  const et = f.readUInt16BE(12);
  const l4 = et === 0x0800 ? 34 : et === 0x86dd ? 54 : -1;
  return l4 > 0 && f.length >= l4 + 20 && f.readUInt16BE(l4 + 2) === 5201;
}

/**
 * Super-frame compliance of a port with offloads whose VM side speaks virtio_net_hdr (a QEMU
 * TAP with vnet_hdr=on, or a stand-in): TCP super-frames of 64 KiB (IPv4 and IPv6) cross the
 * port whole both ways with their header (or, toward the VM, as the exact MSS segments the
 * kernel cuts them into: options.segmentsToVm), and a checksum-partial single frame arrives at
 * the switch with its checksum completed and an all-zero header (the 'vnet' poller's rule) and
 * at the VM with the partial checksum and its header.
 */
export interface SuperFrameOptions {
  /** Build a TCP super-frame (test/support/tcp-frames.ts superFrame). */
  build(o: { v6?: boolean; payload?: number; mss?: number }): { frame: Buffer; meta: Buffer };
  /** Is a plain frame's TCP checksum right? */
  checksumOk(f: Buffer, v6: boolean): boolean;
  /**
   * The VM receives the switch's super-frames as MSS segments: the kernel segments a GSO skb
   * built from a virtio_net_hdr (marked SKB_GSO_DODGY) before a device without tx-gso-robust,
   * which a TAP never has — so a packet socket's super-frames reach QEMU segmented.
   */
  segmentsToVm?: boolean;
  /**
   * The switch writes through a veth pair with GRO in front of the TAP (agent/drivers/qemu/
   * vm-veth.ts): a super-frame with n segments and PSH (as superFrame() builds them) reaches the
   * VM as three frames, in order: its first n-2 segments as one super-frame the kernel rebuilt
   * (GSO header, partial checksum), then segment n-1 and segment n alone (partial checksums).
   * Segment n-1 stays apart because the kernel hands the write's socket ownership to the last
   * segment it cuts, and GRO does not merge skbs of different owners; the port writes segment n
   * apart (splitFlushTail) so that its PSH cannot make GRO deliver it ahead of the rest.
   */
  groToVm?: boolean;
}

/** Do `pieces` carry exactly the super-frame `sf` (headers `hdrs` bytes, `mss`) cut into runs of `counts` segments? */
function checkPieces(pieces: { frame: Buffer; meta: Buffer }[], sf: { frame: Buffer }, hdrs: number, mss: number, counts: number[]): void {
  const v6 = sf.frame.readUInt16BE(12) === 0x86dd;
  const th = hdrs - 32;
  assert.deepEqual(Buffer.concat(pieces.map((r) => r.frame.subarray(hdrs))), sf.frame.subarray(hdrs), 'the payloads concatenate to the super-frame\'s');
  let seg = 0;
  pieces.forEach((r, i) => {
    const k = counts[i] as number;
    const last = i === pieces.length - 1;
    assert.equal(r.frame.readUInt32BE(th + 4), (sf.frame.readUInt32BE(th + 4) + seg * mss) >>> 0, `piece ${i}: sequence number`);
    assert.equal(r.frame[th + 13], last ? sf.frame[th + 13] : (sf.frame[th + 13] as number) & ~0x09, `piece ${i}: TCP flags (PSH/FIN only on the last)`);
    assert.deepEqual(r.frame.subarray(0, v6 ? 18 : 16), sf.frame.subarray(0, v6 ? 18 : 16), `piece ${i}: Ethernet and IP version/class`);
    if (!last) assert.equal(r.frame.length, hdrs + k * mss, `piece ${i}: ${k} segment(s) of one MSS`);
    // The partial checksum (the pseudo-header sum, at the TCP checksum) completes to a right one.
    const done = Buffer.from(r.frame);
    done.writeUInt16BE(0xffff - sum16(done.subarray(th)), th + 16);
    assert.ok(tcpChecksumOk(done, v6), `piece ${i}: its partial checksum completes to the right one`);
    assert.deepEqual(vnetFields(r.meta), k > 1 ? [1, v6 ? 4 : 1, mss, th, 16] : [1, 0, 0, th, 16], `piece ${i}: ${k > 1 ? 'a super-frame' : 'one segment'} with a partial checksum`);
    seg += k;
  });
}

export function describeSuperFrameCompliance(title: string, make: () => Promise<SuperFramePortUnderTest>, o: SuperFrameOptions): void {
  const { build, checksumOk, segmentsToVm = false, groToVm = false } = o;
  describe(`Port super-frame compliance: ${title}`, function () {
    this.timeout(30_000);
    let t: SuperFramePortUnderTest;
    let made: SuperFramePortUnderTest | undefined;
    // 64 KiB: the largest IPv4 TCP super-frame (IP total length 65535) with a 32-byte TCP header.
    const v4 = build({ payload: 65535 - 20 - 32, mss: 1348 });
    const v6 = build({ v6: true, payload: 65535 - 32, mss: 1328 });
    const partial = build({ payload: 300 });
    partial.meta[1] = 0; // gso_type NONE: one frame, checksum left partial
    partial.meta.writeUInt16LE(0, 4);

    beforeEach(async () => {
      made = undefined;
      t = made = await make();
      assert.equal(t.port.offload, true, 'the port carries super-frames');
    });

    afterEach(async () => {
      made?.port.close();
      await made?.dispose();
    });

    it('hands the switch 64 KiB super-frames whole with their header, a partial checksum completed', async () => {
      const got: { frame: Buffer; meta: Buffer }[] = [];
      t.port.open((n) => {
        const rx = t.port.rx;
        for (let i = 0; i < n; i++) {
          const off = i * rx.slotSize + rx.headroom;
          const f = Buffer.from(rx.slab.subarray(off, off + (rx.lens[i] as number)));
          if (isTestTcp(f)) got.push({ frame: f, meta: Buffer.from((rx.meta as Buffer).subarray(i * VNET_HDR, (i + 1) * VNET_HDR)) });
        }
      });
      await t.vm.write([v4.frame, v6.frame, partial.frame], [v4.meta, v6.meta, partial.meta]);
      await until('the 3 TCP frames at the port', () => got.length >= 3, 5000);
      assert.equal(got.length, 3);
      const [a, b, c] = got as [{ frame: Buffer; meta: Buffer }, { frame: Buffer; meta: Buffer }, { frame: Buffer; meta: Buffer }];
      assert.equal(a.frame.length, 65549, 'the IPv4 super-frame: 14 + 65535 bytes, one frame');
      assert.deepEqual(a.frame, v4.frame);
      assert.deepEqual(vnetFields(a.meta), vnetFields(v4.meta));
      assert.deepEqual(b.frame, v6.frame);
      assert.equal(b.frame.length, 14 + 40 + 65535);
      assert.deepEqual(vnetFields(b.meta), vnetFields(v6.meta));
      assert.ok(a.meta.readUInt16LE(2) >= 66 && b.meta.readUInt16LE(2) >= 86, `hdr_len covers the headers (${a.meta.readUInt16LE(2)}, ${b.meta.readUInt16LE(2)})`);
      assert.deepEqual(c.meta, Buffer.alloc(VNET_HDR), 'a single frame carries no header further on');
      assert.ok(checksumOk(c.frame, false), 'its partial checksum was completed');
      assert.deepEqual(c.frame.subarray(0, 50), partial.frame.subarray(0, 50));
      assert.deepEqual(c.frame.subarray(52), partial.frame.subarray(52));
    });

    const n4 = Math.ceil((65535 - 52) / 1348);
    const n6 = Math.ceil((65535 - 32) / 1328);
    const title = segmentsToVm
      ? 'gives the VM the super-frames cut into MSS segments with partial checksums (the kernel segments at the TAP), a partial checksum as it was'
      : groToVm
        ? 'gives the VM each super-frame as one rebuilt super-frame of all but its last two segments, then those two, in order, and a partial checksum as it was'
        : 'gives the VM 64 KiB super-frames whole with their header, and a partial checksum as it was';
    it(title, async () => {
      t.port.open(() => undefined);
      const metas = Buffer.concat([v4.meta, v6.meta, partial.meta]);
      assert.equal(t.port.send([v4.frame, v6.frame, partial.frame], 3, metas), 3);
      const tcp = (): { frame: Buffer; meta: Buffer }[] => t.vm.received().filter((r) => isTestTcp(r.frame));
      const expected = segmentsToVm ? n4 + n6 + 1 : groToVm ? 7 : 3;
      await until(`the ${expected} TCP frames at the VM`, () => tcp().length >= expected, 5000);
      const got = tcp();
      assert.equal(got.length, expected);
      if (groToVm) {
        checkPieces(got.slice(0, 3), v4, 66, 1348, [n4 - 2, 1, 1]);
        checkPieces(got.slice(3, 6), v6, 86, 1328, [n6 - 2, 1, 1]);
        assert.deepEqual(got[6]?.frame, partial.frame);
        assert.deepEqual(vnetFields((got[6] as { meta: Buffer }).meta), vnetFields(partial.meta));
        return;
      }
      if (!segmentsToVm) {
        assert.deepEqual(got.map((r) => r.frame), [v4.frame, v6.frame, partial.frame]);
        assert.deepEqual(got.map((r) => vnetFields(r.meta)), [v4.meta, v6.meta, partial.meta].map(vnetFields));
        return;
      }
      // Segments of the IPv4 super-frame, then of the IPv6 one, in order: headers of 66/86 bytes,
      // payloads of exactly one MSS (the last the rest) that concatenate to the super-frame's,
      // each with a partial checksum (NEEDS_CSUM at the TCP checksum) and no GSO.
      const check = (segs: { frame: Buffer; meta: Buffer }[], sf: { frame: Buffer }, hdrs: number, mss: number): void => {
        assert.deepEqual(Buffer.concat(segs.map((r) => r.frame.subarray(hdrs))), sf.frame.subarray(hdrs));
        segs.forEach((r, i) => {
          if (i < segs.length - 1) assert.equal(r.frame.length, hdrs + mss, `segment ${i} carries one MSS`);
          assert.deepEqual(vnetFields(r.meta), [1, 0, 0, hdrs - 32, 16], `segment ${i}: partial checksum, no GSO`);
          assert.deepEqual(r.frame.subarray(0, 14), sf.frame.subarray(0, 14));
        });
      };
      check(got.slice(0, n4), v4, 66, 1348);
      check(got.slice(n4, expected - 1), v6, 86, 1328);
      const last = got[expected - 1] as { frame: Buffer; meta: Buffer };
      assert.deepEqual(last.frame, partial.frame);
      assert.deepEqual(vnetFields(last.meta), vnetFields(partial.meta));
    });
  });
}
