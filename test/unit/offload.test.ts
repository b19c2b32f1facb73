/**
 * Offload byte work (switch/native/offload.c through native-io): segmentation of TCP
 * super-frames behind a Geneve header, coalescing of received datagrams back into a
 * super-frame, and checksums — checked byte by byte against a reference implementation here.
 */
import { strict as assert } from 'node:assert';
import { DATA_HEADER_LEN, decode, writeDataHeader } from '../../switch/tunnel/geneve';
import { GSO_NONE, GSO_TCPV4, GSO_TCPV6, nativeIo, VNET_HDR_LEN } from '../../switch/native-io';
import { ETH, pseudo, sum16, superFrame, tcpChecksumOk } from '../support/tcp-frames';

function geneve(epoch: number): Buffer {
  const g = Buffer.alloc(DATA_HEADER_LEN);
  writeDataHeader(g, 0, 100, epoch, 1);
  return g;
}

/** Lay datagrams out as UDP GRO hands them over: every `stride` bytes, the last maybe shorter. */
function groBuffer(dgrams: Buffer[]): { buf: Buffer; len: number; gso: number } {
  const gso = (dgrams[0] as Buffer).length;
  const buf = Buffer.alloc(65536);
  let pos = 0;
  for (const d of dgrams) {
    assert.ok(d.length <= gso);
    d.copy(buf, pos);
    pos += d.length;
  }
  return { buf, len: pos, gso };
}

function split(b: { buf: Buffer; len: number; gso: number }): { frame: Buffer; dgram: Buffer; segs: number; meta: Buffer }[] {
  const offs = new Uint32Array(256);
  const lens = new Uint32Array(256);
  const segs = new Uint32Array(256);
  const metas = Buffer.alloc(256 * VNET_HDR_LEN);
  const n = nativeIo().groSplit(b.buf, b.len, b.gso, offs, lens, segs, metas);
  const out = [];
  for (let i = 0; i < n; i++) {
    const dgram = b.buf.subarray(offs[i] as number, (offs[i] as number) + (lens[i] as number));
    const d = decode(dgram, 0, dgram.length);
    out.push({ dgram, frame: dgram.subarray(d && 'payloadOffset' in d ? d.payloadOffset : 0), segs: segs[i] as number, meta: metas.subarray(i * VNET_HDR_LEN, (i + 1) * VNET_HDR_LEN) });
  }
  return out;
}

