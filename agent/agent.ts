/**
 * The agent: one per host. It owns the host's Switch (with its UDP tunnel), drives the local
 * hypervisor through HypervisorDrivers, writes images and channel state to the SnapshotStore,
 * and executes the coordinator's Commands (docs/control-plane.md).
 *
 * This module is the composition root: it builds the parts and starts and stops them in order.
 *   session.ts          the coordinator session (Register, Welcome, heartbeat, backoff), injectable
 *   commands.ts         Commands → the parts below; one Result per Command with a stable error code
 *   vne-table.ts        ConfigureVne → the switch's configureVne (the switch owns peers, MACs, generation)
 *   vms.ts              VM lifecycle through the drivers; the VMs' ports on the switch (attachPort)
 *   snapshot-runner.ts  SnapshotBegin/Commit/Persist/Abort (the cut: switch.cutPorts), aborts on a lost session
 *   restore-runner.ts   RestorePrepare/Resume/Cancel behind the switch's restore gates (openGate)
 * Time comes from an injected Clock (the system clock by default): the runners' timers and the
 * session's are testable on a manual clock.
 *
 * VMs outlive the agent (docs/agent-restart.md): stop() releases the VMs of drivers that can
 * hand them over (QEMU) instead of stopping them, their in-kernel data path left carrying
 * (DataPathWiring.leave), and start() adopts what a previous agent left
 * in the state directory (adopt.ts) before it registers; their ports rejoin the switch at the
 * coordinator's ConfigureVne. Only StopVm (or a restore replacing them) stops VMs.
 *
 * Snapshots in progress when the session drops are aborted locally after dead_after_ms
 * (VMs resumed, ports advanced, partial artefacts deleted): VMs never stay stopped because
 * the coordinator went away.
 *
 * Many agents may live in one process: no globals, no signal handlers, one Switch, UDP socket,
 * metrics registry and session transport each.
 *
 * Events: 'connected' (a session was welcomed), 'disconnected' (a welcomed session was lost),
 * 'refused' (reason: the coordinator refused the session).
 */
import { EventEmitter } from 'node:events';
import * as os from 'node:os';
import { systemClock, type Clock } from '../proto/core/clock';
import { describeError, isVnsnapError, VnsnapError } from '../proto/core/errors';
import type { Startable } from '../proto/core/lifecycle';
import { silentLogger, type Logger } from '../proto/core/log';
import type { TlsFiles } from '../proto/core/tls';
import type { Register } from '../proto/gen/vnsnap/v1/Register';
import { Switch, type SwitchOptions } from '../switch/switch';
import type { TunnelTransport } from '../switch/tunnel/transport';
import { UdpTransport } from '../switch/tunnel/udp';
import { probeUdpOffload, type UdpOffloadProbe } from '../switch/tunnel/offload-probe';
import { CommandDispatcher } from './commands';
import type { HypervisorDriver } from './drivers/driver';
import { hostDataPath, wireDataPath } from './bpf-dp/host-dp';
import { AgentMetrics } from './metrics';
import { MigrateRunner } from './migrate-runner';
import { RestoreRunner } from './restore-runner';
import { CoordinatorSession, grpcSessionTransport, type SessionFactory } from './session';
import { SnapshotRunner } from './snapshot-runner';
import type { SnapshotStore } from '../proto/store/snapshot-store';
import type { StoreConfig } from '../proto/store/store-config';
import { StoreHandle } from './store-handle';
import { adoptVms, cleanLeftovers, type AdoptionReport } from './adopt';
import { isSameProcess, VmStateDir } from './vm-state';
import { VmTable, type VmDebugView } from './vms';
import { VneTable } from './vne-table';
import { AGENT_VERSION } from './version';

export { portName } from './vms';


