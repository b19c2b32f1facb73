/**
 * Xen domains outlive the agent: the Xen driver releases a domain without destroying it, and a
 * new driver adopts it by name and domid (fake toolstack: test/xen/fake-xen-host.ts), re-opening
 * the switch's TAPs in the same bridges and unpausing a domain the dead agent had paused; and
 * through a whole agent (state records, Register.running): a domain destroyed while no agent
 * ran is reported dead and its record removed, the other domain adopted and left untouched.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Agent } from '../../agent/agent';
import type { VmStartSpec } from '../../agent/drivers/driver';
import { XenDriver, xenNames } from '../../agent/drivers/xen/driver';
import { isVnsnapError } from '../../proto/core/errors';
import type { Command__Output } from '../../proto/gen/vnsnap/v1/Command';
import type { VmSpec__Output } from '../../proto/gen/vnsnap/v1/VmSpec';
import { silentLogger } from '../../proto/core/log';
import { fakePortPair } from '../../switch/port/porttest/fake-port';
import { VNE } from '../support/agent-parts';
import { FakeSessionTransport } from '../support/fake-session';
import { sessionAgent } from '../support/session-agent';
import { FakeXenHost } from '../xen/fake-xen-host';

/** The fake toolstack with `xl list`'s paused flag. */
class PausingXenHost extends FakeXenHost {
  paused(name: string): Promise<boolean> {
    return Promise.resolve(this.doms.get(name)?.state === 'paused');
  }
}

