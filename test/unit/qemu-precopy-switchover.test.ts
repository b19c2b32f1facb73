/**
 * The start of a QEMU pre-copy cut (agent/drivers/qemu/precopy-switchover.ts) over a scripted
 * QMP peer: the VM is stopped at the commit (after the final round) instead of waiting for QEMU
 * to converge by itself, the round ended by QEMU's progress (a sync after the lift, the set
 * sent) or its bound, and what a failure leaves. The real QEMU runs of it are in
 * test/integration/qemu-driver.test.ts.
 */
import { strict as assert } from 'node:assert';
import { EventEmitter } from 'node:events';
import { silentLogger } from '../../proto/core/log';
import type { QmpClient, QmpEvent } from '../../agent/drivers/qemu/qmp';
import { CUT_ROUND_ENV, FINAL_ROUND, finalRoundDone, INSTANT_DOWNTIME_MS, READ_PACED_ROUND_MS, readPacedRound, reachSwitchover, roundEnd, thawMs, type RoundOutcome, type RoundProgress, type Switchover } from '../../agent/drivers/qemu/precopy-switchover';
import { isVnsnapError } from '../../proto/core/errors';

const MiB = 1024 * 1024;
/** A round of at most `maxMs`, polled every ms. */
const round = (maxMs: number) => ({ ...FINAL_ROUND, maxMs, pollMs: 1 });

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
    await reachSwitchover(t.s, round(5));
    assert.deepEqual(
      t.q.sent.map(([c]) => c),
      ['migrate-set-parameters', 'stop'],
    );
    assert.deepEqual(t.q.sent[0]?.[1], { 'max-bandwidth': 8 * 1024 * 1024 * 1024, 'downtime-limit': 30 });
    assert.equal(t.s.stoppedByUs, true);
    assert.deepEqual(t.stops, ['stopped'], 'stopped once (the stop, not again at the pre-switchover)');
  });

  /** A cut held by its reads with a fixed round of `maxMs`: the commands sent, the round, how long it took (ms). */
  async function liftedCut(maxMs: number): Promise<{ cmds: string[]; round: RoundOutcome | undefined; ms: number; stoppedByUs?: boolean }> {
    const t = setup();
    t.s.lifted = true;
    t.q.onStop = () => setImmediate(() => t.pre.resolve(PRE_SWITCHOVER));
    const t0 = performance.now();
    await reachSwitchover(t.s, { ...FINAL_ROUND, maxMs });
    return { cmds: t.q.sent.map(([c]) => c), round: t.s.round, ms: performance.now() - t0, stoppedByUs: t.s.stoppedByUs };
  }

  it('held by its reads (lifted): no migrate-set-parameters before the stop; a round of 0 ms stops at once', async () => {
    const r = await liftedCut(0);
    assert.deepEqual(r.cmds, ['stop']);
    assert.deepEqual(r.round, { how: 'fixed', ms: 0 });
    assert.ok(r.ms < 50, 'no wait before the stop');
    assert.equal(r.stoppedByUs, true);
  });

  it('held by its reads: a fixed round of N ms, then the stop', async () => {
    const r = await liftedCut(20);
    assert.deepEqual(r.cmds, ['stop']);
    assert.equal(r.round?.how, 'fixed');
    assert.ok(r.ms >= 19, 'the stop after the round');
  });

  it('readPacedRound(): READ_PACED_ROUND_MS unless the environment gives whole ms ≥ 0; anything else is ERR_CONFIG', () => {
    assert.equal(readPacedRound(undefined).maxMs, READ_PACED_ROUND_MS);
    assert.equal(readPacedRound('').maxMs, READ_PACED_ROUND_MS);
    assert.equal(readPacedRound('0').maxMs, 0);
    assert.equal(readPacedRound('45').maxMs, 45);
    for (const bad of ['-1', '2.5', 'soon']) assert.throws(() => readPacedRound(bad), (e) => isVnsnapError(e, 'ERR_CONFIG') && (e as Error).message.includes(CUT_ROUND_ENV));
  });

  it('a VM that converges within the final round is not stopped by us', async () => {
    const t = setup();
    t.pre.resolve(PRE_SWITCHOVER);
    await reachSwitchover(t.s, round(60_000));
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
    await reachSwitchover(t.s, round(5));
    assert.deepEqual(
      t.q.sent.map(([c, a]) => (c === 'migrate-set-parameters' ? `${c} ${String(a?.['downtime-limit'])}` : c)),
      ['migrate-set-parameters 30', 'stop', 'migrate-set-parameters 120', 'migrate-set-parameters 480'],
    );
  });

  it('a migration that ends before the switchover rejects, saying whether the VM was stopped', async () => {
    const t = setup();
    t.q.onStop = () => setImmediate(() => t.ended.reject(new Error('migration of vm1 failed')));
    await assert.rejects(reachSwitchover(t.s, round(5)), /migration of vm1 failed/);
    assert.equal(t.s.stoppedByUs, true);

    const u = setup();
    u.ended.resolve();
    await assert.rejects(reachSwitchover(u.s, round(60_000)), (e: Error & { code?: string }) => e.code === 'ERR_DRIVER' && /ended before the switchover/.test(e.message));
    assert.equal(u.s.stoppedByUs, undefined);
    assert.deepEqual(u.stops, []);
  });

  it('a watched round ends once QEMU synced after the lift and sent the set down to leftBytes: then stop', async () => {
    const t = setup();
    const script: RoundProgress[] = [
      { sync: 7, remaining: 3 * MiB }, // at the lift
      { sync: 7, remaining: 2 * MiB }, // sending the old set
      { sync: 8, remaining: 2 * MiB }, // synced: the new set
      { sync: 8, remaining: MiB / 2 }, // sent down to leftBytes
      { sync: 8, remaining: 0 },
    ];
    let polls = 0;
    t.s.progress = async () => script[Math.min(polls++, script.length - 1)] as RoundProgress;
    t.q.onStop = () => setImmediate(() => t.pre.resolve(PRE_SWITCHOVER));
    await reachSwitchover(t.s, round(60_000));
    assert.equal(polls, 4);
    assert.deepEqual(
      t.q.sent.map(([c]) => c),
      ['migrate-set-parameters', 'stop'],
    );
    assert.equal(t.s.round?.how, 'synced');
    assert.equal(t.s.round?.syncs, 1);
    assert.equal(t.s.round?.remaining, MiB / 2);
    assert.equal(t.s.stoppedByUs, true);
  });

  it('a watched round without a sync ends at its bound; QEMU converging during it ends it without a stop', async () => {
    const t = setup();
    t.s.progress = async () => ({ sync: 3, remaining: 9 * MiB });
    t.q.onStop = () => setImmediate(() => t.pre.resolve(PRE_SWITCHOVER));
    await reachSwitchover(t.s, round(20));
    assert.equal(t.s.round?.how, 'cap');
    assert.equal(t.s.round?.syncs, 0);
    assert.ok((t.s.round?.ms ?? 0) >= 20, `the round lasted ${String(t.s.round?.ms)} ms`);
    assert.deepEqual(
      t.q.sent.map(([c]) => c),
      ['migrate-set-parameters', 'stop'],
    );

    const u = setup();
    let polls = 0;
    u.s.progress = async () => {
      if (++polls === 3) u.pre.resolve(PRE_SWITCHOVER);
      return { sync: 3, remaining: 9 * MiB };
    };
    await reachSwitchover(u.s, round(60_000));
    assert.equal(u.s.round?.how, 'converged');
    assert.equal(u.s.stoppedByUs, undefined);
    assert.deepEqual(
      u.q.sent.map(([c]) => c),
      ['migrate-set-parameters'],
    );
    assert.deepEqual(u.stops, ['stopped']);
  });

  it('a watched round whose query-migrate fails or hangs still ends at its bound with the stop', async () => {
    for (const progress of [() => Promise.reject(new Error('QMP gone')), () => new Promise<RoundProgress>(() => undefined)]) {
      const t = setup();
      t.s.progress = progress;
      t.q.onStop = () => setImmediate(() => t.pre.resolve(PRE_SWITCHOVER));
      await reachSwitchover(t.s, round(20));
      assert.equal(t.s.round?.how, 'fixed');
      assert.deepEqual(
        t.q.sent.map(([c]) => c),
        ['migrate-set-parameters', 'stop'],
      );
    }
  });

  it('a cut instant ahead: downtime-limit stays 1 ms, the round done early waits (no more polls) and `stop` is written at the instant', async () => {
    const t = setup();
    const script: RoundProgress[] = [
      { sync: 7, remaining: 3 * MiB },
      { sync: 8, remaining: MiB / 4 }, // done
    ];
    let polls = 0;
    t.s.progress = async () => script[Math.min(polls++, script.length - 1)] as RoundProgress;
    const reads: string[] = [];
    t.s.freeze = () => reads.push(`freeze after ${polls} polls`);
    t.s.thaw = () => reads.push(`thaw after ${t.q.sent.map(([c]) => c).join(',')}`);
    t.q.onStop = () => setImmediate(() => t.pre.resolve(PRE_SWITCHOVER));
    const t0 = performance.now();
    t.s.stopAt = t0 + 60;
    await reachSwitchover(t.s, round(5));
    assert.deepEqual(reads, ['freeze after 2 polls', 'thaw after migrate-set-parameters,stop'], 'the stream unread from the round done to the stop written');
    assert.deepEqual(t.q.sent[0]?.[1], { 'max-bandwidth': 8 * 1024 * 1024 * 1024, 'downtime-limit': INSTANT_DOWNTIME_MS });
    assert.deepEqual(
      t.q.sent.map(([c]) => c),
      ['migrate-set-parameters', 'stop'],
    );
    assert.equal(polls, 2, 'no poll after the round was done');
    assert.ok((t.s.stopWrittenAt ?? 0) >= t0 + 59, `stop written ${((t.s.stopWrittenAt ?? 0) - t0).toFixed(1)} ms after the lift, not before the instant (the round's own bound was 5 ms)`);
    assert.equal(t.s.round?.how, 'instant');
    assert.ok(t.s.round?.doneMs !== undefined && t.s.round.doneMs < 30);
    assert.equal(t.s.round?.syncs, 1);
  });

  it('a cut instant reached before the round was done: `stop` at it; QEMU converging before it: no stop; an instant already past: the watched round', async () => {
    const t = setup();
    t.s.progress = async () => ({ sync: 3, remaining: 9 * MiB });
    t.q.onStop = () => setImmediate(() => t.pre.resolve(PRE_SWITCHOVER));
    const t0 = performance.now();
    t.s.stopAt = t0 + 25;
    await reachSwitchover(t.s, round(60_000));
    assert.equal(t.s.round?.how, 'instant');
    assert.equal(t.s.round?.doneMs, undefined);
    assert.equal(t.s.round?.remaining, 9 * MiB);
    assert.ok((t.s.stopWrittenAt ?? 0) >= t0 + 24 && (t.s.stopWrittenAt ?? 0) < t0 + 1000);

    const u = setup();
    u.s.stopAt = performance.now() + 60_000;
    let thawed = 0;
    u.s.thaw = () => void thawed++;
    setTimeout(() => u.pre.resolve(PRE_SWITCHOVER), 10);
    await reachSwitchover(u.s, round(5));
    assert.equal(thawed, 1, 'read again when QEMU converged by itself');
    assert.equal(u.s.round?.how, 'converged');
    assert.equal(u.s.stoppedByUs, undefined);
    assert.deepEqual(u.stops, ['stopped']);

    const v = setup();
    v.s.progress = async () => ({ sync: 3, remaining: 9 * MiB });
    v.q.onStop = () => setImmediate(() => v.pre.resolve(PRE_SWITCHOVER));
    v.s.stopAt = performance.now() - 5;
    await reachSwitchover(v.s, round(15));
    assert.equal(v.s.round?.how, 'cap');
    assert.deepEqual(v.q.sent[0]?.[1], { 'max-bandwidth': 8 * 1024 * 1024 * 1024, 'downtime-limit': 30 });
  });

  it('a migration that ends during a round to a cut instant rejects, the stream read again', async () => {
    const t = setup();
    t.s.progress = async () => ({ sync: 3, remaining: 9 * MiB });
    t.s.stopAt = performance.now() + 60_000;
    let thawed = 0;
    t.s.thaw = () => void thawed++;
    setTimeout(() => t.ended.resolve(), 10);
    await assert.rejects(reachSwitchover(t.s, round(5)), (e) => isVnsnapError(e, 'ERR_DRIVER'));
    assert.equal(thawed, 1);
    assert.equal(t.s.stoppedByUs, undefined);
  });

  it('a frozen round with thawMs: read again that long before the instant, `stop` still at the instant; thawMs() parses THAW_ENV', async () => {
    const t = setup();
    const script: RoundProgress[] = [
      { sync: 7, remaining: 3 * MiB },
      { sync: 8, remaining: MiB / 4 },
    ];
    let polls = 0;
    t.s.progress = async () => script[Math.min(polls++, script.length - 1)] as RoundProgress;
    const t0 = performance.now();
    const reads: [string, number][] = [];
    t.s.freeze = () => reads.push(['freeze', performance.now() - t0]);
    t.s.thaw = () => reads.push(['thaw', performance.now() - t0]);
    t.q.onStop = () => setImmediate(() => t.pre.resolve(PRE_SWITCHOVER));
    t.s.stopAt = t0 + 80;
    t.s.thawMs = 40;
    await reachSwitchover(t.s, round(5));
    assert.deepEqual(
      reads.map(([k]) => k),
      ['freeze', 'thaw', 'thaw'],
      'read again before the instant (and the idempotent thaw behind the stop)',
    );
    const thawedAt = reads[1]?.[1] ?? 0;
    assert.ok(thawedAt >= 39 && thawedAt < 79, `read again ${thawedAt.toFixed(1)} ms after the lift`);
    assert.ok((t.s.stopWrittenAt ?? 0) >= t0 + 79);
    assert.equal(thawMs(undefined), 0);
    assert.equal(thawMs(''), 0);
    assert.equal(thawMs('15'), 15);
    for (const bad of ['-1', '2.5', 'x']) assert.throws(() => thawMs(bad), (e) => isVnsnapError(e, 'ERR_CONFIG'));
  });

  it('roundEnd: the instant when it is ahead of the lift, else the watched round', () => {
    assert.deepEqual(roundEnd(undefined, 100), { how: 'watched' });
    assert.deepEqual(roundEnd(100, 100), { how: 'watched' });
    assert.deepEqual(roundEnd(90, 100), { how: 'watched' });
    assert.deepEqual(roundEnd(140, 100), { how: 'instant', inMs: 40 });
  });

  it('finalRoundDone: a sync after the lift with at most leftBytes left, or two syncs', () => {
    assert.equal(finalRoundDone(5, { sync: 5, remaining: 0 }, MiB), false, 'no sync since the lift');
    assert.equal(finalRoundDone(5, { sync: 6, remaining: MiB + 1 }, MiB), false);
    assert.equal(finalRoundDone(5, { sync: 6, remaining: MiB }, MiB), true);
    assert.equal(finalRoundDone(5, { sync: 7, remaining: 8 * MiB }, MiB), true);
  });
});
