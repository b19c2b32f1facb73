/**
 * The vnsnap overlay switch: per-VNE learning bridges joined by Geneve tunnels, with the
 * snapshot rules of DESIGN.md built into the forwarding path.
 *
 * Pipeline (one event-loop wakeup):
 *   port/tunnel batch read ──► for each frame: learn source, look up destination,
 *     local destination  → epoch rules (deliver / deliver+record / hold) → port tx queue
 *     remote destination → Geneve header written in the frame's headroom → tunnel tx queue
 *     unknown/multicast  → flood (a frame from a tunnel is flooded to local ports only)
 *   ──► end of batch: one write per dirty port, one sendmmsg for the tunnel.
 * Frames in a batch live in the reader's slab; anything that must outlive the batch (held
 * frames, recorded channel state) is copied.
 *
 * Snapshot k of a VNE, at this switch:
 *   cutPort(p, k): gate p (deliveries held) → hook (the driver pauses the VM) → drain p
 *   (frames the VM wrote before the pause go out stamped k-1) → e(p) = k, recording k starts
 *   at p → release held frames under the rules.
 *   When every local port of the VNE has passed k, a marker (VNE, k, count of epoch<k data
 *   frames sent to that peer) goes to every peer of the VNE, retransmitted until acknowledged.
 *   Recording k ends when every peer's marker has arrived and its count is matched by the
 *   epoch<k frames received from it, or `recordingGraceMs` after the marker (the rest was lost
 *   on the wire). channelState(vne, k) then yields each port's recorded frames in order.
 *   abort(vne, k) advances every port below k to k without recording.
 * Invariants (checked by the randomized test): no frame of epoch > e(d) is delivered to d; every
 * epoch<k frame reaching d after d's cut k is delivered and recorded exactly once for k; control
 * packets never reach a port.
 *
 * Time: `now()` is injected (milliseconds); `tick()` runs retransmission, grace periods and FDB
 * aging and is called by a timer after start(), or by tests directly.
 */
import { VnsnapError } from '../proto/core/errors';
import type { Startable } from '../proto/core/lifecycle';
import { classify, Verdict } from './snapshot/epoch-rules';
import { Fdb, FdbOptions } from './bridge/fdb';
import { DATA_HEADER_LEN, decode, encodeAck, encodeData, encodeMarker, isValidVni, writeDataHeader } from './tunnel/geneve';
import { BROADCAST_MAC, isGroupMac, macAt, parseMac } from './bridge/mac';
import { segmentFrame, VNET_HDR_LEN } from './offload';
import type { Port } from './port/port';
import type { TunnelTransport } from './tunnel/transport';
import { ipv4ToInt } from './tunnel/transport';

export interface SwitchOptions {
  id: string;
  /** Bytes of future frames held per port before drops. */
  holdBytesPerPort: number;
  markerRetransmitMs: number;
  recordingGraceMs: number;
  tickMs: number;
  /** Ended recordings nobody claimed (and aborted ones) are forgotten after this long. */
  unclaimedTtlMs: number;
  underlayMtu: number;
  fdb: Partial<FdbOptions>;
  now: () => number;
}

export const DEFAULT_SWITCH_OPTIONS: Omit<SwitchOptions, 'id'> = {
  holdBytesPerPort: 4 * 1024 * 1024,
  markerRetransmitMs: 50,
  recordingGraceMs: 1000,
  tickMs: 20,
  unclaimedTtlMs: 10 * 60_000,
  underlayMtu: 1500,
  fdb: {},
  now: () => Date.now(),
};

/** IPv4 + UDP headers in front of Geneve on the underlay. */
const UNDERLAY_OVERHEAD = 20 + 8;

interface PortStats {
  rxFrames: number;
  txFrames: number;
  txDrops: number;
  held: number;
  holdDrops: number;
  recorded: number;
  runts: number;
  injected: number;
  lateInFlight: number;
}

interface HeldFrame {
  frame: Buffer;
  epoch: number;
  /** A super-frame's virtio_net_hdr (copy); null for an ordinary frame. */
  meta: Buffer | null;
}

class LocalPort {
  epoch = 0;
  gated = false;
  cutting = false;
  held: HeldFrame[] = [];
  heldBytes = 0;
  /** Recordings in progress that this port has passed the cut of. */
  recordings: Recording[] = [];
  tx: Buffer[] = [];
  /** Ports with offloads: the virtio_net_hdr of each queued frame (VNET_HDR_LEN bytes each). */
  txMeta: Buffer | null;
  txCount = 0;
  dirty = false;
  readonly stats: PortStats = { rxFrames: 0, txFrames: 0, txDrops: 0, held: 0, holdDrops: 0, recorded: 0, runts: 0, injected: 0, lateInFlight: 0 };

  constructor(
    readonly id: number,
    readonly port: Port,
    readonly vne: Vne,
  ) {
    this.txMeta = port.offload === true ? Buffer.alloc(256 * VNET_HDR_LEN) : null;
  }

  get name(): string {
    return this.port.name;
  }
}

interface Peer {
  readonly idx: number;
  readonly name: string;
  readonly ip: number;
  readonly port: number;
}

/** Data frames counted per epoch, for marker counts. */
class EpochCounts {
  private readonly byEpoch = new Map<number, number>();
  private curEpoch = -1;
  private cur = 0;

  inc(epoch: number, n = 1): void {
    if (epoch === this.curEpoch) {
      this.cur += n;
      return;
    }
    this.fold();
    this.curEpoch = epoch;
    this.cur = n;
  }

  /** Frames with epoch < k. */
  below(k: number): number {
    this.fold();
    let n = 0;
    for (const [e, c] of this.byEpoch) if (e < k) n += c;
    return n;
  }

  reset(): void {
    this.byEpoch.clear();
    this.curEpoch = -1;
    this.cur = 0;
  }

