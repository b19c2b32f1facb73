/**
 * Restore anywhere through S3, with real VMs: the two-host QEMU cluster of e2e-qemu.test.ts (four
 * TCG guests with byte-checked TCP streams, memory and disk load; test/support/qemu-vne.ts), its
 * store a bucket on a real Ceph RADOS Gateway (test/support/cluster-store.ts, kind 's3': the
 * coordinator and both agents name the same { "s3": {...} } store, no shared directory).
 *
 *   - a snapshot under load goes into the bucket; no stream breaks;
 *   - the VNE is restored with the placement swapped (every VM onto the host that never held it),
 *     so every image and disk is read from S3 by a host that did not write it; every stream
 *     continues with no gap, duplicate or corrupt byte, every disk agrees with its memory;
 *   - nothing of the snapshot's memory or channel state is on the machines' disks: the store
 *     directory is empty, and no file in the cluster's directory or the QEMU driver's work
 *     directory is a copy of one of those artefacts. (A restored VM's disk is local by design:
 *     the VM runs on it.)
 *
 * On demand, like e2e-qemu: VNSNAP_E2E_QEMU=1 (`npm run test:e2e-qemu` runs it too), as root, with
 * the Ceph packages installed (skipped with the reason otherwise).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import type { GuestImage, GuestStatus } from '../guest/qemu-guest';
import { qemuE2eHooks } from '../support/qemu-e2e-hooks';
import { type CatalogSnapshot, type Cluster, type StreamEvent } from '../support/cluster';
import { localArtefactCopies } from '../support/cluster-store';
import { sleep } from '../support/wait';
import { allStatuses, checkAfterRestore, E2E_SWAPPED, E2E_VNE, intactProblems, QEMU_WORKDIR, startE2eVne } from '../support/qemu-vne';

const ENABLED = process.env.VNSNAP_E2E_QEMU === '1';

(ENABLED ? describe : describe.skip)('restore anywhere through S3 with QEMU guests: snapshot into a Ceph RGW bucket, restore on the swapped hosts', function () {
  this.timeout(15 * 60_000);
  let c!: Cluster;
  let image: GuestImage;
  let first: Record<string, GuestStatus> = {};
  let snap: CatalogSnapshot | undefined;
  const timings: string[] = [];

  qemuE2eHooks({
    prefix: 'vns3q',
    store: 's3',
    consoles: '/var/tmp/vnsnap-e2e-consoles',
    ready: (cl, img) => ([c, image] = [cl, img]),
    beforeTeardown: () => console.log(timings.map((t) => `      ${t}`).join('\n')),
  });

  it('starts the VNE on the S3-backed cluster; every stream runs', async () => {
    const up = await startE2eVne(c, image);
    first = up.first;
    timings.push(`boot to all streams up: ${(up.bootMs / 1000).toFixed(1)} s`);
  });

  it('snapshots into the bucket under load; nothing breaks; every artefact is in the bucket', async () => {
    const before = await allStatuses();
    const t0 = Date.now();
    const r = await c.cliStream<StreamEvent>(['snapshot', 'create', E2E_VNE, '--mode', 'background', '--description', 's3-e2e-qemu']).done;
    assert.equal(r.code, 0, r.stderr);
    snap = r.events.find((e) => e.done)?.done;
    assert.equal(snap?.state, 'SNAPSHOT_STATE_COMPLETE', snap?.error);
    timings.push(`snapshot ${snap.id} into S3: ${((Date.now() - t0) / 1000).toFixed(1)} s, ${snap.artefacts.length} artefacts, ${(snap.artefacts.reduce((n, a) => n + Number(a.size), 0) / 2 ** 20).toFixed(0)} MiB`);
    assert.deepEqual(await c.completeSnapshotProblems(snap), []);
    const store = await c.openStore();
    assert.deepEqual(await store.list(`snapshots/${snap.id}/`), [...snap.artefacts.map((a) => a.path), snap.manifestPath].sort());
    await sleep(3000); // kept: the window over which every stream must move and none may break
    assert.deepEqual(intactProblems('after the snapshot into S3', before, await allStatuses()), []);
  });

  it('restores onto the swapped placement from S3: streams, disks and memory intact; no artefact on local disk', async () => {
    const s = snap as CatalogSnapshot;
    const t0 = Date.now();
    const r = await c.cliStream<StreamEvent>(['restore', s.id, '--stop-running', ...Object.entries(E2E_SWAPPED).flatMap(([vm, h]) => ['--place', `${vm}=${h}`])]).done;
    assert.equal(r.code, 0, r.stderr);
    timings.push(`restore ${s.id} from S3 onto the swapped hosts: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const vne = await c.cliJson<{ state: string; placement: Record<string, string> }>(['vne', 'show', E2E_VNE]);
    assert.equal(vne.state, 'VNE_STATE_RUNNING');
    assert.deepEqual(vne.placement, E2E_SWAPPED);
    assert.deepEqual(await checkAfterRestore('restored from S3, swapped hosts', first), []);
    assert.deepEqual(fs.readdirSync(c.storeDir), []);
    const notDisks = s.artefacts.filter((a) => a.kind !== 'ARTEFACT_KIND_DISK');
    assert.deepEqual([...localArtefactCopies(c.dir, notDisks), ...(fs.existsSync(QEMU_WORKDIR) ? localArtefactCopies(QEMU_WORKDIR, notDisks) : [])], []);
  });
});
