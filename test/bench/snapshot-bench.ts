/**
 * bench:snapshot (issue 4): how long the VMs of a real VNE are paused, and how long a snapshot
 * and a restore take, with vnsnap's two modes against what an operator does today without vnsnap.
 *
 * One run, one VNE: two namespaced hosts (test/support/cluster.ts, agents with
 * `"drivers": ["qemu"]`), four TCG guests (two per host, 128 MiB) running checked TCP streams
 * across and within hosts plus memory and disk load (test/support/qemu-vne.ts). Measured:
 *
 *   background   `vnsnap snapshot create --mode background` (per-VM pause from the catalog)
 *   precopy      `vnsnap snapshot create --mode precopy`
 *   baseline     every VM paused (QMP `stop`, all at once), each saved with QEMU (`migrate` to
 *                `exec:cat > FILE`, all at once: the baseline's best case), then all resumed
 *                (`cont`); a VM's pause is stop → cont. Memory only: a disk copy would add to it.
 *   restore      `vnsnap restore ID --stop-running` of the precopy snapshot (the whole VNE:
 *                validate, stop the running VMs, configure, load, resume, inject), and within it
 *                the load-to-resume span of the coordinator's notes (every VM loaded paused in
 *                parallel, then resumed: the slowest single VM's own restore)
 *
 * After everything the guests' streams, disks and memory are checked (vnguest counters).
 *
 * Then the same VNE of distro guests (docs/guest.md "The distro guest": Debian 12, systemd, an
 * ext4 root on the qcow2 disk, 192 MiB) on a fresh cluster: DISTRO_SNAPSHOTS snapshots in each
 * mode and as many baseline rounds, every VM's pause counted, median / p95 / max per mode, and the
 * streams checked after each mode (the "distro" object; `--no-distro` skips it).
 *
 *   npm run bench:snapshot [-- --json] [-- --no-distro]
 *
 * With --json stdout is exactly one JSON object (progress goes to stderr).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QmpClient } from '../../agent/drivers/qemu/qmp';
import { buildDistroGuest, distroImageRoots, type DistroImage } from '../guest/distro-guest';
import { measureDistroImage } from './image-size';
import { buildGuest, ensureQemu, guestImageRoots, type GuestImage, type GuestStatus } from '../guest/qemu-guest';
import { Cluster, sleep, until, type CatalogSnapshot } from '../support/cluster';
import { allStatuses, checkAfterRestore, E2E_VMS, E2E_VNE, instanceDir, intactProblems, destroyE2eCluster, killE2eQemus, saveConsoles, streamsUp, writeVneFile } from '../support/qemu-vne';

const JSON_OUT = process.argv.includes('--json');
const say = (s: string): void => {
  if (JSON_OUT) process.stderr.write(s + '\n');
  else console.log(s);
};

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};
const r1 = (x: number): number => Math.round(x * 10) / 10;
/** Nearest-rank 95th percentile. */
const p95 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.max(0, Math.ceil(0.95 * xs.length) - 1)] as number;
const stats = (xs: number[]): { median: number; p95: number; max: number } => ({ median: r1(median(xs)), p95: r1(p95(xs)), max: r1(Math.max(...xs)) });
/** Snapshots per mode (and baseline rounds) of the distro guest VNE. */
const DISTRO_SNAPSHOTS = 10;
const r2 = (x: number): number => Math.round(x * 100) / 100;

interface Ev {
  state?: string;
  note?: string;
  vm?: { vm: string; phase: string; phaseDone?: boolean };
  done?: CatalogSnapshot;
}

async function vnsnapSnapshot(c: Cluster, mode: 'background' | 'precopy'): Promise<{ snap: CatalogSnapshot; pauses: number[]; seconds: number }> {
  const t0 = Date.now();
  const r = await c.cliStream<Ev>(['snapshot', 'create', E2E_VNE, '--mode', mode, '--description', `bench ${mode}`], (e) => {
    if (e.state) say(`    ${mode}: ${e.state}`);
  }).done;
  const seconds = (Date.now() - t0) / 1000;
  const snap = r.events[r.events.length - 1]?.done;
  if (r.code !== 0 || !snap || snap.state !== 'SNAPSHOT_STATE_COMPLETE') throw new Error(`${mode} snapshot failed: ${r.stderr.trim()} ${snap?.error ?? ''}`);
  return { snap, pauses: snap.vms.map((v) => v.pauseMs), seconds };
}

