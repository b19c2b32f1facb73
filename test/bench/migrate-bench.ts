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
 *            machine; its NIC a stream socket nobody serves), `migrate tcp:ADDR:PORT` on the
 *            source's monitor with vnsnap's parameters (downtime limit 300 ms, 1 GiB/s) and its
 *            encryption: mutual TLS with the agents' certificates, as vnsnap's stream, and its
 *            downtime measured as vnsnap's: the source's STOP to the twin's RESUME (QEMU's event
 *            stamps); QEMU's own figure (query-migrate `downtime`, the source's stop to its
 *            completion) is printed beside it. The guest leaves vnsnap's network here, so this
 *            comes last.
 *
 * Per vnsnap round the progress lines break the downtime down (breakdown()), from the agents'
 * logs. Every step is bounded (step()); the cluster, the VNE's QEMUs, the twins and the
 * namespaces are removed at the end, on a failure and on SIGINT/SIGTERM.
 *
 *   npm run bench:migrate [-- --json] [-- --rounds N]
 *
 * With --json stdout is exactly one JSON object (progress goes to stderr):
 * {"downtime_ms":{"vnsnap":{"median","max"},"qemu":{"median","max"}},"total_s":{"vnsnap","qemu"},
 *  "disk_mib","streams_intact","disk_intact","tls"} — "tls": both sides' migration streams were
 * mutual TLS (true) or clear (false).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VnsnapError } from '../../proto/core/errors';
import { QmpClient } from '../../agent/drivers/qemu/qmp';
import { addTlsObjects, clearTlsObjects, TLS_AUTHZ, TLS_CREDS } from '../../agent/drivers/qemu/migration-tls';
import { forEachFlag, helpExit, usageExit, wholeArg } from './args';
import { median as medianOf } from './proc';
import { buildGuest, ensureQemu, guestImageRoots, type GuestImage, type GuestStatus } from '../guest/qemu-guest';
import { Cluster } from '../support/cluster';
import { FatalWait, sleep, until } from '../support/wait';
import { allStatuses, E2E_VNE, guestStatus, instanceDir, intactProblems, destroyE2eCluster, killE2eQemus, streamsUp, writeVneFile } from '../support/qemu-vne';

const USAGE = 'usage: npm run bench:migrate [-- --json] [-- --rounds N] [-- --help]   (default 3 rounds per side: vnsnap\'s migration and QEMU\'s own)';

/** The command line; a mistake exits 2 with the reason and the usage. */
function parseMigrateArgs(argv: readonly string[]): { json: boolean; rounds: number } {
  const out = { json: false, rounds: 3 };
  const usage = (msg: string): never => usageExit('bench:migrate', USAGE, msg);
  forEachFlag(argv, usage, (flag, value) => {
    if (flag === '--help') helpExit(USAGE);
    else if (flag === '--json') out.json = true;
    else if (flag === '--rounds') out.rounds = wholeArg(flag, value(), 1, usage);
    else usage(`unknown argument ${flag}`);
  });
  return out;
}
const ARGS = parseMigrateArgs(process.argv.slice(2));
const JSON_OUT = ARGS.json;
/**
 * The test cluster's gRPC links are mutual TLS (test/support/cluster.ts), so the agents encrypt
 * the migration streams too; the baseline then runs over TLS as well (qemuRound).
 */
const TLS = true;
const ROUNDS = ARGS.rounds;
/** Progress: to stderr under --json (stdout is the one JSON object). */
function say(s: string): void {
  (JSON_OUT ? process.stderr : process.stdout).write(s + '\n');
}
const median = (xs: readonly number[]): number => medianOf(xs) ?? 0;
const r1 = (x: number): number => Math.round(x * 10) / 10;
const r2 = (x: number): number => Math.round(x * 100) / 100;

/**
 * Every step of the bench is bounded: one that does not end within `ms` fails the run with its
 * name (`onTimeout` kills what it waited for), so the bench never hangs silently.
 */
