/**
 * The QEMU driver with real guests (the test guest of docs/guest.md under TCG): the
 * HypervisorDriver compliance suite, then two guests streaming to each other through a Switch
 * snapshotted in each mode, killed, restored, and checked through their status channel. Every
 * snapshot and restore case runs against both stores: the content-addressed one (CasStore over
 * LocalObjects, the default) and the whole-file LocalDirStore; with the CasStore also a restore
 * from a corrupted chunk, and an abort at every phase of a job.
 * Everything is named `vnqm` (work directory /tmp/vnqm-test-<pid>, TAPs vnqm*) and removed in
 * after() hooks, also when a test fails; QEMU processes of a crashed earlier run are found by
 * the pid files in /tmp/vnqm-test-* and killed.
 */
import type { ChannelFrame } from '../../proto/artefacts/channel-state';
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import { CasStore } from '../../proto/store/cas-store';
import { chunkKey } from '../../proto/store/cas-index';
import { LocalDirStore, type SnapshotStore } from '../../proto/store/local-dir';
import { LocalObjects } from '../../proto/store/local-objects';
import { buildGuest, channelStatus, ensureQemu, guestImageRoots, guestSpec, kernelCmdline, type GuestImage, type GuestStatus } from '../guest/qemu-guest';
import { driverCompliance } from '../support/compliance/driver';
import { qemuUnderTest } from '../support/qemu-compliance';
import { describeRuns, diffFiles } from '../support/ram-diff';
import { sleep, until } from '../support/wait';
import { sweepVnqm, VNQM_ROOT_PREFIX } from '../support/vnqm-sweep';
import type { CutReport, SnapshotJob, SnapshotModeName, VmHandle, VmImage, VmStartSpec } from '../../agent/drivers/driver';
import { isVnsnapError } from '../../proto/core/errors';
import { createLogger, silentLogger } from '../../proto/core/log';
import type { Port } from '../../switch/port/port';
import { Switch } from '../../switch/switch';


/** The stores every snapshot/restore case runs against: `dir` is the store's own (new) directory. */
const STORES: { kind: 'cas' | 'files'; open(dir: string): Promise<SnapshotStore> }[] = [
  {
    kind: 'cas',
    open: async (dir) => {
      const objects = new LocalObjects(dir);
      await objects.init();
      return new CasStore(objects);
    },
  },
  {
    kind: 'files',
    open: async (dir) => {
      const store = new LocalDirStore(dir);
      await store.init();
      return store;
    },
  },
];

