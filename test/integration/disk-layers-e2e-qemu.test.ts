/**
 * Incremental disks with a real QEMU guest (the test guest of docs/guest.md under TCG, writing
 * numbered records to its raw disk) and the content-addressed store: three snapshots with the
 * guest writing between them; the first stores the base and what was written since the boot, the
 * second and third one small layer each over links of the layers below. The third is restored by
 * another driver (its own disk directory, image roots without the base) and its disk compared with the source VM's frozen
 * image of that cut (qemu-img compare); snapshots 1 and 2 are deleted and the third restored
 * again, resumed, and the guest finds its disk agreeing with its memory; a snapshot of the
 * restored VM is again one layer over links of the restored snapshot's layers.
 * On demand with VNSNAP_E2E_QEMU=1 (`npm run test:e2e-qemu`), as root. Everything is under
 * /tmp/vnqm-test-<pid>-layers (swept by qemu-driver.test.ts's sweep when a run crashed) and
 * removed in after(), also when a test fails.
 */
import { strict as assert } from 'node:assert';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { VmImage, VmStartSpec } from '../../agent/drivers/driver';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import { silentLogger } from '../../proto/core/log';
import type { SnapshotStore } from '../../proto/store/snapshot-store';
import { openStore } from '../../proto/store/store-config';
import { buildGuest, channelStatus, ensureQemu, guestImageRoots, guestSpec, kernelCmdline, type GuestImage, type GuestStatus } from '../guest/qemu-guest';
import { storedLayerAttrs } from '../support/layer-attrs';
import { until } from '../support/wait';

const ENABLED = process.env.VNSNAP_E2E_QEMU === '1';
const VNQM_ROOT_PREFIX = '/tmp/vnqm-test-';
const DISK_MIB = 32;

