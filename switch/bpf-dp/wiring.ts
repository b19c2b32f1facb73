/**
 * The in-kernel data path wired into a running switch: the one object the switch is given
 * (Switch.useDataPath) when its agent's data path is loaded, joining the parts of this folder —
 * the FDB mirror, the epochs at the cut, the kernel's counts in the markers, the punt reader.
 *
 *   attach of a DataPathPort  → vn_ports entry (its VNI, epoch and VNE generation, fast off), registered with
 *                               the cut (DataPathEpochs), its epoch noted for the markers
 *   sync (every FDB change the switch makes: configuration, learning, aging, a port's arrival)
 *                             → vn_fdb = the VNE's FDB, owners resolved (local port → its TAP's
 *                               ifindex, peer → its underlay address), then the fast flag on for
 *                               every data path port that may have it
 *   sync also                 → vn_peers = the VNE's peers' addresses (vn_rx carries frames only
 *                               from those; the tunnel's check, docs/security.md)
 *   detach                    → fast off, unregistered, its MACs leave vn_fdb with the FDB's
 *   a new VNE generation      → every port's entry of that VNE takes it (the kernel refuses
 *                               frames of another generation, modulo 4), the old counts go
 *   a VNE configured          → its VNI's VXLAN device made (or adopted) by the kernel tunnel
 *                               (kernel-tunnel.ts), so peers' vn_tx can send to it
 *   a VNE removed (deleted)   → its VNI's device removed (vn_vxdevs' entry first)
 *   tick                      → the kernel's counts of settled epochs folded (forgetSettled)
 *   leave (the agent stops, its VMs run on) → nothing written any more: the kernel keeps
 *                               carrying them as it does after the agent is killed, until the
 *                               next agent adopts them (docs/agent-restart.md)
 *
 * When a port may be fast: attached, not being cut (the cut's gate turned the flag off and its
 * advance turns it back: epoch-sync.ts), and not behind a restore gate (the kernel would carry
 * frames past the gate straight to a VM whose channel state is not injected yet). Until then
 * the kernel punts all of the port's frames to the switch, which applies its own rules: the
 * fast path is only ever an optimisation of a path the switch already takes.
 *
 * Which peers the kernel may send to: every host of a network that enables the fast path runs
 * the data path on the same VXLAN UDP port (agent config `dataPath.vxlanPort`), since vn_tx's
 * VXLAN device sends to its own port. A peer on one of this host's own addresses (two agents in
 * one network namespace, as in tests, each with its own VXLAN port) is never resolved: the
 * kernel would send to our own device. Its frames go through the switches' Geneve, as do those
 * of any owner that does not resolve. Nor is a peer whose data path port the coordinator told
 * (PeerConfig.dataPathPort, from the peer's registration) and which is not this host's
 * (`vxlanPort`): a peer without the data path (0), or on another port, would not receive what
 * vn_tx sends; so a network may mix agents with and without `dataPath`, the kernel carrying only
 * between those on the same port. A peer configured without a port (a switch configured
 * directly, not through an agent) is trusted.
 *
 * Guarantees: the switch's FDB stays the one source; vn_fdb follows it at the end of every
 * batch in which it changed (a cheap stamp of its size and change counters, plus the switch's
 * explicit calls for static routes); no port's fast flag is on before its FDB entries are
 * written; a failing bpf() call is counted (syncErrors) and never an exception into the
 * forwarding path or attachPort: in sync it leaves the flag off for the ports of that VNE, at
 * attach it leaves the port off the data path (the kernel punts all of its frames).
 */
import type { Forwarding } from '../bridge/forwarding';
import type { Port } from '../port/port';
import type { LocalPort, Vne } from '../tables';
import { DataPathEpochs } from './epoch-sync';
import { enableFastPath, FdbMirror } from './fdb-mirror';
import type { KernelTunnel } from './kernel-tunnel';
import { KernelCounts } from './kernel-counts';
import { numToIpv4, type DpDest } from './layout';
import type { DataPathMaps } from './maps';
import { dataPathOf, type DataPathPortInfo } from './port';
import { newPuntCounters, onPuntBatch, type PuntCounters } from './punt-rx';

