import { strict as assert } from 'node:assert';
import * as os from 'node:os';
import {
  CUT_FIFO_PRIORITY,
  CUT_WINDOW_BOUND_MS,
  cutPriorityHolds,
  cutPrioritySettled,
  cutRealtimeEnabled,
  stoppedReadPriority,
  raiseCutPriority,
  STOPPED_READ_FIFO_PRIORITY,
  windowStats,
  type CutPriorityOptions,
} from '../../agent/cut-priority';
import { PAUSE_BOOST_PRIORITY, threadPolicy } from '../../agent/drivers/qemu/pause-boost';
import { FakeChrt } from '../support/fake-chrt';

const RAISE = `--fifo --reset-on-fork --pid ${CUT_FIFO_PRIORITY} ${process.pid}`;
const RESTORE = `--other --pid 0 ${process.pid}`;

/** Let settled promises run their callbacks. */
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Options with a fake chrt, a thread at SCHED_OTHER and the nice value left alone. */
function opts(c: FakeChrt, more: CutPriorityOptions = {}): CutPriorityOptions {
  return { chrt: c.run, policy: () => 0, nice: os.getPriority(0), ...more };
}

describe('agent cut priority (fake chrt)', () => {
  afterEach(() => assert.equal(cutPriorityHolds(), 0, 'every test releases its holds'));

  it('cutprio: the first hold asks for SCHED_FIFO below the QEMU boost (reset on fork) without waiting; nested holds ask nothing; the last release restores once', async () => {
    assert.ok(CUT_FIFO_PRIORITY < PAUSE_BOOST_PRIORITY);
    // the work inside a pause preempts the raised loops, and stays below the paused QEMU's main thread
    assert.ok(CUT_FIFO_PRIORITY < STOPPED_READ_FIFO_PRIORITY && STOPPED_READ_FIFO_PRIORITY < PAUSE_BOOST_PRIORITY);
    const c = new FakeChrt();
    const a = raiseCutPriority(opts(c));
    const b = raiseCutPriority(opts(c));
    assert.deepEqual(c.calls, [], 'asked for on the next turn, behind earlier requests');
    await c.made(1);
    assert.deepEqual(c.calls, [RAISE]);
    c.finish(0);
    a();
    a();
    assert.equal(cutPriorityHolds(), 1);
    await turn();
    assert.deepEqual(c.calls, [RAISE], 'still held by b');
    b();
    await c.made(2);
    c.finish(1);
    await cutPrioritySettled();
    b();
    assert.deepEqual(c.calls, [RAISE, RESTORE]);
  });

  it('cutprio: a release before the raise answered restores only after it; the next window raises only after that restore', async () => {
    const c = new FakeChrt();
    const first = raiseCutPriority(opts(c));
    await c.made(1);
    first();
    const second = raiseCutPriority(opts(c));
    await turn();
    assert.deepEqual(c.calls, [RAISE], 'nothing overtakes the raise in flight');
    c.finish(0);
    await c.made(2);
    assert.deepEqual(c.calls, [RAISE, RESTORE]);
    c.finish(1);
    await c.made(3);
    c.finish(2);
    second();
    await c.made(4);
    c.finish(3);
    await cutPrioritySettled();
    assert.deepEqual(c.calls, [RAISE, RESTORE, RAISE, RESTORE]);
  });

  it('cutprio: the bound ends a hold nobody released (the window with it); a later release adds nothing', async () => {
    assert.equal(CUT_WINDOW_BOUND_MS, 5000);
    const c = new FakeChrt();
    const release = raiseCutPriority(opts(c, { boundMs: 20 }));
    await c.made(1);
    c.finish(0);
    await c.made(2);
    assert.equal(cutPriorityHolds(), 0);
    c.finish(1);
    release();
    await cutPrioritySettled();
    assert.deepEqual(c.calls, [RAISE, RESTORE]);
  });

  it('cutprio: a bound that ends one nested hold leaves the window to the other', async () => {
    const c = new FakeChrt();
    const short = raiseCutPriority(opts(c, { boundMs: 1 }));
    const long = raiseCutPriority(opts(c));
    await c.made(1);
    c.finish(0);
    await new Promise((r) => setTimeout(r, 2)); // a timer due after the bound's runs after it
    assert.equal(cutPriorityHolds(), 1);
    await turn();
    assert.deepEqual(c.calls, [RAISE], 'the window stays while a hold remains');
    long();
    await c.made(2);
    c.finish(1);
    short();
    await cutPrioritySettled();
    assert.deepEqual(c.calls, [RAISE, RESTORE]);
  });

  it('cutprio: a raise refused (no permission, no chrt) is never restored; a failed restore is tried once more; release never throws', async () => {
    const c = new FakeChrt();
    const refused = raiseCutPriority(opts(c));
    await c.made(1);
    c.finish(0, 'Operation not permitted');
    refused();
    await cutPrioritySettled();
    assert.deepEqual(c.calls, [RAISE]);
    assert.equal(windowStats()?.realtime, true, 'asked for');
    const b = raiseCutPriority(opts(c));
    await c.made(2);
    c.finish(1);
    b();
    await c.made(3);
    c.finish(2, 'No such process');
    await c.made(4);
    c.finish(3, 'No such process');
    await cutPrioritySettled();
    assert.deepEqual(c.calls, [RAISE, RAISE, RESTORE, RESTORE]);
  });

  it('cutprio: a thread not at SCHED_OTHER, an unreadable policy, or realtime turned off: no chrt at all', async () => {
    const c = new FakeChrt();
    for (const more of [{ policy: () => 1 }, { policy: (): number => { throw new Error('ENOENT'); } }, { realtime: false }]) {
      raiseCutPriority(opts(c, more))();
      assert.equal(windowStats()?.realtime, false);
    }
    await cutPrioritySettled();
    assert.deepEqual(c.calls, []);
    assert.deepEqual([cutRealtimeEnabled({}), cutRealtimeEnabled({ VNSNAP_AGENT_CUT_REALTIME: '0' }), cutRealtimeEnabled({ VNSNAP_AGENT_CUT_REALTIME: '1' })], [true, false, true]);
    assert.deepEqual([stoppedReadPriority({}), stoppedReadPriority({ VNSNAP_AGENT_CUT_REALTIME: '0' })], [STOPPED_READ_FIFO_PRIORITY, undefined]);
  });

  it('cutprio: windowStats is the window from its first hold to its last release: its length, the time the thread ran and waited in it', async () => {
    let t = 100;
    let stat: [number, number] = [5e6, 1e6];
    const c = new FakeChrt();
    const o = opts(c, { realtime: false, now: () => t, schedstat: () => stat });
    const a = raiseCutPriority(o);
    t = 130;
    const b = raiseCutPriority(o);
    t = 142.5;
    stat = [8.5e6, 1.25e6];
    a();
    b();
    assert.deepEqual(windowStats(), { realtime: false, heldMs: 42.5, ranMs: 3.5, waitedMs: 0.25 });
    await cutPrioritySettled();
  });

  it('cutprio: the nice value is raised for the window and put back at its end (as root; elsewhere left alone)', async () => {
    const before = os.getPriority(0);
    const release = raiseCutPriority({ chrt: new FakeChrt().run, realtime: false, nice: before - 1 });
    assert.equal(os.getPriority(0), process.getuid?.() === 0 ? before - 1 : before);
    release();
    assert.equal(os.getPriority(0), before);
    await cutPrioritySettled();
  });

  it('cutprio: with the real chrt (through the agent\'s shell) the event loop goes to SCHED_FIFO and back (as root; elsewhere it is left alone)', async () => {
    const root = process.getuid?.() === 0;
    const release = raiseCutPriority({ nice: os.getPriority(0) });
    await cutPrioritySettled();
    assert.equal(threadPolicy(process.pid), root ? 1 : 0, 'SCHED_FIFO is policy 1 (the reset-on-fork flag is not in /proc)');
    release();
    await cutPrioritySettled();
    assert.equal(threadPolicy(process.pid), 0);
  });
});
