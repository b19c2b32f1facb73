/**
 * Runs INSIDE the test bed's dom0 (test/integration/xen-e2e.test.ts starts it): the Xen
 * driver against the real toolstack, without the agent: start a PV guest with a file-backed
 * disk that vnguest writes numbered records to, a stop-and-copy snapshot (`xl save -c`), a live
 * capture (`xl migrate` to our receiver), each image checked with the stream reader, then
 * destroy, restore the live image (memory and disk) paused, unpause, and check the guest runs on
 * (its vnguest status lines continue with the same nonce) and that its disk checks pass: before
 * every write vnguest checks that the disk's last record is the one its memory counts, so memory
 * and disk must come from the same instant. Writes /vnxen/smoke.json.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LocalDirStore } from '../../proto/store/local-dir';
import { XenDriver } from '../../agent/drivers/xen/driver';
import { scanXenImage } from '../../agent/drivers/xen/stream';
import { silentLogger } from '../../proto/core/log';
import { until } from '../support/wait';
import { guestConfig, latestStatus, statuses, XEN_TEST_IMAGE_ROOTS } from './guest-config';

const out: Record<string, unknown> = { steps: [] as string[] };
const step = (s: string): void => {
  (out.steps as string[]).push(`${new Date().toISOString()} ${s}`);
  console.log(`smoke: ${s}`);
};

/** The guest's file-backed disk (16 MiB, sparse): copied at each cut, put back by the restore. */
const DISK = '/var/lib/vnsnap/disks/smoke-vm1.img';

async function main(): Promise<void> {
  fs.mkdirSync(path.dirname(DISK), { recursive: true });
  fs.writeFileSync(DISK, '');
  fs.truncateSync(DISK, 16 << 20);
  const store = new LocalDirStore('/var/lib/vnsnap/store');
  await store.init();
  const driver = new XenDriver({ workDir: '/var/lib/vnsnap/xen', imageRoots: XEN_TEST_IMAGE_ROOTS, log: step });
  const spec = {
    id: 'smoke/vm1',
    vne: 'smoke',
    name: 'vm1',
    macs: ['00:16:3e:00:00:01'],
    driver: { kind: 'xen' as const, xen: { config: guestConfig({ name: 'vm1', ip: '10.9.0.1/24', memMib: 128, mem: 16, memrate: 8, disk: { file: DISK, rate: 20 } }) } },
  };
  const ctx = { portNames: ['smoke/vm1/0'], log: silentLogger() };
  try {
    let t = Date.now();
    await driver.start(spec, ctx);
    out.createMs = Date.now() - t;
    const dom = driver.inspect(spec.id);
    step(`created ${JSON.stringify(dom)} in ${out.createMs} ms`);
    const log = `/var/log/xen/console/guest-${dom?.domName}.log`;
    const s0 = await until('a VNSTAT line with 20 disk records written', async () => {
      const st = await latestStatus(log);
      return st && st.disk.records >= 20 ? st : null;
    }, { timeoutMs: 90_000, everyMs: 500 });
    if (s0.disk.errors !== 0) throw new Error(`disk errors before any snapshot: ${s0.disk.first_error}`);
    step(`guest status: nonce ${s0.nonce} uptime ${s0.uptime_ms}, disk ${s0.disk.dev} ${s0.disk.records} records`);
    out.nonce = s0.nonce;

    // stop-and-copy
    t = Date.now();
    const sj = await driver.snapshot(spec.id, { snapshotId: 's1', epoch: 1, mode: 'background', store, prefix: 'snapshots/s1/' });
    let hookStatus = '';
    const sr = await sj.cut(async () => {
      hookStatus = driver.status(spec.id);
    });
    const simg = await sj.durable();
    out.save = { pauseMs: sr.pauseMs, totalMs: Date.now() - t, hookStatus, size: simg.memory.size };
    const sst = scanXenImage(await store.get(simg.memory.path));
    step(`xl save -c: pause ${sr.pauseMs.toFixed(1)} ms, ${simg.memory.size} bytes, pages ${sst.pages}/${sst.guestPages}, iterations ${sst.iteration}`);

    // live capture
    t = Date.now();
    const progress: unknown[] = [];
    const lj = await driver.snapshot(spec.id, { snapshotId: 's2', epoch: 2, mode: 'precopy', store, prefix: 'snapshots/s2/', onProgress: (p) => progress.push(p) });
    await lj.ready;
    const readyMs = Date.now() - t;
    const lr = await lj.cut(async () => {
      hookStatus = driver.status(spec.id);
    });
    const limg = await lj.durable();
    const lst = scanXenImage(await store.get(limg.memory.path));
    out.live = { pauseMs: lr.pauseMs, readyMs, totalMs: Date.now() - t, hookStatus, size: limg.memory.size, pages: lst.pages, guestPages: lst.guestPages, iterations: lst.iteration, progress: progress.length };
    step(`live: ready ${readyMs} ms, pause ${lr.pauseMs.toFixed(1)} ms, ${limg.memory.size} bytes, pages ${lst.pages}/${lst.guestPages}, iterations ${lst.iteration}`);
    const after = await until('status after live capture', async () => {
      const s = await latestStatus(log);
      return s && s.seq > s0.seq + 1 ? s : null;
    }, { timeoutMs: 60_000, everyMs: 500 });
    step(`guest runs on after the capture: nonce ${after.nonce}`);

    // destroy + restore the live image
    await driver.stop(spec.id);
    fs.appendFileSync(log, '\n--- restore ---\n');
    t = Date.now();
    if (limg.disks.length !== 1) throw new Error('the live image has no (or more than one) disk artefact');
    await driver.restore(spec, { memory: limg.memory, disks: limg.disks }, store, ctx);
    const restoredStatus = driver.status(spec.id);
    await driver.resume(spec.id);
    out.restoreMs = Date.now() - t;
    const rs = await until('status after restore, 40 disk checks later', () => {
      const all = statuses(log, '--- restore ---');
      // Two seconds of disk writes after the restore: each was preceded by a check that the
      // disk's last record is the one the restored memory counts (memory and disk of one instant).
      const first = all[0];
      const last = all[all.length - 1];
      return Promise.resolve(first && last && last.disk.checks >= first.disk.checks + 40 ? last : null);
    }, { timeoutMs: 90_000, everyMs: 500 });
    out.restored = { statusBeforeResume: restoredStatus, nonce: rs.nonce, sameNonce: rs.nonce === s0.nonce, errors: rs.totals.errors, disk: rs.disk };
    step(`restored (${restoredStatus} before resume) in ${out.restoreMs} ms: nonce ${rs.nonce} (same: ${rs.nonce === s0.nonce}), errors ${rs.totals.errors}, disk checks ${rs.disk.checks} ok ${rs.disk.check_ok} errors ${rs.disk.errors}${rs.disk.first_error ? ` (${rs.disk.first_error})` : ''}`);
    out.ok = rs.nonce === s0.nonce && rs.totals.errors === 0 && rs.disk.errors === 0 && hookStatus === 'paused';
  } catch (e) {
    out.error = (e as Error).stack ?? String(e);
    step(`FAILED: ${String(e)}`);
  } finally {
    await driver.close().catch(() => undefined);
    fs.writeFileSync('/vnxen/smoke.json', JSON.stringify(out, null, 2));
  }
}

void main();
