/**
 * What an incremental memory image costs the store (docs/storage.md, "Block images";
 * docs/performance.md, "Block images in the store"): a block image of a guest's RAM written once
 * whole, then `--rounds` incremental ones, each from the one before, with `--changed` MiB of
 * its 64 KiB blocks replaced (random blocks, random bytes: nothing deduplicates or compresses)
 * and a 300 KiB tail (QEMU's device state). Into a local directory store in packs, as openStore()
 * opens one (fsyncs at commit; the default codec unless --compress says otherwise).
 *
 *   npm run bench:block-image -- [--size MiB] [--changed MiB] [--rounds N] [--compress zstd|deflate|none] [--dir DIR] [--json]
 *
 * Per incremental image: wall ms from createBlockImage() to commit()'s end, the process's CPU ms
 * in that span (every thread: the compression in libuv's pool too), and the event loop's own ms
 * inside putBlock()/setTail() calls (hashing, placing). Median, p95 and max. The RAM is 1/4 zero
 * blocks and 3/4 random; the store is a temporary directory unless --dir names one (kept).
 * The baseline, in the same run: the whole image written once (every block put, what a snapshot
 * without a base writes); `ratios.incremental_over_full` is the incremental wall median over it.
 * With --json stdout is one JSON object; without, a few lines for a reader.
 */
import { randomBytes, randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isCodec, type Codec } from '../../proto/store/chunk-codec';
import { CasStore } from '../../proto/store/cas-store';
import { LocalObjects } from '../../proto/store/local-objects';
import { forEachFlag, helpExit, usageExit } from './args';
import { summarize } from './vm-net-measure';

const USAGE = 'usage: npm run bench:block-image -- [--size MiB] [--changed MiB] [--rounds N] [--compress zstd|deflate|none] [--dir DIR] [--json] [--help]';
const HELP = `${USAGE}
  --size MiB      the image's RAM (default 256)
  --changed MiB   blocks replaced per incremental image (default 4)
  --rounds N      incremental images (default 30)
  --compress C    how new chunks are stored: zstd, deflate or none (default: the store's default)
  --dir DIR       the store's directory (kept; default a temporary one, removed)
  --json          stdout is one JSON object (the figures below, ratios included)
Prints per incremental image wall ms, process CPU ms and event-loop ms (median / p95 / max), the
whole image's write (the baseline) and the ratio of the two.`;
const MiB = 1 << 20;
const BLOCK = 64 * 1024;
const TAIL = 300 * 1024;

const usage = (msg: string): never => usageExit('bench:block-image', USAGE, msg);

function positive(flag: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) usage(`${flag} must be a positive integer, not "${v}"`);
  return n;
}

const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;
const cpuMs = (c: NodeJS.CpuUsage): number => (c.user + c.system) / 1000;

/** A block of the guest's RAM: zero for every fourth index, random otherwise. */
const ramBlock = (i: number): Buffer => (i % 4 === 0 ? Buffer.alloc(BLOCK) : randomBytes(BLOCK));

