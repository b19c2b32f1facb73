/**
 * The operator's store commands end to end, on namespaced hosts (test/support/cluster.ts: the
 * real coordinator and two sim agents as processes, mutual TLS, everything through the `vnsnap`
 * CLI): the bytes each snapshot added in `snapshot list/show`, `snapshot verify` (ok, then a
 * damaged artefact named, exit 7, the result kept in `snapshot show`), the roles (a viewer may
 * read the stats but not verify nor collect), `store stats` and `store gc` on the agents' store,
 * and the disaster recovery of the catalog: two snapshots, the coordinator stopped, its catalog
 * deleted, `vnsnap-coordinator --rebuild-catalog`, the coordinator started again, and a restore
 * from the rebuilt catalog whose VMs continue exactly from the snapshot.
 */
import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cluster, type CatalogSnapshot, type CliResult } from '../support/cluster';
import { continuityProblems, liveProblems, readStates } from '../sim/checks';
import { until } from '../support/wait';
import { childOutput } from '../support/child-output';
import type { TlsFiles } from '../support/pki';
import { decodeIndex, type ChunkRef } from '../../proto/store/cas-index';
import { chunkObject } from '../../proto/store/pack-format';

const VNE = 'teal';
const VMS = ['a', 'b'];
const HOST: Record<string, string> = { a: 'h1', b: 'h2' };
const MEMORY_MIB = 4;
const MIB: Record<string, number> = Object.fromEntries(VMS.map((v) => [v, MEMORY_MIB]));
const DIST = path.resolve(__dirname, '../..');
const CLI = path.join(DIST, 'coordinator/cli/main.js');
const COORDINATOR = path.join(DIST, 'coordinator/main.js');

/** Strip what changes from run to run: times, durations, sizes. */
const norm = (s: string): string =>
  s
    .replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ/g, '<time>')
    .replace(/\d+(\.\d+)? (B|KiB|MiB|GiB)\b/g, '<size>')
    .replace(/\d+(\.\d+)? m?s\b/g, '<ms>');

