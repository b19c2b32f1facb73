import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { guestOf, SimDriver, type SimVmState } from '../sim/driver';
import { LocalDirStore } from '../../proto/store/local-dir';
import { Switch } from '../../switch/switch';
import { silentLogger } from '../../proto/core/log';
import { driverCompliance } from '../support/compliance/driver';
import { sleep, until } from '../support/wait';

const simSpec = (name: string, peers: string[] = [], mac = '52:54:00:00:00:01') => ({
  id: `blue/${name}`,
  vne: 'blue',
  name,
  macs: [mac],
  driver: { kind: 'sim' as const, sim: { memoryMib: 2, dirtyRateMibS: 20, frameRateHz: 100, peers } },
});

driverCompliance('sim', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-drv-'));
  const store = new LocalDirStore(dir);
  await store.init();
  const driver = new SimDriver({ batchSize: 4 });
  return {
    driver,
    store,
    spec: (name) => simSpec(name),
    fingerprint: async (id) => {
      return createHash('sha256').update(JSON.stringify(guestOf(driver.inspect(id) as SimVmState))).digest('hex');
    },
    cleanup: async () => fs.rmSync(dir, { recursive: true, force: true }),
  };
});

describe('sim driver on a real switch', () => {
  it('two VMs find each other (HELLO) and exchange sequence-numbered frames without gap, duplicate or orphan', async () => {
    const sw = new Switch({ id: 'h1' });
    sw.configureVne({ name: 'blue', vni: 100 });
    const d = new SimDriver({ batchSize: 8 });
    const a = await d.start(simSpec('a', ['b'], '52:54:00:00:00:0a'), { portNames: ['a0'], log: silentLogger() });
    const b = await d.start(simSpec('b', ['a'], '52:54:00:00:00:0b'), { portNames: ['b0'], log: silentLogger() });
    sw.attachPort('blue', a.ports[0]!, { epoch: 0 });
    sw.attachPort('blue', b.ports[0]!, { epoch: 0 });
    sw.start();
    await until('a and b exchanging frames', () => (d.inspect('blue/a')?.sent.b ?? 0) > 10 && (d.inspect('blue/b')?.sent.a ?? 0) > 10);
    await d.pause('blue/a');
    await d.pause('blue/b');
    await sleep(20); // frames in flight reach the paused NICs' queues
    const sa = d.inspect('blue/a')!;
    const sb = d.inspect('blue/b')!;
    assert.equal(sa.arp.b, '52:54:00:00:00:0b');
    assert.equal(sb.arp.a, '52:54:00:00:00:0a');
    assert.ok((sa.sent.b ?? 0) > 10, `a sent ${sa.sent.b}`);
    // Everything sent before the pause was delivered (frames queued at a paused NIC are processed at resume).
    await d.resume('blue/a');
    await d.resume('blue/b');
    await d.pause('blue/a');
    await d.pause('blue/b');
    await sleep(20); // frames in flight reach the paused NICs' queues
    await d.resume('blue/a');
    await d.resume('blue/b');
    await d.pause('blue/a');
    await d.pause('blue/b');
    const fa = d.inspect('blue/a')!;
    const fb = d.inspect('blue/b')!;
    for (const s of [fa, fb]) {
      assert.equal(s.gaps, 0);
      assert.equal(s.duplicates, 0);
      assert.equal(s.orphans, 0);
    }
    assert.ok(fb.expected.a! >= sa.sent.b!);
    await d.close();
    sw.stop();
  });
});

describe('sim driver at scale', () => {
  const tmpStore = async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-drv-'));
    const store = new LocalDirStore(dir);
    await store.init();
    return { dir, store };
  };

  it('keeps only its peers of the VNE in its ARP table', async () => {
    const d = new SimDriver();
    const vneVms = ['a', 'b', 'c', 'd'].map((n, i) => ({ name: n, macs: [`52:54:00:00:00:0${i + 1}`] }));
    await d.start(simSpec('a', ['c'], '52:54:00:00:00:01'), { portNames: ['a0'], log: silentLogger(), vneVms });
    assert.deepEqual(d.inspect('blue/a')?.arp, { c: '52:54:00:00:00:03' });
    await d.close();
  });

  it('a cut does not wait out the pause between pre-copy passes; the state at the cut gets its memory hash', async function () {
    this.timeout(10_000);
    const { dir, store } = await tmpStore();
    const d = new SimDriver({ passIntervalMs: 400 });
    const quiet = simSpec('a');
    quiet.driver.sim.dirtyRateMibS = 0; // ready after the second pass
    await d.start(quiet, { portNames: ['a0'], log: silentLogger() });
    const job = await d.snapshot('blue/a', { snapshotId: 's1', epoch: 1, mode: 'precopy', store, prefix: 'snapshots/s1/' });
    await job.ready; // the loop now pauses 5 × 400 ms before its next pass
    const t0 = performance.now();
    let atPauseSha = '';
    const cut = await job.cut(async () => {
      atPauseSha = d.inspect('blue/a')?.memorySha256 ?? '';
    });
    assert.ok(performance.now() - t0 < 1000, `cut took ${performance.now() - t0} ms`);
    assert.ok(cut.cutUnixUs > 0);
    const at = d.cutState('blue/a', 1);
    assert.equal(at?.epoch, 1);
    assert.equal(at?.memorySha256, atPauseSha, 'hash of the memory at the pause, not of the memory now');
    assert.equal('memory' in (at as object), false);
    await job.durable();
    await d.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
