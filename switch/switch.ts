/**
 * The vnsnap overlay switch: per-VNE learning bridges joined by Geneve tunnels, with the
 * snapshot rules of DESIGN.md built into the forwarding path. This module is the composition:
 * the VNE, port and peer tables, the configuration API, the snapshot operations, stats and the
 * timer. The switch owns all network state; its callers (the agent, the standalone daemon)
 * keep none of their own.
 *
 * Pipeline (one event-loop wakeup):
 *   port/tunnel batch read ──► for each frame: learn source, look up destination
 *     (bridge/forwarding.ts, also tunnel/rx.ts for datagrams),
 *     local destination  → epoch rules (deliver / deliver+record / hold) → port tx queue
 *                          (snapshot/delivery.ts; the restore gate keeps it there)
 *     remote destination → Geneve header written in the frame's headroom → tunnel tx queue
 *                          (tunnel/tx-batch.ts)
 *     unknown/multicast  → flood (a frame from a tunnel is flooded to local ports only)
 *   ──► end of batch: one write per dirty port, one sendmmsg for the tunnel.
 * Frames in a batch live in the reader's slab; anything that must outlive the batch (held
 * frames, recorded channel state, frames behind a restore gate) is copied.
 *
 * Snapshot k of a VNE, at this switch:
 *   cutPorts(names, k, atPause): gate → the hook (the driver pauses the VMs and calls `pass`)
 *   → drain (frames the VMs wrote before the pause go out stamped k-1) → e(p) = k, recording
 *   k starts at p → release held frames under the rules (snapshot/cut.ts).
 *   When every local port of the VNE has passed k, a marker (VNE, k, count of epoch<k data
 *   frames sent to that peer) goes to every peer of the VNE, retransmitted until acknowledged.
 *   Recording k ends when every peer's marker has arrived and its count is matched by the
 *   epoch<k frames received from it, or `recordingGraceMs` after the marker (the rest was lost
 *   on the wire). channelState(vne, k) then yields each port's recorded frames in order
 *   (snapshot/markers.ts). abort(vne, k) advances every port below k to k without recording.
 * Restore: attachPort(vne, port, {epoch: k, gated: true}) keeps every frame delivered to the
 *   port until openGate(port, frames) injects the recorded frames, then the kept ones.
 * Invariants (checked by the randomized test): no frame of epoch > e(d) is delivered to d; every
 * epoch<k frame reaching d after d's cut k is delivered and recorded exactly once for k; control
 * packets never reach a port.
 *
 * Time: `now()` is injected (milliseconds); `tick()` runs retransmission, grace periods and FDB
 * aging and is called by a timer after start(), or by tests directly.
 */
import { VnsnapError } from '../proto/core/errors';
import type { Startable } from '../proto/core/lifecycle';
import type { DataPathWiring } from './bpf-dp/wiring';
import { Forwarding } from './bridge/forwarding';
import { isGroupMac, parseMac } from './bridge/mac';
import type { PeerChange, PeerConfig } from './peers';
import type { Port } from './port/port';
import type { AtPause } from './snapshot/cut';
import { Cuts } from './snapshot/cut';
import { Delivery } from './snapshot/delivery';
import type { RecordingStatus } from './snapshot/markers';
import { Markers } from './snapshot/markers';
import type { SwitchOptions } from './options';
import { DEFAULT_SWITCH_OPTIONS } from './options';
import type { ChannelFrame, ChannelState } from './snapshot/recording';
import type { SwitchCounters, SwitchStats } from './stats';
import { collectStats, newSwitchCounters } from './stats';
import { LocalPort } from './tables';
import { DATA_HEADER_LEN } from './tunnel/geneve';
import { onTunnelBatch } from './tunnel/rx';
import type { TunnelTransport } from './tunnel/transport';
import { TunnelTx } from './tunnel/tx-batch';
import type { VneSpec } from './vnes';
import { VneTable } from './vnes';

export { DEFAULT_SWITCH_OPTIONS, type SwitchOptions } from './options';
export type { AtPause } from './snapshot/cut';
export type { ChannelFrame, ChannelState } from './snapshot/recording';
export type { PeerChange, PeerConfig } from './peers';
export type { SwitchStats } from './stats';
export type { MacRoute, VneConfig, VneSpec } from './vnes';

/** IPv4 + UDP headers in front of Geneve on the underlay. */
const UNDERLAY_OVERHEAD = 20 + 8;

export interface AttachOptions {
  /** The port's epoch (default: the VNE's cut epoch); a restore attaches at the snapshot's. */
  epoch?: number;
  /** Keep every frame delivered to the port behind a restore gate until openGate(). */
  gated?: boolean;
  /** The port's MAC: a static FDB entry to the port (and the target of `local` routes). */
  mac?: string;
}

