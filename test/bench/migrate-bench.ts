/**
 * bench:migrate (issue 16): the downtime of a live migration with vnsnap (disk mirrored, memory
 * pre-copied, ports moved on the overlay) against QEMU's own RAM-only migration of the same
 * guest between two QEMU processes on the same two hosts, without vnsnap.
 *
 * One run: two namespaced hosts (test/support/cluster.ts, `"drivers": ["qemu"]`), the four-guest
 * VNE of test/support/qemu-vne.ts under its standard load (byte-checked TCP streams, memory and
 * disk writers; a second QMP monitor per VM for the baseline). Measured:
 *
 *   vnsnap   `vnsnap migrate --place a=HOST`, N rounds (h1 → h2, h2 → h1, ...): each round's
 *            downtime from the MigrationResult (the source's STOP to the destination's RESUME,
 *            QEMU's event stamps), its total time, and the disk bytes mirrored; after the rounds
 *            every stream and disk checker of the VNE must be intact.
 *   qemu     then, N rounds of QEMU's own migration of guest a, RAM only, between QEMU
 *            processes on the two hosts: a destination QEMU started in the other host's network
 *            namespace with a's command line (its disk the same file: shared storage on this
 *            machine; its NIC on a socket nobody serves), `migrate tcp:ADDR:PORT` on the source's
 *            monitor with QEMU's defaults (downtime limit 300 ms, as vnsnap's), and the downtime
 *            QEMU reports (query-migrate `downtime`). The guest leaves vnsnap's network here, so
 *            this comes last.
 *
 *   npm run bench:migrate [-- --json] [-- --rounds N]
 *
 * With --json stdout is exactly one JSON object (progress goes to stderr):
 * {"downtime_ms":{"vnsnap":{"median","max"},"qemu":{"median","max"}},"total_s":{"vnsnap","qemu"},
 *  "disk_mib","streams_intact","disk_intact"}
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QmpClient } from '../../agent/drivers/qemu/qmp';
import { median as medianOf } from './proc';
import { buildGuest, ensureQemu, guestImageRoots, type GuestStatus } from '../guest/qemu-guest';
import { Cluster, sleep, until } from '../support/cluster';
import { allStatuses, E2E_VNE, instanceDir, intactProblems, destroyE2eCluster, killE2eQemus, streamsUp, writeVneFile } from '../support/qemu-vne';

const JSON_OUT = process.argv.includes('--json');
const ROUNDS = Number(process.argv[process.argv.indexOf('--rounds') + 1] ?? '') || 3;
/** Progress: to stderr under --json (stdout is the one JSON object). */
function say(s: string): void {
  (JSON_OUT ? process.stderr : process.stdout).write(s + '\n');
}
const median = (xs: readonly number[]): number => medianOf(xs) ?? 0;
const r1 = (x: number): number => Math.round(x * 10) / 10;
const r2 = (x: number): number => Math.round(x * 100) / 100;

interface Ev {
  migrated?: { vms: { vm: string; downtimeMs?: number; totalMs?: string | number; diskBytes?: string | number }[] };
}

async function vnsnapRound(c: Cluster, to: string): Promise<{ downtimeMs: number; seconds: number; diskBytes: number }> {
  const t0 = Date.now();
  const r = await c.cliStream<Ev>(['migrate', E2E_VNE, '--place', `a=${to}`]).done;
  const v = r.events.find((e) => e.migrated)?.migrated?.vms[0];
  if (r.code !== 0 || !v) throw new Error(`vnsnap migrate a → ${to} failed: ${r.stderr.trim()}`);
  return { downtimeMs: Number(v.downtimeMs ?? 0), seconds: (Date.now() - t0) / 1000, diskBytes: Number(v.diskBytes ?? 0) };
}

/** The command line of a running QEMU, to start its twin waiting for a RAM-only migration. */
function incomingTwin(srcDir: string, dir: string, listen: string): string[] {
  const pid = Number(fs.readFileSync(path.join(srcDir, 'qemu.pid'), 'utf8').trim());
  const args = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).slice(1);
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    const v = args[i + 1] ?? '';
    if (a === '-qmp' || a === '-pidfile' || a === '-serial' || a === '-incoming' || a === '-S') {
      if (a !== '-S') i++;
      continue;
    }
    if (a === '-netdev' && v.startsWith('stream,')) {
      out.push(a, v.replace(/server=off/, 'server=on').replace(/addr\.path=[^,]*/, `addr.path=${dir}/net.sock`));
      i++;
      continue;
    }
    if (a === '-chardev' && v.startsWith('socket,id=ch0')) {
      out.push(a, v.replace(/path=[^,]*/, `path=${dir}/channel.sock`));
      i++;
      continue;
    }
    out.push(a);
  }
  out.push('-qmp', `unix:${dir}/qmp.sock,server=on,wait=off`, '-pidfile', `${dir}/qemu.pid`, '-serial', `file:${dir}/console.log`, '-incoming', `tcp:${listen}`);
  return out;
}

