/**
 * How long the coordinator's event loop stalls on catalog writes while the disk is busy with
 * image writeback (issue 15; the figures are in docs/performance.md, "Scale (bench:scale)").
 *
 *   node dist/test/bench/scale-catalog-stall.js [--mode full|normal] [--dd-mib N] [--tmp DIR] [--json]
 *
 * A real Catalog in a temporary directory on the store's filesystem gets the coordinator's
 * write pattern at scale: every 10 ms one transaction touching 100 agents' last-seen times and
 * a VNE's row (heartbeats, state changes), and every 100 ms a snapshot's rows (insert, phase,
 * complete) followed, in `normal` mode, by the durability barrier the sequencer awaits before
 * reporting COMPLETE. Beside it `dd if=/dev/zero bs=1M count=N conv=fsync` writes and fsyncs N
 * MiB into the same directory (image writeback). perf_hooks.monitorEventLoopDelay (1 ms
 * resolution) measures the loop from dd's start to its end.
 *
 * --mode full: the catalog as it was (synchronous=FULL, SQLite's autocheckpoint every 1000
 * pages on the committing thread); --mode normal (default): as it is (synchronous=NORMAL, no
 * checkpoint on the loop, fsync barriers on the threadpool, checkpoints in a worker thread).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { Catalog } from '../../coordinator/catalog';
import { forEachFlag, usageExit } from './args';

interface Options {
  mode: 'full' | 'normal';
  ddMib: number;
  tmp: string;
  json: boolean;
}

function usage(msg?: string): never {
  usageExit('scale-catalog-stall', 'usage: scale-catalog-stall [--mode full|normal] [--dd-mib N] [--tmp DIR] [--json]', msg);
}

function parse(argv: string[]): Options {
  const o: Options = { mode: 'normal', ddMib: 3072, tmp: os.tmpdir(), json: false };
  forEachFlag(argv, usage, (flag, val, a) => {
    if (flag === '--mode') {
      const m = val();
      if (m !== 'full' && m !== 'normal') usage('--mode is full or normal');
      o.mode = m;
    } else if (flag === '--dd-mib') {
      o.ddMib = Number(val());
      if (!Number.isInteger(o.ddMib) || o.ddMib < 1) usage('--dd-mib needs a positive integer');
    } else if (flag === '--tmp') o.tmp = val();
    else if (flag === '--json') o.json = true;
    else usage(`unknown option ${a}`);
  });
  return o;
}

const T0 = Date.now();

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const dir = fs.mkdtempSync(path.join(o.tmp, 'vnsnap-catstall-'));
  const catalog = new Catalog(path.join(dir, 'catalog.db'));
  try {
    if (o.mode === 'full') {
      catalog.db.pragma('synchronous = FULL');
      catalog.db.pragma('wal_autocheckpoint = 1000');
    }
    for (let a = 0; a < 100; a++) catalog.upsertAgent({ id: `agent-${a}`, hostname: `h${a}`, version: '0', tunnelAddress: '127.0.0.1', tunnelPort: 6000 + a, drivers: ['sim'], connectedUnixMs: T0, lastSeenUnixMs: T0 });
    catalog.insertVne({ name: 'stall', vni: 9, vms: [], generation: 1, epoch: 0, state: 'VNE_STATE_RUNNING', createdUnixMs: T0, updatedUnixMs: T0, placement: {} });

    let writes = 0;
    let snapshots = 0;
    const barrierMs: number[] = [];
    let stopping = false;
    const heartbeat = setInterval(() => {
      const now = Date.now();
      catalog.tx(() => {
        for (let a = 0; a < 100; a++) catalog.touchAgent(`agent-${a}`, now);
        catalog.updateVne('stall', { epoch: writes });
      });
      writes++;
    }, 10);
    const snapshot = setInterval(() => {
      const id = `stall-${++snapshots}`;
      const t = performance.now();
      catalog.insertSnapshot({ id, vne: 'stall', epoch: snapshots, generation: 1, mode: 'SNAPSHOT_MODE_BACKGROUND', description: '', storePrefix: `snapshots/${id}/`, agents: [], vneDefinition: catalog.getVne('stall') as never, createdUnixMs: Date.now() });
      catalog.setSnapshotPhase(id, 'SNAPSHOT_STATE_COMMITTING', Date.now());
      catalog.completeSnapshot(id, { completedUnixMs: Date.now(), manifestPath: '', artefacts: [], vms: [], lostFrames: 0, sizeBytes: 0 });
      if (o.mode === 'normal' && !stopping) void catalog.durable().then(() => barrierMs.push(performance.now() - t));
    }, 100);

    const lag = monitorEventLoopDelay({ resolution: 1 });
    const ddStart = performance.now();
    lag.enable();
    const ddFile = path.join(dir, 'writeback');
    const dd = spawn('dd', ['if=/dev/zero', `of=${ddFile}`, 'bs=1M', `count=${o.ddMib}`, 'conv=fsync'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let ddErr = '';
    dd.stderr.on('data', (d: Buffer) => (ddErr += d.toString()));
    const code = await new Promise<number | null>((r) => dd.once('exit', r));
    lag.disable();
    const ddS = (performance.now() - ddStart) / 1000;
    stopping = true;
    clearInterval(heartbeat);
    clearInterval(snapshot);
    if (code !== 0) throw new Error(`dd failed (${code}): ${ddErr.trim()}`);
    await catalog.durable();
    await catalog.durability.idle();
    const ms = (x: number) => Math.round(x / 1e4) / 100;
    const sorted = [...barrierMs].sort((a, b) => a - b);
    const r = {
      mode: o.mode,
      dd_mib: o.ddMib,
      dd_s: Math.round(ddS * 100) / 100,
      loop_delay_ms: { p50: ms(lag.percentile(50)), p99: ms(lag.percentile(99)), max: ms(lag.max) },
      catalog_transactions: writes + 3 * snapshots,
      barriers: { n: sorted.length, median_ms: Math.round(sorted[Math.floor(sorted.length / 2)] ?? 0), max_ms: Math.round(sorted[sorted.length - 1] ?? 0) },
      checkpoints_in_worker: catalog.durability.stats.checkpoints,
      load: os.loadavg().map((l) => Math.round(l * 10) / 10),
    };
    if (o.json) process.stdout.write(`${JSON.stringify(r)}\n`);
    else {
      process.stdout.write(`catalog ${o.mode}: dd ${o.ddMib} MiB conv=fsync in ${r.dd_s} s beside ${r.catalog_transactions} catalog transactions\n`);
      process.stdout.write(`event-loop delay: p50 ${r.loop_delay_ms.p50} ms, p99 ${r.loop_delay_ms.p99} ms, max ${r.loop_delay_ms.max} ms\n`);
      if (o.mode === 'normal') process.stdout.write(`durability barriers: ${r.barriers.n}, median ${r.barriers.median_ms} ms, max ${r.barriers.max_ms} ms; checkpoints in the worker: ${r.checkpoints_in_worker}\n`);
      process.stdout.write(`load average ${r.load.join(' ')}\n`);
    }
  } finally {
    catalog.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`scale-catalog-stall: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
