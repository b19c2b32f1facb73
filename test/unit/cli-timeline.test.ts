import { strict as assert } from 'node:assert';
import type { Snapshot__Output } from '../../proto/gen/vnsnap/v1/Snapshot';
import { loadVnsnap, packageDefinition } from '../../proto/core/grpc';
import { assignLanes, LAYOUT, niceStepMs, renderTimelineSvg } from '../../coordinator/cli/timeline-svg';
import { cannedSnapshot, T0_US } from '../interop/fake-coordinator';

/** A Snapshot as a client receives it (defaults filled in), by a round trip through the wire format. */
function received(s: object): Snapshot__Output {
  loadVnsnap();
  const m = packageDefinition()['vnsnap.v1.CoordinatorService'] as unknown as Record<string, { responseSerialize(v: unknown): Buffer; responseDeserialize(b: Buffer): unknown }>;
  const get = m.GetSnapshot;
  assert.ok(get);
  return get.responseDeserialize(get.responseSerialize(s)) as Snapshot__Output;
}

interface Bar {
  vm: string;
  phase: string;
  start: number;
  end: number;
  x: number;
  width: number;
}

function attrs(tag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of tag.matchAll(/([\w-]+)="([^"]*)"/g)) out[m[1] as string] = m[2] as string;
  return out;
}

/** Panels, their rows and bars, read back from the SVG text. */
function parse(svg: string): { panel: Record<string, string>; rows: { vm: string; bars: Bar[]; cut?: number; cutX?: number }[] }[] {
  const panels = svg.split('<g class="panel"').slice(1);
  return panels.map((p) => {
    const panel = attrs(p.slice(0, p.indexOf('>')));
    const rows = p.split('<g class="row"').slice(1).map((r) => {
      const row = attrs(r.slice(0, r.indexOf('>')));
      const bars = [...r.matchAll(/<rect class="bar"[^>]*>/g)].map((m) => {
        const a = attrs(m[0]);
        return { vm: row['data-vm'] as string, phase: a['data-phase'] as string, start: Number(a['data-start-us']), end: Number(a['data-end-us']), x: Number(a.x), width: Number(a.width) };
      });
      const cut = /<line class="cut" data-cut-us="(\d+)" x1="([\d.]+)"/.exec(r);
      return { vm: row['data-vm'] as string, bars, ...(cut ? { cut: Number(cut[1]), cutX: Number(cut[2]) } : {}) };
    });
    return { panel, rows };
  });
}

