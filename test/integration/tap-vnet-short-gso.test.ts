/**
 * Short super-frames written toward a tap-vnet VM through its veth pair with GRO
 * (PacketPort's writeIfname), for real: a GSO header on a frame of one segment makes the
 * packet socket's sendmsg fail (ENOMEM), and the failure took the rest of the port's batch
 * with it. Such frames are common behind an offloaded tunnel: the receiving switch coalesces
 * two datagrams into a two-segment super-frame ending in PSH, which the port writes split
 * before its last segment, leaving a body of one segment. Each case checks the exact frames
 * the VM's side of the TAP (held the way QEMU holds it) reads. Links are named `vncw*` and
 * removed after each test.
 */
import { strict as assert } from 'node:assert';
import { createVmVeth, removeVmVeth } from '../../agent/drivers/qemu/vm-veth';
import { nativeIo, VNET_HDR_LEN } from '../../switch/native-io';
import { PacketPort } from '../../switch/port/fd-port';
import { newRxBatch, OFFLOAD_SLOT_SIZE } from '../../switch/port/port';
import { sh } from '../support/netns';
import { Built, ETH, superFrame, sum16, tcpChecksumOk } from '../support/tcp-frames';
import { until } from '../support/wait';

const TAP = 'vncwn0';
const MSS = 1348;
const HDRS = ETH + 20 + 32;
const TH = ETH + 20;

/** What the VM reads from its TAP: each frame with its virtio_net_hdr. */
interface Got {
  frame: Buffer;
  meta: Buffer;
}

/** QEMU's side of the TAP (IFF_VNET_HDR + TUNSETOFFLOAD, as for a guest that negotiated TSO). */
function holdTap(got: Got[]): () => void {
  const io = nativeIo();
  const r = io.tapOpen(TAP, { vnetHdr: true });
  const rx = newRxBatch(8, OFFLOAD_SLOT_SIZE);
  const unused = new Uint32Array(1);
  const poller = io.createPoller(r.fd, 'frames', rx.slab, rx.slotSize, rx.headroom, 8, rx.lens, unused, unused, (n) => {
    for (let i = 0; i < n; i++) {
      const b = rx.slab.subarray(i * rx.slotSize + rx.headroom, i * rx.slotSize + rx.headroom + (rx.lens[i] as number));
      if (b.readUInt16BE(VNET_HDR_LEN + 12) === 0x0800) got.push({ meta: Buffer.from(b.subarray(0, VNET_HDR_LEN)), frame: Buffer.from(b.subarray(VNET_HDR_LEN)) });
    }
  });
  poller.start();
  return () => {
    poller.stop();
    io.close(r.fd);
  };
}

/** The super-frame the receiving tunnel builds from `sf`'s segments (one Geneve datagram each, UDP GRO). */
function coalesced(sf: Built): { frame: Buffer; meta: Buffer } {
  const io = nativeIo();
  const dgrams = (io.gsoSegment(sf.frame, sf.meta, 0, 0, 0) as Buffer[]).map((s) => {
    const g = Buffer.alloc(8);
    g.writeUInt16BE(0x6558, 2);
    g.writeUInt32BE(300 << 8, 4);
    return Buffer.concat([g, s]);
  });
  const buf = Buffer.concat(dgrams);
  const offs = new Uint32Array(4);
  const lens = new Uint32Array(4);
  const segs = new Uint32Array(4);
  const metas = Buffer.alloc(4 * VNET_HDR_LEN);
  assert.equal(io.groSplit(buf, buf.length, (dgrams[0] as Buffer).length, offs, lens, segs, metas), 1, 'coalesced into one entry');
  assert.equal(segs[0], dgrams.length);
  return { frame: buf.subarray((offs[0] as number) + 8, (offs[0] as number) + (lens[0] as number)), meta: metas.subarray(0, VNET_HDR_LEN) };
}

