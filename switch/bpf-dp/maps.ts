/**
 * The switch's handle on its in-kernel data path's maps (pinned by agent/bpf-dp/loader.ts under
 * /sys/fs/bpf/<prefix>/maps/): the control plane of switch/bpf/vnsnap-dp.bpf.c.
 *
 * Why it exists: the kernel decides per frame from these maps (FDB, ports and their epochs, the
 * VXLAN and punt devices); the switch writes them when it learns, when a port joins or leaves,
 * and at a port's cut (setEpoch: one bpf() call, made while the VM is paused), and reads the
 * per-(VNI, peer, epoch) counters of what the kernel carried when it sends or checks markers.
 *
 * Guarantees: every call is one bpf(2) syscall through the addon (no per-packet JS); a missing
 * element is undefined/false, never an error; a failing syscall throws ERR_NATIVE_IO; close()
 * closes every fd once.
 */
import * as path from 'node:path';
import { VnsnapError } from '../../proto/core/errors';
import { nativeIo, type NativeIo } from '../native-io';
import { decodeCfg, decodeFdbValue, decodePort, DIR_RECEIVED, DIR_SENT, encodeCfg, encodeCountKey, encodeFdbKey, encodeFdbValue, encodePeerKey, encodePort, STAT_NAMES, u32Key, type DataPathStats, type DpDest, type DpPort } from './layout';

export type CountDir = 'sent' | 'received';
const countKey = (vni: number, peer: string, epoch: number, dir: CountDir): Buffer => encodeCountKey(vni, peer, epoch, dir === 'sent' ? DIR_SENT : DIR_RECEIVED);

const MAPS = ['vn_cfg', 'vn_ports', 'vn_fdb', 'vn_counts', 'vn_stats', 'vn_vxdevs', 'vn_peers'] as const;
type MapName = (typeof MAPS)[number];

export class DataPathMaps {
  private readonly io: NativeIo = nativeIo();
  private readonly fds = new Map<MapName, number>();

  /** Open the maps pinned in `dir` (the loader's `maps` directory). */
  constructor(readonly dir: string) {
    try {
      for (const m of MAPS) this.fds.set(m, this.io.bpfObjGet(path.join(dir, m)));
    } catch (e) {
      this.close();
      throw new VnsnapError('ERR_FAILED_PRECONDITION', `in-kernel data path: cannot open its maps in ${dir}: ${(e as Error).message}`, { cause: e });
    }
  }

  private fd(m: MapName): number {
    const fd = this.fds.get(m);
    if (fd === undefined) throw new VnsnapError('ERR_STATE', `in-kernel data path maps in ${this.dir}: closed`);
    return fd;
  }

  /**
   * The devices: the VXLAN device frames to peers go to (only the bench's VN_FIXED_TUNNEL build
   * reads it; the product's vn_tx sends through the VNI's device, setVniDevice), the one punted
   * frames from peers go to.
   */
  setDevices(vxlanIfindex: number, puntIfindex: number): void {
    this.io.bpfMapUpdate(this.fd('vn_cfg'), u32Key(0), encodeCfg(vxlanIfindex, puntIfindex), 0);
  }

  /** The devices as set (zeros before setDevices). */
  devices(): { vxlanIfindex: number; puntIfindex: number } {
    const v = Buffer.alloc(8);
    this.io.bpfMapLookup(this.fd('vn_cfg'), u32Key(0), v);
    return decodeCfg(v);
  }

  /** VNI `vni`'s VXLAN device (agent/bpf-dp/rx-side.ts): vn_tx sends the VNI's frames to peers through it. */
  setVniDevice(vni: number, ifindex: number): void {
    this.io.bpfMapUpdate(this.fd('vn_vxdevs'), u32Key(vni), u32Key(ifindex), 0);
  }

  /** The VNI's VXLAN device's ifindex, or undefined when it has none (vn_tx punts its frames to peers). */
  vniDevice(vni: number): number | undefined {
    const v = Buffer.alloc(4);
    return this.io.bpfMapLookup(this.fd('vn_vxdevs'), u32Key(vni), v) ? v.readUInt32LE(0) : undefined;
  }

