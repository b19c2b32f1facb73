/**
 * bench:store (issue 14): what the content-addressed store costs and saves on a real VNE, into
 * the local store and into a real S3 server (Ceph RGW on loopback), side by side in one run.
 *
 * Per backend, one cluster (test/support/cluster.ts: two namespaced hosts, the qemu driver, the
 * store named by `store`), the four-guest VNE of the e2e tests under its usual load (checked TCP
 * streams across and within hosts, memory and disk writers: test/support/qemu-vne.ts), and:
 *
 *   persist_s     `vnsnap snapshot create` to COMPLETE (every image and disk layer durable in the
 *                 store, manifest written), N snapshots INTERVAL seconds apart: the first (every
 *                 chunk new) and the median of the later ones
 *   stored_mib    bytes the N snapshots added to the store (the catalog's bytes added per snapshot)
 *   later_added_fraction  per later snapshot, bytes added / its logical size: median, p95
 *                 (interpolated, as persist's), max
 *   logical_mib   their logical size (what full copies, the store before chunks, would hold)
 *   restore_s     `vnsnap restore LAST --stop-running` with every VM placed on the other host (a
 *                 host that did not write its images), then the guests checked: every stream,
 *                 disk checker and memory checker continues from the snapshot (restores_exact)
 *
 * Targets (issue 14): each later snapshot adds <= 25 % of its logical size; persist into S3
 * <= 1.5x into the local store; restore from S3 <= 1.5x from the local store.
 *
 *   npm run bench:store [-- --json] [--snapshots N] [--interval S] [--backends local,s3]
 *
 * With --json stdout is exactly one JSON object (progress on stderr).
 */
import * as os from 'node:os';
import { buildGuest, ensureQemu, guestImageRoots, type GuestStatus } from '../guest/qemu-guest';
import { Cluster, until, type CatalogSnapshot } from '../support/cluster';
import { allStatuses, checkAfterRestore, E2E_SWAPPED, E2E_VMS, E2E_VNE, destroyE2eCluster, killE2eQemus, streamsUp, writeVneFile } from '../support/qemu-vne';
import { sleep } from '../support/wait';
import { forEachFlag, usageExit } from './args';

const USAGE = 'usage: npm run bench:store [-- --json] [--snapshots N] [--interval SECONDS] [--backends local,s3]';
type Backend = 'local' | 's3';

interface Options {
  json: boolean;
  snapshots: number;
  intervalS: number;
  backends: Backend[];
}

function parseOptions(argv: readonly string[]): Options {
  const o: Options = { json: false, snapshots: 10, intervalS: 20, backends: ['local', 's3'] };
  const usage = (m: string): never => usageExit('bench:store', USAGE, m);
  const int = (v: string, flag: string, min: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) usage(`${flag} expects an integer >= ${min}, got "${v}"`);
    return n;
  };
  forEachFlag(argv, usage, (flag, value, arg) => {
    if (flag === '--json') o.json = true;
    else if (flag === '--snapshots') o.snapshots = int(value(), flag, 2);
    else if (flag === '--interval') o.intervalS = int(value(), flag, 0);
    else if (flag === '--backends') {
      const b = value().split(',');
      for (const x of b) if (x !== 'local' && x !== 's3') usage(`--backends expects local and/or s3, got "${x}"`);
      o.backends = b as Backend[];
    } else if (flag === '--help' || flag === '-h') usageExit('bench:store', USAGE);
    else usage(`unknown argument "${arg}"`);
  });
  return o;
}

const opts = parseOptions(process.argv.slice(2));
const say = (s: string): void => {
  if (opts.json) process.stderr.write(s + '\n');
  else console.log(s);
};

const MiB = 1024 * 1024;
const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return 0;
  const i = (s.length - 1) * q;
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return (s[lo] as number) + ((s[hi] as number) - (s[lo] as number)) * (i - lo);
};
const r2 = (x: number): number => Math.round(x * 100) / 100;

/** A catalog snapshot with the store's byte counts (`snapshot list/show --json`). */
type StoredSnapshot = CatalogSnapshot & { sizeBytes?: number | string; storedBytes?: number | string };