export interface DataPathWiringOptions {
  /** Is this host-order IPv4 one of this host's own addresses (module comment)? */
  isLocalAddress(ip: number): boolean;
  /** The punt device's port (vr<hash>, read with offloads); undefined: nothing read. */
  punt?: Port;
  /** This host's data path UDP port: a peer told with another port is never resolved (module comment); undefined: not checked. */
  vxlanPort?: number;
  /**
   * The per-VNI VXLAN devices and their FDB (kernel-tunnel.ts): remote MACs reach vn_fdb only
   * after the device's FDB has them (fdb-mirror.ts). Undefined: vn_fdb written alone (the unit
   * tests, whose vn_tx runs under BPF_PROG_TEST_RUN).
   */
  tunnel?: KernelTunnel;
}

export interface DataPathWiringStats {
  ports: number;
  fastPorts: number;
  syncs: number;
  fdbSet: number;
  fdbRemoved: number;
  syncErrors: number;
  /** Kernel tunnel operations that failed (a VNI's device, a kernel FDB entry): those MACs stay punted. */
  kernelErrors: number;
  punt: PuntCounters;
}

interface Entry {
  lp: LocalPort;
  info: DataPathPortInfo;
  fast: boolean;
}

export class DataPathWiring {
  readonly epochs: DataPathEpochs;
  readonly counts: KernelCounts;
  readonly punt: Port | undefined;
  private readonly mirror: FdbMirror;
  private readonly ports = new Map<string, Entry>();
  private readonly stamps = new Map<Vne, string>();
  private readonly vnis = new Set<number>();
  /** What vn_peers holds per VNI (host-order IPv4s), as this wiring wrote it. */
  private readonly peersWritten = new Map<number, Set<number>>();
  private tunnelErrors = 0;
  private left = false;
  private readonly s: Omit<DataPathWiringStats, 'ports' | 'fastPorts' | 'kernelErrors'> = { syncs: 0, fdbSet: 0, fdbRemoved: 0, syncErrors: 0, punt: newPuntCounters() };

  constructor(
    readonly maps: DataPathMaps,
    private readonly opts: DataPathWiringOptions,
  ) {
    this.counts = new KernelCounts(maps);
    this.epochs = new DataPathEpochs(maps, this.counts);
    this.mirror = new FdbMirror(maps, opts.tunnel);
    this.punt = opts.punt;
  }

  /**
   * The switch's VNEs: each VNI's VXLAN device made (or adopted) once, in the tunnel's order,
   * so it is there before any of its FDB entries (module comment). Kept when the agent leaves.
   */
  vnesConfigured(vnis: Iterable<number>): void {
    if (!this.opts.tunnel || this.left) return;
    for (const vni of vnis) {
      if (this.vnis.has(vni)) continue;
      this.vnis.add(vni);
      this.opts.tunnel.addVni(vni).catch(() => {
        this.tunnelErrors++;
        this.vnis.delete(vni);
      });
    }
  }

  /**
   * A VNE was removed from the switch, or was never configured here but its VNI's device may be
   * left by an earlier agent (no port of it here: vn_fdb and vn_peers hold nothing of it once the
   * mirror's entries are dropped): its VNI's device goes, vn_vxdevs' entry first (quiet when
   * there is none). Not after leave(): the agent is stopping.
   */
  vneRemoved(vni: number): void {
    if (this.left) return;
    this.guard(() => this.mirror.drop(vni));
    this.guard(() => this.syncPeers(vni, new Set()));
    this.peersWritten.delete(vni);
    this.vnis.delete(vni);
    this.opts.tunnel?.removeVni(vni).catch(() => void this.tunnelErrors++);
  }

  /** Every kernel tunnel operation asked so far is done (or failed). */
  settled(): Promise<void> {
    return this.opts.tunnel ? this.opts.tunnel.idle() : Promise.resolve();
  }

