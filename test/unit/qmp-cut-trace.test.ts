import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { CutQmpTrace, qmpPhase } from '../../agent/drivers/qemu/cut-qmp-trace';
import type { QmpClient, QmpRoundTrip } from '../../agent/drivers/qemu/qmp';
import { LoopStallProbe } from '../../agent/loop-stall-probe';
import { nowUs } from '../../proto/core/clock';
import { fakeMonitorPerTest, type FakeMonitor } from '../support/fake-qmp-monitor';
import { until } from '../support/wait';

describe('QMP cut trace (real unix socket, fake monitor)', () => {
  const ctx = fakeMonitorPerTest('vnsnap-qmptrace-');
  let mon: FakeMonitor;
  let q: QmpClient;
  beforeEach(() => ({ mon, q } = ctx));

  it('commands issued without an await between them reach QEMU back to back, before any reply; a prepared command is sent as serialised, with a new id each time', async () => {
    const migrate = q.prepare<Record<string, never>>('migrate', { uri: 'unix:/x y"z' });
    const stop = q.execute('stop');
    const snap = q.execute('blockdev-snapshot', { node: 'n0', overlay: 'n1' });
    await until('both commands at the monitor', () => mon.lines.length === 2 || undefined, { timeoutMs: 5000, everyMs: 5 });
    assert.deepEqual(mon.lines.map((l) => l.execute), ['stop', 'blockdev-snapshot']);
    for (const l of mon.lines) mon.reply(l.id);
    await Promise.all([stop, snap]);
    const a = migrate.send();
    const b = migrate.send();
    await until('two migrates', () => mon.lines.length === 4 || undefined, { timeoutMs: 5000, everyMs: 5 });
    assert.deepEqual(mon.lines.slice(2), [
      { execute: 'migrate', arguments: { uri: 'unix:/x y"z' }, id: mon.lines[2]?.id },
      { execute: 'migrate', arguments: { uri: 'unix:/x y"z' }, id: mon.lines[3]?.id },
    ]);
    assert.notEqual(mon.lines[2]?.id, mon.lines[3]?.id);
    for (const l of mon.lines.slice(2)) mon.reply(l.id);
    assert.deepEqual(await Promise.all([a, b]), [{}, {}]);
  });

  it("a cut's trace: each command's round trip as its phase, STOP / RESUME from QEMU's timestamp to the receipt; nothing after stop()", async () => {
    const replies: QmpRoundTrip[] = [];
    q.on('reply', (r: QmpRoundTrip) => replies.push(r));
    const tr = CutQmpTrace.start(q);
    const t0 = nowUs();
    const stop = q.execute('stop');
    const other = q.execute('query-status');
    await until('commands at the monitor', () => mon.lines.length === 2 || undefined, { timeoutMs: 5000, everyMs: 5 });
    const stopAt = nowUs() - 3000;
    const stopEv = q.waitEvent('STOP');
    mon.event('STOP', stopAt);
    await stopEv;
    for (const l of mon.lines) mon.reply(l.id);
    await Promise.all([stop, other]);
    const resumeEv = q.waitEvent('RESUME');
    mon.event('RESUME', stopAt + 2000);
    await resumeEv;
    const spans = tr.stop();
    const t1 = nowUs();
    q.execute('cont').catch(() => undefined);
    await until('cont at the monitor', () => mon.lines.length === 3 || undefined, { timeoutMs: 5000, everyMs: 5 });
    mon.reply(mon.lines[2]?.id as string);
    await until('three replies', () => replies.length === 3 || undefined, { timeoutMs: 5000, everyMs: 5 });
    assert.deepEqual(spans.map((s) => s.phase), ['PHASE_EVENT_STOP', 'PHASE_QMP_STOP', 'PHASE_QMP_OTHER', 'PHASE_EVENT_RESUME']);
    assert.deepEqual(tr.stop(), spans, 'the cont after stop() is not in the trace');
    assert.deepEqual([spans[0]?.startUnixUs, spans[3]?.startUnixUs], [stopAt, stopAt + 2000]);
    for (const s of spans) assert.ok(s.endUnixUs >= s.startUnixUs && s.endUnixUs <= t1, JSON.stringify(s));
    for (const s of spans.slice(1, 3)) assert.ok(s.startUnixUs >= t0, 'a round trip starts when the command was written');
    assert.deepEqual(replies.map((r) => [r.cmd, r.ok]), [['stop', true], ['query-status', true], ['cont', true]]);
    assert.deepEqual(['stop', 'cont', 'blockdev-snapshot', 'migrate', 'migrate-continue', 'migrate-set-parameters', 'query-migrate', 'x'].map(qmpPhase), [
      'PHASE_QMP_STOP', 'PHASE_QMP_CONT', 'PHASE_QMP_BLOCKDEV_SNAPSHOT', 'PHASE_QMP_MIGRATE', 'PHASE_QMP_MIGRATE_CONTINUE', 'PHASE_QMP_MIGRATE_SET_PARAMETERS', 'PHASE_QMP_QUERY_MIGRATE', 'PHASE_QMP_OTHER',
    ]);
  });

  it("QEMU's save of the device state: MIGRATION setup → completed as one DEVICE_STATE span, QEMU's timestamps; the other statuses and an end without a setup add nothing", async () => {
    const tr = CutQmpTrace.start(q);
    const t = nowUs() - 10_000;
    const seen = (status: string): Promise<unknown> => q.waitEvent('MIGRATION', (d) => d.status === status);
    const emit = async (status: string, at: number): Promise<void> => {
      const ev = seen(status);
      mon.event('MIGRATION', at, { status });
      await ev;
    };
    await emit('completed', t - 5000); // no setup seen: nothing
    await emit('setup', t);
    await emit('active', t + 1000);
    await emit('device', t + 2000);
    await emit('completed', t + 6500);
    await emit('setup', t + 7000);
    await emit('failed', t + 7300);
    const spans = tr.stop();
    assert.deepEqual(spans, [
      { phase: 'PHASE_DEVICE_STATE', startUnixUs: t, endUnixUs: t + 6500 },
      { phase: 'PHASE_DEVICE_STATE', startUnixUs: t + 7000, endUnixUs: t + 7300 },
    ]);
  });
});

