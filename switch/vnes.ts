/**
 * The VNE table and its configuration: VNEs by name and by VNI, the peer switches, each VNE's
 * peers and static MAC routes, and its generation. This is the switch's whole control-plane
 * state; `configureVne` reaches any desired state from any current one in one idempotent call
 * (a given peer list is the whole set: a peer left out leaves the VNE, with its routes, and no
 * recording waits for it; MAC routes are otherwise only added or re-pointed), so callers keep
 * no copy of it.
 *
 * Generation (DESIGN.md, "Restore"): data frames of another generation are dropped, so a
 * restored VNE and the instances it replaces never exchange frames. A generation change waits
 * while ports attached outside a restore gate remain (instances of the old generation run
 * here: bumping now would stamp their frames with the new generation and let them reach the
 * restored VMs); it applies when the last of them detaches, or at once with `generationNow`.
 * Applying one restarts the peers' frame counts and the VNE's epochs, fails and drops its
 * recordings and forgets learned MACs. `remove` forgets a deleted VNE (none of its ports may
 * remain): its recordings fail, its name and VNI are free again.
 */
import { VnsnapError } from '../proto/core/errors';
import { Fdb, FdbOptions } from './bridge/fdb';
import { isGroupMac, parseMac } from './bridge/mac';
import type { PeerChange, PeerConfig } from './peers';
import { PeerTable } from './peers';
import type { Recording } from './snapshot/recording';
import type { LocalPort } from './tables';
import { Vne, VnePeer } from './tables';
import { isValidVni } from './tunnel/geneve';

export interface VneConfig {
  name: string;
  vni: number;
  generation?: number;
  /** Names of the peer switches that take part in this VNE. */
  peers?: string[];
}

/** A static MAC route: to a peer switch, to a named local port, or to whichever local port has that MAC. */
export type MacRoute = { mac: string; peer: string } | { mac: string; port: string } | { mac: string; local: true };

/** configureVne's desired state of one VNE (additive: peers and routes are never removed). */
export interface VneSpec {
  name: string;
  /** Needed to create the VNE; when given for an existing one it must match. */
  vni?: number;
  /** The VNE's generation (default 1 at creation); a change may be deferred (see the header). */
  generation?: number;
  /** Apply `generation` now even if ports of the old one are attached (a restore, after stopping them). */
  generationNow?: boolean;
  /** Peer switches taking part: names of known peers, or peers to add or move first. */
  peers?: (string | PeerConfig)[];
  macs?: MacRoute[];
}

export class VneTable {
  readonly byName = new Map<string, Vne>();
  readonly byVni = new Map<number, Vne>();
  readonly peers = new PeerTable();

  constructor(
    private readonly fdbOpts: Partial<FdbOptions>,
    private readonly port: (name: string) => LocalPort,
    private readonly failRecording: (r: Recording, e: Error) => void,
    /** Told after a generation was applied (the in-kernel data path restarts its counts). */
    private readonly generationApplied?: (v: Vne) => void,
  ) {}

  get(name: string): Vne {
    const v = this.byName.get(name);
    if (!v) throw new VnsnapError('ERR_VNE_UNKNOWN', `unknown VNE "${name}"`);
    return v;
  }

