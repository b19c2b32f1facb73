/**
 * The in-kernel data path end to end: the four test guests of e2e-qemu.test.ts (two namespaced
 * hosts, checked TCP streams across the overlay and on one host, memory and disk load) with every
 * NIC in mode tap-bpf and the agents' `dataPath` on, so the guests' frames are carried by the
 * kernel (vn_tx → VXLAN-GBP → vn_rx, or TAP to TAP on one host) and reach the switches only
 * when the rules say so (docs/nic-offloads.md, "The in-kernel data path"):
 *
 *   - the streams are byte-exact (vnguest: no error, gap or duplicate);
 *   - the kernel carries them: over a window each host's VXLAN device receives hundreds of
 *     packets while the switch's port of guest a — which sends one stream across the hosts and
 *     one on its own host — reads next to nothing (its ARP, punted; the window's figures are
 *     logged);
 *   - a background snapshot under the running streams completes, and a restore of it keeps
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

const ENABLED = process.env.VNSNAP_E2E_QEMU === '1';

(ENABLED ? describe : describe.skip)('end to end with QEMU guests on tap-bpf NICs and the in-kernel data path on: streams in the kernel, background snapshot + restore intact', function () {
  this.timeout(15 * 60_000);
  let c!: Cluster;
  let image: GuestImage;
  let first: Record<string, GuestStatus> = {};

  qemuE2eHooks({
    prefix: 'vnbfq',
    consoles: '/var/tmp/vnsnap-tap-bpf-consoles',
    dataPath: true,
    ready: (cl, img) => {
      c = cl;
      image = img;
    },
  });

  const rxFrames = (host: string, vm: string): number => portRxFrames(c, host, vm);

  /** Packets the data path's VXLAN device of `host` received (agent/bpf-dp/rx-side.ts: vx<hash>). */
  function vxlanRx(host: string): number {
    const links = JSON.parse(c.topo.exec(host, 'ip', ['-s', '-j', '-d', 'link', 'show', 'type', 'vxlan'])) as { ifname: string; stats64: { rx: { packets: number } } }[];
    const vx = links.filter((l) => /^vx[0-9a-f]{10}$/.test(l.ifname));
    assert.equal(vx.length, 1, `${host}: one data path VXLAN device, got ${links.map((l) => l.ifname).join(', ')}`);
    return (vx[0] as (typeof vx)[0]).stats64.rx.packets;
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

  it('starts four guests on tap-bpf NICs with the data path on; every stream runs byte-exact, carried in the kernel', async () => {
    const def = await c.cliJson<{ state: string }>(['vne', 'define', writeVneFile(c.dir, image, { nic: 'tap-bpf', rateKiB: 2048 })]);
    assert.equal(def.state, 'VNE_STATE_DEFINED');
    const started = await c.cliJson<{ vne: { state: string } }>(['vne', 'start', E2E_VNE]);
    assert.equal(started.vne.state, 'VNE_STATE_RUNNING');
    first = (await until('every stream connected and moving', async () => {
      const st = await allStatuses();
      return streamsUp(st) ? st : undefined;
    }, { timeoutMs: 180_000, everyMs: 2000 })) as Record<string, GuestStatus>;
    await carriedInKernel('running');
    assert.deepEqual(intactProblems('running', first, await allStatuses()), []);
    assert.equal(E2E_VMS.length, 4);
  });

  it('a background snapshot under the streams and a restore keep every stream, disk and memory intact; the kernel carries again', async () => {
    assert.deepEqual(await backgroundSnapshotAndRestore(c, first), []);
    await carriedInKernel('after the restore');
  });
});
