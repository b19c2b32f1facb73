/**
 * The QEMU driver's load beside a running VM (agent/drivers/qemu/restore-beside.ts) over a real
 * disk directory and fake QEMU instances: where the running VM's disk waits during the load, and
 * that discard() (or a failed load) puts it back byte for byte while swap() replaces it. Also the
 * agent's refusal check (agent/restore-swap.ts) and the host memory reader (agent/host-memory.ts).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { availableMemoryBytes } from '../../agent/host-memory';
import { DiskDirs } from '../../agent/drivers/disk-dir';
import type { BesideRestore, HypervisorDriver, VmStartSpec } from '../../agent/drivers/driver';
import type { QemuVm } from '../../agent/drivers/qemu/process';
import { BESIDE_RUNNING, restoreBeside, type BesideParts } from '../../agent/drivers/qemu/restore-beside';
import { besideRefusal } from '../../agent/restore-swap';
import { isVnsnapError, VnsnapError } from '../../proto/core/errors';
import { silentLogger } from '../../proto/core/log';
import type { VmSpec__Output } from '../../proto/gen/vnsnap/v1/VmSpec';

const PREFIX = 'vnsnap-unit-beside-';
const spec: VmStartSpec = { id: 'blue/a', vne: 'blue', name: 'a', macs: ['52:54:00:00:00:01'], driver: { kind: 'qemu' } };
const image = { memory: { path: 'snapshots/s1/a.mem', size: 1, sha256: '00' }, disks: [] };
const ctx = { portNames: ['blue/a/0'], log: silentLogger() };

describe('QEMU restore beside a running VM: the disk directory (fake QEMU instances, real directories)', () => {
  let root: string;
  let disks: DiskDirs;
  let events: string[];
  let installed: Map<string, QemuVm>;
  const fakeVm = (name: string): QemuVm => ({ pid: name === 'old' ? 1 : 2, ports: [], job: undefined, name }) as unknown as QemuVm;

  /** Parts whose load writes a new chain into the VM's directory (or fails after writing it). */
  const parts = (failLoad = false): BesideParts => ({
    disks,
    pending: new Map<string, BesideRestore>(),
    running: (id) => installed.get(id),
    load: async (s) => {
      const dir = await disks.fresh(s.vne, s.name);
      fs.writeFileSync(path.join(dir, 'disk0.qcow2'), 'new chain');
      events.push('load');
      if (failLoad) throw new VnsnapError('ERR_CHECKSUM', 'snapshots/s1/a.mem: SHA-256 ab, cd expected');
      return fakeVm('new');
    },
    cleanup: async (vm) => {
      events.push(`cleanup ${(vm as unknown as { name: string }).name}`);
      return false;
    },
    install: (id, vm) => void installed.set(id, vm),
    remove: (id) => void installed.delete(id),
    log: silentLogger(),
    now: () => 1234,
  });

  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), PREFIX));
    disks = new DiskDirs(root, silentLogger());
    events = [];
    installed = new Map([['blue/a', fakeVm('old')]]);
    fs.mkdirSync(disks.dirOf('blue', 'a'));
    fs.writeFileSync(path.join(disks.dirOf('blue', 'a'), 'disk0.qcow2'), 'running chain');
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  const read = (rel: string): string => fs.readFileSync(path.join(root, rel), 'utf8');

  it('while loaded, the running disk waits in .beside-running and the new chain is the VM\'s; discard() puts the running one back', async () => {
    const p = parts();
    const b = await restoreBeside(p, spec, image, {} as never, ctx);
    assert.equal(read('blue_a/disk0.qcow2'), 'new chain');
    assert.equal(read(`${BESIDE_RUNNING}/blue_a-1234/disk0.qcow2`), 'running chain');
    assert.deepEqual([...p.pending.keys()], ['blue/a']);
    await b.discard();
    await b.discard(); // idempotent
    assert.equal(read('blue_a/disk0.qcow2'), 'running chain');
    assert.deepEqual(fs.readdirSync(path.join(root, BESIDE_RUNNING)), []);
    assert.deepEqual(events, ['load', 'cleanup new']);
    assert.equal((installed.get('blue/a') as unknown as { name: string }).name, 'old');
    assert.equal(p.pending.size, 0);
    await assert.rejects(b.swap(), (e) => isVnsnapError(e, 'ERR_STATE'));
  });

  it('a failed load puts the running disk back and leaves nothing pending', async () => {
    const p = parts(true);
    await assert.rejects(restoreBeside(p, spec, image, {} as never, ctx), (e) => isVnsnapError(e, 'ERR_CHECKSUM'));
    assert.equal(read('blue_a/disk0.qcow2'), 'running chain');
    assert.deepEqual(fs.readdirSync(path.join(root, BESIDE_RUNNING)), []);
    assert.equal(p.pending.size, 0);
  });

  it('swap() stops the running instance, deletes its moved disk and installs the loaded one; discard() after it does nothing', async () => {
    const p = parts();
    const b = await restoreBeside(p, spec, image, {} as never, ctx);
    await assert.rejects(restoreBeside(p, spec, image, {} as never, ctx), (e) => isVnsnapError(e, 'ERR_ALREADY_EXISTS'));
    await b.swap();
    assert.deepEqual(events, ['load', 'cleanup old']);
    assert.equal((installed.get('blue/a') as unknown as { name: string }).name, 'new');
    assert.equal(read('blue_a/disk0.qcow2'), 'new chain');
    assert.deepEqual(fs.readdirSync(path.join(root, BESIDE_RUNNING)), []);
    await b.discard();
    assert.deepEqual(events, ['load', 'cleanup old']);
    assert.equal(read('blue_a/disk0.qcow2'), 'new chain');
  });
});

