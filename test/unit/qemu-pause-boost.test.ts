import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { boostPause, BOOST_BOUND_MS, monitorThread, nativeSetPolicy, PAUSE_BOOST_PRIORITY, pauseBoostEnabled, threadPolicies, VCPU_THREAD_NAME, vcpuThreads } from '../../agent/drivers/qemu/pause-boost';
import { FakeChrt } from '../support/fake-chrt';

const BOOST = `--fifo --pid ${PAUSE_BOOST_PRIORITY} 4242`;
const RESTORE = '--other --all-tasks --pid 0 4242';
/** A QEMU without named threads: no monitor thread to raise. */
const noMonitor = (): undefined => undefined;

function logger(): { lines: string[]; log: { debug: (o: object, m: string) => void; warn: (o: object, m: string) => void } } {
  const lines: string[] = [];
  return { lines, log: { debug: (_o, m) => lines.push(`debug ${m}`), warn: (_o, m) => lines.push(`warn ${m}`) } };
}

/** Let settled promises run their callbacks. */
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('QEMU pause boost through chrt, where the addon has no setThreadPolicy (fake chrt and thread policies)', () => {
  it('pauseboost: the main thread goes to SCHED_FIFO at once, every thread back to SCHED_OTHER at release, once', async () => {
    const c = new FakeChrt();
    const { log, lines } = logger();
    const b = boostPause(4242, { log, chrt: c.run, setPolicy: null, monitorThread: noMonitor, policies: () => [0, 0, 0] });
    assert.deepEqual(c.calls, [BOOST], 'started without waiting');
    c.finish(0);
    assert.equal(await b.applied, true);
    const r1 = b.release();
    const r2 = b.release();
    await c.made(2);
    c.finish(1);
    await Promise.all([r1, r2]);
    await b.release();
    assert.deepEqual(c.calls, [BOOST, RESTORE]);
    assert.deepEqual(lines, []);
  });

  it('pauseboost: the QMP monitor thread goes up right after the main thread; all restored once, after both raises settled', async () => {
    const c = new FakeChrt();
    const b = boostPause(4242, { log: logger().log, chrt: c.run, setPolicy: null, monitorThread: () => 4250, policies: () => [0, 0, 0] });
    assert.deepEqual(c.calls, [BOOST, `--fifo --pid ${PAUSE_BOOST_PRIORITY} 4250`], 'both started without waiting');
    const released = b.release();
    c.finish(0);
    await turn();
    assert.equal(c.calls.length, 2, 'no restore while the monitor thread\'s raise may still land');
    c.finish(1, 'chrt: failed to set pid 4250\'s policy: Operation not permitted');
    await c.made(3);
    c.finish(2);
    await released;
    assert.equal(await b.applied, true);
    assert.deepEqual(c.calls.slice(2), [RESTORE]);
  });

  it('pauseboost: the monitor thread is found by the name QEMU gives it; none in a process without it', () => {
    assert.equal(monitorThread(process.pid), undefined);
    assert.equal(monitorThread(2 ** 30), undefined);
  });

  it('pauseboost: a release before the boost\'s chrt exited restores only after it', async () => {
    const c = new FakeChrt();
    const b = boostPause(4242, { log: logger().log, chrt: c.run, setPolicy: null, monitorThread: noMonitor, policies: () => [0] });
    const released = b.release();
    await turn();
    assert.deepEqual(c.calls, [BOOST], 'no restore while the boost may still land');
    c.finish(0);
    await c.made(2);
    c.finish(1);
    await released;
    assert.deepEqual(c.calls, [BOOST, RESTORE]);
  });

  it('pauseboost: the bound restores a boost nobody released; a later release adds nothing', async () => {
    const c = new FakeChrt();
    const { log, lines } = logger();
    const b = boostPause(4242, { log, chrt: c.run, setPolicy: null, monitorThread: noMonitor, policies: () => [0], boundMs: 20 });
    c.finish(0);
    await c.made(2);
    assert.deepEqual(lines, ['warn the pause did not end within the boost bound: QEMU put back at SCHED_OTHER']);
    c.finish(1);
    await b.release();
    assert.deepEqual(c.calls, [BOOST, RESTORE]);
    assert.equal(BOOST_BOUND_MS, 2000);
  });

  it('pauseboost: a QEMU with a thread not at SCHED_OTHER, or whose threads cannot be read, is left alone', async () => {
    const c = new FakeChrt();
    const { log, lines } = logger();
    const rt = boostPause(4242, { log, chrt: c.run, setPolicy: null, monitorThread: noMonitor, policies: () => [0, 1, 0] });
    const gone = boostPause(4242, {
      log,
      chrt: c.run,
      setPolicy: null,
      policies: () => {
        throw new Error('ENOENT');
      },
    });
    const none = boostPause(undefined, { log, chrt: c.run, setPolicy: null });
    assert.deepEqual(await Promise.all([rt.applied, gone.applied, none.applied]), [false, false, false]);
    await Promise.all([rt.release(), gone.release(), none.release()]);
    assert.deepEqual(c.calls, []);
    assert.deepEqual(lines, ['debug QEMU runs a thread that is not SCHED_OTHER: cut without the pause boost', 'debug QEMU threads not readable: cut without the pause boost']);
  });

  it('pauseboost: a boost chrt refused (no permission, no chrt) is never restored; a failed restore is tried once more, then logged; release still resolves', async () => {
    const c = new FakeChrt();
    const { log, lines } = logger();
    const refused = boostPause(4242, { log, chrt: c.run, setPolicy: null, monitorThread: noMonitor, policies: () => [0] });
    c.finish(0, 'Operation not permitted');
    assert.equal(await refused.applied, false);
    await refused.release();
    assert.deepEqual(c.calls, [BOOST]);
    const b = boostPause(4242, { log, chrt: c.run, setPolicy: null, monitorThread: noMonitor, policies: () => [0] });
    c.finish(1);
    const released = b.release();
    await c.made(3);
    c.finish(2, 'No such process');
    await c.made(4); // tried once more (a shell killed for not answering is started again)
    c.finish(3, 'No such process');
    await released;
    assert.deepEqual(c.calls, [BOOST, BOOST, RESTORE, RESTORE]);
    assert.deepEqual(lines, ['debug pause boost not applied', 'warn QEMU threads not put back at SCHED_OTHER after the pause']);
  });

  it('pauseboost: on by default, off with VNSNAP_QEMU_PAUSE_BOOST=0; this process\'s threads read from /proc', () => {
    assert.deepEqual([pauseBoostEnabled({}), pauseBoostEnabled({ VNSNAP_QEMU_PAUSE_BOOST: '0' }), pauseBoostEnabled({ VNSNAP_QEMU_PAUSE_BOOST: '1' })], [true, false, true]);
    const own = threadPolicies(process.pid);
    assert.ok(own.length >= 1);
    assert.deepEqual(own, own.map(() => 0), 'the test runner runs SCHED_OTHER');
  });

  it('pauseboost: the addon\'s setThreadPolicy refuses a thread that is not there (ERR_NATIVE_IO, errnoCode ESRCH) and a priority out of range (ERR_INVALID_ARGUMENT)', () => {
    const set = nativeSetPolicy();
    assert.ok(set, 'the addon is built with setThreadPolicy');
    assert.throws(() => set(0x7ffffffe, true, PAUSE_BOOST_PRIORITY), { code: 'ERR_NATIVE_IO', errnoCode: 'ESRCH', message: 'setThreadPolicy(2147483646): sched_setscheduler: No such process' });
    assert.throws(() => set(process.pid, true, 100), { code: 'ERR_INVALID_ARGUMENT', message: 'setThreadPolicy: priority must be an integer in [0, 99], got 100' });
  });

  for (const way of ['the system call (the addon)', "the real chrt (through the agent's shell)"]) {
    it(`pauseboost: with ${way} a process goes to SCHED_FIFO and back (as root; elsewhere it is left alone)`, async () => {
      const child = spawn('sleep', ['30'], { stdio: 'ignore' });
      try {
        const pid = child.pid as number;
        const root = process.getuid?.() === 0;
        const b = boostPause(pid, { log: logger().log, ...(way.startsWith('the real chrt') ? { setPolicy: null } : {}) });
        if (!way.startsWith('the real chrt')) assert.deepEqual(threadPolicies(pid), [root ? 1 : 0], 'in place when boostPause returns');
        assert.equal(await b.applied, root);
        assert.deepEqual(threadPolicies(pid), [root ? 1 : 0], 'SCHED_FIFO is policy 1');
        await b.release();
        assert.deepEqual(threadPolicies(pid), [0]);
      } finally {
        child.kill('SIGKILL');
      }
    });
  }
});

