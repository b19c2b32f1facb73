/**
 * bench:store-read: where a restore's time goes when it reads artefacts from the content-addressed
 * store, and which reader sizes to use (docs/storage.md, "Reading"). In one process, no QEMU:
 * FILE (real memory images, or anything) is cut into `--artefacts` equal artefacts and written
 * into a local directory store and into a Ceph RGW bucket (a memstore OSD on loopback), both with
 * packs as openStore() makes them; then, per backend:
 *
 *   get          every pack read whole with plain GETs, 8 at a time: the backend's transfer
 *                rate with nothing else (no decoding, no checks)
 *   decode       inflating and hashing every chunk, in memory: the CPU a read costs
 *   read R/A/C   the artefacts read through CasStore.read(), all at once (as a restore of that
 *                many VMs on one host does), with ranged reads of R MiB, A MiB ahead and C
 *                requests in flight per artefact
 *
 *   npm run bench:store-read -- FILE [--artefacts N] [--json]
 *
 * Each figure is the best of two passes (the machine is shared), in seconds and MiB/s of the
 * artefacts' own bytes.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { CasStore, type PackOptions } from '../../proto/store/cas-store';
import { decodeChunk } from '../../proto/store/chunk-codec';
import { LocalObjects } from '../../proto/store/local-objects';
import type { ObjectBackend } from '../../proto/store/object-backend';
import { decodeTable, packKey, PACK_PREFIX, packIdOf, tableKey } from '../../proto/store/pack-format';
import { forEachLimit } from '../../proto/store/pack-map';
import { S3Objects } from '../../proto/store/s3-objects';
import { startCephRgw, type CephRgw } from '../support/ceph-rgw';
import { forEachFlag, usageExit } from './args';

const USAGE = 'usage: npm run bench:store-read -- FILE [--artefacts N] [--json]';
const MiB = 1 << 20;

/** Reader settings tried: range MiB, ahead MiB, requests in flight. */
const READERS: [number, number, number][] = [
  [4, 16, 32],
  [1, 16, 32],
  [2, 32, 32],
  [4, 64, 32],
  [8, 64, 32],
];

function log(m: string): void {
  process.stderr.write(`${m}\n`);
}

async function best(f: () => Promise<void>): Promise<number> {
  let b = Infinity;
  for (let k = 0; k < 2; k++) {
    const t0 = process.hrtime.bigint();
    await f();
    b = Math.min(b, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return b;
}

async function packsOf(b: ObjectBackend): Promise<string[]> {
  return (await b.list(PACK_PREFIX)).map((k) => packIdOf(k) as string);
}

async function measure(name: string, b: ObjectBackend, parts: Buffer[], o: { json: boolean }): Promise<Record<string, number>> {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const w = new CasStore(b, { concurrency: 32, pack: {} });
  const t0 = Date.now();
  await Promise.all(parts.map((p, i) => w.put(`bench/a${i}`, p)));
  const ids = await packsOf(b);
  let stored = 0;
  for (const id of ids) stored += (await b.head(packKey(id)))?.size ?? 0;
  log(`${name}: wrote ${(total / MiB).toFixed(1)} MiB in ${((Date.now() - t0) / 1000).toFixed(2)} s, ${ids.length} packs, ${(stored / MiB).toFixed(1)} MiB stored`);
  const out: Record<string, number> = { stored_mib: stored / MiB };
  const rate = (s: number): string => `${s.toFixed(2)} s, ${(total / MiB / s).toFixed(0)} MiB/s`;
  const get = await best(() => forEachLimit(ids, 8, async (id) => void (await b.get(packKey(id)))));
  out.get_s = get;
  log(`${name}: get packs whole, 8 at a time: ${get.toFixed(2)} s, ${(stored / MiB / get).toFixed(0)} MiB/s of stored bytes`);
  const packs = await Promise.all(ids.map(async (id) => ({ data: await b.get(packKey(id)), table: decodeTable(await b.get(tableKey(id)), tableKey(id)) })));
  const decode = await best(async () => {
    for (const p of packs) {
      await Promise.all(
        p.table.chunks.map(async (c) => {
          const raw = await decodeChunk(p.data.subarray(c.offset, c.offset + c.size), c.codec, c.raw ?? c.size, c.sha256);
          createHash('sha256').update(raw).digest();
        }),
      );
    }
  });
  out.decode_s = decode;
  log(`${name}: inflate + SHA-256 of every chunk: ${rate(decode)}`);
  for (const [r, a, c] of READERS) {
    const pack: PackOptions = { rangeBytes: r * MiB, aheadBytes: a * MiB };
    const s = new CasStore(b, { concurrency: c, pack });
    const t = await best(async () => {
      await Promise.all(
        parts.map(async (_, i) => {
          let n = 0;
          for await (const x of s.read(`bench/a${i}`)) n += x.length;
          if (n !== (parts[i] as Buffer).length) throw new Error(`read ${n} bytes of a${i}`);
        }),
      );
    });
    out[`read_${r}_${a}_${c}`] = t;
    log(`${name}: read ${parts.length} at once, range ${r} MiB, ahead ${a} MiB, ${c} in flight: ${rate(t)}`);
  }
  if (!o.json) log('');
  return out;
}

async function main(): Promise<void> {
  let file: string | undefined;
  let n = 4;
  let json = false;
  forEachFlag(process.argv.slice(2), (m) => usageExit('bench:store-read', USAGE, m), (flag, value, arg) => {
    if (flag === '--artefacts') n = Number(value());
    else if (flag === '--json') json = true;
    else if (flag === '--help' || flag === '-h') usageExit('bench:store-read', USAGE);
    else if (!flag.startsWith('--') && file === undefined) file = arg;
    else usageExit('bench:store-read', USAGE, `unknown argument "${arg}"`);
  });
  if (!file || !Number.isInteger(n) || n < 1) usageExit('bench:store-read', USAGE, 'FILE and --artefacts N >= 1 are needed');
  const data = fs.readFileSync(file);
  const size = Math.floor(data.length / n);
  const parts = Array.from({ length: n }, (_, i) => data.subarray(i * size, (i + 1) * size));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsrb-'));
  let rgw: CephRgw | undefined;
  let s3: S3Objects | undefined;
  const result: Record<string, unknown> = { artefacts: n, artefact_mib: size / MiB, load: os.loadavg()[0] };
  try {
    result.local = await measure('local', new LocalObjects(path.join(dir, 'store')), parts, { json });
    rgw = await startCephRgw('vnsrb');
    s3 = new S3Objects({ endpoint: rgw.endpoint, bucket: rgw.bucket, credentialsFile: rgw.credentialsFile });
    result.s3 = await measure('s3', s3, parts, { json });
  } finally {
    s3?.close();
    await rgw?.stop().catch((e: unknown) => log(`stopping RGW: ${String(e)}`));
    fs.rmSync(dir, { recursive: true, force: true });
  }
  result.load_end = os.loadavg()[0];
  if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((e: unknown) => {
  log(`bench:store-read: ${(e as Error).message}`);
  process.exit(1);
});
