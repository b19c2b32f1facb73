import { strict as assert } from 'node:assert';
import { cutTraceLine, isTracePhase } from '../../coordinator/cli/cut-trace';
import { renderSnapshot } from '../../coordinator/cli/format';
import { renderTimelineSvg } from '../../coordinator/cli/timeline-svg';
import type { Snapshot__Output } from '../../proto/gen/vnsnap/v1/Snapshot';

const CUT = 1_800_000_000_000_000;
const span = (phase: string, fromMs: number, toMs: number) => ({ phase, startUnixUs: CUT + fromMs * 1000, endUnixUs: CUT + toMs * 1000 });

function traced(): Snapshot__Output {
  const vm = {
    name: 'a',
    host: 'h1',
    pauseMs: 21.5,
    cutUnixUs: CUT,
    memoryBytes: 0,
    diskBytes: 0,
    channelFrames: 0,
    phases: [
      span('PHASE_PAUSE', 0, 21.5),
      span('PHASE_COMMIT', -3.2, -0.4),
      span('PHASE_QMP_STOP', -0.2, 0.4),
      span('PHASE_EVENT_STOP', 0, 0.3),
      span('PHASE_DRAIN', 0.5, 1.1),
      span('PHASE_LOOP_STALL', 1.0, 18.9),
      span('PHASE_QMP_MIGRATE', 1.2, 20.0),
      span('PHASE_PERSIST', 30, 900),
    ],
  };
  return {
    id: 's1', vne: 'blue', epoch: 1, mode: 'SNAPSHOT_MODE_BACKGROUND', state: 'SNAPSHOT_STATE_COMPLETE', description: '', createdUnixMs: CUT / 1000 - 10, completedUnixMs: CUT / 1000 + 900,
    error: '', vms: [vm], artefacts: [], manifestPath: '', sizeBytes: 0, lostFrames: 0, generation: 1, storedBytes: 0, verifiedUnixMs: 0, verifyProblems: [], storedBytesKnown: false,
  } as unknown as Snapshot__Output;
}

describe('cut traces in snapshot show and the timeline', () => {
  it('the trace line: the pause and every trace phase in start order, ms from the cut; the snapshot steps left out', () => {
    assert.equal(
      cutTraceLine(traced().vms[0] as Snapshot__Output['vms'][number]),
      'commit -3.2…-0.4, qmp_stop -0.2…+0.4, event_stop 0…+0.3, pause 0…+21.5, drain +0.5…+1.1, loop_stall +1.0…+18.9, qmp_migrate +1.2…+20.0',
    );
    assert.equal(cutTraceLine({ cutUnixUs: 0, phases: [] }), '-');
    assert.deepEqual(['PHASE_COMMIT', 'PHASE_DRAIN', 'PHASE_LOOP_STALL', 'PHASE_QMP_OTHER', 'PHASE_EVENT_RESUME', 'PHASE_PAUSE', 'PHASE_COPY', 'PHASE_PERSIST'].map(isTracePhase), [true, true, true, true, true, false, false, false]);
  });

  it("snapshot show's PHASES column keeps to the snapshot's steps; the SVG draws the trace phases with their colours and a legend that wraps", () => {
    const text = renderSnapshot(traced(), { phases: true });
    assert.match(text, /pause 21\.5 ms, persist 870\.0 ms\n/);
    assert.doesNotMatch(text, /drain|qmp|commit 2/);
    const svg = renderTimelineSvg(traced());
    const bars = [...svg.matchAll(/<rect class="bar" data-phase="([A-Z_]+)"[^>]*fill="([^"]+)"/g)].map((m) => `${m[1]}:${m[2]}`);
    for (const b of ['DRAIN:#17becf', 'LOOP_STALL:#d62728', 'QMP_STOP:#8c564b', 'QMP_MIGRATE:#8c564b', 'COMMIT:#bab0ac', 'EVENT_STOP:#7f7f7f']) assert.ok(bars.includes(b), `${b} in ${bars.join(' ')}`);
    const legendYs = new Set([...svg.slice(svg.indexOf('class="legend"')).matchAll(/<rect x="\d+" y="(\d+)"/g)].map((m) => m[1]));
    assert.ok(legendYs.size >= 2, `legend rows ${[...legendYs].join(',')}`);
  });
});