/** The operator's way: stop all, migrate each to a file, cont all. */
async function baseline(dir: string): Promise<{ pauses: number[]; seconds: number; slowestSingle: number; bytes: number }> {
  const qmps = await Promise.all(
    E2E_VMS.map(async (vm) => {
      const d = instanceDir(vm);
      if (!d) throw new Error(`no running QEMU for ${vm}`);
      return QmpClient.connect(path.join(d, 'monitor.sock'), { name: `${vm} monitor`, timeoutMs: 10_000 });
    }),
  );
  try {
    // Capabilities persist in QEMU: set every one off (the last vnsnap job left its own on).
    for (const q of qmps) {
      const caps = await q.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities');
      await q.execute('migrate-set-capabilities', { capabilities: caps.map((x) => ({ capability: x.capability, state: false })) });
      await q.execute('migrate-set-parameters', { 'max-bandwidth': 8 * 1024 * 1024 * 1024, 'downtime-limit': 300 });
    }
    const files = E2E_VMS.map((vm) => path.join(dir, `baseline-${vm}.img`));
    const t0 = performance.now();
    const stopped = await Promise.all(qmps.map(async (q) => (await q.execute('stop'), performance.now())));
    const saveMs = await Promise.all(
      qmps.map(async (q, i) => {
        const s = performance.now();
        await q.execute('migrate', { uri: `exec:cat > ${files[i] as string}` });
        for (;;) {
          const st = await q.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
          if (st.status === 'completed') break;
          if (st.status === 'failed' || st.status === 'cancelled') throw new Error(`baseline migrate of ${E2E_VMS[i] as string}: ${st.status} ${st['error-desc'] ?? ''}`);
          await sleep(20);
        }
        return performance.now() - s;
      }),
    );
    const resumed = await Promise.all(qmps.map(async (q) => (await q.execute('cont'), performance.now())));
    const seconds = (performance.now() - t0) / 1000;
    const bytes = files.reduce((n, f) => n + fs.statSync(f).size, 0);
    for (const f of files) fs.rmSync(f, { force: true });
    return { pauses: stopped.map((s, i) => (resumed[i] as number) - s), seconds, slowestSingle: Math.max(...saveMs) / 1000, bytes };
  } finally {
    for (const q of qmps) q.close();
  }
}

/** Start the cluster and the four-guest VNE of `image` (a monitor per VM, for the baseline); resolves once every stream is up. */
async function startVne(c: Cluster, image: GuestImage | DistroImage, startingNote: string, timeoutMs: number): Promise<Record<string, GuestStatus>> {
  killE2eQemus();
  await c.start();
  say(startingNote);
  await c.cliJson(['vne', 'define', writeVneFile(c.dir, image, { monitor: true })]);
  await c.cliJson(['vne', 'start', E2E_VNE]);
  return until('every stream up', async () => {
    const st = await allStatuses();
    return streamsUp(st) ? st : undefined;
  }, { timeoutMs, everyMs: 2000 });
}

