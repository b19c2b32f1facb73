/**
 * The VNE configuration this agent applies to its switch: ConfigureVne's VNE (VNI, generation),
 * its peer agents (tunnel addresses) and where each MAC lives (a local VM port or a peer).
 *
 * The switch owns the network state; this table keeps only what the agent itself decides on:
 *  - the VNI and generation of each VNE it configured (a VNI clash is refused; a generation
 *    change while old instances of the VNE still run here is deferred until they are gone —
 *    bumping now would stamp their frames with the new generation and let them reach the
 *    restored VMs; RestorePrepare and StopVm apply it);
 *  - the address of each peer agent, to tell a new peer (added) from one that moved (a peer
 *    agent restarted on another port or host address is re-addressed in place) and to refuse a
 *    MAC routed to an unknown peer. This mirrors the switch's peer table until the switch offers
 *    an idempotent upsertPeer, which replaces it.
 * Every switch call is in a small private method at the bottom.
 */
import { VnsnapError } from '../proto/core/errors';
import type { Logger } from '../proto/core/log';
import type { ConfigureVne__Output } from '../proto/gen/vnsnap/v1/ConfigureVne';
import type { Switch } from '../switch/switch';
import type { VmTable } from './vms';

interface VneRecord {
  vni: number;
  generation: number;
  /** A generation change that waits for the running (old) instances to stop. */
  pendingGeneration?: number;
}

export interface VneTableOptions {
  agentId: string;
  switch: () => Switch;
  vms: VmTable;
  log: Logger;
}

export class VneTable {
  private readonly vnes = new Map<string, VneRecord>();
  /** Peer agent id → "address:port" as given to the switch. */
  private readonly peers = new Map<string, string>();

  constructor(private readonly o: VneTableOptions) {}

  has(vne: string): boolean {
    return this.vnes.has(vne);
  }

  /** Throws ERR_VNE_UNKNOWN unless the VNE was configured here. */
  require(vne: string): void {
    if (!this.vnes.has(vne)) throw new VnsnapError('ERR_VNE_UNKNOWN', `VNE ${vne} is not configured on agent ${this.o.agentId} (ConfigureVne first)`);
  }

  /** The VNE's generation as applied to the switch (0 if unknown). */
  generation(vne: string): number {
    return this.vnes.get(vne)?.generation ?? 0;
  }

  configure(c: ConfigureVne__Output): void {
    if (!c.vne) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'ConfigureVne without a VNE name');
    for (const p of c.peers) if (p.agentId !== this.o.agentId) this.ensurePeer(p.agentId, p.address, p.port);
    const peerIds = c.peers.map((p) => p.agentId).filter((p) => p !== this.o.agentId);
    const v = this.vnes.get(c.vne);
    if (!v) {
      const generation = c.generation || 1;
      this.addVne(c.vne, c.vni, generation, peerIds);
      this.vnes.set(c.vne, { vni: c.vni, generation });
    } else {
      if (v.vni !== c.vni) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE ${c.vne} has VNI ${v.vni} here; ConfigureVne asks for ${c.vni}`);
      if (c.generation && c.generation !== v.generation) {
        const running = this.o.vms.running(c.vne);
        if (running.length > 0) {
          v.pendingGeneration = c.generation;
          this.o.log.info({ vne: c.vne, generation: c.generation, running: running.map((x) => x.name) }, 'generation change deferred until the running instances stop');
        } else this.setGeneration(c.vne, c.generation);
      }
      for (const p of peerIds) this.addVnePeer(c.vne, p);
    }
    for (const r of c.macs) {
      if (r.agentId === this.o.agentId) {
        const local = this.o.vms.portOfMac(c.vne, r.mac);
        if (local) this.routeMac(c.vne, r.mac, { port: local });
      } else {
        if (!this.peers.has(r.agentId)) throw new VnsnapError('ERR_PEER_UNKNOWN', `MAC ${r.mac} routed to agent ${r.agentId}, which is not among the VNE's peers`);
        this.addVnePeer(c.vne, r.agentId);
        this.routeMac(c.vne, r.mac, { peer: r.agentId });
      }
    }
  }

  /** Set the VNE's generation now (clearing a deferred change). */
  setGeneration(vne: string, generation: number): void {
    const v = this.vnes.get(vne);
    if (!v) return;
    delete v.pendingGeneration;
    if (generation === v.generation) return;
    this.o.switch().setGeneration(vne, generation);
    v.generation = generation;
    this.o.log.info({ vne, generation }, 'VNE generation changed');
  }

  /** Apply a deferred generation change once no old instance runs. */
  applyPendingGeneration(vne: string): void {
    const v = this.vnes.get(vne);
    if (v?.pendingGeneration !== undefined && this.o.vms.running(vne).length === 0) this.setGeneration(vne, v.pendingGeneration);
  }

  // ── the switch side ──

  private ensurePeer(agentId: string, address: string, port: number): void {
    const want = `${address}:${port}`;
    const have = this.peers.get(agentId);
    if (have === want) return;
    if (have !== undefined) {
      this.o.switch().setPeerAddress(agentId, address, port);
      this.o.log.info({ peer: agentId, from: have, to: want }, 'peer moved');
    } else {
      this.o.switch().addPeer({ name: agentId, address, port });
    }
    this.peers.set(agentId, want);
  }

  private addVne(name: string, vni: number, generation: number, peers: string[]): void {
    this.o.switch().addVne({ name, vni, generation, peers });
  }

  private addVnePeer(vne: string, peer: string): void {
    this.o.switch().addVnePeer(vne, peer);
  }

  private routeMac(vne: string, mac: string, target: { port: string } | { peer: string }): void {
    this.o.switch().setStaticMac(vne, mac, target);
  }
}
