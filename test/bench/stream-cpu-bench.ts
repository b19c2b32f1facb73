/**
 * The CPU an agent spends per memory stream, without QEMU: a synthetic QEMU 7.2 background-
 * snapshot stream (a 128 MiB guest's RAM: pages like the test guest's memory load — a few words
 * then zeros —, incompressible pages like its disk records in the page cache, text-like pages,
 * ZERO records) is sent by a
 * child process into a unix socket and goes the agent's way into a content-addressed store in a
 * temporary directory: StreamIntoStore (agent/drivers/image-stream.ts) with the page-order
 * rewrite (qemu/page-order.ts), the store opened as an agent opens it (openStore: packs, zstd,
 * the hashing worker). Each stream after the first changes a tenth of its pages, one run of them
 * (the next snapshot: most chunks deduplicated).
 *
 * The order of the pages is QEMU 7.2's (--faults N, default 6): the scan is linear, but a write
 * fault saves its page at once and the scan continues from there, wrapping at the end of RAM, so
 * the stream is a few long runs and page-order holds back every page sent ahead of the lowest
 * gap — half to three quarters of the test guest's pages in bench:snapshot (docs/performance.md,
 * issue 15, "Why a QEMU stream cost twice the synthetic one"). --scatter sends instead about 5 %
 * of the pages one by one ahead of the scan (this bench's order before: few pages held).
 *
 * Per stream: wall time, this process's CPU (user + system, every thread: the event loop, the
 * hashing worker, libuv's pool) and the event loop's thread alone (/proc/self/task), the time in
 * garbage collection (perf_hooks 'gc' entries), and the writer's and stream's profiles.
 *
 *   node dist/test/bench/stream-cpu-bench.js [--json] [--streams N] [--mib M] [--faults N | --scatter] [--windows]
 *
 * The streams are built (into files) before the first one is measured, so the measured span
 * holds only the agent's work. --windows prints each stream's measured span on stderr as
 * monotonic microseconds (the clock of a `node --cpu-prof` profile's sample times), to take a
 * profile of this process apart stream by stream.
 *
 * Not a QEMU run: it measures what the agent's own code costs per byte, the part this machine's
 * other load does not change much. The figures of a real run come from bench:snapshot.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import { StreamIntoStore } from '../../agent/drivers/image-stream';
import { PageOrder } from '../../agent/drivers/qemu/page-order';
import { openStore } from '../../proto/store/store-config';
import { buildStream, type PageRec } from '../support/migration-stream-builder';
import { forEachFlag, usageExit } from './args';

const USAGE = 'usage: stream-cpu-bench [--json] [--streams N] [--mib M] [--faults N | --scatter] [--windows]';
let JSON_OUT = false;
let WINDOWS = false;
let STREAMS = 4;
let MIB = 128;
let FAULTS = 6;
let SCATTER = false;
forEachFlag(process.argv.slice(2), (msg) => usageExit('stream-cpu-bench', USAGE, msg), (flag, value) => {
  if (flag === '--json') JSON_OUT = true;
  else if (flag === '--windows') WINDOWS = true;
  else if (flag === '--streams') STREAMS = Number(value());
  else if (flag === '--mib') MIB = Number(value());
  else if (flag === '--faults') FAULTS = Number(value());
  else if (flag === '--scatter') SCATTER = true;
  else usageExit('stream-cpu-bench', USAGE, `unknown argument ${flag}`);
});

const PAGE = 4096;

/** A deterministic 32-bit generator (xorshift). */
function rng(seed: number): () => number {
  let s = seed | 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s >>> 0;
  };
}

/** What kind of page `p` is: 0 zero, 1 memory load, 2 incompressible, 3 text-like. */
function kind(p: number): number {
  const h = Math.imul(p ^ 0x9e3779b9, 0x85ebca6b) >>> 0;
  const x = h % 100;
  return x < 10 ? 0 : x < 55 ? 1 : x < 80 ? 2 : 3;
}

const WORDS = ['the', 'kernel', 'page', 'cache', 'systemd', 'inode', 'socket', 'buffer', 'vnsnap', 'guest', 'memory', 'snapshot'];

