/**
 * What the in-kernel data path carried to and from each peer below an epoch, for the markers
 * (switch/snapshot/markers.ts): the kernel's per-(peer, epoch, direction) datagram counters
 * (vn_counts, read through DataPathMaps.count) summed over the epochs the data path's ports have
 * had, so a marker's count covers the frames the kernel sent as well as the switch's own.
 *
 * Why a set of epochs: the kernel counts by a port's full epoch and the markers need "every
 * epoch below k"; the epochs are the ones the switch wrote into the ports map (noteEpoch at
 * each setEpoch / setPort), so a marker costs one bpf() lookup per noted epoch below k, not one
 * per integer. Epochs below the oldest recording still wanted can be forgotten (forgetBelow),
 * folded into a running base so the sums stay exact.
 *
 * Guarantees: below(peer, k, dir) equals the sum of count(peer, e, dir) over noted epochs e < k
 * (plus what forgetBelow folded in for that peer and direction); the counters are per peer host,
 * not per VNI — exact only while one VNE per pair of hosts uses the data path, which is why the
 * switch attaches this source only when told to (Markers.kernelCounts, undefined by default).
 */
import { numToIpv4 } from './layout';
import type { DataPathMaps } from './maps';

type Dir = 'sent' | 'received';

export class KernelCounts {
  private readonly epochs = new Set<number>();
  /** Folded counts of forgotten epochs: `${peer}/${dir}` → datagrams, and the epoch bound. */
  private readonly folded = new Map<string, number>();
  private foldedBelow = 0;

  constructor(private readonly maps: Pick<DataPathMaps, 'count'>) {}

  noteEpoch(e: number): void {
    if (e >= this.foldedBelow) this.epochs.add(e);
  }

  /** Datagrams the kernel carried to/from `peerIp` (host-order IPv4, as Peer.ip) in noted epochs below k. */
  below(peerIp: number, k: number, dir: Dir): number {
    const peer = numToIpv4(peerIp);
    let n = k >= this.foldedBelow ? (this.folded.get(`${peer}/${dir}`) ?? 0) : 0;
    for (const e of this.epochs) if (e < k) n += this.maps.count(peer, e, dir);
    return n;
  }

  /** Fold the epochs below k for `peers` into a base (no marker will ask below k again). */
  forgetBelow(k: number, peers: readonly number[]): void {
    for (const ip of peers) {
      for (const dir of ['sent', 'received'] as const) {
        const key = `${numToIpv4(ip)}/${dir}`;
        let n = this.folded.get(key) ?? 0;
        for (const e of this.epochs) if (e < k) n += this.maps.count(numToIpv4(ip), e, dir);
        this.folded.set(key, n);
      }
    }
    for (const e of [...this.epochs]) if (e < k) this.epochs.delete(e);
    this.foldedBelow = Math.max(this.foldedBelow, k);
  }
}
