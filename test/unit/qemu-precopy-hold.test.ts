/**
 * The pre-copy hold's bandwidth (agent/drivers/qemu/precopy-hold.ts): the default is the
 * never-converging 64 KiB/s floor, the fast hold above the benchmark guests' 4 MiB/s dirty rate,
 * and each convergence during a hold quarters it down to the floor. The real QEMU runs of it are in test/integration/qemu-driver.test.ts.
 */
import { strict as assert } from 'node:assert';
import { DEFAULT_HOLD_BANDWIDTH, FAST_HOLD_BANDWIDTH, HOLD_FLOOR, holdAfterConvergence } from '../../agent/drivers/qemu/precopy-hold';

describe('QEMU pre-copy hold: fast enough to sync, quartered by each convergence', () => {
  it('the default is the 64 KiB/s floor; the fast hold 8 MiB/s', () => {
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
});
