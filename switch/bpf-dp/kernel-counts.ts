/**
 * What the in-kernel data path carried to and from each peer below an epoch, per VNE, for the
 * markers (switch/snapshot/markers.ts): the kernel's per-(VNI, peer, epoch, direction) datagram
 * counters (vn_counts, read through DataPathMaps.count) summed over the epochs the VNI's data
 * path ports have had, so a marker's count covers the frames the kernel sent as well as the
 * switch's own — and only that VNE's frames, so two VNEs between the same two hosts each get
 * exact counts.
 *
 * Why a set of epochs per VNI: the kernel counts by a port's full epoch and the markers need
 * "every epoch below k"; the epochs are the ones the switch wrote into the ports map (noteEpoch
 * at each setEpoch / setPort, with the port's VNI), so a marker costs one bpf() lookup per noted
 * epoch of its VNI below k, not one per integer. Epochs below the oldest recording still wanted
 * can be forgotten per VNI (forgetBelow): folded into a running base so the sums stay exact, and
 * their counters removed from the map so it does not fill (the kernel stops counting into an
 * epoch once every port of the VNI has passed it, which is when a caller may forget it).
 *
 * Guarantees: below(vni, peer, k, dir) equals the sum of count(vni, peer, e, dir) over the
 * epochs e < k noted for that VNI (plus what forgetBelow folded in for that VNI, peer and
 * direction); no other VNI's counters ever enter it.
 */
import { numToIpv4 } from './layout';
import type { CountDir, DataPathMaps } from './maps';

interface VniCounts {
  epochs: Set<number>;
  /** Folded counts of forgotten epochs: `${peer}/${dir}` → datagrams. */
  folded: Map<string, number>;
  /** The epochs below this were folded. */
  foldedBelow: number;
}

export class KernelCounts {
  private readonly vnis = new Map<number, VniCounts>();

  constructor(private readonly maps: Pick<DataPathMaps, 'count' | 'removeCount'>) {}

  private of(vni: number): VniCounts {
    let v = this.vnis.get(vni);
    if (!v) this.vnis.set(vni, (v = { epochs: new Set(), folded: new Map(), foldedBelow: 0 }));
    return v;
  }

  /** A port of `vni` has (had) epoch `epoch` in the kernel's ports map. */
  noteEpoch(epoch: number, vni: number): void {
    const v = this.of(vni);
    if (epoch >= v.foldedBelow) v.epochs.add(epoch);
  }

  /** Datagrams of `vni` the kernel carried to/from `peerIp` (host-order IPv4, as Peer.ip) in its noted epochs below k. */
  below(vni: number, peerIp: number, k: number, dir: CountDir): number {
    const v = this.vnis.get(vni);
    if (!v) return 0;
    const peer = numToIpv4(peerIp);
    let n = k >= v.foldedBelow ? (v.folded.get(`${peer}/${dir}`) ?? 0) : 0;
    for (const e of v.epochs) if (e < k) n += this.maps.count(vni, peer, e, dir);
    return n;
  }

  /**
   * The VNE of `vni` moved to another generation (a restore): its epochs start over and the
   * switch's own counts were reset, so every counter of the old generation goes from the map
   * (the same epoch numbers will be counted again) and the VNI's notes restart with `epochs`
   * (its ports' epochs now). Without this a marker after a restore in place would add the old
   * generation's datagrams of the same epoch numbers and its recording would wait for frames
   * that never come.
   */
  restart(vni: number, peers: readonly number[], epochs: readonly number[]): void {
    const v = this.vnis.get(vni);
    if (v) {
      for (const ip of peers) {
        const peer = numToIpv4(ip);
        for (const e of v.epochs) for (const dir of ['sent', 'received'] as const) this.maps.removeCount(vni, peer, e, dir);
      }
      this.vnis.delete(vni);
    }
    for (const e of epochs) this.noteEpoch(e, vni);
  }

  /**
   * Fold the epochs of `vni` below k for `peers` into its base and remove their counters from the
   * map: no marker of that VNI will ask below k again and no port of it is below k any more.
   */
  forgetBelow(vni: number, k: number, peers: readonly number[]): void {
    const v = this.of(vni);
    const old = [...v.epochs].filter((e) => e < k);
    if (old.length === 0) {
      v.foldedBelow = Math.max(v.foldedBelow, k);
      return;
    }
    for (const ip of peers) {
      const peer = numToIpv4(ip);
      for (const dir of ['sent', 'received'] as const) {
        const key = `${peer}/${dir}`;
        let n = v.folded.get(key) ?? 0;
        for (const e of old) {
          n += this.maps.count(vni, peer, e, dir);
          this.maps.removeCount(vni, peer, e, dir);
        }
        v.folded.set(key, n);
      }
    }
    for (const e of old) v.epochs.delete(e);
    v.foldedBelow = Math.max(v.foldedBelow, k);
  }
}
