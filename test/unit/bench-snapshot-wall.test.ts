import { strict as assert } from 'node:assert';
import { medianWallSplit, wallSplit, wallSplitLine } from '../bench/snapshot-wall';

const T = 1_800_000_000_000_000;
const vm = (name: string, cut: number, phases: [string, number, number][]) => ({ name, host: 'h', pauseMs: 1, cutUnixUs: String(cut), phases: phases.map(([phase, s, e]) => ({ phase, startUnixUs: s, endUnixUs: String(e) })) });

describe('bench:snapshot wall-time split', () => {
  it('splits a snapshot at its first trace, first cut, first and last persist; the rest of the wall time is outside the traced span', () => {
    const vms = [
      vm('a', T + 300_000, [['PHASE_PRECOPY', T, T + 300_000], ['PHASE_PERSIST', T + 700_000, T + 2_700_000]]),
      vm('b', T + 320_000, [['PHASE_COMMIT', T + 250_000, T + 260_000], ['PHASE_PERSIST', T + 710_000, T + 3_700_000]]),
    ];
    assert.deepEqual(wallSplit(vms, 4.5), { before_cut: 0.3, cut_to_persist: 0.4, persist: 3, outside: 0.8, wall: 4.5 });
    assert.equal(wallSplit([vm('c', T, [['PHASE_COMMIT', T - 5, T]])], 1), null, 'no persist phase: nothing to split');
    // Two snapshots of two VMs each: the median of each part.
    const later = vms.map((v) => ({ ...v, phases: v.phases.map((p) => (p.phase === 'PHASE_PERSIST' ? { ...p, endUnixUs: String(Number(p.endUnixUs) + 1_000_000) } : p)) }));
    assert.deepEqual(medianWallSplit([...vms, ...later], 2, [4.5, 5.5]), { before_cut: 0.3, cut_to_persist: 0.4, persist: 3.5, outside: 0.8, wall: 5 });
    assert.equal(medianWallSplit([], 2, []), null);
    assert.equal(wallSplitLine({ before_cut: 0.3, cut_to_persist: 0.4, persist: 3, outside: 0.8, wall: 4.5 }), 'before cut 0.3 s, cut → persist 0.4 s, persist 3 s, outside the traced span 0.8 s (of 4.5 s)');
  });

  it("splits the time outside the traces by the command's spawn and the catalog's created and completed instants", () => {
    const vms = [
      vm('a', T + 300_000, [['PHASE_COMMIT', T, T + 10_000], ['PHASE_PERSIST', T + 700_000, T + 900_000]]),
      vm('b', T + 310_000, [['PHASE_PERSIST', T + 710_000, T + 1_000_000]]),
    ];
    // spawned 0.6 s before the first trace, recorded 0.45 s before it; completed 0.05 s after the last persist; the command exits 0.2 s later
    const t = T / 1000;
    const marks = { spawnUnixMs: t - 600, createdUnixMs: t - 450, completedUnixMs: t + 1050 };
    const w = wallSplit(vms, 1.85, marks);
    assert.deepEqual(w, { before_cut: 0.3, cut_to_persist: 0.4, persist: 0.3, outside: 0.85, wall: 1.85, to_created: 0.15, begin: 0.45, to_completed: 0.05, to_exit: 0.2 });
    assert.equal(
      wallSplitLine(w as NonNullable<typeof w>),
      "before cut 0.3 s, cut → persist 0.4 s, persist 0.3 s, outside the traced span 0.85 s (command start to the snapshot's record 0.15 s, begin 0.45 s, last persist to completed 0.05 s, completed to the command's exit 0.2 s) (of 1.85 s)",
    );
    // the median carries the parts only when every snapshot had its marks
    assert.equal(medianWallSplit(vms, 2, [1.85], [marks])?.begin, 0.45);
    assert.equal(medianWallSplit([...vms, ...vms], 2, [1.85, 1.85], [marks])?.begin, undefined);
  });
});