  removeVniDevice(vni: number): boolean {
    return this.io.bpfMapDelete(this.fd('vn_vxdevs'), u32Key(vni));
  }

  /** `peer` is a peer host of VNI `vni`'s VNE: vn_rx carries its frames (others it punts). */
  setPeer(vni: number, peer: string): void {
    this.io.bpfMapUpdate(this.fd('vn_peers'), encodePeerKey(vni, peer), u32Key(1), 0);
  }

  hasPeer(vni: number, peer: string): boolean {
    return this.io.bpfMapLookup(this.fd('vn_peers'), encodePeerKey(vni, peer), Buffer.alloc(4));
  }

  removePeer(vni: number, peer: string): boolean {
    return this.io.bpfMapDelete(this.fd('vn_peers'), encodePeerKey(vni, peer));
  }

  setPort(tapIfindex: number, port: DpPort): void {
    this.io.bpfMapUpdate(this.fd('vn_ports'), u32Key(tapIfindex), encodePort(port), 0);
  }

  port(tapIfindex: number): DpPort | undefined {
    const v = Buffer.alloc(16);
    return this.io.bpfMapLookup(this.fd('vn_ports'), u32Key(tapIfindex), v) ? decodePort(v) : undefined;
  }

  /** The port's epoch at its cut (the port must be known). */
  setEpoch(tapIfindex: number, epoch: number): void {
    const p = this.port(tapIfindex);
    if (!p) throw new VnsnapError('ERR_PORT_UNKNOWN', `in-kernel data path: no port on ifindex ${tapIfindex}`);
    this.io.bpfMapUpdate(this.fd('vn_ports'), u32Key(tapIfindex), encodePort({ ...p, epoch }), 2);
  }

  removePort(tapIfindex: number): boolean {
    return this.io.bpfMapDelete(this.fd('vn_ports'), u32Key(tapIfindex));
  }

  setFdb(vni: number, mac: string, dest: DpDest): void {
    this.io.bpfMapUpdate(this.fd('vn_fdb'), encodeFdbKey(vni, mac), encodeFdbValue(dest), 0);
  }

  fdb(vni: number, mac: string): DpDest | undefined {
    const v = Buffer.alloc(8);
    return this.io.bpfMapLookup(this.fd('vn_fdb'), encodeFdbKey(vni, mac), v) ? decodeFdbValue(v) : undefined;
  }

  removeFdb(vni: number, mac: string): boolean {
    return this.io.bpfMapDelete(this.fd('vn_fdb'), encodeFdbKey(vni, mac));
  }

  /**
   * Datagrams of VNI `vni` the kernel carried to (sent) or from (received) `peer` while the local
   * port's epoch was `epoch`: super-frames count their segments; 0 when it carried none.
   */
  count(vni: number, peer: string, epoch: number, dir: CountDir): number {
    const v = Buffer.alloc(8);
    return this.io.bpfMapLookup(this.fd('vn_counts'), countKey(vni, peer, epoch, dir), v) ? Number(v.readBigUInt64LE(0)) : 0;
  }

  /** Forget one counter (KernelCounts.forgetBelow, once folded); whether there was one. */
  removeCount(vni: number, peer: string, epoch: number, dir: CountDir): boolean {
    return this.io.bpfMapDelete(this.fd('vn_counts'), countKey(vni, peer, epoch, dir));
  }

  stats(): DataPathStats {
    const v = Buffer.alloc(8);
    const out = {} as DataPathStats;
    STAT_NAMES.forEach((n, i) => {
      out[n] = this.io.bpfMapLookup(this.fd('vn_stats'), u32Key(i), v) ? Number(v.readBigUInt64LE(0)) : 0;
    });
    return out;
  }

  close(): void {
    for (const fd of this.fds.values()) this.io.close(fd);
    this.fds.clear();
  }
}
