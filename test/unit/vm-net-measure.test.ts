/**
 * The pure parts of bench:vm-net's measurements (test/bench/vm-net-measure.ts): the /proc/stat
 * reading, busy cores between two samples, the /proc/softirqs reading and rates, the
 * median / p95 / max summary, the share of the TCP runs a snapshot was under way, and the CPU of
 * processes summed over several windows (vm-net-threads.ts).
 */
import { strict as assert } from 'node:assert';
import { busyCores, coveredShare, cpuSample, softirqRate, softirqSample, summarize } from '../bench/vm-net-measure';
import { addTicks, busiestThreads, type ThreadSample } from '../bench/vm-net-threads';

describe('bench:vm-net measurements', () => {
  it('reads busy and total jiffies from the aggregate cpu line (idle and iowait are not busy)', () => {
    const stat = 'cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nintr 1\n';
    // user nice system idle iowait irq softirq steal: busy = 100+5+50+3+2+1 = 161, total = 1181
    assert.deepEqual(cpuSample(stat), { busy: 161, total: 1181 });
    assert.throws(() => cpuSample('intr 1\n'), /no aggregate cpu line/);
  });

  it('busy cores: the busy share of the CPU time between two samples times the CPUs', () => {
    assert.equal(busyCores({ busy: 100, total: 1000 }, { busy: 250, total: 1200 }, 2), 1.5);
    assert.equal(busyCores({ busy: 100, total: 1000 }, { busy: 100, total: 1000 }, 2), 0);
  });

  it('reads /proc/softirqs summed over CPUs, and a type per second between two samples', () => {
    const text = '                    CPU0       CPU1\n          HI:          0          1\n       TIMER:        100        250\n         RCU:       1000       2000\n';
    const a = softirqSample(text);
    assert.deepEqual(a, { HI: 1, TIMER: 350, RCU: 3000 });
    const b = { ...a, RCU: 4600 };
    assert.equal(softirqRate(a, b, 'RCU', 2), 800);
    assert.equal(softirqRate(a, b, 'TIMER', 2), 0);
    assert.equal(softirqRate(a, b, 'NET_RX', 2), 0);
    assert.equal(softirqRate(a, b, 'RCU', 0), 0);
  });

  it('summarises with the median, the nearest-rank p95 and the maximum', () => {
    assert.deepEqual(summarize([3, 1, 2]), { median: 2, p95: 3, max: 3, n: 3 });
    assert.deepEqual(summarize([4, 1, 3, 2]), { median: 2.5, p95: 4, max: 4, n: 4 });
    const twenty = Array.from({ length: 20 }, (_, i) => i + 1);
    assert.deepEqual(summarize(twenty), { median: 10.5, p95: 19, max: 20, n: 20 });
    assert.deepEqual(summarize([]), { median: 0, p95: 0, max: 0, n: 0 });
  });

  it('the share of the runs covered by snapshots: clipped to each run, overlaps counted once', () => {
    // two runs of 10 each; snapshots 0-3 (in run 1), 9-12 (its first 1 in run 1, 2 in the gap),
    // 20-24 and 22-26 overlapping (6 in run 2)
    const runs = [[0, 10], [20, 30]] as const;
    assert.equal(coveredShare([[0, 3], [9, 12], [20, 24], [22, 26]], runs), (3 + 1 + 6) / 20);
    assert.equal(coveredShare([[10, 20]], runs), 0, 'a snapshot between the runs');
    assert.equal(coveredShare([[-5, 40]], runs), 1);
    assert.equal(coveredShare([], runs), 0);
    assert.equal(coveredShare([[0, 5]], []), 0);
    assert.equal(coveredShare([[5, 5], [7, 6]], [[0, 10]]), 0, 'empty and reversed intervals cover nothing');
  });

  it('sums what each process used over several windows, and reports it as cores over their seconds', () => {
    const acc: ThreadSample = new Map();
    // window 1: agent used 30 ticks, qemu 100; a process that ended or went backwards adds nothing
    addTicks(acc, new Map([['agent', 100], ['qemu', 1000], ['gone', 5]]), new Map([['agent', 130], ['qemu', 1100]]));
    // window 2 (later samples): agent 20 more, a process started within it 10
    addTicks(acc, new Map([['agent', 150], ['qemu', 1200]]), new Map([['agent', 170], ['qemu', 1200], ['new', 10]]));
    assert.deepEqual([...acc.entries()], [['agent', 50], ['qemu', 100], ['new', 10]]);
    // 160 ticks over 2 windows of 1 s each: busiest first, in cores (ticks are 1/100 s)
    assert.deepEqual(busiestThreads(new Map(), acc, 2), [
      { thread: 'qemu', cores: 0.5 },
      { thread: 'agent', cores: 0.25 },
      { thread: 'new', cores: 0.05 },
    ]);
  });
});
