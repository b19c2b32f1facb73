/**
 * The distro guest (docs/guest.md "The distro guest": Debian 12, systemd, an ext4 root on the
 * VM's qcow2 disk, 192 MiB) under the QEMU driver: two guests streaming to each other through a
 * Switch, snapshotted under load in background and pre-copy mode, killed, restored from the last
 * snapshot, and checked — the restored RAM equals a dump taken at the cut page for page, and the
 * TCP streams, memory load and disk checker of vnguest continue without an error, a reconnect or
 * a reboot. Prints the boot time and every pause.
 *
 * Minutes of TCG guests booting systemd: on demand only (VNSNAP_E2E_QEMU=1), as root, with the
 * Debian mirror reachable for the first build of the image. Everything is named `vnqd` (work
 * directory /tmp/vnqd-test-<pid>, VNE vnqd) and removed in the after() hook, also when a test
 * fails; QEMUs of a crashed earlier run are found by their pid files and killed.
 */
import type { ChannelFrame } from '../../proto/artefacts/channel-state';
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import { LocalDirStore } from '../../proto/store/local-dir';
import { buildDistroGuest, distroImageRoots, distroOverlay, distroSpec, type DistroImage } from '../guest/distro-guest';
import { channelStatus, ensureQemu, type GuestStatus } from '../guest/qemu-guest';
import { describeRuns, diffFiles } from '../support/ram-diff';
import { sleep, until } from '../support/wait';
import type { CutReport, SnapshotJob, SnapshotModeName, VmImage, VmStartSpec } from '../../agent/drivers/driver';
import { createLogger, silentLogger } from '../../proto/core/log';
import type { Port } from '../../switch/port/port';
import { Switch } from '../../switch/switch';

const ENABLED = process.env.VNSNAP_E2E_QEMU === '1';
const VNE = 'vnqd';
const ROOT_PREFIX = `/tmp/${VNE}-test-`;
const NAMES = ['a', 'b'];
/** Plain snapshots per mode whose pauses are reported (the one with a RAM dump is not counted). */
const TIMED_SNAPSHOTS = 3;