describe('xen driver: domains outlive the agent (fake toolstack)', () => {
  let dir: string;
  let fake: PausingXenHost;
  const drivers: XenDriver[] = [];
  const spec: VmStartSpec = { id: 'v/a', vne: 'v', name: 'a', macs: ['00:16:3e:00:00:0a'], driver: { kind: 'xen', xen: { config: 'type="pv"\n' } } };
  const ctx = { portNames: ['v/a/0'], log: silentLogger() };
  const dom = xenNames('v/a', 1);
  const newDriver = (): XenDriver => {
    const d = new XenDriver({ host: fake, workDir: path.join(dir, 'work'), imageRoots: [dir], receiverCommand: (s) => s, openPort: (n) => fakePortPair(n).port, log: () => undefined });
    drivers.push(d);
    return d;
  };

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vnxen-adopt-'));
    fake = new PausingXenHost({ pages: 16 });
  });

  afterEach(async () => {
    for (const d of drivers.splice(0)) await d.close();
    fake.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('release leaves the domain and its bridge; a new driver adopts it (same domid), re-bridges its TAP and unpauses it', async () => {
    const first = newDriver();
    await first.start(spec, ctx);
    const saved = first.persistent('v/a');
    const domid = fake.doms.get(dom.domName)?.domid as number;
    assert.deepEqual(saved, { state: { domName: dom.domName, domid } });
    await first.release('v/a');
    assert.equal(first.inspect('v/a'), undefined);
    assert.equal(fake.doms.get(dom.domName)?.state, 'running', 'the domain runs on without the agent');
    await fake.pause(dom.domName); // the dead agent had paused it for a cut
    fake.bridges.clear(); // what a restarted dom0 bridge setup would lose: adoption puts the veth end back
    const second = newDriver();
    const h = await second.adopt(spec, saved as { state: unknown }, ctx);
    assert.equal(h.resumed, true);
    assert.deepEqual(h.ports.map((p) => p.name), ['v/a/0']);
    assert.deepEqual(second.inspect('v/a'), { domName: dom.domName, domid, status: 'running' });
    assert.equal(fake.doms.get(dom.domName)?.state, 'running');
    assert.deepEqual([...fake.bridges], [[dom.bridges[0], dom.veths[0]?.br]]);
    assert.deepEqual(fake.calls, [`create ${dom.domName}`, `cap ${dom.domName} 0`], 'nothing made again; a capture\'s leftover CPU cap lifted');
  });

  it('a domain that is gone, or another domain under the name (other domid), is not adopted (ERR_NOT_FOUND)', async () => {
    const first = newDriver();
    await first.start(spec, ctx);
    const saved = first.persistent('v/a') as { state: { domid: number } };
    await first.release('v/a');
    await fake.destroy(dom.domName);
    const second = newDriver();
    await assert.rejects(second.adopt(spec, saved, ctx), (e: unknown) => isVnsnapError(e, 'ERR_NOT_FOUND') && e.message === `Xen domain ${dom.domName} is gone`);
    await fake.create('', dom.domName);
    const now = fake.doms.get(dom.domName)?.domid;
    await assert.rejects(second.adopt(spec, saved, ctx), (e: unknown) => isVnsnapError(e, 'ERR_NOT_FOUND') && e.message === `Xen domain ${dom.domName} is another domain now (domid ${now}, recorded ${saved.state.domid})`);
    assert.equal(second.inspect('v/a'), undefined);
    await assert.rejects(second.adopt(spec, { state: { domName: 'vnsnap-other', domid: 3 } }, ctx), (e: unknown) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'));
  });

  describe('through the agent', () => {
    const agents: Agent[] = [];
    let id = 0;
    const cmd = (body: Omit<Command__Output, 'id' | 'sentUnixUs'>): Command__Output => ({ id: ++id, sentUnixUs: 0, ...body });
    const vmSpec = (name: string, i: number): VmSpec__Output => ({ name, host: 'h1', macs: [`00:16:3e:00:00:0${i}`], driver: { kind: 'xen', xen: { config: 'type="pv"\n' } } });

    function newAgent(): { agent: Agent; transport: FakeSessionTransport } {
      const made = sessionAgent(dir, path.join(dir, 'state'), newDriver());
      agents.push(made.agent);
      return made;
    }

    afterEach(async () => {
      for (const a of agents.splice(0)) await a.stop().catch(() => undefined);
    });

    it('a domain destroyed while no agent ran is reported dead (record removed, not in Register.running); the other is adopted untouched', async () => {
      const first = newAgent();
      await first.agent.start();
      first.transport.last.welcome(1000);
      assert.equal((await first.transport.last.run(cmd({ body: 'configureVne', configureVne: { vne: VNE, vni: 7, generation: 1, peers: [], macs: [], epoch: 2 } }))).ok, true);
      for (const [i, n] of ['a', 'b'].entries()) assert.equal((await first.transport.last.run(cmd({ body: 'startVm', startVm: { vne: VNE, vm: vmSpec(n, i + 1), epoch: 2, vneVms: [], keptDisk: false } }))).ok, true);
      await first.agent.stop(); // SIGTERM's path: the domains are released, not destroyed
      const a = xenNames(`${VNE}/a`, 1).domName;
      const b = xenNames(`${VNE}/b`, 1).domName;
      const domidA = fake.doms.get(a)?.domid;
      assert.equal(fake.doms.get(a)?.state, 'running');
      await fake.destroy(b); // dies while no agent runs
      fake.calls.length = 0;
      const second = newAgent();
      await second.agent.start();
      assert.deepEqual(second.agent.adoption, { adopted: [{ vm: `${VNE}/a`, resumed: false }], dead: [{ vm: `${VNE}/b`, reason: `gone: Xen domain ${b} is gone [ERR_NOT_FOUND]` }], skipped: [] });
      assert.deepEqual(second.transport.last.written[0]?.register?.running, [{ vne: VNE, vm: 'a', epoch: 2, generation: 1 }]);
      assert.deepEqual(fs.readdirSync(path.join(dir, 'state', 'vms')), [`${VNE}_a`]);
      assert.deepEqual({ domid: fake.doms.get(a)?.domid, state: fake.doms.get(a)?.state }, { domid: domidA, state: 'running' });
      assert.equal(fake.doms.has(b), false, 'b is not made again');
      assert.deepEqual(fake.calls, [`cap ${a} 0`], 'no domain made again (create, restore); a\'s CPU cap lifted');
    });
  });
});