describe('cli: snapshot timeline SVG', () => {
  const snap = received(cannedSnapshot('snap-0001', 'blue', 1, T0_US));
  const svg = renderTimelineSvg(snap);

  it('is one SVG document with a title, a legend of the five phases and the commit skew', () => {
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg" width="1000" height="\d+"/);
    assert.ok(svg.trimEnd().endsWith('</svg>'));
    assert.match(svg, /snapshot snap-0001 of VNE blue/);
    for (const ph of ['PRECOPY', 'PAUSE', 'COPY', 'CHANNEL', 'PERSIST']) assert.match(svg, new RegExp(`<g class="legend"[\\s\\S]*data-phase="${ph}"`));
    assert.match(svg, /commit skew 0\.41 ms/);
    assert.equal((svg.match(/<g class="skew" data-skew-us="410">/g) ?? []).length, 2);
  });

  it('draws one row per VM, in order, with every phase as a bar and the cut', () => {
    const [full] = parse(svg);
    assert.ok(full);
    assert.deepEqual(full.rows.map((r) => r.vm), ['vm1', 'vm2', 'vm3']);
    for (const [i, r] of full.rows.entries()) {
      assert.deepEqual(r.bars.map((b) => b.phase).sort(), ['CHANNEL', 'COPY', 'PAUSE', 'PERSIST', 'PRECOPY']);
      assert.equal(r.cut, snap.vms[i]?.cutUnixUs);
    }
  });

  it('places bars on one shared axis, proportional to time', () => {
    const [full] = parse(svg);
    assert.ok(full);
    const t0 = Number(full.panel['data-t0-us']);
    const t1 = Number(full.panel['data-t1-us']);
    assert.equal(t0, T0_US); // the first phase start
    assert.equal(t1, T0_US + 2_340_000); // the last phase end
    const scale = (LAYOUT.plotX1 - LAYOUT.plotX0) / (t1 - t0);
    for (const r of full.rows) {
      for (const b of r.bars) {
        assert.ok(Math.abs(b.x - (LAYOUT.plotX0 + (b.start - t0) * scale)) < 0.01, `${b.vm} ${b.phase} x`);
        assert.ok(Math.abs(b.width - Math.max((b.end - b.start) * scale, 1)) < 0.01, `${b.vm} ${b.phase} width`);
      }
      assert.ok(Math.abs((r.cutX ?? 0) - (LAYOUT.plotX0 + ((r.cut ?? 0) - t0) * scale)) < 0.01);
    }
    // vm1's pre-copy (1.8 s) is 1.8/2.34 of the plot width.
    const pre = full.rows[0]?.bars.find((b) => b.phase === 'PRECOPY');
    assert.ok(pre && Math.abs(pre.width / (LAYOUT.plotX1 - LAYOUT.plotX0) - 1.8 / 2.34) < 1e-3);
  });

  it('zooms onto the cut when the pauses are slivers at full scale, on the same rows', () => {
    const [, zoom] = parse(svg);
    assert.ok(zoom, 'a second panel');
    assert.equal(zoom.panel['data-panel'], 'cut');
    assert.deepEqual(zoom.rows.map((r) => r.vm), ['vm1', 'vm2', 'vm3']);
    const t0 = Number(zoom.panel['data-t0-us']);
    const t1 = Number(zoom.panel['data-t1-us']);
    const cut0 = snap.vms[0]?.cutUnixUs ?? 0;
    assert.ok(t0 < cut0 && t1 > cut0 + 14_100, 'the window holds every cut and pause');
    // Ticks are ms from the first cut: "0 ms" is at vm1's cut.
    const zero = /<text class="tick" x="([\d.]+)"[^>]*data-ms="0">0 ms<\/text>/.exec(svg.slice(svg.indexOf('data-panel="cut"')));
    assert.ok(zero);
    assert.ok(Math.abs(Number(zero[1]) - (zoom.rows[0]?.cutX ?? 0)) < 0.01);
  });

  it('stacks overlapping phases in lanes and escapes names', () => {
    assert.deepEqual(assignLanes([{ phase: 'A', start: 0, end: 10 }, { phase: 'B', start: 5, end: 8 }, { phase: 'C', start: 10, end: 12 }]), [0, 1, 0]);
    const evil = renderTimelineSvg(received({ ...cannedSnapshot('s', 'b<&>"', 1, T0_US), vms: [{ ...cannedSnapshot('s', 'b', 1, T0_US).vms?.[0], name: '<vm>' }] }));
    assert.match(evil, /data-vm="&lt;vm&gt;"/);
    assert.match(evil, /VNE b&lt;&amp;&gt;&quot;/);
    assert.doesNotMatch(evil, /<vm>/);
  });

  it('copes with a snapshot without timings (aborted early)', () => {
    const svg2 = renderTimelineSvg(received({ id: 'x', vne: 'red', state: 'SNAPSHOT_STATE_ABORTED' }));
    assert.match(svg2, /no phase timings recorded/);
    assert.doesNotMatch(svg2, /class="row"/);
  });

  it('picks tick steps of 1, 2 or 5 × 10^k ms', () => {
    assert.equal(niceStepMs(2340), 500);
    assert.equal(niceStepMs(20), 5);
    assert.equal(niceStepMs(1.2), 0.2);
  });
});
