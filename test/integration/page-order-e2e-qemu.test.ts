/**
 * Memory images in address order with a real QEMU 7.2 (agent/drivers/qemu/page-order.ts): a test
 * guest under its memory writer (16 MiB rewritten at 4 MiB/s, test/support/guest-pair.ts).
 *   - Two background snapshots taken over QMP into files (QEMU's own order, RAM dumped at each
 *     cut) and rewritten: the rewriter held pages (the guest's write faults) and its output is in
 *     pure scan order; in a content-addressed store the second rewritten image adds fewer bytes
 *     than the second raw one, and no more than the pages that really changed between the two
 *     dumps can cost (each changed run of pages: its bytes plus one largest chunk on each side).
 *   - A background snapshot through the driver (the rewriter on the save path) into a CasStore,
 *     its RAM dumped at the cut: the stored image is in scan order, and it restores into a
 *     second driver with the RAM equal to the dump, page for page.
 * On demand (VNSNAP_E2E_QEMU=1, root): about three minutes. Everything is named vnqm.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { VmImage, VmStartSpec } from '../../agent/drivers/driver';
import { PageOrder } from '../../agent/drivers/qemu/page-order';
import type { QemuDriver } from '../../agent/drivers/qemu/driver';
import { silentLogger } from '../../proto/core/log';
import { CasStore } from '../../proto/store/cas-store';
import { LocalObjects } from '../../proto/store/local-objects';
import { MemoryObjects } from '../support/memory-objects';
import { startGuestPairRig, type GuestPairRig } from '../support/guest-pair-rig';
import { diffFiles, describeRuns } from '../support/ram-diff';
import { VNQM_ROOT_PREFIX } from '../support/vnqm-sweep';
import { until } from '../support/wait';

const ENABLED = process.env.VNSNAP_E2E_QEMU === '1';
const MAX_CHUNK = 256 * 1024; // the store's chunker (docs/storage.md "Chunking")
const MiB = 1024 * 1024;

function rewriteFile(file: string): { out: Buffer; po: PageOrder } {
  const po = new PageOrder();
  const input = fs.readFileSync(file);
  const parts: Buffer[] = [];
  for (let i = 0; i < input.length; i += 64 * 1024) parts.push(...po.push(input.subarray(i, i + 64 * 1024)));
  parts.push(...po.end());
  return { out: Buffer.concat(parts), po };
}

/** Stats of reading `b` again: all zero held/late/forced means it is in pure scan order. */
function orderOf(b: Buffer): string {
  const po = new PageOrder();
  po.push(b);
  po.end();
  const s = po.stats;
  return `held ${s.held} late ${s.late} forced ${s.forced} fallback ${s.fallback ?? 'none'}`;
}

/** Bytes the second of two artefacts adds to a fresh content-addressed store. */
async function addedBySecond(a: Buffer, b: Buffer): Promise<number> {
  const store = new CasStore(new MemoryObjects());
  await store.put('a.mem', a);
  return (await store.put('b.mem', b)).storedBytes ?? -1;
}

