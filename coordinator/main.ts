#!/usr/bin/env node
/**
 * vnsnap-coordinator: read flags and the optional JSON config file, build the CoordinatorServer,
 * start it, print one JSON line {"event":"ready","address":"host:port"} on stdout when it
 * listens; stop cleanly on SIGTERM/SIGINT. Logs are pino JSON on stderr.
 *
 * Config file (JSON, every key optional; flags win):
 *   { "listen": "127.0.0.1:7443", "db": "/var/lib/vnsnap/catalog.db", "store": "/srv/vnsnap",
 *     "coordinatorId": "c1", "heartbeatIntervalMs": 1000, "deadAfterMs": 3000,
 *     "commandTimeoutMs": 120000, "sharedStore": true, "logLevel": "info",
 *     "tls": { "ca": "ca.pem", "cert": "coordinator-c1.pem", "key": "coordinator-c1-key.pem" },
 *     "insecurePlaintext": false, "roles": { "alice": "operator", "old-laptop": "none" } }
 * "store" takes every form proto/store/store-config.ts parses: a directory (content-addressed),
 * { "dir": D, "layout": "files" } or { "s3": { "endpoint", "bucket", "region"?, "credentialsFile"? } };
 * it must be the store every agent names. "storeDir": D is its old spelling (a directory; not
 * together with "store"); --store DIR and --store-dir DIR are the flags. Default ./vnsnap-store.
 * The millisecond keys are positive and at most 2^31-1 (the longest timer Node keeps). Without
 * "tls" (or --tls-ca/--tls-cert/--tls-key) it refuses to start unless insecurePlaintext is set
 * and the listen address is loopback. SIGHUP re-reads the TLS files and the config file's
 * "roles" table (authz.ts, tls.ts); a bad file keeps the previous ones.
 *
 * --rebuild-catalog [--force]: instead of serving, rebuild the catalog (--db) from the manifests
 * in the store (rebuild-catalog.ts), print what was done and exit: 0 when every manifest was
 * read, 3 when some were skipped (each named), 1 when refused (a catalog holding snapshots,
 * without --force) or failed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command } from 'commander';
import { configError, readJsonObjectFile, rejectUnknownKeys } from '../proto/core/config';
import { describeError } from '../proto/core/errors';
import { startAll, stopAll, type Startable } from '../proto/core/lifecycle';
import { createLogger } from '../proto/core/log';
import { CoordinatorServer, DEFAULT_LISTEN, type CoordinatorConfig } from './server';
import { MAX_TIMEOUT_MS } from './validation';
import { parseTlsFiles, reloadOnSighup, tlsFromFlags } from '../proto/core/tls';
import { parseRolesTable } from './authz';
import { describeStore, openStore, parseStoreConfig } from '../proto/store/store-config';
import { Catalog } from './catalog';
import { describeRebuild, rebuildCatalog } from './rebuild-catalog';
import { configuredStore } from './server';

const KEYS: Record<string, 'string' | 'number' | 'boolean' | 'object' | 'store'> = {
  tls: 'object',
  insecurePlaintext: 'boolean',
  roles: 'object',
  listen: 'string',
  db: 'string',
  store: 'store',
  storeDir: 'string',
  coordinatorId: 'string',
  heartbeatIntervalMs: 'number',
  deadAfterMs: 'number',
  commandTimeoutMs: 'number',
  sharedStore: 'boolean',
  logLevel: 'string',
};

export type CoordinatorFileConfig = Partial<CoordinatorConfig> & { logLevel?: string };

export function readConfigFile(file: string): CoordinatorFileConfig {
  const raw = readJsonObjectFile(file);
  rejectUnknownKeys(raw, Object.keys(KEYS), `config ${file}`);
  for (const [k, v] of Object.entries(raw)) {
    const t = KEYS[k] as string;
    if (t === 'store') continue;
    if (typeof v !== t) configError(`config ${file}: "${k}" must be a ${t}`);
    if (t === 'number' && (!Number.isInteger(v) || (v as number) <= 0)) configError(`config ${file}: "${k}" must be a positive integer`);
    if (t === 'number' && (v as number) > MAX_TIMEOUT_MS) configError(`config ${file}: "${k}" must be at most ${MAX_TIMEOUT_MS} (ms; Node timers hold no more)`);
  }
  if (raw.store !== undefined && raw.storeDir !== undefined) configError(`config ${file}: "store" and "storeDir" both name the snapshot store ("storeDir" is the old spelling of "store": DIR); keep one`);
  if (raw.store !== undefined) raw.store = parseStoreConfig(raw.store, `config ${file}: store`);
  if (raw.tls !== undefined) raw.tls = parseTlsFiles(raw.tls, `config ${file}`);
  if (raw.roles !== undefined) raw.roles = parseRolesTable(raw.roles, `config ${file}`);
  return raw as CoordinatorFileConfig;
}

function packageVersion(): string {
  try {
    return (JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version?: string }).version ?? '';
  } catch {
    return '';
  }
}

/** The store: a flag (--store or its old spelling --store-dir, not both) over the file's, else ./vnsnap-store. */
function storeOf(flags: { store?: string; storeDir?: string }, file: CoordinatorFileConfig): Pick<CoordinatorConfig, 'store' | 'storeDir'> {
  if (flags.store !== undefined && flags.storeDir !== undefined) configError('--store and --store-dir both name the snapshot store (--store-dir is the old spelling); keep one');
  const dir = flags.store ?? flags.storeDir;
  if (dir !== undefined) return { store: parseStoreConfig(dir, '--store'), storeDir: undefined };
  if (file.store !== undefined || file.storeDir !== undefined) return { store: file.store, storeDir: file.storeDir };
  return { store: { kind: 'local', dir: 'vnsnap-store' }, storeDir: undefined };
}