/** Kill the QEMUs of crashed earlier runs (their pid files name them) and remove their directories. */
function sweepCrashedRuns(): void {
  for (const d of fs.readdirSync('/tmp')) {
    const root = `/tmp/${d}`;
    if (!root.startsWith(ROOT_PREFIX)) continue;
    const owner = Number.parseInt(d.slice(ROOT_PREFIX.length - 5), 10);
    if (owner > 0 && fs.existsSync(`/proc/${owner}`)) continue; // a live run (or this one)
    const pidFiles = (fs.readdirSync(root, { recursive: true }) as string[]).filter((f) => path.basename(f) === 'qemu.pid');
    for (const f of pidFiles) {
      const dir = path.dirname(path.join(root, f));
      try {
        const pid = Number(fs.readFileSync(path.join(root, f), 'utf8').trim());
        if (pid > 0 && fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    fs.rmSync(root, { recursive: true, force: true });
  }
}

(ENABLED ? describe : describe.skip)('distro guest (Debian 12, systemd, ext4 root) under the QEMU driver: snapshot under load, kill, restore', function () {
  this.timeout(10 * 60_000);
  const root = `${ROOT_PREFIX}${process.pid}`;
  let image: DistroImage;
  let driver: QemuDriver | undefined;
  let sw: Switch | undefined;
  let store: LocalDirStore;
  const specs = new Map<string, VmStartSpec>();
  const pauses: Record<string, number[]> = { background: [], precopy: [] };
  let epoch = 0;
  const log = process.env.VNQD_LOG ? createLogger('vnqd-test', { level: 'debug' }) : silentLogger();
  const ctx = (name: string) => ({ portNames: [`${VNE}/${name}/0`], log });
  const status = (name: string): Promise<GuestStatus> => channelStatus((driver as QemuDriver).inspect(`${VNE}/${name}`)?.channelSock as string, 8000);

  /** Both streams connected and carrying bytes. */
  const streaming = async (): Promise<true | undefined> => {
    for (const name of NAMES) {
      const s = await status(name);
      if (!s.out[0]?.connected || !s.in[0]?.open || (s.in[0]?.bytes ?? 0) < 100_000) return undefined;
    }
    return true;
  };

  before(async function () {
    if (process.getuid?.() !== 0) this.skip();
    this.timeout(40 * 60_000);
    ensureQemu();
    image = buildDistroGuest();
    sweepCrashedRuns();
    fs.mkdirSync(root, { recursive: true });
    store = new LocalDirStore(path.join(root, 'store'));
    await store.init();
    driver = new QemuDriver({ workDir: path.join(root, 'w'), imageRoots: distroImageRoots(image, root) });
    sw = new Switch({ id: VNE });
    sw.configureVne({ name: VNE, vni: 78 });
    sw.start();
    const t0 = Date.now();
    for (const [i, name] of NAMES.entries()) {
      const disk = distroOverlay(image, path.join(root, `${name}-root.qcow2`));
      const params = { ip: `192.168.78.${i + 1}/24`, peers: [`192.168.78.${2 - i}:7001`], rateKiB: 512, memMiB: 16, memRateMiB: 4, diskRate: 20, reportSecs: 2 };
      const spec = distroSpec(image, VNE, name, { disk, params, mac: `52:54:00:78:00:0${i + 1}` });
      specs.set(name, spec);
      const h = await driver.start(spec, ctx(name));
      sw.attachPort(VNE, h.ports[0] as Port, { epoch: 0 });
    }
    await until('both distro guests streaming', streaming, { timeoutMs: 300_000, everyMs: 1000 });
    const netUp = NAMES.map((n) => {
      const m = /VNSNAP-NET-UP .*uptime=([\d.]+)/.exec(fs.readFileSync((driver as QemuDriver).inspect(`${VNE}/${n}`)?.consoleLog as string, 'utf8'));
      return `${n} ${m ? `${m[1]} s` : '?'}`;
    });
    console.log(`      boot: both guests streaming ${((Date.now() - t0) / 1000).toFixed(1)} s after the first start; network up at guest uptime ${netUp.join(', ')}`);
  });

  after(async function () {
    this.timeout(120_000);
    const p = Object.entries(pauses).map(([m, v]) => `${m}: ${v.map((x) => x.toFixed(1)).join(', ')} ms`);
    console.log(`      pauses (pause → resume, per VM and cut): ${p.join('; ')}`);
    if (process.env.VNQD_KEEP) {
      for (const n of NAMES) {
        const i = driver?.inspect(`${VNE}/${n}`);
        if (i) fs.copyFileSync(i.consoleLog, `/tmp/vnqd-keep-${n}.log`);
      }
    }
    await driver?.close();
    sw?.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  /** One consistent cut of both VMs through the switch; `atCut` runs inside each VM's pause. */
  async function cutBoth(mode: SnapshotModeName, atCut?: (name: string) => Promise<void>): Promise<{ images: Map<string, VmImage>; channel: Map<string, ChannelFrame[]>; k: number }> {
    const d = driver as QemuDriver;
    const s = sw as Switch;
    const k = ++epoch;
    const settled = await Promise.allSettled(NAMES.map((n) => d.snapshot(`${VNE}/${n}`, { snapshotId: `${mode}-${k}`, epoch: k, mode, store, prefix: `snapshots/${mode}-${k}/` })));
    const jobs = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    if (jobs.length !== NAMES.length) {
      await Promise.all(jobs.map((j: SnapshotJob) => j.abort()));
      throw (settled.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason;
    }
    await Promise.all(jobs.map((j) => j.ready));
    const reports = (await Promise.all(
      jobs.map((j, i) =>
        s.cutPorts([`${VNE}/${NAMES[i]}/0`], k, (pass) =>
          j.cut(async () => {
            await pass();
            await atCut?.(NAMES[i] as string);
          }),
        ),
      ),
    )) as CutReport[];
    if (!atCut) pauses[mode]?.push(...reports.map((r) => r.pauseMs));
    const imgs = await Promise.all(jobs.map((j) => j.durable()));
    const cs = await s.channelState(VNE, k, 10_000);
    for (const img of imgs) {
      assert.equal(await store.verify(img.memory), null);
      assert.ok(img.disks.length > 0, 'a disk image');
      for (const d of img.disks) assert.equal(await store.verify(d), null);
    }
    return { images: new Map(NAMES.map((n, i) => [n, imgs[i] as VmImage])), channel: cs.ports, k };
  }

  for (const mode of ['background', 'precopy'] as SnapshotModeName[]) {
    it(`${mode}: snapshots under load; kill, restore the last: RAM equals the cut page for page, streams, memory and disk continue intact`, async function () {
      const d = driver as QemuDriver;
      const s = sw as Switch;
      const before = new Map<string, GuestStatus>();
      for (const n of NAMES) before.set(n, await status(n));
      for (let i = 0; i < TIMED_SNAPSHOTS; i++) await cutBoth(mode);
      const dumps = new Map<string, string>();
      const snap = await cutBoth(mode, async (n) => {
        const f = path.join(root, `cut-${n}.bin`);
        await d.pmemsave(`${VNE}/${n}`, f);
        dumps.set(n, f);
      });
      for (const n of NAMES) assert.equal(d.status(`${VNE}/${n}`), 'running');
      // Kill both, restore both paused, compare their RAM with the dumps, attach at epoch k, inject the channel state, resume.
      for (const n of NAMES) {
        s.removePort(`${VNE}/${n}/0`);
        await d.stop(`${VNE}/${n}`);
      }
      let injected = 0;
      for (const n of NAMES) {
        const img = snap.images.get(n) as VmImage;
        const h = await d.restore(specs.get(n) as VmStartSpec, { memory: img.memory, disks: img.disks }, store, ctx(n));
        assert.equal(d.status(`${VNE}/${n}`), 'paused');
        const f = path.join(root, `restored-${n}.bin`);
        await d.pmemsave(`${VNE}/${n}`, f);
        const diff = diffFiles(dumps.get(n) as string, f);
        fs.rmSync(f);
        fs.rmSync(dumps.get(n) as string);
        assert.deepEqual({ vm: n, pages: diff.pages, lengths: diff.lengths }, { vm: n, pages: 0, lengths: undefined }, `pages that differ: ${describeRuns(diff)}`);
        const port = h.ports[0] as Port;
        s.attachPort(VNE, port, { epoch: snap.k });
        injected += s.openGate(port.name, snap.channel.get(port.name) ?? []);
      }
      for (const n of NAMES) await d.resume(`${VNE}/${n}`);
      const at = new Map<string, GuestStatus>();
      for (const n of NAMES) at.set(n, await status(n));
      await sleep(5000); // kept: the window over which every restored stream must move and none break
      for (const n of NAMES) {
        const b = before.get(n) as GuestStatus;
        const r0 = at.get(n) as GuestStatus;
        const r = await status(n);
        const why = JSON.stringify({ mode, injected, out: r.out, in: r.in, disk: r.disk, mem: r.mem });
        assert.equal(r.nonce, b.nonce, `${n} was not rebooted`);
        assert.equal(r.disk.dev, '/var/lib/vnguest/disk.img', `${n}: the disk checker writes to its file on the root filesystem`);
        assert.equal(r.totals.errors, 0, `${n}: no stream, memory or disk error: ${why}`);
        assert.equal(r.totals.reconnects, 0, `${n}: no reconnect: ${why}`);
        assert.ok(r.out[0]?.connected && r.in[0]?.open, `${n}: connections open: ${why}`);
        assert.ok((r.in[0]?.bytes ?? 0) > (r0.in[0]?.bytes ?? 0), `${n}: the incoming stream moves after the restore: ${why}`);
        assert.ok((r.out[0]?.bytes ?? 0) > (r0.out[0]?.bytes ?? 0), `${n}: the outgoing stream moves after the restore: ${why}`);
        assert.ok(r.disk.check_ok > r0.disk.check_ok, `${n}: disk checks continue: ${why}`);
        assert.ok(r.disk.records > b.disk.records, `${n}: disk records kept growing across the snapshots: ${why}`);
      }
    });
  }
});
