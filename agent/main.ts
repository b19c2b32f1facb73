#!/usr/bin/env -S node --single-threaded-gc
/**
 * vnsnap-agent: the per-host daemon. Thin: read the configuration (file + flags), build the
 * agent, its drivers and metrics server, start them in order with the lifecycle helper
 * (proto/core/lifecycle.ts); stop them in reverse on SIGTERM/SIGINT.
 * It runs with the Node flags of node-flags.ts (this file's `#!` line and the unit pass them; a
 * process started without one logs a warning naming it and goes on).
 * When ready it prints one JSON line on stdout ({"event":"ready",...}); logs are JSON on stderr.
 * A bad configuration is one line on stderr and exit status 2. The metrics server (when a port is
 * given) binds loopback unless metricsAddress names another address, and serves /debug/vms only
 * when debugVms (--debug-vms) enables it. The session to the coordinator is mutual TLS with the
 * configured PEM files (re-read on SIGHUP: the live session goes on, the next connection uses
 * the new files), or plaintext to a loopback coordinator when insecurePlaintext says so.
 *
 * The drivers it can build are the product drivers (qemu, xen), each enabled by name in the
 * configuration. runAgentMain() takes extra driver factories: the only caller that passes any is
 * the test entry point test/sim/agent-main.ts (the simulated driver), so no test driver is part of
 * the product binary.
 */
import { Command } from 'commander';
import { describeError } from '../proto/core/errors';
import { startAll, stopAll, type Startable } from '../proto/core/lifecycle';
import { createLogger, type Logger } from '../proto/core/log';
import { Agent, type AgentOptions } from './agent';
import { loadAgentConfig, METRICS_DEFAULT_ADDRESS, PRODUCT_DRIVERS, type AgentConfig } from './config';
import type { HypervisorDriver } from './drivers/driver';
import { AgentMetrics, serveMetrics } from './metrics';
import { AGENT_NODE_FLAGS, missingNodeFlags } from './node-flags';
import { QemuDriver } from './drivers/qemu/driver';
import { defaultNicMode } from './drivers/qemu/nic-backend';
import { XenDriver } from './drivers/xen/driver';
import { grpcSessionTransportWith } from './session';
import { hideIpServerNameWarning, PemCertificates, reloadOnSighup } from '../proto/core/tls';

/** A driver the agent builds when the configuration names it. */
export interface DriverFactory {
  /** The name in the configuration's "drivers" list. */
  name: string;
  make(log: Logger, cfg: AgentConfig): HypervisorDriver;
}

const productDrivers: DriverFactory[] = [
  // nic tap-vnet until the agent's start decides (defaultNicMode: tap-bpf where its in-kernel data
  // path runs): QEMU holds its own TAP, which outlives the agent (docs/agent-restart.md), with
  // vnet_hdr=on so guest offloads reach the switch (docs/qemu.md, docs/nic-offloads.md).
  { name: 'qemu', make: (log, cfg) => new QemuDriver({ logger: log.child({ driver: 'qemu' }), imageRoots: cfg.imageRoots, nic: defaultNicMode(false), disksDir: `${cfg.stateDir}/disks` }) },
  { name: 'xen', make: (log, cfg) => new XenDriver({ logger: log.child({ driver: 'xen' }), imageRoots: cfg.imageRoots }) },
];

/**
 * The agent's in-kernel data path (config.ts dataPath): required, on where it can run (the
 * default, when the agent runs the QEMU driver: the data path carries its tap-bpf NICs only), or
 * off. The prefix is the QEMU driver's (its tap-bpf TAPs share the set), else its default's.
 */
function dataPathOf(cfg: AgentConfig, qemu: QemuDriver | undefined): AgentOptions['dataPath'] {
  if (!cfg.dataPath) return { off: 'dataPath: false' };
  if (!cfg.dataPath.required && !qemu) return { off: 'this agent runs no QEMU driver' };
  return { prefix: (qemu ?? new QemuDriver({ accel: 'tcg' })).dataPathPrefix, vxlanPort: cfg.dataPath.vxlanPort, required: cfg.dataPath.required };
}

/** The Prometheus /metrics (and /debug/vms) HTTP server as a lifecycle part: start binds, stop closes. */
class MetricsServer implements Startable {
  private served: Awaited<ReturnType<typeof serveMetrics>> | undefined;

