/**
 * Issue 4, end to end with real VMs: the coordinator and one agent per namespaced host
 * (`"drivers": ["qemu"]`, test/support/cluster.ts) run four TCG guests (the test guest of
 * docs/guest.md), two per host, joined by the agents' switches and the Geneve overlay. The
 * guests run checked TCP streams to a guest on the other host and to one on the same host, plus
 * memory and disk load (vnguest). Everything is driven through the `vnsnap` CLI:
 *
 *   - a snapshot in each mode (background, precopy) under that load; the VNE keeps running and
 *     no stream breaks;
 *   - restore (`--stop-running` kills the running VMs first), then every stream continues with
 *     no gap, duplicate or corrupt byte (vnguest: errors 0, no reconnect, same nonce), every disk
 *     agrees with its memory and the memory load checks out;
 *   - restore onto the swapped placement (`--place`: every VM on the other host), checked again;
 *   - VNSNAP_E2E_CYCLES=N more snapshot/restore cycles (alternating modes and placements).
 *
 * About 3 minutes here (2.6 min with VNSNAP_E2E_CYCLES=2), but four TCG guests load the 2-core
 * machine fully and, under other tests' load, a guest once died while booting (QEMU exited,
 * code 0, before the streams came up): so it runs only with VNSNAP_E2E_QEMU=1
 * (`npm run test:e2e-qemu`), as root. On failure the guests' consoles are saved to
 * /var/tmp/vnsnap-e2e-consoles/. Guest status is read over each VM's
 * virtio-serial status channel (`channel.sock` in the QEMU driver's instance directory).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { GuestImage, GuestStatus } from '../guest/qemu-guest';
import { qemuE2eHooks } from '../support/qemu-e2e-hooks';
import { Cluster, type CatalogSnapshot } from '../support/cluster';
import { sleep } from '../support/wait';
import { allStatuses, checkAfterRestore, E2E_HOME, E2E_SWAPPED, E2E_VNE, intactProblems, startE2eVne } from '../support/qemu-vne';

const ENABLED = process.env.VNSNAP_E2E_QEMU === '1';
const CYCLES = Number(process.env.VNSNAP_E2E_CYCLES ?? '0');

interface SnapshotEvent {
  state?: string;
  note?: string;
  done?: CatalogSnapshot;
}

(ENABLED ? describe : describe.skip)('end to end with QEMU guests: 2 hosts, 4 TCG guests, streams + memory + disk load, snapshot/restore through the CLI', function () {
  this.timeout(15 * 60_000);
  // Made in before(): a Cluster makes its directory when constructed, and the body of a skipped
  // describe still runs (that left an empty /tmp/vne2q-* behind on every `npm test`).
  let c!: Cluster;
  let image: GuestImage;
  let first: Record<string, GuestStatus> = {};
  const snaps: Record<string, CatalogSnapshot> = {};
  const timings: string[] = [];
  let cyclesPassed = 0;

  qemuE2eHooks({
    prefix: 'vne2q',
    consoles: '/var/tmp/vnsnap-e2e-consoles',
    ready: (cl, img) => {
      c = cl;
      image = img;
    },
    beforeTeardown: () => {
      if (timings.length) console.log(`      ${timings.join('\n      ')}`);
      if (CYCLES) console.log(`      extra cycles passed: ${cyclesPassed}/${CYCLES}`);
    },
  });

  async function snapshot(mode: 'background' | 'precopy'): Promise<CatalogSnapshot> {
    const before = await allStatuses();
    const t0 = Date.now();
    const r = await c.cliStream<SnapshotEvent>(['snapshot', 'create', E2E_VNE, '--mode', mode, '--description', `e2e-qemu ${mode}`]).done;
    assert.equal(r.code, 0, r.stderr);
    const done = r.events[r.events.length - 1]?.done;
    assert.ok(done, 'the stream ends with the final record');
    assert.equal(done.state, 'SNAPSHOT_STATE_COMPLETE', done.error);
    assert.deepEqual(await c.completeSnapshotProblems(done), []);
    const pauses = done.vms.map((v) => v.pauseMs).sort((x, y) => x - y);
    timings.push(`${done.id} (${mode}): ${((Date.now() - t0) / 1000).toFixed(1)} s, pauses ${pauses.map((x) => x.toFixed(0)).join('/')} ms, ${done.vms.reduce((n, v) => n + v.channelFrames, 0)} frames in flight recorded`);
    // The VNE keeps running and no stream broke. Kept: the sleep is the observation window over
    // which every stream must move and none may break.
    await sleep(3000);
    assert.deepEqual(intactProblems(`after the ${mode} snapshot`, before, await allStatuses()), []);
    return done;
  }

  async function restore(s: CatalogSnapshot, place: Record<string, string> | undefined, label: string, beside = false): Promise<void> {
    const t0 = Date.now();
    const args = ['restore', s.id, '--stop-running', ...Object.entries(place ?? {}).flatMap(([vm, h]) => ['--place', `${vm}=${h}`])];
    const r = await c.cliStream<SnapshotEvent>(args).done;
    assert.equal(r.code, 0, r.stderr);
    // Over the running VNE, in place or moved: loaded beside the running VMs, then swapped (no validation read).
    const notes = r.events.flatMap((e) => (e.note ? [e.note] : []));
    if (beside) assert.deepEqual([notes.some((n) => n.startsWith('restore: loading 4 VMs beside the running ones')), notes.some((n) => n.startsWith('restore: validating'))], [true, false], notes.join('\n'));
    const ms = Date.now() - t0;
    const vne = await c.cliJson<{ state: string; placement: Record<string, string> }>(['vne', 'show', E2E_VNE]);
    assert.equal(vne.state, 'VNE_STATE_RUNNING');
    if (place) assert.deepEqual(vne.placement, place);
    assert.deepEqual(await checkAfterRestore(label, first), []);
    timings.push(`restore ${s.id} (${label}): ${(ms / 1000).toFixed(1)} s`);
  }

  it('defines and starts the VNE; all five streams run (cross-host and same-host), with memory and disk load', async () => {
    const up = await startE2eVne(c, image);
    first = up.first;
    timings.push(`boot to all streams up: ${(up.bootMs / 1000).toFixed(1)} s`);
    await sleep(2000); // kept: the window over which every stream must move and none break
    assert.deepEqual(intactProblems('running', first, await allStatuses()), []);
  });

  it('snapshots in background mode under load; nothing breaks', async () => {
    snaps.background = await snapshot('background');
  });

  it('snapshots in precopy mode under load; nothing breaks', async () => {
    snaps.precopy = await snapshot('precopy');
  });

  it('restores the precopy snapshot over the running VNE: every stream, disk and memory continues intact', async () => {
    await restore(snaps.precopy as CatalogSnapshot, undefined, 'precopy, same hosts', true);
  });

  it('a restore over the running VNE whose memory image is damaged fails while loading beside: the running VMs and every TCP stream go on untouched', async () => {
    const s = snaps.background as CatalogSnapshot;
    const mem = s.artefacts.find((a) => a.kind === 'ARTEFACT_KIND_MEMORY');
    assert.ok(mem);
    const before = await allStatuses();
    const vneBefore = await c.cliJson<{ generation: number; epoch: number }>(['vne', 'show', E2E_VNE]);
    const undo = await c.tamperChunk(mem.path, (b) => (b[100] = (b[100] as number) ^ 1));
    try {
      const r = await c.cliStream<SnapshotEvent>(['restore', s.id, '--stop-running']).done;
      assert.notEqual(r.code, 0, 'the damaged image is refused');
    } finally {
      await undo();
    }
    const vne = await c.cliJson<{ state: string; generation: number; epoch: number }>(['vne', 'show', E2E_VNE]);
    assert.deepEqual([vne.state, vne.generation, vne.epoch], ['VNE_STATE_RUNNING', vneBefore.generation, vneBefore.epoch]);
    // Every running VM's disk directory is back in place; nothing waits in .beside-running/.
    for (const host of ['h1', 'h2']) {
      const disks = path.join(c.dir, 'state', host, 'disks');
      assert.deepEqual(fs.existsSync(path.join(disks, '.beside-running')) ? fs.readdirSync(path.join(disks, '.beside-running')) : [], [], `${host}: nothing left beside`);
      assert.deepEqual(fs.readdirSync(disks).filter((d) => !d.startsWith('.')).length, 2, `${host}: its two VMs' disk directories`);
    }
    // Kept: the sleep is the observation window over which every stream must move and none may break.
    await sleep(3000);
    assert.deepEqual(intactProblems('after a restore refused while loading beside', before, await allStatuses()), []);
  });

  it('restores the background snapshot onto the swapped placement (every VM on the other host): intact', async () => {
    await restore(snaps.background as CatalogSnapshot, E2E_SWAPPED, 'background, swapped hosts', true);
  });

  it(`repeats snapshot/restore cycles (VNSNAP_E2E_CYCLES=${CYCLES})`, async () => {
    for (let i = 0; i < CYCLES; i++) {
      const mode = i % 2 === 0 ? 'precopy' : 'background';
      const s = await snapshot(mode);
      await restore(s, i % 2 === 0 ? E2E_HOME : E2E_SWAPPED, `cycle ${i + 1} (${mode})`, true);
      cyclesPassed++;
    }
  });
});