export class Switch implements Startable {
  readonly opts: SwitchOptions;
  /** Switch-wide named counters. */
  readonly counters: SwitchCounters = newSwitchCounters();
  private readonly vnes: VneTable;
  private readonly portsByName = new Map<string, LocalPort>();
  private readonly portsById: (LocalPort | undefined)[] = [];
  private readonly tunnelTx: TunnelTx;
  private readonly delivery: Delivery;
  private readonly markers: Markers;
  private readonly cuts: Cuts;
  private readonly fwd: Forwarding;
  private tunnel: TunnelTransport | undefined;
  private dataPath: DataPathWiring | undefined;
  private timer: NodeJS.Timeout | undefined;
  private nextPortId = 0;

  constructor(opts: Partial<SwitchOptions> & { id: string }) {
    this.opts = { ...DEFAULT_SWITCH_OPTIONS, ...opts };
    this.vnes = new VneTable(this.opts.fdb, (name) => this.port(name), (r, e) => this.markers.fail(r, e), (v) => this.dataPath?.generationApplied(v));
    this.tunnelTx = new TunnelTx(this.counters, this.innerFrameMax);
    this.delivery = new Delivery(this.counters, this.opts);
    this.markers = new Markers(this.opts, this.counters, this.tunnelTx, (i) => this.vnes.peers.byIdx[i]?.name);
    this.cuts = new Cuts(this.delivery, this.markers);
    this.fwd = new Forwarding(this.counters, this.delivery, this.tunnelTx, this.portsById, this.innerFrameMax);
    this.fwd.fdbTick = Math.floor(this.opts.now() / 1000);
  }