describe('store commands on namespaced hosts: bytes added, snapshot verify, store stats/gc, --rebuild-catalog', function () {
  this.timeout(240_000);
  const c = new Cluster({ prefix: 'vnso', hosts: ['h1', 'h2'] });
  const snaps: CatalogSnapshot[] = [];

  /** The CLI as `who` (the cluster's cli() presents the operator). */
  function cliAs(who: TlsFiles, args: readonly string[]): Promise<CliResult> {
    return childOutput(spawn('ip', ['netns', 'exec', c.topo.ns('ul'), process.execPath, CLI, ...args, '--coordinator', c.coordinatorAddress, ...c.tlsArgs(who)], { stdio: ['ignore', 'pipe', 'pipe'] }));
  }


  before(async function () {
    this.timeout(60_000);
    await c.start();
    const f = path.join(c.dir, 'teal.json');
    const vms = VMS.map((name, i) => ({ name, host: HOST[name], macs: [`52:54:00:5e:00:0${i + 1}`], driver: { sim: { memory_mib: MEMORY_MIB, dirty_rate_mib_s: 2, frame_rate_hz: 40, peers: VMS.filter((x) => x !== name) } } }));
    fs.writeFileSync(f, JSON.stringify({ name: VNE, vni: 5005, vms }));
    await c.cliJson(['vne', 'define', f]);
    await c.cliJson(['vne', 'start', VNE]);
    await until('traffic both ways', async () => {
      const st = await readStates(c, VNE, VMS);
      return (st.a?.expected.b ?? 0) > 10 && (st.b?.expected.a ?? 0) > 10;
    }, { everyMs: 100 });
    snaps.push(await c.snapshotComplete(VNE), await c.snapshotComplete(VNE));
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(c.logTail(40));
  });

  after(async () => {
    await c.destroy();
  });

  it('snapshot list and show give the bytes each snapshot added to the store beside its size', async () => {
    const [s1] = snaps as [CatalogSnapshot];
    const list = await c.cli(['snapshot', 'list', '--vne', VNE]);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout.split('\n')[0] as string, /^ID +VNE +EPOCH +MODE +STATE +CREATED +MAX PAUSE +SIZE +ADDED +DESCRIPTION$/);
    const j = await c.cliJson<{ snapshots: { id: string; sizeBytes: number; storedBytes: number }[] }>(['snapshot', 'list', '--vne', VNE]);
    const first = j.snapshots.find((s) => s.id === s1.id);
    const artefactBytes = s1.artefacts.reduce((n, a) => n + a.size, 0);
    // The first snapshot of a content-addressed store adds its chunks: at most its size.
    assert.ok(Number(first?.storedBytes) > 0 && Number(first?.storedBytes) <= artefactBytes, `exact bytes added, in --json: ${first?.storedBytes} of ${artefactBytes}`);
    const show = await c.cli(['snapshot', 'show', s1.id]);
    assert.match(show.stdout, /, size \d+\.\d (KiB|MiB), added \d+\.\d (KiB|MiB) to the store, \d+ artefacts\n/);
  });

  it('snapshot verify: ok with progress, kept in snapshot show; a damaged artefact is named, exit 7, FAILED kept', async () => {
    const s2 = snaps[1] as CatalogSnapshot;
    const ok = await c.cli(['snapshot', 'verify', s2.id]);
    assert.equal(ok.code, 0, ok.stderr);
    const lines = norm(ok.stdout).split('\n');
    assert.deepEqual(lines.filter((l) => / note |store  VERIFY/.test(l)).map((l) => l.replace(/^\+\S+\s+/, '')), [
      `note  verifying ${s2.artefacts.length} artefacts (<size>) in the store`,
      'store  VERIFY',
      'store  VERIFY done (<size>/<size>)',
      `note  verified ${s2.artefacts.length} artefacts (<size>) in <ms>: ok`,
    ]);
    assert.equal(lines.slice(-3).join('\n'), `\nsnapshot ${s2.id}: ok, ${s2.artefacts.length} artefacts (<size>) re-read and checked\n`);
    assert.match((await c.cli(['snapshot', 'show', s2.id])).stdout, /\n {2}verified: ok at \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\n$/);

    const mem = s2.artefacts.find((a) => a.kind === 'ARTEFACT_KIND_MEMORY') as { path: string };
    const idx = decodeIndex(fs.readFileSync(path.join(c.storeDir, 'artefacts', `${mem.path}.idx`)), mem.path);
    const sha = idx.chunks[0]?.sha256 as string;
    const at = chunkObject(idx.chunks[0] as ChunkRef); // in its pack
    const file = path.join(c.storeDir, at.key);
    const good = fs.readFileSync(file);
    const bad = Buffer.from(good);
    bad.writeUInt8(bad.readUInt8(at.offset + 64) ^ 0x40, at.offset + 64);
    fs.writeFileSync(file, bad);
    const named = `artefact ${mem.path.replace(/\./g, '\\.')}: chunk 1 of ${idx.chunks.length} \\(${sha}\\) is corrupt`;
    try {
      const r = await c.cli(['snapshot', 'verify', s2.id]);
      assert.equal(r.code, 7, r.stderr);
      assert.match(r.stderr, new RegExp(`^vnsnap: snapshot ${s2.id} FAILED verification: ${named}`));
      const j = await c.cli(['snapshot', 'verify', s2.id, '--json']);
      assert.equal(j.code, 7);
      const last = JSON.parse(j.stdout.trim().split('\n').pop() as string) as { done: { verifyProblems: string[]; verifiedUnixMs: number } };
      assert.equal(last.done.verifyProblems.length, 1);
      assert.ok(last.done.verifiedUnixMs > 0);
      assert.deepEqual(JSON.parse(j.stderr).error.exitCode, 7);
      const show = await c.cli(['snapshot', 'show', s2.id]);
      assert.match(show.stdout, new RegExp(`\n {2}verified: FAILED at \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\dZ: ${named}`));
    } finally {
      fs.writeFileSync(file, good);
    }
    assert.equal((await c.cli(['snapshot', 'verify', s2.id])).code, 0, 'whole again');
    const missing = await c.cli(['snapshot', 'verify', 'teal-99-none']);
    assert.deepEqual([missing.code, missing.stderr], [3, 'vnsnap: snapshot "teal-99-none" does not exist\n']);
  });

  it('store stats (viewer may) and store gc (operator only)', async () => {
    const viewer = c.pki.client('viewer', 'viewer');
    const st = await cliAs(viewer, ['store', 'stats']);
    assert.equal(st.code, 0, st.stderr);
    assert.match(norm(st.stdout), new RegExp(`^store        local ${c.storeDir}\nstored       <size>\nchunks       \\d+\nartefacts    ${snaps.reduce((n, s) => n + s.artefacts.length + 1, 0)}\nlogical      <size>\ndedup ratio  \\d+\\.\\d\\d\n$`));
    const j = JSON.parse((await cliAs(viewer, ['store', 'stats', '--json'])).stdout) as { kind: string; storedBytes: number; logicalBytes: number; dedupRatio: number; chunks: number };
    assert.equal(j.kind, 'local');
    assert.ok(j.chunks > 0);
    assert.equal(j.dedupRatio, j.logicalBytes / j.storedBytes);
    const denied = await cliAs(viewer, ['snapshot', 'verify', (snaps[0] as CatalogSnapshot).id]);
    assert.deepEqual([denied.code, denied.stderr], [5, 'vnsnap: permission denied: vnsnap snapshot verify (VerifySnapshot) needs the operator role (certificate "viewer" has the viewer role)\n']);
    const gcDenied = await cliAs(viewer, ['store', 'gc', '--grace', '0']);
    assert.deepEqual([gcDenied.code, gcDenied.stderr], [5, 'vnsnap: permission denied: vnsnap store gc (CollectGarbage) needs the operator role (certificate "viewer" has the viewer role)\n']);
    const gc = await c.cli(['store', 'gc', '--grace', '0']);
    assert.equal(gc.code, 0, gc.stderr);
    assert.match(norm(gc.stdout), /\nfreed \d+ chunks? \(<size>\) in <ms>; kept \d+ \(grace 0s\)\n$/);
    const usage = await c.cli(['store', 'gc', '--grace', 'soon']);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /--grace expects a duration such as 0, 30s, 15m or 1h, got "soon"/);
  });

  it('the catalog lost: --rebuild-catalog from the manifests in the store, then a restore from it continues exactly', async () => {
    const [s1, s2] = snaps as [CatalogSnapshot, CatalogSnapshot];
    const stopped = await c.cli(['vne', 'stop', VNE]);
    assert.equal(stopped.code, 0, stopped.stderr);
    await c.kill('coordinator', 'SIGTERM');
    for (const f of [c.dbFile, `${c.dbFile}-wal`, `${c.dbFile}-shm`]) fs.rmSync(f, { force: true });
    const rebuild = (...extra: string[]) => spawnSync(process.execPath, [COORDINATOR, '--rebuild-catalog', '--db', c.dbFile, '--store-dir', c.storeDir, ...extra], { encoding: 'utf8' });
    const r = rebuild();
    assert.deepEqual([r.status, r.stderr], [0, '']);
    assert.equal(r.stdout, `rebuilt the catalog ${c.dbFile} from local ${c.storeDir}: 2 snapshots of 1 VNE (${VNE}); 0 manifests with problems\n`);
    const again = rebuild();
    assert.deepEqual([again.status, again.stdout], [1, '']);
    assert.equal(again.stderr, `vnsnap-coordinator: the catalog already holds 2 snapshots; the store would overwrite 2 of them (${s1.id}, ${s2.id}): rebuild into an empty catalog, or pass --force to replace those with what the store's manifests say [ERR_FAILED_PRECONDITION]\n`);

    await c.startCoordinator();
    await c.waitConnected(c.hosts);
    const vne = await c.cliJson<{ state: string; vni: number; epoch: number }>(['vne', 'show', VNE]);
    assert.deepEqual([vne.state, vne.vni, vne.epoch], ['VNE_STATE_DEFINED', 5005, s2.epoch]);
    const list = await c.cliJson<{ snapshots: CatalogSnapshot[] }>(['snapshot', 'list', '--vne', VNE]);
    assert.deepEqual(list.snapshots.map((s) => [s.id, s.state, s.manifestPath]), [s1, s2].map((s) => [s.id, 'SNAPSHOT_STATE_COMPLETE', s.manifestPath]));
    assert.deepEqual(await c.completeSnapshotProblems(list.snapshots[0] as CatalogSnapshot), []);

    const restored = await c.cli(['restore', s1.id]);
    assert.equal(restored.code, 0, restored.stderr);
    const images = await c.imageStates(s1, MIB);
    await until('traffic past the snapshot after the restore', async () => {
      const st = await readStates(c, VNE, VMS);
      return VMS.every((v) => VMS.every((p) => p === v || (st[v]?.expected[p] ?? 0) >= (images[v]?.expected[p] ?? 0) + 3));
    }, { timeoutMs: 15_000, everyMs: 100 });
    const live = await liveProblems(c, VNE, VMS);
    assert.deepEqual(live.problems, []);
    assert.deepEqual(continuityProblems(live.states, images, VMS), []);
    // The rebuilt catalog takes snapshots again.
    const s3 = await c.snapshotComplete(VNE);
    assert.deepEqual(await c.completeSnapshotProblems(s3), []);
    assert.ok(![s1.id, s2.id].includes(s3.id));
  });
});
