/**
 * The pause of a QEMU pre-copy cut (agent/drivers/qemu/precopy-pause.ts) over a scripted QMP
 * peer: what is sent while the hook still runs, when cont goes out, and what a failure leaves.
 * The real QEMU runs of it are in test/integration/qemu-driver.test.ts.
 */
import { strict as assert } from 'node:assert';
import { EventEmitter } from 'node:events';
import { VnsnapError } from '../../proto/core/errors';
import type { QmpClient, QmpEvent } from '../../agent/drivers/qemu/qmp';
import { precopyPause } from '../../agent/drivers/qemu/precopy-pause';

/** A QMP client that records commands in order and answers cont "not finalized" `notFinalized` times. */
class ScriptedQmp extends EventEmitter {
  readonly sent: string[] = [];
  notFinalized = 0;
  failDisk = false;

  async execute(cmd: string): Promise<unknown> {
    this.sent.push(cmd);
    if (cmd === 'blockdev-snapshot' && this.failDisk) throw new VnsnapError('ERR_DRIVER', 'QEMU: node is used as backing hd');
    if (cmd === 'cont') {
      if (this.notFinalized-- > 0) throw new VnsnapError('ERR_DRIVER', 'QEMU: Migration is not finalized yet');
      setImmediate(() => this.emit('event', { event: 'RESUME', data: {}, timestampUs: 42, receivedAt: 0 }));
    }
    return {};
  }

  waitEvent(name: string): Promise<QmpEvent> {
    return new Promise((resolve) => {
      const on = (ev: QmpEvent): void => {
        if (ev.event !== name) return;
        this.off('event', on);
        resolve(ev);
      };
      this.on('event', on);
    });
  }
}

function gate(): { p: Promise<void>; open: () => void; fail: (e: Error) => void } {
  let open!: () => void;
  let fail!: (e: Error) => void;
  const p = new Promise<void>((resolve, reject) => ((open = resolve), (fail = reject)));
  return { p, open, fail };
}

const turns = async (n: number): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

describe('QEMU pre-copy pause: the hook beside the final pass, cont on the event', () => {
  function start(q: ScriptedQmp) {
    const hook = gate();
    const completed = gate();
    const steps: string[] = [];
    let hookCalls = 0;
    const run = precopyPause({
      q: q as unknown as QmpClient,
      atPause: () => (hookCalls++, hook.p),
      snapshotDisk: async () => void (await q.execute('blockdev-snapshot')),
      completed: completed.p,
      mark: (s) => steps.push(s),
    });
    run.catch(() => undefined);
    return { run, hook, completed, steps, calls: () => hookCalls };
  }

  it('blockdev-snapshot and migrate-continue go out back to back while the hook runs; cont once the hook is done, retried after MIGRATION completed', async () => {
    const q = new ScriptedQmp();
    q.notFinalized = 2;
    const r = start(q);
    await turns(3);
    assert.deepEqual(q.sent, ['blockdev-snapshot', 'migrate-continue'], 'QEMU sends the final pass while the hook still runs');
    r.hook.open();
    await turns(5);
    assert.deepEqual(q.sent, ['blockdev-snapshot', 'migrate-continue', 'cont'], 'cont queued at once; refused, it waits for completed');
    r.completed.open();
    const resume = await r.run;
    assert.equal(resume.timestampUs, 42);
    assert.deepEqual(q.sent, ['blockdev-snapshot', 'migrate-continue', 'cont', 'cont', 'cont'], 'retried at once while "not finalized"');
    assert.deepEqual(r.steps, ['disk', 'hook', 'cont-refused', 'completed', 'cont-refused', 'resumed']);
    assert.equal(r.calls(), 1);
  });

  it('no cont while the hook runs, even with the migration completed; taken at the first try after it', async () => {
    const q = new ScriptedQmp();
    const r = start(q);
    r.completed.open();
    await turns(5);
    assert.equal(q.sent.includes('cont'), false);
    r.hook.open();
    await r.run;
    assert.deepEqual(q.sent, ['blockdev-snapshot', 'migrate-continue', 'cont']);
  });

  it('a migration that fails after the hook rejects with its error', async () => {
    const q = new ScriptedQmp();
    q.notFinalized = 1;
    const r = start(q);
    r.hook.open();
    await turns(5);
    r.completed.fail(new VnsnapError('ERR_DRIVER', 'migration of vm failed'));
    await assert.rejects(r.run, /migration of vm failed/);
    assert.deepEqual(q.sent, ['blockdev-snapshot', 'migrate-continue', 'cont']);
  });

  it("a failing hook rejects with the hook's error once QEMU's side settled, and sends no cont", async () => {
    const q = new ScriptedQmp();
    const r = start(q);
    r.hook.fail(new VnsnapError('ERR_DRIVER', 'drain failed'));
    await turns(5);
    let settled = false;
    void r.run.catch(() => (settled = true));
    await turns(3);
    assert.equal(settled, false, 'waits for the migration to settle');
    r.completed.open();
    await assert.rejects(r.run, /drain failed/);
    assert.equal(q.sent.includes('cont'), false);
  });

  it("a failing disk snapshot rejects with QEMU's error", async () => {
    const q = new ScriptedQmp();
    q.failDisk = true;
    const r = start(q);
    r.hook.open();
    await assert.rejects(r.run, /node is used as backing hd/);
    assert.deepEqual(q.sent.slice(0, 2), ['blockdev-snapshot', 'migrate-continue']);
  });
});
