/**
 * The QEMU driver with tracked memory (qemu extra memory=tracked; docs/incremental-memory.md) on
 * real test guests under TCG: the HypervisorDriver compliance suite (every snapshot restored to
 * the exact state of its pause instant), then what is particular to it: a second snapshot saves
 * only the blocks the guest wrote (counted at the store's door), a restore from an incremental
 * image whose base snapshot was deleted is exact, a restored VM's next snapshot is incremental
 * over the restored image, and a store that keeps whole files is refused with a clear message.
 *
 * Everything is named `vnqm` (work directory /tmp/vnqm-test-<pid>-tracked) and removed in after()
 * hooks, also when a test fails. Needs root, QEMU and Linux 6.7 or later (asynchronous
 * userfaultfd write protection); skipped before that.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import type { SnapshotModeName, VmImage, VmStartSpec } from '../../agent/drivers/driver';
import { isVnsnapError } from '../../proto/core/errors';
import { createLogger, silentLogger } from '../../proto/core/log';
import type { CasStore } from '../../proto/store/cas-store';
import { LocalDirStore } from '../../proto/store/local-dir';
import type { SnapshotStore } from '../../proto/store/snapshot-store';
import { guestImageRoots, guestSpec, kernelCmdline, type GuestImage } from '../guest/qemu-guest';
import { driverCompliance } from '../support/compliance/driver';
import { qemuUnderTest } from '../support/qemu-compliance';
import { sleep } from '../support/wait';
import { VNQM_ROOT_PREFIX } from '../support/vnqm-sweep';
import { casStore, countingStore, trackable, trackedGuest } from '../support/tracked-memory';

const RAM_MIB = 128;

describe('QEMU driver with tracked memory', function () {
  let image: GuestImage | undefined;
  const root = `${VNQM_ROOT_PREFIX}${process.pid}-tracked`;

  before(function () {
    image = trackedGuest(this, root);
  });
  after(() => {
    fs.rmSync(root, { recursive: true, force: true });
  });

  let n = 0;
  driverCompliance('qemu (TCG guests, tracked memory, content-addressed store)', async () => {
    const dir = path.join(root, `c${++n}`);
    const store = await casStore(path.join(dir, 'store'));
    const img = image as GuestImage;
    return qemuUnderTest(dir, img, store, (name, disk) => guestSpec(img, name, { disk, append: kernelCmdline({ name, diskRate: 50, memMiB: 16, memRateMiB: 4 }), memMib: RAM_MIB, memory: 'tracked' }));
  });

  describe('incremental images', function () {
    this.timeout(180_000);
    const dir = path.join(root, 'inc');
    let driver: QemuDriver;
    let cas: CasStore;
    let counted: { store: SnapshotStore; put: Map<string, number> };
    let spec: VmStartSpec;
    const log = process.env.VNQM_LOG ? createLogger('vnqm-test', { level: 'debug' }) : silentLogger();
    const ctx = { portNames: ['vnqm/t/0'], log };
    let serial = 0;

    before(async function () {
      if (!trackable()) this.skip();
      fs.mkdirSync(dir, { recursive: true });
      cas = await casStore(path.join(dir, 'store'));
      counted = countingStore(cas);
      driver = new QemuDriver({ workDir: path.join(dir, 'w'), imageRoots: guestImageRoots(image as GuestImage, dir) });
      // A guest rewriting 16 MiB of its memory at 4 MiB/s: what a snapshot a second apart has to save.
      spec = guestSpec(image as GuestImage, 't', { append: kernelCmdline({ name: 't', disk: 'none', memMiB: 16, memRateMiB: 4 }), memMib: RAM_MIB, memory: 'tracked' });
      await driver.start(spec, ctx);
      await sleep(2500);
    });
    after(async () => {
      await driver?.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    /** One snapshot of mode `mode`; the fingerprint of the VM at its pause instant. */
    const snap = async (mode: SnapshotModeName): Promise<{ img: VmImage; fp: string; put: number; prefix: string }> => {
      const prefix = `snapshots/inc-${++serial}/`;
      const job = await driver.snapshot(spec.id, { snapshotId: `i${serial}`, epoch: serial, mode, store: counted.store, prefix });
      await job.ready;
      let fp = '';
      await job.cut(async () => {
        fp = await driver.fingerprint(spec.id);
      });
      const img = await job.durable();
      return { img, fp, put: counted.put.get(img.memory.path) ?? -1, prefix };
    };

    it('saves every block first, then only what the guest wrote; each image restores exactly, its base snapshot deleted', async () => {
      const ram = RAM_MIB * 1024 * 1024;
      const first = await snap('background');
      assert.ok(first.put >= ram, `the first snapshot puts every block (${first.put} of ${ram} bytes)`);
      assert.equal(first.img.memory.attributes?.memory, 'tracked');
      await sleep(1000);
      const second = await snap('precopy');
      // 4 MiB/s for about a second, widened to 64 KiB blocks, and the rounds' re-reads: far below the RAM.
      assert.ok(second.put > 0 && second.put < ram / 8, `the second snapshot puts only written blocks (${second.put} bytes of ${ram})`);
      assert.ok((second.img.memory.storedBytes ?? ram) < ram / 8, `and stores only those (${second.img.memory.storedBytes} bytes)`);
      assert.equal(await cas.verify(second.img.memory), null);
      // The base's snapshot goes: the incremental image stands alone.
      await cas.deleteByPrefix(first.prefix);
      await driver.stop(spec.id);
      await driver.restore(spec, { memory: second.img.memory, disks: second.img.disks }, cas, ctx);
      assert.equal(driver.status(spec.id), 'paused');
      assert.equal(await driver.fingerprint(spec.id), second.fp, 'restored state = state at the pause instant');
      await driver.resume(spec.id);
      await sleep(1000);
      // The restored image is the next capture's base.
      const third = await snap('background');
      assert.ok(third.put > 0 && third.put < ram / 8, `a restored VM's next snapshot is incremental (${third.put} bytes)`);
      await cas.deleteByPrefix(second.prefix);
      await driver.stop(spec.id);
      await driver.restore(spec, { memory: third.img.memory, disks: third.img.disks }, cas, ctx);
      assert.equal(await driver.fingerprint(spec.id), third.fp, 'restored state = state at the pause instant');
      await driver.resume(spec.id);
    });

    it('refuses a store that keeps whole files, saying what to do, and leaves the VM running', async () => {
      const files = new LocalDirStore(path.join(dir, 'files'));
      await files.init();
      await assert.rejects(
        driver.snapshot(spec.id, { snapshotId: 'f', epoch: 99, mode: 'background', store: files, prefix: 'snapshots/f/' }),
        (e: unknown) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && /content-addressed store/.test((e as Error).message) && /memory=migration/.test((e as Error).message),
      );
      assert.equal(driver.status(spec.id), 'running');
      assert.deepEqual(await files.list(''), []);
    });
  });
});