async function step<T>(label: string, ms: number, f: () => Promise<T>, onTimeout?: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout?.();
      reject(new VnsnapError('ERR_TIMEOUT', `bench:migrate: ${label}: not done within ${Math.round(ms / 1000)} s`));
    }, ms);
  });
  try {
    return await Promise.race([f(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface Ev {
  migrated?: { migrationId: string; vms: { vm: string; downtimeMs?: number; totalMs?: string | number; diskBytes?: string | number }[] };
}

interface VnsnapRound {
  downtimeMs: number;
  seconds: number;
  diskBytes: number;
  /** Where the downtime went (ms), from the agents' logs: see breakdown(). */
  parts: Record<string, number>;
}

/** The agents' log lines (pino JSON) of one migration: message → { time ms, fields }. */
function migrationLog(c: Cluster, migrationId: string): Map<string, Record<string, unknown>> {
  const out = new Map<string, Record<string, unknown>>();
  for (const h of ['h1', 'h2']) {
    const f = path.join(c.dir, `${h}.log`);
    if (!fs.existsSync(f)) continue;
    for (const line of fs.readFileSync(f, 'utf8').split('\n')) {
      if (!line.includes(migrationId)) continue;
      try {
        const o = JSON.parse(line) as Record<string, unknown>;
        if (typeof o.msg === 'string') out.set(o.msg, o);
      } catch {
        /* not a JSON line */
      }
    }
  }
  return out;
}

/**
 * Where one VM's downtime went, from the agents' log stamps (ms): the source's STOP (QEMU's
 * stamp) → its mirror completed and the VM reported paused (`mirror`) → the destination's ports
 * attached (`attach`) → QEMU's migration completed at the source (`qemu_final`, its
 * migrate-continue to completed) → the source's reply (`source_done`) → the destination's
 * RESUME (`resume`); and QEMU's own downtime figure of that migration (`qemu_reported`).
 */
function breakdown(log: Map<string, Record<string, unknown>>, downtimeMs: number): Record<string, number> {
  const t = (msg: string): number | undefined => {
    const v = log.get(msg)?.time;
    return typeof v === 'number' ? v : undefined;
  };
  const paused = Number(log.get('migrating VM paused for the switchover')?.pausedUnixUs ?? 0) / 1000;
  const marks: [string, number | undefined][] = [
    ['mirror', t('migrating VM paused for the switchover')],
    ['attach', t('migrating VM attached (gated)')],
    ['qemu_final', t('QEMU migration completed')],
    ['source_done', t('migration switched over')],
  ];
  const parts: Record<string, number> = {};
  let prev = paused;
  for (const [name, at] of marks) {
    if (at === undefined || !paused) continue;
    parts[name] = r1(at - prev);
    prev = at;
  }
  if (paused) parts.resume = r1(paused + downtimeMs - prev);
  const q = log.get('QEMU migration completed')?.qemuDowntimeMs;
  if (typeof q === 'number') parts.qemu_reported = q;
  return parts;
}

async function vnsnapRound(c: Cluster, to: string): Promise<VnsnapRound> {
  const t0 = Date.now();
  const s = c.cliStream<Ev>(['migrate', E2E_VNE, '--place', `a=${to}`]);
  const r = await step(`vnsnap migrate a → ${to}`, 180_000, () => s.done, () => s.child.kill('SIGKILL'));
  const m = r.events.find((e) => e.migrated)?.migrated;
  const v = m?.vms[0];
  if (r.code !== 0 || !m || !v) throw new VnsnapError('ERR_INTERNAL', `bench:migrate: vnsnap migrate a → ${to} failed (exit ${String(r.code)}): ${r.stderr.trim()}`);
  const downtimeMs = Number(v.downtimeMs ?? 0);
  return { downtimeMs, seconds: (Date.now() - t0) / 1000, diskBytes: Number(v.diskBytes ?? 0), parts: breakdown(migrationLog(c, m.migrationId), downtimeMs) };
}

/**
 * The command line of a running QEMU, for its twin waiting for a RAM-only migration: its own
 * monitors, pidfile, serial, -S and -incoming dropped; the NIC on nothing: a TAP of the twin's
 * own name (the source's TAP name may be held by another QEMU on that host) or a stream socket
 * nobody serves; the channel in `dir`; `-incoming defer`.
 */
function incomingTwin(srcDir: string, dir: string): string[] {
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
    if (a === '-netdev') {
      // A TAP NIC's state carries vnet_hdr: the twin gets a TAP of its own name, in its namespace.
      const id = /id=([^,]*)/.exec(v)?.[1] ?? 'n0';
      out.push(a, v.startsWith('tap,') ? `tap,id=${id},ifname=vnmbt${path.basename(dir).replace(/\D/g, '')}${id},script=no,downscript=no,vnet_hdr=on` : `stream,id=${id},server=on,addr.type=unix,addr.path=${dir}/net-${id}.sock`);
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
  // Deferred: the listener opens (migrate-incoming) once the twin's TLS parameters are set.
  out.push('-qmp', `unix:${dir}/qmp.sock,server=on,wait=off`, '-pidfile', `${dir}/qemu.pid`, '-serial', `file:${dir}/console.log`, '-incoming', 'defer');
  return out;
}

interface QemuRound {
  /** The source's STOP to the twin's RESUME (QEMU's event stamps): vnsnap's definition. */
  downtimeMs: number;
  /** QEMU's own figure (query-migrate `downtime`: the source's stop to its completion). */
  reportedMs: number;
  seconds: number;
  /** The twin's monitor: the source of the next round. */
  twinQ: QmpClient;
}

/**
 * QEMU alone: migrate the guest's RAM from its QEMU (monitor `q`, on host `from`) to a twin on
 * `host`. With TLS, both ends get what vnsnap's agents give theirs (migration-tls.ts): the twin
 * server credentials of `host`'s agent certificate with the agent-only authz list, the source
 * client credentials of `from`'s agent certificate verifying the twin's as `host` (tls-hostname),
 * so the baseline pays the same encryption as vnsnap's stream.
 */
async function qemuRound(c: Cluster, q: QmpClient, srcDir: string, from: string, host: string, dir: string, twins: ChildProcess[]): Promise<QemuRound> {
  fs.mkdirSync(dir, { recursive: true });
  const addr = c.hostAddress(host);
  const port = 47000 + Math.floor(Math.random() * 1000);
  const twin = spawn('ip', ['netns', 'exec', c.topo.ns(host), 'qemu-system-x86_64', ...incomingTwin(srcDir, dir)], { stdio: ['ignore', 'ignore', 'pipe'] });
  twins.push(twin);
  let stderr = '';
  twin.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<never>((_, reject) => twin.once('exit', (code) => reject(new VnsnapError('ERR_DRIVER', `bench:migrate: the twin QEMU on ${host} exited (${String(code)}): ${stderr.trim()}`))));
  exited.catch(() => undefined);
  // One monitor connection for the twin's whole life (QEMU serves one client per socket): its
  // RESUME ends this round's downtime, and it is the next round's source.
  const tq = await step(`the twin QEMU on ${host} up`, 30_000, () => Promise.race([exited, QmpClient.connect(path.join(dir, 'qmp.sock'), { name: `twin on ${host}`, timeoutMs: 30_000 })]));
  await clearTlsObjects(q);
  if (TLS) {
    await addTlsObjects(tq, path.join(dir, 'tls'), c.pki.agent(host, [addr]), 'server', `the twin on ${host}`, from);
    await tq.execute('migrate-set-parameters', { 'tls-creds': TLS_CREDS, 'tls-authz': TLS_AUTHZ });
    await addTlsObjects(q, path.join(dir, 'source-tls'), c.pki.agent(from, [c.hostAddress(from)]), 'client', `the source on ${from}`);
  }
  await tq.execute('migrate-incoming', { uri: `tcp:${addr}:${port}` });
  const caps = await q.execute<{ capability: string }[]>('query-migrate-capabilities');
  await q.execute('migrate-set-capabilities', { capabilities: caps.map((x) => ({ capability: x.capability, state: x.capability === 'events' })) });
  await q.execute('migrate-set-parameters', { 'max-bandwidth': 1024 * 1024 * 1024, 'downtime-limit': 300, ...(TLS ? { 'tls-creds': TLS_CREDS, 'tls-hostname': host } : {}) });
  const stopped = q.waitEvent('STOP', () => true, 120_000);
  const resumed = tq.waitEvent('RESUME', () => true, 120_000);
  stopped.catch(() => undefined);
  resumed.catch(() => undefined);
  const t0 = Date.now();
  await q.execute('migrate', { uri: `tcp:${addr}:${port}` });
  const info = await step(`QEMU's own migration → ${host}`, 120_000, () =>
    Promise.race([
      exited,
      until('QEMU migration done', async () => {
        const st = await q.execute<{ status?: string; downtime?: number; 'error-desc'?: string }>('query-migrate');
        if (st.status === 'failed' || st.status === 'cancelled') throw new FatalWait(`bench:migrate: QEMU's migration → ${host} ${st.status}: ${st['error-desc'] ?? ''} ${stderr.trim()}`);
        return st.status === 'completed' ? st : undefined;
      }, { timeoutMs: 120_000, everyMs: 20 }),
    ]),
  );
  const [stop, resume] = await step(`the twin on ${host} running`, 30_000, () => Promise.all([stopped, resumed]));
  return { downtimeMs: (resume.timestampUs - stop.timestampUs) / 1000, reportedMs: Number(info.downtime ?? 0), seconds: (Date.now() - t0) / 1000, twinQ: tq };
}

/** The qcow2 of guest a's running QEMU (the disk the last migration mirrored). */
function diskOf(dir: string): string {
  const pid = Number(fs.readFileSync(path.join(dir, 'qemu.pid'), 'utf8').trim());
  const f = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').map((a) => /filename=([^,]+\.qcow2)/.exec(a)?.[1]).find(Boolean);
  if (!f) throw new VnsnapError('ERR_INTERNAL', `bench:migrate: no qcow2 disk on the command line of ${dir}`);
  return f;
}

/**
 * The disk check on the host: every record guest a's writer has completed (its status, read
 * first) is on the disk the migrations left it, and no slot is corrupt (vnguest disk-scan of a
 * raw copy of the running qcow2).
 */
async function diskProblems(c: Cluster, image: GuestImage): Promise<string[]> {
  const dir = instanceDir('a');
  if (!dir) return ['a: no running QEMU after the vnsnap rounds'];
  const st = await guestStatus('a');
  const raw = path.join(c.dir, 'a-disk.raw');
  execFileSync('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', diskOf(dir), raw], { timeout: 60_000 });
  const scan = JSON.parse(execFileSync(image.tool, ['disk-scan', raw], { encoding: 'utf8', timeout: 60_000 })) as { last_record: number; valid: number; corrupt: number };
  fs.rmSync(raw, { force: true });
  const p: string[] = [];
  if (scan.corrupt !== 0) p.push(`a's disk: ${scan.corrupt} corrupt slots`);
  if (scan.last_record < st.disk.records) p.push(`a's disk: last record ${scan.last_record}, the guest had completed ${st.disk.records}`);
  if (scan.valid !== Math.min(scan.last_record, st.disk.slots)) p.push(`a's disk: ${scan.valid} valid records of ${scan.last_record}`);
  if (st.disk.errors !== 0) p.push(`a's disk: the guest counts ${st.disk.errors} errors (${st.disk.first_error})`);
  return p;
}

// ---- cleanup: on the end, a failure, SIGINT or SIGTERM ----------------------------------------

let cluster: Cluster | undefined;
const twins: ChildProcess[] = [];
let cleaning: Promise<void> | undefined;

/** Kill the twins, stop the VNE, remove the cluster (namespaces, processes, directory). Bounded; once. */
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const t of twins) if (t.exitCode === null && t.signalCode === null) t.kill('SIGKILL');
    const c = cluster;
    if (!c) return;
    saveLogs(c);
    await step('removing the cluster', 90_000, () => destroyE2eCluster(c)).catch((e: Error) => {
      process.stderr.write(`bench:migrate: ${e.message}; killing what is left\n`);
      killE2eQemus();
    });
  })();
  return cleaning;
}