describe('offload: segmentation, coalescing, checksums', () => {
  const io = nativeIo();

  it('segments a 10 KB IPv4 TCP super-frame behind a Geneve header, every header byte right', () => {
    const sf = superFrame();
    const dg = Buffer.concat([geneve(7), sf.frame]);
    const maxFrame = 1452; // what a 1500-byte underlay leaves for the inner frame
    const segs = io.gsoSegment(dg, sf.meta, 0, maxFrame, DATA_HEADER_LEN);
    assert.ok(segs);
    const mss = maxFrame - sf.hdrs; // 1386 < the frame's own MSS of 1448
    assert.equal(segs.length, Math.ceil(10_000 / mss));
    const got: Buffer[] = [];
    segs.forEach((s, i) => {
      assert.ok(s.subarray(0, DATA_HEADER_LEN).equals(geneve(7)), 'every segment carries the same Geneve header (epoch)');
      const f = s.subarray(DATA_HEADER_LEN);
      assert.ok(f.length <= maxFrame);
      const pl = i < segs.length - 1 ? mss : 10_000 - mss * (segs.length - 1);
      assert.equal(f.length, sf.hdrs + pl);
      assert.ok(f.subarray(0, ETH).equals(sf.frame.subarray(0, ETH)));
      assert.equal(f.readUInt16BE(ETH + 2), 20 + 32 + pl, 'IPv4 total length');
      assert.equal(f.readUInt16BE(ETH + 4), 0x1234 + i, 'IPv4 id increments');
      assert.equal(f.readUInt16BE(ETH + 6), 0x4000, 'DF kept');
      assert.equal(sum16(f.subarray(ETH, ETH + 20)), 0xffff, 'IPv4 header checksum');
      const th = ETH + 20;
      assert.equal(f.readUInt32BE(th + 4), (0xfffff000 + i * mss) >>> 0, 'TCP seq (wrapping)');
      assert.equal(f.readUInt32BE(th + 8), 5000, 'TCP ack');
      assert.equal(f[th + 13], i === segs.length - 1 ? 0x18 : 0x10, 'PSH only on the last segment');
      assert.ok(f.subarray(th + 20, th + 32).equals(sf.frame.subarray(th + 20, th + 32)), 'options kept');
      assert.ok(tcpChecksumOk(f, false), `TCP checksum of segment ${i}`);
      got.push(f.subarray(sf.hdrs));
    });
    assert.ok(Buffer.concat(got).equals(sf.payload));
  });

  it('segments IPv6 with payload lengths and checksums, and clears FIN/CWR where the kernel does', () => {
    const sf = superFrame({ v6: true, payload: 5000, mss: 1000, flags: 0x80 | 0x10 | 0x08 | 0x01 }); // CWR ACK PSH FIN
    const segs = io.gsoSegment(sf.frame, sf.meta, 0, 0);
    assert.ok(segs);
    assert.equal(segs.length, 5);
    segs.forEach((f, i) => {
      assert.equal(f.readUInt16BE(ETH + 4), 32 + 1000, 'IPv6 payload length');
      const th = ETH + 40;
      const flags = f[th + 13] as number;
      assert.equal(flags & 0x80, i === 0 ? 0x80 : 0, 'CWR only on the first');
      assert.equal(flags & 0x09, i === 4 ? 0x09 : 0, 'FIN and PSH only on the last');
      assert.ok(tcpChecksumOk(f, true));
    });
    assert.ok(Buffer.concat(segs.map((f) => f.subarray(sf.hdrs))).equals(sf.payload));
  });

  it('completes the partial checksum of a single frame and copies it', () => {
    const sf = superFrame({ payload: 300 });
    sf.meta[1] = GSO_NONE;
    const out = io.gsoSegment(sf.frame, sf.meta, 0, 0);
    assert.ok(out && out.length === 1);
    assert.ok(tcpChecksumOk(out[0] as Buffer, false));
    assert.notEqual(out[0], sf.frame);
  });

  it('refuses what it cannot segment (null), without crashing', () => {
    const sf = superFrame();
    assert.equal(io.gsoSegment(sf.frame.subarray(0, 30), sf.meta, 0, 0), null);
    const udp = Buffer.from(sf.frame);
    udp[ETH + 9] = 17;
    assert.equal(io.gsoSegment(udp, sf.meta, 0, 0), null);
    assert.equal(io.gsoSegment(sf.frame, sf.meta, 0, sf.hdrs), null, 'no room for payload');
  });

  it('coalesces the segments back into one super-frame with a virtio_net_hdr (IPv4 and IPv6)', () => {
    for (const v6 of [false, true]) {
      const sf = superFrame({ v6 });
      const dgrams = io.gsoSegment(Buffer.concat([geneve(3), sf.frame]), sf.meta, 0, 1452, DATA_HEADER_LEN) as Buffer[];
      const entries = split(groBuffer(dgrams));
      assert.equal(entries.length, 1);
      const e = entries[0] as (typeof entries)[number];
      assert.equal(e.segs, dgrams.length, 'the entry stands for every datagram (marker counts)');
      assert.ok(e.dgram.subarray(0, DATA_HEADER_LEN).equals(geneve(3)));
      const mss = 1452 - sf.hdrs;
      assert.equal(e.meta[0], 1, 'NEEDS_CSUM');
      assert.equal(e.meta[1], v6 ? GSO_TCPV6 : GSO_TCPV4);
      assert.equal(e.meta.readUInt16LE(2), sf.hdrs, 'hdr_len');
      assert.equal(e.meta.readUInt16LE(4), mss, 'gso_size');
      assert.equal(e.meta.readUInt16LE(6), ETH + (v6 ? 40 : 20), 'csum_start');
      assert.equal(e.meta.readUInt16LE(8), 16, 'csum_offset');
      const f = e.frame;
      assert.equal(f.length, sf.frame.length);
      if (!v6) {
        assert.equal(f.readUInt16BE(ETH + 2), 20 + 32 + 10_000);
        assert.equal(sum16(f.subarray(ETH, ETH + 20)), 0xffff);
      } else {
        assert.equal(f.readUInt16BE(ETH + 4), 32 + 10_000);
      }
      const th = ETH + (v6 ? 40 : 20);
      assert.equal(f.readUInt32BE(th + 4), 0xfffff000, 'seq of the first segment');
      assert.equal(f[th + 13], 0x18, 'PSH of the last segment kept');
      assert.equal(f.readUInt16BE(th + 16), pseudo(f, v6, f.length - th), 'partial checksum = pseudo-header sum');
      assert.ok(f.subarray(sf.hdrs).equals(sf.payload), 'payload intact');
      // And it segments again into the very same datagrams.
      const again = io.gsoSegment(e.dgram, e.meta, 0, 1452, DATA_HEADER_LEN) as Buffer[];
      assert.equal(again.length, dgrams.length);
      again.forEach((d, i) => assert.ok(d.equals(dgrams[i] as Buffer), `segment ${i} identical after a round trip`));
    }
  });

  it('never coalesces across different Geneve headers (epochs), flows, bad checksums or control packets', () => {
    const sf = superFrame({ payload: 6000, mss: 1000, flags: 0x10 });
    const a = io.gsoSegment(Buffer.concat([geneve(1), sf.frame]), sf.meta, 0, 0, DATA_HEADER_LEN) as Buffer[];
    const b = io.gsoSegment(Buffer.concat([geneve(2), sf.frame]), sf.meta, 0, 0, DATA_HEADER_LEN) as Buffer[];
    // epochs 1,1,1 then 2,2,2 (same flow, consecutive seq): two entries
    const mixed = [a[0], a[1], a[2], b[3], b[4], b[5]] as Buffer[];
    let es = split(groBuffer(mixed));
    assert.deepEqual(es.map((e) => e.segs), [3, 3]);
    assert.deepEqual(es.map((e) => decode(e.dgram, 0, e.dgram.length)).map((d) => (d && d.kind === 'data' ? d.epoch : -1)), [1, 2]);
    // a corrupted segment stays alone (and is passed on as it is, for the receiver to drop)
    const bad = a.map((d) => Buffer.from(d));
    const b2 = bad[2] as Buffer;
    b2[DATA_HEADER_LEN + sf.hdrs + 5] = (b2[DATA_HEADER_LEN + sf.hdrs + 5] as number) ^ 0xff;
    es = split(groBuffer(bad));
    assert.deepEqual(es.map((e) => e.segs), [2, 1, 3]);
    assert.equal(es[1]?.meta[1], GSO_NONE);
    // a gap in the sequence
    es = split(groBuffer([a[0], a[2], a[3]] as Buffer[]));
    assert.deepEqual(es.map((e) => e.segs), [1, 2]);
    // a marker (control packet) behind data: its own entry, untouched
    const marker = Buffer.from('05c06558000064' + '00' + 'fff58204' + '00000001000000010000000000000003', 'hex');
    es = split(groBuffer([a[0], a[1], marker] as Buffer[]));
    assert.deepEqual(es.map((e) => e.segs), [2, 1]);
    assert.ok(es[1]?.dgram.equals(marker));
    assert.equal(decode(es[1]?.dgram as Buffer, 0, marker.length)?.kind, 'marker');
  });

  it('survives garbage: random buffers and sizes never crash groSplit', () => {
    let seed = 12345;
    const rnd = (): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x7fffffff;
    };
    const sf = superFrame({ payload: 4000, mss: 500 });
    const good = io.gsoSegment(Buffer.concat([geneve(1), sf.frame]), sf.meta, 0, 0, DATA_HEADER_LEN) as Buffer[];
    for (let t = 0; t < 300; t++) {
      const dgrams = good.map((d) => Buffer.from(d));
      for (let k = 0; k < 5; k++) {
        const d = dgrams[Math.floor(rnd() * dgrams.length)] as Buffer;
        d[Math.floor(rnd() * d.length)] = Math.floor(rnd() * 256);
      }
      const b = groBuffer(dgrams);
      const oddStride = t % 7 === 0;
      const es = split({ ...b, gso: oddStride ? 1 + Math.floor(rnd() * 2000) : b.gso });
      // Every datagram is accounted for exactly once (what marker counts rely on).
      const expected = oddStride ? Math.ceil(b.len / Math.min(es.length ? b.len : 1, b.len)) : dgrams.length;
      if (!oddStride) assert.equal(es.reduce((n, e) => n + e.segs, 0), expected);
      for (const e of es) assert.ok(e.dgram.length > 0 && e.segs >= 1);
    }
  });
});
