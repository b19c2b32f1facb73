/**
 * A port's epoch in the in-kernel data path follows the switch's cut (switch/snapshot/cut.ts):
 * the kernel colours a port's frames and judges the frames for it by the epoch in vn_ports, so
 * that entry must change exactly when the switch's port epoch does — at the cut, while the VM is
 * paused.
 *
 * Why it exists: the cut gates a port (every frame for it held by the switch) before the VM
 * pauses, drains it, advances its epoch and releases the held frames. The kernel must not carry
 * a frame of that port meanwhile, so the gate turns the port's fast flag off (the kernel punts
 * all of its frames to the switch, whose gate holds them), and the advance writes the new epoch
 * with the flag back on, in one bpf() update, before the VM resumes.
 *
 * Guarantees: only ports registered here (a `nic: 'tap-bpf'` port whose TAP ifindex is known)
 * are touched; gate → fast off; advanced(k) → epoch k and the registered fast flag, and the
 * epoch noted in the KernelCounts given (so the markers sum it); cancel → the old entry's flag
 * back. A port the kernel no longer knows (its entry gone) is skipped, never an error in the cut.
 */
import type { KernelCounts } from './kernel-counts';
import type { DataPathMaps } from './maps';

/** What the cut tells the data path (Cuts' dataPath hook), by port name. */
export interface CutObserver {
  gated(port: string): void;
  advanced(port: string, epoch: number): void;
  cancelled(port: string): void;
}

export class DataPathEpochs implements CutObserver {
  private readonly ports = new Map<string, { tapIfindex: number; fast: boolean }>();

  constructor(
    private readonly maps: Pick<DataPathMaps, 'port' | 'setPort'>,
    private readonly counts?: Pick<KernelCounts, 'noteEpoch'>,
  ) {}

  /** Follow `port`'s cuts on the data path entry of `tapIfindex`; `fast`: the flag outside a cut. */
  register(port: string, tapIfindex: number, fast: boolean): void {
    this.ports.set(port, { tapIfindex, fast });
  }

  unregister(port: string): void {
    this.ports.delete(port);
  }

  gated(port: string): void {
    this.write(port, (p) => ({ ...p, fast: false }));
  }

  advanced(port: string, epoch: number): void {
    const r = this.ports.get(port);
    this.write(port, (p) => {
      this.counts?.noteEpoch(epoch, p.vni);
      return { ...p, epoch, fast: r?.fast ?? false };
    });
  }

  cancelled(port: string): void {
    const r = this.ports.get(port);
    this.write(port, (p) => ({ ...p, fast: r?.fast ?? false }));
  }

  private write(port: string, f: (p: NonNullable<ReturnType<DataPathMaps['port']>>) => Parameters<DataPathMaps['setPort']>[1]): void {
    const r = this.ports.get(port);
    if (!r) return;
    const p = this.maps.port(r.tapIfindex);
    if (p) this.maps.setPort(r.tapIfindex, f(p));
  }
}
