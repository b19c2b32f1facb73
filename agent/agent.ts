/**
 * The agent: one per host. It owns the host's Switch (with its UDP tunnel), drives the local
 * hypervisor through HypervisorDrivers, writes images and channel state to the SnapshotStore,
 * and executes the coordinator's Commands (docs/control-plane.md).
 *
 * Session: the agent dials the coordinator and opens AgentService.Session; Register, then
 * Heartbeats at the Welcome's interval. A lost session is retried with backoff 0.5 s → 5 s.
 * Every Command gets zero or more Progress and exactly one Result, on the session it came in
 * on (a Result for a session that is gone is dropped: the coordinator failed that command).
 * Snapshots in progress when the session drops are aborted locally after dead_after_ms
 * (VMs resumed, ports advanced, partial artefacts deleted): VMs never stay stopped because
 * the coordinator went away.
 *
 * The cut of one VM (SnapshotCommit), in DESIGN.md's order:
 *   switch.beginCut(port, k)          gate: frames for the VM are held
 *   job.cut(atPause)                  the driver pauses the VM, then calls atPause:
 *     switch.finishCut(port, k)         drain what the VM wrote before the pause (epoch k-1),
 *                                       e(p) = k, recording k starts, held frames released
 *                                       (they wait in the paused VM's NIC queue)
 *   driver: disk snapshot, final copy (precopy) / copy-on-write start (background), resume.
 *   If the driver cannot pause, atPause is never called and the ports are un-gated (cancelCut).
 *
 * Restore: RestorePrepare loads VMs paused and attaches their ports at epoch k under the new
 * generation behind a restore gate (a RestoreGatePort holds every frame the switch delivers);
 * RestoreResume resumes every VM, injects each port's recorded frames in order, then opens the
 * gate — so frames from peers that resumed first cannot overtake the channel state.
 *
 * Many agents may live in one process: no globals, no signal handlers, one Switch, UDP socket,
 * metrics registry and gRPC client each.
 */
import { EventEmitter } from 'node:events';
import * as os from 'node:os';
import * as grpc from '@grpc/grpc-js';
import { describeError, isVnsnapError, VnsnapError } from '../proto/core/errors';
import type { AgentMessage } from '../proto/gen/vnsnap/v1/AgentMessage';
import type { AgentServiceClient } from '../proto/gen/vnsnap/v1/AgentService';
import type { Artefact, Artefact__Output } from '../proto/gen/vnsnap/v1/Artefact';
import type { Command__Output } from '../proto/gen/vnsnap/v1/Command';
import type { ConfigureVne__Output } from '../proto/gen/vnsnap/v1/ConfigureVne';
import type { CoordinatorMessage__Output } from '../proto/gen/vnsnap/v1/CoordinatorMessage';
import type { DeleteArtefacts__Output } from '../proto/gen/vnsnap/v1/DeleteArtefacts';
import type { PhaseTiming } from '../proto/gen/vnsnap/v1/PhaseTiming';
import type { RestoreCancel__Output } from '../proto/gen/vnsnap/v1/RestoreCancel';
import type { RestorePrepare__Output } from '../proto/gen/vnsnap/v1/RestorePrepare';
import type { RestoreResume__Output } from '../proto/gen/vnsnap/v1/RestoreResume';
import type { Result } from '../proto/gen/vnsnap/v1/Result';
import type { SnapshotAbort__Output } from '../proto/gen/vnsnap/v1/SnapshotAbort';
import type { SnapshotBegin__Output } from '../proto/gen/vnsnap/v1/SnapshotBegin';
import type { SnapshotCommit__Output } from '../proto/gen/vnsnap/v1/SnapshotCommit';
import type { SnapshotPersist__Output } from '../proto/gen/vnsnap/v1/SnapshotPersist';
import type { StartVm__Output } from '../proto/gen/vnsnap/v1/StartVm';
import type { StopVm__Output } from '../proto/gen/vnsnap/v1/StopVm';
import type { ValidateArtefacts__Output } from '../proto/gen/vnsnap/v1/ValidateArtefacts';
import type { VmProgress } from '../proto/gen/vnsnap/v1/VmProgress';
import type { VmSnapshot } from '../proto/gen/vnsnap/v1/VmSnapshot';
import type { VmSpec__Output } from '../proto/gen/vnsnap/v1/VmSpec';
import { loadVnsnap, SESSION_KEEPALIVE } from '../proto/core/grpc';
import type { Startable } from '../proto/core/lifecycle';
import { silentLogger, type Logger } from '../proto/core/log';
import type { Port, RxBatch } from '../switch/port/port';
import { Switch, type SwitchOptions } from '../switch/switch';
import type { TunnelTransport } from '../switch/tunnel/transport';
import { UdpTransport } from '../switch/tunnel/udp';
import { decodeChannel, encodeChannel } from '../proto/artefacts/channel-state';
import type { CutReport, DriverKind, HypervisorDriver, SnapshotJob, SnapshotModeName, VmStartSpec } from './driver';
import { AgentMetrics } from './metrics';
import { LocalDirStore, type SnapshotStore, type StoredArtefact } from './store';

export const AGENT_VERSION = '0.1.0';

export interface AgentOptions {
  /** Agent id (unique among the coordinator's agents); also the switch's id and its peers' name for it. */
  id: string;
  /** Coordinator gRPC address, host:port. */
  coordinator: string;
  /** Where the switch's Geneve tunnel listens (port 0 = ephemeral; the bound port is reported in Register). */
  tunnel: { address: string; port: number; advertise?: string; offload?: boolean };
  /** Root directory of the LocalDirStore (ignored when `store` is given). */
  storeRoot?: string;
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
}

/**
 * A VM port seen through the agent: forwards everything, and while `held` keeps the frames the
 * switch delivers (copies, bounded) instead of passing them to the VM — the restore gate.
 */
export class RestoreGatePort implements Port {
  private held: { frame: Buffer; meta: Buffer | null }[] | null = null;
  private heldBytes = 0;
  private passthrough = false;
  drops = 0;

  constructor(
    readonly inner: Port,
    private readonly maxBytes: number,
  ) {}