/** The event loop blocked for `ms`. */
function blockLoop(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    /* blocked */
  }
}

describe('event-loop stall probe', () => {
  it('a synchronous 40 ms block of the loop is the longest stall, with its interval; outside the window nothing', async () => {
    const p = LoopStallProbe.start();
    try {
      await until('the probe ticking', () => true, { timeoutMs: 1000, everyMs: 5 });
      const before = nowUs();
      blockLoop(40); // what a long dataplane batch or a synchronous write does
      const after = nowUs();
      await until('the probe ticked after the block', () => ((p.longest(before, after)?.endUnixUs ?? 0) >= after ? true : undefined), { timeoutMs: 2000, everyMs: 5 });
      const s = p.longest(before, after) as { startUnixUs: number; endUnixUs: number };
      assert.ok(s.endUnixUs - s.startUnixUs >= 40_000, `stall of ${s.endUnixUs - s.startUnixUs} µs`);
      assert.ok(s.startUnixUs <= before + 1000 && s.endUnixUs >= after, JSON.stringify({ s, before, after }));
      assert.equal(p.longest(0, s.startUnixUs - 1_000_000), undefined);
    } finally {
      p.stop();
    }
  });
  it('a window opening later: nothing before it is seen, and a stall under way at its start counts from the start', async () => {
    const from = nowUs() + 80_000;
    const p = LoopStallProbe.start({ fromUs: from });
    try {
      blockLoop(20); // before the window
      assert.equal(p.longest(0, nowUs()), undefined);
      assert.equal(p.around(nowUs()), undefined);
      await until('10 ms before the window', () => (nowUs() >= from - 10_000 ? true : undefined), { timeoutMs: 2000, everyMs: 1 });
      const blockStart = nowUs();
      blockLoop(40); // across the window's start (unless the machine made us late)
      const blockEnd = nowUs();
      await until('the probe ticked after the block', () => ((p.longest(0, blockEnd)?.endUnixUs ?? 0) >= blockEnd ? true : undefined), { timeoutMs: 2000, everyMs: 5 });
      const s = p.longest(0, blockEnd) as { startUnixUs: number; endUnixUs: number };
      if (blockStart < from) assert.equal(s.startUnixUs, from, JSON.stringify({ s, from, blockStart }));
      else assert.ok(s.startUnixUs >= from && s.startUnixUs <= blockStart, JSON.stringify({ s, from, blockStart }));
      assert.ok(s.endUnixUs >= blockEnd, JSON.stringify({ s, blockEnd }));
      assert.equal(p.longest(0, from - 1), undefined);
    } finally {
      p.stop();
    }
  });
  it('with causes: a stall carries its run-queue wait (at most its length), around() finds the stall an instant fell in, and a full collection is listed', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const p = LoopStallProbe.start({ causes: true });
    try {
      await until('the probe ticking', () => true, { timeoutMs: 1000, everyMs: 5 });
      const before = nowUs();
      blockLoop(30);
      const mid = nowUs();
      const keep = Array.from({ length: 200_000 }, (_, i) => ({ i, s: String(i) })); // a heap a full collection takes a while over
      gc();
      const after = nowUs();
      await until('the probe ticked after the block', () => ((p.longest(before, after)?.endUnixUs ?? 0) >= after ? true : undefined), { timeoutMs: 2000, everyMs: 5 });
      const s = p.around(mid);
      assert.ok(s && s.startUnixUs <= mid && s.endUnixUs >= mid, JSON.stringify(s));
      if (fs.existsSync('/proc/thread-self/schedstat')) {
        // Once the probe's next tick closed the stall, it carries its wait.
        const closed = await until('the stall closed with its run-queue wait', () => p.around(mid)?.runqueueUs !== undefined ? p.around(mid) : undefined, { timeoutMs: 2000, everyMs: 5 });
        assert.ok((closed.runqueueUs as number) >= 0 && (closed.runqueueUs as number) <= closed.endUnixUs - closed.startUnixUs, JSON.stringify(closed));
      }
      await until('the collection observed', () => (p.gcs(before, nowUs()).length > 0 ? true : undefined), { timeoutMs: 2000, everyMs: 5 });
      const g = p.gcs(before, nowUs()).find((x) => x.startUnixUs >= mid - 1000) as { startUnixUs: number; endUnixUs: number };
      assert.ok(g && g.endUnixUs - g.startUnixUs >= 1000 && g.endUnixUs <= nowUs(), JSON.stringify(p.gcs(before, nowUs())));
      assert.equal(keep.length, 200_000);
      assert.equal(p.around(before - 10_000_000), undefined);
    } finally {
      p.stop();
    }
  });
});
