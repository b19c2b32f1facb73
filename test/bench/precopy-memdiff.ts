/**
 * Diagnostic: does a snapshot's memory image equal the VM's RAM at the cut, page for page?
 *
 * Two test guests stream to each other through a Switch (network, memory and disk load, as in
 * qemu-driver.test.ts). Guest `a` is snapshotted N times per mode; at the cut (atPause, the VM
 * stopped) its RAM is dumped with pmemsave; the image is restored into a second driver (paused,
 * never resumed) and dumped again; the two dumps are compared 4 KiB page by page. A restore that
 * "crashes sometimes" becomes a count of wrong pages per snapshot, on every snapshot.
 *
 * Usage: node dist/test/bench/precopy-memdiff.js [--runs N] [--modes precopy,background]
 *        [--rate KiB/s] [--hold bandwidth|pre-switchover] [--json]   (default: the driver's, bandwidth)
 * Names everything vnqm-memdiff-<pid> (removed at exit). Root and QEMU needed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { CutReport, SnapshotModeName, VmStartSpec } from '../../agent/drivers/driver';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import { silentLogger } from '../../proto/core/log';
import { LocalDirStore } from '../../proto/store/local-dir';
import { Switch } from '../../switch/switch';
import { describeRuns, diffFiles } from '../support/ram-diff';
import { buildGuest, ensureQemu, guestImageRoots } from '../guest/qemu-guest';
import { startGuestPair } from '../support/guest-pair';



async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runs: { type: 'string', default: '5' }, modes: { type: 'string', default: 'precopy,background' }, rate: { type: 'string', default: '4096' }, hold: { type: 'string', default: 'bandwidth' }, json: { type: 'boolean', default: false } } });
  const runs = Number(values.runs);
  const modes = String(values.modes).split(',') as SnapshotModeName[];
  ensureQemu();
  const image = buildGuest();
  const root = `/tmp/vnqm-memdiff-${process.pid}`;
  fs.mkdirSync(root, { recursive: true });
  const store = new LocalDirStore(path.join(root, 'store'));
  await store.init();
  const driver = new QemuDriver({ workDir: path.join(root, 'w'), imageRoots: guestImageRoots(image, root), precopyHold: values.hold === 'bandwidth' ? 'bandwidth' : 'pre-switchover' });
  const restorer = new QemuDriver({ workDir: path.join(root, 'r'), imageRoots: guestImageRoots(image, root) });
  const sw = new Switch({ id: 'vnqm' });
  const results: { mode: string; run: number; pages: number; runs: [number, number][] }[] = [];
  const cleanup = async (): Promise<void> => {
    await restorer.close().catch(() => undefined);
    await driver.close().catch(() => undefined);
    sw.stop();
    fs.rmSync(root, { recursive: true, force: true });
  };
  process.on('SIGINT', () => void cleanup().then(() => process.exit(130)));
  try {
    sw.configureVne({ name: 'vnqm', vni: 77 });
    sw.start();
    const specs = await startGuestPair({ driver, sw, image, root, vne: 'vnqm', net: 77, rateKiB: Number(values.rate), ...(process.env.VNQM_ACCEL ? { accel: process.env.VNQM_ACCEL } : {}) });
    let k = 0;
    for (const mode of modes) {
      for (let r = 1; r <= runs; r++) {
        k++;
        const id = 'vnqm/a';
        const port = 'vnqm/a/0';
        const src = path.join(root, `src-${k}.bin`);
        const job = await driver.snapshot(id, { snapshotId: `${mode}-${k}`, epoch: k, mode, store, prefix: `snapshots/${mode}-${k}/` });
        await job.ready;
        const rep = (await sw.cutPorts([port], k, (pass) =>
          job.cut(async () => {
            await pass();
            await driver.pmemsave(id, src);
          }),
        )) as CutReport;
        const img = await job.durable();
        await sw.channelState('vnqm', k, 10_000).catch(() => undefined);
        const h = await restorer.restore(specs.get('a') as VmStartSpec, { memory: img.memory, disks: img.disks }, store, { portNames: [`vnqm/a/0r${k}`], log: silentLogger() });
        void h;
        const dst = path.join(root, `dst-${k}.bin`);
        await restorer.pmemsave(id, dst);
        await restorer.stop(id);
        const d = diffFiles(src, dst);
        fs.rmSync(src);
        fs.rmSync(dst);
        results.push({ mode, run: r, pages: d.pages, runs: d.runs.slice(0, 20) });
        console.log(`${mode} #${r}: pause ${rep.pauseMs.toFixed(1)} ms, ${d.pages} page(s) differ${d.pages ? `: ${describeRuns(d)}` : ''}`);
        await fs.promises.rm(path.join(root, 'store', 'snapshots'), { recursive: true, force: true });
      }
    }
  } finally {
    await cleanup();
  }
  const bad = results.filter((r) => r.pages > 0);
  if (values.json) console.log(JSON.stringify({ results }));
  console.log(`${results.length} images, ${bad.length} with wrong pages (${modes.map((m) => `${m}: ${results.filter((r) => r.mode === m && r.pages > 0).length}/${results.filter((r) => r.mode === m).length}`).join(', ')})`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : String(e));
  process.exit(1);
});
