/**
 * Where snapshots are stored, as an agent's or the coordinator's config says it, and the store
 * that opens (docs/storage.md, "Pointing vnsnap at a store"). One parser and one opener for
 * both programs, so an agent and the coordinator given the same value see the same store.
 *
 *   "store": "/var/lib/vnsnap/store"                      content-addressed, in a local directory (default)
 *   "store": { "dir": "/srv/vnsnap", "layout": "files" }  every artefact a whole file (the layout before chunks)
 *   "store": { "s3": { "endpoint": "http://rgw:7480", "bucket": "vnsnap",
 *                      "region": "default", "credentialsFile": "/etc/vnsnap/s3.json" } }
 *
 * Guarantees: a bad value is ERR_CONFIG with one line naming the field; S3 credentials are
 * never part of the value (a file or the environment, s3-objects.ts); openStore() refuses a
 * content-addressed local store over a directory that holds the whole-file layout (and the
 * reverse) with ERR_FAILED_PRECONDITION saying which layout is there, so a changed config never
 * makes existing snapshots look absent; describeStore() is safe to log.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VnsnapError } from '../core/errors';
import { CasStore, type CasStoreOptions } from './cas-store';
import { LocalDirStore } from './local-dir';
import { LocalObjects } from './local-objects';
import { S3Objects } from './s3-objects';
import type { SnapshotStore } from './snapshot-store';

export interface S3StoreConfig {
  endpoint: string;
  bucket: string;
  region?: string;
  credentialsFile?: string;
}

export type StoreConfig = { kind: 'local'; dir: string } | { kind: 'files'; dir: string } | { kind: 's3'; s3: S3StoreConfig };

/**
 * Chunk requests in flight per writer and per reader. A chunk is one object (64 KiB on average),
 * so a store is as fast as the requests it keeps in flight: over a Ceph RGW on loopback a 96 MiB
 * artefact wrote at 17.5 / 48.1 / 49.2 MiB/s and read at 9.5 / 24.4 / 43.7 MiB/s with 4 / 16 / 32
 * in flight; a local directory (one fsync per chunk) wrote at 76 / 95 / 151 MiB/s
 * (docs/storage.md, "Backends").
 */
const S3_CONCURRENCY = 32;
const LOCAL_CONCURRENCY = 16;

const fail = (field: string, msg: string): never => {
  throw new VnsnapError('ERR_CONFIG', `${field}: ${msg}`);
};

function str(o: Record<string, unknown>, key: string, field: string, required: boolean): string | undefined {
  const v = o[key];
  if (v === undefined && !required) return undefined;
  if (typeof v !== 'string' || v === '') fail(`${field}.${key}`, `expected a non-empty string, got ${JSON.stringify(v)}`);
  return v as string;
}