describe('memory images in address order with QEMU background snapshots', function () {
  const root = `${VNQM_ROOT_PREFIX}${process.pid}`;
  let rig: GuestPairRig | undefined;
  let driver: QemuDriver;

  before(async function () {
    if (!ENABLED || process.getuid?.() !== 0) this.skip();
    this.timeout(10 * 60_000);
    rig = await startGuestPairRig(root, 79, 256);
    driver = rig.driver;
  });

  after(async function () {
    this.timeout(60_000);
    await rig?.close();
  });

  /** A background snapshot of vnqm/a over QMP into `file`, its RAM dumped into `dump` while paused. */
  async function rawSnapshot(file: string, dump: string): Promise<void> {
    const x = <T>(cmd: string, args?: Record<string, unknown>): Promise<T> => driver.execute<T>('vnqm/a', cmd, args, 60_000);
    const known = await x<{ capability: string }[]>('query-migrate-capabilities');
    await x('migrate-set-capabilities', { capabilities: known.map((c) => ({ capability: c.capability, state: c.capability === 'events' || c.capability === 'background-snapshot' })) });
    await x('migrate-set-parameters', { 'max-bandwidth': 8 * 1024 * MiB });
    await x('stop');
    await driver.pmemsave('vnqm/a', dump);
    await x('migrate', { uri: `exec:cat > ${file}` }); // QEMU resumes the VM itself
    await until('the snapshot completes', async () => {
      const st = (await x<{ status: string }>('query-migrate')).status;
      if (st === 'failed' || st === 'cancelled') throw new Error(`migration ${st}`);
      return st === 'completed' ? true : undefined;
    }, { timeoutMs: 120_000, everyMs: 200 });
  }

  it('rewrites real background streams into scan order; the second then adds only about what changed', async function () {
    this.timeout(5 * 60_000);
    const f = (n: string): string => path.join(root, n);
    await rawSnapshot(f('raw1.img'), f('dump1.ram'));
    await rawSnapshot(f('raw2.img'), f('dump2.ram'));
    const r1 = rewriteFile(f('raw1.img'));
    const r2 = rewriteFile(f('raw2.img'));
    for (const r of [r1, r2]) {
      assert.equal(r.po.stats.fallback, undefined);
      assert.equal(r.po.stats.forced, 0);
      assert.ok(r.po.stats.held > 0, 'the guest wrote no page ahead of the scan: nothing was tested');
      assert.equal(orderOf(r.out), 'held 0 late 0 forced 0 fallback none');
    }
    const raw1 = fs.readFileSync(f('raw1.img'));
    const raw2 = fs.readFileSync(f('raw2.img'));
    assert.notEqual(orderOf(raw2), 'held 0 late 0 forced 0 fallback none');
    const addedRaw = await addedBySecond(raw1, raw2);
    const addedOrdered = await addedBySecond(r1.out, r2.out);
    const d = diffFiles(f('dump1.ram'), f('dump2.ram'));
    const bound = d.pages * 4096 + d.runs.length * 2 * MAX_CHUNK;
    console.log(
      `      image ${(r2.out.length / MiB).toFixed(1)} MiB, ${r2.po.stats.held} pages out of order; second image adds ${(addedRaw / MiB).toFixed(1)} MiB in QEMU's order, ` +
        `${(addedOrdered / MiB).toFixed(1)} MiB in address order; ${d.pages} pages changed in ${d.runs.length} runs (bound ${(bound / MiB).toFixed(1)} MiB); rewriter ${(raw2.length / MiB / (r2.po.stats.cpuMs / 1000)).toFixed(0)} MiB/s`,
    );
    assert.ok(addedOrdered < addedRaw, `address order added ${addedOrdered} bytes, QEMU's order ${addedRaw}`);
    assert.ok(addedOrdered <= bound, `address order added ${addedOrdered} bytes for ${d.pages} changed pages in ${d.runs.length} runs (${describeRuns(d)})`);
  });

  it('a background snapshot through the driver is stored in scan order and restores page for page', async function () {
    this.timeout(5 * 60_000);
    const store = new CasStore(new LocalObjects(path.join(root, 'store')));
    const dump = path.join(root, 'cut.ram');
    const after = path.join(root, 'restored.ram');
    const job = await driver.snapshot('vnqm/a', { snapshotId: 's1', epoch: 1, mode: 'background', store, prefix: 'snapshots/s1/' });
    await job.ready;
    const { sw, restorer, specs } = rig as GuestPairRig;
    await sw.cutPorts(['vnqm/a/0'], 1, (pass) =>
      job.cut(async () => {
        await pass();
        await driver.pmemsave('vnqm/a', dump);
      }),
    );
    const img: VmImage = await job.durable();
    await sw.channelState('vnqm', 1, 10_000).catch(() => undefined);
    const mem = await store.get(img.memory.path);
    assert.equal(orderOf(Buffer.from(mem)), 'held 0 late 0 forced 0 fallback none');
    await restorer.restore(specs.get('a') as VmStartSpec, img, store, { portNames: ['vnqm/a/0r1'], log: silentLogger() });
    try {
      await restorer.pmemsave('vnqm/a', after);
      const d = diffFiles(dump, after);
      assert.equal(d.pages, 0, `${d.pages} page(s) differ: ${describeRuns(d)}`);
    } finally {
      await restorer.stop('vnqm/a').catch(() => undefined);
    }
  });
});
