/**
 * The switch's records: a peer switch, a VNE (its bridge, its peers, its recordings, and the
 * flood lists derived from them), and a local port attachment (its epoch, cut gate, hold queue,
 * restore gate and transmit batch). The Switch owns one table of each (switch.ts); the bridge,
 * snapshot and tunnel modules work on these records.
 *
 * Split horizon (snabb's bridge): a VNE's flood lists are computed when its configuration
 * changes (a port attaches or detaches, a peer joins), never per frame. A frame from a local
 * port floods to the other local ports and to every peer; a frame from a tunnel floods to local
 * ports only, so a frame never crosses two tunnels.
 */
import { VNET_HDR_LEN } from './offload';
import type { Fdb } from './bridge/fdb';
import type { Port } from './port/port';
import type { EpochCounts, Recording } from './snapshot/recording';
import { EpochCounts as Counts } from './snapshot/recording';
import type { PortCounters } from './stats';
import { newPortCounters } from './stats';

export interface Peer {
  readonly idx: number;
  readonly name: string;
  readonly ip: number;
  readonly port: number;
  /** The peer's in-kernel data path port as its configuration said (PeerConfig.dataPathPort). */
  readonly dataPathPort?: number;
}

/** A peer's part in one VNE: what was sent to and received from it, per epoch. */
export class VnePeer {
  readonly sent: EpochCounts = new Counts();
  readonly recv: EpochCounts = new Counts();
  /**
   * Counts are cumulative, so a frame lost before snapshot j is missing from every later
   * marker's count too: remember the shortfall found when recording j ended (`lostEpoch` = j)
   * so later recordings do not wait a grace period for it again.
   */
  lost = 0;
  lostEpoch = 0;
  /** Replaced when the peer moves to a new address (upsertPeer); counters stay. */
  constructor(public peer: Peer) {}
}

export interface HeldFrame {
  frame: Buffer;
  epoch: number;
  /** A super-frame's virtio_net_hdr (copy); null for an ordinary frame. */
  meta: Buffer | null;
}

/** Frames the restore gate keeps, after the frame rules, until openGate(). */
export interface RestoreGate {
  frames: { frame: Buffer; meta: Buffer | null }[];
  bytes: number;
}

export class Vne {
  readonly ports: LocalPort[] = [];
  readonly peers = new Map<number, VnePeer>();
  /** Peers that left under the current generation, with their frame counts (kept if they return). */
  readonly departedPeers = new Map<number, VnePeer>();
  readonly recordings = new Map<number, Recording>();
  /** Highest k for which every local port has passed the cut. */
  cutEpoch = 0;
  /**
   * Highest epoch known here: cutEpoch, or any local port's epoch (a port attached or set at a
   * snapshot's epoch, one cut ahead of the others). Only local operations raise it; the
   * marker window and the received-epoch ceiling are measured from it (markers.ts, rx.ts).
   */
  topEpoch = 0;
  /** A generation change deferred until the ports attached under the old one are gone. */
  pendingGeneration: number | undefined;
  /** Flood targets by ingress (split horizon): from a local port, every peer; from a tunnel, none. */
  floodPeersFromPort: VnePeer[] = [];
  readonly floodPeersFromTunnel: readonly VnePeer[] = [];
  constructor(
    readonly name: string,
    readonly vni: number,
    public generation: number,
    readonly fdb: Fdb,
  ) {}

  noteEpoch(e: number): void {
    if (e > this.topEpoch) this.topEpoch = e;
  }

  /** Recompute the flood lists; called on every configuration change of the VNE. */
  configChanged(): void {
    this.floodPeersFromPort = [...this.peers.values()];
  }
}

export class LocalPort {
  epoch = 0;
  gated = false;
  cutting = false;
  held: HeldFrame[] = [];
  heldBytes = 0;
  /** Set while the restore gate holds deliveries (attachPort with gated: true). */
  gate: RestoreGate | null = null;
  /** Recordings in progress that this port has passed the cut of. */
  recordings: Recording[] = [];
  tx: Buffer[] = [];
  /** Ports with offloads: the virtio_net_hdr of each queued frame (VNET_HDR_LEN bytes each). */
  txMeta: Buffer | null;
  txCount = 0;
  dirty = false;
  readonly stats: PortCounters = newPortCounters();

  constructor(
    readonly id: number,
    readonly port: Port,
    readonly vne: Vne,
    /** The MAC the control plane gave this port (static FDB entry), if any. */
    readonly mac: number | undefined,
  ) {
    this.txMeta = port.offload === true ? Buffer.alloc(256 * VNET_HDR_LEN) : null;
  }

  get name(): string {
    return this.port.name;
  }
}
