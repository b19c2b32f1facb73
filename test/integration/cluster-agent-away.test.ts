/**
 * Issue 12, the coordinator's side, on namespaced hosts (test/support/cluster.ts): the real
 * coordinator and two real agents (sim driver), driven through the `vnsnap` CLI.
 *
 *   - h2 cut off from the coordinator (nftables drops its control traffic; its agent and VMs run
 *     on, as after an agent restart that kept its VMs): the VNE reads DEGRADED with b
 *     unmanaged, a snapshot is refused naming h2; healed, h2 registers again reporting b and the
 *     VNE is RUNNING by itself; a snapshot completes.
 *   - h2's agent SIGKILLed: DEGRADED meanwhile; started again without its VM (the sim VM died
 *     with the process), the VNE is FAILED and b reads dead, also after a coordinator restart.
 *   - the coordinator restarted while h2 is cut off: DEGRADED once dead_after_ms passed since its
 *     start without h2; healed, RUNNING by itself.
 *   - h2 lost with b running: restore with --place-lost h1 puts b on h1 and fences h2's b; when
 *     h2 comes back (still running the old b), its b is stopped, the VNE stays RUNNING, every VM
 *     runs exactly once.
 *   - `vne stop` while h2 is cut off: a stops, h2's b is fenced, the VNE is DEFINED and the CLI
 *     says which VM is left; started again with b moved to h1 while the old b still runs on h2:
 *     a new generation; healed, h2's old b is stopped, the VNE stays RUNNING.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cluster, vmStatusLines as status, type CatalogSnapshot, type StreamEvent, type VneView } from '../support/cluster';
import { readStates } from '../sim/checks';
import { until } from '../support/wait';

const VNE = 'away';
const VMS = ['a', 'b'];
const HOST: Record<string, string> = { a: 'h1', b: 'h2' };

describe('cluster: an agent away and back, a lost host (coordinator side)', function () {
  this.timeout(240_000);
  const c = new Cluster({ prefix: 'vnaw', hosts: ['h1', 'h2'], heartbeatIntervalMs: 500, deadAfterMs: 3000 });
  let baseline: CatalogSnapshot;

  const show = (): Promise<VneView> => c.cliJson<VneView>(['vne', 'show', VNE]);
  const stateIs = (s: string, ms = 30_000) => until(`VNE ${VNE} ${s}`, async () => (await show()).state === s, { timeoutMs: ms, everyMs: 200 });

  const snapshot = (): Promise<CatalogSnapshot> => c.snapshotComplete(VNE);

  /** Healed h2 registers again reporting its old b: the coordinator stops it; the VNE RUNNING, a and b on h1. */
  async function h2StopsItsFencedB(): Promise<void> {
    await until('h2 stopped its fenced b', async () => (await c.vms('h2')).every((x) => x.vne !== VNE), { timeoutMs: 60_000, everyMs: 200 });
    await until('the fenced instance marked stopped', async () => (await show()).fenced.every((f) => f.stopped), { timeoutMs: 10_000, everyMs: 200 });
    const v = await show();
    assert.equal(v.state, 'VNE_STATE_RUNNING');
    assert.deepEqual(status(v), ['a@h1:reachable:VM_RUN_STATE_RUNNING', 'b@h1:reachable:VM_RUN_STATE_RUNNING']);
    await trafficFlows();
    assert.deepEqual(await c.consistencyProblems(VNE), []);
  }

  async function trafficFlows(): Promise<void> {
    const since = await readStates(c, VNE, VMS);
    await until('traffic both ways', async () => {
      const st = await readStates(c, VNE, VMS);
      return VMS.every((r) => VMS.every((s) => s === r || (st[r]?.expected[s] ?? 0) > (since[r]?.expected[s] ?? 0) + 10));
    }, { everyMs: 100, timeoutMs: 30_000 });
  }

  before(async function () {
    this.timeout(60_000);
    await c.start();
    const f = path.join(c.dir, 'away.json');
    fs.writeFileSync(
      f,
      JSON.stringify({
        name: VNE,
        vni: 4012,
        vms: VMS.map((name, i) => ({ name, host: HOST[name], macs: [`52:54:00:f5:00:0${i + 1}`], driver: { sim: { memory_mib: 4, dirty_rate_mib_s: 1, frame_rate_hz: 40, peers: VMS.filter((x) => x !== name) } } })),
      }),
    );
    await c.cliJson(['vne', 'define', f]);
    await c.cliJson(['vne', 'start', VNE]);
    await trafficFlows();
    baseline = await snapshot();
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(c.logTail(40));
  });

  after(async () => {
    await c.destroy();
  });

  it('h2 cut off from the coordinator: DEGRADED, b unmanaged, snapshot refused naming h2; healed: RUNNING by itself', async () => {
    c.partition('h2', true);
    try {
      await stateIs('VNE_STATE_DEGRADED', 15_000);
      const v = await show();
      assert.deepEqual(status(v), ['a@h1:reachable:VM_RUN_STATE_RUNNING', 'b@h2:unreachable:VM_RUN_STATE_UNMANAGED']);
      assert.equal(v.stateReason, 'agent h2 (host of b) disconnected: its VMs are unmanaged; snapshots and restores are refused until it is back');
      const refused = await c.cli(['snapshot', 'create', VNE]);
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, /VNE "away" is degraded: agent h2 \(host of b\) is disconnected; snapshots are refused until it is back; nothing was snapshotted/);
      // b runs on meanwhile (its agent is alive, only its control link is cut).
      assert.equal((await c.vms('h2')).find((v) => v.vm === 'b')?.state?.status, 'running');
    } finally {
      c.partition('h2', false);
    }
    await stateIs('VNE_STATE_RUNNING', 60_000);
    assert.deepEqual(status(await show()), ['a@h1:reachable:VM_RUN_STATE_RUNNING', 'b@h2:reachable:VM_RUN_STATE_RUNNING']);
    await trafficFlows();
    await snapshot();
    assert.deepEqual(await c.consistencyProblems(VNE), []);
  });

  it("h2's agent SIGKILLed: DEGRADED meanwhile; back without its VM: FAILED, b dead (also after a coordinator restart); a restore recovers", async () => {
    await c.kill('h2');
    await stateIs('VNE_STATE_DEGRADED', 15_000);
    await c.startAgent('h2');
    await stateIs('VNE_STATE_FAILED', 15_000);
    const v = await show();
    assert.deepEqual(status(v), ['a@h1:reachable:VM_RUN_STATE_RUNNING', 'b@h2:reachable:VM_RUN_STATE_DEAD']);
    assert.equal(v.stateReason, 'VM b of VNE away died while agent h2 was away (it registered without it): restore a snapshot or stop and start the VNE');
    const text = await c.cli(['vne', 'show', VNE]);
    assert.match(text.stdout, /^reason: VM b of VNE away died while agent h2 was away/m);
    assert.match(text.stdout, /^b +h2 +h2 +yes +DEAD /m);
    // The coordinator restarts: b is still known dead (h2 will not report it again).
    await c.kill('coordinator');
    await c.startCoordinator();
    await c.waitConnected(['h1', 'h2']);
    const again = await show();
    assert.equal(again.state, 'VNE_STATE_FAILED');
    assert.deepEqual(status(again), ['a@h1:reachable:VM_RUN_STATE_RUNNING', 'b@h2:reachable:VM_RUN_STATE_DEAD']);
    const r = await c.cliStream<StreamEvent>(['restore', baseline.id, '--stop-running']).done;
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(status(await show()), ['a@h1:reachable:VM_RUN_STATE_RUNNING', 'b@h2:reachable:VM_RUN_STATE_RUNNING']);
    await trafficFlows();
  });

  it('the coordinator restarted while h2 is cut off: DEGRADED dead_after_ms after its start; healed: RUNNING by itself', async () => {
    c.partition('h2', true);
    try {
      await c.kill('coordinator');
      await c.startCoordinator();
      await c.waitConnected(['h1']);
      await stateIs('VNE_STATE_DEGRADED', 15_000);
      assert.deepEqual(status(await show()), ['a@h1:reachable:VM_RUN_STATE_RUNNING', 'b@h2:unreachable:VM_RUN_STATE_UNMANAGED']);
    } finally {
      c.partition('h2', false);
    }
    await stateIs('VNE_STATE_RUNNING', 60_000);
    await trafficFlows();
  });

  it('h2 lost: restore --place-lost h1 fences its b; h2 back with the old b: stopped, the VNE stays RUNNING', async () => {
    const last = await snapshot();
    const before = await show();
    c.partition('h2', true);
    try {
      await stateIs('VNE_STATE_DEGRADED', 15_000);
      const refused = await c.cli(['restore', last.id, '--stop-running']);
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, /VNE "away" is degraded: agent h2 \(host of b\) is disconnected; restores in place are refused until it is back, or place its VMs elsewhere \(--place b=HOST, or --place-lost HOST\) to fence them; nothing was restored/);
      const r = await c.cliStream<StreamEvent>(['restore', last.id, '--stop-running', '--place-lost', 'h1']).done;
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(
        r.events.flatMap((e) => (e.note?.includes('fenced') ? [e.note] : [])),
        [`restore: fenced b on h2 (host unreachable): never to run again under generation ${before.generation}; stopped when the host returns`],
      );
      const v = await show();
      assert.equal(v.state, 'VNE_STATE_RUNNING');
      assert.deepEqual(v.placement, { a: 'h1', b: 'h1' });
      assert.deepEqual(v.fenced.map((f) => `${f.vm}@${f.agent}/${f.generation}:${f.stopped}`), [`b@h2/${before.generation}:false`]);
      // The old b still runs on the cut-off h2: its frames carry the old generation and are dropped.
      assert.equal((await c.vms('h2')).find((x) => x.vm === 'b')?.state?.status, 'running');
      assert.deepEqual((await c.vneVms(VNE)).get('b')?.map((x) => x.host).sort(), ['h1', 'h2']);
    } finally {
      c.partition('h2', false);
    }
    await h2StopsItsFencedB();
  });

  it("vne stop while h2 is cut off: a stopped, b fenced, VNE DEFINED saying so; started with b on h1: a new generation; healed: h2's old b stopped", async () => {
    // b home on h2 again (the previous case left it on h1).
    await c.cliJson(['vne', 'stop', VNE]);
    await c.cliJson(['vne', 'start', VNE]);
    await trafficFlows();
    const g = (await show()).generation;
    c.partition('h2', true);
    try {
      await stateIs('VNE_STATE_DEGRADED', 15_000);
      const stopped = await c.cli(['vne', 'stop', VNE]);
      assert.deepEqual(stopped, { code: 0, stdout: 'stopped VNE away\nstopped without VM b on h2 (host unreachable): fenced, it is stopped when its host returns\n', stderr: '' });
      let v = await show();
      assert.equal(v.state, 'VNE_STATE_DEFINED');
      assert.equal(v.stateReason, 'stopped without VM b on h2 (host unreachable): fenced, it is stopped when its host returns');
      assert.deepEqual(status(v), ['a@h1:reachable:VM_RUN_STATE_STOPPED', 'b@h2:unreachable:VM_RUN_STATE_STOPPED']);
      assert.deepEqual(v.fenced.filter((f) => !f.stopped).map((f) => `${f.vm}@${f.agent}/${f.generation}`), [`b@h2/${g}`]);
      assert.deepEqual((await c.vms('h1')).filter((x) => x.vne === VNE), []);
      assert.equal((await c.vms('h2')).find((x) => x.vne === VNE && x.vm === 'b')?.state?.status, 'running');
      // b defined on h1 now; started while its old instance still runs on the cut-off h2.
      const f = path.join(c.dir, 'away-h1.json');
      const def = JSON.parse(fs.readFileSync(path.join(c.dir, 'away.json'), 'utf8')) as { vms: { name: string; host: string }[] };
      for (const vm of def.vms) vm.host = 'h1';
      fs.writeFileSync(f, JSON.stringify(def));
      await c.cliJson(['vne', 'update', f]);
      await c.cliJson(['vne', 'start', VNE]);
      v = await show();
      assert.equal(v.state, 'VNE_STATE_RUNNING');
      assert.equal(v.generation, g + 1);
      assert.deepEqual(status(v), ['a@h1:reachable:VM_RUN_STATE_RUNNING', 'b@h1:reachable:VM_RUN_STATE_RUNNING']);
      // Two instances of b, under generations g (cut off, fenced) and g + 1.
      assert.deepEqual((await c.vneVms(VNE)).get('b')?.map((x) => x.host).sort(), ['h1', 'h2']);
    } finally {
      c.partition('h2', false);
    }
    await h2StopsItsFencedB();
  });
});