  get name(): string {
    return this.inner.name;
  }
  get kind(): Port['kind'] {
    return this.inner.kind;
  }
  get rx(): RxBatch {
    return this.inner.rx;
  }
  get offload(): boolean | undefined {
    return this.inner.offload;
  }
  get holding(): boolean {
    return this.held !== null;
  }

  open(onBatch: (count: number) => void): void {
    this.inner.open(onBatch);
  }
  drain(): Promise<number> {
    return this.inner.drain();
  }
  close(): void {
    this.held = null;
    this.inner.close();
  }

  hold(): void {
    this.held ??= [];
  }

  send(frames: readonly Buffer[], count: number, metas?: Buffer | null): number {
    if (this.held === null || this.passthrough) return this.inner.send(frames, count, metas);
    for (let i = 0; i < count; i++) {
      const f = frames[i] as Buffer;
      if (this.heldBytes + f.length > this.maxBytes) {
        this.drops++;
        continue;
      }
      const meta = metas ? Buffer.from(metas.subarray(i * 10, i * 10 + 10)) : null;
      this.held.push({ frame: Buffer.from(f), meta });
      this.heldBytes += f.length;
    }
    return count;
  }

  /** Run `first` with the gate open (the injection), then deliver what was held, then stay open. */
  release(first?: () => void): void {
    const held = this.held ?? [];
    this.passthrough = true;
    try {
      first?.();
    } finally {
      this.passthrough = false;
    }
    this.held = null;
    this.heldBytes = 0;
    if (held.length === 0) return;
    const frames = held.map((h) => h.frame);
    const anyMeta = held.some((h) => h.meta !== null);
    let metas: Buffer | null = null;
    if (anyMeta) {
      metas = Buffer.alloc(held.length * 10);
      held.forEach((h, i) => h.meta?.copy(metas as Buffer, i * 10));
    }
    this.inner.send(frames, frames.length, metas);
  }
}

interface VneRecord {
  name: string;
  vni: number;
  generation: number;
  /** MACs the coordinator routes to this agent. */
  localMacs: Set<string>;
  /** A generation change that waits for the running (old) instances to stop. */
  pendingGeneration?: number;
}

interface VmRecord {
  key: string;
  vne: string;
  name: string;
  spec: VmSpec__Output;
  driver: HypervisorDriver;
  ports: RestoreGatePort[];
  /** Set while prepared by a restore and not yet resumed. */
  restoreId?: string;
}

interface SnapVm {
  vm: VmRecord;
  job: SnapshotJob;
  cut?: CutReport;
  readyAtUs?: number;
}

interface LocalSnapshot {
  id: string;
  vne: string;
  epoch: number;
  mode: SnapshotModeName;
  prefix: string;
  state: 'precopy' | 'committing' | 'committed' | 'persisting' | 'aborted';
  vms: SnapVm[];
  beganUs: number;
  /** Resolves when Begin has created every job (Commit waits for it). */
  begun: Promise<void>;
  /** Settles Begin's Result early (commit arrived, or abort). */
  endBegin: (e?: Error) => void;
}

interface RestoreRecord {
  id: string;
  vne: string;
  vms: VmRecord[];
  channel: Map<string, Buffer[]>;
}

interface Session {
  call: grpc.ClientDuplexStream<AgentMessage, CoordinatorMessage__Output>;
  open: boolean;
  welcomed: boolean;
  heartbeat?: NodeJS.Timeout;
  seq: number;
}