  private fold(): void {
    if (this.curEpoch >= 0 && this.cur > 0) this.byEpoch.set(this.curEpoch, (this.byEpoch.get(this.curEpoch) ?? 0) + this.cur);
    this.cur = 0;
  }
}

class VnePeer {
  readonly sent = new EpochCounts();
  readonly recv = new EpochCounts();
  /**
   * Counts are cumulative, so a frame lost before snapshot j is missing from every later
   * marker's count too: remember the shortfall found when recording j ended (`lostEpoch` = j)
   * so later recordings do not wait a grace period for it again.
   */
  lost = 0;
  lostEpoch = 0;
  /** Replaced when the peer moves to a new address (setPeerAddress); counters stay. */
  constructor(public peer: Peer) {}
}

interface MarkerIn {
  count: number;
  at: number;
}

class Recording {
  readonly frames = new Map<string, Buffer[]>();
  readonly markersIn = new Map<number, MarkerIn>();
  readonly unacked = new Set<number>();
  localDone = false;
  lastMarkerSent = 0;
  done = false;
  /** The frames were given to a channelState() caller; kept only to retransmit markers. */
  handedOver = false;
  /** When recording ended or was aborted (ms), for pruning unclaimed state. */
  endedAt = 0;
  aborted = false;
  lostFrames = 0;
  waiters: { resolve: (v: ChannelState) => void; reject: (e: Error) => void }[] = [];
  constructor(readonly k: number) {}
}

class Vne {
  readonly ports: LocalPort[] = [];
  readonly peers = new Map<number, VnePeer>();
  readonly recordings = new Map<number, Recording>();
  /** Highest k for which every local port has passed the cut. */
  cutEpoch = 0;
  constructor(
    readonly name: string,
    readonly vni: number,
    public generation: number,
    readonly fdb: Fdb,
  ) {}
}

/** Channel state of one VNE for snapshot k at this switch: each port's recorded frames, in order. */
export interface ChannelState {
  vne: string;
  epoch: number;
  ports: Map<string, Buffer[]>;
  /** Epoch<k frames the peers' markers announced that never arrived (lost on the wire). */
  lostFrames: number;
}

export interface VneConfig {
  name: string;
  vni: number;
  generation?: number;
  /** Names of the peer switches that take part in this VNE. */
  peers?: string[];
}

export interface PeerConfig {
  name: string;
  address: string;
  port: number;
}

type Owner = number; // >= 0 local port id; < 0 peer: -(idx + 1)

export class Switch implements Startable {
  readonly opts: SwitchOptions;
  private readonly vnesByName = new Map<string, Vne>();
  private readonly vnesByVni = new Map<number, Vne>();
  private readonly portsByName = new Map<string, LocalPort>();
  private readonly portsById: (LocalPort | undefined)[] = [];
  private readonly peersByName = new Map<string, Peer>();
  private readonly peersByAddr = new Map<number, Peer>();
  private readonly peersByIdx: Peer[] = [];
  private tunnel: TunnelTransport | undefined;
  private readonly dirtyPorts: LocalPort[] = [];
  // Tunnel transmit batch.
  private readonly tunCap = 4096;
  private readonly tunTx: Buffer[] = [];
  private readonly tunIps = new Uint32Array(this.tunCap);
  private readonly tunPorts = new Uint32Array(this.tunCap);
  private readonly tunVp: (VnePeer | null)[] = [];
  private readonly tunEpoch = new Uint32Array(this.tunCap);
  /** virtio_net_hdr per queued datagram (flags and gso_type zeroed for ordinary ones). */
  private readonly tunMeta = Buffer.alloc(this.tunCap * VNET_HDR_LEN);
  /** Datagrams the kernel accepted per queued entry (a super-frame is many). */
  private readonly tunSegs = new Uint32Array(this.tunCap);
  private tunGso = 0;
  private tunCount = 0;
  private fdbTick = 0;
  private timer: NodeJS.Timeout | undefined;
  private nextPortId = 0;
  /** Switch-wide named counters. */
  readonly counters = {
    tunnelRx: 0,
    tunnelTx: 0,
    tunnelTxDrops: 0,
    tunnelTxErrors: 0,
    unknownPeer: 0,
    malformed: 0,
    foreign: 0,
    unknownVni: 0,
    peerNotInVne: 0,
    oldGeneration: 0,
    newerGeneration: 0,
    floods: 0,
    unknownUnicastDrops: 0,
    tunnelHairpinDrops: 0,
    markersSent: 0,
    markersReceived: 0,
    acksSent: 0,
    acksReceived: 0,
    oversize: 0,
    /** Super-frames that could not be segmented (malformed headers from a TAP or a peer). */
    gsoErrors: 0,
  };

  constructor(opts: Partial<SwitchOptions> & { id: string }) {
    this.opts = { ...DEFAULT_SWITCH_OPTIONS, ...opts };
    this.fdbTick = Math.floor(this.opts.now() / 1000);
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
    for (const v of this.vnesByName.values()) for (const r of v.recordings.values()) this.failRecording(r, new VnsnapError('ERR_STATE', 'switch stopped'));
  }

  /** The largest inner Ethernet frame a tunnel can carry without IP fragmentation. */
  get innerFrameMax(): number {
    return this.opts.underlayMtu - UNDERLAY_OVERHEAD - DATA_HEADER_LEN;
  }

  /** The inner IP MTU VMs should use (frame max minus the Ethernet header). */
  get innerMtu(): number {
    return this.innerFrameMax - 14;
  }

  // ───────────────────────────── configuration ─────────────────────────────

