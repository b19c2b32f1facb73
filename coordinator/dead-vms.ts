/**
 * DeadVms: which VMs of a started VNE died while their agent was away (the agent registered
 * again without them), kept in the catalog's SQLite file so that a VM reported DEAD stays DEAD
 * across a coordinator restart — the agent will not report it again, and nothing else could
 * tell the new coordinator that the VM is gone rather than running.
 *
 * Guarantees: a row is written in the same synchronous turn as the VNE becomes FAILED (before
 * anything can read the VNE); the rows of a VNE are removed when a start, stop or restore
 * replaces its VMs (`forget`), so a DEAD never outlives the instance it describes.
 *
 * The table lives beside the catalog's migrated schema (`CREATE TABLE IF NOT EXISTS`, no
 * foreign key): an older coordinator ignores it, and this module needs no schema migration of
 * the catalog.
 */
import type { Catalog } from './catalog';

export class DeadVms {
  constructor(private readonly catalog: Pick<Catalog, 'db'>) {
    catalog.db.exec(`CREATE TABLE IF NOT EXISTS dead_vms (
      vne TEXT NOT NULL,
      vm TEXT NOT NULL,
      agent_id TEXT NOT NULL,            -- the agent that registered without it
      died_unix_ms INTEGER NOT NULL,     -- when the coordinator learnt it
      PRIMARY KEY (vne, vm)
    )`);
  }

  has(vne: string, vm: string): boolean {
    return this.catalog.db.prepare('SELECT 1 FROM dead_vms WHERE vne = ? AND vm = ?').get(vne, vm) !== undefined;
  }

  /** Record VMs as dead (idempotent). */
  add(vne: string, vms: readonly string[], agent: string, nowUnixMs: number): void {
    const ins = this.catalog.db.prepare('INSERT OR IGNORE INTO dead_vms (vne, vm, agent_id, died_unix_ms) VALUES (?, ?, ?, ?)');
    for (const vm of vms) ins.run(vne, vm, agent, nowUnixMs);
  }

  /** A start, stop, restore or delete replaced the VNE's VMs: none is dead any more. */
  forget(vne: string): void {
    this.catalog.db.prepare('DELETE FROM dead_vms WHERE vne = ?').run(vne);
  }
}
