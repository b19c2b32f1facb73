/**
 * `vnsnap snapshot show ID --timeline FILE.svg`: a snapshot's phases drawn as an SVG.
 *
 * One row per VM on one shared time axis (ticks in ms from the first phase start); each of the
 * VM's phases (VmSnapshot.phases: PRECOPY, PAUSE, COPY, CHANNEL, PERSIST, ... with start/end in
 * unix µs) is a coloured bar, and phases that overlap in time (a COPY inside the PAUSE, CHANNEL
 * recording while PERSIST runs) stack in lanes inside the row. Each VM's cut instant
 * (cut_unix_us) is a black tick; the spread of the cuts — the commit skew — is a shaded band
 * across the rows, annotated with its width. Pre-copy lasts seconds while a pause lasts
 * milliseconds, so when the pauses would be slivers a second panel zooms onto the cut.
 *
 * Pure string building, no DOM and no browser: elements carry data-* attributes (vm, phase,
 * start/end µs) so tests can check the structure and the geometry.
 */
import type { PhaseTiming__Output } from '../../proto/gen/vnsnap/v1/PhaseTiming';
import type { Snapshot__Output } from '../../proto/gen/vnsnap/v1/Snapshot';
import { commitSkewUs, formatMs, maxPauseMs, shortEnum, totalMs } from './format';

export const PHASE_COLOURS: Readonly<Record<string, string>> = {
  PRECOPY: '#4e79a7',
  PAUSE: '#e15759',
  COPY: '#f28e2b',
  CHANNEL: '#59a14f',
  PERSIST: '#b07aa1',
  VALIDATE: '#76b7b2',
  LOAD: '#edc948',
  RESUME: '#ff9da7',
  INJECT: '#9c755f',
  // cut traces (cut-trace.ts): the agent's side of each VM's cut
  COMMIT: '#bab0ac',
  CUT_AT: '#9467bd',
  DRAIN: '#17becf',
  LOOP_STALL: '#d62728',
  EVENT_STOP: '#7f7f7f',
  EVENT_RESUME: '#7f7f7f',
};
/** Colour of a phase: its own, or one shared by every QMP command's round trip. */
function colour(phase: string): string {
  return PHASE_COLOURS[phase] ?? (phase.startsWith('QMP_') ? '#8c564b' : '#999');
}
const MAIN_PHASES = ['PRECOPY', 'PAUSE', 'COPY', 'CHANNEL', 'PERSIST'];

export const LAYOUT = {
  width: 1000,
  plotX0: 210,
  plotX1: 970,
  laneH: 14,
  laneGap: 3,
  rowPad: 7,
  axisH: 34,
};

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);
}

function num(n: number): string {
  return String(Math.round(n * 100) / 100);
}

/** A tick step of 1, 2 or 5 × 10^k (ms) giving about `target` ticks over `spanMs`. */
export function niceStepMs(spanMs: number, target = 8): number {
  const raw = Math.max(spanMs, 1e-6) / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (raw <= m * mag) return m * mag;
  return 10 * mag;
}

function tickLabel(ms: number, step: number): string {
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  const v = Math.abs(ms) < step / 1e6 ? 0 : ms;
  return `${v.toFixed(decimals)} ms`;
}

interface Interval {
  phase: string;
  start: number;
  end: number;
}

function intervals(phases: readonly PhaseTiming__Output[]): Interval[] {
  return phases
    .filter((p) => p.startUnixUs > 0 && p.endUnixUs >= p.startUnixUs)
    .map((p) => ({ phase: shortEnum(p.phase), start: p.startUnixUs, end: p.endUnixUs }))
    .sort((a, b) => a.start - b.start || a.end - b.end);
}

/** Greedy lanes: an interval goes into the first lane whose last interval ended before it starts. */
export function assignLanes(iv: readonly Interval[]): number[] {
  const laneEnds: number[] = [];
  return iv.map((x) => {
    let lane = laneEnds.findIndex((end) => end <= x.start);
    if (lane < 0) {
      lane = laneEnds.length;
      laneEnds.push(x.end);
    } else laneEnds[lane] = x.end;
    return lane;
  });
}

interface Row {
  vm: string;
  host: string;
  pauseMs: number;
  cut: number;
  iv: Interval[];
  lanes: number[];
  laneCount: number;
}

function rowHeight(r: Row): number {
  return r.laneCount * (LAYOUT.laneH + LAYOUT.laneGap) - LAYOUT.laneGap + 2 * LAYOUT.rowPad;
}

interface Panel {
  id: 'full' | 'cut';
  title: string;
  t0: number;
  t1: number;
  /** Tick labels are ms relative to this instant. */
  origin: number;
}

