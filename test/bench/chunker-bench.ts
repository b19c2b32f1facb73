/**
 * The chunker bench: how fast each way of cutting snapshot artefacts into chunks runs on one
 * core, and how much of a later snapshot is new after an earlier one was stored — the numbers
 * behind the choice written down in docs/storage.md ("Chunking").
 *
 *   npm run bench:chunker -- [--json] FILE...               measure files, in order (oldest first)
 *   npm run bench:chunker -- [--json] --make DIR [--count 3] [--interval-s 4] [--mem-mib 256] [--load-mib 64]
 *       first make the files: boot the test guest under QEMU with its memory workload, and take
 *       `count` memory images `interval-s` apart (QMP `migrate` to `exec:cat > DIR/mem-N.img`,
 *       then `cont`), then measure them.
 *
 * For every parameter set (FastCDC min/avg/max, and fixed blocks as the baseline): chunking
 * throughput (MB/s of input, chunk boundaries only, one core), the mean chunk size, and for each
 * file after the first the bytes not already stored by the files before it (what a
 * content-addressed store would add for it). Also SHA-256 throughput (node:crypto), the other
 * cost every byte pays.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { QmpClient } from '../../agent/drivers/qemu/qmp';
import { Chunker, FixedChunker, type ChunkSplitter } from '../../proto/store/chunker';
import { buildGuest, ensureQemu, guestFiles, kernelCmdline, serialStatuses } from '../guest/qemu-guest';
import { sleep, until } from '../support/wait';
import { forEachFlag, usageExit } from './args';

const KiB = 1024;
const USAGE = 'usage: chunker-bench [--json] [--make DIR [--count N] [--interval-s S] [--mem-mib M] [--load-mib L]] [FILE...]';

interface Options {
  json: boolean;
  make?: string;
  count: number;
  intervalS: number;
  memMib: number;
  loadMib: number;
  files: string[];
}

interface ParamSet {
  name: string;
  make: () => ChunkSplitter;
}

const PARAM_SETS: ParamSet[] = [
  { name: 'fastcdc 4/16/64 KiB', make: () => new Chunker({ min: 4 * KiB, avg: 16 * KiB, max: 64 * KiB }) },
  { name: 'fastcdc 16/64/256 KiB', make: () => new Chunker({ min: 16 * KiB, avg: 64 * KiB, max: 256 * KiB }) },
  { name: 'fastcdc 64/256/1024 KiB', make: () => new Chunker({ min: 64 * KiB, avg: 256 * KiB, max: 1024 * KiB }) },
  { name: 'fixed 4 KiB', make: () => new FixedChunker(4 * KiB) },
  { name: 'fixed 64 KiB', make: () => new FixedChunker(64 * KiB) },
];

/** The pieces the stream arrives in (as from a migration pipe). */
const PUSH = 1024 * KiB;

function parseArgs(argv: readonly string[]): Options {
  const usage = (msg: string): never => usageExit('chunker-bench', USAGE, msg);
  const o: Options = { json: false, count: 3, intervalS: 4, memMib: 256, loadMib: 64, files: [] };
  const num = (flag: string, v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) usage(`${flag} needs a positive number, got "${v}"`);
    return n;
  };
  forEachFlag(argv, usage, (flag, value, arg) => {
    if (flag === '--json') o.json = true;
    else if (flag === '--make') o.make = value();
    else if (flag === '--count') o.count = Math.floor(num(flag, value()));
    else if (flag === '--interval-s') o.intervalS = num(flag, value());
    else if (flag === '--mem-mib') o.memMib = Math.floor(num(flag, value()));
    else if (flag === '--load-mib') o.loadMib = Math.floor(num(flag, value()));
    else if (flag.startsWith('--')) usage(`unknown flag ${flag}`);
    else o.files.push(arg);
  });
  if (!o.make && o.files.length === 0) usage('give files to measure, or --make DIR');
  return o;
}

