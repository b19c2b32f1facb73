/**
 * Kept disks on the agent: the disk directory rules (drivers/disk-dir.ts: fresh, set aside,
 * kept marker, discard) and the commands that use them (StopVm keep/discard, StartVm kept_disk,
 * DiscardDisks) through the agent over a fake session, with a fake driver that keeps a disk
 * directory the way the QEMU driver does.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Agent } from '../../agent/agent';
import { DiskDirs, SET_ASIDE } from '../../agent/drivers/disk-dir';
import type { StopOptions, StopReport, VmHandle, VmStartContext, VmStartSpec } from '../../agent/drivers/driver';
import { isVnsnapError } from '../../proto/core/errors';
import { ManualClock } from '../../proto/core/clock';
import { silentLogger } from '../../proto/core/log';
import type { Command__Output } from '../../proto/gen/vnsnap/v1/Command';
import { FakeUdpNetwork } from '../../switch/tunnel/tunneltest/fake-transport';
import { fakeVmSpec, T0, VNE } from '../support/agent-parts';
import { FakeDriver } from '../support/fake-driver';
import { FakeSessionTransport } from '../support/fake-session';

const PREFIX = 'vnsnap-keepdisks-';

/** A fake driver with a disk directory per VM (the QEMU driver's rules, without QEMU). */
class DiskDriver extends FakeDriver {
  readonly booted: { id: string; from: string }[] = [];
  constructor(readonly disks: DiskDirs) {
    super();
  }

  override async start(spec: VmStartSpec, ctx: VmStartContext): Promise<VmHandle> {
    let top: string;
    if (spec.keptDisk) top = await this.disks.keptTop(spec.vne, spec.name);
    else {
      top = path.join(await this.disks.fresh(spec.vne, spec.name), 'disk0.qcow2');
      fs.writeFileSync(top, 'fresh');
    }
    this.booted.push({ id: spec.id, from: fs.readFileSync(top, 'utf8') });
    return super.start(spec, ctx);
  }

  override async stop(id: string, opts: StopOptions = {}): Promise<StopReport> {
    const known = this.vms.has(id);
    await super.stop(id);
    const [vne, vm] = id.split('/') as [string, string];
    if (opts.discardDisk) {
      const gone = await this.disks.discard(vne, vm);
      return gone ? { discardedPath: gone } : {};
    }
    if (!known) return {};
    const top = path.join(this.disks.dirOf(vne, vm), 'disk0.qcow2');
    fs.writeFileSync(top, 'written by the guest');
    const k = await this.disks.markKept(vne, vm, top);
    return { diskPath: k.dir, diskBytes: k.bytes };
  }

  discardDisk(vne: string, vm: string): Promise<string | undefined> {
    return this.disks.discard(vne, vm);
  }

  diskPath(id: string): string | undefined {
    const [vne, vm] = id.split('/') as [string, string];
    return this.vms.has(id) ? this.disks.dirOf(vne, vm) : undefined;
  }
}

describe('kept disks on the agent: the disk directory', () => {
  let root: string;
  let dirs: DiskDirs;
  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), PREFIX));
    dirs = new DiskDirs(path.join(root, 'disks'), silentLogger(), () => 1234);
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  it('fresh() moves a directory it finds aside (never deletes it); markKept/keptTop name the top; discard removes', async () => {
    const d = await dirs.fresh('blue', 'a');
    assert.equal(d, path.join(root, 'disks', 'blue_a'));
    fs.writeFileSync(path.join(d, 'disk0.qcow2'), 'data');
    await assert.rejects(dirs.keptTop('blue', 'a'), (e) => isVnsnapError(e, 'ERR_NOT_FOUND') && e.message === `the kept disk of VM a (VNE blue) at ${d} is gone (or was not kept cleanly)`);
    const k = await dirs.markKept('blue', 'a', path.join(d, 'disk0.qcow2'));
    assert.equal(k.dir, d);
    assert.ok(k.bytes >= 4, String(k.bytes));
    assert.equal(await dirs.keptTop('blue', 'a'), path.join(d, 'disk0.qcow2'));
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(d, 'kept.json'), 'utf8')), { top: 'disk0.qcow2', keptUnixMs: 1234 });

    // A fresh start over it: set aside with its data, a new empty directory in its place.
    await dirs.fresh('blue', 'a');
    assert.deepEqual(fs.readdirSync(d), []);
    const aside = path.join(root, 'disks', SET_ASIDE, 'blue_a-1234');
    assert.equal(fs.readFileSync(path.join(aside, 'disk0.qcow2'), 'utf8'), 'data');

    assert.equal(await dirs.discard('blue', 'a'), d);
    assert.equal(fs.existsSync(d), false);
    assert.equal(await dirs.discard('blue', 'a'), undefined, 'idempotent');
    assert.equal(fs.existsSync(aside), true, 'discard leaves what was set aside');
  });

  it('names are path components; a top outside the directory is refused', async () => {
    assert.equal(dirs.dirOf('a/b', '../c'), path.join(root, 'disks', 'a_b_.._c'));
    await dirs.fresh('blue', 'a');
    await assert.rejects(dirs.markKept('blue', 'a', path.join(root, 'x.qcow2')), (e) => isVnsnapError(e, 'ERR_INTERNAL'));
  });
});