describe('QEMU pause boost through the system call (fake setPolicy)', () => {
  /** A fake sched_setscheduler: records each call; throws for the tids in `refuse` (an Error with errnoCode). */
  function fakeSet(refuse: Record<number, string> = {}): { calls: string[]; set: (tid: number, fifo: boolean, prio: number) => void } {
    const calls: string[] = [];
    return {
      calls,
      set: (tid, fifo, prio) => {
        calls.push(`${tid} ${fifo ? `fifo ${prio}` : 'other'}`);
        const code = refuse[tid];
        if (code) throw Object.assign(new Error(`setThreadPolicy(${tid}): sched_setscheduler: ${code}`), { code: 'ERR_NATIVE_IO', errnoCode: code });
      },
    };
  }

  it('pauseboost: main and monitor threads at SCHED_FIFO before boostPause returns (no chrt); release puts every thread of the QEMU back, once', async () => {
    const f = fakeSet();
    const c = new FakeChrt();
    const b = boostPause(4242, { log: logger().log, chrt: c.run, setPolicy: f.set, monitorThread: () => 4250, policies: () => [0, 0, 0], threads: () => [4242, 4250, 4251, 4260] });
    assert.deepEqual(f.calls, [`4242 fifo ${PAUSE_BOOST_PRIORITY}`, `4250 fifo ${PAUSE_BOOST_PRIORITY}`]);
    assert.equal(await b.applied, true);
    await Promise.all([b.release(), b.release()]);
    await b.release();
    assert.deepEqual(f.calls.slice(2), ['4242 other', '4250 other', '4251 other', '4260 other'], 'the migration thread started in the pause (4260) too');
    assert.deepEqual(c.calls, [], 'no chrt');
  });

  it('pauseboost: allThreads raises every thread of the QEMU (vCPUs and helpers too) before boostPause returns; release puts them all back', async () => {
    const f = fakeSet();
    const b = boostPause(4242, { log: logger().log, chrt: new FakeChrt().run, setPolicy: f.set, monitorThread: () => 4250, policies: () => [0, 0, 0, 0], threads: () => [4242, 4250, 4251, 4252], allThreads: true });
    assert.deepEqual(f.calls, ['4242', '4250', '4251', '4252'].map((t) => `${t} fifo ${PAUSE_BOOST_PRIORITY}`));
    assert.equal(await b.applied, true);
    await b.release();
    assert.deepEqual(f.calls.slice(4), ['4242 other', '4250 other', '4251 other', '4252 other']);
  });

  it('pauseboost: allThreads with othersPriority puts the main and monitor threads at the boost, every other thread at othersPriority below it', async () => {
    const f = fakeSet();
    const b = boostPause(4242, { log: logger().log, chrt: new FakeChrt().run, setPolicy: f.set, monitorThread: () => 4250, policies: () => [0, 0, 0, 0], threads: () => [4242, 4250, 4251, 4252], allThreads: true, othersPriority: 6 });
    assert.deepEqual(f.calls, [`4242 fifo ${PAUSE_BOOST_PRIORITY}`, `4250 fifo ${PAUSE_BOOST_PRIORITY}`, '4251 fifo 6', '4252 fifo 6']);
    await b.release();
    assert.deepEqual(f.calls.slice(4), ['4242 other', '4250 other', '4251 other', '4252 other']);
  });

  it('pauseboost: lowerVcpus puts the vCPU threads alone back at SCHED_OTHER, the others stay up until release(); false without vCPUs found, after the release, or on a refusal other than ESRCH', async () => {
    const f = fakeSet();
    const opts = { log: logger().log, chrt: new FakeChrt().run, setPolicy: f.set, monitorThread: () => 4250, policies: () => [0, 0, 0, 0], threads: () => [4242, 4250, 4251, 4252, 4260], allThreads: true, othersPriority: 6 };
    const b = boostPause(4242, { ...opts, vcpus: () => [4251, 4252] });
    assert.equal(b.lowerVcpus(), true);
    assert.deepEqual(f.calls.slice(5), ['4251 other', '4252 other']);
    await b.release();
    assert.deepEqual(f.calls.slice(7), ['4242 other', '4250 other', '4251 other', '4252 other', '4260 other'], 'every thread at the release, the migration thread (4260) among them');
    assert.equal(b.lowerVcpus(), false, 'released: nothing to lower');
    const none = boostPause(4242, { ...opts, vcpus: () => [] });
    assert.equal(none.lowerVcpus(), false, 'no vCPU thread found by its name');
    await none.release();
    const refuse: Record<number, string> = {};
    const g = fakeSet(refuse);
    const gone = boostPause(4242, { ...opts, setPolicy: g.set, vcpus: () => [4251, 4299] });
    refuse[4299] = 'ESRCH';
    assert.equal(gone.lowerVcpus(), true, 'a vCPU gone is skipped');
    refuse[4251] = 'EPERM';
    assert.equal(gone.lowerVcpus(), false, 'another refusal: the caller releases the whole boost');
    await gone.release();
    const c = new FakeChrt();
    const viaChrt = boostPause(4242, { ...opts, chrt: c.run, setPolicy: null, vcpus: () => [4251] });
    assert.equal(viaChrt.lowerVcpus(), false, 'through chrt: not alone');
    for (let i = 0; i < c.calls.length; i++) c.finish(i);
    const released = viaChrt.release();
    await turn();
    c.finish(c.calls.length - 1);
    await released;
  });

  it('pauseboost: vCPU threads are found by the names QEMU gives them', () => {
    assert.deepEqual(['CPU 0/TCG', 'CPU 12/KVM', 'ALL CPUs/TCG', 'IO mon_iothread', 'qemu-system-x86', 'live_migration', 'CPU0/TCG'].map((n) => VCPU_THREAD_NAME.test(n)), [true, true, true, false, false, false, false]);
    assert.deepEqual(vcpuThreads(process.pid), [], 'this process has none');
  });

  it('pauseboost: a refused raise is not restored; a thread gone by the release (ESRCH) is skipped in silence, another refusal is logged; release resolves', async () => {
    const { log, lines } = logger();
    const refused = boostPause(4242, { log, setPolicy: fakeSet({ 4242: 'EPERM' }).set, monitorThread: noMonitor, policies: () => [0], threads: () => [4242] });
    assert.equal(await refused.applied, false);
    await refused.release();
    const refuse: Record<number, string> = {};
    const f = fakeSet(refuse);
    const b = boostPause(4242, { log, setPolicy: f.set, monitorThread: noMonitor, policies: () => [0], threads: () => [4242, 4243, 4244] });
    assert.equal(await b.applied, true);
    Object.assign(refuse, { 4243: 'ESRCH', 4244: 'EPERM' });
    await b.release();
    assert.deepEqual(f.calls, [`4242 fifo ${PAUSE_BOOST_PRIORITY}`, '4242 other', '4243 other', '4244 other']);
    assert.deepEqual(lines, ['debug pause boost not applied', 'warn QEMU threads not put back at SCHED_OTHER after the pause']);
  });
});