/** QEMU alone: migrate the guest's RAM from its QEMU (monitor `q`) to a twin on `host`; QEMU's downtime. */
async function qemuRound(c: Cluster, q: QmpClient, srcDir: string, host: string, dir: string): Promise<{ downtimeMs: number; seconds: number; twin: ChildProcess; twinDir: string }> {
  fs.mkdirSync(dir, { recursive: true });
  const addr = c.hostAddress(host);
  const port = 47000 + Math.floor(Math.random() * 1000);
  const twin = spawn('ip', ['netns', 'exec', c.topo.ns(host), 'qemu-system-x86_64', ...incomingTwin(srcDir, dir, `${addr}:${port}`)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  twin.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  await until('the twin QEMU listening', () => fs.existsSync(`${dir}/qmp.sock`) || undefined, { timeoutMs: 20_000, everyMs: 50 });
  const caps = await q.execute<{ capability: string }[]>('query-migrate-capabilities');
  await q.execute('migrate-set-capabilities', { capabilities: caps.map((x) => ({ capability: x.capability, state: x.capability === 'events' })) });
  await q.execute('migrate-set-parameters', { 'max-bandwidth': 1024 * 1024 * 1024, 'downtime-limit': 300 });
  const t0 = Date.now();
  await q.execute('migrate', { uri: `tcp:${addr}:${port}` });
  const info = await until('QEMU migration done', async () => {
    const st = await q.execute<{ status?: string; downtime?: number; 'error-desc'?: string }>('query-migrate');
    if (st.status === 'failed' || st.status === 'cancelled') throw new Error(`qemu migrate: ${st.status} ${st['error-desc'] ?? ''} ${stderr}`);
    return st.status === 'completed' ? st : undefined;
  }, { timeoutMs: 300_000, everyMs: 20 });
  return { downtimeMs: Number(info?.downtime ?? 0), seconds: (Date.now() - t0) / 1000, twin, twinDir: dir };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench:migrate needs root (namespaces, QEMU)');
  ensureQemu();
  say('guest image (built once, cached) ...');
  const image = buildGuest();
  const c = new Cluster({ prefix: 'vnmb', hosts: ['h1', 'h2'], drivers: ['qemu'], imageRoots: guestImageRoots(image), heartbeatIntervalMs: 1000, deadAfterMs: 10_000 });
  const twins: ChildProcess[] = [];
  try {
    killE2eQemus();
    await c.start();
    say('coordinator + 2 agents up; starting 4 guests (128 MiB, TCG) ...');
    await c.cliJson(['vne', 'define', writeVneFile(c.dir, image, { monitor: true })]);
    await c.cliJson(['vne', 'start', E2E_VNE]);
    const first = await until('every stream up', async () => {
      const st = await allStatuses();
      return streamsUp(st) ? st : undefined;
    }, { timeoutMs: 180_000, everyMs: 2000 }) as Record<string, GuestStatus>;
    await sleep(3000); // kept: the load settles before the first round

    const v: { downtimeMs: number; seconds: number; diskBytes: number }[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      const to = i % 2 === 0 ? 'h2' : 'h1';
      const r = await vnsnapRound(c, to);
      say(`  vnsnap round ${i + 1}: a → ${to}: downtime ${r.downtimeMs.toFixed(1)} ms, ${r.seconds.toFixed(1)} s`);
      v.push(r);
    }
    await sleep(4000); // kept: the window over which every stream must move and none break
    const after = await allStatuses();
    const problems = intactProblems('after the vnsnap rounds', first, after);
    const diskProblems = problems.filter((p) => /disk/.test(p));
    for (const p of problems) say(`  PROBLEM: ${p}`);

    // QEMU alone, RAM only, between the two hosts: the guest leaves the VNE's network here.
    const qd: { downtimeMs: number; seconds: number }[] = [];
    let srcDir = instanceDir('a') as string;
    let host = ROUNDS % 2 === 0 ? 'h2' : 'h1'; // where a runs now; the twin goes to the other
    let q = await QmpClient.connect(path.join(srcDir, 'monitor.sock'), { name: 'a monitor', timeoutMs: 10_000 });
    for (let i = 0; i < ROUNDS; i++) {
      host = host === 'h1' ? 'h2' : 'h1';
      const r = await qemuRound(c, q, srcDir, host, path.join(c.dir, `twin-${i}`));
      twins.push(r.twin);
      say(`  qemu round ${i + 1}: → ${host}: downtime ${r.downtimeMs.toFixed(1)} ms, ${r.seconds.toFixed(1)} s`);
      qd.push(r);
      q.close();
      q = await QmpClient.connect(path.join(r.twinDir, 'qmp.sock'), { name: `twin ${i}`, timeoutMs: 10_000 });
      srcDir = r.twinDir;
    }
    q.close();

    const out = {
      downtime_ms: {
        vnsnap: { median: r1(median(v.map((x) => x.downtimeMs))), max: r1(Math.max(...v.map((x) => x.downtimeMs))) },
        qemu: { median: r1(median(qd.map((x) => x.downtimeMs))), max: r1(Math.max(...qd.map((x) => x.downtimeMs))) },
      },
      total_s: { vnsnap: r2(median(v.map((x) => x.seconds))), qemu: r2(median(qd.map((x) => x.seconds))) },
      disk_mib: r1(median(v.map((x) => x.diskBytes)) / 1048576),
      streams_intact: problems.length === 0,
      disk_intact: diskProblems.length === 0,
    };
    if (JSON_OUT) process.stdout.write(JSON.stringify(out) + '\n');
    else {
      console.log(`\n  guest a (128 MiB, TCG, streams + memory + disk load), ${ROUNDS} rounds each`);
      console.log(`  downtime ms  vnsnap median ${out.downtime_ms.vnsnap.median} max ${out.downtime_ms.vnsnap.max}; qemu (RAM only) median ${out.downtime_ms.qemu.median} max ${out.downtime_ms.qemu.max}`);
      console.log(`  total s      vnsnap ${out.total_s.vnsnap} (disk ${out.disk_mib} MiB mirrored); qemu ${out.total_s.qemu}`);
      console.log(`  streams intact: ${out.streams_intact ? 'yes' : 'NO'}; disk intact: ${out.disk_intact ? 'yes' : 'NO'}`);
    }
  } finally {
    for (const t of twins) t.kill('SIGKILL');
    await destroyE2eCluster(c);
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench:migrate: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
