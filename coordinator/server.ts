/**
 * The coordinator process's parts wired together: catalog, agent registry, sequencers,
 * manifest store, event bus, and one grpc-js server hosting CoordinatorService, AgentService,
 * health and reflection.
 *
 * start(): check the timer settings (at most 2^31-1 ms) and the transport (mutual TLS with the
 * configured PEM files, or plaintext only when insecurePlaintext is set and the listen address
 * is loopback: proto/core/tls.ts), open the ONE snapshot store the config names (`store`, or
 * `storeDir`, its old spelling; openStore and checkStoreReachable of proto/store/store-config.ts:
 * a missing S3 bucket or refused credentials fail the start with one line) — the manifests go
 * to it and the service's parts reach it as deps.store — then open the catalog (migrate, recover), bind, report
 * NOT_SERVING→SERVING; dead_after_ms later, running VNEs whose agents have not registered since
 * are DEGRADED (vne-health.ts: the coordinator restarted while those agents were away) and the
 * snapshot schedules start (scheduler.ts: a run missed while down is taken then, once). With TLS every call passes the role check of authz.ts first, and
 * reloadTls() (SIGHUP in main.ts) swaps the PEM files for new connections without dropping any
 * session or stream.
 * stop(): health NOT_SERVING, abort snapshots in progress (their SnapshotAbort leaves before
 * the sessions close), end agent sessions and streams, shut the server down (forcibly after
 * a grace period), close the catalog.
 */
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { VnsnapError } from '../proto/core/errors';
import { AGENT_SERVICE, COORDINATOR_SERVICE, loadVnsnap, SESSION_KEEPALIVE } from '../proto/core/grpc';
import { addHealthAndReflection } from '../proto/core/grpc-reflection';
import type { Startable } from '../proto/core/lifecycle';
import type { Logger } from '../proto/core/log';
import { AgentRegistry } from './agent-registry';
import { Catalog } from './catalog';
import { nowUs, systemClock, type Clock, type TimerHandle } from '../proto/core/clock';
import { EventBus } from './events';
import { StoreManifests } from './manifest-store';
import type { SnapshotStore } from '../proto/store/snapshot-store';
import { checkStoreReachable, describeStore, openStore, type StoreConfig } from '../proto/store/store-config';
import { RestoreSequencer } from './restore-sequencer';
import { MigrateRecovery } from './migrate-recovery';
import { MigrateSequencer } from './migrate-sequencer';
import { CoordinatorServiceImpl } from './service';
import { SnapshotSequencer } from './snapshot-sequencer';
import { CUT_MARGIN_ENV, CutMargin, parseCutMargin, parsePrecopyLead, PRECOPY_LEAD_ENV } from './cut-instant';
import { MAX_TIMEOUT_MS } from './validation';
import { checkTransport, PemCertificates, type TransportConfig } from '../proto/core/tls';
import { authzInterceptor, type RolesTable } from './authz';

export interface CoordinatorConfig extends TransportConfig {
  /** Subject CN → role, overriding the certificate's OU (authz.ts). */
  roles?: RolesTable;
  /** host:port to listen on (port 0: any free port). */
  listen: string;
  /** SQLite catalog file (':memory:' for tests). */
  db: string;
  /**
   * The snapshot store (parsed by parseStoreConfig): manifests go to snapshots/<id>/manifest.pb
   * in it. The agents must name the same store.
   */
  store?: StoreConfig;
  /** The old spelling of `store: { kind: 'local', dir }` (a directory); not together with `store`. */
  storeDir?: string;
  coordinatorId?: string;
  heartbeatIntervalMs?: number;
  deadAfterMs?: number;
  /** Timeout of single commands to agents outside snapshots (StartVm, ConfigureVne, ...). */
  commandTimeoutMs?: number;
  /** Every agent sees the same store (default true). */
  sharedStore?: boolean;
}

export const DEFAULT_LISTEN = '127.0.0.1:7443';

