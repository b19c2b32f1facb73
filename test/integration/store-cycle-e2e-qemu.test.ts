/**
 * Ten snapshots into the content-addressed store, every other one deleted, garbage collected,
 * and every survivor restored exactly (issue 14, "Tests"): two test guests stream to each other
 * through a Switch under memory and disk load; guest `a` is snapshotted ten times (background and
 * precopy alternating) into a CasStore, its RAM dumped at each cut (pmemsave while paused).
 * Snapshots 2, 4, ..., 10 are deleted, a GC with no grace period runs, and then:
 *   - no chunk is left that no index names, and every chunk an index names is there and whole
 *     (verifyAll over every artefact);
 *   - every surviving snapshot restores into a second driver and its RAM equals the dump taken
 *     at its cut, page for page (test/support/ram-diff.ts).
 * On demand (VNSNAP_E2E_QEMU=1, root): about five minutes. Everything is named vnqm (the QEMU
 * driver test's sweep removes leftovers of a crashed run).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CutReport, VmImage, VmStartSpec } from '../../agent/drivers/driver';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import { silentLogger } from '../../proto/core/log';
import { chunkKey, CHUNK_PREFIX } from '../../proto/store/cas-index';
import { CasStore } from '../../proto/store/cas-store';
import { LocalObjects } from '../../proto/store/local-objects';
import { Switch } from '../../switch/switch';
import { buildGuest, ensureQemu, guestImageRoots, type GuestImage } from '../guest/qemu-guest';
import { diffFiles, describeRuns } from '../support/ram-diff';
import { startGuestPair } from '../support/guest-pair';
import { sweepVnqm, VNQM_ROOT_PREFIX } from '../support/vnqm-sweep';

const ENABLED = process.env.VNSNAP_E2E_QEMU === '1';
const N = 10;

describe('store cycle with QEMU guests: ten snapshots, delete every other, GC, restore the survivors exactly', function () {
  const root = `${VNQM_ROOT_PREFIX}${process.pid}`;
  let image: GuestImage;
  let driver: QemuDriver;
  let restorer: QemuDriver;
  let sw: Switch;
  let objects: LocalObjects;
  let store: CasStore;
  const specs = new Map<string, VmStartSpec>();
  const images = new Map<number, VmImage>();

  before(async function () {
    if (!ENABLED || process.getuid?.() !== 0) this.skip();
    this.timeout(10 * 60_000);
    ensureQemu();
    image = buildGuest();
    sweepVnqm();
    fs.mkdirSync(root, { recursive: true });
    objects = new LocalObjects(path.join(root, 'store'));
    store = new CasStore(objects);
    driver = new QemuDriver({ workDir: path.join(root, 'w'), imageRoots: guestImageRoots(image, root) });
    restorer = new QemuDriver({ workDir: path.join(root, 'r'), imageRoots: guestImageRoots(image, root) });
    sw = new Switch({ id: 'vnqm' });
    sw.configureVne({ name: 'vnqm', vni: 78 });
    sw.start();
    for (const [name, spec] of await startGuestPair({ driver, sw, image, root, vne: 'vnqm', net: 78, rateKiB: 512 })) specs.set(name, spec);
  });

  after(async function () {
    this.timeout(60_000);
    await restorer?.close().catch(() => undefined);
    await driver?.close().catch(() => undefined);
    sw?.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  const dump = (k: number): string => path.join(root, `cut-${k}.ram`);

  it(`takes ${N} snapshots of a loaded guest, dumping its RAM at each cut`, async function () {
    this.timeout(10 * 60_000);
    for (let k = 1; k <= N; k++) {
      const mode = k % 2 ? 'background' : 'precopy';
      const job = await driver.snapshot('vnqm/a', { snapshotId: `s${k}`, epoch: k, mode, store, prefix: `snapshots/s${k}/` });
      await job.ready;
      await sw.cutPorts(['vnqm/a/0'], k, (pass) =>
        job.cut(async () => {
          await pass();
          if (k % 2) await driver.pmemsave('vnqm/a', dump(k)); // only the survivors' dumps are needed
        }),
      ) as CutReport;
      images.set(k, await job.durable());
      await sw.channelState('vnqm', k, 10_000).catch(() => undefined);
    }
    const stats = await store.stats();
    assert.ok(stats.storedBytes < stats.logicalBytes, `the store holds ${stats.storedBytes} bytes for ${stats.logicalBytes} logical: nothing was shared`);
  });

  it('deletes every other snapshot and collects garbage: no unreferenced chunk stays, no referenced one goes', async function () {
    this.timeout(5 * 60_000);
    for (let k = 2; k <= N; k += 2) assert.ok((await store.deleteByPrefix(`snapshots/s${k}/`)) > 0, `snapshot s${k} had artefacts`);
    const before = (await objects.list(CHUNK_PREFIX)).length;
    const gc = await store.gc({ graceMs: 0 });
    assert.ok(gc.chunksDeleted > 0, 'deleting five snapshots freed no chunk');
    assert.equal((await objects.list(CHUNK_PREFIX)).length, before - gc.chunksDeleted);
    // Referenced = named by a surviving index; every chunk left must be one of them, and all of them must be left.
    const named = new Set<string>();
    for (const p of await store.list('')) for (const c of (await store.index(p))?.chunks ?? []) named.add(chunkKey(c.sha256));
    const left = new Set(await objects.list(CHUNK_PREFIX));
    assert.deepEqual([...left].filter((k) => !named.has(k)), [], 'chunks no index names survived the GC');
    assert.deepEqual([...named].filter((k) => !left.has(k)), [], 'chunks a surviving index names were deleted');
    const checked = await store.verifyAll('snapshots/');
    assert.deepEqual(checked.filter((r) => !r.ok), []);
    assert.deepEqual([...new Set(checked.map((r) => r.path.split('/')[1]))].sort(), ['s1', 's3', 's5', 's7', 's9']);
  });

  for (let k = 1; k <= N; k += 2) {
    it(`restores surviving snapshot s${k}: its RAM equals the dump at the cut, page for page`, async function () {
      this.timeout(3 * 60_000);
      const img = images.get(k) as VmImage;
      await restorer.restore(specs.get('a') as VmStartSpec, img, store, { portNames: [`vnqm/a/0r${k}`], log: silentLogger() });
      const after = path.join(root, `restored-${k}.ram`);
      try {
        await restorer.pmemsave('vnqm/a', after);
        const d = diffFiles(dump(k), after);
        assert.equal(d.pages, 0, `s${k}: ${d.pages} page(s) differ: ${describeRuns(d)}`);
      } finally {
        await restorer.stop('vnqm/a').catch(() => undefined);
        fs.rmSync(after, { force: true });
      }
    });
  }
});
