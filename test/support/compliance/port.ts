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
