/**
 * The read pacer of the pre-copy hold (agent/drivers/qemu/read-pacer.ts): exact bytes and times
 * of its gate with a fake clock — a read that overdraws the bucket closes the gate until the
 * debt is paid at the rate, a rate change moves the reopening, release() opens it for good.
 */
import { strict as assert } from 'node:assert';
import { PACER_BURST, type PacerClock, ReadPacer, type ReadGate } from '../../agent/drivers/qemu/read-pacer';
import { isVnsnapError } from '../../proto/core/errors';

/** A clock whose time moves only by advance(), firing the timers due in order. */
class FakeClock implements PacerClock {
  t = 1000;
  private timers: { at: number; fn: () => void; live: boolean }[] = [];

  now(): number {
    return this.t;
  }

  after(ms: number, fn: () => void): () => void {
    const timer = { at: this.t + ms, fn, live: true };
    this.timers.push(timer);
    return () => void (timer.live = false);
  }

  get pending(): number {
    return this.timers.filter((x) => x.live).length;
  }

  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      const next = this.timers.filter((x) => x.live && x.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!next) break;
      next.live = false;
      this.t = next.at;
      next.fn();
    }
    this.t = end;
  }
}

/** A gate that records every close and open with the fake time. */
function recorder(clock: FakeClock): ReadGate & { log: string[] } {
  const log: string[] = [];
  return { log, close: () => void log.push(`close@${clock.t}`), open: () => void log.push(`open@${clock.t}`) };
}

const KiB = 1024;

describe('QEMU read pacer: the pre-copy hold by the agent reading the stream', () => {
  it('a read that overdraws the empty bucket closes the gate until its bytes are paid at the rate', () => {
    const c = new FakeClock();
    const g = recorder(c);
    const p = new ReadPacer(64_000, g, c); // 64 bytes per ms
    p.read(640);
    assert.deepEqual(g.log, ['close@1000']);
    assert.equal(p.isClosed, true);
    c.advance(9);
    assert.deepEqual(g.log, ['close@1000'], 'not open before the debt is paid');
    c.advance(1);
    assert.deepEqual(g.log, ['close@1000', 'open@1010'], '640 bytes at 64 bytes/ms: 10 ms');
    assert.equal(p.isClosed, false);
    assert.equal(c.pending, 0);
  });

  it('the bucket fills while nothing is read, up to the burst, and a read within it keeps the gate open', () => {
    const c = new FakeClock();
    const g = recorder(c);
    const p = new ReadPacer(64_000, g, c); // 64 bytes per ms
    c.advance(10_000); // 640 KiB at the rate, capped at the burst
    p.read(PACER_BURST);
    assert.deepEqual(g.log, [], 'a full bucket takes one whole read');
    p.read(64);
    assert.deepEqual(g.log, ['close@11000']);
    c.advance(1);
    assert.deepEqual(g.log, ['close@11000', 'open@11001']);
    assert.equal(p.bytes, PACER_BURST + 64);
  });

  it('over a span the bytes let through are the rate × span plus the burst, plus one read', () => {
    const c = new FakeClock();
    let open = true;
    const p = new ReadPacer(4 * 1024 * KiB, { close: () => (open = false), open: () => (open = true) }, c); // 4 MiB/s
    let read = 0;
    for (let ms = 0; ms < 1000; ms++) {
      if (open) {
        p.read(64 * KiB); // a socket read whenever the gate is open
        read += 64 * KiB;
      }
      c.advance(1);
    }
    assert.ok(read <= 4 * 1024 * KiB + PACER_BURST + 64 * KiB, `read ${read} bytes in 1 s at 4 MiB/s`);
    assert.ok(read >= 4 * 1024 * KiB - 64 * KiB, `read ${read} bytes in 1 s at 4 MiB/s`);
  });

  it('setRate(): the old rate up to now, the new one from now, and a pending reopening moved', () => {
    const c = new FakeClock();
    const g = recorder(c);
    const p = new ReadPacer(64_000, g, c); // 64 bytes per ms
    p.read(6400); // due at 1100
    c.advance(50); // 3200 paid, 3200 left
    p.setRate(128_000); // 128 bytes per ms: 25 ms more
    assert.equal(c.pending, 1, 'one timer at most');
    c.advance(24);
    assert.deepEqual(g.log, ['close@1000']);
    c.advance(1);
    assert.deepEqual(g.log, ['close@1000', 'open@1075']);
    assert.equal(p.rate, 128_000);
  });

  it('release() opens a closed gate at once, for good', () => {
    const c = new FakeClock();
    const g = recorder(c);
    const p = new ReadPacer(64 * KiB, g, c);
    p.read(64 * KiB);
    p.release();
    assert.deepEqual(g.log, ['close@1000', 'open@1000']);
    assert.equal(c.pending, 0);
    p.read(10 * 1024 * KiB);
    p.setRate(1);
    p.release();
    c.advance(60_000);
    assert.deepEqual(g.log, ['close@1000', 'open@1000'], 'nothing closes it again');
    assert.equal(p.bytes, 64 * KiB + 10 * 1024 * KiB);
  });

  it('a rate of 0 or less is refused (ERR_CONFIG)', () => {
    const c = new FakeClock();
    assert.throws(() => new ReadPacer(0, recorder(c), c), (e) => isVnsnapError(e, 'ERR_CONFIG'));
    const p = new ReadPacer(1, recorder(c), c);
    assert.throws(() => p.setRate(-5), (e) => isVnsnapError(e, 'ERR_CONFIG'));
  });
});