describe('QEMU driver: incremental disks (layers over links, restored byte for byte)', function () {
  this.timeout(300_000);
  const root = `${VNQM_ROOT_PREFIX}${process.pid}-layers`;
  let image: GuestImage;
  let store: SnapshotStore;
  const drivers: QemuDriver[] = [];
  const log = silentLogger();

  before(async function () {
    if (!ENABLED || process.getuid?.() !== 0) this.skip();
    this.timeout(25 * 60_000);
    ensureQemu();
    image = buildGuest();
    fs.rmSync(root, { recursive: true, force: true });
    fs.mkdirSync(root, { recursive: true });
    store = await openStore({ kind: 'local', dir: path.join(root, 'store') });
  });
  after(async () => {
    for (const d of drivers) await d.close().catch(() => undefined);
    fs.rmSync(root, { recursive: true, force: true });
  });

  /** A driver; `withBase` false: its image roots lack the base image (a host that never had it). */
  function driver(name: string, withBase = true): QemuDriver {
    const d = new QemuDriver({ workDir: path.join(root, name), disksDir: path.join(root, `${name}-disks`), imageRoots: withBase ? guestImageRoots(image, root) : guestImageRoots(image) });
    drivers.push(d);
    return d;
  }

  async function snapshot(d: QemuDriver, id: string, k: number, vmId: string): Promise<VmImage> {
    const job = await d.snapshot(vmId, { snapshotId: id, epoch: k, mode: 'background', store, prefix: `snapshots/${id}/` });
    await job.ready;
    await job.cut(async () => undefined);
    return job.durable();
  }

  /** The frozen image of the last cut: the backing file of the VM's current top. */
  function frozenOf(d: QemuDriver, vmId: string): string {
    const top = d.inspect(vmId)?.topFile as string;
    const info = JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', top], { encoding: 'utf8' })) as { 'full-backing-filename': string };
    return info['full-backing-filename'];
  }

  const sameDisk = (a: string, b: string): boolean => spawnSync('qemu-img', ['compare', '-U', '-q', a, b]).status === 0;

  it('three snapshots store the base once and one small layer each; the third restores exactly, also after the first two are deleted', async () => {
    const base = path.join(root, 'base.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, `${DISK_MIB}M`]);
    const src = driver('w');
    const spec: VmStartSpec = guestSpec(image, 'dl', { disk: base, append: kernelCmdline({ name: 'dl', diskRate: 50 }), memMib: 96 });
    const vmId = spec.id;
    const status = (d: QemuDriver): Promise<GuestStatus> => channelStatus(d.inspect(vmId)?.channelSock as string, 8000);
    const records = async (d: QemuDriver, atLeast: number): Promise<number> => (await until(`the guest writing ${atLeast} disk records`, async () => {
      const s = await status(d);
      return s.disk.records >= atLeast ? s.disk.records : undefined;
    }, { timeoutMs: 90_000, everyMs: 200 }));
    await src.start(spec, { portNames: ['vnqm/dl/0'], log });

    let written = await records(src, 20);
    const images: VmImage[] = [];
    for (let k = 1; k <= 3; k++) {
      if (k > 1) written = await records(src, written + 30);
      images.push(await snapshot(src, `dl-${k}`, k, vmId));
    }
    const frozen3 = frozenOf(src, vmId);
    const [s1, s2, s3] = images as [VmImage, VmImage, VmImage];
    assert.deepEqual(s1.disks.map((d) => d.attributes), await Promise.all(s1.disks.map((d, n) => storedLayerAttrs(store, d.path, n))), 'the first: the base and what was written since the boot, each with its chunk list');
    assert.deepEqual(s1.disks.map((d) => d.attributes?.layer), ['0', '1']);
    for (const [i, s] of [s2, s3].entries()) {
      const prev = (i === 0 ? s1 : s2) as VmImage;
      assert.deepEqual(s.disks.map((d) => d.path), Array.from({ length: i + 3 }, (_, n) => `snapshots/dl-${i + 2}/dl.disk.${n}.qcow2`));
      const lower = s.disks.slice(0, -1);
      assert.deepEqual(lower.map((d) => [d.sha256, d.storedBytes]), prev.disks.map((d) => [d.sha256, 0]), 'the lower layers are links of the previous snapshot\'s');
      const added = s.disks[s.disks.length - 1]?.storedBytes ?? Infinity;
      assert.ok(added < (DISK_MIB * 1024 * 1024) / 8, `snapshot ${i + 2}'s new layer added ${added} bytes to the store, far below the ${DISK_MIB} MiB disk`);
    }

    // Restore the third on a fresh disk directory, by a driver whose image roots lack the base
    // (the base is layer 0 from the store): the disk is the source's at the third cut.
    const dst = driver('r', false);
    const restoreSpec = { ...spec };
    await dst.restore(restoreSpec, { memory: s3.memory, disks: s3.disks }, store, { portNames: ['vnqm/dl/r'], log });
    assert.ok(sameDisk(dst.inspect(vmId)?.topFile as string, frozen3), 'the restored disk equals the frozen disk of the third cut');
    await dst.stop(vmId, { discardDisk: true });

    // Without snapshots 1 and 2 (their layers are links in 3): restored whole again, and the guest agrees.
    await store.deleteByPrefix('snapshots/dl-1/');
    await store.deleteByPrefix('snapshots/dl-2/');
    await dst.restore(restoreSpec, { memory: s3.memory, disks: s3.disks }, store, { portNames: ['vnqm/dl/r'], log });
    assert.ok(sameDisk(dst.inspect(vmId)?.topFile as string, frozen3));
    await src.stop(vmId, { discardDisk: true });
    await dst.resume(vmId);
    const at = (await status(dst)).disk.check_ok;
    const after = await until('the restored guest checking its disk', async () => {
      const s = await status(dst);
      return s.disk.check_ok > at + 2 ? s : undefined;
    }, { timeoutMs: 60_000, everyMs: 200 });
    assert.equal(after.disk.errors, 0, `the restored guest's disk agrees with its memory: ${after.disk.first_error}`);

    // The restored VM's next snapshot: one new layer over links of the restored snapshot's layers.
    await records(dst, after.disk.records + 20);
    const s4 = await snapshot(dst, 'dl-4', 4, vmId);
    assert.equal(s4.disks.length, 5);
    assert.deepEqual(s4.disks.slice(0, 4).map((d) => [d.sha256, d.storedBytes]), s3.disks.map((d) => [d.sha256, 0]));
  });
});