function drawPanel(p: Panel, rows: readonly Row[], y0: number, cuts: readonly number[]): { svg: string; height: number } {
  const { plotX0, plotX1 } = LAYOUT;
  const span = Math.max(p.t1 - p.t0, 1);
  const x = (t: number): number => plotX0 + ((t - p.t0) / span) * (plotX1 - plotX0);
  const out: string[] = [];
  const titleY = y0 + 14;
  const rowsY0 = y0 + 40;
  const rowsH = rows.reduce((h, r) => h + rowHeight(r), 0);
  const clip = `clip-${p.id}`;
  out.push(`<g class="panel" data-panel="${p.id}" data-t0-us="${p.t0}" data-t1-us="${p.t1}" data-x0="${plotX0}" data-x1="${plotX1}">`);
  out.push(`<text x="20" y="${titleY}" class="panel-title">${esc(p.title)}</text>`);
  out.push(`<clipPath id="${clip}"><rect x="${plotX0}" y="${rowsY0 - 30}" width="${plotX1 - plotX0}" height="${rowsH + 30}"/></clipPath>`);

  // Grid and axis.
  const stepMs = niceStepMs(span / 1000);
  const firstTick = Math.ceil((p.t0 - p.origin) / 1000 / stepMs) * stepMs;
  const axisY = rowsY0 + rowsH + 4;
  out.push(`<g class="axis"><line x1="${plotX0}" y1="${axisY}" x2="${plotX1}" y2="${axisY}" stroke="#555"/>`);
  for (let ms = firstTick; p.origin + ms * 1000 <= p.t1 + 1e-6; ms += stepMs) {
    const tx = num(x(p.origin + ms * 1000));
    out.push(`<line class="grid" x1="${tx}" y1="${rowsY0 - 4}" x2="${tx}" y2="${axisY}" stroke="#e3e3e3"/>`);
    out.push(`<line x1="${tx}" y1="${axisY}" x2="${tx}" y2="${axisY + 5}" stroke="#555"/>`);
    out.push(`<text class="tick" x="${tx}" y="${axisY + 18}" text-anchor="middle" data-ms="${num(ms)}">${tickLabel(ms, stepMs)}</text>`);
  }
  out.push('</g>');

  // The commit skew: a band from the first cut to the last, annotated above the rows.
  if (cuts.length > 0) {
    const c0 = Math.min(...cuts);
    const c1 = Math.max(...cuts);
    const bx0 = x(c0);
    const bx1 = x(c1);
    const skew = formatMs((c1 - c0) / 1000);
    out.push(`<g class="skew" data-skew-us="${c1 - c0}">`);
    out.push(`<rect x="${num(bx0)}" y="${rowsY0 - 4}" width="${num(Math.max(bx1 - bx0, 1))}" height="${rowsH + 8}" fill="#000" fill-opacity="0.10"/>`);
    out.push(`<path d="M${num(bx0)},${rowsY0 - 10} v-6 H${num(Math.max(bx1, bx0 + 1))} v6" fill="none" stroke="#222"/>`);
    const anchor = bx0 > plotX1 - 160 ? 'end' : 'start';
    out.push(`<text x="${num(anchor === 'end' ? Math.max(bx1, bx0 + 1) : bx0)}" y="${rowsY0 - 20}" text-anchor="${anchor}" class="skew-label">commit skew ${skew}</text>`);
    out.push('</g>');
  }

  let y = rowsY0;
  rows.forEach((r, i) => {
    const h = rowHeight(r);
    out.push(`<g class="row" data-vm="${esc(r.vm)}" data-host="${esc(r.host)}" data-y="${y}" data-height="${h}">`);
    if (i % 2 === 1) out.push(`<rect x="10" y="${y}" width="${LAYOUT.width - 20}" height="${h}" fill="#f6f6f6" fill-opacity="0.6"/>`);
    out.push(`<text x="20" y="${y + h / 2 - 2}" class="vm">${esc(r.vm)}</text>`);
    out.push(`<text x="20" y="${y + h / 2 + 12}" class="host">${esc(r.host)}${r.pauseMs > 0 ? ` · pause ${esc(formatMs(r.pauseMs))}` : ''}</text>`);
    out.push(`<g clip-path="url(#${clip})">`);
    r.iv.forEach((iv, k) => {
      const lane = r.lanes[k] ?? 0;
      const bx = x(iv.start);
      const bw = Math.max(x(iv.end) - bx, 1);
      const by = y + LAYOUT.rowPad + lane * (LAYOUT.laneH + LAYOUT.laneGap);
      const fill = colour(iv.phase);
      out.push(
        `<rect class="bar" data-phase="${esc(iv.phase)}" data-start-us="${iv.start}" data-end-us="${iv.end}" x="${num(bx)}" y="${by}" width="${num(bw)}" height="${LAYOUT.laneH}" fill="${fill}"><title>${esc(`${r.vm} ${iv.phase} ${formatMs((iv.end - iv.start) / 1000)}`)}</title></rect>`,
      );
    });
    if (r.cut > 0) {
      const cx = num(x(r.cut));
      out.push(`<line class="cut" data-cut-us="${r.cut}" x1="${cx}" y1="${y + 2}" x2="${cx}" y2="${y + h - 2}" stroke="#111" stroke-width="2"/>`);
      out.push(`<path d="M${cx},${y + 2} l-4,-5 h8 z" fill="#111"/>`);
    }
    out.push('</g></g>');
    y += h;
  });
  out.push('</g>');
  return { svg: out.join('\n'), height: axisY + LAYOUT.axisH - y0 };
}

