/**
 * The switch's counters as one typed structure (snabb's named counters): switch-wide counters,
 * and per VNE, per port and per peer records. `Switch.stats()` builds a fresh snapshot of it at
 * the caller's request (a scrape, a control-socket `stats` op); the data path only increments
 * plain number fields and never formats anything.
 *
 * `flattenStats` renders the structure as the flat `name → number` map the standalone daemon's
 * control socket has always printed (`port.<name>.<counter>`, `vne.<name>.<counter>`,
 * `vne.<name>.fdb.<counter>`); nothing inside the switch or the agent parses it back.
 */
import type { FdbCounters } from './bridge/fdb';
import type { LocalPort, Peer, Vne } from './tables';
import { intToIpv4 } from './tunnel/transport';

/** Switch-wide counters (drops by reason, tunnel traffic, markers). */
export interface SwitchCounters {
  tunnelRx: number;
  tunnelTx: number;
  tunnelTxDrops: number;
  tunnelTxErrors: number;
  unknownPeer: number;
  malformed: number;
  /** Geneve packets with a critical option this switch does not understand (RFC 8926 §3.5: dropped). */
  unknownCriticalOption: number;
  foreign: number;
  unknownVni: number;
  peerNotInVne: number;
  oldGeneration: number;
  newerGeneration: number;
  floods: number;
  tunnelHairpinDrops: number;
  /** Frames from a tunnel relayed to the new host of a VM that migrated away (relayMovedMac). */
  movedRelayed: number;
  markersSent: number;
  markersReceived: number;
  acksSent: number;
  acksReceived: number;
  /** Markers ignored (no state, no ack) because their epoch is outside the VNE's marker window. */
  markersOutOfWindow: number;
  /** Markers ignored (no ack) because the VNE already had MAX_RECORDINGS_PER_VNE recordings. */
  markersOverCap: number;
  /** Markers ignored (no ack) whose count is impossible: more missing frames than MAX_MARKER_SHORTFALL. */
  markersInvalid: number;
  /** Acks ignored because their epoch is outside the VNE's marker window. */
  acksOutOfWindow: number;
  /** Data frames from a peer stamped further ahead than the marker window (counted at its edge). */
  dataEpochAhead: number;
  oversize: number;
  /** Super-frames that could not be segmented (malformed headers from a TAP or a peer). */
  gsoErrors: number;
}

export function newSwitchCounters(): SwitchCounters {
  return {
    tunnelRx: 0,
    tunnelTx: 0,
    tunnelTxDrops: 0,
    tunnelTxErrors: 0,
    unknownPeer: 0,
    malformed: 0,
    unknownCriticalOption: 0,
    foreign: 0,
    unknownVni: 0,
    peerNotInVne: 0,
    oldGeneration: 0,
    newerGeneration: 0,
    floods: 0,
    tunnelHairpinDrops: 0,
    movedRelayed: 0,
    markersSent: 0,
    markersReceived: 0,
    acksSent: 0,
    acksReceived: 0,
    markersOutOfWindow: 0,
    markersOverCap: 0,
    markersInvalid: 0,
    acksOutOfWindow: 0,
    dataEpochAhead: 0,
    oversize: 0,
    gsoErrors: 0,
  };
}

/** Counters of one attached port. */
export interface PortCounters {
  rxFrames: number;
  txFrames: number;
  txDrops: number;
  held: number;
  holdDrops: number;
  recorded: number;
  runts: number;
  injected: number;
  lateInFlight: number;
  /** Frames the restore gate dropped because its byte bound was reached. */
  gateDrops: number;
  /** TCP super-frames (virtio_net_hdr with GSO) read from the port; each also counts in rxFrames. */
  superFramesIn: number;
  /** TCP super-frames the port accepted whole (delivered or injected); each also counts as one frame. */
  superFramesOut: number;
}

export function newPortCounters(): PortCounters {
  return { rxFrames: 0, txFrames: 0, txDrops: 0, held: 0, holdDrops: 0, recorded: 0, runts: 0, injected: 0, lateInFlight: 0, gateDrops: 0, superFramesIn: 0, superFramesOut: 0 };
}

export interface PortStats extends PortCounters {
  /** Frames the kernel refused one by one when written to the port (Port.txRefused); each is one of txDrops. */
  txRefused: number;
  vne: string;
  epoch: number;
  heldBytes: number;
  /** Bytes behind the restore gate (0 when the port is not gated). */
  gateBytes: number;
  /** True while the restore gate holds the port's deliveries. */
  gated: boolean;
}

export interface VneStats {
  vni: number;
  /** Highest epoch every local port of the VNE has passed. */
  epoch: number;
  generation: number;
  /** A generation change waiting for the ports of the old generation to detach. */
  pendingGeneration?: number;
  fdbSize: number;
  fdb: FdbCounters;
  ports: number;
  peers: string[];
}

export interface PeerStats {
  address: string;
  port: number;
  vnes: string[];
}

export interface SwitchStats extends SwitchCounters {
  ports: Record<string, PortStats>;
  vnes: Record<string, VneStats>;
  peers: Record<string, PeerStats>;
}

/** The daemon's flat rendering: switch-wide counters, `port.<n>.<c>`, `vne.<n>.<c>`, `vne.<n>.fdb.<c>`. */
export function flattenStats(s: SwitchStats): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, val] of Object.entries(s)) if (typeof val === 'number') out[k] = val;
  for (const [name, p] of Object.entries(s.ports)) {
    for (const [k, val] of Object.entries(p)) if (typeof val === 'number') out[`port.${name}.${k}`] = val;
  }
  for (const [name, v] of Object.entries(s.vnes)) {
    out[`vne.${name}.fdbSize`] = v.fdbSize;
    out[`vne.${name}.epoch`] = v.epoch;
    out[`vne.${name}.generation`] = v.generation;
    for (const [k, val] of Object.entries(v.fdb)) out[`vne.${name}.fdb.${k}`] = val;
  }
  return out;
}

/** A fresh typed snapshot of every counter (Switch.stats()). */
export function collectStats(counters: SwitchCounters, ports: Iterable<LocalPort>, vnes: Iterable<Vne>, peers: readonly Peer[]): SwitchStats {
  const s: SwitchStats = { ...counters, ports: {}, vnes: {}, peers: {} };
  for (const lp of ports) {
    s.ports[lp.name] = { ...lp.stats, txRefused: lp.port.txRefused ?? 0, vne: lp.vne.name, epoch: lp.epoch, heldBytes: lp.heldBytes, gateBytes: lp.gate?.bytes ?? 0, gated: lp.gate !== null };
  }
  const vneList = [...vnes];
  for (const v of vneList) {
    s.vnes[v.name] = {
      vni: v.vni,
      epoch: v.cutEpoch,
      generation: v.generation,
      ...(v.pendingGeneration !== undefined ? { pendingGeneration: v.pendingGeneration } : {}),
      fdbSize: v.fdb.size,
      fdb: { ...v.fdb.counters },
      ports: v.ports.length,
      peers: [...v.peers.values()].map((vp) => vp.peer.name),
    };
  }
  for (const p of peers) s.peers[p.name] = { address: intToIpv4(p.ip), port: p.port, vnes: vneList.filter((v) => v.peers.has(p.idx)).map((v) => v.name) };
  return s;
}