/** Boot the test guest with its memory workload and take `count` memory images a few seconds apart. */
async function makeImages(o: Options & { make: string }, log: (s: string) => void): Promise<string[]> {
  ensureQemu();
  const image = buildGuest();
  fs.mkdirSync(o.make, { recursive: true });
  const f = guestFiles(o.make);
  for (const p of Object.values(f)) fs.rmSync(p, { force: true });
  const params = { name: 'chunkbench', memMiB: o.loadMib, memRateMiB: 8, disk: 'none', reportSecs: 1 };
  // prettier-ignore
  const args = [
    '-accel', 'tcg', '-machine', 'q35', '-cpu', 'qemu64', '-smp', '1', '-m', String(o.memMib),
    '-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none', '-no-reboot',
    '-kernel', image.kernel, '-initrd', image.initrd, '-append', kernelCmdline(params),
    '-serial', 'chardev:ser0', '-chardev', `socket,id=ser0,path=${f.serialSock},server=on,wait=off,logfile=${f.serialLog}`,
    '-qmp', `unix:${f.qmpSock},server=on,wait=off`,
  ];
  const qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  qemu.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const alive = (): boolean => qemu.exitCode === null && qemu.signalCode === null;
  const out: string[] = [];
  try {
    const q = await QmpClient.connect(f.qmpSock, { isAlive: alive, timeoutMs: 20_000, commandTimeoutMs: 120_000 });
    try {
      await q.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
      await q.execute('migrate-set-parameters', { 'max-bandwidth': 8 * 1024 * 1024 * 1024 });
      // Drain the serial console (the logfile keeps it): unread, the guest's console writes stall.
      const serial = await until('the serial socket', () => new Promise<net.Socket | null>((resolve) => {
        const c = net.connect(f.serialSock, () => resolve(c)).on('error', () => resolve(null));
      }));
      serial.on('data', () => undefined).on('error', () => undefined);
      log('waiting for the guest and its memory workload (one full pass)');
      await until('the memory workload to finish a pass', () => {
        if (!alive()) throw new Error(`QEMU exited: ${stderr.trim()}`);
        return serialStatuses(f.serialLog).some((s) => s.mem.passes >= 1);
      }, { timeoutMs: 90_000, everyMs: 200 });
      for (let i = 1; i <= o.count; i++) {
        if (i > 1) await sleep(o.intervalS * 1000); // the workload runs on between images: the interval is the measured variable
        const file = path.join(o.make, `mem-${i}.img`);
        fs.rmSync(file, { force: true });
        const done = q.waitEvent('MIGRATION', (d) => d.status === 'completed' || d.status === 'failed', 120_000);
        await q.execute('migrate', { uri: `exec:cat > ${file}` });
        const ev = await done;
        if (ev.data.status !== 'completed') throw new Error(`migration to ${file} failed`);
        await q.execute('cont');
        log(`image ${file}: ${(fs.statSync(file).size / 2 ** 20).toFixed(1)} MiB`);
        out.push(file);
      }
      await q.execute('quit').catch(() => undefined);
      serial.destroy();
    } finally {
      q.close();
    }
  } finally {
    if (alive()) qemu.kill('SIGKILL');
  }
  return out;
}

interface SetResult {
  params: string;
  mb_per_s: number;
  mean_chunk_kib: number;
  chunks: number;
  /** Per file after the first: bytes not already stored, and that as % of the file. */
  new_bytes: number[];
  new_pct: number[];
}

function measureSet(set: ParamSet, images: Buffer[]): SetResult {
  const seen = new Set<string>();
  let chunkNs = 0n;
  let chunks = 0;
  let bytes = 0;
  const newBytes: number[] = [];
  images.forEach((img, idx) => {
    const splitter = set.make();
    const parts: Buffer[] = [];
    const t0 = process.hrtime.bigint();
    for (let off = 0; off < img.length; off += PUSH) for (const c of splitter.push(img.subarray(off, off + PUSH))) parts.push(c);
    for (const c of splitter.end()) parts.push(c);
    chunkNs += process.hrtime.bigint() - t0;
    chunks += parts.length;
    bytes += img.length;
    let added = 0;
    for (const c of parts) {
      const key = createHash('sha256').update(c).digest('hex');
      if (!seen.has(key)) {
        seen.add(key);
        added += c.length;
      }
    }
    if (idx > 0) newBytes.push(added);
  });
  const round = (n: number, d = 1): number => Math.round(n * 10 ** d) / 10 ** d;
  return {
    params: set.name,
    mb_per_s: round(bytes / 1e6 / (Number(chunkNs) / 1e9)),
    mean_chunk_kib: round(bytes / chunks / KiB),
    chunks,
    new_bytes: newBytes,
    new_pct: newBytes.map((n, i) => round((100 * n) / (images[i + 1] as Buffer).length)),
  };
}

/** SHA-256 throughput (MB/s, one core) over `data` hashed in 64 KiB pieces, as the store hashes chunks. */
function sha256Throughput(data: Buffer): number {
  const t0 = process.hrtime.bigint();
  for (let off = 0; off < data.length; off += 64 * KiB) createHash('sha256').update(data.subarray(off, off + 64 * KiB)).digest();
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  return Math.round(data.length / 1e6 / s);
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const log = (s: string): void => {
    if (!o.json) process.stdout.write(`${s}\n`);
    else process.stderr.write(`${s}\n`);
  };
  const files = [...(o.make ? await makeImages({ ...o, make: o.make }, log) : []), ...o.files];
  const images = files.map((p) => fs.readFileSync(p));
  const result = {
    files: files.map((p, i) => ({ path: p, bytes: (images[i] as Buffer).length })),
    sha256_mb_per_s: sha256Throughput(images[0] as Buffer),
    sets: PARAM_SETS.map((s) => measureSet(s, images)),
  };
  if (o.json) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return;
  }
  for (const f of result.files) log(`file ${f.path}: ${(f.bytes / 2 ** 20).toFixed(1)} MiB`);
  log(`SHA-256: ${result.sha256_mb_per_s} MB/s`);
  log('params                     MB/s   mean KiB  chunks  new after previous (MiB, %)');
  for (const r of result.sets) {
    const adds = r.new_bytes.map((n, i) => `${(n / 2 ** 20).toFixed(1)} (${r.new_pct[i]}%)`).join(', ');
    log(`${r.params.padEnd(26)} ${String(r.mb_per_s).padStart(6)} ${String(r.mean_chunk_kib).padStart(9)} ${String(r.chunks).padStart(7)}  ${adds}`);
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`chunker-bench: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