describe('QEMU driver', function () {
  let image: GuestImage | undefined;
  const root = `${VNQM_ROOT_PREFIX}${process.pid}`;

  before(function () {
    if (process.getuid?.() !== 0) this.skip();
    this.timeout(25 * 60_000);
    ensureQemu();
    image = buildGuest();
    sweepVnqm();
    fs.mkdirSync(root, { recursive: true });
  });
  after(() => {
    fs.rmSync(root, { recursive: true, force: true });
  });

  let n = 0;
  for (const st of STORES)
  driverCompliance(`qemu (TCG guests, stream NIC, qcow2 disk, ${st.kind} store)`, async () => {
    const dir = path.join(root, `c${++n}`);
    const store = await st.open(path.join(dir, 'store'));
    const img = image as GuestImage;
    return qemuUnderTest(dir, img, store, (name, disk) => guestSpec(img, name, { disk, append: kernelCmdline({ name, diskRate: 50 }), memMib: 128 }));
  });

  it('probes the accelerator once (TCG here: no vmx/svm)', () => {
    const d = new QemuDriver({ workDir: path.join(root, 'probe') });
    const hasVirt = /\b(vmx|svm)\b/.test(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    assert.equal(d.accel, hasVirt && fs.existsSync('/dev/kvm') ? 'kvm' : 'tcg', d.accelReason);
  });
});

/** How many times, and how far apart (ms), a ready pre-copy's VMs are checked to be running before the cut. */
const HOLD_SAMPLES = 6;
const HOLD_SAMPLE_MS = 200;
/** A pre-copy cut given a cut instant stops both VMs this long after the cut began (a commit's margin + lead). */
const INSTANT_AFTER_MS = 150;

/** Two guests streaming to each other through a Switch: snapshot in each mode, kill, restore, check. */
for (const st of STORES)
describe(`QEMU driver: two guests, snapshot and restore with TCP streams through the switch (${st.kind} store)`, function () {
  this.timeout(240_000);
  const root = `${VNQM_ROOT_PREFIX}${process.pid}-pair-${st.kind}`;
  let image: GuestImage;
  let driver: QemuDriver | undefined;
  let sw: Switch | undefined;
  let store: SnapshotStore;
  const names = ['a', 'b'];
  const specs = new Map<string, VmStartSpec>();
  const pauses: Record<string, number[]> = { background: [], precopy: [] };
  /** Each pre-copy's early convergences (QEMU paused the VM before the cut; the driver restarted it): their pauses, ms. */
  const restarts: number[] = [];
  /** Each pre-copy cut's spread: its two VMs' cut instants (QEMU's STOPs) apart, ms. */
  const spreads: number[] = [];
  /** The same for the pre-copy cuts given a common cut instant (every other one). */
  const instantSpreads: number[] = [];
  let epoch = 0;

  const status = (name: string): Promise<GuestStatus> => channelStatus((driver as QemuDriver).inspect(`vnqm/${name}`)?.channelSock as string, 8000);
  const log = process.env.VNQM_LOG ? createLogger('vnqm-test', { level: 'debug' }) : silentLogger();
  const ctx = (name: string) => ({ portNames: [`vnqm/${name}/0`], log });

  before(async function () {
    if (process.getuid?.() !== 0) this.skip();
    this.timeout(25 * 60_000);
    ensureQemu();
    image = buildGuest();
    fs.mkdirSync(root, { recursive: true });
    store = await st.open(path.join(root, 'store'));
    driver = new QemuDriver({ workDir: path.join(root, 'w'), imageRoots: guestImageRoots(image, root), ...(process.env.VNQM_HOLD ? { holdBandwidth: process.env.VNQM_HOLD === 'paced' ? ('paced' as const) : Number(process.env.VNQM_HOLD) } : {}), ...(process.env.VNQM_PRECOPY_HOLD === 'bandwidth' ? { precopyHold: 'bandwidth' as const } : {}) });
    sw = new Switch({ id: 'vnqm' });
    sw.configureVne({ name: 'vnqm', vni: 77 });
    sw.start();
    for (const [i, name] of names.entries()) {
      const base = path.join(root, `${name}-base.qcow2`);
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '32M']);
      const append = kernelCmdline({ name, ip: `192.168.77.${i + 1}/24`, peers: [`192.168.77.${2 - i}:7001`], rateKiB: 2048, memMiB: 16, memRateMiB: 4, diskRate: 20, reportSecs: 2 });
      const spec = guestSpec(image, name, { disk: base, append, mac: `52:54:00:77:00:0${i + 1}`, memMib: 256 });
      specs.set(name, spec);
      const h = await driver.start(spec, ctx(name));
      sw.attachPort('vnqm', h.ports[0] as Port, { epoch: 0 });
    }
    // Both streams connected and moving.
    await until(
      'both guests streaming',
      async () => {
        for (const name of names) {
          const s = await status(name);
          if (!s.out[0]?.connected || !s.in[0]?.open || (s.in[0]?.bytes ?? 0) < 100_000) return undefined;
        }
        return true;
      },
      { timeoutMs: 90_000, everyMs: 1000 },
    );
  });

  after(async () => {
    const p = Object.entries(pauses).map(([m, v]) => `${m}: ${v.map((x) => x.toFixed(1)).join(', ')} ms`);
    if (p.length) console.log(`      pauses (pause → resume, per VM and cut): ${p.join('; ')}`);
    if (spreads.length) console.log(`      pre-copy cut spreads (the two VMs' STOPs apart, per cut): ${spreads.map((x) => x.toFixed(1)).join(', ')} ms`);
    if (instantSpreads.length) console.log(`      pre-copy cut spreads at a cut instant ${INSTANT_AFTER_MS} ms after the cut began (per cut): ${instantSpreads.map((x) => x.toFixed(1)).join(', ')} ms`);
    console.log(`      pre-copy restarts (early convergences): ${restarts.length}${restarts.length ? `, paused ${restarts.map((x) => x.toFixed(1)).join(', ')} ms` : ''}`);
    if (process.env.VNQM_KEEP) {
      for (const n of names) {
        const i = driver?.inspect(`vnqm/${n}`);
        if (i) fs.copyFileSync(i.consoleLog, `/tmp/vnqm-keep-${n}.log`);
      }
    }
    await driver?.close();
    sw?.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  /** One consistent cut of both VMs, as the agent does it; returns the images and the channel state. */
  async function snapshotBoth(mode: SnapshotModeName, atCut?: (name: string) => Promise<void>): Promise<{ images: Map<string, VmImage>; channel: Map<string, ChannelFrame[]>; k: number }> {
    const d = driver as QemuDriver;
    const s = sw as Switch;
    const k = ++epoch;
    const prefix = `snapshots/${mode}-${k}/`;
    const started = await Promise.allSettled(names.map((n) => d.snapshot(`vnqm/${n}`, { snapshotId: `${mode}-${k}`, epoch: k, mode, store, prefix })));
    const notStarted = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (notStarted) {
      for (const r of started) if (r.status === 'fulfilled') await r.value.abort(); // leave no job behind for the next test
      throw notStarted.reason;
    }
    const jobs = started.map((r) => (r as PromiseFulfilledResult<SnapshotJob>).value);
    let imgs: VmImage[];
    try {
      await Promise.all(jobs.map((j) => j.ready));
      if (mode === 'precopy') {
        // The bandwidth hold: a ready pre-copy waits for the cut with its VM running, not paused
        // (QEMU converging by itself would stop it): sampled over a second of the wait.
        for (let i = 0; i < HOLD_SAMPLES; i++) {
          if (i > 0) await sleep(HOLD_SAMPLE_MS);
          for (const n of names) assert.equal((await d.execute<{ status: string }>(`vnqm/${n}`, 'query-status', undefined, 5000)).status, 'running', `${n} runs while its pre-copy waits for the cut (sample ${i + 1} of ${HOLD_SAMPLES})`);
        }
      }
      // Every other pre-copy cut stops both VMs at one cut instant (as a commit naming one does), the others each at its own round's end.
      const at = mode === 'precopy' && k % 2 === 0 ? { stopAtUs: Date.now() * 1000 + INSTANT_AFTER_MS * 1000 } : undefined;
      const reports = await Promise.all(
        jobs.map(async (j, i) => {
          const port = `vnqm/${names[i]}/0`;
          const report = await s.cutPorts([port], k, (pass) =>
            j.cut(async () => {
              await pass();
              await atCut?.(names[i] as string);
            }, at),
          );
          return report as CutReport;
        }),
      );
      if (at) for (const r of reports) assert.ok(r.phases.some((p) => p.phase === 'PHASE_CUT_AT' && p.startUnixUs === at.stopAtUs), 'a cut given an instant reports CUT_AT from it');
      if (mode === 'precopy') (at ? instantSpreads : spreads).push((Math.max(...reports.map((r) => r.cutUnixUs)) - Math.min(...reports.map((r) => r.cutUnixUs))) / 1000);
      for (const r of reports) {
        const early = r.phases.filter((p) => p.phase === 'PHASE_PRECOPY_RESTART');
        if (early.length) restarts.push(...early.map((p) => (p.endUnixUs - p.startUnixUs) / 1000));
      }
      if (!atCut) for (const r of reports) pauses[mode]?.push(r.pauseMs); // a RAM dump at the cut lengthens the pause
      imgs = await Promise.all(jobs.map((j) => j.durable()));
    } catch (e) {
      // Leave no job behind: a snapshot in progress would fail every later test of the VM.
      await Promise.allSettled(jobs.map((j) => j.abort()));
      throw e;
    }
    const cs = await s.channelState('vnqm', k, 10_000);
    const images = new Map<string, VmImage>();
    names.forEach((n, i) => images.set(n, imgs[i] as VmImage));
    for (const img of imgs) {
      assert.equal(await store.verify(img.memory), null);
      assert.ok(img.disks.length > 0, 'a disk image');
      for (const d of img.disks) assert.equal(await store.verify(d), null);
    }
    return { images, channel: cs.ports, k };
  }

  // The image against the VM's RAM at the cut, page for page: a pre-copy under TCG on QEMU < 9.0
  // lost guest stores (QEMU's dirty-sync fast path; the driver pads RAM to avoid it, docs/qemu.md).
  // Seen before the padding in 2 of 15 images of one loaded guest; each round here checks two.
  for (const [mode, rounds] of [['precopy', 3], ['background', 1]] as [SnapshotModeName, number][]) {
    it(`${mode}: ${rounds} snapshot(s) under load, every image equals its VM's RAM at the cut, page for page`, async function () {
      this.timeout(rounds * 120_000);
      const d = driver as QemuDriver;
      const restorer = new QemuDriver({ workDir: path.join(root, 'r'), imageRoots: guestImageRoots(image, root) });
      try {
        for (let round = 1; round <= rounds; round++) {
          const dumps = new Map<string, string>();
          const snap = await snapshotBoth(mode, async (n) => {
            const f = path.join(root, `cut-${n}.bin`);
            await d.pmemsave(`vnqm/${n}`, f);
            dumps.set(n, f);
          });
          for (const n of names) {
            const img = snap.images.get(n) as VmImage;
            await restorer.restore(specs.get(n) as VmStartSpec, { memory: img.memory, disks: img.disks }, store, { portNames: [`vnqm/${n}/r`], log });
            const f = path.join(root, `restored-${n}.bin`);
            await restorer.pmemsave(`vnqm/${n}`, f);
            await restorer.stop(`vnqm/${n}`);
            const diff = diffFiles(dumps.get(n) as string, f);
            fs.rmSync(f);
            fs.rmSync(dumps.get(n) as string);
            assert.deepEqual({ vm: n, round, pages: diff.pages, lengths: diff.lengths }, { vm: n, round, pages: 0, lengths: undefined }, `pages that differ: ${describeRuns(diff)}`);
          }
        }
      } finally {
        await restorer.close();
      }
    });
  }

  for (const mode of ['background', 'precopy'] as SnapshotModeName[]) {
    it(`${mode}: two snapshots under load, then kill both, restore the second, streams and disks continue intact`, async () => {
      const d = driver as QemuDriver;
      const s = sw as Switch;
      const before = new Map<string, GuestStatus>();
      for (const n of names) before.set(n, await status(n));
      await snapshotBoth(mode);
      const snap = await snapshotBoth(mode);
      for (const n of names) assert.equal(d.status(`vnqm/${n}`), 'running');
      await sleep(1000);
      // Kill both, restore both paused, attach at epoch k, inject the channel state, resume.
      for (const n of names) {
        s.removePort(`vnqm/${n}/0`);
        await d.stop(`vnqm/${n}`);
      }
      const handles = [];
      for (const n of names) {
        const img = snap.images.get(n) as VmImage;
        handles.push(await d.restore(specs.get(n) as VmStartSpec, { memory: img.memory, disks: img.disks }, store, ctx(n)));
        assert.equal(d.status(`vnqm/${n}`), 'paused');
      }
      let injected = 0;
      for (const i of names.keys()) {
        const port = (handles[i] as VmHandle).ports[0] as Port;
        s.attachPort('vnqm', port, { epoch: snap.k });
        injected += s.openGate(port.name, snap.channel.get(port.name) ?? []);
      }
      for (const n of names) await d.resume(`vnqm/${n}`);
      const at = new Map<string, GuestStatus>();
      for (const n of names) at.set(n, await status(n));
      await sleep(4000);
      for (const n of names) {
        const b = before.get(n) as GuestStatus;
        const r0 = at.get(n) as GuestStatus;
        const r = await status(n);
        const why = JSON.stringify({ mode, injected, out: r.out, in: r.in, disk: r.disk, mem: r.mem });
        assert.equal(r.nonce, b.nonce, `${n} was not rebooted`);
        assert.equal(r.totals.errors, 0, `${n}: no stream, memory or disk error: ${why}`);
        assert.equal(r.totals.reconnects, 0, `${n}: no reconnect: ${why}`);
        assert.ok(r.out[0]?.connected && r.in[0]?.open, `${n}: connections open: ${why}`);
        assert.ok((r.in[0]?.bytes ?? 0) > (r0.in[0]?.bytes ?? 0), `${n}: the incoming stream moves after the restore: ${why}`);
        assert.ok((r.out[0]?.bytes ?? 0) > (r0.out[0]?.bytes ?? 0), `${n}: the outgoing stream moves after the restore: ${why}`);
        assert.equal(r.disk.errors, 0, `${n}: disk agrees with memory: ${why}`);
        assert.ok(r.disk.check_ok > r0.disk.check_ok, `${n}: disk checks continue: ${why}`);
        assert.equal(r.mem.errors, 0);
      }
    });
  }

  /** Pids of processes whose command line names `dir` (a driver's QEMUs run with files in it). */
  function processesUnder(dir: string): number[] {
    const out: number[] = [];
    for (const p of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(p)) continue;
      try {
        if (fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(dir)) out.push(Number(p));
      } catch {
        /* gone */
      }
    }
    return out;
  }

  if (st.kind === 'cas')
    it('a corrupted chunk of a memory image: restore fails with ERR_CHECKSUM naming the artefact, QEMU stopped, nothing left', async function () {
      this.timeout(180_000);
      const snap = await snapshotBoth('background');
      const img = snap.images.get('a') as VmImage;
      const idx = await (store as CasStore).index(img.memory.path);
      assert.ok(idx && idx.chunks.length > 4, 'a memory image of several chunks');
      // A chunk of the memory image's own (not one the disk image shares: the disk is read first).
      const diskChunks = new Set((await Promise.all(img.disks.map(async (d) => (await (store as CasStore).index(d.path))?.chunks ?? []))).flat().map((c) => c.sha256));
      const own = idx.chunks.map((c, i) => ({ c, i })).filter(({ c }) => !diskChunks.has(c.sha256) && idx.chunks.filter((o) => o.sha256 === c.sha256).length === 1);
      const pick = own[Math.floor(own.length / 2)];
      assert.ok(pick, 'the memory image has chunks of its own');
      const at = pick.i;
      const bad = pick.c;
      const file = path.join(root, 'store', chunkKey(bad.sha256));
      const good = fs.readFileSync(file);
      const rdir = path.join(root, 'rc');
      const restorer = new QemuDriver({ workDir: rdir, imageRoots: guestImageRoots(image, root) });
      try {
        const flipped = Buffer.from(good);
        flipped[bad.size >> 1] = (flipped[bad.size >> 1] as number) ^ 0xff;
        fs.writeFileSync(file, flipped);
        let err: unknown;
        await restorer.restore(specs.get('a') as VmStartSpec, { memory: img.memory, disks: img.disks }, store, { portNames: ['vnqm/a/rc'], log }).catch((e: unknown) => (err = e));
        assert.ok(isVnsnapError(err, 'ERR_CHECKSUM'), `ERR_CHECKSUM, got ${String(err)}`);
        assert.match(err.message, new RegExp(`^artefact ${img.memory.path.replace(/[.]/g, '\\.')}: chunk ${at + 1} of ${idx.chunks.length} \\(${bad.sha256}\\) is corrupt`));
        assert.equal(restorer.inspect('vnqm/a'), undefined, 'no VM left in the driver');
        assert.deepEqual(processesUnder(rdir), [], 'no QEMU left running');
        // The same restore from the repaired chunk works: the failure was the chunk's alone.
        fs.writeFileSync(file, good);
        await restorer.restore(specs.get('a') as VmStartSpec, { memory: img.memory, disks: img.disks }, store, { portNames: ['vnqm/a/rc'], log });
        assert.equal(restorer.status('vnqm/a'), 'paused');
      } finally {
        fs.writeFileSync(file, good);
        await restorer.close();
      }
    });

  it('abort at every phase: the VM runs and answers, no artefact, no stream socket left', async function () {
    this.timeout(300_000);
    const d = driver as QemuDriver;
    // An abort after the cut merges the job's disk overlay back; the next snapshot of that VM must
    // work (it did not while the merged overlay's node stayed attached over the frozen image:
    // blockdev-snapshot refused "node is used as backing hd"), checked after the phases.
    const phases: [string, string, SnapshotModeName, (j: SnapshotJob) => Promise<unknown>][] = [
      ['a', 'background, before the cut', 'background', (j) => j.ready],
      ['a', 'precopy, during the first pass', 'precopy', async () => undefined],
      ['a', 'precopy, ready (held by the bandwidth hold, the VM running)', 'precopy', (j) => j.ready],
      ['a', 'background, while the image is written', 'background', async (j) => j.ready.then(() => j.cut(async () => undefined))],
      ['b', 'precopy, after the cut', 'precopy', async (j) => j.ready.then(() => j.cut(async () => undefined))],
    ];
    for (const [vm, what, mode, upTo] of phases) {
      const id = `vnqm/${vm}`;
      const dir = d.inspect(id)?.dir as string;
      const k = ++epoch;
      const prefix = `snapshots/abort-${k}/`;
      const job = await d.snapshot(id, { snapshotId: `abort-${k}`, epoch: k, mode, store, prefix });
      await upTo(job);
      await job.abort();
      assert.equal(d.status(id), 'running', what);
      assert.equal((await d.execute<{ status: string }>(id, 'query-status', undefined, 5000)).status, 'running', `${what}: QEMU answers`);
      assert.deepEqual(fs.readdirSync(dir).filter((f) => /^mig\d+\.sock$/.test(f)), [], `${what}: the stream's socket is gone`);
      assert.deepEqual(await store.list(prefix), [], `${what}: nothing committed`);
    }
    for (const vm of ['a', 'b']) {
      const k = ++epoch;
      const job = await d.snapshot(`vnqm/${vm}`, { snapshotId: `after-${k}`, epoch: k, mode: 'background', store, prefix: `snapshots/after-${k}/` });
      await job.ready;
      await job.cut(async () => undefined);
      const img = await job.durable();
      assert.equal(await store.verify(img.memory), null, `${vm}: a snapshot after the post-cut abort`);
      assert.ok(img.disks.length > 0, `${vm}: with its disk`);
    }
  });
});
