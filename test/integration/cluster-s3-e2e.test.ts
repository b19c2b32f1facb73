/**
 * Restore anywhere through S3, end to end: the real coordinator and two real agents (sim driver,
 * real switches) on namespaced hosts, the store a bucket on a real Ceph RADOS Gateway
 * (test/support/cluster-store.ts, kind 's3': every agent and the coordinator name the same
 * { "s3": {...} } store; no shared directory). Four sim VMs exchange sequence-numbered frames,
 * two on each host; a snapshot goes into the bucket; the VNE is restored with the placement
 * swapped, each VM onto the host that never held it, so every image is read back from S3 by a
 * host that did not write it. The stream checks of cluster-e2e hold: a consistent cut with every
 * in-flight frame recorded once, and every VM continuing exactly from its snapshot. And nothing
 * of the snapshot is on the machines' disks: the store directory is empty, the bucket holds
 * every artefact. Skipped (with the reason) where the Ceph packages are not installed.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cluster, type CatalogSnapshot, type StreamEvent } from '../support/cluster';
import { localArtefactCopies, s3Unavailable } from '../support/cluster-store';
import { continuityProblems, cutProblems, liveProblems, readStates, recordedFrames, type States } from '../sim/checks';
import { until } from '../support/wait';

const VNE = 'teal';
const VMS = ['a', 'b', 'c', 'd'];
const HOST: Record<string, string> = { a: 'h1', b: 'h1', c: 'h2', d: 'h2' };
const SWAPPED: Record<string, string> = { a: 'h2', b: 'h2', c: 'h1', d: 'h1' };
const MEMORY_MIB = 4;
const MIB: Record<string, number> = Object.fromEntries(VMS.map((v) => [v, MEMORY_MIB]));

/** Files under dir (recursive) with their sizes. */
function filesUnder(dir: string): { file: string; size: number }[] {
  return fs
    .readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .map((f) => path.join(dir, f))
    .map((file) => ({ file, st: fs.statSync(file, { throwIfNoEntry: false }) }))
    .filter((f) => f.st?.isFile() === true)
    .map((f) => ({ file: f.file, size: f.st?.size ?? 0 }));
}

describe('restore anywhere through S3: coordinator + 2 agents, the store a bucket on Ceph RGW (sim VMs)', function () {
  this.timeout(120_000);
  const c = new Cluster({ prefix: 'vns3', hosts: ['h1', 'h2'], store: 's3' });

  before(async function () {
    const why = s3Unavailable();
    if (why) {
      console.log(`      skipped: ${why}`);
      this.skip();
    }
    this.timeout(90_000);
    await c.start();
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(c.logTail(40));
  });

  after(async () => {
    await c.destroy();
  });

  /** Until every VM has sent to and received from every peer `n` frames past `since`. */
  async function progressed(what: string, since: Record<string, { expected: Record<string, number>; sent: Record<string, number> }>, n: number): Promise<void> {
    const past = (st: States, r: string, p: string): boolean => (st[r]?.expected[p] ?? 0) >= (since[r]?.expected[p] ?? 0) + n && (st[r]?.sent[p] ?? 0) >= (since[r]?.sent[p] ?? 0) + n;
    await until(what, async () => {
      const st = await readStates(c, VNE, VMS);
      return VMS.every((r) => VMS.every((p) => p === r || past(st, r, p)));
    }, { timeoutMs: 10_000, everyMs: 100 });
  }

  it('snapshot into the bucket, restore with the placement swapped: streams continue exactly, no artefact on local disk', async () => {
    const vneFile = path.join(c.dir, 'teal.json');
    const vms = VMS.map((name, i) => ({
      name,
      host: HOST[name],
      macs: [`52:54:00:e5:00:0${i + 1}`],
      driver: { sim: { memory_mib: MEMORY_MIB, dirty_rate_mib_s: 1, frame_rate_hz: 40, peers: VMS.filter((x) => x !== name) } },
    }));
    fs.writeFileSync(vneFile, JSON.stringify({ name: VNE, vni: 3005, vms }));
    await c.cliJson(['vne', 'define', vneFile]);
    const started = await c.cliJson<{ vne: { placement: Record<string, string> } }>(['vne', 'start', VNE]);
    assert.deepEqual(started.vne.placement, HOST);
    await progressed('traffic between every pair', Object.fromEntries(VMS.map((v) => [v, { expected: {}, sent: {} }])), 20);

    // The snapshot, into S3: complete, every artefact read back from the bucket, a consistent cut.
    const t0 = Date.now();
    const r = await c.cliStream<StreamEvent>(['snapshot', 'create', VNE]).done;
    assert.equal(r.code, 0, r.stderr);
    const s = r.events.find((e) => e.done)?.done as CatalogSnapshot;
    assert.equal(s.state, 'SNAPSHOT_STATE_COMPLETE', s.error);
    assert.deepEqual(await c.completeSnapshotProblems(s), []);
    const images = await c.imageStates(s, MIB);
    const { problems, inFlight } = cutProblems(images, await c.channelFrames(s), VMS, s.epoch);
    assert.deepEqual(problems, []);
    assert.equal(recordedFrames(s), inFlight);
    const store = await c.openStore();
    assert.deepEqual(await store.list(`snapshots/${s.id}/`), [...s.artefacts.map((a) => a.path), s.manifestPath].sort(), 'the bucket holds every artefact and the manifest');
    console.log(`      ${s.id} into S3: ${Date.now() - t0} ms, ${s.artefacts.length} artefacts, ${inFlight} frames in flight recorded`);

    // Restore with every VM on the host that never held it.
    await progressed('the running VMs past the snapshot', images, 5);
    const t1 = Date.now();
    const rr = await c.cliStream<StreamEvent>(['restore', s.id, '--stop-running', ...Object.entries(SWAPPED).flatMap(([vm, h]) => ['--place', `${vm}=${h}`])]).done;
    assert.equal(rr.code, 0, rr.stderr);
    const note = rr.events.map((e) => e.note ?? '').find((n) => /recorded frames injected/.test(n)) ?? '';
    assert.equal(Number(/(\d+) recorded frames injected/.exec(note)?.[1]), recordedFrames(s), note);
    console.log(`      restored from S3 in ${Date.now() - t1} ms onto ${JSON.stringify(SWAPPED)}`);
    const vne = await c.cliJson<{ placement: Record<string, string>; epoch: number }>(['vne', 'show', VNE]);
    assert.deepEqual(vne.placement, SWAPPED);
    assert.equal(vne.epoch, s.epoch);
    await progressed(`traffic after restoring ${s.id} swapped`, images, 3);
    const live = await liveProblems(c, VNE, VMS);
    assert.deepEqual(live.problems, []);
    assert.deepEqual(continuityProblems(live.states, images, VMS), []);
    assert.deepEqual(await c.consistencyProblems(VNE), []);

    // Nothing of the snapshot on the machines' disks: the store directory is empty, no file in
    // the cluster's directory (catalog, configs, agents' state, logs) is a copy of an artefact,
    // and none is even a quarter as big as one image.
    assert.deepEqual(fs.readdirSync(c.storeDir), []);
    assert.deepEqual(localArtefactCopies(c.dir, s.artefacts), []);
    const image = Math.min(...s.artefacts.filter((a) => a.kind === 'ARTEFACT_KIND_MEMORY').map((a) => a.size));
    const big = filesUnder(c.dir).filter((f) => f.size >= image / 4);
    assert.deepEqual(big, [], `no file of ${image / 4} bytes or more under ${c.dir}`);
  });
});