/** The cluster's logs (agents, coordinator) kept where the run's figures can be traced: LOGS. */
const LOGS = '/var/tmp/vnsnap-migbench-logs';
function saveLogs(c: Cluster): void {
  try {
    fs.rmSync(LOGS, { recursive: true, force: true });
    fs.mkdirSync(LOGS, { recursive: true });
    for (const f of fs.readdirSync(c.dir).filter((x) => x.endsWith('.log'))) fs.copyFileSync(path.join(c.dir, f), path.join(LOGS, f));
  } catch (e) {
    process.stderr.write(`bench:migrate: the logs were not kept: ${(e as Error).message}\n`);
  }
}

function onSignal(sig: NodeJS.Signals): void {
  process.stderr.write(`bench:migrate: ${sig}: cleaning up\n`);
  void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new VnsnapError('ERR_FAILED_PRECONDITION', 'bench:migrate needs root (namespaces, QEMU)');
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  ensureQemu();
  say('guest image (built once, cached) ...');
  const image = buildGuest();
  const c = new Cluster({ prefix: 'vnmb', hosts: ['h1', 'h2'], drivers: ['qemu'], imageRoots: guestImageRoots(image), heartbeatIntervalMs: 1000, deadAfterMs: 10_000 });
  cluster = c;
  killE2eQemus();
  await step('the cluster up', 60_000, () => c.start());
  say('coordinator + 2 agents up; starting 4 guests (128 MiB, TCG) ...');
  await step('vne define + start', 120_000, async () => {
    await c.cliJson(['vne', 'define', writeVneFile(c.dir, image, { monitor: true })]);
    await c.cliJson(['vne', 'start', E2E_VNE]);
  });
  const first = (await until('every stream up', async () => {
    const st = await allStatuses();
    return streamsUp(st) ? st : undefined;
  }, { timeoutMs: 180_000, everyMs: 2000 })) as Record<string, GuestStatus>;
  await sleep(3000); // kept: the load settles before the first round

  const v: VnsnapRound[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const to = i % 2 === 0 ? 'h2' : 'h1';
    const r = await vnsnapRound(c, to);
    say(`  vnsnap round ${i + 1}: a → ${to}: downtime ${r.downtimeMs.toFixed(1)} ms (${Object.entries(r.parts).map(([k, x]) => `${k} ${x}`).join(', ')}), ${r.seconds.toFixed(1)} s`);
    v.push(r);
  }
  await sleep(4000); // kept: the window over which every stream must move and none break
  const after = await step('the guests\' status after the vnsnap rounds', 60_000, () => allStatuses());
  const problems = intactProblems('after the vnsnap rounds', first, after).filter((p) => !/disk/.test(p));
  const diskP = [...intactProblems('after the vnsnap rounds', first, after).filter((p) => /disk/.test(p)), ...(await step('the disk check', 120_000, () => diskProblems(c, image)))];
  for (const p of [...problems, ...diskP]) say(`  PROBLEM: ${p}`);

  // QEMU alone, RAM only, between the two hosts: the guest leaves the VNE's network here.
  const qd: QemuRound[] = [];
  let srcDir = instanceDir('a');
  if (!srcDir) throw new VnsnapError('ERR_INTERNAL', 'bench:migrate: guest a has no running QEMU after the vnsnap rounds');
  let host = ROUNDS % 2 === 0 ? 'h1' : 'h2'; // where a runs now; the twin goes to the other
  let q = await QmpClient.connect(path.join(srcDir, 'monitor.sock'), { name: 'a monitor', timeoutMs: 10_000 });
  try {
    for (let i = 0; i < ROUNDS; i++) {
      const from = host;
      host = host === 'h1' ? 'h2' : 'h1';
      const dir = path.join(c.dir, `twin-${i}`);
      const r = await qemuRound(c, q, srcDir, from, host, dir, twins);
      say(`  qemu round ${i + 1}: → ${host}: downtime ${r.downtimeMs.toFixed(1)} ms (QEMU reports ${r.reportedMs} ms), ${r.seconds.toFixed(1)} s`);
      qd.push(r);
      q.close();
      if (i > 0) twins[i - 1]?.kill('SIGKILL'); // the previous twin, paused after sending: out of the way
      q = r.twinQ;
      srcDir = dir;
    }
  } finally {
    q.close();
  }

  const out = {
    downtime_ms: {
      vnsnap: { median: r1(median(v.map((x) => x.downtimeMs))), max: r1(Math.max(...v.map((x) => x.downtimeMs))) },
      qemu: { median: r1(median(qd.map((x) => x.downtimeMs))), max: r1(Math.max(...qd.map((x) => x.downtimeMs))) },
    },
    total_s: { vnsnap: r2(median(v.map((x) => x.seconds))), qemu: r2(median(qd.map((x) => x.seconds))) },
    disk_mib: r1(median(v.map((x) => x.diskBytes)) / 1048576),
    streams_intact: problems.length === 0,
    disk_intact: diskP.length === 0,
    /** The encryption both sides' migration streams used: mutual TLS (QEMU tls-creds-x509) or clear. */
    tls: TLS,
  };
  const ratio = out.downtime_ms.qemu.median > 0 ? out.downtime_ms.vnsnap.median / out.downtime_ms.qemu.median : NaN;
  if (JSON_OUT) {
    process.stdout.write(JSON.stringify(out) + '\n');
    say(`  downtime ratio vnsnap/qemu (medians): ${ratio.toFixed(2)} (target ≤ 1.5)`);
  } else {
    console.log(`\n  guest a (128 MiB, TCG, streams + memory + disk load), ${ROUNDS} rounds each`);
    console.log(`  downtime ms  vnsnap median ${out.downtime_ms.vnsnap.median} max ${out.downtime_ms.vnsnap.max}; qemu (RAM only) median ${out.downtime_ms.qemu.median} max ${out.downtime_ms.qemu.max}; ratio ${ratio.toFixed(2)} (target ≤ 1.5)`);
    console.log(`  total s      vnsnap ${out.total_s.vnsnap} (disk ${out.disk_mib} MiB mirrored); qemu ${out.total_s.qemu}`);
    console.log(`  streams intact: ${out.streams_intact ? 'yes' : 'NO'}; disk intact: ${out.disk_intact ? 'yes' : 'NO'}`);
  }
}

main()
  .then(() => cleanup())
  .then(
    () => process.exit(0),
    async (e: unknown) => {
      process.stderr.write(`bench:migrate: ${(e as Error).message ?? String(e)}\n`);
      await cleanup();
      process.exit(1);
    },
  );
