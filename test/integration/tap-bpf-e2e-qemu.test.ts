/**
 * The in-kernel data path end to end: the four test guests of e2e-qemu.test.ts (two namespaced
 * hosts, checked TCP streams across the overlay and on one host, memory and disk load) as an
 * operator gets them: agents with no `dataPath` key (the data path on where it can run) and VM
 * specs that name no nic, so every NIC is tap-bpf and the guests' frames are carried by the
 * kernel (vn_tx → VXLAN-GBP → vn_rx, or TAP to TAP on one host) and reach the switches only
 * when the rules say so (docs/nic-offloads.md, "The in-kernel data path"):
 *
 *   - every VM runs nic tap-bpf;
 *   - the streams are byte-exact (vnguest: no error, gap or duplicate);
 *   - the kernel carries them: over a window each host's VXLAN device receives hundreds of
 *     packets while the switch's port of guest a — which sends one stream across the hosts and
 *     one on its own host — reads next to nothing (its ARP, punted; the window's figures are
 *     logged);
 *   - h1's agent killed (SIGKILL) and started again while the guests run: it adopts them (same
 *     QEMU processes), the streams go on intact, and the kernel carries them again — the new
 *     agent re-attaches its data path to the adopted TAPs (the window's figures logged);
 *   - after that restart a background snapshot under the running streams completes, and a restore of it keeps
 *     every stream, disk and memory intact (the channel state the cut recorded, late frames
 *     punted by vn_rx among it, injected whole), after which the kernel carries the restored
 *     guests' streams again.
 *
 * Minutes of four TCG guests: on demand only (VNSNAP_E2E_QEMU=1), as root, like e2e-qemu.
 */
import { strict as assert } from 'node:assert';
import type { GuestImage, GuestStatus } from '../guest/qemu-guest';
import { qemuE2eHooks } from '../support/qemu-e2e-hooks';
import { Cluster } from '../support/cluster';
import { sleep, until } from '../support/wait';
import { allStatuses, backgroundSnapshotAndRestore, portRxFrames, E2E_VNE, E2E_VMS, intactProblems, streamsUp, writeVneFile } from '../support/qemu-vne';
import { dataPathVxlanRx } from '../support/dp-vxlan';

const ENABLED = process.env.VNSNAP_E2E_QEMU === '1';

(ENABLED ? describe : describe.skip)('end to end with QEMU guests on tap-bpf NICs and the in-kernel data path on: streams in the kernel, background snapshot + restore intact', function () {
  this.timeout(15 * 60_000);
  let c!: Cluster;
  let image: GuestImage;
  let first: Record<string, GuestStatus> = {};

  qemuE2eHooks({
    prefix: 'vnbfq',
    consoles: '/var/tmp/vnsnap-tap-bpf-consoles',
    ready: (cl, img) => {
      c = cl;
      image = img;
    },
  });

  const rxFrames = (host: string, vm: string): number => portRxFrames(c, host, vm);

  /** Packets the data path's VXLAN device of `host` received (agent/bpf-dp/rx-side.ts: vx<hash>). */
  function vxlanRx(host: string): number {
    const n = dataPathVxlanRx(c.topo, host);
    assert.ok(n !== undefined, `${host}: no data path VXLAN device`);
    return n;
  }

  /** Over a window: the kernel carried the streams (both VXLAN devices busy), a's switch port nearly idle. */
  async function carriedInKernel(when: string): Promise<void> {
    const v0 = [vxlanRx('h1'), vxlanRx('h2')];
    const f0 = rxFrames('h1', 'a');
    await sleep(3000); // kept: the observation window over which the counters move
    const v = [vxlanRx('h1') - (v0[0] as number), vxlanRx('h2') - (v0[1] as number)];
    const f = rxFrames('h1', 'a') - f0;
    console.log(`      ${when}: VXLAN packets received h1 ${v[0]}, h2 ${v[1]}; frames a's switch port read ${f}`);
    assert.ok((v[0] as number) >= 100 && (v[1] as number) >= 100, `${when}: the VXLAN devices received ${v.join(' and ')} packets`);
    assert.ok(f <= 20, `${when}: a's switch port read ${f} frames: the kernel did not carry its streams`);
  }

  /** Each VM's QEMU pid and NIC mode, from its agent's /debug/vms. */
  async function qemus(): Promise<Record<string, { pid: number; nic: string }>> {
    const out: Record<string, { pid: number; nic: string }> = {};
    for (const h of ['h1', 'h2']) for (const v of await c.vms(h)) if (v.vne === E2E_VNE) out[v.vm] = v.state as unknown as { pid: number; nic: string };
    return Object.fromEntries(Object.entries(out).map(([vm, q]) => [vm, { pid: q.pid, nic: q.nic }]));
  }

  it('starts four guests whose specs name no nic on agents with the default configuration: tap-bpf, every stream byte-exact, carried in the kernel', async () => {
    const def = await c.cliJson<{ state: string }>(['vne', 'define', writeVneFile(c.dir, image, { rateKiB: 2048 })]);
    assert.equal(def.state, 'VNE_STATE_DEFINED');
    const started = await c.cliJson<{ vne: { state: string } }>(['vne', 'start', E2E_VNE]);
    assert.equal(started.vne.state, 'VNE_STATE_RUNNING');
    first = (await until('every stream connected and moving', async () => {
      const st = await allStatuses();
      return streamsUp(st) ? st : undefined;
    }, { timeoutMs: 180_000, everyMs: 2000 })) as Record<string, GuestStatus>;
    assert.deepEqual(Object.values(await qemus()).map((q) => q.nic), ['tap-bpf', 'tap-bpf', 'tap-bpf', 'tap-bpf']);
    await carriedInKernel('running');
    assert.deepEqual(intactProblems('running', first, await allStatuses()), []);
    assert.equal(E2E_VMS.length, 4);
  });

  it('h1\'s agent killed and started again while the guests run: the same QEMUs adopted, streams intact, the kernel carries them again', async () => {
    const before = await qemus();
    const st0 = await allStatuses();
    await c.kill('h1', 'SIGKILL');
    await c.startAgent('h1');
    await until('h1 adopted a and b', async () => ((await c.vms('h1')).filter((v) => v.vne === E2E_VNE).length === 2 ? true : undefined), { timeoutMs: 30_000, everyMs: 500 });
    assert.deepEqual(await qemus(), before, 'the same QEMU processes, on tap-bpf');
    await until('every stream moves again', async () => {
      const st = await allStatuses();
      return intactProblems('', st0, st).length === 0 ? st : undefined;
    }, { timeoutMs: 60_000, everyMs: 1000 });
    await carriedInKernel('after h1\'s agent restarted');
    assert.deepEqual(intactProblems('across the agent restart', st0, await allStatuses()), []);
  });

  it('after the restart, a background snapshot under the streams and a restore keep every stream, disk and memory intact; the kernel carries again', async () => {
    assert.deepEqual(await backgroundSnapshotAndRestore(c, first), []);
    await carriedInKernel('after the restore');
  });
});
