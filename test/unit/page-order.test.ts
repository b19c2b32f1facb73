/**
 * page-order.ts on synthetic QEMU 7.2 migration streams (test/support/migration-stream-builder.ts):
 * exact output bytes for in-order, out-of-order, bounded, re-sent and not-understood streams,
 * whatever the read sizes; and the rewriter's throughput on a 64 MiB stream.
 */
import { strict as assert } from 'node:assert';
import { HELD_OVERHEAD, PageOrder, type PageOrderOptions } from '../../agent/drivers/qemu/page-order';
import { buildStream, fullSection, PAGE, pages, type PageRec, type Rec, type StreamSpec } from '../support/migration-stream-builder';
import { pageHeader, SEC } from '../../agent/drivers/qemu/migration-stream';

const BLOCKS: [string, number][] = [
  ['pc.ram', 16 * PAGE],
  ['vga.vram', 4 * PAGE],
  ['/rom@etc/acpi/tables', 2 * PAGE],
];

/**
 * Run `input` through a PageOrder in reads of `step` bytes, as a stream does: each read in one
 * buffer reused for every read, the output copied at once, then that buffer overwritten (0xee):
 * output that kept a view of an earlier read, or of a held page's slot reused too early, differs.
 */
function rewrite(input: Buffer, step: number, o: PageOrderOptions = {}): { out: Buffer; po: PageOrder; reasons: string[] } {
  const reasons: string[] = [];
  const po = new PageOrder({ ...o, onFallback: (r) => reasons.push(r) });
  const out: Buffer[] = [];
  const readBuf = Buffer.alloc(Math.min(step, input.length));
  for (let i = 0; i < input.length; i += step) {
    const n = input.copy(readBuf, 0, i, i + step);
    for (const b of po.push(readBuf.subarray(0, n))) out.push(Buffer.from(b));
    readBuf.fill(0xee);
  }
  for (const b of po.end()) out.push(Buffer.from(b));
  return { out: Buffer.concat(out), po, reasons };
}

/** The same output for reads of 1 byte, 7 bytes, 4 KiB + 3 and all at once; returns it. */
function rewriteAllWays(input: Buffer, o: PageOrderOptions = {}): { out: Buffer; po: PageOrder; reasons: string[] } {
  const whole = rewrite(input, input.length, o);
  for (const step of [1, 7, PAGE + 3]) assert.ok(rewrite(input, step, o).out.equals(whole.out), `reads of ${step} bytes gave another output`);
  return whole;
}

const spec = (sections: Rec[][], extra: Partial<StreamSpec> = {}): StreamSpec => ({ blocks: BLOCKS, sections, ...extra });
const p = (block: string, page: number, more: Partial<PageRec> = {}): PageRec => ({ block, page, ...more });
const all = (): PageRec[] => [...pages('pc.ram', 0, 16, (n) => n % 3 === 0), ...pages('vga.vram', 0, 4), ...pages('/rom@etc/acpi/tables', 0, 2)];