  addVne(cfg: VneConfig): void {
    if (!cfg.name) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'a VNE needs a name');
    if (!isValidVni(cfg.vni)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VNE ${cfg.name}: VNI must be an integer 0..16777215, got ${cfg.vni}`);
    if (this.vnesByName.has(cfg.name)) throw new VnsnapError('ERR_ALREADY_EXISTS', `VNE ${cfg.name} already exists`);
    if (this.vnesByVni.has(cfg.vni)) throw new VnsnapError('ERR_ALREADY_EXISTS', `VNI ${cfg.vni} is already used by VNE ${this.vnesByVni.get(cfg.vni)?.name}`);
    const v = new Vne(cfg.name, cfg.vni, cfg.generation ?? 1, new Fdb(this.opts.fdb));
    for (const p of cfg.peers ?? []) {
      const peer = this.peersByName.get(p);
      if (!peer) throw new VnsnapError('ERR_PEER_UNKNOWN', `VNE ${cfg.name}: unknown peer switch "${p}"`);
      v.peers.set(peer.idx, new VnePeer(peer));
    }
    this.vnesByName.set(v.name, v);
    this.vnesByVni.set(v.vni, v);
  }

  addPeer(cfg: PeerConfig): void {
    if (this.peersByName.has(cfg.name)) throw new VnsnapError('ERR_ALREADY_EXISTS', `peer ${cfg.name} already exists`);
    let ip: number;
    try {
      ip = ipv4ToInt(cfg.address);
    } catch (e) {
      throw new VnsnapError('ERR_INVALID_ARGUMENT', `peer ${cfg.name}: ${(e as Error).message}`);
    }
    if (!Number.isInteger(cfg.port) || cfg.port < 1 || cfg.port > 65535) throw new VnsnapError('ERR_INVALID_ARGUMENT', `peer ${cfg.name}: bad UDP port ${cfg.port}`);
    const key = ip * 65536 + cfg.port;
    if (this.peersByAddr.has(key)) throw new VnsnapError('ERR_ALREADY_EXISTS', `peer ${cfg.name}: address ${cfg.address}:${cfg.port} is already peer ${this.peersByAddr.get(key)?.name}`);
    const peer: Peer = { idx: this.peersByIdx.length, name: cfg.name, ip, port: cfg.port };
    this.peersByIdx.push(peer);
    this.peersByName.set(peer.name, peer);
    this.peersByAddr.set(key, peer);
  }

  /**
   * Move a peer to a new underlay address (its agent restarted on another port, or its host
   * was re-addressed). Frames already queued to the old address are lost, as on a real move.
   */
  setPeerAddress(name: string, address: string, port: number): void {
    const peer = this.peersByName.get(name);
    if (!peer) throw new VnsnapError('ERR_PEER_UNKNOWN', `unknown peer switch "${name}"`);
    let ip: number;
    try {
      ip = ipv4ToInt(address);
    } catch (e) {
      throw new VnsnapError('ERR_INVALID_ARGUMENT', `peer ${name}: ${(e as Error).message}`);
    }
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new VnsnapError('ERR_INVALID_ARGUMENT', `peer ${name}: bad UDP port ${port}`);
    const key = ip * 65536 + port;
    const other = this.peersByAddr.get(key);
    if (other && other !== peer) throw new VnsnapError('ERR_ALREADY_EXISTS', `peer ${name}: address ${address}:${port} is already peer ${other.name}`);
    this.peersByAddr.delete(peer.ip * 65536 + peer.port);
    const moved: Peer = { ...peer, ip, port };
    this.peersByIdx[peer.idx] = moved;
    this.peersByName.set(name, moved);
    this.peersByAddr.set(key, moved);
    for (const v of this.vnesByName.values()) {
      const vp = v.peers.get(peer.idx);
      if (vp) vp.peer = moved;
    }
  }

  /** Let a peer take part in a VNE (control plane). */
  addVnePeer(vneName: string, peerName: string): void {
    const v = this.vne(vneName);
    const peer = this.peersByName.get(peerName);
    if (!peer) throw new VnsnapError('ERR_PEER_UNKNOWN', `unknown peer switch "${peerName}"`);
    if (!v.peers.has(peer.idx)) v.peers.set(peer.idx, new VnePeer(peer));
  }

  attachTunnel(t: TunnelTransport): void {
    if (this.tunnel) throw new VnsnapError('ERR_STATE', 'a tunnel transport is already attached');
    this.tunnel = t;
    t.open((n) => this.onTunnelBatch(n));
  }

  /** Attach a VM port to a VNE at the given epoch (restore attaches at the snapshot's epoch). */
  addPort(vneName: string, port: Port, epoch?: number): void {
    const v = this.vne(vneName);
    if (this.portsByName.has(port.name)) throw new VnsnapError('ERR_PORT_EXISTS', `port ${port.name} already exists`);
    const lp = new LocalPort(this.nextPortId++, port, v);
    lp.epoch = epoch ?? v.cutEpoch;
    this.portsByName.set(port.name, lp);
    this.portsById[lp.id] = lp;
    v.ports.push(lp);
    port.open((n) => this.onPortBatch(lp, n));
  }

  removePort(name: string): void {
    const lp = this.port(name);
    lp.port.close();
    this.portsByName.delete(name);
    this.portsById[lp.id] = undefined;
    const v = lp.vne;
    v.ports.splice(v.ports.indexOf(lp), 1);
    v.fdb.flushOwner(lp.id, true);
    // A departed port no longer holds back markers of a cut in progress.
    for (const r of v.recordings.values()) this.checkLocalCut(v, r.k);
  }

  /** Program a static MAC → remote switch (or local port) entry. */
  setStaticMac(vneName: string, mac: string, target: { peer: string } | { port: string }): void {
    const v = this.vne(vneName);
    const m = parseMac(mac);
    if (isGroupMac(m)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `static entries must be unicast MACs: ${mac}`);
    if ('peer' in target) {
      const peer = this.peersByName.get(target.peer);
      if (!peer) throw new VnsnapError('ERR_PEER_UNKNOWN', `unknown peer switch "${target.peer}"`);
      if (!v.peers.has(peer.idx)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `peer ${target.peer} is not part of VNE ${vneName}`);
      v.fdb.setStatic(m, -(peer.idx + 1));
    } else {
      const lp = this.port(target.port);
      if (lp.vne !== v) throw new VnsnapError('ERR_INVALID_ARGUMENT', `port ${target.port} is not in VNE ${vneName}`);
      v.fdb.setStatic(m, lp.id);
    }
  }

  removeMac(vneName: string, mac: string): boolean {
    return this.vne(vneName).fdb.remove(parseMac(mac));
  }

  /** Set a VNE's generation (restore): data frames of any other generation are dropped; counts restart. */
  setGeneration(vneName: string, generation: number): void {
    const v = this.vne(vneName);
    v.generation = generation;
    for (const vp of v.peers.values()) {
      vp.sent.reset();
      vp.recv.reset();
      vp.lost = 0;
      vp.lostEpoch = 0;
    }
    for (const r of [...v.recordings.values()]) this.failRecording(r, new VnsnapError('ERR_SNAPSHOT_ABORTED', `VNE ${vneName} moved to generation ${generation}`));
    v.fdb.flushLearned();
  }

  /** Set a port's epoch directly (restore attaches ports at the snapshot's epoch). */
  setPortEpoch(name: string, epoch: number): void {
    const lp = this.port(name);
    if (lp.cutting) throw new VnsnapError('ERR_CUT_IN_PROGRESS', `port ${name} is being cut`);
    lp.epoch = epoch;
    lp.vne.cutEpoch = Math.max(lp.vne.cutEpoch, Math.min(...lp.vne.ports.map((p) => p.epoch)));
    this.releaseHeld(lp);
    this.flush();
  }

  // ───────────────────────────── snapshot operations ─────────────────────────────

  /**
   * Cut one port to epoch k: gate, run `atPause` (the driver pauses the VM there), drain what
   * the VM wrote before the pause as epoch k-1, advance to k, release held frames.
   * If atPause throws, the port is ungated at its old epoch and the error is rethrown.
   */
  async cutPort(name: string, k: number, atPause?: () => Promise<void> | void): Promise<void> {
    this.beginCut(name, k);
    try {
      if (atPause) await atPause();
    } catch (e) {
      this.cancelCut(name);
      throw e;
    }
    await this.finishCut(name, k);
  }

  /** Gate a port: from now on every frame for it is held until finishCut/cancelCut. */
  beginCut(name: string, k: number): void {
    const lp = this.port(name);
    if (lp.cutting) throw new VnsnapError('ERR_CUT_IN_PROGRESS', `port ${name} is already being cut`);
    if (k <= lp.epoch) throw new VnsnapError('ERR_EPOCH_ORDER', `port ${name} is at epoch ${lp.epoch}; cannot cut to ${k}`);
    lp.cutting = true;
    lp.gated = true;
    this.recording(lp.vne, k);
  }

  cancelCut(name: string): void {
    const lp = this.port(name);
    lp.cutting = false;
    lp.gated = false;
    this.releaseHeld(lp);
    this.flush();
  }

  /** Drain the port as its old epoch, advance it to k, start recording, release held frames. */
  async finishCut(name: string, k: number): Promise<void> {
    const lp = this.port(name);
    if (!lp.cutting) throw new VnsnapError('ERR_STATE', `port ${name}: finishCut without beginCut`);
    try {
      await lp.port.drain();
    } finally {
      lp.cutting = false;
      lp.gated = false;
    }
    const v = lp.vne;
    if (lp.epoch < k) {
      lp.epoch = k;
      const r = v.recordings.get(k);
      if (r && !r.done && !r.aborted) lp.recordings.push(r);
    }
    this.releaseHeld(lp);
    this.flush();
    this.checkLocalCut(v, k);
  }

  /** Cut every local port of a VNE to k (all at once), e.g. from the daemon's control socket. */
  async cutVne(vneName: string, k: number): Promise<void> {
    const v = this.vne(vneName);
    if (k <= v.cutEpoch) throw new VnsnapError('ERR_EPOCH_ORDER', `VNE ${vneName} is at epoch ${v.cutEpoch}; cannot cut to ${k}`);
    this.recording(v, k);
    const ports = v.ports.filter((p) => p.epoch < k);
    for (const p of ports) this.beginCut(p.name, k);
    await Promise.all(ports.map((p) => this.finishCut(p.name, k)));
    this.checkLocalCut(v, k);
  }

  /** Abort snapshot k: every port below k advances to k without recording; recording k is dropped. */
  abort(vneName: string, k: number): void {
    const v = this.vne(vneName);
    const r = this.recording(v, k);
    r.aborted = true;
    for (const lp of v.ports) {
      lp.recordings = lp.recordings.filter((x) => x !== r);
      if (lp.epoch < k) {
        lp.epoch = k;
        lp.gated = false;
        this.releaseHeld(lp);
      }
    }
    v.cutEpoch = Math.max(v.cutEpoch, k);
    this.failRecording(r, new VnsnapError('ERR_SNAPSHOT_ABORTED', `snapshot ${k} of VNE ${vneName} was aborted`));
    this.flush();
  }

  /**
   * The channel state of snapshot k: resolves when recording k has ended at this switch
   * (every peer's marker matched, or its grace period passed). The recording is handed over
   * and forgotten. Rejects with ERR_TIMEOUT after timeoutMs (the recording continues).
   */
  channelState(vneName: string, k: number, timeoutMs = 30_000): Promise<ChannelState> {
    const v = this.vne(vneName);
    const existing = v.recordings.get(k);
    if ((existing === undefined && k <= v.cutEpoch) || existing?.handedOver) {
      return Promise.reject(new VnsnapError('ERR_NOT_FOUND', `channel state ${k} of VNE ${vneName} was already handed over or is gone`));
    }
    const r = this.recording(v, k);
    if (r.aborted) return Promise.reject(new VnsnapError('ERR_SNAPSHOT_ABORTED', `snapshot ${k} of VNE ${vneName} was aborted`));
    return new Promise<ChannelState>((resolve, reject) => {
      const timer = setTimeout(() => {
        r.waiters = r.waiters.filter((w) => w.resolve !== res);
        reject(new VnsnapError('ERR_TIMEOUT', `channel recording ${k} of VNE ${vneName} did not end within ${timeoutMs} ms (markers from: ${[...r.markersIn.keys()].map((i) => this.peersByIdx[i]?.name).join(', ') || 'none'})`));
      }, timeoutMs);
      const res = (cs: ChannelState): void => {
        clearTimeout(timer);
        resolve(cs);
      };
      r.waiters.push({
        resolve: res,
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.checkRecordingDone(v, r);
    });
  }

  /** Write recorded frames into a port, in order (restore). */
  inject(name: string, frames: readonly Buffer[]): number {
    const lp = this.port(name);
    const n = lp.port.send(frames, frames.length);
    lp.stats.injected += n;
    lp.stats.txDrops += frames.length - n;
    return n;
  }

  portEpoch(name: string): number {
    return this.port(name).epoch;
  }

  /** Flat named counters: switch-wide, per port (`port.<name>.<counter>`) and per VNE. */
  stats(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, val] of Object.entries(this.counters)) out[k] = val;
    for (const lp of this.portsByName.values()) {
      for (const [k, val] of Object.entries(lp.stats)) out[`port.${lp.name}.${k}`] = val;
      out[`port.${lp.name}.epoch`] = lp.epoch;
      out[`port.${lp.name}.heldBytes`] = lp.heldBytes;
    }
    for (const v of this.vnesByName.values()) {
      out[`vne.${v.name}.fdbSize`] = v.fdb.size;
      out[`vne.${v.name}.epoch`] = v.cutEpoch;
      out[`vne.${v.name}.generation`] = v.generation;
      for (const [k, val] of Object.entries(v.fdb.counters)) out[`vne.${v.name}.fdb.${k}`] = val;
    }
    return out;
  }

  /** What each channel recording of a VNE is waiting for (operators' and tests' view). */
  recordingStatus(vneName: string): { epoch: number; localDone: boolean; done: boolean; aborted: boolean; peers: { peer: string; marker: number | null; received: number; acked: boolean }[] }[] {
    const v = this.vne(vneName);
    return [...v.recordings.values()].map((r) => ({
      epoch: r.k,
      localDone: r.localDone,
      done: r.done,
      aborted: r.aborted,
      peers: [...v.peers.values()].map((vp) => ({
        peer: vp.peer.name,
        marker: r.markersIn.get(vp.peer.idx)?.count ?? null,
        received: vp.recv.below(r.k),
        acked: r.localDone && !r.unacked.has(vp.peer.idx),
      })),
    }));
  }

  portNames(vneName?: string): string[] {
    return [...this.portsByName.values()].filter((p) => vneName === undefined || p.vne.name === vneName).map((p) => p.name);
  }

  // ───────────────────────────── timers ─────────────────────────────

  tick(): void {
    const now = this.opts.now();
    this.fdbTick = Math.floor(now / 1000);
    for (const v of this.vnesByName.values()) {
      v.fdb.age(this.fdbTick);
      for (const r of v.recordings.values()) {
        if ((r.aborted || (r.done && r.waiters.length === 0) || r.handedOver) && r.endedAt > 0 && now - r.endedAt > this.opts.unclaimedTtlMs) {
          v.recordings.delete(r.k);
          continue;
        }
        if (r.localDone && !r.aborted && r.unacked.size > 0 && now - r.lastMarkerSent >= this.opts.markerRetransmitMs) this.sendMarkers(v, r, now);
        if (!r.done && !r.aborted) this.checkRecordingDone(v, r);
      }
    }
    this.flushTunnel();
  }

  // ───────────────────────────── hot path ─────────────────────────────

  private onPortBatch(lp: LocalPort, count: number): void {
    const rx = lp.port.rx;
    const slab = rx.slab;
    const meta = rx.meta;
    const v = lp.vne;
    const epoch = lp.epoch;
    const max = this.innerFrameMax;
    const inPlace = rx.headroom >= DATA_HEADER_LEN;
    for (let i = 0; i < count; i++) {
      const off = i * rx.slotSize + rx.headroom;
      const len = rx.lens[i] as number;
      // A TCP super-frame from a TAP with offloads: one forwarding decision for all its
      // segments, which share its epoch; it is segmented wherever it meets no offloads.
      const m = meta !== undefined && meta[i * VNET_HDR_LEN + 1] !== 0 ? meta : null;
      const moff = i * VNET_HDR_LEN;
      lp.stats.rxFrames++;
      if (len < 14) {
        lp.stats.runts++;
        continue;
      }
      if (len > max && m === null && v.peers.size > 0) this.counters.oversize++;
      const dst = macAt(slab, off);
      const src = macAt(slab, off + 6);
      if (!isGroupMac(src)) v.fdb.learn(src, lp.id, this.fdbTick);
      const entry = dst === BROADCAST_MAC || isGroupMac(dst) ? undefined : v.fdb.lookup(dst);
      if (entry !== undefined) {
        const owner = entry.owner;
        if (owner >= 0) {
          if (owner !== lp.id) {
            const dp = this.portsById[owner];
            if (dp) this.deliver(dp, slab, off, len, epoch, m, moff);
          }
        } else {
          const vp = v.peers.get(-owner - 1);
          if (vp) this.toPeer(v, vp, slab, off, len, inPlace, epoch, m, moff);
        }
        continue;
      }
      // Unknown unicast, multicast, broadcast: flood within the VNE.
      this.counters.floods++;
      for (const dp of v.ports) if (dp !== lp) this.deliver(dp, slab, off, len, epoch, m, moff);
      if (v.peers.size > 0) {
        for (const vp of v.peers.values()) this.toPeer(v, vp, slab, off, len, inPlace, epoch, m, moff);
      }
    }
    this.flush();
  }

  private onTunnelBatch(count: number): void {
    const t = this.tunnel;
    if (!t) return;
    const rx = t.rx;
    const slab = rx.slab;
    // With UDP GRO, entry i may stand for segs[i] datagrams (all with the same Geneve header,
    // hence one epoch) coalesced into one TCP super-frame; counts are per datagram.
    const offs = rx.offs;
    const segsOf = rx.segs;
    const meta = rx.meta;
    for (let i = 0; i < count; i++) {
      const off = offs !== undefined ? (offs[i] as number) : i * rx.slotSize + rx.headroom;
      const len = rx.lens[i] as number;
      const segs = segsOf !== undefined ? (segsOf[i] as number) : 1;
      this.counters.tunnelRx += segs;
      const peer = this.peersByAddr.get((rx.ips[i] as number) * 65536 + (rx.ports[i] as number));
      if (peer === undefined) {
        this.counters.unknownPeer += segs;
        continue;
      }
      const d = decode(slab, off, len);
      if (d === null) {
        this.counters.malformed += segs;
        continue;
      }
      const v = this.vnesByVni.get(d.vni);
      if (v === undefined) {
        this.counters.unknownVni += segs;
        continue;
      }
      const vp = v.peers.get(peer.idx);
      if (vp === undefined) {
        this.counters.peerNotInVne += segs;
        continue;
      }
      switch (d.kind) {
        case 'data': {
          if (d.generation !== v.generation) {
            if (d.generation < v.generation) this.counters.oldGeneration += segs;
            else this.counters.newerGeneration += segs;
            break;
          }
          vp.recv.inc(d.epoch, segs);
          const m = meta !== undefined && meta[i * VNET_HDR_LEN + 1] !== 0 ? meta : null;
          this.fromPeer(v, peer, slab, off + d.payloadOffset, len - d.payloadOffset, d.epoch, m, i * VNET_HDR_LEN);
          break;
        }
        case 'marker':
          this.onMarker(v, vp, d.epoch, d.generation, d.count);
          break;
        case 'ack': {
          this.counters.acksReceived++;
          const r = d.generation === v.generation ? v.recordings.get(d.epoch) : undefined;
          if (r) {
            r.unacked.delete(peer.idx);
            if (r.handedOver && r.unacked.size === 0) v.recordings.delete(r.k);
          }
          break;
        }
        case 'foreign':
          this.counters.foreign += segs;
          break;
      }
    }
    this.flush();
  }

  private fromPeer(v: Vne, peer: Peer, slab: Buffer, off: number, len: number, epoch: number, m: Buffer | null, moff: number): void {
    const dst = macAt(slab, off);
    const src = macAt(slab, off + 6);
    const owner: Owner = -(peer.idx + 1);
    if (!isGroupMac(src)) v.fdb.learn(src, owner, this.fdbTick);
    const entry = dst === BROADCAST_MAC || isGroupMac(dst) ? undefined : v.fdb.lookup(dst);
    if (entry !== undefined) {
      if (entry.owner >= 0) {
        const dp = this.portsById[entry.owner];
        if (dp) this.deliver(dp, slab, off, len, epoch, m, moff);
      } else {
        // Split horizon: never forward from one tunnel into another.
        this.counters.tunnelHairpinDrops++;
      }
      return;
    }
    // Flood to local ports only.
    this.counters.floods++;
    for (const dp of v.ports) this.deliver(dp, slab, off, len, epoch, m, moff);
  }

  /**
   * Apply the frame rules at destination port dp. m/moff: the virtio_net_hdr of a super-frame
   * (null for an ordinary frame); a port without offloads gets its segments instead, each under
   * the rules with the same epoch.
   */
  private deliver(dp: LocalPort, slab: Buffer, off: number, len: number, epoch: number, m: Buffer | null, moff: number): void {
    if (m !== null && dp.txMeta === null) {
      const segs = segmentFrame(slab.subarray(off, off + len), m, moff, 0);
      if (segs === null) {
        this.counters.gsoErrors++;
        dp.stats.txDrops++;
        return;
      }
      for (const sg of segs) this.deliver(dp, sg, 0, sg.length, epoch, null, 0);
      return;
    }
    const verdict = classify(epoch, dp.epoch, dp.gated);
    if (verdict === Verdict.Hold) {
      this.hold(dp, Buffer.from(slab.subarray(off, off + len)), epoch, m === null ? null : Buffer.from(m.subarray(moff, moff + VNET_HDR_LEN)));
      return;
    }
    const frame = slab.subarray(off, off + len);
    if (verdict === Verdict.DeliverAndRecord) this.record(dp, frame, epoch, true, m, moff);
    this.enqueue(dp, frame, m, moff);
  }

  private hold(dp: LocalPort, frame: Buffer, epoch: number, meta: Buffer | null): void {
    if (dp.heldBytes + frame.length > this.opts.holdBytesPerPort) {
      dp.stats.holdDrops++;
      return;
    }
    dp.held.push({ frame, epoch, meta });
    dp.heldBytes += frame.length;
    dp.stats.held++;
  }

  /** Channel state is stored as plain Ethernet frames: a super-frame is recorded as its segments. */
  private record(dp: LocalPort, frame: Buffer, epoch: number, copy: boolean, m: Buffer | null, moff: number): void {
    if (dp.recordings.length === 0) {
      dp.stats.lateInFlight++;
      return;
    }
    let cs: Buffer[] | undefined;
    for (const r of dp.recordings) {
      if (epoch < r.k) {
        if (cs === undefined) {
          if (m !== null) {
            const segs = segmentFrame(frame, m, moff, 0);
            if (segs === null) {
              this.counters.gsoErrors++;
              return;
            }
            cs = segs;
          } else {
            cs = [copy ? Buffer.from(frame) : frame];
          }
        }
        let list = r.frames.get(dp.name);
        if (!list) {
          list = [];
          r.frames.set(dp.name, list);
        }
        for (const c of cs) list.push(c);
        dp.stats.recorded += cs.length;
      }
    }
  }

  private enqueue(dp: LocalPort, frame: Buffer, m: Buffer | null, moff: number): void {
    const i = dp.txCount++;
    dp.tx[i] = frame;
    let tm = dp.txMeta;
    if (tm !== null) {
      const at = i * VNET_HDR_LEN;
      if (at + VNET_HDR_LEN > tm.length) {
        const bigger = Buffer.alloc(tm.length * 2);
        tm.copy(bigger, 0, 0, at);
        dp.txMeta = tm = bigger;
      }
      if (m !== null) m.copy(tm, at, moff, moff + VNET_HDR_LEN);
      else tm.fill(0, at, at + VNET_HDR_LEN);
    }
    if (!dp.dirty) {
      dp.dirty = true;
      this.dirtyPorts.push(dp);
    }
  }

  private releaseHeld(dp: LocalPort): void {
    if (dp.held.length === 0 || dp.gated) return;
    const keep: HeldFrame[] = [];
    let keepBytes = 0;
    for (const h of dp.held) {
      const verdict = classify(h.epoch, dp.epoch, false);
      if (verdict === Verdict.Hold) {
        keep.push(h);
        keepBytes += h.frame.length;
        continue;
      }
      if (verdict === Verdict.DeliverAndRecord) this.record(dp, h.frame, h.epoch, false, h.meta, 0);
      this.enqueue(dp, h.frame, h.meta, 0);
    }
    dp.held = keep;
    dp.heldBytes = keepBytes;
  }

  private toPeer(v: Vne, vp: VnePeer, slab: Buffer, off: number, len: number, inPlace: boolean, epoch: number, m: Buffer | null, moff: number): void {
    if (m !== null && this.tunnel?.gso !== true) {
      // No segmentation offload on this tunnel: send the segments one datagram each.
      const segs = segmentFrame(slab.subarray(off, off + len), m, moff, this.innerFrameMax);
      if (segs === null) {
        this.counters.gsoErrors++;
        return;
      }
      for (const sg of segs) this.queueTunnel(encodeData(v.vni, epoch, v.generation, sg), vp.peer, vp, epoch, null, 0);
      return;
    }
    let dgram: Buffer;
    if (inPlace) {
      writeDataHeader(slab, off - DATA_HEADER_LEN, v.vni, epoch, v.generation);
      dgram = slab.subarray(off - DATA_HEADER_LEN, off + len);
    } else {
      dgram = encodeData(v.vni, epoch, v.generation, slab.subarray(off, off + len));
    }
    this.queueTunnel(dgram, vp.peer, vp, epoch, m, moff);
  }

  private queueTunnel(dgram: Buffer, peer: Peer, vp: VnePeer | null, epoch: number, m: Buffer | null, moff: number): void {
    if (this.tunnel === undefined) {
      this.counters.tunnelTxDrops++;
      return;
    }
    if (this.tunCount === this.tunCap) this.flushTunnel();
    const i = this.tunCount++;
    this.tunTx[i] = dgram;
    this.tunIps[i] = peer.ip;
    this.tunPorts[i] = peer.port;
    this.tunVp[i] = vp;
    this.tunEpoch[i] = epoch;
    const at = i * VNET_HDR_LEN;
    if (m !== null) {
      m.copy(this.tunMeta, at, moff, moff + VNET_HDR_LEN);
      this.tunGso++;
    } else {
      this.tunMeta[at] = 0;
      this.tunMeta[at + 1] = 0;
    }
  }

  private flush(): void {
    this.flushTunnel();
    const dirty = this.dirtyPorts;
    for (let i = 0; i < dirty.length; i++) {
      const dp = dirty[i] as LocalPort;
      const n = dp.port.send(dp.tx, dp.txCount, dp.txMeta);
      dp.stats.txFrames += n;
      dp.stats.txDrops += dp.txCount - n;
      dp.tx.length = 0;
      dp.txCount = 0;
      dp.dirty = false;
    }
    dirty.length = 0;
  }

  private flushTunnel(): void {
    const n = this.tunCount;
    const t = this.tunnel;
    if (n === 0 || t === undefined) return;
    // A datagram the kernel refuses (EPERM from a firewall rule, ENETUNREACH while a route is
    // gone, ...) makes the native send throw with `sent` = the entries before it. That one is
    // dropped like a lost packet and the rest of the batch goes on: a send error must never
    // take the switch (and the agent with its VMs) down.
    let off = 0;
    while (off < n) {
      const whole = off === 0;
      const tx = whole ? this.tunTx : this.tunTx.slice(off);
      const ips = whole ? this.tunIps : this.tunIps.subarray(off);
      const ports = whole ? this.tunPorts : this.tunPorts.subarray(off);
      let sent: number;
      let failed = false;
      const gso = this.tunGso > 0 && t.sendGso !== undefined;
      const segs = whole ? this.tunSegs : this.tunSegs.subarray(off);
      try {
        sent = gso
          ? (t.sendGso as NonNullable<TunnelTransport['sendGso']>)(tx, ips, ports, n - off, whole ? this.tunMeta : this.tunMeta.subarray(off * VNET_HDR_LEN), segs, this.innerFrameMax)
          : t.send(tx, ips, ports, n - off);
      } catch (e) {
        const at = (e as { sent?: unknown }).sent;
        if ((e as { code?: unknown }).code !== 'ERR_NATIVE_IO' || typeof at !== 'number') throw e;
        sent = Math.min(at, n - off);
        failed = true;
        this.counters.tunnelTxErrors++;
      }
      if (gso) {
        // Every datagram the kernel accepted counts toward markers (a super-frame is many),
        // including those of a super-frame cut short by an error.
        let dgrams = 0;
        const upto = failed ? Math.min(n, off + sent + 1) : n;
        for (let i = off; i < upto; i++) {
          const k = segs[i - off] as number;
          if (k === 0) continue;
          dgrams += k;
          this.tunVp[i]?.sent.inc(this.tunEpoch[i] as number, k);
        }
        this.counters.tunnelTx += dgrams;
      } else {
        this.counters.tunnelTx += sent;
        // Only what the kernel accepted counts toward markers: the receiver can match it.
        for (let i = off; i < off + sent; i++) this.tunVp[i]?.sent.inc(this.tunEpoch[i] as number);
      }
      if (!failed) {
        this.counters.tunnelTxDrops += n - off - sent;
        break;
      }
      this.counters.tunnelTxDrops++;
      off += sent + 1;
    }
    this.tunTx.length = 0;
    this.tunVp.length = 0;
    this.tunCount = 0;
    this.tunGso = 0;
  }

  // ───────────────────────────── markers and recordings ─────────────────────────────

  private recording(v: Vne, k: number): Recording {
    let r = v.recordings.get(k);
    if (!r) {
      r = new Recording(k);
      v.recordings.set(k, r);
    }
    return r;
  }

  private checkLocalCut(v: Vne, k: number): void {
    const r = v.recordings.get(k);
    if (!r || r.localDone || r.aborted) return;
    for (const lp of v.ports) if (lp.epoch < k || lp.cutting) return;
    r.localDone = true;
    v.cutEpoch = Math.max(v.cutEpoch, k);
    for (const idx of v.peers.keys()) r.unacked.add(idx);
    this.sendMarkers(v, r, this.opts.now());
    this.flushTunnel();
    this.checkRecordingDone(v, r);
  }

  private sendMarkers(v: Vne, r: Recording, now: number): void {
    // Flush queued data first so the counts cover everything already handed to the kernel.
    this.flushTunnel();
    for (const idx of r.unacked) {
      const vp = v.peers.get(idx);
      if (!vp) continue;
      this.queueTunnel(encodeMarker(v.vni, r.k, v.generation, vp.sent.below(r.k)), vp.peer, null, 0, null, 0);
      this.counters.markersSent++;
    }
    r.lastMarkerSent = now;
  }

  private onMarker(v: Vne, vp: VnePeer, k: number, generation: number, count: number): void {
    this.counters.markersReceived++;
    this.queueTunnel(encodeAck(v.vni, k, generation), vp.peer, null, 0, null, 0);
    this.counters.acksSent++;
    if (generation !== v.generation) return;
    // A retransmitted marker for a recording already handed over: acknowledged, nothing more.
    if (!v.recordings.has(k) && k <= v.cutEpoch) return;
    const r = this.recording(v, k);
    if (!r.markersIn.has(vp.peer.idx)) r.markersIn.set(vp.peer.idx, { count, at: this.opts.now() });
    this.checkRecordingDone(v, r);
  }

  private checkRecordingDone(v: Vne, r: Recording): void {
    if (r.aborted || !r.localDone || r.handedOver) return;
    if (r.done) {
      if (r.waiters.length > 0) this.handOver(v, r);
      return;
    }
    const now = this.opts.now();
    let lost = 0;
    const shortfalls: [VnePeer, number][] = [];
    for (const vp of v.peers.values()) {
      const m = r.markersIn.get(vp.peer.idx);
      if (!m) return;
      const got = vp.recv.below(r.k);
      const knownLost = vp.lostEpoch < r.k ? vp.lost : 0;
      if (got + knownLost < m.count) {
        if (now - m.at < this.opts.recordingGraceMs) return;
        lost += m.count - got - knownLost;
      }
      shortfalls.push([vp, Math.max(0, m.count - got)]);
    }
    for (const [vp, short] of shortfalls) {
      if (r.k > vp.lostEpoch) {
        vp.lost = short;
        vp.lostEpoch = r.k;
      }
    }
    r.done = true;
    r.endedAt = now;
    r.lostFrames = lost;
    for (const lp of v.ports) lp.recordings = lp.recordings.filter((x) => x !== r);
    if (r.waiters.length > 0) this.handOver(v, r);
  }

  private handOver(v: Vne, r: Recording): void {
    const ports = new Map<string, Buffer[]>();
    for (const lp of v.ports) ports.set(lp.name, r.frames.get(lp.name) ?? []);
    for (const [name, frames] of r.frames) if (!ports.has(name)) ports.set(name, frames);
    const cs: ChannelState = { vne: v.name, epoch: r.k, ports, lostFrames: r.lostFrames };
    const waiters = r.waiters;
    r.waiters = [];
    r.handedOver = true;
    r.frames.clear();
    // Keep retransmitting our markers to peers that have not acknowledged them yet.
    if (r.unacked.size === 0) v.recordings.delete(r.k);
    for (const w of waiters) w.resolve(cs);
  }

  private failRecording(r: Recording, e: Error): void {
    r.aborted = true;
    r.endedAt = this.opts.now();
    const waiters = r.waiters;
    r.waiters = [];
    for (const w of waiters) w.reject(e);
  }

  // ───────────────────────────── lookups ─────────────────────────────

  private vne(name: string): Vne {
    const v = this.vnesByName.get(name);
    if (!v) throw new VnsnapError('ERR_VNE_UNKNOWN', `unknown VNE "${name}"`);
    return v;
  }

  private port(name: string): LocalPort {
    const lp = this.portsByName.get(name);
    if (!lp) throw new VnsnapError('ERR_PORT_UNKNOWN', `unknown port "${name}"`);
    return lp;
  }
}
