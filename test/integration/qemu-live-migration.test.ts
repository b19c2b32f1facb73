/**
 * Live migration at the QEMU driver (agent/drivers/qemu/live-migration.ts), with the test guest
 * of docs/guest.md writing numbered disk records and checking its memory: two QemuDriver
 * instances (two "hosts", each its own work and disks directory) on the loopback address.
 *
 *   - migrateIn on the destination (NBD export + incoming listener), migrateOut on the source:
 *     the disk mirrored and in sync, memory pre-copied, the VM paused for the switchover;
 *     finish() and resume(): the same guest run (nonce) continues on the destination, its disk
 *     checker finds every record (0 errors), its memory checks pass; the source can be stopped.
 *   - the destination's QEMU killed while the disk is mirrored: untilPaused() rejects, cancel()
 *     leaves the source running with its disk writer going on, 0 errors.
 *
 * Everything under /tmp/vnqm-test-<pid>-mig (qemu-driver.test.ts sweeps crashed runs), removed
 * in after() also when a test fails.
 */
import { strict as assert } from 'node:assert';
import type { MigrationProgress } from '../../agent/drivers/driver';
import { MigrationPair } from '../support/qemu-migration-pair';

describe('QEMU driver: live migration with the local disk (NBD mirror + memory pre-copy)', function () {
  this.timeout(240_000);
  const pair = new MigrationPair(`/tmp/vnqm-test-${process.pid}-mig`);

  before(function () {
    this.timeout(25 * 60_000);
    if (!pair.prepare()) this.skip();
  });
  after(() => pair.close());

  const driver = (host: string) => pair.driver(host);
  const waitFor = pair.waitFor.bind(pair);
  const setup = pair.guest.bind(pair);

  it('moves a running guest with its disk: the same run continues on the destination, every record there', async () => {
    const src = driver('h1');
    const dst = driver('h2');
    const { spec, ctx } = setup('lm');
    await src.start(spec, ctx);
    const before = await waitFor('the guest writing records', src, spec.id, (s) => s.disk.records >= 20);
    const inc = await dst.migrateIn(spec, ctx, '127.0.0.1');
    assert.match(inc.targets.diskUri, /^nbd:\/\/127\.0\.0\.1:\d+\/vnsnap-mig$/);
    assert.match(inc.targets.memoryUri, /^tcp:127\.0\.0\.1:\d+$/);
    const seen: MigrationProgress[] = [];
    const out = await src.migrateOut(spec.id, inc.targets, (p) => seen.push(p));
    const paused = await out.untilPaused();
    assert.equal(src.status(spec.id), 'paused');
    assert.ok(paused.diskBytes >= 16 * 1024 * 1024, `disk bytes ${paused.diskBytes}`);
    assert.ok(seen.some((p) => p.phase === 'disk' && p.done), 'the disk phase ended');
    const fin = await out.finish();
    assert.ok(fin.memoryBytes > 0);
    const resumedUs = await inc.resume();
    assert.ok(resumedUs >= paused.pausedUnixUs, 'resumed after the pause');
    await src.stop(spec.id, { discardDisk: true });
    assert.equal(dst.status(spec.id), 'running');
    const after = await waitFor('the guest going on at the destination', dst, spec.id, (s) => s.disk.records > before.disk.records + 20 && s.disk.checks > before.disk.checks);
    assert.equal(after.nonce, before.nonce, 'the same guest run');
    assert.equal(after.totals.errors, 0, `${after.disk.first_error} ${after.mem.first_error}`);
    console.log(`      downtime ${((resumedUs - paused.pausedUnixUs) / 1000).toFixed(1)} ms, disk ${paused.diskBytes} B, memory ${fin.memoryBytes} B`);
    await dst.stop(spec.id, { discardDisk: true });
  });

  it('the destination QEMU dies during the disk mirror: the source runs on untouched', async () => {
    const src = driver('h1');
    const dst = driver('h2');
    const { spec, ctx } = setup('lf');
    await src.start(spec, ctx);
    const before = await waitFor('the guest writing records', src, spec.id, (s) => s.disk.records >= 10);
    const inc = await dst.migrateIn(spec, ctx, '127.0.0.1');
    const out = await src.migrateOut(spec.id, inc.targets, () => undefined);
    const pid = dst.inspect(spec.id)?.pid as number;
    process.kill(pid, 'SIGKILL');
    await assert.rejects(out.untilPaused(), (e: Error) => (e as { code?: string }).code === 'ERR_DRIVER');
    await out.cancel();
    await dst.stop(spec.id, { discardDisk: true });
    assert.equal(src.status(spec.id), 'running');
    const after = await waitFor('the source guest going on', src, spec.id, (s) => s.disk.records > before.disk.records + 10);
    assert.equal(after.nonce, before.nonce);
    assert.equal(after.totals.errors, 0, after.disk.first_error);
    await src.stop(spec.id, { discardDisk: true });
  });
});