interface BackendResult {
  persist_s: { first: number; later_median: number; later_p95: number; later_max: number };
  stored_mib: number;
  logical_mib: number;
  /** Per later snapshot: bytes added / logical bytes. */
  later_added_fraction: { median: number; p95: number; max: number };
  restore_s: number;
  restores_exact: boolean;
  problems: string[];
}

async function runBackend(backend: Backend, image: ReturnType<typeof buildGuest>): Promise<BackendResult> {
  killE2eQemus();
  const c = new Cluster({ prefix: backend === 'local' ? 'vnstl' : 'vnsts', hosts: ['h1', 'h2'], drivers: ['qemu'], imageRoots: guestImageRoots(image), heartbeatIntervalMs: 1000, deadAfterMs: 10_000, store: backend });
  const problems: string[] = [];
  try {
    await c.start();
    say(`[${backend}] coordinator + 2 agents up (store ${backend}); starting 4 guests (128 MiB, TCG) ...`);
    await c.cliJson(['vne', 'define', writeVneFile(c.dir, image)]);
    await c.cliJson(['vne', 'start', E2E_VNE]);
    const first = (await until('every stream up', async () => {
      const st = await allStatuses();
      return streamsUp(st) ? st : undefined;
    }, { timeoutMs: 180_000, everyMs: 2000 })) as Record<string, GuestStatus>;
    say(`[${backend}] all streams up; ${opts.snapshots} snapshots ${opts.intervalS} s apart ...`);

    const persist: number[] = [];
    const snaps: StoredSnapshot[] = [];
    for (let i = 0; i < opts.snapshots; i++) {
      const started = Date.now();
      const r = await c.cliStream<{ done?: StoredSnapshot }>(['snapshot', 'create', E2E_VNE, '--mode', 'background', '--description', `bench:store ${i + 1}`]).done;
      const s = (Date.now() - started) / 1000;
      const done = r.events[r.events.length - 1]?.done;
      if (r.code !== 0 || !done || done.state !== 'SNAPSHOT_STATE_COMPLETE') throw new Error(`[${backend}] snapshot ${i + 1} failed: ${r.stderr.trim()} ${done?.error ?? ''}`);
      const shown = await c.cliJson<StoredSnapshot>(['snapshot', 'show', done.id]);
      snaps.push(shown);
      persist.push(s);
      say(`[${backend}]   snapshot ${i + 1}: ${s.toFixed(2)} s, ${(Number(shown.sizeBytes ?? 0) / MiB).toFixed(1)} MiB logical, ${(Number(shown.storedBytes ?? 0) / MiB).toFixed(1)} MiB added`);
      const wait = opts.intervalS * 1000 - (Date.now() - started);
      if (i + 1 < opts.snapshots && wait > 0) await sleep(wait); // the schedule under test: one snapshot per interval
    }
    const logical = snaps.map((s) => Number(s.sizeBytes ?? 0));
    const stored = snaps.map((s) => Number(s.storedBytes ?? 0));
    if (stored.some((b, i) => !Number.isFinite(b) || b > (logical[i] as number))) problems.push(`[${backend}] a snapshot reports more bytes added than its size`);
    const laterFrac = stored.slice(1).map((b, i) => b / Math.max(1, logical[i + 1] as number));

    const last = snaps[snaps.length - 1] as StoredSnapshot;
    say(`[${backend}] restore of ${last.id}, every VM on the other host ...`);
    const place = E2E_VMS.flatMap((vm) => ['--place', `${vm}=${E2E_SWAPPED[vm] as string}`]);
    const t0 = Date.now();
    const rr = await c.cliStream(['restore', last.id, '--stop-running', ...place]).done;
    const restoreS = (Date.now() - t0) / 1000;
    if (rr.code !== 0) throw new Error(`[${backend}] restore failed: ${rr.stderr.trim()}`);
    try {
      problems.push(...(await checkAfterRestore(`[${backend}] after restore`, first)));
    } catch (e) {
      problems.push(`[${backend}] after restore: ${(e as Error).message}`);
    }
    return {
      persist_s: { first: r2(persist[0] as number), later_median: r2(quantile(persist.slice(1), 0.5)), later_p95: r2(quantile(persist.slice(1), 0.95)), later_max: r2(Math.max(...persist.slice(1))) },
      stored_mib: r2(stored.reduce((a, b) => a + b, 0) / MiB),
      logical_mib: r2(logical.reduce((a, b) => a + b, 0) / MiB),
      later_added_fraction: { median: r2(quantile(laterFrac, 0.5)), p95: r2(quantile(laterFrac, 0.95)), max: r2(Math.max(...laterFrac)) },
      restore_s: r2(restoreS),
      restores_exact: problems.length === 0,
      problems,
    };
  } finally {
    await destroyE2eCluster(c);
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench:store needs root (namespaces, QEMU, Ceph)');
  ensureQemu();
  say('guest image (built once, cached) ...');
  const image = buildGuest();
  const load0 = os.loadavg()[0] as number;
  const results: Partial<Record<Backend, BackendResult>> = {};
  for (const b of opts.backends) results[b] = await runBackend(b, image);
  const load1 = os.loadavg()[0] as number;
  const all = Object.values(results) as BackendResult[];
  const logical = all.reduce((n, r) => n + r.logical_mib, 0);
  const stored = all.reduce((n, r) => n + r.stored_mib, 0);
  const strip = (r: BackendResult | undefined): Omit<BackendResult, 'problems'> | undefined => {
    if (!r) return undefined;
    const { problems: _p, ...rest } = r;
    void _p;
    return rest;
  };
  const out = {
    local: strip(results.local),
    s3: strip(results.s3),
    dedup_ratio: r2(logical / Math.max(stored, 0.01)),
    restores_exact: all.every((r) => r.restores_exact),
    ratios: results.local && results.s3 ? { persist_later_s3_over_local: r2(results.s3.persist_s.later_median / Math.max(results.local.persist_s.later_median, 0.01)), restore_s3_over_local: r2(results.s3.restore_s / Math.max(results.local.restore_s, 0.01)) } : undefined,
    load: { start: r2(load0), end: r2(load1), cpus: os.cpus().length },
  };
  for (const r of all) for (const p of r.problems) say(`  PROBLEM: ${p}`);
  if (opts.json) {
    process.stdout.write(JSON.stringify(out) + '\n');
    return;
  }
  console.log(`\n  ${opts.snapshots} snapshots ${opts.intervalS} s apart of 4 VMs (128 MiB, TCG) on 2 hosts under load; load ${out.load.start} -> ${out.load.end} on ${out.load.cpus} CPUs`);
  console.log('  store  persist first  later med  later p95  later max  added/logical (later, med/p95/max)  stored MiB  logical MiB  restore s');
  for (const b of opts.backends) {
    const r = results[b] as BackendResult;
    console.log(`  ${b.padEnd(5)}  ${r.persist_s.first.toFixed(2).padStart(13)}  ${r.persist_s.later_median.toFixed(2).padStart(9)}  ${r.persist_s.later_p95.toFixed(2).padStart(9)}  ${r.persist_s.later_max.toFixed(2).padStart(9)}  ${`${(r.later_added_fraction.median * 100).toFixed(0)} % / ${(r.later_added_fraction.p95 * 100).toFixed(0)} % / ${(r.later_added_fraction.max * 100).toFixed(0)} %`.padStart(34)}  ${r.stored_mib.toFixed(1).padStart(10)}  ${r.logical_mib.toFixed(1).padStart(11)}  ${r.restore_s.toFixed(2).padStart(9)}`);
  }
  if (out.ratios) console.log(`  S3 / local: persist (later, median) ${out.ratios.persist_later_s3_over_local}x, restore ${out.ratios.restore_s3_over_local}x (targets <= 1.5x)`);
  console.log(`  dedup ratio (logical / stored): ${out.dedup_ratio}; restores exact: ${out.restores_exact ? 'yes' : 'NO'}`);
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench:store: ${(e as Error).message}\n`);
    process.exit(1);
  },
);
