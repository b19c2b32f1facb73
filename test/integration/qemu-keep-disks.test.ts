/**
 * Kept disks with a real QEMU guest (the test guest of docs/guest.md under TCG): the guest writes
 * numbered records to its raw disk; the driver stops it (QMP quit) keeping the disk directory,
 * boots it again from the kept disk, and the guest finds its records there (its writer continues
 * after the last record on the disk: `disk.start_record`); a stop with discardDisk removes the
 * directory. The disk chain lives under the driver's disksDir, never in the instance directory.
 * Everything is under /tmp/vnqm-test-<pid>-keep (swept by qemu-driver.test.ts's sweep when a
 * run crashed) and removed in after(), also when a test fails.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import type { StopReport, VmStartSpec } from '../../agent/drivers/driver';
import { silentLogger } from '../../proto/core/log';
import { buildGuest, channelStatus, ensureQemu, guestImageRoots, guestSpec, kernelCmdline, type GuestImage, type GuestStatus } from '../guest/qemu-guest';
import { until } from '../support/wait';
/** The prefix qemu-driver.test.ts sweeps after a crashed run. */
const VNQM_ROOT_PREFIX = '/tmp/vnqm-test-';

describe('QEMU driver: kept disks (stop keeps, start boots from it, discard removes it)', function () {
  this.timeout(180_000);
  const root = `${VNQM_ROOT_PREFIX}${process.pid}-keep`;
  let image: GuestImage;
  let driver: QemuDriver | undefined;

  before(function () {
    if (process.getuid?.() !== 0) this.skip();
    this.timeout(25 * 60_000);
    ensureQemu();
    image = buildGuest();
    fs.rmSync(root, { recursive: true, force: true });
    fs.mkdirSync(root, { recursive: true });
  });
  after(async () => {
    await driver?.close().catch(() => undefined);
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('a record written before the stop is on the disk after the start; --discard-disks removes the directory', async () => {
    const base = path.join(root, 'base.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '16M']);
    const disksDir = path.join(root, 'state', 'disks');
    const d = new QemuDriver({ workDir: path.join(root, 'w'), disksDir, imageRoots: guestImageRoots(image, root) });
    driver = d;
    const spec: VmStartSpec = guestSpec(image, 'kd', { disk: base, append: kernelCmdline({ name: 'kd', diskRate: 50 }), memMib: 96 });
    const ctx = { portNames: ['vnqm/kd/0'], log: silentLogger() };
    const status = (): Promise<GuestStatus> => channelStatus(d.inspect(spec.id)?.channelSock as string, 8000);
    const dir = path.join(disksDir, 'vnqm_kd');

    await d.start(spec, ctx);
    const instance = d.inspect(spec.id)?.dir as string;
    assert.equal(d.inspect(spec.id)?.topFile, path.join(dir, 'disk0.qcow2'), 'the disk chain is in the disks directory');
    const written = (await until('the guest writing 20 disk records', async () => ((await status()).disk.records >= 20 ? status() : undefined), { timeoutMs: 60_000, everyMs: 200 })).disk.records;

    const kept = (await d.stop(spec.id)) as StopReport;
    assert.equal(kept.diskPath, dir);
    assert.equal(kept.killed, undefined, 'QEMU quit cleanly');
    assert.ok((kept.diskBytes ?? 0) > 0);
    assert.equal(fs.existsSync(instance), false, 'the instance directory is gone');
    assert.deepEqual(fs.readdirSync(dir).sort(), ['disk0.qcow2', 'kept.json']);

    await d.start({ ...spec, keptDisk: true }, ctx);
    const a = await until('the guest booted from its kept disk', async () => {
      const s = await status();
      return s.disk.checks > 2 ? s : undefined;
    }, { timeoutMs: 60_000, everyMs: 200 });
    assert.ok(a.disk.start_record >= written, `the guest found record ${a.disk.start_record} on its disk, ${written} were written before the stop`);
    assert.equal(a.disk.errors, 0, a.disk.first_error);

    assert.deepEqual(await d.stop(spec.id, { discardDisk: true }), { discardedPath: dir });
    assert.equal(fs.existsSync(dir), false);

    // A fresh start boots from the spec (the writer starts at record 0), and a kept start of a discarded disk is ERR_NOT_FOUND naming it.
    await assert.rejects(d.start({ ...spec, keptDisk: true }, ctx), (e: Error) => e.message.includes(dir) && (e as { code?: string }).code === 'ERR_NOT_FOUND');
    await d.start(spec, ctx);
    const fresh = await until('the fresh guest', async () => {
      const s = await status();
      return s.disk.checks > 0 ? s : undefined;
    }, { timeoutMs: 60_000, everyMs: 200 });
    assert.equal(fresh.disk.start_record, 0);
    await d.stop(spec.id, { discardDisk: true });
  });
});