async function main(): Promise<void> {
  // The AWS SDK (an S3 store) prints a multi-line notice on stderr, once, that its releases after
  // January 2027 need Node 22; the lock file pins one that runs on Node 20 (docs/storage.md,
  // "Backends"). Among the JSON log lines it only confuses; the SDK's own switch turns it off.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const program = new Command()
    .name('vnsnap-coordinator')
    .description('vnsnap coordinator: the gRPC service clients call; sequences snapshots and restores across agents')
    .option('--listen <host:port>', `address to listen on (default ${DEFAULT_LISTEN})`)
    .option('--db <file>', 'SQLite catalog file (default ./vnsnap-catalog.db)')
    .option('--store <dir>', 'snapshot store: a directory (content-addressed; default ./vnsnap-store); a config file can name an S3 bucket or the whole-file layout instead')
    .option('--store-dir <dir>', 'the old spelling of --store <dir>')
    .option('--config <file>', 'JSON config file (flags override it)')
    .option('--log-level <level>', 'pino log level (default info)')
    .option('--tls-ca <file>', 'CA certificate (PEM) clients and agents must be signed by')
    .option('--tls-cert <file>', "the coordinator's server certificate (PEM)")
    .option('--tls-key <file>', "the coordinator's private key (PEM)")
    .option('--insecure-plaintext', 'no TLS, no authentication: allowed only on a loopback listen address')
    .option('--rebuild-catalog', "rebuild the catalog (--db) from the snapshot manifests in the store after the coordinator's disk was lost, print what was done, and exit")
    .option('--force', 'with --rebuild-catalog: also when the catalog already holds snapshots (those the store has are replaced)')
    .parse();
  const flags = program.opts<{ listen?: string; db?: string; store?: string; storeDir?: string; config?: string; logLevel?: string; tlsCa?: string; tlsCert?: string; tlsKey?: string; insecurePlaintext?: boolean; rebuildCatalog?: boolean; force?: boolean }>();
  const file = flags.config ? readConfigFile(flags.config) : {};
  const tls = tlsFromFlags(file.tls, { ca: flags.tlsCa, cert: flags.tlsCert, key: flags.tlsKey });
  const config: CoordinatorConfig = {
    ...file,
    ...(tls ? { tls } : {}),
    insecurePlaintext: flags.insecurePlaintext ?? file.insecurePlaintext ?? false,
    listen: flags.listen ?? file.listen ?? DEFAULT_LISTEN,
    db: flags.db ?? file.db ?? 'vnsnap-catalog.db',
    ...storeOf(flags, file),
  };
  if (flags.rebuildCatalog) {
    const code = await rebuild(config, flags.force === true);
    // Exit once stdout is flushed: an S3 client's idle sockets must not keep the process alive.
    process.stdout.write('', () => process.exit(code));
    return;
  }
  const log = createLogger('coordinator', { level: flags.logLevel ?? file.logLevel ?? 'info' });
  const version = packageVersion();
  const server = new CoordinatorServer({ config, log, version });
  // The process's parts, started in order and stopped in reverse by the one lifecycle helper.
  const parts: Startable[] = [server];
  await startAll(parts);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    stopAll(parts).then(
      () => process.exit(0),
      (e: unknown) => {
        log.error({ error: describeError(e) }, 'stop failed');
        process.exit(1);
      },
    );
  };
  reloadOnSighup(() => {
    // The roles table comes from the config file: re-read with the TLS files, applied only when both are good.
    let roles = file.roles ?? {};
    try {
      if (flags.config) roles = readConfigFile(flags.config).roles ?? {};
    } catch (e) {
      return { ok: false, error: describeError(e) };
    }
    const r = server.reloadTls();
    if (r.ok) server.setRoles(roles);
    return r;
  }, log);
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // The ready line comes last: whoever reads it may signal at once (see agent/main.ts).
  process.stdout.write(`${JSON.stringify({ event: 'ready', address: server.address })}\n`);
}

/** --rebuild-catalog: the exit code. */
async function rebuild(config: CoordinatorConfig, force: boolean): Promise<number> {
  const catalog = new Catalog(config.db);
  try {
    const storeConfig = configuredStore(config);
    const store = await openStore(storeConfig);
    try {
      const name = describeStore(storeConfig);
      const r = await rebuildCatalog(catalog, store, { force });
      process.stdout.write(describeRebuild(r, { db: config.db, store: name }));
      return r.problems.length > 0 ? 3 : 0;
    } finally {
      store.close?.();
    }
  } finally {
    catalog.close();
  }
}

if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`vnsnap-coordinator: ${describeError(e)}\n`);
    process.exit(1);
  });
}