/** The four-guest VNE of distro guests on its own cluster: DISTRO_SNAPSHOTS rounds per mode. */
async function distroRun(): Promise<{ pause_ms: Record<'background' | 'precopy' | 'baseline', { median: number; p95: number; max: number }>; streams_intact: boolean; problems: string[] }> {
  say('distro guest image (built once, cached) ...');
  const image = buildDistroGuest();
  const c = new Cluster({ prefix: 'vnsd', hosts: ['h1', 'h2'], drivers: ['qemu'], imageRoots: distroImageRoots(image), heartbeatIntervalMs: 1000, deadAfterMs: 10_000 });
  try {
    await startVne(c, image, 'distro: coordinator + 2 agents up; starting 4 Debian 12 guests (192 MiB, systemd, TCG) ...', 400_000);
    say(`distro: all 5 streams up; ${DISTRO_SNAPSHOTS} snapshots per mode ...`);
    const problems: string[] = [];
    const pauses: Record<'background' | 'precopy' | 'baseline', number[]> = { background: [], precopy: [], baseline: [] };
    for (const mode of ['background', 'precopy', 'baseline'] as const) {
      const before = await allStatuses();
      for (let i = 0; i < DISTRO_SNAPSHOTS; i++) {
        const r = mode === 'baseline' ? await baseline(c.dir) : await vnsnapSnapshot(c, mode);
        pauses[mode].push(...r.pauses);
        // each snapshot is a separate catalog entry: remove it so the store does not fill up
        if ('snap' in r) await c.cli(['snapshot', 'delete', r.snap.id], 60_000).catch(() => undefined);
      }
      await sleep(3000); // kept: the window over which every stream must move on
      problems.push(...intactProblems(`distro after ${mode}`, before, await allStatuses()));
    }
    if (problems.length) say(`  distro guest consoles saved: ${saveConsoles('/var/tmp/vnsnap-bench-distro-consoles').join(', ')}`);
    return { pause_ms: { background: stats(pauses.background), precopy: stats(pauses.precopy), baseline: stats(pauses.baseline) }, streams_intact: problems.length === 0, problems };
  } finally {
    await destroyE2eCluster(c);
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench:snapshot needs root (namespaces, QEMU)');
  ensureQemu();
  say('guest image (built once, cached) ...');
  const image = buildGuest();
  const c = new Cluster({ prefix: 'vnsb', hosts: ['h1', 'h2'], drivers: ['qemu'], imageRoots: guestImageRoots(image), heartbeatIntervalMs: 1000, deadAfterMs: 10_000 });
  try {
    const first = await startVne(c, image, 'coordinator + 2 agents (qemu driver) up; starting 4 guests (128 MiB, TCG) ...', 180_000);
    say('all 5 streams up (memory + disk load running); measuring ...');
    await sleep(3000);

    const problems: string[] = [];
    const check = async (label: string, before: Record<string, GuestStatus>): Promise<Record<string, GuestStatus>> => {
      await sleep(3000);
      const now = await allStatuses();
      problems.push(...intactProblems(label, before, now));
      return now;
    };

    let st = await allStatuses();
    const bg = await vnsnapSnapshot(c, 'background');
    st = await check('after background', st);
    const pc = await vnsnapSnapshot(c, 'precopy');
    st = await check('after precopy', st);
    say('    baseline: stop all, migrate each to a file, cont all');
    const base = await baseline(c.dir);
    await check('after baseline', st);

    // The precopy snapshot (VNsnap's mode) is the one restored; restore time does not depend on
    // the mode (same load path, images of similar size).
    say('    restore: the precopy snapshot over the running VNE ...');
    const t0 = Date.now();
    // The coordinator loads every VM paused in parallel, then resumes them all: from its
    // "loading N VMs paused" note to its "resumed" note is the slowest VM's own load + resume.
    let loadAt = 0;
    let resumedAt = 0;
    const rr = await c.cliStream<Ev>(['restore', pc.snap.id, '--stop-running'], (e, ms) => {
      if (e.note && /loading \d+ VMs paused/.test(e.note)) loadAt = ms;
      if (e.note && /VMs resumed/.test(e.note)) resumedAt = ms;
    }).done;
    const restoreS = (Date.now() - t0) / 1000;
    if (rr.code !== 0) throw new Error(`restore failed: ${rr.stderr.trim()}`);
    const perVm = loadAt && resumedAt ? [(resumedAt - loadAt) / 1000] : [];
    try {
      problems.push(...(await checkAfterRestore('after restore', first)));
    } catch (e) {
      problems.push(`after restore: ${(e as Error).message}`);
    }
    if (problems.length) say(`  guest consoles saved: ${saveConsoles('/var/tmp/vnsnap-bench-consoles').join(', ')}`);

    const out = {
      pause_ms: {
        background: { median: r1(median(bg.pauses)), max: r1(Math.max(...bg.pauses)) },
        precopy: { median: r1(median(pc.pauses)), max: r1(Math.max(...pc.pauses)) },
        baseline: { median: r1(median(base.pauses)), max: r1(Math.max(...base.pauses)) },
      },
      snapshot_s: { background: r2(bg.seconds), precopy: r2(pc.seconds), baseline: r2(base.seconds), slowest_single_vm: r2(base.slowestSingle) },
      restore_s: { vne: r2(restoreS), single_vm: r2(perVm.length ? Math.max(...perVm) : 0) },
      streams_intact: problems.length === 0,
    };
    for (const p of problems) say(`  PROBLEM: ${p}`);
    let distro: Awaited<ReturnType<typeof distroRun>> | undefined;
    let distroError: string | undefined;
    let imageVsUsed: number | undefined;
    if (!process.argv.includes('--no-distro')) {
      // the test guests' cluster goes first (destroy() is idempotent: the finally below repeats it)
      await c.cli(['vne', 'stop', E2E_VNE], 30_000).catch(() => undefined);
      killE2eQemus();
      await c.destroy();
      try {
        distro = await distroRun();
        for (const p of distro.problems) say(`  PROBLEM: ${p}`);
      } catch (e) {
        distroError = (e as Error).message; // the test guest's figures above still stand
        say(`  PROBLEM: distro guest run: ${distroError}`);
      }
      // ── image size against the guest's memory in use (test/bench/image-size.ts): one more distro guest, alone
      try {
        say('distro: image size against the memory in use (one guest, background snapshot) ...');
        const m = await measureDistroImage(buildDistroGuest(), { zeroFreed: true });
        imageVsUsed = Math.round(m.imageVsUsed * 100) / 100;
        say(`  image ${(m.imageBytes / 1048576).toFixed(1)} MiB, in use (MemTotal-MemFree) ${((m.mem.totalBytes - m.mem.freeBytes) / 1048576).toFixed(1)} MiB: ${imageVsUsed}x`);
      } catch (e) {
        say(`  PROBLEM: image size: ${(e as Error).message}`);
      }
      // ── end of the image-size block
    }
    if (JSON_OUT) {
      const d = distro ? { distro: { pause_ms: distro.pause_ms, streams_intact: distro.streams_intact } } : distroError ? { distro: { error: distroError } } : {};
      process.stdout.write(JSON.stringify({ ...out, ...d, ...(imageVsUsed !== undefined ? { image_vs_used: imageVsUsed } : {}) }) + '\n');
    } else {
      const row = (name: string, p: { median: number; max: number }, s: number): string => `  ${name.padEnd(11)} ${String(p.median).padStart(9)} ${String(p.max).padStart(9)} ${s.toFixed(2).padStart(11)}`;
      console.log('\n  4 VMs (128 MiB, TCG) on 2 hosts, streams + memory + disk load');
      console.log('  mode        pause med  pause max  snapshot s');
      console.log(row('background', out.pause_ms.background, bg.seconds));
      console.log(row('precopy', out.pause_ms.precopy, pc.seconds));
      console.log(row('baseline', out.pause_ms.baseline, base.seconds));
      console.log(`  baseline: slowest single-VM save ${base.slowestSingle.toFixed(2)} s, ${(base.bytes / 1048576).toFixed(0)} MiB written (memory only)`);
      console.log(`  ratios (baseline / vnsnap), median pause: background ${(out.pause_ms.baseline.median / Math.max(out.pause_ms.background.median, 0.1)).toFixed(1)}x, precopy ${(out.pause_ms.baseline.median / Math.max(out.pause_ms.precopy.median, 0.1)).toFixed(1)}x; max pause: background ${(out.pause_ms.baseline.max / Math.max(out.pause_ms.background.max, 0.1)).toFixed(1)}x, precopy ${(out.pause_ms.baseline.max / Math.max(out.pause_ms.precopy.max, 0.1)).toFixed(1)}x`);
      console.log(`  restore: whole VNE ${restoreS.toFixed(2)} s (the VMs' own load + resume ${out.restore_s.single_vm} s)`);
      console.log(`  streams, disks and memory intact through all of it: ${out.streams_intact ? 'yes' : 'NO'}`);
      if (distro) {
        const d = distro.pause_ms;
        console.log(`\n  distro guests: 4 VMs (Debian 12, systemd, ext4 root, 192 MiB, TCG), ${DISTRO_SNAPSHOTS} snapshots per mode, every VM's pause`);
        console.log('  mode        pause med  pause p95  pause max');
        for (const m of ['background', 'precopy', 'baseline'] as const) console.log(`  ${m.padEnd(11)} ${String(d[m].median).padStart(9)} ${String(d[m].p95).padStart(10)} ${String(d[m].max).padStart(10)}`);
        console.log(`  streams, disks and memory intact: ${distro.streams_intact ? 'yes' : 'NO'}`);
      }
      if (distroError) console.log(`\n  distro guests: the run failed: ${distroError}`);
    }
  } finally {
    await destroyE2eCluster(c);
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench:snapshot: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
