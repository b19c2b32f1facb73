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
 * counts of both are returned. drop(vni) deletes what the mirror wrote for a VNE. enableFastPath
 * writes a port's entry with its fast flag on and must come after the port's FDB entries (the
 * kernel carries a port's frames from that call on).
 */
import { formatMac } from '../bridge/mac';
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

  constructor(private readonly maps: Pick<DataPathMaps, 'setFdb' | 'removeFdb'>) {}

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
    for (const mac of [...mine.keys()]) {
      if (want.has(mac)) continue;
      this.maps.removeFdb(vni, formatMac(mac));
      mine.delete(mac);
      removed++;
    }
    for (const [mac, d] of want) {
      if (mine.get(mac) === key(d)) continue;
      this.maps.setFdb(vni, formatMac(mac), d);
      mine.set(mac, key(d));
      set++;
    }
    return { set, removed };
  }

  /** Delete every entry this mirror wrote for `vni`; returns how many. */
  drop(vni: number): number {
    const mine = this.written.get(vni);
    if (!mine) return 0;
    for (const mac of mine.keys()) this.maps.removeFdb(vni, formatMac(mac));
    this.written.delete(vni);
    return mine.size;
  }
}

/** Turn a port's fast path on: the kernel carries its frames from this call on (module comment). */
export function enableFastPath(maps: Pick<DataPathMaps, 'setPort'>, tapIfindex: number, p: Omit<DpPort, 'fast'>): void {
  maps.setPort(tapIfindex, { ...p, fast: true });
}