function onlyKeys(o: Record<string, unknown>, keys: readonly string[], field: string): void {
  const bad = Object.keys(o).filter((k) => !keys.includes(k));
  if (bad.length > 0) fail(field, `unknown key${bad.length > 1 ? 's' : ''} ${bad.map((k) => `"${k}"`).join(', ')} (known: ${keys.join(', ')})`);
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Parse a config's `store` value (see the module comment); `field` names it in messages. */
export function parseStoreConfig(raw: unknown, field = 'store'): StoreConfig {
  if (typeof raw === 'string') {
    if (raw === '') fail(field, 'expected a directory or { "s3": {...} }, got ""');
    return { kind: 'local', dir: raw };
  }
  if (!isObject(raw)) return fail(field, `expected a directory or { "s3": {...} }, got ${JSON.stringify(raw)}`);
  if (raw.s3 !== undefined) {
    onlyKeys(raw, ['s3'], field);
    const s = raw.s3;
    if (!isObject(s)) return fail(`${field}.s3`, `expected an object, got ${JSON.stringify(s)}`);
    onlyKeys(s, ['endpoint', 'bucket', 'region', 'credentialsFile'], `${field}.s3`);
    const endpoint = str(s, 'endpoint', `${field}.s3`, true) as string;
    if (!/^https?:\/\/[^/\s]+\/?$/.test(endpoint)) fail(`${field}.s3.endpoint`, `expected http(s)://host[:port], got ${JSON.stringify(endpoint)}`);
    const bucket = str(s, 'bucket', `${field}.s3`, true) as string;
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) fail(`${field}.s3.bucket`, `expected an S3 bucket name (3-63 of a-z 0-9 . -), got ${JSON.stringify(bucket)}`);
    const region = str(s, 'region', `${field}.s3`, false);
    const credentialsFile = str(s, 'credentialsFile', `${field}.s3`, false);
    return { kind: 's3', s3: { endpoint, bucket, ...(region ? { region } : {}), ...(credentialsFile ? { credentialsFile } : {}) } };
  }
  onlyKeys(raw, ['dir', 'layout'], field);
  const dir = str(raw, 'dir', field, true) as string;
  const layout = raw.layout ?? 'chunks';
  if (layout !== 'chunks' && layout !== 'files') fail(`${field}.layout`, `expected "chunks" or "files", got ${JSON.stringify(raw.layout)}`);
  return { kind: layout === 'files' ? 'files' : 'local', dir };
}

/** One line for logs and status output (no credentials). */
export function describeStore(c: StoreConfig): string {
  if (c.kind === 's3') return `s3 ${c.s3.endpoint.replace(/\/$/, '')}/${c.s3.bucket}`;
  return c.kind === 'files' ? `files ${path.resolve(c.dir)}` : `local ${path.resolve(c.dir)}`;
}

const exists = (p: string): Promise<boolean> =>
  fsp.stat(p).then(
    () => true,
    () => false,
  );

/** Open the store a config names, creating a local directory if needed. */
export async function openStore(c: StoreConfig, o: Pick<CasStoreOptions, 'sessionLingerMs'> = {}): Promise<SnapshotStore> {
  if (c.kind === 's3') return new CasStore(new S3Objects({ endpoint: c.s3.endpoint, bucket: c.s3.bucket, ...(c.s3.region ? { region: c.s3.region } : {}), ...(c.s3.credentialsFile ? { credentialsFile: c.s3.credentialsFile } : {}) }), { concurrency: S3_CONCURRENCY, pack: {}, hashWorker: true, ...o });
  const dir = path.resolve(c.dir);
  await fsp.mkdir(dir, { recursive: true });
  const hasFiles = await exists(path.join(dir, 'snapshots'));
  const hasChunks = (await exists(path.join(dir, 'artefacts'))) || (await exists(path.join(dir, 'chunks'))) || (await exists(path.join(dir, 'packs')));
  if (c.kind === 'local') {
    if (hasFiles && !hasChunks) throw new VnsnapError('ERR_FAILED_PRECONDITION', `store ${dir} holds snapshots as whole files (the layout before chunks); set "store": { "dir": "${dir}", "layout": "files" } to keep using it`);
    return new CasStore(new LocalObjects(dir), { concurrency: LOCAL_CONCURRENCY, pack: {}, hashWorker: true, ...o });
  }
  if (hasChunks && !hasFiles) throw new VnsnapError('ERR_FAILED_PRECONDITION', `store ${dir} holds content-addressed chunks; set "store": "${dir}" to use it`);
  const store = new LocalDirStore(dir);
  await store.init();
  return store;
}

/**
 * Check that an opened store answers now — the S3 bucket exists, the credentials are accepted,
 * the endpoint is reached — so that a program given a wrong store fails at its start with the
 * store's one-line error (ERR_CONFIG, ERR_PERMISSION_DENIED, ERR_UNAVAILABLE), not at its first
 * snapshot. A local directory was checked by openStore already. Lists a prefix that holds nothing.
 */
export async function checkStoreReachable(store: SnapshotStore, c: StoreConfig): Promise<void> {
  if (c.kind === 's3') await store.list('.vnsnap-probe/');
}