describe('kept disks on the agent: StopVm, StartVm kept_disk, DiscardDisks', () => {
  let root: string;
  let agent: Agent;
  let driver: DiskDriver;
  let transport: FakeSessionTransport;
  let id = 0;
  const cmd = (body: Omit<Command__Output, 'id' | 'sentUnixUs'>): Command__Output => ({ id: ++id, sentUnixUs: 0, ...body });
  const run = (body: Omit<Command__Output, 'id' | 'sentUnixUs'>) => transport.last.run(cmd(body));
  const startA = (keptDisk: boolean) => run({ body: 'startVm', startVm: { vne: VNE, vm: fakeVmSpec('a', 1), epoch: 0, vneVms: [], keptDisk } });
  const stopA = (discardDisk: boolean) => run({ body: 'stopVm', stopVm: { vne: VNE, vm: 'a', discardDisk } });

  beforeEach(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), PREFIX));
    transport = new FakeSessionTransport();
    driver = new DiskDriver(new DiskDirs(path.join(root, 'disks'), silentLogger(), () => 99));
    agent = new Agent({ id: 'h1', coordinator: 'c:1', tunnel: { address: '10.0.0.1', port: 6081 }, storeConfig: { kind: 'local', dir: path.join(root, 'store') }, drivers: [driver], hostname: 'h', transport: new FakeUdpNetwork().endpoint(0x0a000001, 6081), session: transport.factory, clock: new ManualClock(T0) });
    await agent.start();
    transport.last.welcome(1000);
    assert.equal((await run({ body: 'configureVne', configureVne: { vne: VNE, vni: 7, generation: 1, peers: [], macs: [], epoch: 0 } })).ok, true);
  });
  afterEach(async () => {
    await agent.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('stop keeps the disk and says where; start with kept_disk boots from it; discard_disk deletes it and says so', async () => {
    const dir = path.join(root, 'disks', `${VNE}_a`);
    assert.deepEqual(await startA(false), { commandId: id, ok: true, commandReceivedUnixUs: T0 * 1000, sentUnixUs: T0 * 1000, startVm: { diskPath: dir } });
    const stopped = await stopA(false);
    assert.equal(stopped.ok, true);
    assert.equal(stopped.stopVm?.diskPath, dir);
    assert.ok(Number(stopped.stopVm?.diskBytes) > 0);
    assert.equal(stopped.stopVm?.discardedPath, '');
    assert.equal((await startA(true)).ok, true);
    assert.deepEqual(driver.booted.map((b) => b.from), ['fresh', 'written by the guest']);
    assert.deepEqual((await stopA(true)).stopVm, { diskPath: '', diskBytes: 0, killed: false, discardedPath: dir });
    assert.equal(fs.existsSync(dir), false);
    const gone = await startA(true);
    assert.deepEqual([gone.ok, gone.errorCode, gone.errorMessage], [false, 'ERR_NOT_FOUND', `the kept disk of VM a (VNE ${VNE}) at ${dir} is gone (or was not kept cleanly) [ERR_NOT_FOUND]`]);
  });

  it('a fresh start over a directory nobody asked for moves it aside; DiscardDisks is idempotent and refuses a running VM', async () => {
    assert.equal((await startA(false)).ok, true);
    assert.equal((await stopA(false)).ok, true);
    assert.equal((await startA(false)).ok, true);
    assert.deepEqual(fs.readdirSync(path.join(root, 'disks', SET_ASIDE)), [`${VNE}_a-99`]);
    const refused = await run({ body: 'discardDisks', discardDisks: { vne: VNE, vms: ['a'] } });
    assert.deepEqual([refused.ok, refused.errorCode, refused.errorMessage], [false, 'ERR_FAILED_PRECONDITION', `VM a of VNE ${VNE} runs on agent h1: stop it before discarding disks [ERR_FAILED_PRECONDITION]`]);
    assert.equal((await stopA(false)).ok, true);
    const dir = path.join(root, 'disks', `${VNE}_a`);
    assert.deepEqual((await run({ body: 'discardDisks', discardDisks: { vne: VNE, vms: ['a', 'b'] } })).discardDisks, { discardedPaths: [dir] });
    assert.deepEqual((await run({ body: 'discardDisks', discardDisks: { vne: VNE, vms: ['a'] } })).discardDisks, { discardedPaths: [] });
    // StopVm(discard) of a VM that does not run here: nothing to stop, nothing kept, no error.
    assert.deepEqual((await stopA(true)).stopVm, { diskPath: '', diskBytes: 0, killed: false, discardedPath: '' });
  });
});
