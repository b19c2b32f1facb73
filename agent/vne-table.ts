/**
 * The VNE configuration this agent applies to its switch: ConfigureVne's VNE (VNI, generation),
 * its peer agents (tunnel addresses) and where each MAC lives (a local VM port or a peer).
 *
 * The switch owns all of this state (switch/vnes.ts); this module only translates ConfigureVne
 * into one idempotent configureVne call and keeps no copy:
 *  - each peer agent is upserted first, so a peer that moved (its agent restarted on another
 *    port or host address, re-addressed in place) is logged;
 *  - a MAC of this agent is routed to whichever local port has it, a MAC of a peer to that peer
 *    (a MAC routed to an unknown peer is refused, ERR_PEER_UNKNOWN);
 *  - a VNI clash is refused; a generation change while old instances of the VNE still run here
 *    is deferred by the switch until the last of their ports detaches (bumping now would stamp
 *    their frames with the new generation and let them reach the restored VMs).
 * ForgetVne (a deleted VNE) is the switch's removeVne: refused while ports of it run here.
 */
import { VnsnapError } from '../proto/core/errors';
import type { Logger } from '../proto/core/log';
import type { ConfigureVne__Output } from '../proto/gen/vnsnap/v1/ConfigureVne';
import type { Switch } from '../switch/switch';

export interface VneTableOptions {
  agentId: string;
  switch: () => Switch;
  log: Logger;
}

export class VneTable {
  constructor(private readonly o: VneTableOptions) {}

  /** Is the VNE configured on the switch? (false while the agent is not started) */
  has(vne: string): boolean {
    return this.vneState(vne) !== undefined;
  }

  /** Throws ERR_VNE_UNKNOWN unless the VNE was configured here. */
  require(vne: string): void {
    if (!this.has(vne)) throw new VnsnapError('ERR_VNE_UNKNOWN', `VNE ${vne} is not configured on agent ${this.o.agentId} (ConfigureVne first)`);
  }

  /** The VNE's generation as applied by the switch (0 if unknown). */
  generation(vne: string): number {
    return this.vneState(vne)?.generation ?? 0;
  }

  configure(c: ConfigureVne__Output): void {
    if (!c.vne) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'ConfigureVne without a VNE name');
    const sw = this.o.switch();
    const id = this.o.agentId;
    const peers = c.peers.filter((p) => p.agentId !== id);
    for (const p of peers) {
      // the port as the coordinator told it (0: none, or a coordinator without the field): bpf-dp/wiring.ts
      const r = sw.upsertPeer({ name: p.agentId, address: p.address, port: p.port, dataPathPort: p.dataPathPort });
      if (r.change === 'moved') this.o.log.info({ peer: p.agentId, from: r.from, to: `${p.address}:${p.port}` }, 'peer moved');
    }
    const before = this.generation(c.vne);
    sw.configureVne({
      name: c.vne,
      vni: c.vni,
      ...(c.generation ? { generation: c.generation } : {}),
      peers: peers.map((p) => p.agentId),
      macs: c.macs.map((r) => (r.agentId === id ? { mac: r.mac, local: true as const } : { mac: r.mac, peer: r.agentId })),
    });
    const after = this.vneState(c.vne);
    if (before !== 0 && after && after.generation !== before) this.o.log.info({ vne: c.vne, generation: after.generation }, 'VNE generation changed');
    else if (after?.pendingGeneration !== undefined && c.generation === after.pendingGeneration) {
      this.o.log.info({ vne: c.vne, generation: c.generation }, 'generation change deferred until the running instances stop');
    }
  }

  /**
   * A deleted VNE leaves the switch (refused while its ports are attached), its VNI's device the
   * kernel (also when the switch did not know it: Switch.removeVne); false when it was not
   * configured here. Resolves once the kernel's side is done (or failed: counted in the data
   * path's kernelErrors).
   */
  async forget(vne: string, vni: number): Promise<boolean> {
    if (!vne) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'ForgetVne without a VNE name');
    const sw = this.started();
    if (!sw) return false; // nothing configured
    const forgotten = sw.removeVne(vne, vni || undefined);
    await sw.inKernelDataPath?.settled();
    this.o.log.info({ vne, vni, known: forgotten }, 'VNE forgotten (deleted)');
    return forgotten;
  }

  private vneState(vne: string): { generation: number; pendingGeneration?: number } | undefined {
    return this.started()?.vneGeneration(vne);
  }

  /** The switch, or undefined while the agent is not started. */
  private started(): Switch | undefined {
    try {
      return this.o.switch();
    } catch {
      return undefined;
    }
  }
}