export interface AgentOptions {
  /** Agent id (unique among the coordinator's agents); also the switch's id and its peers' name for it. */
  id: string;
  /** Coordinator gRPC address, host:port. */
  coordinator: string;
  /** Where the switch's Geneve tunnel listens (port 0 = ephemeral; the bound port is reported in Register). */
  /**
   * offload: UDP GSO/GRO on the tunnel. Absent or true: on when the kernel has them (probed at
   * start; otherwise off with one warning line); false: off.
   */
  tunnel: { address: string; port: number; advertise?: string; offload?: boolean };
  /**
   * The snapshot store the config names (proto/store/store-config.ts), opened by start() and
   * checked there (a missing S3 bucket or refused credentials fail the start). Ignored when
   * `store` is given.
   */
  storeConfig?: StoreConfig;
  /** An opened store to use as it is (tests). */
  store?: SnapshotStore;
  drivers: HypervisorDriver[];
  logger?: Logger;
  metrics?: AgentMetrics;
  hostname?: string;
  /** Session retry backoff (default 500 ms doubling to 5000 ms). */
  reconnect?: { initialMs?: number; maxMs?: number };
  switchOptions?: Partial<Omit<SwitchOptions, 'id'>>;
  /** How long SnapshotPersist waits for the switch's channel recording to end. Default 30 s. */
  channelTimeoutMs?: number;
  /** The kernel check behind tunnel.offload (default probeUdpOffload; tests replace it). */
  probeUdpOffload?: () => UdpOffloadProbe;
  /** A tunnel transport to use instead of a UdpTransport (tests). */
  transport?: TunnelTransport;
  /** Frames a restore gate holds per port before dropping them. Default 4 MiB. */
  restoreGateBytes?: number;
  /**
   * Pre-copy Progress of one VM goes to the coordinator at most this often (the readiness
   * change always goes at once). Drivers report every pass, which with many VMs is a flood the
   * coordinator and its clients do not need. Default 500 ms.
   */
  progressIntervalMs?: number;
  /** The agent's certificate files: live migrations' disk and memory streams use them (mutual TLS). */
  migrationTls?: TlsFiles;
  /** How the session reaches the coordinator (default: gRPC). Tests pass a fake transport. */
  session?: SessionFactory;
  /** Time for the session's and the runners' timers (default: the system clock). */
  clock?: Clock;
  /**
   * The agent's state directory (records of the VMs that outlive it, under vms/; vm-state.ts).
   * Absent: nothing is recorded, nothing adopted, and stop() stops every VM (no later agent
   * could find them). main passes the configured one.
   */
  stateDir?: string;
  /**
   * The in-kernel data path's fast path (agent/bpf-dp/host-dp.ts): loaded at start and wired
   * into the switch. `required`: a start where it cannot run fails; otherwise the agent goes on
   * without it, with one warning giving the loader's reason. `prefix`: the QEMU driver's
   * (QemuDriver.dataPathPrefix), so its tap-bpf TAPs share the set. `{ off }`: not loaded, for
   * the reason given (logged). Absent: off.
   */
  dataPath?: { prefix: string; vxlanPort: number; required?: boolean } | { off: string };
  /**
   * Called once at start with whether the data path runs, before any VM is adopted or started
   * (main: the QEMU driver's nic for specs that name none).
   */
  dataPathDecided?: (on: boolean) => void;
}

/** Wall-clock microseconds: sub-millisecond on the system clock, the clock's ms × 1000 otherwise. */
function microsOf(clock: Clock): () => number {
  if (clock === systemClock) return () => Math.round((performance.timeOrigin + performance.now()) * 1000);
  return () => clock.now() * 1000;
}

export class Agent extends EventEmitter implements Startable {
  readonly id: string;
  readonly log: Logger;
  readonly metrics: AgentMetrics;
  readonly store: SnapshotStore;
  private sw: Switch | undefined;
  private tunnelPort = 0;
  /** The tunnel runs with UDP GSO/GRO (set at start). */
  tunnelOffloaded = false;
  /** The in-kernel data path's VXLAN port when it runs (set at start; registered with the coordinator), else undefined. */
  dataPathPort: number | undefined;
  private readonly vms: VmTable;
  private readonly vnes: VneTable;
  private readonly snapshots: SnapshotRunner;
  private readonly session: CoordinatorSession;
  private readonly state: VmStateDir | undefined;
  /** What the last start found in the state directory (tests, logs). */
  adoption: AdoptionReport = { adopted: [], dead: [], skipped: [] };
  /** What the last start removed of dead agents' leftovers, one line each (tests, logs). */
  leftovers: string[] = [];