function nowUs(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

function vmKey(vne: string, vm: string): string {
  return `${vne}/${vm}`;
}

/** Switch port name of a VM's i-th vNIC (switch-wide unique; also the channel artefact's owner). */
export function portName(vne: string, vm: string, i: number): string {
  return `${vne}/${vm}/${i}`;
}

export class Agent extends EventEmitter implements Startable {
  readonly id: string;
  readonly log: Logger;
  readonly metrics: AgentMetrics;
  readonly store: SnapshotStore;
  private readonly drivers = new Map<DriverKind, HypervisorDriver>();
  private sw: Switch | undefined;
  private transport: TunnelTransport | undefined;
  private client: AgentServiceClient | undefined;
  private session: Session | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private backoffMs: number;
  private attempts = 0;
  private stopping = false;
  private deadAfterMs = 3000;
  private readonly abortTimers = new Set<NodeJS.Timeout>();
  private readonly vnes = new Map<string, VneRecord>();
  private readonly vms = new Map<string, VmRecord>();
  private readonly snapshots = new Map<string, LocalSnapshot>();
  private readonly restores = new Map<string, RestoreRecord>();
  /** Peer agent id → "address:port" as added to the switch. */
  private readonly peers = new Map<string, string>();
  private tunnelPort = 0;

  constructor(readonly opts: AgentOptions) {
    super();
    if (!opts.id) throw new VnsnapError('ERR_CONFIG', 'an agent needs an id');
    this.id = opts.id;
    this.log = (opts.logger ?? silentLogger()).child({ agent: opts.id });
    this.metrics = opts.metrics ?? new AgentMetrics();
    if (opts.store) this.store = opts.store;
    else if (opts.storeRoot) this.store = new LocalDirStore(opts.storeRoot);
    else throw new VnsnapError('ERR_CONFIG', `agent ${opts.id}: a store root is required`);
    for (const d of opts.drivers) this.drivers.set(d.kind, d);
    this.backoffMs = opts.reconnect?.initialMs ?? 500;
  }

  // ───────────────────────────── lifecycle ─────────────────────────────

  async start(): Promise<void> {
    if (this.sw) return;
    this.stopping = false;
    if (this.store instanceof LocalDirStore) await this.store.init();
    const sw = new Switch({ id: this.id, ...(this.opts.switchOptions ?? {}) });
    const t = this.opts.transport ?? new UdpTransport(this.opts.tunnel.address, this.opts.tunnel.port, { offload: this.opts.tunnel.offload ?? false });
    try {
      sw.attachTunnel(t);
    } catch (e) {
      t.close();
      throw e;
    }
    this.tunnelPort = t.localPort;
    this.transport = t;
    sw.start();
    this.sw = sw;
    this.metrics.setStatsSource(() => sw.stats());
    const pkg = loadVnsnap();
    this.client = new pkg.vnsnap.v1.AgentService(this.opts.coordinator, grpc.credentials.createInsecure(), {
      'grpc.initial_reconnect_backoff_ms': this.opts.reconnect?.initialMs ?? 500,
      'grpc.max_reconnect_backoff_ms': this.opts.reconnect?.maxMs ?? 5000,
      ...SESSION_KEEPALIVE,
    }) as unknown as AgentServiceClient;
    this.log.info({ tunnelPort: this.tunnelPort, coordinator: this.opts.coordinator }, 'agent started');
    this.connect();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    for (const t of this.abortTimers) clearTimeout(t);
    this.abortTimers.clear();
    const s = this.session;
    this.session = undefined;
    if (s) this.closeSession(s);
    this.client?.close();
    this.client = undefined;
    for (const snap of [...this.snapshots.values()]) await this.localAbort(snap, 'agent stopping');
    for (const vm of [...this.vms.values()]) await this.destroyVm(vm).catch((e) => this.log.warn({ vm: vm.key, err: describeError(e) }, 'stopping VM failed'));
    this.sw?.stop();
    this.sw = undefined;
    this.transport = undefined;
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
    return this.session?.welcomed === true;
  }

  /** Driver-specific state of a VM (the sim driver's SimVmState), for tests and debugging. */
  vmState(vne: string, vm: string): unknown {
    const r = this.vms.get(vmKey(vne, vm));
    return r ? r.driver.inspect?.(r.key) : undefined;
  }

  /**
   * Read-only view of every VM this agent holds, for tests and debugging (served by main at
   * /debug/vms on the metrics port): its VNE, name, the restore it is prepared by (if any), each
   * port's switch epoch, and the driver's inspect() state (the sim driver's SimVmState).
   */
  debugVms(): { agent: string; vms: { vne: string; vm: string; restoreId?: string; ports: { name: string; epoch: number | null }[]; state: unknown }[] } {
    const epochOf = (name: string): number | null => {
      try {
        return this.sw ? this.sw.portEpoch(name) : null;
      } catch {
        return null;
      }
    };
    const vms = [...this.vms.values()].map((v) => ({
      vne: v.vne,
      vm: v.name,
      ...(v.restoreId !== undefined ? { restoreId: v.restoreId } : {}),
      ports: v.ports.map((p) => ({ name: p.name, epoch: epochOf(p.name) })),
      state: v.driver.inspect?.(v.key) ?? null,
    }));
    return { agent: this.id, vms };
  }

  /** VMs this agent runs (or holds prepared), as "vne/vm". */
  vmKeys(): string[] {
    return [...this.vms.keys()];
  }

  // ───────────────────────────── session ─────────────────────────────

  private connect(): void {
    if (this.stopping || !this.client) return;
    if (this.attempts++ > 0) this.metrics.reconnects.inc();
    const call = this.client.Session();
    const s: Session = { call, open: true, welcomed: false, seq: 0 };
    this.session = s;
    call.on('data', (m: CoordinatorMessage__Output) => this.onMessage(s, m));
    call.on('error', (e: Error) => this.onSessionEnd(s, e));
    call.on('end', () => this.onSessionEnd(s));
    call.on('close', () => this.onSessionEnd(s));
    const running = [...this.vms.values()]
      .filter((v) => v.restoreId === undefined)
      .map((v) => ({ vne: v.vne, vm: v.name, epoch: this.portEpochOf(v), generation: this.vnes.get(v.vne)?.generation ?? 0 }));
    this.write(s, {
      register: {
        agentId: this.id,
        hostname: this.opts.hostname ?? os.hostname(),
        version: AGENT_VERSION,
        tunnelAddress: this.opts.tunnel.advertise ?? this.opts.tunnel.address,
        tunnelPort: this.tunnelPort,
        drivers: [...this.drivers.keys()],
        running,
      },
    });
  }

  private portEpochOf(v: VmRecord): number {
    const p = v.ports[0];
    if (!p || !this.sw) return 0;
    try {
      return this.sw.portEpoch(p.name);
    } catch {
      return 0;
    }
  }

  private onMessage(s: Session, m: CoordinatorMessage__Output): void {
    if (s !== this.session || !s.open) return;
    if (m.msg === 'welcome' && m.welcome) {
      s.welcomed = true;
      this.backoffMs = this.opts.reconnect?.initialMs ?? 500;
      this.deadAfterMs = m.welcome.deadAfterMs || 3000;
      const every = m.welcome.heartbeatIntervalMs || 1000;
      s.heartbeat = setInterval(() => this.write(s, { heartbeat: { seq: ++s.seq, unixMs: Date.now() } }), every);
      s.heartbeat.unref();
      this.metrics.connected.set(1);
      this.log.info({ coordinator: m.welcome.coordinatorId, heartbeatMs: every }, 'session up');
      this.emit('connected');
    } else if (m.msg === 'refused') {
      this.log.warn({ reason: m.refused }, 'coordinator refused the session');
      this.emit('refused', m.refused);
      this.onSessionEnd(s, new VnsnapError('ERR_UNAVAILABLE', `refused: ${m.refused}`));
    } else if (m.msg === 'command' && m.command) {
      void this.execute(s, m.command);
    }
  }

  private closeSession(s: Session): void {
    if (!s.open) return;
    s.open = false;
    if (s.heartbeat) clearInterval(s.heartbeat);
    try {
      s.call.end();
    } catch {
      /* already closed */
    }
    s.call.cancel();
  }

  private onSessionEnd(s: Session, err?: Error): void {
    if (!s.open) return;
    const wasUp = s.welcomed;
    this.closeSession(s);
    if (this.session !== s) return;
    this.session = undefined;
    this.metrics.connected.set(0);
    if (wasUp) {
      this.log.warn({ err: err ? describeError(err) : 'stream ended' }, 'session lost');
      this.emit('disconnected');
    } else this.log.debug({ err: err ? describeError(err) : 'stream ended' }, 'session attempt failed');
    // Snapshots in progress: abort them locally after dead_after_ms.
    const pending = [...this.snapshots.values()].filter((x) => x.state !== 'aborted');
    if (pending.length > 0) {
      const t = setTimeout(() => {
        this.abortTimers.delete(t);
        for (const snap of pending) if (this.snapshots.get(snap.id) === snap) void this.localAbort(snap, 'session with the coordinator lost');
      }, this.deadAfterMs);
      t.unref();
      this.abortTimers.add(t);
    }
    if (this.stopping) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, this.opts.reconnect?.maxMs ?? 5000);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.connect();
    }, delay);
    this.reconnectTimer.unref();
  }

  private write(s: Session, msg: AgentMessage): boolean {
    if (!s.open || s !== this.session) return false;
    try {
      s.call.write(msg);
      return true;
    } catch (e) {
      this.log.warn({ err: describeError(e) }, 'write to session failed');
      return false;
    }
  }

  private progress(s: Session, commandId: number, vm: VmProgress): void {
    this.write(s, { progress: { commandId, vm: { host: this.id, ...vm } } });
  }

  // ───────────────────────────── commands ─────────────────────────────

  private async execute(s: Session, cmd: Command__Output): Promise<void> {
    const kind = cmd.body ?? 'unknown';
    const t0 = performance.now();
    let result: Result;
    try {
      const payload = await this.dispatch(s, cmd);
      result = { commandId: cmd.id, ok: true, ...payload };
    } catch (e) {
      const code = isVnsnapError(e) ? e.code : 'ERR_INTERNAL';
      result = { commandId: cmd.id, ok: false, errorCode: code, errorMessage: describeError(e) };
      this.log.warn({ command: kind, id: cmd.id, code, err: describeError(e) }, 'command failed');
    }
    this.metrics.commands.inc({ command: kind, result: result.ok ? 'ok' : (result.errorCode ?? 'error') });
    this.log.debug({ command: kind, id: cmd.id, ok: result.ok, ms: performance.now() - t0 }, 'command done');
    this.write(s, { result });
  }

  private dispatch(s: Session, cmd: Command__Output): Promise<Partial<Result>> {
    switch (cmd.body) {
      case 'configureVne':
        return this.configureVne(cmd.configureVne as ConfigureVne__Output);
      case 'startVm':
        return this.startVm(cmd.startVm as StartVm__Output);
      case 'stopVm':
        return this.stopVm(cmd.stopVm as StopVm__Output);
      case 'snapshotBegin':
        return this.snapshotBegin(s, cmd.id, cmd.snapshotBegin as SnapshotBegin__Output);
      case 'snapshotCommit':
        return this.snapshotCommit(cmd.snapshotCommit as SnapshotCommit__Output);
      case 'snapshotPersist':
        return this.snapshotPersist(cmd.snapshotPersist as SnapshotPersist__Output);
      case 'snapshotAbort':
        return this.snapshotAbort(cmd.snapshotAbort as SnapshotAbort__Output);
      case 'deleteArtefacts':
        return this.deleteArtefacts(cmd.deleteArtefacts as DeleteArtefacts__Output);
      case 'validateArtefacts':
        return this.validateArtefacts(cmd.validateArtefacts as ValidateArtefacts__Output);
      case 'restorePrepare':
        return this.restorePrepare(cmd.restorePrepare as RestorePrepare__Output);
      case 'restoreResume':
        return this.restoreResume(cmd.restoreResume as RestoreResume__Output);
      case 'restoreCancel':
        return this.restoreCancel(cmd.restoreCancel as RestoreCancel__Output);
      default:
        return Promise.reject(new VnsnapError('ERR_INVALID_ARGUMENT', `command ${cmd.id} has no body this agent knows`));
    }
  }

  // ── VNEs and VMs ──

  private ensurePeer(agentId: string, address: string, port: number): void {
    const want = `${address}:${port}`;
    const have = this.peers.get(agentId);
    if (have === want) return;
    // A peer agent that restarted on another port (or host address) is re-addressed in place.
    if (have !== undefined) {
      this.switch.setPeerAddress(agentId, address, port);
      this.log.info({ peer: agentId, from: have, to: want }, 'peer moved');
    } else {
      this.switch.addPeer({ name: agentId, address, port });
    }
    this.peers.set(agentId, want);
  }

  private async configureVne(c: ConfigureVne__Output): Promise<Partial<Result>> {
    const sw = this.switch;
    if (!c.vne) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'ConfigureVne without a VNE name');
    for (const p of c.peers) if (p.agentId !== this.id) this.ensurePeer(p.agentId, p.address, p.port);
    const peerIds = c.peers.map((p) => p.agentId).filter((p) => p !== this.id);
    let v = this.vnes.get(c.vne);
    if (!v) {
      sw.addVne({ name: c.vne, vni: c.vni, generation: c.generation || 1, peers: peerIds });
      v = { name: c.vne, vni: c.vni, generation: c.generation || 1, localMacs: new Set() };
      this.vnes.set(c.vne, v);
    } else {
      if (v.vni !== c.vni) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE ${c.vne} has VNI ${v.vni} here; ConfigureVne asks for ${c.vni}`);
      if (c.generation && c.generation !== v.generation) {
        if (this.runningVmsOf(c.vne).length > 0) {
          // Instances of the old generation still run here (a restore replaces them): bumping
          // now would stamp their frames with the new generation and let them reach the
          // restored VMs. The bump waits until they are gone (RestorePrepare, StopVm).
          v.pendingGeneration = c.generation;
          this.log.info({ vne: c.vne, generation: c.generation, running: this.runningVmsOf(c.vne).map((x) => x.name) }, 'generation change deferred until the running instances stop');
        } else this.setGeneration(v, c.generation);
      }
      for (const p of peerIds) sw.addVnePeer(c.vne, p);
    }
    for (const r of c.macs) {
      if (r.agentId === this.id) {
        v.localMacs.add(r.mac.toLowerCase());
        const local = this.localPortOfMac(c.vne, r.mac);
        if (local) sw.setStaticMac(c.vne, r.mac, { port: local });
      } else {
        if (!this.peers.has(r.agentId)) throw new VnsnapError('ERR_PEER_UNKNOWN', `MAC ${r.mac} routed to agent ${r.agentId}, which is not among the VNE's peers`);
        sw.addVnePeer(c.vne, r.agentId);
        sw.setStaticMac(c.vne, r.mac, { peer: r.agentId });
      }
    }
    return {};
  }

  private runningVmsOf(vne: string): VmRecord[] {
    return [...this.vms.values()].filter((x) => x.vne === vne && x.restoreId === undefined);
  }

  private setGeneration(v: VneRecord, generation: number): void {
    delete v.pendingGeneration;
    if (generation === v.generation) return;
    this.switch.setGeneration(v.name, generation);
    v.generation = generation;
    this.log.info({ vne: v.name, generation }, 'VNE generation changed');
  }

  /** Apply a deferred generation change once no old instance runs. */
  private applyPendingGeneration(vne: string): void {
    const v = this.vnes.get(vne);
    if (v?.pendingGeneration !== undefined && this.runningVmsOf(vne).length === 0) this.setGeneration(v, v.pendingGeneration);
  }

  private localPortOfMac(vne: string, mac: string): string | undefined {
    const m = mac.toLowerCase();
    for (const vm of this.vms.values()) {
      if (vm.vne !== vne) continue;
      const i = vm.spec.macs.findIndex((x) => x.toLowerCase() === m);
      if (i >= 0) return vm.ports[i]?.name;
    }
    return undefined;
  }

  private driverFor(spec: VmSpec__Output): HypervisorDriver {
    const kind = spec.driver?.kind;
    if (!kind) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name} has no driver spec`);
    const d = this.drivers.get(kind);
    if (!d) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${spec.name} needs the ${kind} driver, which agent ${this.id} does not have (it has: ${[...this.drivers.keys()].join(', ') || 'none'})`);
    return d;
  }

  private startSpec(vne: string, spec: VmSpec__Output): VmStartSpec {
    if (!spec.name) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'a VM needs a name');
    if (spec.macs.length === 0) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name} has no MAC`);
    return { id: vmKey(vne, spec.name), vne, name: spec.name, macs: spec.macs, driver: spec.driver ?? {} };
  }

  private vneOrThrow(vne: string): VneRecord {
    const v = this.vnes.get(vne);
    if (!v) throw new VnsnapError('ERR_VNE_UNKNOWN', `VNE ${vne} is not configured on agent ${this.id} (ConfigureVne first)`);
    return v;
  }

  /** Attach a VM's ports to the switch at `epoch`, with static entries for its MACs. */
  private attach(vm: VmRecord, epoch: number): void {
    const sw = this.switch;
    const attached: string[] = [];
    try {
      for (const p of vm.ports) {
        sw.addPort(vm.vne, p, epoch);
        attached.push(p.name);
      }
      vm.spec.macs.forEach((mac, i) => {
        const p = vm.ports[i];
        if (p) sw.setStaticMac(vm.vne, mac, { port: p.name });
      });
    } catch (e) {
      for (const n of attached) sw.removePort(n);
      throw e;
    }
  }

  private async startVm(c: StartVm__Output): Promise<Partial<Result>> {
    this.vneOrThrow(c.vne);
    if (!c.vm) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'StartVm without a VM');
    const spec = this.startSpec(c.vne, c.vm);
    if (this.vms.has(spec.id)) throw new VnsnapError('ERR_ALREADY_EXISTS', `VM ${c.vm.name} of VNE ${c.vne} is already on agent ${this.id}`);
    const driver = this.driverFor(c.vm);
    const names = spec.macs.map((_, i) => portName(c.vne, spec.name, i));
    const vneVms = c.vneVms.map((v) => ({ name: v.name, macs: v.macs }));
    const h = await driver.start(spec, { portNames: names, log: this.log.child({ vm: spec.id }), vneVms });
    const vm: VmRecord = { key: spec.id, vne: c.vne, name: spec.name, spec: c.vm, driver, ports: h.ports.map((p) => new RestoreGatePort(p, this.opts.restoreGateBytes ?? 4 << 20)) };
    try {
      this.attach(vm, c.epoch);
    } catch (e) {
      await driver.stop(spec.id).catch(() => undefined);
      throw e;
    }
    this.vms.set(vm.key, vm);
    this.log.info({ vm: vm.key, ports: names, epoch: c.epoch }, 'VM started');
    return {};
  }

  private async destroyVm(vm: VmRecord): Promise<void> {
    this.vms.delete(vm.key);
    try {
      await vm.driver.stop(vm.key);
    } finally {
      for (const p of vm.ports) {
        try {
          this.sw?.removePort(p.name);
        } catch {
          /* already detached */
        }
      }
    }
  }

  private async stopVm(c: StopVm__Output): Promise<Partial<Result>> {
    const vm = this.vms.get(vmKey(c.vne, c.vm));
    if (!vm) return {};
    for (const snap of this.snapshots.values()) {
      if (snap.vms.some((x) => x.vm === vm)) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${c.vm} is part of snapshot ${snap.id} in progress`);
    }
    await this.destroyVm(vm);
    this.applyPendingGeneration(c.vne);
    this.log.info({ vm: vm.key }, 'VM stopped');
    return {};
  }

  // ── snapshots ──

  private async snapshotBegin(s: Session, commandId: number, c: SnapshotBegin__Output): Promise<Partial<Result>> {
    if (this.snapshots.has(c.snapshotId)) throw new VnsnapError('ERR_ALREADY_EXISTS', `snapshot ${c.snapshotId} is already in progress here`);
    this.vneOrThrow(c.vne);
    if (!c.snapshotId || c.epoch <= 0) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'SnapshotBegin needs a snapshot id and an epoch > 0');
    const vms = c.vms.map((name) => {
      const vm = this.vms.get(vmKey(c.vne, name));
      if (!vm || vm.restoreId !== undefined) throw new VnsnapError('ERR_NOT_FOUND', `VM ${name} of VNE ${c.vne} is not running on agent ${this.id}`);
      return vm;
    });
    const mode: SnapshotModeName = c.mode === 'SNAPSHOT_MODE_BACKGROUND' ? 'background' : 'precopy';
    let endBegin!: (e?: Error) => void;
    const early = new Promise<void>((resolve, reject) => (endBegin = (e) => (e ? reject(e) : resolve())));
    early.catch(() => undefined);
    let begun!: () => void;
    const snap: LocalSnapshot = {
      id: c.snapshotId,
      vne: c.vne,
      epoch: c.epoch,
      mode,
      prefix: c.storePrefix,
      state: 'precopy',
      vms: [],
      beganUs: nowUs(),
      begun: new Promise<void>((r) => (begun = r)),
      endBegin,
    };
    this.snapshots.set(snap.id, snap);
    this.log.info({ snapshot: snap.id, epoch: snap.epoch, mode, vms: c.vms }, 'snapshot begin');
    const progressEvery = this.opts.progressIntervalMs ?? 500;
    try {
      for (const vm of vms) {
        let lastProgress = -Infinity;
        let lastReady = false;
        const job = await vm.driver.snapshot(vm.key, {
          snapshotId: snap.id,
          epoch: snap.epoch,
          mode,
          store: this.store,
          prefix: snap.prefix,
          onProgress: (p) => {
            const now = performance.now();
            if (now - lastProgress < progressEvery && p.ready === lastReady) return;
            lastProgress = now;
            lastReady = p.ready;
            this.progress(s, commandId, {
              vm: vm.name,
              phase: 'PHASE_PRECOPY',
              bytesDone: p.bytesDone,
              bytesTotal: p.bytesTotal,
              fraction: p.bytesTotal > 0 ? Math.max(0, Math.min(1, 1 - p.bytesRemaining / p.bytesTotal)) : 0,
              iteration: p.iteration,
              dirtyRateMibS: p.dirtyRateMibS,
            });
          },
        });
        const sv: SnapVm = { vm, job };
        snap.vms.push(sv);
        // A job aborted before it is ready rejects `ready`: handled here (the waits below see it),
        // or the agent logged an unhandled rejection per VM (seen on the Xen test bed).
        job.ready.then(
          () => {
            sv.readyAtUs = nowUs();
            if (snap.state === 'precopy') this.progress(s, commandId, { vm: vm.name, phase: 'PHASE_PRECOPY', phaseDone: true, fraction: 1 });
          },
          () => undefined,
        );
        if ((snap.state as LocalSnapshot['state']) === 'aborted') break;
      }
    } catch (e) {
      begun();
      await this.localAbort(snap, `begin failed: ${describeError(e)}`);
      throw e;
    }
    begun();
    if ((snap.state as LocalSnapshot['state']) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', `snapshot ${snap.id} was aborted`);
    await Promise.race([Promise.all(snap.vms.map((x) => x.job.ready)), early]);
    if ((snap.state as LocalSnapshot['state']) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', `snapshot ${snap.id} was aborted`);
    return {};
  }

  private snapshotOrThrow(id: string): LocalSnapshot {
    const snap = this.snapshots.get(id);
    if (!snap) throw new VnsnapError('ERR_NOT_FOUND', `snapshot ${id} is not in progress on agent ${this.id}`);
    return snap;
  }

  private async snapshotCommit(c: SnapshotCommit__Output): Promise<Partial<Result>> {
    const snap = this.snapshotOrThrow(c.snapshotId);
    snap.endBegin();
    await snap.begun;
    if (snap.state !== 'precopy') throw new VnsnapError('ERR_STATE', `snapshot ${snap.id} is ${snap.state}; cannot commit`);
    snap.state = 'committing';
    const sw = this.switch;
    const k = snap.epoch;
    const results = await Promise.allSettled(
      snap.vms.map(async (sv): Promise<VmSnapshot> => {
        const names = sv.vm.ports.map((p) => p.name);
        for (const n of names) sw.beginCut(n, k); // gate before the pause
        let atPauseCalled = false;
        let report: CutReport;
        try {
          report = await sv.job.cut(async () => {
            atPauseCalled = true;
            for (const n of names) await sw.finishCut(n, k);
          });
        } catch (e) {
          if (!atPauseCalled) for (const n of names) sw.cancelCut(n);
          throw e;
        }
        sv.cut = report;
        this.metrics.pauseSeconds.observe({ mode: snap.mode }, report.pauseMs / 1000);
        this.metrics.lastPauseMs.set({ vm: sv.vm.key }, report.pauseMs);
        for (const ph of report.phases) this.metrics.phaseSeconds.observe({ phase: ph.phase }, (ph.endUnixUs - ph.startUnixUs) / 1e6);
        return this.vmSnapshot(snap, sv);
      }),
    );
    // Ports of the VNE that are not part of this snapshot pass the cut too (no VM pause), or
    // the switch would never send its markers.
    for (const n of sw.portNames(snap.vne)) {
      if (sw.portEpoch(n) < k) {
        sw.beginCut(n, k);
        await sw.finishCut(n, k);
      }
    }
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      snap.state = 'committed';
      throw failed.reason;
    }
    if ((snap.state as LocalSnapshot['state']) === 'aborted') throw new VnsnapError('ERR_SNAPSHOT_ABORTED', `snapshot ${snap.id} was aborted during the cut`);
    snap.state = 'committed';
    const vms = results.map((r) => (r as PromiseFulfilledResult<VmSnapshot>).value);
    this.log.info({ snapshot: snap.id, pauses: vms.map((v) => [v.name, Number(v.pauseMs).toFixed(2)]) }, 'snapshot committed');
    return { commit: { vms } };
  }

  private vmSnapshot(snap: LocalSnapshot, sv: SnapVm): VmSnapshot {
    const phases: PhaseTiming[] = [];
    if (snap.mode === 'precopy' && sv.cut) phases.push({ phase: 'PHASE_PRECOPY', startUnixUs: snap.beganUs, endUnixUs: sv.cut.cutUnixUs });
    for (const p of sv.cut?.phases ?? []) phases.push({ phase: p.phase, startUnixUs: p.startUnixUs, endUnixUs: p.endUnixUs });
    return { name: sv.vm.name, host: this.id, pauseMs: sv.cut?.pauseMs ?? 0, cutUnixUs: sv.cut?.cutUnixUs ?? 0, phases };
  }

  private async snapshotPersist(c: SnapshotPersist__Output): Promise<Partial<Result>> {
    const snap = this.snapshotOrThrow(c.snapshotId);
    if (snap.state !== 'committed') throw new VnsnapError('ERR_STATE', `snapshot ${snap.id} is ${snap.state}; cannot persist`);
    snap.state = 'persisting';
    const t0 = nowUs();
    const artefacts: Artefact[] = [];
    const vms: VmSnapshot[] = [];
    try {
      const images = await Promise.all(snap.vms.map((sv) => sv.job.durable()));
      const tImages = nowUs();
      const cs = await this.switch.channelState(snap.vne, snap.epoch, this.opts.channelTimeoutMs ?? 30_000);
      const tChannel = nowUs();
      for (let i = 0; i < snap.vms.length; i++) {
        const sv = snap.vms[i] as SnapVm;
        const img = images[i] as { memory: StoredArtefact; disk?: StoredArtefact };
        artefacts.push({ ...img.memory, kind: 'ARTEFACT_KIND_MEMORY', owner: sv.vm.name });
        if (img.disk) artefacts.push({ ...img.disk, kind: 'ARTEFACT_KIND_DISK', owner: sv.vm.name });
        let frames = 0;
        for (let p = 0; p < sv.vm.ports.length; p++) {
          const name = (sv.vm.ports[p] as RestoreGatePort).name;
          const list = cs.ports.get(name) ?? [];
          frames += list.length;
          const a = await this.store.put(`${snap.prefix}${sv.vm.name}.${p}.chan`, encodeChannel(list));
          artefacts.push({ ...a, kind: 'ARTEFACT_KIND_CHANNEL', owner: name });
        }
        const v = this.vmSnapshot(snap, sv);
        const tEnd = nowUs();
        v.phases = [
          ...(v.phases ?? []),
          { phase: 'PHASE_CHANNEL', startUnixUs: tImages, endUnixUs: tChannel },
          { phase: 'PHASE_PERSIST', startUnixUs: t0, endUnixUs: tEnd },
        ];
        v.memoryBytes = img.memory.size;
        v.diskBytes = img.disk?.size ?? 0;
        v.channelFrames = frames;
        vms.push(v);
      }
      this.metrics.phaseSeconds.observe({ phase: 'PHASE_CHANNEL' }, (tChannel - tImages) / 1e6);
      this.metrics.phaseSeconds.observe({ phase: 'PHASE_PERSIST' }, (nowUs() - t0) / 1e6);
      this.snapshots.delete(snap.id);
      this.log.info({ snapshot: snap.id, artefacts: artefacts.length, lostFrames: cs.lostFrames }, 'snapshot persisted');
      return { persist: { artefacts, vms, lostFrames: cs.lostFrames } };
    } catch (e) {
      if (snap.state === 'persisting') snap.state = 'committed';
      throw e;
    }
  }

  /** Abort a snapshot this agent knows: stop copies, resume VMs, advance ports, delete partials. */
  private async localAbort(snap: LocalSnapshot, reason: string, prefix = snap.prefix): Promise<void> {
    if (snap.state === 'aborted' && !this.snapshots.has(snap.id)) return;
    snap.state = 'aborted';
    snap.endBegin(new VnsnapError('ERR_SNAPSHOT_ABORTED', `snapshot ${snap.id} was aborted: ${reason}`));
    this.snapshots.delete(snap.id);
    this.log.warn({ snapshot: snap.id, reason }, 'snapshot aborted');
    await snap.begun;
    await Promise.all(snap.vms.map((sv) => sv.job.abort().catch((e) => this.log.warn({ vm: sv.vm.key, err: describeError(e) }, 'driver abort failed'))));
    this.advanceAfterAbort(snap.vne, snap.epoch);
    if (prefix) await this.store.deleteByPrefix(prefix).catch((e) => this.log.warn({ prefix, err: describeError(e) }, 'deleting partial artefacts failed'));
  }

  private advanceAfterAbort(vne: string, epoch: number): void {
    if (!this.vnes.has(vne) || epoch <= 0 || !this.sw) return;
    // Guests that track epochs pass it first: the switch releases held (epoch k) frames to them now.
    for (const vm of this.vms.values()) if (vm.vne === vne) vm.driver.epochAdvanced?.(vm.key, epoch);
    this.sw.abort(vne, epoch);
  }

  private async snapshotAbort(c: SnapshotAbort__Output): Promise<Partial<Result>> {
    const snap = this.snapshots.get(c.snapshotId);
    if (snap) await this.localAbort(snap, 'ordered by the coordinator', c.storePrefix || snap.prefix);
    else {
      this.advanceAfterAbort(c.vne, c.epoch);
      if (c.storePrefix) await this.store.deleteByPrefix(c.storePrefix);
    }
    return {};
  }

  private async deleteArtefacts(c: DeleteArtefacts__Output): Promise<Partial<Result>> {
    for (const p of c.paths) await this.store.delete(p);
    if (c.storePrefix) await this.store.deleteByPrefix(c.storePrefix);
    return {};
  }

  private async validateArtefacts(c: ValidateArtefacts__Output): Promise<Partial<Result>> {
    const problems: string[] = [];
    for (const a of c.artefacts) {
      const p = await this.store.verify({ path: a.path, size: Number(a.size), sha256: a.sha256 });
      if (p) problems.push(p);
    }
    return { validate: { problems } };
  }

  // ── restore ──

  private async restorePrepare(c: RestorePrepare__Output): Promise<Partial<Result>> {
    if (!c.restoreId) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'RestorePrepare without a restore id');
    if (this.restores.has(c.restoreId)) throw new VnsnapError('ERR_ALREADY_EXISTS', `restore ${c.restoreId} is already prepared here`);
    const v = this.vneOrThrow(c.vne);
    const t0 = nowUs();
    // 1. Check everything before touching anything.
    const problems: string[] = [];
    for (const rv of c.vms) {
      if (!rv.vm) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'RestorePrepare: a VM without its spec');
      if (!rv.memory) problems.push(`${rv.vm.name}: no memory artefact`);
      this.driverFor(rv.vm);
      for (const a of [rv.memory, rv.disk, ...rv.channel]) {
        if (!a) continue;
        const p = await this.store.verify({ path: a.path, size: Number(a.size), sha256: a.sha256 });
        if (p) problems.push(p);
      }
      const existing = this.vms.get(vmKey(c.vne, rv.vm.name));
      if (existing && !c.stopRunning) problems.push(`${rv.vm.name} is running on agent ${this.id} (stop_running not set)`);
      if (existing && existing.restoreId !== undefined) problems.push(`${rv.vm.name} is already prepared by restore ${existing.restoreId}`);
    }
    if (problems.length > 0) throw new VnsnapError('ERR_FAILED_PRECONDITION', `restore ${c.restoreId}: ${problems.join('; ')}`);
    const channel = new Map<string, Buffer[]>();
    for (const rv of c.vms) {
      for (const a of rv.channel) channel.set(a.owner, decodeChannel(await this.store.get(a.path), a.path));
    }
    const tValidated = nowUs();
    // 2. Stop what runs, load every VM paused, attach its ports behind the restore gate.
    for (const rv of c.vms) {
      const existing = this.vms.get(vmKey(c.vne, (rv.vm as VmSpec__Output).name));
      if (existing) {
        for (const snap of [...this.snapshots.values()]) if (snap.vms.some((x) => x.vm === existing)) await this.localAbort(snap, 'restore stops its VMs');
        await this.destroyVm(existing);
      }
    }
    if (c.generation) this.setGeneration(v, c.generation);
    else this.applyPendingGeneration(c.vne);
    const rec: RestoreRecord = { id: c.restoreId, vne: c.vne, vms: [], channel };
    const out: VmSnapshot[] = [];
    try {
      for (const rv of c.vms) {
        const spec = this.startSpec(c.vne, rv.vm as VmSpec__Output);
        const driver = this.driverFor(rv.vm as VmSpec__Output);
        const names = spec.macs.map((_, i) => portName(c.vne, spec.name, i));
        const tl = nowUs();
        const mem = rv.memory as Artefact__Output;
        const image = { memory: { path: mem.path, size: Number(mem.size), sha256: mem.sha256 }, ...(rv.disk ? { disk: { path: rv.disk.path, size: Number(rv.disk.size), sha256: rv.disk.sha256 } } : {}) };
        const h = await driver.restore(spec, image, this.store, { portNames: names, log: this.log.child({ vm: spec.id }) });
        const vm: VmRecord = {
          key: spec.id,
          vne: c.vne,
          name: spec.name,
          spec: rv.vm as VmSpec__Output,
          driver,
          ports: h.ports.map((p) => new RestoreGatePort(p, this.opts.restoreGateBytes ?? 4 << 20)),
          restoreId: c.restoreId,
        };
        for (const p of vm.ports) p.hold();
        try {
          this.attach(vm, c.epoch);
        } catch (e) {
          await driver.stop(spec.id).catch(() => undefined);
          throw e;
        }
        this.vms.set(vm.key, vm);
        rec.vms.push(vm);
        const frames = names.reduce((n, pn) => n + (channel.get(pn)?.length ?? 0), 0);
        out.push({
          name: spec.name,
          host: this.id,
          memoryBytes: mem.size,
          diskBytes: rv.disk?.size ?? 0,
          channelFrames: frames,
          phases: [
            { phase: 'PHASE_VALIDATE', startUnixUs: t0, endUnixUs: tValidated },
            { phase: 'PHASE_LOAD', startUnixUs: tl, endUnixUs: nowUs() },
          ],
        });
      }
    } catch (e) {
      for (const vm of rec.vms) await this.destroyVm(vm).catch(() => undefined);
      throw e;
    }
    this.restores.set(rec.id, rec);
    this.metrics.phaseSeconds.observe({ phase: 'PHASE_LOAD' }, (nowUs() - tValidated) / 1e6);
    this.log.info({ restore: rec.id, vne: c.vne, epoch: c.epoch, generation: c.generation, vms: rec.vms.map((x) => x.name) }, 'restore prepared');
    return { restorePrepare: { vms: out } };
  }

  private async restoreResume(c: RestoreResume__Output): Promise<Partial<Result>> {
    const rec = this.restores.get(c.restoreId);
    if (!rec) throw new VnsnapError('ERR_NOT_FOUND', `restore ${c.restoreId} is not prepared on agent ${this.id}`);
    this.restores.delete(rec.id);
    const t0 = nowUs();
    await Promise.all(rec.vms.map((vm) => vm.driver.resume(vm.key)));
    const tResumed = nowUs();
    let injected = 0;
    const out: VmSnapshot[] = [];
    for (const vm of rec.vms) {
      delete vm.restoreId;
      const ti = nowUs();
      for (const p of vm.ports) {
        const frames = rec.channel.get(p.name) ?? [];
        p.release(() => {
          if (frames.length > 0) injected += this.switch.inject(p.name, frames);
        });
      }
      out.push({
        name: vm.name,
        host: this.id,
        phases: [
          { phase: 'PHASE_RESUME', startUnixUs: t0, endUnixUs: tResumed },
          { phase: 'PHASE_INJECT', startUnixUs: ti, endUnixUs: nowUs() },
        ],
      });
    }
    this.metrics.phaseSeconds.observe({ phase: 'PHASE_RESUME' }, (tResumed - t0) / 1e6);
    this.log.info({ restore: rec.id, injected }, 'restore resumed');
    return { resume: { vms: out, injectedFrames: injected } };
  }

  private async restoreCancel(c: RestoreCancel__Output): Promise<Partial<Result>> {
    const rec = this.restores.get(c.restoreId);
    if (!rec) return {};
    this.restores.delete(rec.id);
    for (const vm of rec.vms) if (this.vms.get(vm.key) === vm) await this.destroyVm(vm);
    this.log.info({ restore: rec.id }, 'restore cancelled');
    return {};
  }
}