  // ───────────────────────────── lifecycle ─────────────────────────────

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.tick(), this.opts.tickMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    for (const lp of [...this.portsByName.values()]) this.removePort(lp.name);
    this.tunnel?.close();
    this.tunnel = undefined;
    this.dataPath?.close();
    this.dataPath = undefined;
    this.tunnelTx.transport = undefined;
    for (const v of this.vnes.byName.values()) for (const r of v.recordings.values()) this.markers.fail(r, new VnsnapError('ERR_STATE', 'switch stopped'));
  }

  /** The largest inner Ethernet frame a tunnel can carry without IP fragmentation. */
  get innerFrameMax(): number {
    return this.opts.underlayMtu - UNDERLAY_OVERHEAD - DATA_HEADER_LEN;
  }

  /** The inner IP MTU VMs should use (frame max minus the Ethernet header). */
  get innerMtu(): number {
    return this.innerFrameMax - 14;
  }

  attachTunnel(t: TunnelTransport): void {
    if (this.tunnel) throw new VnsnapError('ERR_STATE', 'a tunnel transport is already attached');
    this.tunnel = t;
    this.tunnelTx.transport = t;
    t.open((n) => {
      if (this.tunnel !== t) return;
      onTunnelBatch(t, n, { peersByAddr: this.vnes.peers.byAddr, vnesByVni: this.vnes.byVni }, this.counters, this.fwd, this.markers);
      this.flush();
    });
  }

  // ───────────────────────────── configuration ─────────────────────────────

  /**
   * Create or update a VNE to `spec` in one idempotent call: peers (added or moved first when
   * given with an address), generation (deferred while old-generation ports run, see VneSpec),
   * static MAC routes. Validation errors leave what was applied before them.
   */
  configureVne(spec: VneSpec): void {
    this.vnes.configure(spec);
    this.dataPath?.vnesConfigured(this.vnes.byVni.keys());
    this.dataPath?.syncAll(this.portsById, true);
  }

  /**
   * Forget a deleted VNE (VneTable.remove: refused while ports of it are attached; false when
   * unknown here). With the in-kernel data path, its VNI's VXLAN device goes too — also when
   * this switch does not know the VNE but was told its VNI (`vni`) and no other VNE here uses
   * it: a device an earlier agent made outlives it, and a restarted agent's switch is only told
   * of the VNEs that still run.
   */
  removeVne(name: string, vni?: number): boolean {
    const v = this.vnes.remove(name);
    if (v) this.dataPath?.vneRemoved(v.vni);
    else if (vni !== undefined && !this.vnes.byVni.has(vni)) this.dataPath?.vneRemoved(vni);
    return v !== undefined;
  }

  /** Add a peer switch, or move a known one to a new underlay address (frames queued to the old one are lost). */
  upsertPeer(cfg: PeerConfig): PeerChange {
    return this.vnes.upsertPeer(cfg);
  }

  /**
   * A VM of the VNE left this switch for `peer` (live migration): its MAC is routed there, and
   * frames for it that still arrive here from other peers are relayed there (counted in
   * movedRelayed) rather than dropped, until the MAC is routed elsewhere or removed.
   */
  relayMovedMac(vneName: string, mac: string, peer: string): void {
    const v = this.vnes.get(vneName);
    this.vnes.setStaticMac(v, mac, { peer });
    const e = v.fdb.lookup(parseMac(mac));
    if (e) e.relay = true;
    this.dataPath?.sync(v, this.portsById, true);
  }

  removeMac(vneName: string, mac: string): boolean {
    const v = this.vnes.get(vneName);
    const removed = v.fdb.remove(parseMac(mac));
    this.dataPath?.sync(v, this.portsById, true);
    return removed;
  }

  // ───────────────────────────── ports ─────────────────────────────

  /** Attach a VM port to a VNE at an epoch, optionally behind a restore gate and with its MAC. */
  attachPort(vneName: string, port: Port, opts: AttachOptions = {}): void {
    const v = this.vnes.get(vneName);
    if (this.portsByName.has(port.name)) throw new VnsnapError('ERR_PORT_EXISTS', `port ${port.name} already exists`);
    const mac = opts.mac === undefined ? undefined : parseMac(opts.mac);
    if (mac !== undefined && isGroupMac(mac)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `static entries must be unicast MACs: ${opts.mac}`);
    const lp = new LocalPort(this.nextPortId++, port, v, mac);
    lp.epoch = opts.epoch ?? v.cutEpoch;
    v.noteEpoch(lp.epoch);
    if (opts.gated === true) lp.gate = { frames: [], bytes: 0 };
    this.portsByName.set(port.name, lp);
    this.portsById[lp.id] = lp;
    v.ports.push(lp);
    if (mac !== undefined) v.fdb.setStatic(mac, lp.id);
    if (this.dataPath?.attached(lp)) this.dataPath.sync(v, this.portsById, true);
    port.open((n) => this.fwd.onPortBatch(lp, n, () => this.flush()));
  }

  removePort(name: string): void {
    const lp = this.port(name);
    lp.port.close();
    lp.gate = null;
    this.portsByName.delete(name);
    this.portsById[lp.id] = undefined;
    const v = lp.vne;
    v.ports.splice(v.ports.indexOf(lp), 1);
    v.fdb.flushOwner(lp.id, true);
    this.dataPath?.detached(lp, this.portsById);
    // A departed port no longer holds back markers of a cut in progress.
    for (const r of v.recordings.values()) this.markers.checkLocalCut(v, r.k);
    this.vnes.portDetached(v);
  }

  /**
   * Open a port's restore gate: write `frames` (its recorded channel state) first, then the
   * frames kept behind the gate, then pass everything. Returns how many of `frames` the port
   * accepted. On a port without a gate it only injects. A recorded super-frame goes whole to a
   * port with offloads and as its segments (each one counted) to a port without.
   */
  openGate(portName: string, frames: readonly ChannelFrame[]): number {
    const lp = this.port(portName);
    const n = this.delivery.openGate(lp, frames);
    this.dataPath?.sync(lp.vne, this.portsById);
    return n;
  }

  /** Set a port's epoch directly (restore attaches ports at the snapshot's epoch). */
  setPortEpoch(name: string, epoch: number): void {
    this.cuts.setEpoch(this.port(name), epoch);
  }

  portEpoch(name: string): number {
    return this.port(name).epoch;
  }

  /** A VNE's applied generation and the change waiting to apply, if any (undefined: no such VNE). */
  vneGeneration(vneName: string): { generation: number; pendingGeneration?: number } | undefined {
    const v = this.vnes.byName.get(vneName);
    if (!v) return undefined;
    return { generation: v.generation, ...(v.pendingGeneration !== undefined ? { pendingGeneration: v.pendingGeneration } : {}) };
  }

  portNames(vneName?: string): string[] {
    return [...this.portsByName.values()].filter((p) => vneName === undefined || p.vne.name === vneName).map((p) => p.name);
  }

  // ───────────────────────────── snapshot operations ─────────────────────────────

  /**
   * Cut the named ports to epoch k (snapshot/cut.ts): gate them all, run `atPause` once (it
   * pauses the VMs and calls `pass` while they are paused; if it never does, pass runs when it
   * returns), drain each port, advance it to k, release held frames. On failure every named
   * port still being cut is un-gated at its old epoch and the error is rethrown. Then the ports
   * of their VNEs still behind k and not being cut by another call (the failed ones included)
   * pass the cut without a pause. Resolves with atPause's result.
   */
  cutPorts<T = void>(names: readonly string[], k: number, atPause?: AtPause<T>): Promise<T | undefined> {
    let ports: LocalPort[];
    try {
      ports = names.map((n) => this.port(n));
    } catch (e) {
      return Promise.reject(e as Error);
    }
    return this.cuts.cut(ports, k, atPause);
  }

  /** Cut one port to k; `atPause` runs while it is gated. */
  async cutPort(name: string, k: number, atPause?: () => Promise<void> | void): Promise<void> {
    await this.cutPorts([name], k, atPause && (async (pass) => {
      await atPause();
      await pass();
    }));
  }

  /** Cut every local port of a VNE to k (all at once), e.g. from the daemon's control socket. */
  async cutVne(vneName: string, k: number): Promise<void> {
    const v = this.vnes.get(vneName);
    if (k <= v.cutEpoch) throw new VnsnapError('ERR_EPOCH_ORDER', `VNE ${vneName} is at epoch ${v.cutEpoch}; cannot cut to ${k}`);
    this.markers.recording(v, k);
    await this.cuts.cut(v.ports.filter((p) => p.epoch < k), k);
    this.markers.checkLocalCut(v, k);
  }

  /** Abort snapshot k: every port below k advances to k without recording; recording k is dropped. */
  abort(vneName: string, k: number): void {
    this.cuts.abort(this.vnes.get(vneName), k);
  }

  /**
   * The channel state of snapshot k: resolves when recording k has ended at this switch
   * (every peer's marker matched, or its grace period passed). The recording is handed over
   * and forgotten. Rejects with ERR_TIMEOUT after timeoutMs (the recording continues).
   */
  channelState(vneName: string, k: number, timeoutMs = 30_000): Promise<ChannelState> {
    return this.markers.channelState(this.vnes.get(vneName), k, timeoutMs);
  }

  /** Count the in-kernel data path's datagrams in markers (switch/bpf-dp/kernel-counts.ts); undefined: the switch's own only. */
  useKernelCounts(k: Markers['kernelCounts']): void {
    this.markers.kernelCounts = k;
  }

  /** Let the cut drive the in-kernel data path's port epochs (switch/bpf-dp/epoch-sync.ts); undefined: off. */
  useDataPathEpochs(o: Cuts['dataPath']): void {
    this.cuts.dataPath = o;
  }

  /**
   * Put the in-kernel data path under this switch (switch/bpf-dp/wiring.ts): its ports'
   * entries, the FDB mirror, the epochs at the cut, the kernel's counts in the markers and the
   * punt device's reader. Once per switch.
   */
  useDataPath(w: DataPathWiring): void {
    if (this.dataPath) throw new VnsnapError('ERR_STATE', 'an in-kernel data path is already in use');
    this.dataPath = w;
    this.cuts.dataPath = w.epochs;
    this.markers.kernelCounts = w.counts;
    w.vnesConfigured(this.vnes.byVni.keys());
    for (const lp of this.portsByName.values()) w.attached(lp);
    w.syncAll(this.portsById, true);
    w.punt?.open((n) => {
      if (this.dataPath !== w) return;
      w.onPunt(n, this.vnes.byVni, this.fwd);
      this.flush();
    });
  }

  /** The in-kernel data path's wiring (undefined: not in use). */
  get inKernelDataPath(): DataPathWiring | undefined {
    return this.dataPath;
  }

  /** What each channel recording of a VNE is waiting for (operators' and tests' view). */
  recordingStatus(vneName: string): RecordingStatus[] {
    return this.markers.status(this.vnes.get(vneName));
  }

  // ───────────────────────────── stats and timers ─────────────────────────────

  /** Every counter, typed: switch-wide, per port, per VNE (with its FDB), per peer. */
  stats(): SwitchStats {
    return collectStats(this.counters, this.portsByName.values(), this.vnes.byName.values(), this.vnes.peers.byIdx);
  }

  tick(): void {
    const now = this.opts.now();
    this.fwd.fdbTick = Math.floor(now / 1000);
    for (const v of this.vnes.byName.values()) {
      v.fdb.age(this.fwd.fdbTick);
      this.markers.tick(v, now);
    }
    this.dataPath?.syncAll(this.portsById);
    this.dataPath?.forgetSettled();
    this.tunnelTx.flush();
  }

  // ───────────────────────────── internals ─────────────────────────────

  private flush(): void {
    this.tunnelTx.flush();
    this.delivery.flush();
    this.dataPath?.syncAll(this.portsById);
  }

  private port(name: string): LocalPort {
    const lp = this.portsByName.get(name);
    if (!lp) throw new VnsnapError('ERR_PORT_UNKNOWN', `unknown port "${name}"`);
    return lp;
  }
}