describe('the agent\'s refusal of a load beside (restore-swap.ts) and MemAvailable (host-memory.ts)', () => {
  const vm = (name: string, kind: 'qemu' | 'xen' = 'qemu'): VmSpec__Output => ({ name, host: 'h1', macs: [], driver: { kind } });
  const driver = (kind: 'qemu' | 'xen', beside: boolean): HypervisorDriver => ({ kind, ...(beside ? { restoreBeside: () => Promise.reject(new Error('unused')), besideMemoryBytes: () => 100 * 1024 * 1024 } : {}) }) as unknown as HypervisorDriver;
  const qemu = driver('qemu', true);
  const xen = driver('xen', false);
  const parts = (avail: number, running?: HypervisorDriver) => ({ driverFor: (s: VmSpec__Output) => (s.driver?.kind === 'xen' ? xen : qemu), running: () => (running ? { driver: running } : undefined), availableMemory: () => Promise.resolve(avail) });

  it('fits: undefined; a driver without it, another driver running the VM, too little memory: one line saying why', async () => {
    assert.equal(await besideRefusal([vm('a'), vm('b')], parts(456 * 1024 * 1024)), undefined);
    assert.equal(await besideRefusal([vm('a'), vm('b')], parts(455 * 1024 * 1024)), 'loading 2 VMs beside the running ones needs 456 MiB (with 256 MiB kept for the host), 455 MiB available');
    assert.equal(await besideRefusal([vm('a'), vm('x', 'xen')], parts(8 << 30)), 'VM x: the xen driver cannot load a VM beside its running instance');
    assert.equal(await besideRefusal([vm('a')], parts(8 << 30, xen)), 'VM a runs on the xen driver, its snapshot on qemu');
    assert.equal(await besideRefusal([vm('a')], { ...parts(0), availableMemory: () => availableMemoryBytes('/nonexistent/meminfo') }), 'the host\'s available memory is unknown (cannot read /nonexistent/meminfo: ENOENT: no such file or directory, open \'/nonexistent/meminfo\')');
  });

  it('MemAvailable is read from /proc/meminfo in bytes', async () => {
    const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), PREFIX)), 'meminfo');
    try {
      fs.writeFileSync(f, 'MemTotal:        8000000 kB\nMemFree:          100000 kB\nMemAvailable:    2000000 kB\n');
      assert.equal(await availableMemoryBytes(f), 2_000_000 * 1024);
      fs.writeFileSync(f, 'MemTotal:        8000000 kB\n');
      await assert.rejects(availableMemoryBytes(f), (e) => isVnsnapError(e, 'ERR_UNAVAILABLE') && e.message === `${f} has no MemAvailable line`);
      assert.ok((await availableMemoryBytes()) > 0);
    } finally {
      fs.rmSync(path.dirname(f), { recursive: true, force: true });
    }
  });
});
