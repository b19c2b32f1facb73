/**
 * VmTable's state record writes (agent/vms.ts writeState): one VM's writes run one at a time in
 * the order asked, each from the driver's state when its turn comes, so a write asked earlier can
 * never land after (and over) a later one; a failed write rejects writeState (a snapshot job that
 * must know its record is on disk) while saveState only logs it. saveStates writes a VNE's VMs'
 * records together (a snapshot's commit reply waits for them), not one after the other.
 */
import { strict as assert } from 'node:assert';
import type { HypervisorDriver } from '../../agent/drivers/driver';
import type { VmStateDir, VmStateRecord } from '../../agent/vm-state';
import { VmTable, type VmRecord } from '../../agent/vms';
import { silentLogger } from '../../proto/core/log';

function rig() {
  let driverState = 'with base';
  const landed: unknown[] = [];
  const pending: { release: () => void; fail: (e: Error) => void }[] = [];
  const state = {
    write: (r: Omit<VmStateRecord, 'format' | 'writtenUnixMs'>) =>
      new Promise<void>((ok, fail) => {
        // Held until the test releases it: a slow disk, the write of `r` asked and not yet on disk.
        pending.push({ release: () => (landed.push(r.driverState), ok()), fail });
      }),
  } as unknown as VmStateDir;
  const driver = { kind: 'qemu', persistent: () => ({ process: { pid: 1, startTime: '1' }, state: driverState }) } as unknown as HypervisorDriver;
  const table = new VmTable({ agentId: 'h1', state, drivers: [driver], switch: () => { throw new Error('no switch'); }, log: silentLogger() });
  const vm: VmRecord = { key: 'blue/a', vne: 'blue', name: 'a', spec: { name: 'a' } as VmRecord['spec'], driver, ports: [], generation: 1 };
  const next = async (): Promise<{ release: () => void; fail: (e: Error) => void }> => {
    while (pending.length === 0) await new Promise((r) => setImmediate(r));
    return pending.shift() as { release: () => void; fail: (e: Error) => void };
  };
  return { table, vm, landed, next, set: (s: string) => (driverState = s), pendingCount: () => pending.length };
}

describe('VM state record writes', () => {
  it('run one at a time in the order asked, each from the state at its turn', async () => {
    const r = rig();
    const first = r.table.writeState(r.vm); // the state has the base
    const w1 = await r.next();
    r.set('without base');
    const second = r.table.writeState(r.vm);
    await new Promise((res) => setImmediate(res));
    assert.equal(r.pendingCount(), 0, 'the second write waits for the first');
    w1.release();
    await first;
    (await r.next()).release();
    await second;
    assert.deepEqual(r.landed, ['with base', 'without base']);
  });

  it('a failed write rejects writeState; saveState logs it; the next write still runs', async () => {
    const r = rig();
    const failing = r.table.writeState(r.vm);
    (await r.next()).fail(new Error('disk full'));
    await assert.rejects(failing, /disk full/);
    const logged = r.table.saveState(r.vm);
    (await r.next()).fail(new Error('disk full'));
    await logged; // resolves: saveState logs
    const last = r.table.writeState(r.vm);
    (await r.next()).release();
    await last;
    assert.deepEqual(r.landed, ['with base']);
  });

  it("saveStates writes every VM of the VNE together, and no other VNE's", async () => {
    const r = rig();
    const other: VmRecord = { ...r.vm, key: 'blue/b', name: 'b' };
    const elsewhere: VmRecord = { ...r.vm, key: 'red/a', vne: 'red' };
    // the table's VMs (what values() lists), as start/adopt would have added them
    const vms = (r.table as unknown as { vms: Map<string, VmRecord> }).vms;
    for (const v of [r.vm, other, elsewhere]) vms.set(v.key, v);
    const saved = r.table.saveStates('blue');
    const a = await r.next();
    const b = await r.next();
    await new Promise((res) => setImmediate(res));
    assert.equal(r.pendingCount(), 0, "both blue records asked at once, red's not at all");
    let done = false;
    void saved.then(() => (done = true));
    a.release();
    await new Promise((res) => setImmediate(res));
    assert.equal(done, false, 'saveStates waits for every write');
    b.release();
    await saved;
    assert.deepEqual(r.landed, ['with base', 'with base']);
  });
});
