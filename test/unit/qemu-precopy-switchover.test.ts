/**
 * The start of a QEMU pre-copy cut (agent/drivers/qemu/precopy-switchover.ts) over a scripted
 * QMP peer: the VM is stopped at the commit (after the short final round) instead of waiting
 * for QEMU to converge by itself, and what a failure leaves. The real QEMU runs of it are in
 * test/integration/qemu-driver.test.ts.
 */
import { strict as assert } from 'node:assert';
import { EventEmitter } from 'node:events';
import { silentLogger } from '../../proto/core/log';
import type { QmpClient, QmpEvent } from '../../agent/drivers/qemu/qmp';
import { reachSwitchover, type Switchover } from '../../agent/drivers/qemu/precopy-switchover';

/** Records commands (and their arguments) in order; `onStop` runs when `stop` is executed. */
class ScriptedQmp extends EventEmitter {
  readonly sent: [string, Record<string, unknown> | undefined][] = [];
  onStop: () => void = () => undefined;

  async execute(cmd: string, args?: Record<string, unknown>): Promise<unknown> {
    this.sent.push([cmd, args]);
    if (cmd === 'stop') this.onStop();
    return {};
  }

  prepare(cmd: string, args?: Record<string, unknown>): { send: () => Promise<unknown> } {
    return { send: () => this.execute(cmd, args) };
  }
}

function deferred<T>(): { p: Promise<T>; resolve: (v: T) => void; reject: (e: Error) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: Error) => void;
  const p = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { p, resolve, reject };
}

const PRE_SWITCHOVER: QmpEvent = { event: 'MIGRATION', data: { status: 'pre-switchover' }, timestampUs: 7, receivedUnixUs: 8 } as unknown as QmpEvent;

describe('QEMU pre-copy cut: stopped at the commit, not at its own convergence', () => {
  function setup(escalateMs = 60_000) {
    const q = new ScriptedQmp();
    const pre = deferred<QmpEvent>();
    const ended = deferred<void>();
    const stops: string[] = [];
    const s: Switchover = {
      q: q as unknown as QmpClient,
      vm: 'vm1',
      log: silentLogger(),
      cutDowntimeMs: 30,
      escalateMs,
      preSwitchover: pre.p,
      ended: ended.p,
      stopped: () => stops.push('stopped'),
      mark: () => undefined,
    };
    return { q, pre, ended, stops, s };
  }

  it('a VM that has not converged after the final round is stopped; done at the pre-switchover that follows', async () => {
    const t = setup();
    t.q.onStop = () => setImmediate(() => t.pre.resolve(PRE_SWITCHOVER));
    await reachSwitchover(t.s, 5);
    assert.deepEqual(
      t.q.sent.map(([c]) => c),
      ['migrate-set-parameters', 'stop'],
    );
    assert.deepEqual(t.q.sent[0]?.[1], { 'max-bandwidth': 8 * 1024 * 1024 * 1024, 'downtime-limit': 30 });
    assert.equal(t.s.stoppedByUs, true);
    assert.deepEqual(t.stops, ['stopped'], 'stopped once (the stop, not again at the pre-switchover)');
  });

  it('a VM that converges within the final round is not stopped by us', async () => {
    const t = setup();
    t.pre.resolve(PRE_SWITCHOVER);
    await reachSwitchover(t.s, 60_000);
    assert.deepEqual(
      t.q.sent.map(([c]) => c),
      ['migrate-set-parameters'],
    );
    assert.equal(t.s.stoppedByUs, undefined);
    assert.deepEqual(t.stops, ['stopped']);
  });

  it('no pre-switchover after the stop: downtime-limit is raised ×4 until it comes', async () => {
    const t = setup(5);
    let raised = 0;
    const exec = t.q.execute.bind(t.q);
    t.q.execute = async (cmd, args) => {
      const r = await exec(cmd, args);
      if (cmd === 'migrate-set-parameters' && args?.['max-bandwidth'] === undefined && ++raised === 2) t.pre.resolve(PRE_SWITCHOVER);
      return r;
    };
    await reachSwitchover(t.s, 5);
    assert.deepEqual(
      t.q.sent.map(([c, a]) => (c === 'migrate-set-parameters' ? `${c} ${String(a?.['downtime-limit'])}` : c)),
      ['migrate-set-parameters 30', 'stop', 'migrate-set-parameters 120', 'migrate-set-parameters 480'],
    );
  });

  it('a migration that ends before the switchover rejects, saying whether the VM was stopped', async () => {
    const t = setup();
    t.q.onStop = () => setImmediate(() => t.ended.reject(new Error('migration of vm1 failed')));
    await assert.rejects(reachSwitchover(t.s, 5), /migration of vm1 failed/);
    assert.equal(t.s.stoppedByUs, true);

    const u = setup();
    u.ended.resolve();
    await assert.rejects(reachSwitchover(u.s, 60_000), (e: Error & { code?: string }) => e.code === 'ERR_DRIVER' && /ended before the switchover/.test(e.message));
    assert.equal(u.s.stoppedByUs, undefined);
    assert.deepEqual(u.stops, []);
  });
});
