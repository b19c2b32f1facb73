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
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import type { MigrationProgress, VmStartSpec } from '../../agent/drivers/driver';
import { silentLogger } from '../../proto/core/log';
import { buildGuest, channelStatus, ensureQemu, guestImageRoots, guestSpec, kernelCmdline, type GuestImage, type GuestStatus } from '../guest/qemu-guest';
import { until } from '../support/wait';

describe('QEMU driver: live migration with the local disk (NBD mirror + memory pre-copy)', function () {
  this.timeout(240_000);
  const root = `/tmp/vnqm-test-${process.pid}-mig`;
  let image: GuestImage;
  let src: QemuDriver | undefined;
  let dst: QemuDriver | undefined;

  before(function () {
    if (process.getuid?.() !== 0) this.skip();
    this.timeout(25 * 60_000);
    ensureQemu();
    image = buildGuest();
    fs.rmSync(root, { recursive: true, force: true });
    fs.mkdirSync(root, { recursive: true });
  });
  after(async () => {
    await src?.close().catch(() => undefined);
    await dst?.close().catch(() => undefined);
    fs.rmSync(root, { recursive: true, force: true });
  });

  const driver = (host: string) => new QemuDriver({ workDir: path.join(root, host, 'w'), disksDir: path.join(root, host, 'disks'), imageRoots: guestImageRoots(image, root) });
  const statusOf = (d: QemuDriver, id: string): Promise<GuestStatus> => channelStatus(d.inspect(id)?.channelSock as string, 8000);
  const waitFor = (what: string, d: QemuDriver, id: string, ok: (s: GuestStatus) => boolean): Promise<GuestStatus> =>
    until(what, async () => {
      const s = await statusOf(d, id);
      return ok(s) ? s : undefined;
    }, { timeoutMs: 90_000, everyMs: 250 }) as Promise<GuestStatus>;

  function setup(name: string): { spec: VmStartSpec; ctx: { portNames: string[]; log: ReturnType<typeof silentLogger> } } {
    const base = path.join(root, `${name}-base.qcow2`);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '16M']);
    const spec = guestSpec(image, name, { disk: base, append: kernelCmdline({ name, diskRate: 50, memMiB: 8, memRateMiB: 2 }), memMib: 96 });
    return { spec, ctx: { portNames: [`mig/${name}/0`], log: silentLogger() } };
  }

  it('moves a running guest with its disk: the same run continues on the destination, every record there', async () => {
    src = driver('h1');
    dst = driver('h2');
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
    src ??= driver('h1');
    dst ??= driver('h2');
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
