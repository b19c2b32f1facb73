/**
 * A VM's cut trace (the phases its agent records around the cut: PHASE_COMMIT, PHASE_CUT_AT, PHASE_DRAIN,
 * PHASE_LOOP_*, PHASE_QMP_*, PHASE_EVENT_*, PHASE_RAM_*; types.proto) told apart from a snapshot's own
 * steps, and written as one line of text with every span in ms relative to the VM's cut:
 *
 *   pause 0…+21.4, event_stop 0…+0.3, qmp_stop -0.2…+0.4, drain +0.5…+1.1, loop_stall +1.0…+18.9, …
 *
 * `snapshot show` keeps its PHASES column to the snapshot's steps; the SVG timeline draws the
 * trace phases beside them; the benchmark prints these lines for its longest pauses.
 */

/** PHASE_QMP_STOP → QMP_STOP (format.ts's shortEnum for phases; not imported: format.ts imports this). */
function shortEnum(phase: string): string {
  return phase.startsWith('PHASE_') ? phase.slice('PHASE_'.length) : phase;
}

/** The phases a cut trace adds (short names, as shortEnum gives them). */
export function isTracePhase(phase: string): boolean {
  const p = shortEnum(phase);
  return p === 'COMMIT' || p === 'CUT_AT' || p === 'DRAIN' || p.startsWith('LOOP_') || p.startsWith('QMP_') || p.startsWith('EVENT_') || p.startsWith('RAM_');
}

interface TracedVm {
  cutUnixUs: number | string;
  phases: readonly { phase: string; startUnixUs: number | string; endUnixUs: number | string }[];
}

/** ±ms with one decimal; 0 without a sign. */
function offset(ms: number): string {
  const r = Math.round(ms * 10) / 10;
  return r === 0 ? '0' : `${r > 0 ? '+' : ''}${r.toFixed(1)}`;
}

/** The VM's pause and trace phases in start order, each "name start…end" in ms from its cut. */
export function cutTraceLine(vm: TracedVm): string {
  const cut = Number(vm.cutUnixUs);
  if (!(cut > 0)) return '-';
  return (
    vm.phases
      .filter((p) => shortEnum(p.phase) === 'PAUSE' || isTracePhase(p.phase))
      .map((p) => ({ name: shortEnum(p.phase).toLowerCase(), start: Number(p.startUnixUs), end: Number(p.endUnixUs) }))
      .filter((p) => p.start > 0 && p.end >= p.start)
      .sort((a, b) => a.start - b.start || a.end - b.end)
      .map((p) => `${p.name} ${offset((p.start - cut) / 1000)}…${offset((p.end - cut) / 1000)}`)
      .join(', ') || '-'
  );
}
