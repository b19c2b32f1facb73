import { strict as assert } from 'node:assert';
import { DATA_HEADER_LEN, decode, encodeAck, encodeData, encodeMarker, writeDataHeader } from '../../switch/tunnel/geneve';
import { rng } from '../support/frames';

describe('geneve codec', () => {
  const frame = Buffer.from('ffffffffffff020000000001080600010800060400010200000000010a000001000000000000' + '0a000002', 'hex');

  it('writes the data header byte for byte as RFC 8926 lays it out', () => {
    const b = Buffer.alloc(DATA_HEADER_LEN);
    writeDataHeader(b, 0, 0x123456, 7, 3);
    assert.equal(b.toString('hex'), '03006558' + '12345600' + 'fff50102' + '00000007' + '00000003');
  });

  it('round-trips a data packet', () => {
    const pkt = encodeData(100, 42, 9, frame);
    const d = decode(pkt, 0, pkt.length);
    assert.deepEqual(d, { kind: 'data', vni: 100, epoch: 42, generation: 9, payloadOffset: 20 });
    assert.ok(pkt.subarray(20).equals(frame));
  });

  it('round-trips markers (with a count above 2^32) and acks, both as control packets', () => {
    const m = encodeMarker(5, 3, 2, 2 ** 33 + 17);
    assert.equal(m[1], 0xc0);
    assert.deepEqual(decode(m, 0, m.length), { kind: 'marker', vni: 5, epoch: 3, generation: 2, count: 2 ** 33 + 17 });
    const a = encodeAck(5, 3, 2);
    assert.deepEqual(decode(a, 0, a.length), { kind: 'ack', vni: 5, epoch: 3, generation: 2 });
  });

  it('decodes at an offset inside a larger buffer', () => {
    const pkt = encodeData(77, 1, 1, frame);
    const big = Buffer.concat([Buffer.alloc(13, 0xaa), pkt, Buffer.alloc(5, 0xbb)]);
    assert.deepEqual(decode(big, 13, pkt.length), { kind: 'data', vni: 77, epoch: 1, generation: 1, payloadOffset: 20 });
  });

  it('reports a Geneve packet without the vnsnap option as foreign', () => {
    const pkt = Buffer.concat([Buffer.from('00006558000064' + '00', 'hex'), frame]);
    assert.deepEqual(decode(pkt, 0, pkt.length), { kind: 'foreign', vni: 100, payloadOffset: 8 });
  });

  it('skips other options before ours', () => {
    const other = Buffer.from('0102030100000000', 'hex'); // class 0x0102 type 3, 1 word
    const ours = encodeData(9, 4, 1, frame);
    const pkt = Buffer.concat([Buffer.from([5, 0]), ours.subarray(2, 8), other, ours.subarray(8)]);
    assert.deepEqual(decode(pkt, 0, pkt.length), { kind: 'data', vni: 9, epoch: 4, generation: 1, payloadOffset: 28 });
  });

  it('returns null for malformed input', () => {
    const good = encodeData(1, 1, 1, frame);
    const cases: Buffer[] = [
      Buffer.alloc(0),
      good.subarray(0, 7),
      Buffer.concat([Buffer.from([0x43]), good.subarray(1)]), // version 1
      Buffer.concat([Buffer.from([0x3f]), good.subarray(1)]), // options longer than the packet
      good.subarray(0, 30), // inner frame shorter than an Ethernet header
      (() => {
        const b = Buffer.from(good);
        b[11] = 0x1f; // option data length past the option area
        return b;
      })(),
      (() => {
        const b = encodeMarker(1, 1, 1, 1);
        b[10] = 0x99; // unknown control option
        return b;
      })(),
    ];
    for (const c of cases) assert.equal(decode(c, 0, c.length), null, c.toString('hex'));
  });

  it('never throws on random bytes (10000 packets)', () => {
    const r = rng(1234);
    for (let i = 0; i < 10000; i++) {
      const len = Math.floor(r() * 80);
      const b = Buffer.alloc(len);
      for (let j = 0; j < len; j++) b[j] = Math.floor(r() * 256);
      if (len > 0 && r() < 0.5) b[0] = (b[0] as number) & 0x3f; // version 0 more often
      decode(b, 0, len);
    }
  });
});
