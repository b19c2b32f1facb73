/**
 * The peer switches this switch tunnels to: name → underlay address (IPv4, UDP port), looked up
 * by name on configuration and by address for every received datagram. A peer keeps its index
 * (its FDB owner number and its key in every VNE) for the switch's life; moving it to a new
 * address replaces its record in place, so its VNE counters survive the move.
 */
import { VnsnapError } from '../proto/core/errors';
import type { Peer } from './tables';
import { intToIpv4, ipv4ToInt } from './tunnel/transport';

export interface PeerConfig {
  name: string;
  address: string;
  port: number;
  /**
   * The peer's in-kernel data path port (its VXLAN device; 0: it runs none), as the coordinator
   * tells it; absent: not told (a switch configured directly). bpf-dp/wiring.ts hands the
   * kernel a peer's frames only when this is absent or equals this host's own port.
   */
  dataPathPort?: number;
}

/** What upsertPeer did: `from` is the old "address:port" of a moved peer. */
export interface PeerChange {
  change: 'added' | 'moved' | 'unchanged';
  from?: string;
}

const dataPathPortOf = (p: number | undefined): { dataPathPort?: number } => (p === undefined ? {} : { dataPathPort: p });

export class PeerTable {
  readonly byName = new Map<string, Peer>();
  readonly byAddr = new Map<number, Peer>();
  readonly byIdx: Peer[] = [];

  get(name: string): Peer {
    const peer = this.byName.get(name);
    if (!peer) throw new VnsnapError('ERR_PEER_UNKNOWN', `unknown peer switch "${name}"`);
    return peer;
  }

  add(cfg: PeerConfig): Peer {
    if (this.byName.has(cfg.name)) throw new VnsnapError('ERR_ALREADY_EXISTS', `peer ${cfg.name} already exists`);
    const key = this.freeKey(cfg.name, cfg.address, cfg.port, undefined);
    const peer: Peer = { idx: this.byIdx.length, name: cfg.name, ip: Math.floor(key / 65536), port: cfg.port, ...dataPathPortOf(cfg.dataPathPort) };
    this.byIdx.push(peer);
    this.byName.set(peer.name, peer);
    this.byAddr.set(key, peer);
    return peer;
  }

  /** Move a peer to a new address (or data path port); returns its new record (the caller re-points VNE records). */
  move(name: string, address: string, port: number, dataPathPort?: number): Peer {
    const peer = this.get(name);
    const key = this.freeKey(name, address, port, peer);
    this.byAddr.delete(peer.ip * 65536 + peer.port);
    const moved: Peer = { idx: peer.idx, name: peer.name, ip: Math.floor(key / 65536), port, ...dataPathPortOf(dataPathPort) };
    this.byIdx[peer.idx] = moved;
    this.byName.set(name, moved);
    this.byAddr.set(key, moved);
    return moved;
  }

  static address(p: Peer): string {
    return `${intToIpv4(p.ip)}:${p.port}`;
  }

  /** Validate an address and return its key; it must not belong to another peer. */
  private freeKey(name: string, address: string, port: number, self: Peer | undefined): number {
    let ip: number;
    try {
      ip = ipv4ToInt(address);
    } catch (e) {
      throw new VnsnapError('ERR_INVALID_ARGUMENT', `peer ${name}: ${(e as Error).message}`);
    }
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new VnsnapError('ERR_INVALID_ARGUMENT', `peer ${name}: bad UDP port ${port}`);
    const key = ip * 65536 + port;
    const other = this.byAddr.get(key);
    if (other && other !== self) throw new VnsnapError('ERR_ALREADY_EXISTS', `peer ${name}: address ${address}:${port} is already peer ${other.name}`);
    return key;
  }
}