  /** A port joined the switch: on the data path when it is a DataPathPort (fast off until sync). */
  attached(lp: LocalPort): boolean {
    const info = dataPathOf(lp.port);
    if (info === undefined || this.left) return false;
    // A port whose entry cannot be written stays off the data path: its TAP's entry (fast off,
    // written when the TAP was opened) makes the kernel punt all of its frames to this switch.
    if (!this.guard(() => this.maps.setPort(info.tapIfindex, { vni: lp.vne.vni, epoch: lp.epoch, puntIfindex: info.puntIfindex, fast: false, generation: lp.vne.generation }))) return false;
    this.counts.noteEpoch(lp.epoch, lp.vne.vni);
    this.epochs.register(lp.name, info.tapIfindex, false);
    this.ports.set(lp.name, { lp, info, fast: false });
    this.stamps.delete(lp.vne);
    return true;
  }

  /**
   * v moved to another generation: its ports' entries take the new one (from now on the kernel
   * sends their frames with it and carries to them only frames that came with it; a frame of the
   * old generation still in flight is punted, and the punt reader drops it), and the kernel's
   * counts of the old one go (KernelCounts.restart).
   */
  generationApplied(v: Vne): void {
    if (this.left) return;
    for (const e of this.ports.values()) {
      if (e.lp.vne !== v) continue;
      this.guard(() => {
        const p = this.maps.port(e.info.tapIfindex);
        if (p) this.maps.setPort(e.info.tapIfindex, { ...p, generation: v.generation });
      });
    }
    const peers = [...v.peers.values()].map((vp) => vp.peer.ip);
    const epochs = v.ports.filter((lp) => this.ports.has(lp.name)).map((lp) => lp.epoch);
    this.guard(() => this.counts.restart(v.vni, peers, epochs));
  }

  /**
   * The agent stops and the VMs of these ports run on (they outlive the agent): from now on this
   * wiring writes no map. Every port is forgotten without touching its entry (fast flag and
   * epoch as they are; the cut no longer writes it), and vn_fdb keeps the VNEs' entries, so
   * the ports' later removal from the switch (their FDB entries flushed there) reaches the
   * kernel no more: it goes on carrying the VMs' frames, exactly as after a SIGKILL, until the
   * next agent adopts them. Only an explicit detach (a VM stopped, a VNE removed) before this
   * takes a port off the data path. Idempotent; the punt reader stays until close().
   */
  leave(): void {
    this.left = true;
    for (const name of this.ports.keys()) this.epochs.unregister(name);
    this.ports.clear();
    this.stamps.clear();
  }

  /** A port left the switch (its FDB entries already flushed): fast off, forgotten, its VNE re-mirrored. */
  detached(lp: LocalPort, portsById: readonly (LocalPort | undefined)[]): void {
    const e = this.ports.get(lp.name);
    if (!e || e.lp !== lp) return;
    this.ports.delete(lp.name);
    this.epochs.unregister(lp.name);
    this.guard(() => {
      const p = this.maps.port(e.info.tapIfindex);
      if (p) this.maps.setPort(e.info.tapIfindex, { ...p, fast: false });
    });
    if (![...this.ports.values()].some((o) => o.lp.vne === lp.vne)) {
      this.guard(() => this.mirror.drop(lp.vne.vni));
      this.guard(() => this.syncPeers(lp.vne.vni, new Set()));
      this.stamps.delete(lp.vne);
    } else this.sync(lp.vne, portsById, true);
  }

  /**
   * Bring vn_fdb to v's FDB when it changed since the last sync (or always, `force`), then turn
   * on the fast flag of v's data path ports that may have it (module comment).
   */
  sync(v: Vne, portsById: readonly (LocalPort | undefined)[], force = false): void {
    const mine = [...this.ports.values()].filter((e) => e.lp.vne === v);
    if (mine.length === 0) return;
    this.guard(() => this.syncPeers(v.vni, new Set([...v.peers.values()].map((vp) => vp.peer.ip))));
    const c = v.fdb.counters;
    const stamp = `${v.fdb.size}/${c.learned}/${c.moved}/${c.aged}/${c.evicted}`;
    if (force || this.stamps.get(v) !== stamp) {
      const ok = this.guard(() => {
        const r = this.mirror.sync(v.vni, v.fdb, (o) => this.resolve(v, o, portsById));
        this.s.fdbSet += r.set;
        this.s.fdbRemoved += r.removed;
      });
      this.s.syncs++;
      if (!ok) {
        this.stamps.delete(v);
        return;
      }
      this.stamps.set(v, stamp);
    }
    for (const e of mine) {
      if (e.fast || e.lp.cutting || e.lp.gated || e.lp.gate !== null) continue;
      if (!this.guard(() => enableFastPath(this.maps, e.info.tapIfindex, { vni: v.vni, epoch: e.lp.epoch, puntIfindex: e.info.puntIfindex, generation: v.generation }))) continue;
      e.fast = true;
      this.epochs.register(e.lp.name, e.info.tapIfindex, true);
    }
  }

