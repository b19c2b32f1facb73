/**
 * Where each VM's disk is, as the coordinator knows it (catalog table `vm_disks`), and how that
 * is shown (VmStatus disk fields, one line for people).
 *
 * A row is either the running VM's disk (kept_unix_ms 0: host and path from StartVmResult) or a
 * kept disk (a `vne stop` kept it: host, path and bytes from StopVmResult, and when). A VM
 * without a row boots from its spec's image. Rows are written only from what an agent reported
 * and removed when the disk is discarded (or forgotten on an unreachable host); the VNE's rows
 * go with the VNE.
 */
import type Database from 'better-sqlite3';
import type { Vne__Output } from '../proto/gen/vnsnap/v1/Vne';
import type { VmStatus__Output } from '../proto/gen/vnsnap/v1/VmStatus';
import { formatBytes } from './cli/format';

export interface VmDiskRecord {
  vne: string;
  vm: string;
  /** Agent id of the host holding the disk. */
  host: string;
  /** The disk directory on that host. */
  path: string;
  bytes: number;
  /** When a stop kept it; 0 for the running VM's disk. */
  keptUnixMs: number;
}

type Row = Record<string, unknown>;

export class VmDisks {
  constructor(private readonly db: Database.Database) {}

  /** Record (replace) the VM's disk. */
  put(r: VmDiskRecord): void {
    this.db.prepare('INSERT OR REPLACE INTO vm_disks (vne, vm, host, path, bytes, kept_unix_ms) VALUES (?, ?, ?, ?, ?, ?)').run(r.vne, r.vm, r.host, r.path, r.bytes, r.keptUnixMs);
  }

  /** The VNE's disk rows by VM name. */
  of(vne: string): Map<string, VmDiskRecord> {
    const rows = this.db.prepare('SELECT * FROM vm_disks WHERE vne = ? ORDER BY vm').all(vne) as Row[];
    return new Map(rows.map((r) => [String(r.vm), { vne, vm: String(r.vm), host: String(r.host), path: String(r.path), bytes: Number(r.bytes), keptUnixMs: Number(r.kept_unix_ms) }]));
  }

  /** The VNE's kept disks (a stop kept them), by VM name. */
  kept(vne: string): Map<string, VmDiskRecord> {
    return new Map([...this.of(vne)].filter(([, r]) => r.keptUnixMs > 0));
  }

  /** Forget the rows of these VMs (every VM of the VNE when `vms` is undefined). */
  forget(vne: string, vms?: readonly string[]): void {
    if (vms === undefined) this.db.prepare('DELETE FROM vm_disks WHERE vne = ?').run(vne);
    else for (const vm of vms) this.db.prepare('DELETE FROM vm_disks WHERE vne = ? AND vm = ?').run(vne, vm);
  }
}

/** "a on h1: /var/lib/vnsnap/disks/demo_a (12.3 MiB)". */
export function describeKept(r: VmDiskRecord): string {
  return `${r.vm} on ${r.host}: ${r.path} (${formatBytes(r.bytes)})`;
}

/** A VmStatus without its disk fields (what vne-health.ts works out). */
export type BaseVmStatus = Omit<VmStatus__Output, 'diskSource' | 'diskHost' | 'diskPath' | 'diskBytes' | 'diskKeptUnixMs'>;

/** The VNE with `status` as its VmStatus, the disk fields filled from `disks` (vne-health.ts describe() calls it). */
export function withDiskStatus(disks: VmDisks, vne: Vne__Output, status: readonly BaseVmStatus[]): Vne__Output {
  const rows = disks.of(vne.name);
  const vmStatus = status.map((s): VmStatus__Output => {
    const r = rows.get(s.vm);
    const none = { diskHost: '', diskPath: '', diskBytes: 0, diskKeptUnixMs: 0 };
    if (r && r.keptUnixMs > 0) return { ...s, diskSource: 'DISK_SOURCE_KEPT', diskHost: r.host, diskPath: r.path, diskBytes: r.bytes, diskKeptUnixMs: r.keptUnixMs };
    if (s.state === 'VM_RUN_STATE_STOPPED' || s.state === 'VM_RUN_STATE_UNSPECIFIED') return { ...s, diskSource: 'DISK_SOURCE_SPEC', ...none };
    return { ...s, diskSource: 'DISK_SOURCE_INSTANCE', ...none, diskHost: r?.host ?? s.host, diskPath: r?.path ?? '' };
  });
  return { ...vne, vmStatus };
}
