/**
 * The coordinator's side of kept disks (docs/operations.md "Stopping, starting and deleting
 * VNEs: what happens to disks"): what start, stop, delete, update and restore do with the disks
 * a `vne stop` kept on the VMs' hosts (rows of vm-disks.ts).
 *
 * Guarantees:
 *  - A kept disk is deleted only by an explicit request (stop/start/restore --discard-disks,
 *    delete), through DiscardDisks on its host, and its row goes only once the host did it.
 *  - A kept disk on an unreachable host is never silently dropped: the caller either refuses
 *    (one line naming the VMs, the host and the way out) or, when the operator said so, forgets
 *    it and says so (the directory then stays on that host until its agent moves it aside).
 *  - What a StopVm / StartVm reported is recorded as it comes, so a partial stop still records
 *    the disks that were kept.
 */
import { VnsnapError } from '../proto/core/errors';
import type { Result__Output } from '../proto/gen/vnsnap/v1/Result';
import type { VmSpec__Output } from '../proto/gen/vnsnap/v1/VmSpec';
import { sendOk, type AgentLink, type SendOptions } from './agent-link';
import type { Catalog } from './catalog';
import { describeKept, type VmDiskRecord } from './vm-disks';

/** "a, b on h2; c on h3": kept disks grouped by host. */
export function byHost(rows: readonly VmDiskRecord[]): string {
  const m = new Map<string, string[]>();
  for (const r of rows) m.set(r.host, [...(m.get(r.host) ?? []), r.vm]);
  return [...m].map(([h, vms]) => `${vms.sort().join(', ')} on ${h}`).join('; ');
}

export class KeptDisks {
  constructor(
    private readonly catalog: Catalog,
    private readonly link: AgentLink,
    private readonly cmd: () => SendOptions,
    private readonly now: () => number,
  ) {}

  /** The VNE's kept disks by VM name. */
  of(vne: string): Map<string, VmDiskRecord> {
    return this.catalog.disks.kept(vne);
  }

  /** The kept disks whose host is not connected. */
  unreachable(vne: string): VmDiskRecord[] {
    return [...this.of(vne).values()].filter((r) => !this.link.isConnected(r.host));
  }

  /**
   * Delete the VNE's kept disks on their hosts (DiscardDisks). Those on unreachable hosts are
   * forgotten, unless `refuse` is given: then `refuse(rows)` is thrown before anything is deleted.
   * Returns one line per disk discarded and per disk forgotten.
   */
  async discard(vne: string, refuse?: (rows: VmDiskRecord[]) => VnsnapError): Promise<{ discarded: string[]; forgotten: string[] }> {
    const rows = [...this.of(vne).values()];
    const away = rows.filter((r) => !this.link.isConnected(r.host));
    if (away.length > 0 && refuse) throw refuse(away);
    const here = rows.filter((r) => this.link.isConnected(r.host));
    const hosts = [...new Set(here.map((r) => r.host))].sort();
    await Promise.all(
      hosts.map(async (h) => {
        const vms = here.filter((r) => r.host === h).map((r) => r.vm);
        await sendOk(this.link, h, { discardDisks: { vne, vms } }, this.cmd());
        this.catalog.disks.forget(vne, vms);
      }),
    );
    this.catalog.disks.forget(vne, away.map((r) => r.vm));
    return { discarded: here.map((r) => `discarded ${describeKept(r)}`), forgotten: away.map((r) => `forgotten ${describeKept(r)} (host not connected: the directory stays there)`) };
  }

  /** Refuse a start while a kept disk's host is away (the start would boot a stale or fresh disk). */
  requireReachable(vne: string): void {
    const away = this.unreachable(vne);
    if (away.length === 0) return;
    throw new VnsnapError('ERR_AGENT_DISCONNECTED', `VNE "${vne}": the kept disk of ${byHost(away)} is on a host that is not connected: start when it is back, or pass --discard-disks to boot those VMs fresh from their specs`);
  }

  /** Record what a StartVm reported: the running VM's disk (or none). */
  started(vne: string, vm: string, host: string, r: Result__Output): void {
    const path = r.startVm?.diskPath ?? '';
    if (path) this.catalog.disks.put({ vne, vm, host, path, bytes: 0, keptUnixMs: 0 });
    else this.catalog.disks.forget(vne, [vm]);
  }

  /**
   * Record what a StopVm reported; returns the line for the operator (what was kept or
   * discarded) and, when the hypervisor had to be killed, a note.
   */
  stopped(vne: string, vm: string, host: string, r: Result__Output): { line?: string; note?: string } {
    const s = r.stopVm;
    const note = s?.killed ? `${vm} on ${host}: the hypervisor did not stop within its grace period and was killed; writes it had not flushed may be missing from its disk` : undefined;
    if (s?.diskPath) {
      const rec: VmDiskRecord = { vne, vm, host, path: s.diskPath, bytes: Number(s.diskBytes), keptUnixMs: this.now() };
      this.catalog.disks.put(rec);
      return { line: `kept ${describeKept(rec)}`, ...(note ? { note } : {}) };
    }
    this.catalog.disks.forget(vne, [vm]);
    // A VM without a disk of its own (it boots from its spec's image) has nothing to report.
    return { ...(s?.discardedPath ? { line: `discarded ${vm} on ${host}: ${s.discardedPath}` } : {}), ...(note ? { note } : {}) };
  }

  /**
   * UpdateVne: refuse a definition that drops a VM with a kept disk or changes its driver spec
   * (the kept disk was made for the old one), before anything changes.
   */
  checkUpdate(vne: string, before: readonly VmSpec__Output[], after: readonly VmSpec__Output[]): void {
    for (const r of this.of(vne).values()) {
      const old = before.find((v) => v.name === r.vm);
      const now = after.find((v) => v.name === r.vm);
      if (!now || JSON.stringify(now.driver) !== JSON.stringify(old?.driver)) {
        throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${r.vm} of VNE "${vne}" has a kept disk (on ${r.host}) and the new definition ${now ? 'changes its driver spec' : 'removes it'}: discard it first (vnsnap vne stop --discard-disks ${vne})`);
      }
    }
  }
}