  constructor(readonly opts: AgentOptions) {
    super();
    if (!opts.id) throw new VnsnapError('ERR_CONFIG', 'an agent needs an id');
    this.id = opts.id;
    this.log = (opts.logger ?? silentLogger()).child({ agent: opts.id });
    this.metrics = opts.metrics ?? new AgentMetrics();
    if (opts.store) this.store = opts.store;
    else if (opts.storeConfig) this.store = new StoreHandle(opts.storeConfig);
    else throw new VnsnapError('ERR_CONFIG', `agent ${opts.id}: a snapshot store is required`);
    const clock = opts.clock ?? systemClock;
    const nowUs = microsOf(clock);
    const parts = { agentId: this.id, switch: () => this.switch, store: this.store, clock, nowUs, log: this.log, metrics: this.metrics };
    this.state = opts.stateDir !== undefined ? new VmStateDir(opts.stateDir) : undefined;
    const vnes = (this.vnes = new VneTable(parts));
    this.vms = new VmTable({ ...parts, drivers: opts.drivers, ...(this.state ? { state: this.state } : {}), generation: (vne) => vnes.generation(vne) });
    this.snapshots = new SnapshotRunner({
      ...parts,
      vms: this.vms,
      vnes,
      loopCauses: true,
      ...(opts.progressIntervalMs !== undefined ? { progressIntervalMs: opts.progressIntervalMs } : {}),
      ...(opts.channelTimeoutMs !== undefined ? { channelTimeoutMs: opts.channelTimeoutMs } : {}),
    });
    const restores = new RestoreRunner({ ...parts, vms: this.vms, vnes, snapshots: this.snapshots });
    const migrations = new MigrateRunner({ ...parts, listenAddress: opts.tunnel.advertise ?? opts.tunnel.address, ...(opts.migrationTls ? { tls: opts.migrationTls } : {}), vms: this.vms, vnes, snapshots: this.snapshots });
    const commands = new CommandDispatcher({ ...parts, vms: this.vms, vnes, snapshots: this.snapshots, restores, migrations });
    this.session = new CoordinatorSession({
      coordinator: opts.coordinator,
      transport: opts.session ?? grpcSessionTransport,
      clock,
      log: this.log,
      metrics: this.metrics,
      ...(opts.reconnect ? { reconnect: opts.reconnect } : {}),
      handlers: {
        register: () => this.register(migrations.held()),
        command: (link, cmd) => void commands.execute(link, cmd),
        up: () => this.emit('connected'),
        down: (wasUp) => {
          if (wasUp) this.emit('disconnected');
          this.snapshots.sessionLost(this.session.deadAfterMs);
          migrations.sessionLost();
        },
        refused: (reason) => this.emit('refused', reason),
      },
    });
  }

  // ───────────────────────────── lifecycle ─────────────────────────────

  async start(): Promise<void> {
    if (this.sw) return;
    // A state directory a newer agent left is refused before anything is touched (the data
    // path's pins among them: a newer build's would be replaced below).
    if (this.state) await this.state.scan();
    if (this.store instanceof StoreHandle) await this.store.open();
    const sw = new Switch({ id: this.id, ...(this.opts.restoreGateBytes !== undefined ? { restoreGateBytes: this.opts.restoreGateBytes } : {}), ...this.opts.switchOptions });
    const t = this.opts.transport ?? new UdpTransport(this.opts.tunnel.address, this.opts.tunnel.port, { offload: this.tunnelOffload() });
    this.tunnelOffloaded = t.gso === true;
    try {
      sw.attachTunnel(t);
    } catch (e) {
      t.close();
      throw e;
    }
    this.tunnelPort = t.localPort;
    try {
      this.dataPathPort = await this.startDataPath(sw);
    } catch (e) {
      sw.stop();
      throw e;
    }
    this.opts.dataPathDecided?.(this.dataPathPort !== undefined);
    sw.start();
    this.sw = sw;
    if (this.state) {
      try {
        const states = { leftAlone: [] as unknown[], dead: [] as unknown[] };
        this.adoption = await adoptVms({ agentId: this.id, state: this.state, vms: this.vms, log: this.log, states });
        this.leftovers = await cleanLeftovers(this.opts.drivers, states, this.log);
      } catch (e) {
        for (const vm of this.vms.values()) await this.vms.release(vm).catch(() => undefined);
        sw.stop();
        this.sw = undefined;
        throw e;
      }
    }
    this.metrics.setStatsSource(() => sw.stats());
    this.log.info({ tunnelPort: this.tunnelPort, tunnelOffload: this.tunnelOffloaded, coordinator: this.opts.coordinator, ...(this.store instanceof StoreHandle ? { store: this.store.describe } : {}) }, 'agent started');
    this.session.start();
  }

  /**
   * The data path as configured (AgentOptions.dataPath): wired into `sw` and its VXLAN port
   * returned, or undefined when it is off or, not required, cannot run. One log line says which.
   * Pins of another build are refused (ERR_UNSUPPORTED_VERSION) even when not required: the
   * tap-bpf VMs the agent is about to adopt would be left on them.
   */
  private async startDataPath(sw: Switch): Promise<number | undefined> {
    const dp = this.opts.dataPath;
    const fallback = 'new VMs whose spec names no nic get tap-vnet';
    if (!dp) return undefined;
    if ('off' in dp) {
      this.log.info({ dataPath: false }, `in-kernel data path off (${dp.off}): ${fallback}`);
      return undefined;
    }
    try {
      await wireDataPath(sw, dp.prefix, dp.vxlanPort, () => this.recordedTaps());
    } catch (e) {
      if (dp.required || isVnsnapError(e, 'ERR_UNSUPPORTED_VERSION')) throw e;
      this.log.warn({ dataPath: false, reason: describeError(e) }, `in-kernel data path off, it cannot run here (${describeError(e)}): ${fallback}`);
      return undefined;
    }
    const { replaced } = await hostDataPath(dp.prefix, dp.vxlanPort);
    if (replaced) this.log.warn({ stamp: replaced.stamp ?? null, taps: replaced.taps }, 'in-kernel data path: pins of another build replaced (their TAPs are put on the new program as their VMs are adopted)');
    this.log.info({ dataPath: true, vxlanPort: dp.vxlanPort }, `in-kernel data path on (VXLAN UDP ${dp.vxlanPort}): new VMs whose spec names no nic get tap-bpf, carried in the kernel`);
    return dp.vxlanPort;
  }

