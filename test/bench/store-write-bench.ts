/**
 * The store's write path, measured apart from any backend: how fast an artefact goes through
 * CasStore's writer (chunking, the two SHA-256 passes, compression, packing) into memory, with the
 * JavaScript or the native chunker (proto/store/chunker.ts, switch/native/cdc.c) and DEFLATE or
 * zstd (proto/store/chunk-codec.ts) — the numbers behind docs/storage.md ("Compression",
 * "Chunking") and docs/performance.md ("Snapshot storage"). Also each codec alone on the same
 * chunks: the stored fraction and compress / decompress MB/s of one core, for the zstd level.
 *
 *   npm run bench:store-write -- [--json] FILE...
 *
 * FILE: real memory images (chunker-bench --make DIR writes some). Each figure is the best of two
 * passes (the machine is shared), in MiB/s of the artefact's own bytes.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as zlib from 'node:zlib';
import { CasStore } from '../../proto/store/cas-store';
import { Chunker, type ChunkerEngine } from '../../proto/store/chunker';
import type { Codec } from '../../proto/store/chunk-codec';
import { storeNative } from '../../proto/store/store-native';
import { MemoryObjects } from '../support/memory-objects';
import { forEachFlag, usageExit } from './args';

const USAGE = 'usage: npm run bench:store-write -- [--json] FILE...';
const MiB = 1 << 20;
/** The pieces an image arrives in (a migration pipe's reads). */
const PIECE = 1 * MiB;

const log = (s: string): void => void process.stderr.write(`${s}\n`);

async function best(f: () => Promise<void>): Promise<number> {
  let t = Infinity;
  for (let k = 0; k < 2; k++) {
    const t0 = process.hrtime.bigint();
    await f();
    t = Math.min(t, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return t;
}

/** MiB/s of the whole writer: chunk, hash, compress, pack, into memory. */
async function writePath(data: Buffer, engine: ChunkerEngine, codec: Codec): Promise<number> {
  const t = await best(async () => {
    const store = new CasStore(new MemoryObjects(), { chunkerEngine: engine, pack: { compress: codec } });
    const w = await store.create('bench/a');
    for (let off = 0; off < data.length; off += PIECE) await w.write(data.subarray(off, off + PIECE));
    await w.commit();
  });
  return data.length / MiB / t;
}

/** Chunking alone (boundaries and chunk copies), MiB/s. */
async function chunkOnly(data: Buffer, engine: ChunkerEngine): Promise<number> {
  const t = await best(async () => {
    const c = new Chunker(undefined, engine);
    for (let off = 0; off < data.length; off += PIECE) c.push(data.subarray(off, off + PIECE));
    c.end();
  });
  return data.length / MiB / t;
}

interface CodecRow {
  codec: string;
  stored_pct: number;
  compress_mb_s: number;
  decompress_mb_s: number;
}

/** One codec over the chunks, one at a time as one core would (zstd: batches of a pack's size). */
async function codecRow(name: string, chunks: Buffer[], enc: (b: Buffer[]) => Promise<Buffer[]>, dec: (z: Buffer[], sizes: number[]) => Promise<Buffer[]>): Promise<CodecRow> {
  const raw = chunks.reduce((n, c) => n + c.length, 0);
  const batches: Buffer[][] = [];
  for (let i = 0; i < chunks.length; i += 128) batches.push(chunks.slice(i, i + 128));
  let z: Buffer[][] = [];
  const tc = await best(async () => {
    z = [];
    for (const b of batches) z.push(await enc(b));
  });
  const stored = z.flat().reduce((n, c) => n + c.length, 0);
  const td = await best(async () => {
    for (const [i, b] of z.entries()) await dec(b, (batches[i] as Buffer[]).map((c) => c.length));
  });
  return { codec: name, stored_pct: Math.round((1000 * stored) / raw) / 10, compress_mb_s: Math.round(raw / 1e6 / tc), decompress_mb_s: Math.round(raw / 1e6 / td) };
}

async function main(): Promise<void> {
  const files: string[] = [];
  let json = false;
  forEachFlag(process.argv.slice(2), (m) => usageExit('store-write-bench', USAGE, m), (flag, _value, arg) => {
    if (flag === '--json') json = true;
    else if (flag.startsWith('--')) usageExit('store-write-bench', USAGE, `unknown flag ${flag}`);
    else files.push(arg);
  });
  if (files.length === 0) usageExit('store-write-bench', USAGE, 'give files to measure');
  const native = storeNative();
  if (!native) throw new Error('the native addon is not built (npm install)');
  const data = Buffer.concat(files.map((f) => fs.readFileSync(f)));
  const out: Record<string, unknown> = { mib: Math.round(data.length / MiB), load: os.loadavg()[0] };
  out.chunk_mib_s = { js: Math.round(await chunkOnly(data, 'js')), native: Math.round(await chunkOnly(data, 'native')) };
  log(`chunking alone: ${JSON.stringify(out.chunk_mib_s)} MiB/s`);
  const paths: Record<string, number> = {};
  for (const [engine, codec] of [['js', 'deflate'], ['native', 'deflate'], ['js', 'zstd'], ['native', 'zstd']] as const) {
    paths[`${engine}_${codec}`] = Math.round(await writePath(data, engine, codec));
    log(`write path, ${engine} chunker, ${codec}: ${paths[`${engine}_${codec}`]} MiB/s`);
  }
  out.write_mib_s = paths;
  const chunks: Buffer[] = [];
  const c = new Chunker();
  for (let off = 0; off < data.length; off += PIECE) chunks.push(...c.push(data.subarray(off, off + PIECE)));
  chunks.push(...c.end());
  const rows: CodecRow[] = [
    await codecRow(
      'deflate-1',
      chunks,
      async (b) => b.map((x) => zlib.deflateRawSync(x, { level: 1 })),
      async (z) => z.map((x) => zlib.inflateRawSync(x)),
    ),
  ];
  for (const level of [-1, 1, 2, 3]) rows.push(await codecRow(`zstd ${level}`, chunks, (b) => native.zstdCompress(b, level), (z, s) => native.zstdDecompress(z, s)));
  for (const r of rows) log(`${r.codec}: stored ${r.stored_pct} %, compress ${r.compress_mb_s} MB/s, decompress ${r.decompress_mb_s} MB/s`);
  out.codecs = rows;
  out.load_end = os.loadavg()[0];
  if (json) process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((e: unknown) => {
  log(`store-write-bench: ${(e as Error).message}`);
  process.exit(1);
});