  /** Every VNE with data path ports, re-mirrored when its FDB changed (the end of a batch, the tick). */
  syncAll(portsById: readonly (LocalPort | undefined)[], force = false): void {
    for (const v of new Set([...this.ports.values()].map((e) => e.lp.vne))) this.sync(v, portsById, force);
  }

  /**
   * Fold the kernel's counts of the epochs no marker will ask for again into KernelCounts' base
   * (forgetBelow), so vn_counts and a marker's lookups stay bounded however many snapshots were
   * taken: below the lowest epoch of a VNE's local ports (the kernel counts only into a port's
   * current epoch) and below the lowest epoch of the recordings it still keeps (a kept recording
   * may still send its markers or check a peer's against the counts below it). Run on the
   * switch's tick; peers that left the VNE are folded too (their counts are kept if they return).
   */
  forgetSettled(): void {
    for (const v of new Set([...this.ports.values()].map((e) => e.lp.vne))) {
      let k = Infinity;
      for (const lp of v.ports) k = Math.min(k, lp.epoch);
      for (const rk of v.recordings.keys()) k = Math.min(k, rk);
      if (!Number.isFinite(k)) continue;
      const peers = [...v.peers.values(), ...v.departedPeers.values()].map((vp) => vp.peer.ip);
      this.guard(() => this.counts.forgetBelow(v.vni, k, peers));
    }
  }

  /** A batch read from the punt device (punt-rx.ts). */
  onPunt(count: number, vnesByVni: ReadonlyMap<number, Vne>, fwd: Forwarding): void {
    if (this.punt) onPuntBatch(this.punt.rx, count, vnesByVni, fwd, this.s.punt);
  }

  /** Is `port` carried by the kernel now (its fast flag on)? */
  isFast(port: string): boolean {
    return this.ports.get(port)?.fast === true && this.ports.get(port)?.lp.gated === false;
  }

  stats(): DataPathWiringStats {
    return { ...this.s, kernelErrors: this.tunnelErrors + this.mirror.kernelErrors, punt: { ...this.s.punt }, ports: this.ports.size, fastPorts: [...this.ports.values()].filter((e) => e.fast).length };
  }

  close(): void {
    this.punt?.close();
  }

  /** Bring vn_peers' entries of `vni` to `want`, writing only what changed. */
  private syncPeers(vni: number, want: ReadonlySet<number>): void {
    let had = this.peersWritten.get(vni);
    if (!had) this.peersWritten.set(vni, (had = new Set()));
    for (const ip of [...had]) {
      if (want.has(ip)) continue;
      this.maps.removePeer(vni, numToIpv4(ip));
      had.delete(ip);
    }
    for (const ip of want) {
      if (had.has(ip)) continue;
      this.maps.setPeer(vni, numToIpv4(ip));
      had.add(ip);
    }
  }

  private resolve(v: Vne, owner: number, portsById: readonly (LocalPort | undefined)[]): DpDest | undefined {
    if (owner >= 0) {
      const lp = portsById[owner];
      const e = lp && this.ports.get(lp.name);
      return e && e.lp === lp ? { ifindex: e.info.tapIfindex } : undefined;
    }
    const vp = v.peers.get(-owner - 1);
    if (!vp || this.opts.isLocalAddress(vp.peer.ip)) return undefined;
    const told = vp.peer.dataPathPort;
    if (told !== undefined && this.opts.vxlanPort !== undefined && told !== this.opts.vxlanPort) return undefined;
    return { peer: numToIpv4(vp.peer.ip) };
  }

  private guard(f: () => unknown): boolean {
    try {
      f();
      return true;
    } catch {
      this.s.syncErrors++;
      return false;
    }
  }
}
