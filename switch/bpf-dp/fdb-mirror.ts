/**
 * The switch's FDB mirrored into the in-kernel data path's vn_fdb (switch/bpf/vnsnap-dp.bpf.c),
 * and a port's fast path turned on: the control-plane half of "the switch fills the maps".
 *
 * Why it exists: vn_tx and vn_rx decide from vn_fdb alone — a local MAC must name its port's TAP
 * ifindex, a remote MAC the peer host's underlay address — while the switch learns, moves and
 * ages MACs in its own Fdb (switch/bridge/fdb.ts) by owner numbers only it can resolve. The
 * mirror is the one place that turns one into the other, off the per-frame path (the caller
 * runs sync when a VNE's table changed or on its aging tick).
 *
 * Guarantees: after sync(vni, ...), vn_fdb's entries of that VNI written by this mirror are
 * exactly the source's entries whose owner resolves (an owner that does not resolve — a port
 * not on the data path — is left out, so the kernel punts its frames to the switch); only
 * changes cost a bpf() call (new or moved MACs are written, vanished ones deleted), and the
 * counts of both are returned. drop(vni) deletes what the mirror wrote for a VNE.
 *
 * With the kernel's tunnel (kernel-tunnel.ts) a remote MAC is written into the VNI device's FDB
 * first and into vn_fdb only once the kernel has it (and only if the MAC still goes to that
 * peer then); a MAC that moves is taken out of vn_fdb before the kernel's entry changes, and a
 * vanished one out of vn_fdb before the kernel's entry goes. So whatever vn_fdb sends to a peer
 * the device sends there too: nothing vn_tx counts as sent is dropped or sent elsewhere by the
 * device (between the two writes the MAC's frames are punted to the switch). A failed kernel
 * write leaves the MAC out of vn_fdb (counted in kernelErrors). enableFastPath
 * writes a port's entry with its fast flag on and must come after the port's FDB entries (the
 * kernel carries a port's frames from that call on).
 */
import { formatMac } from '../bridge/mac';
import type { KernelTunnel } from './kernel-tunnel';
import type { DataPathMaps } from './maps';
import type { DpDest, DpPort } from './layout';

export interface FdbSource {
  entries(): Iterable<{ readonly mac: number; readonly owner: number }>;
}

/** An FDB owner's place on the data path, or undefined when it has none. */
export type ResolveOwner = (owner: number) => DpDest | undefined;

const key = (d: DpDest): string => ('ifindex' in d ? `i${d.ifindex}` : `p${d.peer}`);

export class FdbMirror {
  /** What this mirror wrote: VNI → MAC → destination key. */
  private readonly written = new Map<number, Map<number, string>>();
  /** Kernel FDB writes that failed (their MACs stay out of vn_fdb). */
  kernelErrors = 0;

  constructor(
    private readonly maps: Pick<DataPathMaps, 'setFdb' | 'removeFdb'>,
    private readonly kernel?: KernelTunnel,
  ) {}

  /** Is the entry `k` (a destination key) of `vni`/`mac` still what the mirror wants? */
  private wants(vni: number, mac: number, k: string): boolean {
    return this.written.get(vni)?.get(mac) === k;
  }

  private remove(vni: number, mac: number, was: string): void {
    this.maps.removeFdb(vni, formatMac(mac));
    if (this.kernel && was.startsWith('p')) this.kernel.removeFdb(vni, formatMac(mac)).catch(() => void this.kernelErrors++);
  }

  private set(vni: number, mac: number, d: DpDest, was: string | undefined): void {
    if (!this.kernel || !('peer' in d)) {
      this.maps.setFdb(vni, formatMac(mac), d);
      if (this.kernel && was?.startsWith('p') === true) this.kernel.removeFdb(vni, formatMac(mac)).catch(() => void this.kernelErrors++);
      return;
    }
    // a remote MAC: out of vn_fdb until the device's FDB sends it to this peer (module comment)
    if (was !== undefined) this.maps.removeFdb(vni, formatMac(mac));
    const k = key(d);
    this.kernel.setFdb(vni, formatMac(mac), d.peer).then(
      () => {
        if (!this.wants(vni, mac, k)) return;
        try {
          this.maps.setFdb(vni, formatMac(mac), d);
        } catch {
          this.kernelErrors++;
        }
      },
      () => void this.kernelErrors++,
    );
  }

  /** Every kernel write asked so far has been made (or failed): for tests and the switch's settled checks. */
  settled(): Promise<void> {
    return this.kernel ? this.kernel.idle() : Promise.resolve();
  }

  /** Bring vn_fdb's entries of `vni` to `fdb`'s, each owner resolved by `resolve` (module comment). */
  sync(vni: number, fdb: FdbSource, resolve: ResolveOwner): { set: number; removed: number } {
    let mine = this.written.get(vni);
    if (!mine) this.written.set(vni, (mine = new Map()));
    const want = new Map<number, DpDest>();
    for (const e of fdb.entries()) {
      const d = resolve(e.owner);
      if (d) want.set(e.mac, d);
    }
    let set = 0;
    let removed = 0;
    for (const [mac, was] of [...mine]) {
      if (want.has(mac)) continue;
      this.remove(vni, mac, was);
      mine.delete(mac);
      removed++;
    }
    for (const [mac, d] of want) {
      const was = mine.get(mac);
      if (was === key(d)) continue;
      this.set(vni, mac, d, was);
      mine.set(mac, key(d));
      set++;
    }
    return { set, removed };
  }

  /** Delete every entry this mirror wrote for `vni`; returns how many. */
  drop(vni: number): number {
    const mine = this.written.get(vni);
    if (!mine) return 0;
    this.written.delete(vni);
    for (const [mac, was] of mine) this.remove(vni, mac, was);
    return mine.size;
  }
}

/** Turn a port's fast path on: the kernel carries its frames from this call on (module comment). */
export function enableFastPath(maps: Pick<DataPathMaps, 'setPort'>, tapIfindex: number, p: Omit<DpPort, 'fast'>): void {
  maps.setPort(tapIfindex, { ...p, fast: true });
}