  configure(spec: VneSpec): void {
    if (!spec.name) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'a VNE needs a name');
    const peerNames = (spec.peers ?? []).map((p) => {
      if (typeof p === 'string') return p;
      this.upsertPeer(p);
      return p.name;
    });
    let v = this.byName.get(spec.name);
    if (!v) {
      if (spec.vni === undefined) throw new VnsnapError('ERR_VNE_UNKNOWN', `unknown VNE "${spec.name}" (creating it needs a VNI)`);
      v = this.add({ name: spec.name, vni: spec.vni, generation: spec.generation || 1, peers: peerNames });
    } else {
      if (spec.vni !== undefined && spec.vni !== v.vni) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE ${spec.name} has VNI ${v.vni} here; ConfigureVne asks for ${spec.vni}`);
      if (spec.generation) this.changeGeneration(v, spec.generation, spec.generationNow === true);
      for (const p of peerNames) this.addPeerTo(v, p);
      // The peer list is the whole set: a peer no longer hosting VMs of the VNE (its VMs restored
      // elsewhere, its host lost) leaves it, or every later cut would wait for its markers.
      if (spec.peers !== undefined) for (const vp of [...v.peers.values()]) if (!peerNames.includes(vp.peer.name)) this.removePeerFrom(v, vp.peer.idx);
    }
    for (const r of spec.macs ?? []) {
      if ('local' in r) {
        const m = parseMac(r.mac);
        const lp = v.ports.find((p) => p.mac === m);
        if (lp) this.setStaticMac(v, r.mac, { port: lp.name });
      } else if ('peer' in r) {
        if (!this.peers.byName.has(r.peer)) throw new VnsnapError('ERR_PEER_UNKNOWN', `MAC ${r.mac} routed to ${r.peer}, which is not among the VNE's peers`);
        this.addPeerTo(v, r.peer);
        this.setStaticMac(v, r.mac, { peer: r.peer });
      } else this.setStaticMac(v, r.mac, { port: r.port });
    }
  }

  upsertPeer(cfg: PeerConfig): PeerChange {
    const have = this.peers.byName.get(cfg.name);
    if (have === undefined) {
      this.peers.add(cfg);
      return { change: 'added' };
    }
    const from = PeerTable.address(have);
    const sameAddress = from === `${cfg.address}:${cfg.port}`;
    if (sameAddress && have.dataPathPort === cfg.dataPathPort) return { change: 'unchanged' };
    const moved = this.peers.move(cfg.name, cfg.address, cfg.port, cfg.dataPathPort);
    for (const v of this.byName.values()) {
      const vp = v.peers.get(moved.idx);
      if (vp) vp.peer = moved;
    }
    // a new data path port only: the record is replaced (the FDB mirror re-resolves it), the endpoint is the same
    return sameAddress ? { change: 'unchanged' } : { change: 'moved', from };
  }

  add(cfg: VneConfig): Vne {
    if (!cfg.name) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'a VNE needs a name');
    if (!isValidVni(cfg.vni)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VNE ${cfg.name}: VNI must be an integer 0..16777215, got ${cfg.vni}`);
    if (this.byName.has(cfg.name)) throw new VnsnapError('ERR_ALREADY_EXISTS', `VNE ${cfg.name} already exists`);
    if (this.byVni.has(cfg.vni)) throw new VnsnapError('ERR_ALREADY_EXISTS', `VNI ${cfg.vni} is already used by VNE ${this.byVni.get(cfg.vni)?.name}`);
    const v = new Vne(cfg.name, cfg.vni, cfg.generation ?? 1, new Fdb(this.fdbOpts));
    for (const p of cfg.peers ?? []) {
      const peer = this.peers.byName.get(p);
      if (!peer) throw new VnsnapError('ERR_PEER_UNKNOWN', `VNE ${cfg.name}: unknown peer switch "${p}"`);
      v.peers.set(peer.idx, new VnePeer(peer));
    }
    v.configChanged();
    this.byName.set(v.name, v);
    this.byVni.set(v.vni, v);
    return v;
  }

  /**
   * Forget VNE `name` (it was deleted): its peers' membership, MAC routes, recordings (failed)
   * and generation go with it; its name and VNI are free again. Refused while a port of it is
   * attached (ERR_FAILED_PRECONDITION naming them); an unknown name is nothing to do (false).
   */
  remove(name: string): Vne | undefined {
    const v = this.byName.get(name);
    if (!v) return undefined;
    if (v.ports.length > 0) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE ${name} still has ports here (${v.ports.map((p) => p.name).join(', ')}): detach them first`);
    for (const r of [...v.recordings.values()]) this.failRecording(r, new VnsnapError('ERR_SNAPSHOT_ABORTED', `VNE ${name} was removed`));
    v.recordings.clear();
    this.byName.delete(name);
    this.byVni.delete(v.vni);
    return v;
  }

  /** Let a peer take part in a VNE. */
  addPeerTo(v: Vne, peerName: string): void {
    const peer = this.peers.get(peerName);
    if (!v.peers.has(peer.idx)) {
      // A peer that left and returns under the same generation keeps its frame counts: the other
      // side counted on, and markers compare the two.
      const back = v.departedPeers.get(peer.idx);
      v.departedPeers.delete(peer.idx);
      if (back) back.peer = peer;
      v.peers.set(peer.idx, back ?? new VnePeer(peer));
      v.configChanged();
    }
  }

  /** A peer leaves a VNE: its routes go, and no recording waits for its markers or acks. */
  removePeerFrom(v: Vne, idx: number): void {
    const vp = v.peers.get(idx);
    if (!vp || !v.peers.delete(idx)) return;
    v.departedPeers.set(idx, vp);
    v.fdb.flushOwner(-(idx + 1), true);
    for (const r of v.recordings.values()) {
      r.unacked.delete(idx);
      r.markersIn.delete(idx);
    }
    v.configChanged();
  }

  setStaticMac(v: Vne, mac: string, target: { peer: string } | { port: string }): void {
    const m = parseMac(mac);
    if (isGroupMac(m)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `static entries must be unicast MACs: ${mac}`);
    if ('peer' in target) {
      const peer = this.peers.get(target.peer);
      if (!v.peers.has(peer.idx)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `peer ${target.peer} is not part of VNE ${v.name}`);
      v.fdb.setStatic(m, -(peer.idx + 1));
    } else {
      const lp = this.port(target.port);
      if (lp.vne !== v) throw new VnsnapError('ERR_INVALID_ARGUMENT', `port ${target.port} is not in VNE ${v.name}`);
      v.fdb.setStatic(m, lp.id);
    }
  }

  /** A port of v detached: a deferred generation change applies once no old instance runs. */
  portDetached(v: Vne): void {
    if (v.pendingGeneration !== undefined && !hasRunningPorts(v)) this.applyGeneration(v, v.pendingGeneration);
  }

  changeGeneration(v: Vne, generation: number, now: boolean): void {
    if (now) {
      v.pendingGeneration = undefined;
      if (generation !== v.generation) this.applyGeneration(v, generation);
      return;
    }
    if (generation === v.generation) return;
    if (hasRunningPorts(v)) v.pendingGeneration = generation;
    else this.applyGeneration(v, generation);
  }

  /** Set the generation now: data frames of any other generation are dropped; counts restart. */
  applyGeneration(v: Vne, generation: number): void {
    v.pendingGeneration = undefined;
    v.generation = generation;
    v.departedPeers.clear();
    for (const vp of v.peers.values()) {
      vp.sent.reset();
      vp.recv.reset();
      vp.lost = 0;
      vp.lostEpoch = 0;
    }
    for (const r of [...v.recordings.values()]) this.failRecording(r, new VnsnapError('ERR_SNAPSHOT_ABORTED', `VNE ${v.name} moved to generation ${generation}`));
    // Epochs start over with the generation: a restore in place goes back to the snapshot's
    // epoch, and the next cut reuses epoch numbers the old generation already passed. Left at the
    // old generation's values, a peer's marker for such a cut that arrived before the local cut
    // was taken for an old retransmission (k <= cutEpoch), acknowledged and dropped, and the
    // recording waited for it forever. The ports' epochs (set by the restore) raise them again.
    v.recordings.clear();
    v.cutEpoch = 0;
    v.topEpoch = Math.max(0, ...v.ports.map((p) => p.epoch));
    v.fdb.flushLearned();
    this.generationApplied?.(v);
  }
}

/** Ports of v outside a restore gate: instances of the current generation running here. */
function hasRunningPorts(v: Vne): boolean {
  return v.ports.some((p) => p.gate === null);
}