/** The VM got `sf`'s payload as one-segment frames: exact lengths, sequence numbers, flags, headers, completed checksums. */
function checkSegments(got: readonly Got[], sf: Built): void {
  const n = Math.ceil((sf.frame.length - HDRS) / MSS);
  assert.equal(got.length, n, `${n} frames`);
  got.forEach((g, i) => {
    const pl = Math.min(MSS, sf.frame.length - HDRS - i * MSS);
    assert.equal(g.frame.length, HDRS + pl, `frame ${i}: length`);
    assert.deepEqual(g.frame.subarray(HDRS), sf.frame.subarray(HDRS + i * MSS, HDRS + i * MSS + pl), `frame ${i}: payload`);
    assert.equal(g.frame.readUInt32BE(TH + 4), (sf.frame.readUInt32BE(TH + 4) + i * MSS) >>> 0, `frame ${i}: sequence number`);
    assert.equal(g.frame[TH + 13], i === n - 1 ? sf.frame[TH + 13] : (sf.frame[TH + 13] as number) & ~0x09, `frame ${i}: TCP flags`);
    assert.equal(g.frame.readUInt16BE(ETH + 2), 20 + 32 + pl, `frame ${i}: IP total length`);
    assert.equal(0xffff - sum16(g.frame.subarray(ETH, ETH + 20)), 0, `frame ${i}: IP header checksum`);
    assert.deepEqual([g.meta[0], g.meta[1], g.meta.readUInt16LE(4)], [1, 0, 0], `frame ${i}: one segment with a partial checksum`);
    const done = Buffer.from(g.frame);
    done.writeUInt16BE(0xffff - sum16(done.subarray(TH)), TH + 16);
    assert.ok(tcpChecksumOk(done, false), `frame ${i}: the partial checksum completes to the right one`);
  });
}

describe('tap-vnet: short super-frames through the veth pair with GRO', function () {
  this.timeout(30_000);
  const got: Got[] = [];
  let release: (() => void) | undefined;
  let port: PacketPort | undefined;

  beforeEach(async () => {
    got.length = 0;
    release = holdTap(got);
    sh('sysctl', ['-qw', `net.ipv6.conf.${TAP}.disable_ipv6=1`], { allowFail: true });
    sh('ip', ['link', 'set', TAP, 'up']);
    const v = await createVmVeth(TAP);
    port = new PacketPort('w', TAP, 8, { offload: true, writeIfname: v.sw });
  });

  afterEach(async () => {
    port?.close();
    release?.();
    port = release = undefined;
    await removeVmVeth(TAP);
  });

  /** Send frames (metas: a virtio_net_hdr each) in one batch; all must be written, none fail. */
  function send(frames: Buffer[], metas: Buffer[]): void {
    const p = port as PacketPort;
    assert.equal(p.send(frames, frames.length, Buffer.concat(metas)), frames.length, 'every frame written');
    assert.equal(p.writeErrors, 0, 'no write error');
  }

  it('a coalesced two-segment super-frame ending in PSH reaches the VM as its two segments', async () => {
    const sf = superFrame({ payload: 2 * MSS, mss: MSS, seq: 1000 });
    const c = coalesced(sf);
    assert.deepEqual([c.meta[1], c.meta.readUInt16LE(4)], [1, MSS], 'a TCPV4 super-frame of MSS segments');
    send([c.frame], [c.meta]);
    await until('2 frames at the VM', () => got.length >= 2);
    checkSegments(got, sf);
  });

  it('a super-frame of one segment is written as that segment, and the frames after it in the batch go too', async () => {
    const one = superFrame({ payload: MSS, mss: MSS, seq: 5000 });
    const short = superFrame({ payload: MSS + 700, mss: MSS, seq: 9000 });
    const c = coalesced(short);
    send([one.frame, c.frame], [one.meta, c.meta]);
    await until('3 frames at the VM', () => got.length >= 3);
    checkSegments(got.slice(0, 1), one);
    checkSegments(got.slice(1), short);
  });
});