describe('page-order: RAM pages of a QEMU migration stream in address order', function () {
  it('leaves a stream already in order byte for byte as it is (with and without footers)', function () {
    for (const footers of [true, false]) {
      const a = all();
      const input = buildStream(spec([a.slice(0, 5), a.slice(5, 17), a.slice(17)], { footers }));
      const { out, po, reasons } = rewriteAllWays(input);
      assert.deepEqual(reasons, []);
      assert.ok(out.equals(input));
      assert.deepEqual([po.stats.pages, po.stats.held, po.stats.forced, po.stats.late, po.stats.fallback], [22, 0, 0, 0, undefined]);
    }
  });

  it('puts pages saved ahead of the scan (write faults) back in the scan order, across sections and blocks', function () {
    const ram = (a: number, b: number): PageRec[] => pages('pc.ram', a, b);
    // The scan skips pages the faults already saved: pc.ram 5, 6, 12; vga.vram 2; acpi 0.
    const input = buildStream(
      spec([
        [...ram(0, 3), p('pc.ram', 12), p('vga.vram', 2), ...ram(3, 5)],
        [p('pc.ram', 6), p('/rom@etc/acpi/tables', 0), p('pc.ram', 5), ...ram(7, 12)],
        [...ram(13, 16), ...pages('vga.vram', 0, 2), p('vga.vram', 3), p('/rom@etc/acpi/tables', 1)],
      ]),
    );
    // What a pure linear scan sends, each page in the section where the scan reached it.
    const want = buildStream(spec([ram(0, 5), ram(5, 13), [...ram(13, 16), ...pages('vga.vram', 0, 4), ...pages('/rom@etc/acpi/tables', 0, 2)]]));
    const { out, po, reasons } = rewriteAllWays(input);
    assert.deepEqual(reasons, []);
    assert.ok(out.equals(want), 'not the linear scan stream');
    assert.deepEqual([po.stats.pages, po.stats.held, po.stats.forced, po.stats.atEnd], [22, 4, 0, 0]);
    assert.equal(po.stats.peakHeldBytes, 4 * (PAGE + HELD_OVERHEAD));
  });

  it('holds more pages than a slab of slots, reuses the slots of pages gone out, every byte as sent', function () {
    const blocks: [string, number][] = [['pc.ram', 1200 * PAGE]];
    const ram = (a: number, b: number): PageRec[] => pages('pc.ram', a, b, (n) => n % 7 === 0);
    // 600..900 wait (300 pages: more than a slab), go out after 0..600; then 1000..1200 wait in the slots they left.
    const input = buildStream(spec([[...ram(600, 900), ...ram(0, 300)], [...ram(300, 600), ...ram(1000, 1200)], ram(900, 1000)], { blocks }));
    const want = buildStream(spec([ram(0, 300), [...ram(300, 900)], ram(900, 1200)], { blocks }));
    const { out, po, reasons } = rewrite(input, input.length);
    for (const step of [PAGE + 3, 3 * PAGE + 5]) assert.ok(rewrite(input, step).out.equals(out), `reads of ${step} bytes gave another output`);
    assert.deepEqual(reasons, []);
    assert.ok(out.equals(want), 'not the linear scan stream');
    const held = ram(600, 900).length + ram(1000, 1200).length;
    assert.deepEqual([po.stats.pages, po.stats.held, po.stats.forced, po.stats.late, po.stats.atEnd], [1200, held, 0, 0, 0]);
  });

  it('writes out the lowest held pages once the bound is passed, and the late scan pages as they come', function () {
    const input = buildStream(spec([[p('pc.ram', 0), p('pc.ram', 9), p('pc.ram', 4), p('pc.ram', 7), ...pages('pc.ram', 1, 4), p('pc.ram', 5), p('pc.ram', 6), p('pc.ram', 8), ...pages('pc.ram', 10, 16)]], { blocks: [['pc.ram', 16 * PAGE]] }));
    // Bound 2 pages: holding 9, 4, 7 is one too many, so 4 goes out (ahead of 1..3, which come late), then 5, 6 join it.
    const want = buildStream(spec([[p('pc.ram', 0), p('pc.ram', 4), ...pages('pc.ram', 1, 4), ...pages('pc.ram', 5, 16)]], { blocks: [['pc.ram', 16 * PAGE]] }));
    const { out, po } = rewriteAllWays(input, { holdBytes: 2 * (PAGE + HELD_OVERHEAD) });
    assert.ok(out.equals(want));
    assert.deepEqual([po.stats.forced, po.stats.late, po.stats.held], [1, 3, 3]);
  });

  it('writes what is still held when the RAM part ends in one more RAM section before the device state', function () {
    // Page 13 is never sent (a page QEMU left out): 15 and 14 wait for it until the device state comes.
    const input = buildStream(spec([[...pages('pc.ram', 0, 13), p('pc.ram', 15), p('pc.ram', 14)]], { blocks: [['pc.ram', 16 * PAGE]] }));
    const want = buildStream(spec([pages('pc.ram', 0, 13), pages('pc.ram', 14, 16)], { blocks: [['pc.ram', 16 * PAGE]] }));
    const { out, po, reasons } = rewriteAllWays(input);
    assert.deepEqual(reasons, []);
    assert.ok(out.equals(want));
    assert.equal(po.stats.atEnd, 2);
  });

  it('keeps a re-sent page after its earlier copy (a pre-copy pass): the stream stays as it was', function () {
    const a = all();
    const input = buildStream(spec([a, [p('pc.ram', 4, { version: 1 }), p('vga.vram', 1, { version: 1 }), p('pc.ram', 2, { version: 1 })]]));
    const { out, po } = rewriteAllWays(input);
    assert.ok(out.equals(input));
    assert.equal(po.stats.late, 3);
  });

  it('passes a stream with a section before RAM through unchanged and says why', function () {
    const input = buildStream(spec([all()], { beforeRam: fullSection(1, 'dirty-bitmap', Buffer.from([1, 2, 3])) }));
    const { out, reasons } = rewriteAllWays(input);
    assert.ok(out.equals(input));
    assert.deepEqual(reasons, ['section dirty-bitmap (type 4) before the RAM section']);
  });

  it('passes a stream of another format through unchanged', function () {
    const input = Buffer.concat([Buffer.from('QEVM'), Buffer.from([0, 0, 0, 2]), Buffer.alloc(100, 9)]);
    const { out, reasons } = rewriteAllWays(input);
    assert.ok(out.equals(input));
    assert.deepEqual(reasons, ['not a QEMU migration stream of version 3']);
  });

  it('at a record it does not know: held pages out, the last block restored for CONTINUE, the rest unchanged', function () {
    // An XBZRLE record (flag 0x40) with CONTINUE: it refers to the block of the page before it (pc.ram).
    const xbzrle = Buffer.concat([pageHeader(3 * PAGE, 0x40, undefined), Buffer.from([1, 0, 2, 0xaa, 0xbb])]);
    const input = buildStream(spec([[p('pc.ram', 0), p('vga.vram', 1), p('pc.ram', 1)], [xbzrle, ...pages('pc.ram', 2, 16)]]));
    const head = buildStream(spec([[p('pc.ram', 0), p('pc.ram', 1)], [p('vga.vram', 1), p('pc.ram', 1)]], { noTail: true }));
    // head ends with the second section's EOS and footer: the rewriter's output continues with the raw XBZRLE record instead.
    const cut = head.length - 8 - 5;
    const rawFrom = input.indexOf(xbzrle);
    const want = Buffer.concat([head.subarray(0, cut), input.subarray(rawFrom)]);
    const { out, reasons } = rewriteAllWays(input);
    assert.deepEqual(reasons, ['RAM record flags 0x60']);
    assert.ok(out.equals(want));
  });

  it('passes through an unknown section after RAM with the held pages written before it', function () {
    const input = Buffer.concat([buildStream(spec([[p('pc.ram', 0), p('pc.ram', 2)]], { noTail: true })), Buffer.from([SEC.COMMAND, 0, 1, 0, 0]), Buffer.from([SEC.EOF])]);
    const head = buildStream(spec([[p('pc.ram', 0)], [p('pc.ram', 2)]], { noTail: true }));
    const { out, po } = rewriteAllWays(input);
    assert.ok(out.equals(Buffer.concat([head, Buffer.from([SEC.COMMAND, 0, 1, 0, 0]), Buffer.from([SEC.EOF])])));
    assert.equal(po.stats.fallback, undefined);
    assert.equal(po.stats.atEnd, 1);
  });

  it('at the device state, writes the held pages without repeating a page for the last block; before another section, repeats it', function () {
    // vga.vram 1 is held to the end; the input's last record is in pc.ram, the output's in vga.vram.
    const ram = [[p('pc.ram', 0), p('vga.vram', 1), p('pc.ram', 1)]];
    const { out } = rewriteAllWays(buildStream(spec(ram)));
    assert.ok(out.equals(buildStream(spec([[p('pc.ram', 0), p('pc.ram', 1)], [p('vga.vram', 1)]]))));
    // A COMMAND section may be followed by RAM sections whose CONTINUE means pc.ram: pc.ram 1 again.
    const tail = Buffer.from([SEC.COMMAND, 0, 1, 0, 0, SEC.EOF]);
    const input = Buffer.concat([buildStream(spec(ram, { noTail: true })), tail]);
    const want = Buffer.concat([buildStream(spec([[p('pc.ram', 0), p('pc.ram', 1)], [p('vga.vram', 1), p('pc.ram', 1)]], { noTail: true })), tail]);
    assert.ok(rewriteAllWays(input).out.equals(want));
  });

  it(`rewrites a 64 MiB stream with 5 % of its pages ahead of the scan at a speed far above a guest's`, function () {
    const n = 16384;
    const order: PageRec[] = [];
    const faults = new Set<number>();
    let seed = 7;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let k = 0; k < n; k++) {
      if (rnd() < 0.05) {
        const ahead = k + 1 + Math.floor(rnd() * 2000);
        if (ahead < n && !faults.has(ahead)) {
          faults.add(ahead);
          order.push(p('pc.ram', ahead));
        }
      }
      if (!faults.has(k)) order.push(k % 5 === 0 ? p('pc.ram', k, { fill: 0 }) : p('pc.ram', k));
    }
    const sections: Rec[][] = [];
    for (let i = 0; i < order.length; i += 2000) sections.push(order.slice(i, i + 2000));
    const input = buildStream({ blocks: [['pc.ram', n * PAGE]], sections });
    const t0 = performance.now();
    const { out, po } = rewrite(input, 64 * 1024);
    const ms = performance.now() - t0;
    const mibS = input.length / 1048576 / (ms / 1000);
    console.log(`      page-order: ${(input.length / 1048576).toFixed(1)} MiB, ${po.stats.held} pages held (peak ${(po.stats.peakHeldBytes / 1048576).toFixed(1)} MiB), ${ms.toFixed(0)} ms: ${mibS.toFixed(0)} MiB/s`);
    assert.equal(out.length, input.length);
    assert.equal(po.stats.forced, 0);
    // In order: read again, every page arrives exactly where the previous one left off.
    const again = rewrite(out, 64 * 1024).po.stats;
    assert.deepEqual([again.pages, again.held, again.late, again.forced, again.fallback], [n, 0, 0, 0, undefined]);
    assert.ok(mibS > 40, `${mibS.toFixed(0)} MiB/s`);
  });
});
