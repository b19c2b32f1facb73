import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { guestOf, SimDriver, type SimVmState } from '../../agent/sim-driver';
import { LocalDirStore } from '../../agent/store';
import { Switch } from '../../switch/switch';
import { silentLogger } from '../../proto/log';
import { driverCompliance } from '../support/driver-compliance';

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
    sw.addVne({ name: 'blue', vni: 100 });
    const d = new SimDriver({ batchSize: 8 });
    const a = await d.start(simSpec('a', ['b'], '52:54:00:00:00:0a'), { portNames: ['a0'], log: silentLogger() });
    const b = await d.start(simSpec('b', ['a'], '52:54:00:00:00:0b'), { portNames: ['b0'], log: silentLogger() });
    sw.addPort('blue', a.ports[0]!, 0);
    sw.addPort('blue', b.ports[0]!, 0);
    sw.start();
    await new Promise((r) => setTimeout(r, 400));
    await d.pause('blue/a');
    await d.pause('blue/b');
    await new Promise((r) => setTimeout(r, 20));
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
    await new Promise((r) => setTimeout(r, 20));
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