  /** The TAPs of the live QEMU VMs this agent's state directory records: the adoption puts them on a new data path. */
  private async recordedTaps(): Promise<ReadonlySet<string>> {
    if (!this.state) return new Set();
    const { records } = await this.state.scan();
    const live = records.filter(({ record: r }) => r.agent === this.id && r.spec.driver?.kind === 'qemu' && r.process !== undefined && isSameProcess(r.process));
    const taps = live.map(({ record: r }) => (r.driverState as { taps?: unknown } | null)?.taps);
    return new Set(taps.flatMap((t) => (Array.isArray(t) ? t : [])).filter((t): t is string => typeof t === 'string'));
  }

  /** Whether the tunnel uses UDP GSO/GRO: as configured, and only where the kernel has them. */
  private tunnelOffload(): boolean {
    if (this.opts.tunnel.offload === false) return false;
    const probe = (this.opts.probeUdpOffload ?? probeUdpOffload)();
    if (!probe.ok) this.log.warn({ reason: probe.why }, `tunnel offloads off: ${probe.why}; the tunnel sends and receives one datagram at a time`);
    return probe.ok;
  }

  async stop(): Promise<void> {
    this.session.stop();
    await this.snapshots.abortAll('agent stopping');
    // VMs that outlive the agent keep running (the next agent adopts them); the others stop,
    // first: their ports leave the in-kernel data path as any stopped VM's do. Then the data
    // path is left as it is (entries, fast flags, kernel FDB, programs on the TAPs), so the
    // kernel goes on carrying the released VMs' frames while no agent runs, as after a SIGKILL.
    const outlive = [...this.vms.values()].filter((vm) => this.state !== undefined && this.vms.outlivesAgent(vm));
    for (const vm of this.vms.values()) if (!outlive.includes(vm)) await this.vms.destroy(vm).catch((e) => this.log.warn({ vm: vm.key, err: describeError(e) }, 'stopping VM failed'));
    this.sw?.inKernelDataPath?.leave();
    for (const vm of outlive) await this.vms.release(vm).catch((e) => this.log.warn({ vm: vm.key, err: describeError(e) }, 'releasing VM failed'));
    this.sw?.stop();
    this.sw = undefined;
    if (this.store instanceof StoreHandle) this.store.close(); // the store it opened itself (an S3 client's sockets)
    this.metrics.connected.set(0);
    this.log.info('agent stopped');
  }

  /** The switch (tests, metrics). */
  get switch(): Switch {
    if (!this.sw) throw new VnsnapError('ERR_STATE', `agent ${this.id} is not started`);
    return this.sw;
  }

  /** The bound UDP port of the tunnel. */
  get boundTunnelPort(): number {
    return this.tunnelPort;
  }

  get connected(): boolean {
    return this.session.connected;
  }

  /** Driver-specific state of a VM (the driver's inspect()), for tests and debugging. */
  vmState(vne: string, vm: string): unknown {
    return this.vms.inspect(vne, vm);
  }

  /**
   * Read-only view of every VM this agent holds, for tests and debugging (served by main at
   * /debug/vms on the metrics port): its VNE, name, the restore it is prepared by (if any), each
   * port's switch epoch, and the driver's inspect() state.
   */
  debugVms(): { agent: string; vms: VmDebugView[] } {
    return { agent: this.id, vms: this.vms.debug() };
  }

  /** VMs this agent runs (or holds prepared), as "vne/vm". */
  vmKeys(): string[] {
    return this.vms.keys();
  }

  /** The Register message of a new session: this host, its tunnel, drivers, running VMs and migrations held at their switchover. */
  private register(migrating: Register['migrating']): Register {
    const running = this.vms
      .values()
      .filter((v) => v.restoreId === undefined)
      .map((v) => ({ vne: v.vne, vm: v.name, epoch: this.vms.epochOf(v), generation: this.vms.generationOf(v) }));
    return {
      agentId: this.id,
      hostname: this.opts.hostname ?? os.hostname(),
      version: AGENT_VERSION,
      tunnelAddress: this.opts.tunnel.advertise ?? this.opts.tunnel.address,
      tunnelPort: this.tunnelPort,
      drivers: this.vms.driverKinds,
      running,
      tls: !!this.opts.migrationTls,
      migrating,
      // the in-kernel data path's port: peers hand the kernel frames for this agent only on the same one
      ...(this.dataPathPort !== undefined ? { dataPathPort: this.dataPathPort } : {}),
    };
  }
}
