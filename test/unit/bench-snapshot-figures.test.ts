import { strict as assert } from 'node:assert';
import { commitSkewMs, cutSpreadMs, longestTraces, medianTraces, p95, ratio, spreadParts, spreadPartsLine, stats, targetLines, traceStats } from '../bench/snapshot-figures';

const CUT = 1_800_000_000_000_000;

describe('bench:snapshot figures', () => {
  it('median, nearest-rank p95 and max; a mode with no value is an error, not NaN', () => {
    const xs = Array.from({ length: 40 }, (_, i) => i + 1); // 1..40
    assert.deepEqual(stats(xs), { median: 20.5, p95: 38, max: 40 });
    assert.equal(p95([5]), 5);
    assert.throws(() => stats([]), /no values/);
  });

  it("a snapshot's cut spread in parts: receipts, cut begins (CUT_AT's end, else the receipt), stop written; the largest commit delay, begin lateness and stop → STOP", () => {
    const ph = (phase: string, start: number, end: number) => ({ phase, startUnixUs: start, endUnixUs: end });
    const vms = [
      // h1 received the commit 40 ms before h2, both cut at the instant CUT (h1's timer 0.5 ms late)
      { name: 'a', host: 'h1', pauseMs: 5, cutUnixUs: CUT + 3000, phases: [ph('PHASE_COMMIT', CUT - 50_000, CUT - 45_000), ph('PHASE_CUT_AT', CUT, CUT + 500), ph('PHASE_QMP_STOP', CUT + 600, CUT + 9000)] },
      // h2's commit came 4 ms after the instant: cut at once
      { name: 'b', host: 'h2', pauseMs: 5, cutUnixUs: String(CUT + 4000 + 12_000), phases: [ph('PHASE_COMMIT', CUT - 50_000, CUT + 4000), ph('PHASE_CUT_AT', CUT, CUT + 4000), ph('PHASE_QMP_STOP', CUT + 4100, CUT + 20_000)] },
    ];
    const p = spreadParts(vms);
    assert.deepEqual(p, { cut: 13, receipt: 49, cutBegin: 3.5, stopWritten: 3.5, commitDelayMax: 54, beginLateMax: 4, stopLagMax: 11.9 });
    assert.equal(spreadPartsLine(p), 'cut 13.0 ms; spreads: receipts 49.0, cut begins 3.5, stop written 3.5; max: commit delay 54.0, begin late 4.0, stop → STOP 11.9');
    // An older coordinator (no CUT_AT: the cut begins at the receipt) and a pre-copy cut that wrote no stop.
    const old = spreadParts([
      { name: 'a', host: 'h1', pauseMs: 1, cutUnixUs: CUT, phases: [ph('PHASE_COMMIT', CUT - 9000, CUT - 8000)] },
      { name: 'b', host: 'h2', pauseMs: 1, cutUnixUs: CUT + 1000, phases: [ph('PHASE_COMMIT', CUT - 9000, CUT - 2000)] },
    ]);
    assert.deepEqual(old, { cut: 1, receipt: 6, cutBegin: 6, stopWritten: null, commitDelayMax: 7, beginLateMax: null, stopLagMax: null });
  });

  it("cut spread from the catalog's cut instants (strings from JSON too; unknown cuts ignored); trace phases summarised; the longest pauses first", () => {
    const vms = [
      { name: 'a', host: 'h1', pauseMs: 21.5, cutUnixUs: CUT, phases: [{ phase: 'PHASE_PAUSE', startUnixUs: CUT, endUnixUs: CUT + 21_500 }, { phase: 'PHASE_DRAIN', startUnixUs: CUT + 500, endUnixUs: CUT + 1500 }] },
      { name: 'b', host: 'h2', pauseMs: 466, cutUnixUs: String(CUT + 12_340), phases: [{ phase: 'PHASE_DRAIN', startUnixUs: CUT + 13_000, endUnixUs: CUT + 16_000 }, { phase: 'PHASE_LOOP_STALL', startUnixUs: CUT + 13_000, endUnixUs: CUT + 413_000 }] },
      { name: 'c', host: 'h2', pauseMs: 3, cutUnixUs: 0 },
    ];
    assert.equal(cutSpreadMs(vms), 12.3);
    assert.equal(cutSpreadMs([vms[0] as (typeof vms)[number]]), 0);
    const rx = (name: string, us: number) => ({ name, host: 'h', pauseMs: 1, cutUnixUs: CUT, phases: [{ phase: 'PHASE_COMMIT', startUnixUs: CUT - 9000, endUnixUs: us }] });
    assert.equal(commitSkewMs([rx('a', CUT - 3000), rx('b', CUT - 250), rx('c', CUT - 2000)]), 2.8);
    assert.equal(commitSkewMs(vms), 0);
    assert.deepEqual(traceStats(vms), { drain: { median: 2, p95: 3, max: 3, n: 2 }, loop_stall: { median: 400, p95: 400, max: 400, n: 1 } });
    assert.deepEqual(longestTraces(vms, 2), ['h2/b 466.0 ms: drain +0.7…+3.7, loop_stall +0.7…+400.7', 'h1/a 21.5 ms: pause 0…+21.5, drain +0.5…+1.5']);
    assert.deepEqual(medianTraces(vms, 1), ['h1/a 21.5 ms: pause 0…+21.5, drain +0.5…+1.5']);
    assert.deepEqual(medianTraces(vms, 2), ['h2/c 3.0 ms: -', 'h1/a 21.5 ms: pause 0…+21.5, drain +0.5…+1.5']);
    assert.deepEqual(medianTraces(vms, 5).length, 3);
  });

  it('targets: MET at the limit, NOT MET above it, n/a without a figure; ratios need both sides', () => {
    assert.deepEqual(ratio(3, 2), 1.5);
    assert.equal(ratio(3, 0), null);
    assert.equal(ratio(null, 2), null);
    assert.deepEqual(
      targetLines([
        { what: 'a', value: 20, limit: 20, unit: 'ms' },
        { what: 'bb', value: 1.31, limit: 1.3, unit: 'x' },
        { what: 'c', value: null, limit: 1.1, unit: 'x' },
      ]),
      ['a      20.0 ms  ≤ 20 ms    MET', 'bb       1.31×  ≤ 1.3×     NOT MET', 'c          n/a  ≤ 1.1×     n/a'],
    );
  });
});