/** The bytes of page `p` at `version`. */
function content(p: number, version: number): Buffer {
  const k = kind(p);
  const b = Buffer.alloc(PAGE);
  if (k === 1) {
    b.writeBigUInt64LE(BigInt(version), 0);
    b.writeBigUInt64LE(BigInt(p), 8);
    b.writeUInt32LE((p * 2654435761 + version) >>> 0, 16);
  } else if (k === 2) {
    const r = rng(p * 7919 + version * 104729 + 1);
    for (let i = 0; i < PAGE; i += 4) b.writeUInt32LE(r(), i);
  } else if (k === 3) {
    const r = rng(p + version * 31 + 7);
    let at = 0;
    while (at < PAGE) at += b.write(`${WORDS[r() % WORDS.length]} `, at, 'latin1');
  }
  return b;
}

/** The order of --scatter: every page once, the scan linear but ~5 % of the pages sent ahead of it. */
function scatterOrder(pages: number): number[] {
  const r = rng(4242);
  const sent = new Uint8Array(pages);
  const order: number[] = [];
  for (let p = 0; p < pages; p++) {
    if (r() % 100 < 5) {
      const ahead = p + 1 + (r() % Math.max(1, pages - p - 1));
      if (ahead < pages && !sent[ahead]) {
        sent[ahead] = 1;
        order.push(ahead);
      }
    }
    if (!sent[p]) {
      sent[p] = 1;
      order.push(p);
    }
  }
  return order;
}

/**
 * QEMU 7.2's order: every page once, the scan linear from page 0; `faults` times, at a random
 * moment, a write fault saves a random page not sent yet and the scan goes on from it (wrapping
 * at the end), skipping pages already sent.
 */
function faultOrder(pages: number, faults: number): number[] {
  const r = rng(4242);
  const sent = new Uint8Array(pages);
  const at = new Set<number>();
  while (at.size < Math.min(faults, pages - 1)) at.add(1 + (r() % (pages - 1)));
  const order: number[] = [];
  let pos = 0;
  while (order.length < pages) {
    if (at.has(order.length)) {
      let f = r() % pages;
      while (sent[f]) f = (f + 1) % pages;
      pos = f;
    }
    while (sent[pos]) pos = (pos + 1) % pages;
    sent[pos] = 1;
    order.push(pos);
    pos = (pos + 1) % pages;
  }
  return order;
}

/** One stream: every page once, in the order of the options (module comment). */
function makeStream(pages: number, changed: (p: number) => number): Buffer {
  const order = SCATTER ? scatterOrder(pages) : faultOrder(pages, FAULTS);
  const recs: PageRec[] = order.map((p) => (kind(p) === 0 ? { block: 'pc.ram', page: p, fill: 0 } : { block: 'pc.ram', page: p, version: changed(p) }));
  const stream = buildStream({ blocks: [['pc.ram', pages * PAGE]], sections: chunked(recs, 2048) });
  // buildStream writes its own page data; put this bench's content in instead (same offsets).
  return withContent(stream, recs);
}

function chunked<T>(xs: T[], n: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += n) out.push(xs.slice(i, i + n));
  return out;
}

/** Replace each PAGE record's data (the builder's) by content(page, version), scanning the records in order. */
function withContent(stream: Buffer, recs: PageRec[]): Buffer {
  let at = 0;
  for (const r of recs) {
    if (r.fill !== undefined) continue;
    const marker = Buffer.from(`pc.ram:${r.page}:${r.version ?? 0}`, 'latin1');
    at = stream.indexOf(marker, at);
    if (at < 0) throw new Error(`page ${r.page} not found in the built stream`);
    content(r.page, r.version ?? 0).copy(stream, at);
    at += PAGE;
  }
  return stream;
}

/** CPU ticks (user + system) of this process's threads: [event loop thread, all threads]. */
function threadTicks(): { main: number; all: number } {
  let main = 0;
  let all = 0;
  for (const tid of fs.readdirSync('/proc/self/task')) {
    const s = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'latin1');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    const t = Number(f[11]) + Number(f[12]);
    all += t;
    if (Number(tid) === process.pid) main += t;
  }
  return { main, all };
}