  constructor(
    private readonly metrics: AgentMetrics,
    private readonly listenPort: number,
    private readonly listenAddress: string,
    private readonly debug: (() => unknown) | undefined,
  ) {}

  async start(): Promise<void> {
    this.served = await serveMetrics(this.metrics.registry, this.listenPort, this.listenAddress, this.debug);
  }

  stop(): void {
    this.served?.server.close();
    this.served = undefined;
  }

  /** The bound port (the configured one, or the ephemeral one for 0); undefined before start. */
  get port(): number | undefined {
    return this.served?.port;
  }
}

/** Parse the command line and configuration, build and start the agent; `extra` adds driver factories. */
export async function runAgentMain(extra: readonly DriverFactory[] = []): Promise<void> {
  // grpc-js names the coordinator's IP address as the TLS server name, which Node warns about
  // (DEP0123) in plain text on stderr, among the JSON log lines.
  hideIpServerNameWarning();
  // The AWS SDK (an S3 store) prints a multi-line notice on stderr, once, that its releases after
  // January 2027 need Node 22; the lock file pins one that runs on Node 20 (docs/storage.md,
  // "Backends"). Among the JSON log lines it only confuses; the SDK's own switch turns it off.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const factories = [...extra, ...productDrivers];
  const program = new Command()
    .name('vnsnap-agent')
    .description('The vnsnap agent: hosts the overlay switch and the VMs of this host, executes the coordinator\'s commands.')
    .option('-c, --config <file>', 'configuration file (JSON, same keys as the flags)')
    .option('--id <id>', 'agent id')
    .option('--coordinator <host:port>', 'coordinator gRPC address')
    .option('--tunnel <addr:port>', 'Geneve tunnel address and UDP port (0 = ephemeral)')
    .option('--advertise <addr>', 'tunnel address peers reach (default: the tunnel address)')
    .option('--tunnel-offload', 'UDP GSO/GRO on the tunnel (the default where the kernel has them; probed at start)')
    .option('--no-tunnel-offload', 'no UDP GSO/GRO on the tunnel: one datagram per frame')
    .option('--store <dir>', 'snapshot store: a directory (content-addressed); a config file can name an S3 bucket or the whole-file layout instead')
    .option('--metrics-port <port>', 'serve Prometheus /metrics on this port (0 = ephemeral)')
    .option('--metrics-address <addr>', `address /metrics and /debug/vms bind (default ${METRICS_DEFAULT_ADDRESS}; 0.0.0.0 exposes them to the network)`)
    .option('--debug-vms', 'also serve GET /debug/vms (every VM\'s spec and state) on the metrics server (default off)')
    .option('--log-level <level>', 'log level (fatal, error, warn, info, debug, trace, silent)')
    .option('--state-dir <dir>', 'the agent\'s state directory: records of the VMs that outlive it (default /var/lib/vnsnap)')
    .option('--image-root <dir>', 'a directory VM images may come from (repeatable; default /var/lib/vnsnap/images)', (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .option('--tls-ca <file>', 'CA certificate (PEM) the coordinator must be signed by')
    .option('--tls-cert <file>', "this agent's certificate (PEM; its CN is the agent id)")
    .option('--tls-key <file>', "this agent's private key (PEM)")
    .option('--insecure-plaintext', 'no TLS, no authentication: allowed only for a loopback coordinator')
    .showHelpAfterError();
  program.parse();
  const o = program.opts<{
    config?: string;
    id?: string;
    coordinator?: string;
    tunnel?: string;
    advertise?: string;
    tunnelOffload?: boolean;
    store?: string;
    metricsPort?: string;
    metricsAddress?: string;
    debugVms?: boolean;
    logLevel?: string;
    imageRoot?: string[];
    stateDir?: string;
    tlsCa?: string;
    tlsCert?: string;
    tlsKey?: string;
    insecurePlaintext?: boolean;
  }>();
  let cfg: ReturnType<typeof loadAgentConfig>;
  let certs: PemCertificates | undefined;
  try {
    cfg = loadAgentConfig(o.config, {
      id: o.id,
      coordinator: o.coordinator,
      tunnel: o.tunnel,
      advertise: o.advertise,
      tunnelOffload: o.tunnelOffload,
      store: o.store,
      metricsPort: o.metricsPort,
      metricsAddress: o.metricsAddress,
      debugVms: o.debugVms,
      logLevel: o.logLevel,
      imageRoots: o.imageRoot,
      stateDir: o.stateDir,
      tlsCa: o.tlsCa,
      tlsCert: o.tlsCert,
      tlsKey: o.tlsKey,
      insecurePlaintext: o.insecurePlaintext,
    }, [...extra.map((f) => f.name), ...PRODUCT_DRIVERS]);
    certs = cfg.tls ? new PemCertificates(cfg.tls) : undefined;
  } catch (e) {
    process.stderr.write(`vnsnap-agent: ${describeError(e)}\n`);
    process.exit(2);
  }
  const log = createLogger('agent', { level: cfg.logLevel, host: cfg.id });
  // The agent carries its VMs' network ports: a promise rejection some code path forgot to handle
  // (a bug) is logged with its stack, and the agent goes on instead of taking the ports down
  // (seen once in dom0 when xl migrate failed mid-capture; the snapshot itself failed cleanly).
  process.on('unhandledRejection', (reason) => log.error({ err: describeError(reason), stack: reason instanceof Error ? reason.stack : undefined }, 'unhandled promise rejection (a bug): logged, the agent goes on'));
  const missing = missingNodeFlags(process.execArgv);
  if (missing.length > 0) log.warn({ missing }, `started without the Node flags ${missing.join(' ')}: each snapshot costs this host more CPU (docs/performance.md, "The agent's garbage collection on one thread"); start it as the unit does: node ${AGENT_NODE_FLAGS.join(' ')} .../agent/main.js`);
  const drivers: HypervisorDriver[] = factories.filter((f) => cfg.drivers.includes(f.name)).map((f) => f.make(log, cfg));
  const qemu = drivers.find((d): d is QemuDriver => d instanceof QemuDriver);
  const metrics = new AgentMetrics(undefined, { agent: cfg.id });
  const agent = new Agent({
    id: cfg.id,
    coordinator: cfg.coordinator,
    tunnel: { address: cfg.tunnel.address, port: cfg.tunnel.port, ...(cfg.advertise ? { advertise: cfg.advertise } : {}), ...(cfg.tunnelOffload !== undefined ? { offload: cfg.tunnelOffload } : {}) },
    storeConfig: cfg.store,
    stateDir: cfg.stateDir,
    drivers,
    logger: log,
    metrics,
    session: grpcSessionTransportWith(certs?.channelCredentials()),
    ...(cfg.tls ? { migrationTls: cfg.tls } : {}),
    dataPath: dataPathOf(cfg, qemu),
    dataPathDecided: (on) => {
      if (qemu) qemu.defaultNic = defaultNicMode(on);
    },
  });
  // The process's parts, started in order and stopped in reverse by the one lifecycle helper: a
  // metrics port that cannot be bound stops the agent that had started.
  const metricsServer = cfg.metricsPort !== undefined ? new MetricsServer(metrics, cfg.metricsPort, cfg.metricsAddress ?? METRICS_DEFAULT_ADDRESS, cfg.debugVms ? () => agent.debugVms() : undefined) : undefined;
  const parts: Startable[] = metricsServer ? [agent, metricsServer] : [agent];
  try {
    await startAll(parts);
  } catch (e) {
    process.stderr.write(`vnsnap-agent: ${describeError(e)}\n`);
    process.exit(2);
  }
  let stopping = false;
  const shutdown = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ sig }, 'stopping');
    stopAll(parts).then(
      () => process.exit(0),
      (e) => {
        log.error({ err: describeError(e) }, 'stop failed');
        process.exit(1);
      },
    );
  };
  // The unit's ExecReload sends SIGHUP: without TLS files there is nothing to re-read, but the
  // signal must not take Node's default action (exit).
  if (certs) {
    const c = certs;
    reloadOnSighup(() => c.reload(), log);
  } else process.on('SIGHUP', () => log.info('SIGHUP: no TLS files to reload (plaintext on loopback)'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  // The ready line comes last: whoever reads it may signal at once, and a signal that arrives
  // before its handler is installed would take Node's default action (exit by the signal).
  process.stdout.write(
    JSON.stringify({ event: 'ready', id: cfg.id, tunnelPort: agent.boundTunnelPort, tunnelOffload: agent.tunnelOffloaded, metricsPort: metricsServer?.port ?? null, innerMtu: agent.switch.innerMtu, drivers: cfg.drivers, dataPath: agent.dataPathPort ?? null }) + '\n',
  );
}

if (require.main === module) void runAgentMain();