/** The store a config names: `store`, or `storeDir` (its old spelling, a directory); ERR_CONFIG for both or neither. */
export function configuredStore(c: Pick<CoordinatorConfig, 'store' | 'storeDir'>): StoreConfig {
  if (c.store !== undefined && c.storeDir !== undefined) throw new VnsnapError('ERR_CONFIG', 'store and storeDir name the snapshot store twice: storeDir is the old spelling of "store": DIR, keep one');
  if (c.store !== undefined) return c.store;
  if (c.storeDir !== undefined && c.storeDir !== '') return { kind: 'local', dir: c.storeDir };
  throw new VnsnapError('ERR_CONFIG', 'store: no snapshot store configured');
}
/**
 * The largest request the server reads (grpc-js' default, set here on purpose): far above any
 * valid request and every field limit of coordinator/validation.ts, so an over-long name reaches
 * validation and is INVALID_ARGUMENT naming the field; only a larger message is
 * RESOURCE_EXHAUSTED from the transport.
 */
export const MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024;

export interface CoordinatorServerOptions {
  config: CoordinatorConfig;
  log: Logger;
  clock?: Clock;
  /** vnsnap release (manifests record it). */
  version?: string;
  /** Grace period for in-flight RPCs on stop before the server is shut down forcibly. */
  shutdownGraceMs?: number;
}

export class CoordinatorServer implements Startable {
  catalog!: Catalog;
  registry!: AgentRegistry;
  snapshots!: SnapshotSequencer;
  restores!: RestoreSequencer;
  service!: CoordinatorServiceImpl;
  /** The snapshot store (open after start). */
  store!: SnapshotStore;
  readonly events: EventBus;
  private server?: grpc.Server;
  private health?: ReturnType<typeof addHealthAndReflection>;
  private boundAddress = '';
  private readonly clock: Clock;
  /** dead_after_ms after the start: agents of running VNEs that have not registered are lost. */
  private startSweep?: TimerHandle;
  private certs?: PemCertificates;
  private roles: RolesTable;

  constructor(private readonly opts: CoordinatorServerOptions) {
    this.clock = opts.clock ?? systemClock;
    this.roles = opts.config.roles ?? {};
    this.events = new EventBus(() => this.clock.now());
  }

  /** host:port actually bound (after start). */
  get address(): string {
    return this.boundAddress;
  }

