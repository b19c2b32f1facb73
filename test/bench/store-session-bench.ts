/**
 * What an agent's snapshots ask of a content-addressed store over a local directory, per writer
 * session: a snapshot is three sessions, as an agent taking one a second opens them (the memory
 * block image on its base, the channel state put, a link of the base), over a store that already
 * holds a few hundred packs (tables spread over ~150 packtabs/<xx>/ directories). Reports, per
 * mode, backend calls and listings per session, and wall and CPU milliseconds per snapshot
 * (median / p95 / max) — the figures of docs/performance.md ("Pack map refresh").
 *
 *   npm run bench:store-session -- [--snapshots N] [--packs N] [--mode generation|listing|both] [--json]
 *
 * Modes: `generation` is the store as it is (the pack map lists the tables only when the sweep
 * generation changed or its last listing is a minute old: proto/store/pack-map.ts), starting
 * with a generation as a collection leaves it; `listing`
 * deletes the generation object before each session (a store only older versions collected), so
 * every session lists the tables as every session did before the generation existed, plus one
 * get that finds nothing.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CasStore } from '../../proto/store/cas-store';
import { GENERATION_KEY, newGeneration } from '../../proto/store/gc-generation';
import { LocalObjects } from '../../proto/store/local-objects';
import { CountingObjects } from '../support/counting-objects';
import { pseudoRandomBytes as bytes } from '../support/memory-objects';
import { forEachFlag, usageExit, wholeArg } from './args';

const USAGE = 'usage: npm run bench:store-session -- [--snapshots N] [--packs N] [--mode generation|listing|both] [--json]';
const KiB = 1024;
const BLOCK = 64 * KiB;
const BLOCKS = 64;
/** Blocks a snapshot changes. */
const DIRTY = 4;
const PACK = { targetBytes: 64 * KiB };

type Mode = 'generation' | 'listing';
interface Figures {
  mode: Mode;
  sessions: number;
  callsPerSession: Stats;
  listsPerSession: Stats;
  wallMsPerSnapshot: Stats;
  cpuMsPerSnapshot: Stats;
}
interface Stats {
  median: number;
  p95: number;
  max: number;
}

const log = (s: string): void => void process.stderr.write(`${s}\n`);

function stats(xs: number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)] as number;
  return { median: at(0.5), p95: at(0.95), max: s[s.length - 1] as number };
}

/** Fill a new store with about `packs` packs of 64 KiB. */
async function populate(root: string, packs: number): Promise<void> {
  const store = new CasStore(new LocalObjects(root), { pack: PACK });
  await store.put('seed/data', bytes(packs * PACK.targetBytes, 1));
  const tableDirs = fs.readdirSync(path.join(root, 'packtabs')).length;
  log(`store ${root}: ${fs.readdirSync(path.join(root, 'packs')).length} pack directories, ${tableDirs} packtabs directories`);
}

async function run(root: string, mode: Mode, snapshots: number): Promise<Figures> {
  const raw = new LocalObjects(root);
  const c = new CountingObjects(raw);
  const store = new CasStore(c, { pack: PACK });
  // A store a collection of this version swept last (or that this version made) has a generation.
  if (mode === 'generation') await newGeneration(raw);
  const calls: number[] = [];
  const lists: number[] = [];
  const wall: number[] = [];
  const cpu: number[] = [];
  /** One writer session, counted. */
  const session = async <T>(f: () => Promise<T>): Promise<T> => {
    if (mode === 'listing') await raw.delete(GENERATION_KEY);
    const from = c.calls.length;
    const out = await f();
    calls.push(c.calls.length - from);
    lists.push(c.since(from, 'list', 'listInfo').length);
    return out;
  };
  /** Seeds of this mode's bytes: nothing the other mode stored is found again. */
  const salt = mode === 'generation' ? 1 << 24 : 0;
  let base: string | undefined;
  for (let i = 0; i < snapshots + 1; i++) {
    const image = `${mode}/${i}/vm.mem`;
    // The bytes are made before the clocks start: only the store's work is timed.
    const dirty = (base ? Array.from({ length: DIRTY }, (_, k) => (i * 7 + k * 13) % BLOCKS) : Array.from({ length: BLOCKS }, (_, k) => k)).map((b) => ({ b, data: bytes(BLOCK, salt + 1000 + i * BLOCKS + b) }));
    const channel = bytes(4 * KiB, salt + 500_000 + i);
    const t0 = process.hrtime.bigint();
    const u0 = process.cpuUsage();
    await session(async () => {
      const w = await store.createBlockImage(image, { size: BLOCKS * BLOCK, blockSize: BLOCK, ...(base ? { base } : {}) });
      for (const { b, data } of dirty) await w.putBlock(b, data);
      return w.commit();
    });
    await session(() => store.put(`${mode}/${i}/channel`, channel));
    if (base) await session(() => store.link(base as string, `${mode}/${i}/base.mem`));
    base = image;
    const u = process.cpuUsage(u0);
    if (i === 0) {
      calls.length = lists.length = 0; // the first snapshot writes a whole image and lists: warm-up
      continue;
    }
    wall.push(Number(process.hrtime.bigint() - t0) / 1e6);
    cpu.push((u.user + u.system) / 1000);
  }
  return { mode, sessions: calls.length, callsPerSession: stats(calls), listsPerSession: stats(lists), wallMsPerSnapshot: stats(wall), cpuMsPerSnapshot: stats(cpu) };
}

async function main(): Promise<void> {
  let snapshots = 60;
  let packs = 300;
  let modes: Mode[] = ['listing', 'generation'];
  let json = false;
  const usage = (msg?: string): never => usageExit('store-session-bench', USAGE, msg);
  forEachFlag(process.argv.slice(2), usage, (flag, value) => {
    if (flag === '--snapshots') snapshots = wholeArg(flag, value(), 1, usage);
    else if (flag === '--packs') packs = wholeArg(flag, value(), 1, usage);
    else if (flag === '--json') json = true;
    else if (flag === '--mode') {
      const v = value();
      if (v === 'both') modes = ['listing', 'generation'];
      else if (v === 'generation' || v === 'listing') modes = [v];
      else usage(`--mode needs generation, listing or both, got ${JSON.stringify(v)}`);
    } else usage(`unknown argument ${flag}`);
  });
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-session-bench-'));
  try {
    await populate(root, packs);
    const out: Figures[] = [];
    for (const m of modes) out.push(await run(root, m, snapshots));
    if (json) process.stdout.write(`${JSON.stringify(out)}\n`);
    else {
      const f = (s: Stats, d = 0): string => `${s.median.toFixed(d)} / ${s.p95.toFixed(d)} / ${s.max.toFixed(d)}`;
      for (const r of out) {
        process.stdout.write(`${r.mode}: ${r.sessions} sessions; backend calls per session ${f(r.callsPerSession)}, listings ${f(r.listsPerSession)}; per snapshot wall ms ${f(r.wallMsPerSnapshot, 1)}, CPU ms ${f(r.cpuMsPerSnapshot, 1)} (median / p95 / max)\n`);
      }
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  log(`store-session-bench: ${(e as Error).message}`);
  process.exit(1);
});