/** The timeline of a snapshot as a standalone SVG document. */
export function renderTimelineSvg(s: Snapshot__Output): string {
  const rows: Row[] = s.vms.map((vm) => {
    const iv = intervals(vm.phases);
    const lanes = assignLanes(iv);
    return { vm: vm.name, host: vm.host, pauseMs: vm.pauseMs, cut: vm.cutUnixUs, iv, lanes, laneCount: Math.max(1, ...lanes.map((l) => l + 1)) };
  });
  const cuts = rows.map((r) => r.cut).filter((c) => c > 0);
  const instants = [...rows.flatMap((r) => r.iv.flatMap((i) => [i.start, i.end])), ...cuts];
  const { width } = LAYOUT;
  const skew = commitSkewUs(s);
  const total = totalMs(s);
  const facts = [`epoch ${s.epoch}`, shortEnum(s.mode), shortEnum(s.state)];
  if (skew !== undefined) facts.push(`commit skew ${formatMs(skew / 1000)}`);
  if (s.vms.length) facts.push(`max pause ${formatMs(maxPauseMs(s))}`);
  if (total !== undefined) facts.push(`total ${formatMs(total)}`);

  const parts: string[] = [];
  let y = 64;
  if (instants.length === 0) {
    parts.push(`<text x="20" y="${y + 20}" class="panel-title">no phase timings recorded for this snapshot</text>`);
    y += 40;
  } else {
    const t0 = Math.min(...instants);
    const t1 = Math.max(...instants, t0 + 1);
    const full = drawPanel({ id: 'full', title: 'whole snapshot (ms since the first phase began)', t0, t1, origin: t0 }, rows, y, cuts);
    parts.push(full.svg);
    y += full.height + 10;
    // Zoom onto the cut when the pauses are too short to see at the full scale.
    const pauses = rows.flatMap((r) => r.iv.filter((i) => i.phase === 'PAUSE'));
    const w0 = Math.min(...cuts, ...pauses.map((p) => p.start));
    const w1 = Math.max(...cuts, ...pauses.map((p) => p.end));
    if (Number.isFinite(w0) && Number.isFinite(w1) && w1 - w0 < 0.2 * (t1 - t0)) {
      const pad = Math.max((w1 - w0) * 0.3, 200);
      const zoom = drawPanel({ id: 'cut', title: 'around the cut (zoomed; ms from the first cut)', t0: w0 - pad, t1: w1 + pad, origin: cuts.length ? Math.min(...cuts) : w0 }, rows, y, cuts);
      parts.push(zoom.svg);
      y += zoom.height + 10;
    }
  }

  // Legend: the five snapshot phases always, any other phase present, the cut and the skew.
  const present = new Set(rows.flatMap((r) => r.iv.map((i) => i.phase)));
  const legendPhases = [...MAIN_PHASES, ...[...present].filter((p) => !MAIN_PHASES.includes(p))];
  const legend: string[] = [`<g class="legend" transform="translate(20,${y})">`];
  let lx = 0;
  // A cut trace adds many phases: the legend wraps onto more lines rather than run off the right.
  let ly = 0;
  const room = (w: number): void => {
    if (lx > 0 && lx + w > width - 40) {
      lx = 0;
      ly += 22;
    }
  };
  for (const ph of legendPhases) {
    room(30 + ph.length * 8);
    legend.push(`<rect x="${lx}" y="${ly}" width="14" height="14" fill="${colour(ph)}" data-phase="${esc(ph)}"/><text x="${lx + 19}" y="${ly + 12}">${esc(ph)}</text>`);
    lx += 30 + ph.length * 8;
  }
  room(150);
  legend.push(`<line x1="${lx + 7}" y1="${ly - 1}" x2="${lx + 7}" y2="${ly + 15}" stroke="#111" stroke-width="2"/><text x="${lx + 16}" y="${ly + 12}">cut (pause instant)</text>`);
  lx += 150;
  room(230);
  legend.push(`<rect x="${lx}" y="${ly}" width="14" height="14" fill="#000" fill-opacity="0.10" stroke="#999"/><text x="${lx + 19}" y="${ly + 12}">commit skew (first to last cut)</text>`);
  legend.push('</g>');
  y += 34 + ly;

  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y}" viewBox="0 0 ${width} ${y}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">`,
    '<style>.title{font-size:16px;font-weight:bold}.subtitle{fill:#444}.panel-title{font-weight:bold;fill:#333}.vm{font-weight:bold}.host{fill:#555;font-size:11px}.tick{fill:#444;font-size:11px}.skew-label{font-size:11px;fill:#222}</style>',
    `<rect x="0" y="0" width="${width}" height="${y}" fill="#fff"/>`,
    `<text x="20" y="28" class="title">snapshot ${esc(s.id)} of VNE ${esc(s.vne)}</text>`,
    `<text x="20" y="48" class="subtitle">${esc(facts.join(' · '))}</text>`,
    ...parts,
    ...legend,
    '</svg>',
    '',
  ].join('\n');
}
