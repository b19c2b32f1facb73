/**
 * VmTable's state record writes (agent/vms.ts writeState): one VM's writes run one at a time in
 * the order asked, each from the driver's state when its turn comes, so a write asked earlier can
 * never land after (and over) a later one; a failed write rejects writeState (a snapshot job that
 * must know its record is on disk) while saveState only logs it.
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
});
