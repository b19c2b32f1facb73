import { strict as assert } from 'node:assert';
import { ClockOffset, offsetSample } from '../../coordinator/clock-offset';
import { allVmsTracked, commitDelayMs, CUT_MARGIN, cutInstants, CutMargin, parseCutMargin, parsePrecopyLead, TRACKED_BACKGROUND_LEAD_MS, TRACKED_PRECOPY_LEAD_MS } from '../../coordinator/cut-instant';
import type { QemuDriverSpec__Output } from '../../proto/gen/vnsnap/v1/QemuDriverSpec';
import type { VmSpec__Output } from '../../proto/gen/vnsnap/v1/VmSpec';
import { isVnsnapError } from '../../proto/core/errors';
import type { VmSnapshot__Output } from '../../proto/gen/vnsnap/v1/VmSnapshot';

const T = 1_800_000_000_000_000; // µs

function vm(name: string, phases: [string, number, number][]): VmSnapshot__Output {
  return { name, host: 'h1', pauseMs: 1, cutUnixUs: T, memoryBytes: 0, diskBytes: 0, channelFrames: 0, phases: phases.map(([phase, startUnixUs, endUnixUs]) => ({ phase: phase as 'PHASE_COMMIT', startUnixUs, endUnixUs })) };
}

describe('cut instant: clock offsets and the margin', () => {
  it('one NTP sample: offset ((t2 − t1) + (t3 − t4)) / 2, delay (t4 − t1) − (t3 − t2)', () => {
    // agent 2 s ahead; 3 ms out, 1 ms in the agent, 5 ms back
    assert.deepEqual(offsetSample(T, T + 2_000_000 + 3000, T + 2_000_000 + 4000, T + 9000), { offsetUs: 2_000_000 - 1000, delayUs: 8000 });
    // same host, symmetric: offset 0
    assert.deepEqual(offsetSample(T, T + 500, T + 700, T + 1200), { offsetUs: 0, delayUs: 1000 });
  });

  it('refuses a sample with a missing stamp (an older agent: 0) or an impossible order', () => {
    assert.equal(offsetSample(T, 0, 0, T + 10), undefined);
    assert.equal(offsetSample(0, T, T, T), undefined);
    assert.equal(offsetSample(T, T + 10, T + 5, T + 20), undefined, 't3 before t2');
    assert.equal(offsetSample(T, T, T, T - 1), undefined, 't4 before t1');
    assert.equal(offsetSample(T, T, T + 5000, T + 1000), undefined, 'the agent took longer than the round trip (δ −4 ms)');
    assert.deepEqual(offsetSample(T, T, T + 1500, T + 1000), { offsetUs: 250, delayUs: 0 }, 'within the 1 ms slack: δ 0');
  });

  it('the estimate is the smallest-delay sample of the last `window`', () => {
    const c = new ClockOffset(3);
    assert.equal(c.estimate(), undefined);
    c.add({ offsetUs: 10, delayUs: 900 });
    c.add(undefined);
    c.add({ offsetUs: 20, delayUs: 100 });
    c.add({ offsetUs: 30, delayUs: 500 });
    assert.deepEqual(c.estimate(), { offsetUs: 20, delayUs: 100 });
    c.add({ offsetUs: 40, delayUs: 700 });
    c.add({ offsetUs: 50, delayUs: 600 }); // the 100 µs sample leaves the window
    assert.deepEqual(c.estimate(), { offsetUs: 30, delayUs: 500 });
  });

  it('the margin: the default without delays, then 1.5 × the largest of the last 16 + 5 ms within [20, 250]; fixed when configured', () => {
    const m = new CutMargin();
    assert.equal(m.marginMs(), 100);
    m.observe(2);
    assert.equal(m.marginMs(), 20, '1.5 × 2 + 5 = 8: the floor');
    m.observe(43.7);
    assert.equal(m.marginMs(), 71, 'ceil(1.5 × 43.7 + 5)');
    m.observe(-3);
    m.observe(Number.NaN);
    assert.deepEqual(m.recent(), [2, 43.7, 0]);
    m.observe(400);
    assert.equal(m.marginMs(), 250, 'the ceiling');
    for (let i = 0; i < 16; i++) m.observe(10);
    assert.equal(m.marginMs(), 20, 'the 400 ms delay left the history');
    assert.equal(new CutMargin(35).marginMs(), 35);
    assert.equal(new CutMargin(0).marginMs(), 0);
  });

  it("a pre-copy commit's margin: the margin + the lead; 'auto' (the default) leads by TRACKED_PRECOPY_LEAD_MS for an all-tracked VNE only; none when the margin is 0 or there is no lead; VNSNAP_PRECOPY_LEAD_MS parsed", () => {
    assert.equal(TRACKED_PRECOPY_LEAD_MS, 300);
    assert.equal(new CutMargin().precopyMarginMs(false), 0, 'auto, not every VM tracked: no instant');
    assert.equal(new CutMargin().precopyMarginMs(true), CUT_MARGIN.defaultMs + TRACKED_PRECOPY_LEAD_MS, 'auto, every VM tracked: the margin + the tracked lead');
    assert.equal(new CutMargin(35).precopyMarginMs(true), 35 + TRACKED_PRECOPY_LEAD_MS);
    assert.equal(new CutMargin(0).precopyMarginMs(true), 0, 'no instant at all: none for tracked VNEs either');
    assert.equal(new CutMargin('auto', {}, 100).precopyMarginMs(false), CUT_MARGIN.defaultMs + 100, 'a lead set applies to every VNE');
    assert.equal(new CutMargin(35, {}, 80).precopyMarginMs(true), 115);
    assert.equal(new CutMargin(0, {}, 80).precopyMarginMs(false), 0);
    assert.equal(new CutMargin(35, {}, 'none').precopyMarginMs(true), 0, "'none' set: no instant, tracked VNEs too");
    assert.equal(new CutMargin(35, {}, 'none').precopyMarginMs(false), 0);
    assert.equal(new CutMargin(35, {}, 'none').marginMs(), 35, 'background commits keep theirs');
    const parsed = [undefined, ' ', 'auto', ' auto ', 'none', '0', '150', '-1', '1.5', 'x', '1001'].map((v) => {
      try {
        return parsePrecopyLead(v);
      } catch (e) {
        return isVnsnapError(e, 'ERR_CONFIG') ? 'ERR_CONFIG' : e;
      }
    });
    assert.deepEqual(parsed, ['auto', 'auto', 'auto', 'auto', 'none', 0, 150, 'ERR_CONFIG', 'ERR_CONFIG', 'ERR_CONFIG', 'ERR_CONFIG']);
  });

  it("a background commit's margin: the margin, + TRACKED_BACKGROUND_LEAD_MS for an all-tracked VNE; none when the margin is 0; the pre-copy lead setting does not touch it", () => {
    assert.equal(TRACKED_BACKGROUND_LEAD_MS, 100);
    assert.equal(new CutMargin().backgroundMarginMs(false), CUT_MARGIN.defaultMs);
    assert.equal(new CutMargin().backgroundMarginMs(true), CUT_MARGIN.defaultMs + TRACKED_BACKGROUND_LEAD_MS);
    assert.equal(new CutMargin(35).backgroundMarginMs(true), 35 + TRACKED_BACKGROUND_LEAD_MS);
    assert.equal(new CutMargin(0).backgroundMarginMs(true), 0, 'no instant at all: none for tracked VNEs either');
    assert.equal(new CutMargin(35, {}, 'none').backgroundMarginMs(true), 35 + TRACKED_BACKGROUND_LEAD_MS);
    assert.equal(new CutMargin(35, {}, 80).backgroundMarginMs(false), 35);
    const m = new CutMargin();
    m.observe(30);
    assert.equal(m.backgroundMarginMs(true), 50 + TRACKED_BACKGROUND_LEAD_MS, 'the adaptive margin (1.5 × 30 + 5) + the lead');
  });

  it('allVmsTracked: every VM a QEMU VM with extra memory=tracked, and at least one', () => {
    const qemu = (extra: Record<string, string>): Pick<VmSpec__Output, 'driver'> => ({ driver: { kind: 'qemu', qemu: { memoryMib: 128, cpus: 1, kernel: '/k', initrd: '', append: '', disk: '', extra } as QemuDriverSpec__Output } });
    const sim: Pick<VmSpec__Output, 'driver'> = { driver: { kind: 'sim', sim: { memoryMib: 8, dirtyRateMibS: 1, frameRateHz: 10, peers: [] } } };
    const tracked = qemu({ memory: 'tracked' });
    assert.equal(allVmsTracked([tracked, qemu({ memory: 'tracked', nic: 'tap' })]), true);
    assert.equal(allVmsTracked([tracked]), true);
    assert.equal(allVmsTracked([tracked, qemu({ memory: 'migration' })]), false, 'one VM of the migration stream');
    assert.equal(allVmsTracked([tracked, qemu({})]), false, 'no memory key: migration');
    assert.equal(allVmsTracked([tracked, sim]), false, 'a sim VM');
    assert.equal(allVmsTracked([tracked, { driver: null }]), false, 'no driver');
    assert.equal(allVmsTracked([]), false, 'no VMs');
  });

  it('VNSNAP_CUT_MARGIN_MS: auto, whole ms 0..10000, anything else ERR_CONFIG', () => {
    assert.equal(parseCutMargin(undefined), 'auto');
    assert.equal(parseCutMargin(' auto '), 'auto');
    assert.equal(parseCutMargin(''), 'auto');
    assert.equal(parseCutMargin('0'), 0);
    assert.equal(parseCutMargin('80'), 80);
    for (const bad of ['-1', '1.5', 'fast', '10001'])
      assert.throws(
        () => parseCutMargin(bad),
        (e) => isVnsnapError(e, 'ERR_CONFIG'),
      );
  });

  it("each agent's instant is the coordinator's plus its offset (unknown: 0)", () => {
    const at = cutInstants(T + 80_000, ['h1', 'h2', 'h3'], (a) => ({ h1: 0, h2: -1_500_250.4 })[a]);
    assert.deepEqual([...at], [
      ['h1', T + 80_000],
      ['h2', T + 80_000 - 1_500_250],
      ['h3', T + 80_000],
    ]);
  });

  it("a commit's delay: its receipt in the agent's clock taken back by the offset, the largest over the agent's VMs; undefined without both ends", () => {
    const vms = [
      vm('a', [
        ['PHASE_PAUSE', T, T + 5000],
        ['PHASE_COMMIT', T - 30_000, T + 2_000_000 - 18_000],
      ]),
      vm('b', [['PHASE_COMMIT', T - 30_000, T + 2_000_000 - 17_500]]),
    ];
    assert.equal(commitDelayMs(vms, 2_000_000), 12.5);
    assert.equal(commitDelayMs([vm('c', [['PHASE_COMMIT', 0, T]])], 0), undefined);
    assert.equal(commitDelayMs([vm('d', [['PHASE_DRAIN', T, T + 1]])], 0), undefined);
  });
});