  async start(): Promise<void> {
    const { config, log } = this.opts;
    for (const k of ['heartbeatIntervalMs', 'deadAfterMs', 'commandTimeoutMs'] as const) {
      const v = config[k];
      if (v !== undefined && (!Number.isInteger(v) || v <= 0 || v > MAX_TIMEOUT_MS)) throw new VnsnapError('ERR_CONFIG', `${k} ${v} is out of range (1..${MAX_TIMEOUT_MS} ms)`);
    }
    checkTransport(config, 'listen address', config.listen);
    this.certs = config.tls ? new PemCertificates(config.tls) : undefined;
    const storeConfig = configuredStore(config);
    const store = await openStore(storeConfig);
    await checkStoreReachable(store, storeConfig);
    this.store = store;
    const clock = this.clock;
    this.catalog = new Catalog(config.db, { now: () => clock.now(), onCheckpointError: (error) => log.warn({ error }, 'catalog: a background fsync or checkpoint failed; the next one retries') });
    if (this.catalog.recovered.snapshots.length > 0 || this.catalog.recovered.restores.length > 0) {
      log.warn({ snapshots: this.catalog.recovered.snapshots, restores: this.catalog.recovered.restores }, 'marked operations of the previous coordinator aborted; agents get SnapshotAbort when they register');
    }
    const coordinatorId = config.coordinatorId ?? `coordinator-${randomBytes(4).toString('hex')}`;
    // One µs clock for the commands' stamps and the cut instants (the agents' offsets are taken against it).
    const micros = clock === systemClock ? nowUs : () => clock.now() * 1000;
    this.registry = new AgentRegistry({
      nowUs: micros,
      catalog: this.catalog,
      log: log.child({ part: 'agents' }),
      coordinatorId,
      clock,
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      deadAfterMs: config.deadAfterMs,
      commandTimeoutMs: config.commandTimeoutMs,
    });
    const migrations = new MigrateRecovery({ agents: this.registry, catalog: this.catalog, log: log.child({ part: 'migrate' }), events: this.events, now: () => clock.now(), commandTimeoutMs: config.commandTimeoutMs });
    this.registry.on('joined', (agent, running, endpointChanged) => {
      this.events.publish({ kind: 'agent.joined', agent, message: `agent ${agent} connected` });
      // Migrations held at their switchover first: they decide which VMs count as running there.
      this.service.agentJoined(agent, migrations.joined(agent, running, this.registry.registration(agent)?.migrating ?? []), endpointChanged);
    });
    this.registry.on('left', (agent, reason) => {
      this.events.publish({ kind: 'agent.left', agent, message: reason });
      this.service.agentLeft(agent, reason);
    });
    const manifests = new StoreManifests(store);
    const storeName = describeStore(storeConfig);
    const deps = { agents: this.registry, catalog: this.catalog, manifests, store, clock, events: this.events, version: this.opts.version };
    this.snapshots = new SnapshotSequencer({
      ...deps,
      log: log.child({ part: 'snapshot' }),
      cutMargin: new CutMargin(parseCutMargin(process.env[CUT_MARGIN_ENV]), {}, parsePrecopyLead(process.env[PRECOPY_LEAD_ENV])),
      nowUs: micros,
      clockOffset: (a) => this.registry.clockOffset(a),
    });
    this.restores = new RestoreSequencer({ ...deps, log: log.child({ part: 'restore' }) });
    this.service = new CoordinatorServiceImpl({
      ...deps,
      snapshots: this.snapshots,
      restores: this.restores,
      migrations: new MigrateSequencer({ ...deps, log: log.child({ part: 'migrate' }), tlsOf: (a) => this.registry.registration(a)?.tls }),
      log: log.child({ part: 'service' }),
      store,
      storeName,
      sharedStore: config.sharedStore,
      commandTimeoutMs: config.commandTimeoutMs,
    });

    const pkg = loadVnsnap();
    const server = new grpc.Server({
      ...SESSION_KEEPALIVE,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc.max_receive_message_length': MAX_RECEIVE_MESSAGE_BYTES,
      interceptors: this.certs ? [authzInterceptor(() => this.roles)] : [],
    });
    server.addService(pkg.vnsnap.v1.CoordinatorService.service, this.service.handlers());
    server.addService(pkg.vnsnap.v1.AgentService.service, { Session: (call: Parameters<AgentRegistry['attach']>[0]) => this.registry.attach(call) });
    this.health = addHealthAndReflection(server, [COORDINATOR_SERVICE, AGENT_SERVICE]);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(config.listen, this.certs?.serverCredentials() ?? grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(new VnsnapError('ERR_CONFIG', `cannot listen on ${config.listen}: ${err.message}`, { cause: err })) : resolve(p))),
    ).catch((e: unknown) => {
      this.catalog.close();
      throw e;
    });
    this.server = server;
    this.registry.start();
    const sweepMs = this.registry.deadAfterMs;
    this.startSweep = clock.setTimeout(() => {
      this.startSweep = undefined;
      this.service.health.sweep(`not registered within ${sweepMs} ms of the coordinator's start`);
      // Schedules start once the agents had their time to register: a run missed while the
      // coordinator was down is taken now, once.
      this.service.scheduler.start();
    }, sweepMs);
    const host = config.listen.replace(/:\d+$/, '');
    this.boundAddress = `${host}:${port}`;
    log.info({ address: this.boundAddress, db: config.db, store: describeStore(storeConfig), coordinatorId, tls: this.certs !== undefined }, 'coordinator listening');
  }

  /** Replace the roles table (SIGHUP): the next call is checked against it. */
  setRoles(roles: RolesTable): void {
    this.roles = roles;
  }

  /** Re-read the TLS files (SIGHUP): new connections use them; bad files keep the old ones. */
  reloadTls(): { ok: true } | { ok: false; error: string } {
    return this.certs ? this.certs.reload() : { ok: false, error: 'the coordinator runs without TLS' };
  }

  async stop(): Promise<void> {
    const { log } = this.opts;
    this.health?.setStatus('', 'NOT_SERVING');
    this.health?.setStatus(COORDINATOR_SERVICE, 'NOT_SERVING');
    this.clock.clearTimeout(this.startSweep);
    this.startSweep = undefined;
    this.service?.scheduler.stop();
    await this.snapshots?.stop('coordinator stopping');
    // Let the SnapshotAbort commands leave before the sessions close.
    await new Promise((r) => setImmediate(r));
    this.registry?.stop();
    this.service?.endStreams();
    const server = this.server;
    this.server = undefined;
    if (server) {
      const grace = this.opts.shutdownGraceMs ?? 2000;
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, grace);
        server.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    this.catalog?.close();
    this.store?.close?.(); // an S3 client's sockets
    log.info('coordinator stopped');
  }
}
