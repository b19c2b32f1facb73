/**
 * The pre-copy hold's bandwidth (agent/drivers/qemu/precopy-hold.ts): the default is the
 * never-converging 64 KiB/s floor, the fast hold above the benchmark guests' 4 MiB/s dirty rate,
 * each convergence during a hold quarters it down to the floor, and the first pass lands at a
 * bandwidth whose convergence threshold (1 ms of it) is under one page. The real QEMU runs of it are in test/integration/qemu-driver.test.ts.
 */
import { strict as assert } from 'node:assert';
import { DEFAULT_HOLD, DEFAULT_HOLD_BANDWIDTH, FAST_HOLD_BANDWIDTH, HOLD_FLOOR, holdAfterConvergence, LANDING_FLOOR, landingBandwidth, PACED_CAP, PACED_DRAIN_S, PACED_MAX_INTERVAL_MS, PACED_MIN_INTERVAL_MS, PACED_READY_BYTES, PACED_READY_MAX_MS, PacedHold, parseHold, parsePaceBy, PACE_BY_ENV, UNLIMITED_BANDWIDTH } from '../../agent/drivers/qemu/precopy-hold';
import { isVnsnapError } from '../../proto/core/errors';

describe('QEMU pre-copy hold: fast enough to sync, quartered by each convergence', () => {
  it('the default is the paced hold; the fixed hold the 64 KiB/s floor; the fast hold 8 MiB/s', () => {
    assert.equal(DEFAULT_HOLD, 'paced');
    assert.equal(DEFAULT_HOLD_BANDWIDTH, 64 * 1024);
    assert.equal(HOLD_FLOOR, 64 * 1024);
    assert.equal(FAST_HOLD_BANDWIDTH, 8 * 1024 * 1024);
  });

  it('each convergence quarters the hold, never below the floor', () => {
    const seen: number[] = [];
    let bw = FAST_HOLD_BANDWIDTH;
    for (let i = 0; i < 5; i++) seen.push((bw = holdAfterConvergence(bw)));
    assert.deepEqual(seen, [2 * 1024 * 1024, 512 * 1024, 128 * 1024, 64 * 1024, 64 * 1024]);
    assert.equal(holdAfterConvergence(16 * 1024), 16 * 1024, 'a hold set below the floor stays as it is');
  });

  it('the first pass lands: the remaining set over 0.3 s, between the floor and the ceiling, never rising as it shrinks', () => {
    const MiB = 1024 * 1024;
    assert.equal(landingBandwidth(600 * MiB, 1024 * MiB), 1024 * MiB, 'capped by the ceiling');
    assert.equal(landingBandwidth(3 * MiB, 1024 * MiB), 10 * MiB);
    assert.equal(landingBandwidth(100 * 1024, 1024 * MiB), LANDING_FLOOR, 'never under the floor');
    assert.equal(landingBandwidth(100 * 1024, 512 * 1024), 512 * 1024, 'a ceiling under the floor wins');
    assert.ok(LANDING_FLOOR / 1000 < 4096, 'a window at the floor measures a threshold (1 ms of it) under one page');
    let last = Infinity;
    for (let r = 256 * MiB; r > 0; r = Math.floor(r / 2)) {
      const bw = landingBandwidth(r, 1024 * MiB);
      assert.ok(bw <= last, `${bw} after ${last} at ${r} bytes remaining`);
      last = bw;
    }
  });

  it('the paced hold halves at a sync interval under the minimum, raises by half after the maximum without a sync, stays within its bounds', () => {
    const MiB = 1024 * 1024;
    const h = new PacedHold(8 * MiB);
    assert.equal(h.bandwidth, 8 * MiB);
    assert.equal(h.observe(2, 0), undefined, 'the first poll only records the sync count');
    assert.equal(h.observe(3, PACED_MIN_INTERVAL_MS + 50), undefined, 'a sync after more than the minimum keeps the bandwidth');
    assert.equal(h.observe(4, PACED_MIN_INTERVAL_MS + 100), 4 * MiB, 'a sync 50 ms after the last halves it');
    assert.equal(h.observe(6, PACED_MIN_INTERVAL_MS + 100 + 2 * PACED_MIN_INTERVAL_MS - 20), 2 * MiB, 'two syncs in one poll: their mean interval counts');
    let t = 10_000;
    assert.equal(h.observe(6, t), 3 * MiB, 'no sync for longer than the maximum raises it by half');
    assert.equal(h.observe(6, t + PACED_MAX_INTERVAL_MS - 1), undefined, 'and not again before another maximum');
    assert.equal(h.observe(6, (t += PACED_MAX_INTERVAL_MS)), 4.5 * MiB);
    assert.equal(new PacedHold(0).bandwidth, HOLD_FLOOR, 'an unknown dirty rate starts at the floor');
    assert.equal(new PacedHold(1024 * MiB).bandwidth, PACED_CAP, 'never above the cap');
    const low = new PacedHold(HOLD_FLOOR);
    low.observe(2, 0);
    assert.equal(low.observe(3, 10), undefined, 'never under the floor');
  });

  it('the hold from the environment: unset or empty is none, `paced`, or whole bytes/s; anything else is ERR_CONFIG', () => {
    assert.equal(parseHold(undefined), undefined);
    assert.equal(parseHold(''), undefined);
    assert.equal(parseHold('paced'), 'paced');
    assert.equal(parseHold('8388608'), 8 * 1024 * 1024);
    for (const bad of ['0', '-1', '1.5', 'fast', '8M']) assert.throws(() => parseHold(bad), (e: unknown) => isVnsnapError(e, 'ERR_CONFIG'), bad);
  });

  it('the paced hold starts at twice the dirty rate or the set over PACED_DRAIN_S, and is ready once QEMU synced with little left (or held long)', () => {
    const MiB = 1024 * 1024;
    assert.equal(PacedHold.start(16 * MiB, 4 * MiB, 3, 0).bandwidth, 8 * MiB, 'twice the dirty rate');
    assert.equal(PacedHold.start(16 * MiB, 0, 3, 0).bandwidth, (16 * MiB) / PACED_DRAIN_S, 'no rate measured yet: the set over PACED_DRAIN_S');
    const h = PacedHold.start(16 * MiB, 4 * MiB, 3, 0);
    assert.equal(h.synced, false);
    assert.equal(h.ready(PACED_READY_BYTES, 1000), false, 'no sync since the hold started: not ready, however little remains');
    h.observe(3, 100);
    assert.equal(h.synced, false, 'the sync count the hold started at is not a sync');
    h.observe(4, 2000);
    assert.equal(h.synced, true);
    assert.equal(h.ready(PACED_READY_BYTES + 1, 2000), false, 'synced, too much left');
    assert.equal(h.ready(PACED_READY_BYTES, 2000), true);
    assert.equal(PacedHold.start(16 * MiB, 4 * MiB, 3, 0).ready(16 * MiB, PACED_READY_MAX_MS), true, 'held PACED_READY_MAX_MS: ready whatever remains');
  });

  it('the paced hold is applied by max-bandwidth unless the environment says `reads`; anything else is ERR_CONFIG', () => {
    assert.equal(parsePaceBy(undefined), 'bandwidth');
    assert.equal(parsePaceBy(''), 'bandwidth');
    assert.equal(parsePaceBy('reads'), 'reads');
    assert.equal(parsePaceBy('bandwidth'), 'bandwidth');
    assert.throws(() => parsePaceBy('qemu'), (e) => isVnsnapError(e, 'ERR_CONFIG') && (e as Error).message.includes(PACE_BY_ENV));
    assert.equal(UNLIMITED_BANDWIDTH, 8 * 1024 * 1024 * 1024);
  });
});