interface StreamFigures {
  mib: number;
  wall_s: number;
  cpu_s: number;
  loop_thread_s: number;
  gc_ms: number;
  new_mib: number;
  stream: unknown;
  store: unknown;
  page_order: { pages: number; held: number; peak_held_mib: number; ms: number };
}

async function main(): Promise<void> {
  const pages = Math.floor((MIB * 1048576) / PAGE);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-streamcpu-'));
  let gcMs = 0;
  const obs = new PerformanceObserver((l) => {
    for (const e of l.getEntries()) gcMs += e.duration;
  });
  obs.observe({ entryTypes: ['gc'] });
  const out: StreamFigures[] = [];
  try {
    const store = await openStore({ kind: 'local', dir: path.join(dir, 'store') });
    const hz = 100;
    const files: { file: string; bytes: number }[] = [];
    for (let i = 0; i < STREAMS; i++) {
      const from = Math.floor((((i * 3) % 10) * pages) / 10);
      const stream = makeStream(pages, (p) => (i > 0 && p >= from && p < from + pages / 10 ? i : 0)); // a tenth changed, in one run
      const file = path.join(dir, `stream-${i}.bin`);
      fs.writeFileSync(file, stream);
      files.push({ file, bytes: stream.length });
    }
    for (let i = 0; i < STREAMS; i++) {
      const { file, bytes } = files[i] as { file: string; bytes: number };
      const w = await store.create(`bench/mem-${i}.img`);
      const sock = path.join(dir, `s${i}.sock`);
      const po = new PageOrder();
      const st = await StreamIntoStore.listen(sock, w, { bufferBytes: 32 << 20, what: `stream ${i}`, transform: po });
      gcMs = 0;
      const c0 = process.cpuUsage();
      const t0 = threadTicks();
      const w0 = performance.now();
      const us0 = process.hrtime.bigint() / 1000n;
      const child = spawn(process.execPath, ['-e', `const n=require('net');const f=require('fs');const s=n.connect(${JSON.stringify(sock)},()=>f.createReadStream(${JSON.stringify(file)},{highWaterMark:1<<20}).pipe(s));`], { stdio: 'inherit' });
      const exited = new Promise((r) => child.once('exit', r));
      await st.ended;
      const a = await w.commit();
      const wall = (performance.now() - w0) / 1000;
      const c = process.cpuUsage(c0);
      const t1 = threadTicks();
      if (WINDOWS) process.stderr.write(`stream ${i} window_us ${us0} ${process.hrtime.bigint() / 1000n}\n`);
      await st.close();
      await exited;
      out.push({
        mib: Math.round((bytes / 1048576) * 10) / 10,
        wall_s: Math.round(wall * 1000) / 1000,
        cpu_s: Math.round((c.user + c.system) / 1e4) / 100,
        loop_thread_s: (t1.main - t0.main) / hz,
        gc_ms: Math.round(gcMs),
        new_mib: Math.round(((a.storedBytes ?? 0) / 1048576) * 10) / 10,
        stream: st.profile,
        store: (w as { profile?: unknown }).profile,
        page_order: { pages: po.stats.pages, held: po.stats.held, peak_held_mib: Math.round((po.stats.peakHeldBytes / 1048576) * 10) / 10, ms: Math.round(po.stats.cpuMs) },
      });
      if (!JSON_OUT) console.log(JSON.stringify(out[out.length - 1]));
    }
    store.close?.();
  } finally {
    obs.disconnect();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const load = os.loadavg()[0];
  const res = { streams: out, order: SCATTER ? 'scatter' : `faults ${FAULTS}`, load_1m: load };
  if (JSON_OUT) process.stdout.write(JSON.stringify(res) + '\n');
  else console.log(`load average (1 min) ${load?.toFixed(2)}`);
}

main().catch((e: Error) => {
  console.error(e);
  process.exit(1);
});
