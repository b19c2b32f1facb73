import { strict as assert } from 'node:assert';
import * as os from 'node:os';
import { backgroundCut } from '../../agent/drivers/qemu/background-cut';
import type { QmpClient } from '../../agent/drivers/qemu/qmp';
import { CUT_NICE, raiseCutPriority } from '../../agent/cut-priority';
import { streamReadsHeld } from '../../agent/drivers/image-stream';
import { nowUs } from '../../proto/core/clock';
import { fakeMonitorPerTest, type FakeMonitor } from '../support/fake-qmp-monitor';
import { until } from '../support/wait';

describe('QEMU background cut (real unix socket, fake monitor)', () => {
  const ctx = fakeMonitorPerTest('vnsnap-bgcut-');
  let mon: FakeMonitor;
  let q: QmpClient;
  beforeEach(() => ({ mon, q } = ctx));

  /** A cut over the fake monitor; `steps` records the callbacks in the order they ran, `boosts` the pause boost's. */
  function start(steps: string[], boosts: string[] = []): ReturnType<typeof backgroundCut> {
    return backgroundCut({
      q,
      uri: 'unix:/run/m1.sock',
      atPause: () => {
        steps.push(`drain after ${mon.commands().join('+')}`);
        return Promise.resolve();
      },
      snapshotDisk: async () => {
        await q.execute('blockdev-snapshot', { node: 'top', overlay: 'next' });
      },
      stopped: () => steps.push('stopped'),
      migrating: () => steps.push('migrating'),
      mark: () => undefined,
      boost: () => {
        boosts.push(`boost after ${mon.commands().length} commands`);
        return () => boosts.push(`unboost after ${mon.commands().join('+')}`);
      },
    });
  }

  const gotCommands = (n: number): Promise<true> => until(`${n} commands at the monitor`, () => mon.lines.length === n || undefined, { timeoutMs: 5000, everyMs: 2 });

  it('bgcut: the drain starts at the STOP event and migrate follows it before any reply; the cut instant is STOP, the end RESUME; QEMU boosted from before the stop to the RESUME', async () => {
    const steps: string[] = [];
    const boosts: string[] = [];
    const cut = start(steps, boosts);
    await gotCommands(2);
    assert.deepEqual(mon.commands(), ['stop', 'blockdev-snapshot']);
    const stopAt = nowUs() - 1000;
    mon.event('STOP', stopAt);
    await gotCommands(3);
    assert.deepEqual(mon.lines[2], { execute: 'migrate', arguments: { uri: 'unix:/run/m1.sock' }, id: mon.lines[2]?.id });
    assert.deepEqual(steps, ['stopped', 'drain after stop+blockdev-snapshot', 'migrating'], 'no reply was sent yet');
    for (const l of mon.lines) mon.reply(l.id);
    await new Promise((r) => setImmediate(r));
    assert.equal(streamReadsHeld(), true, 'no stream is read until RESUME');
    assert.deepEqual(boosts, ['boost after 0 commands'], 'boosted before the stop, still boosted with every reply in');
    mon.event('RESUME', stopAt + 7000);
    const r = await cut;
    assert.equal(boosts[1], 'unboost after stop+blockdev-snapshot+migrate');
    assert.deepEqual([r.cutUnixUs, r.resume.event, r.resume.timestampUs], [stopAt, 'RESUME', stopAt + 7000]);
    assert.equal(streamReadsHeld(), false, 'read again from RESUME');
  });

  it('bgcut: a blockdev-snapshot refused after migrate was written fails the cut with its error once every reply is in; migrating was called; the boost undone', async () => {
    const steps: string[] = [];
    const boosts: string[] = [];
    const cut = start(steps, boosts);
    await gotCommands(2);
    mon.event('STOP', nowUs());
    await gotCommands(3);
    mon.reply(mon.idOf('stop'));
    mon.error(mon.idOf('blockdev-snapshot'), 'overlay busy');
    let settled = false;
    cut.then(() => (settled = true), () => (settled = true));
    await new Promise((r) => setImmediate(r));
    assert.equal(settled, false, 'the cut waits for the migrate reply');
    mon.reply(mon.idOf('migrate'));
    await assert.rejects(cut, /QMP blockdev-snapshot on fake: GenericError: overlay busy/);
    assert.deepEqual(steps, ['stopped', 'drain after stop+blockdev-snapshot', 'migrating']);
    assert.equal(boosts[0], 'boost after 0 commands');
    assert.deepEqual(new Set(boosts.slice(1)), new Set(['unboost after stop+blockdev-snapshot+migrate']), 'undone (repeats are idempotent at the boost)');
    assert.equal(streamReadsHeld(), false, 'a failed cut lets the streams be read');
  });

  it('bgcut: a refused stop ends the cut without a drain or a migrate; the boost undone', async () => {
    const steps: string[] = [];
    const boosts: string[] = [];
    const cut = start(steps, boosts);
    await gotCommands(2);
    mon.error(mon.idOf('stop'), 'no');
    mon.reply(mon.idOf('blockdev-snapshot'));
    await assert.rejects(cut, /QMP stop on fake: GenericError: no/);
    assert.deepEqual(steps, []);
    assert.equal(streamReadsHeld(), false);
    assert.deepEqual(mon.commands(), ['stop', 'blockdev-snapshot']);
    assert.equal(boosts[0], 'boost after 0 commands');
    assert.deepEqual(new Set(boosts.slice(1)), new Set(['unboost after stop+blockdev-snapshot']));
  });
});

describe('cut priority', () => {
  it('bgcut: the event loop runs at CUT_NICE while any hold is taken (where permitted), then at its own value again', () => {
    const before = os.getPriority(0);
    const permitted = process.getuid?.() === 0;
    const raised = permitted ? Math.min(before, CUT_NICE) : before;
    const a = raiseCutPriority();
    assert.equal(os.getPriority(0), raised);
    const b = raiseCutPriority();
    a();
    a();
    assert.equal(os.getPriority(0), raised, 'the second hold keeps it');
    b();
    assert.equal(os.getPriority(0), before);
  });
});
