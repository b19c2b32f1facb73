import { strict as assert } from 'node:assert';
import { TRACKED_BACKGROUND_LEAD_MS } from '../../coordinator/cut-instant';
import { FRESH_ROUND_MS, MIN_ROUND_GAP_MS, nextRoundInMs, ROUND_GAP_MS, ROUND_LEAD_MS, roundDue } from '../../agent/drivers/qemu/round-schedule';

/** The rounds' start times (ms) before a stop at `stopAt` from a receipt at 0, each round taking `len(i)` ms. */
function schedule(stopAt: number, len: (i: number) => number, lastRoundAt = -1000): number[] {
  const starts: number[] = [];
  let now = 0;
  if (!roundDue(now, lastRoundAt, stopAt)) return starts;
  for (let i = 0; i < 100; i++) {
    starts.push(now);
    now += len(i);
    const wait = nextRoundInMs(now, stopAt, len(i));
    if (wait === undefined) return starts;
    now += wait;
  }
  throw new Error('no end');
}

describe('tracked rounds before a stop (round-schedule.ts)', () => {
  it('the constants', () => {
    assert.deepEqual([FRESH_ROUND_MS, ROUND_LEAD_MS, ROUND_GAP_MS, MIN_ROUND_GAP_MS], [250, 30, 300, 10]);
  });

  it('roundDue: always when the last round is stale; with a fresh one only when the instant leaves more than ROUND_LEAD_MS', () => {
    assert.equal(roundDue(1000, 749), true, 'no instant, last round 251 ms old');
    assert.equal(roundDue(1000, 750), false, 'no instant, 250 ms: fresh');
    assert.equal(roundDue(1000, 749, 1000), true, 'stale: even at the instant');
    assert.equal(roundDue(1000, 900, 1031), true, 'fresh, 31 ms to the instant');
    assert.equal(roundDue(1000, 900, 1030), false, 'fresh, 30 ms to the instant');
    assert.equal(roundDue(1000, 900, 900), false, 'fresh, the instant past');
  });

  it('nextRoundInMs: the room before the latest start (instant − ROUND_LEAD_MS − 2 × the last round) in equal gaps of at most ROUND_GAP_MS; none under MIN_ROUND_GAP_MS', () => {
    assert.equal(nextRoundInMs(0, 330, 0), 300, '300 ms of room: 1 gap');
    assert.equal(nextRoundInMs(0, 340, 0), 155, '310 ms: 2 gaps');
    assert.equal(nextRoundInMs(0, 710, 0), 680 / 3, '680 ms: 3 equal gaps, not 300, 300 then 80');
  });

  it('nextRoundInMs at its edges', () => {
    assert.equal(nextRoundInMs(20, 300, 20), 210, '300 − 30 − 2 × 20 − 20 = 210 ms: 1 gap');
    assert.equal(nextRoundInMs(0, 40, 0), 10, 'exactly MIN_ROUND_GAP_MS of room');
    assert.equal(nextRoundInMs(0, 39.9, 0), undefined);
    assert.equal(nextRoundInMs(0, 100, 30), 10, '100 − 30 − 2 × 30 = 10 ms');
    assert.equal(nextRoundInMs(0, 99, 30), undefined, '9 ms');
    assert.equal(nextRoundInMs(500, 400, 5), undefined, 'the instant past');
    assert.equal(nextRoundInMs(0, 200, -5), 170, 'a negative length (clock) counts as 0: 170 ms, 1 gap');
    assert.equal(nextRoundInMs(0, Number.NaN, 0), undefined);
  });

  it('whole schedules: the last round begins at the latest start, a long round stops the rounds early, a fresh round near the instant means none', () => {
    assert.deepEqual(schedule(330, () => 0), [0, 300], 'the lead of 300 ms: one round at the receipt, one at the latest start');
    // Rounds of 10 ms: after the first, room = 330 − 30 − 20 − 10 = 270 ms in 1 gap; the last begins at 280.
    assert.deepEqual(schedule(330, () => 10), [0, 280]);
    // A longer lead: room 870 ms in 3 gaps (290), then 570 in 2 (285), then 275 in 1; the last begins at 880.
    assert.deepEqual(schedule(930, () => 10), [0, 300, 595, 880]);
    assert.deepEqual(schedule(120, () => 50), [0], 'a 50 ms round: 120 − 30 − 100 − 50 < 10, none after it');
    assert.deepEqual(schedule(20, () => 5, -10), [], 'fresh (10 ms old) and 20 ms to the instant: none');
    assert.deepEqual(schedule(20, () => 5, -1000), [0], 'stale: one round whatever the instant');
  });

  it("the background lead (TRACKED_BACKGROUND_LEAD_MS) over a 20 ms margin: a short round at the receipt and one more ending ROUND_LEAD_MS before the instant; a long one alone", () => {
    const stopAt = 20 + TRACKED_BACKGROUND_LEAD_MS; // the receipt at 0, the commit's delivery inside the margin
    // 10 ms rounds: room = 120 − 30 − 20 − 10 = 60 ms, 1 gap; the second begins at 70, ends at 80, 40 ms (≥ ROUND_LEAD_MS) before the instant.
    assert.deepEqual(schedule(stopAt, () => 10), [0, 70]);
    assert.ok(stopAt - (70 + 10) >= ROUND_LEAD_MS);
    assert.deepEqual(schedule(stopAt, () => 30), [0], 'a 30 ms round: 120 − 30 − 60 − 30 = 0 ms of room, none after it');
    assert.deepEqual(schedule(stopAt, () => 10, -100), [0, 70], "the begin's round 100 ms old (fresh): the instant leaves room, a round at the receipt");
  });
});