async function main(): Promise<void> {
  let sizeMiB = 256;
  let changedMiB = 4;
  let rounds = 30;
  let dir: string | undefined;
  let compress: Codec | 'none' | undefined;
  let json = false;
  forEachFlag(process.argv.slice(2), usage, (flag, value) => {
    if (flag === '--size') sizeMiB = positive(flag, value());
    else if (flag === '--changed') changedMiB = positive(flag, value());
    else if (flag === '--rounds') rounds = positive(flag, value());
    else if (flag === '--dir') dir = value();
    else if (flag === '--compress') {
      const c = value();
      if (c !== 'none' && !isCodec(c)) usage(`--compress must be zstd, deflate or none, not "${c}"`);
      compress = c as Codec | 'none';
    }
    else if (flag === '--json') json = true;
    else if (flag === '--help' || flag === '-h') helpExit(HELP);
    else usage(`unknown argument ${flag}`);
  });
  const blocks = (sizeMiB * MiB) / BLOCK;
  const changed = (changedMiB * MiB) / BLOCK;
  if (changed > blocks) usage('--changed is more than --size');
  const root = dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-block-bench-'));
  const store = new CasStore(new LocalObjects(root), { pack: compress ? { compress } : {} });
  const opts = { size: blocks * BLOCK, blockSize: BLOCK };
  const began = new Date().toISOString();
  const loadBefore = os.loadavg();
  /** Event-loop ms inside the writer's calls (until each returns its promise). */
  let loopMs = 0;
  const timed = (f: () => Promise<void>): Promise<void> => {
    const t = process.hrtime.bigint();
    const p = f();
    loopMs += ms(t);
    return p;
  };
  try {
    let t = process.hrtime.bigint();
    const first = await store.createBlockImage('bench/0.mem', opts);
    for (let i = 0; i < blocks; i++) await timed(() => first.putBlock(i, ramBlock(i)));
    await timed(() => first.setTail(randomBytes(TAIL)));
    await first.commit();
    const fullMs = ms(t);
    const wall: number[] = [];
    const cpu: number[] = [];
    const loop: number[] = [];
    const stored: number[] = [];
    for (let r = 1; r <= rounds; r++) {
      const picked = new Set<number>();
      while (picked.size < changed) picked.add(randomInt(blocks));
      const data = [...picked].map(() => randomBytes(BLOCK));
      const tail = randomBytes(TAIL);
      loopMs = 0;
      const c0 = process.cpuUsage();
      t = process.hrtime.bigint();
      const w = await store.createBlockImage(`bench/${r}.mem`, { ...opts, base: `bench/${r - 1}.mem` });
      await Promise.all([...picked].map((i, k) => timed(() => w.putBlock(i, data[k] as Buffer))));
      await timed(() => w.setTail(tail));
      const a = await w.commit();
      wall.push(ms(t));
      cpu.push(cpuMs(process.cpuUsage(c0)));
      loop.push(loopMs);
      stored.push(a.storedBytes ?? 0);
      await store.delete(`bench/${r - 1}.mem`);
    }
    const round = (s: ReturnType<typeof summarize>): Record<string, number> => ({ median: +s.median.toFixed(2), p95: +s.p95.toFixed(2), max: +s.max.toFixed(2), n: s.n });
    const wallS = summarize(wall);
    const figures = {
      sizeMiB,
      compress: compress ?? 'default',
      changedMiB,
      blockBytes: BLOCK,
      tailBytes: TAIL,
      fullImageMs: +fullMs.toFixed(1),
      incremental: { wallMs: round(wallS), cpuMs: round(summarize(cpu)), loopMs: round(summarize(loop)), storedMiB: +(summarize(stored).median / MiB).toFixed(2) },
      ratios: { incremental_over_full: +(wallS.median / fullMs).toFixed(4) },
      utc: [began, new Date().toISOString()],
      load: { start: loadBefore.map((x) => +x.toFixed(2)), end: os.loadavg().map((x) => +x.toFixed(2)) },
    };
    if (json) process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
    else {
      const f = (x: Record<string, number>): string => `${x.median} / ${x.p95} / ${x.max} ms`;
      process.stdout.write(
        [
          `bench:block-image: ${sizeMiB} MiB image, ${changedMiB} MiB changed per image, ${rounds} rounds, codec ${figures.compress}`,
          `  whole image (baseline): ${figures.fullImageMs} ms`,
          `  incremental image, median / p95 / max: wall ${f(figures.incremental.wallMs)}, CPU ${f(figures.incremental.cpuMs)}, event loop ${f(figures.incremental.loopMs)}; ${figures.incremental.storedMiB} MiB stored`,
          `  incremental / whole: ${figures.ratios.incremental_over_full}`,
          `  ${figures.utc[0]} - ${figures.utc[1]}, load ${figures.load.start.join(' ')} -> ${figures.load.end.join(' ')}`,
        ].join('\n') + '\n',
      );
    }
  } finally {
    store.close();
    if (!dir) fs.rmSync(root, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:block-image: ${(e as Error).message}\n`);
  process.exit(1);
});
