import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { encodeManifest } from '../../proto/artefacts/manifest';
import { LocalDirStore } from '../../proto/store/local-dir';
import { CasStore } from '../../proto/store/cas-store';
import type { ManifestBody } from '../../proto/gen/vnsnap/v1/ManifestBody';
import { Catalog } from '../../coordinator/catalog';
import { describeRebuild, rebuildCatalog } from '../../coordinator/rebuild-catalog';
import { failureOf, MemoryObjects } from '../support/memory-objects';

const T0 = 1_800_000_000_000;

const vne = (name: string, vni: number, generation: number) => ({
  name,
  vni,
  generation,
  epoch: 9,
  state: 'VNE_STATE_SNAPSHOTTING' as const,
  createdUnixMs: T0 - 1000,
  updatedUnixMs: T0,
  placement: { a: 'h2' },
  vms: [{ name: 'a', host: 'h1', macs: ['52:54:00:00:00:01'], driver: { sim: { memoryMib: 4 } } }],
});

function body(id: string, vneName: string, epoch: number, opts: { vni?: number; generation?: number; at?: number } = {}): ManifestBody {
  return {
    snapshotId: id,
    vne: vne(vneName, opts.vni ?? 100, opts.generation ?? 1),
    epoch,
    mode: 'SNAPSHOT_MODE_PRECOPY',
    createdUnixMs: opts.at ?? T0 + epoch,
    completedUnixMs: (opts.at ?? T0 + epoch) + 5,
    vms: [{ name: 'a', host: 'h1', pauseMs: 1.5, cutUnixUs: 1, memoryBytes: 10, diskBytes: 0, channelFrames: 2, phases: [] }],
    artefacts: [
      { path: `snapshots/${id}/a.mem`, size: 10, sha256: 'ab'.repeat(32), kind: 'ARTEFACT_KIND_MEMORY', owner: 'a', storedBytes: 4 },
      { path: `snapshots/${id}/a.0.chan`, size: 6, sha256: 'cd'.repeat(32), kind: 'ARTEFACT_KIND_CHANNEL', owner: 'a-0', storedBytes: 6 },
    ],
    vnsnapVersion: '0.1.0',
    description: `snap ${id}`,
  };
}

describe('coordinator --rebuild-catalog: the catalog from the manifests in the store', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-rebuild-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('inserts every snapshot and its VNE (DEFINED, epoch and generation past every snapshot, newest definition); skips a bad manifest, naming it', async () => {
    const store = new LocalDirStore(dir);
    await store.put('snapshots/blue-1-aa/manifest.pb', encodeManifest(body('blue-1-aa', 'blue', 1)));
    await store.put('snapshots/blue-3-bb/manifest.pb', encodeManifest(body('blue-3-bb', 'blue', 3, { generation: 2 })));
    await store.put('snapshots/red-2-cc/manifest.pb', encodeManifest(body('red-2-cc', 'red', 2, { vni: 200 })));
    await store.put('snapshots/blue-3-bb/a.mem', Buffer.alloc(10));
    const bad = encodeManifest(body('blue-4-dd', 'blue', 4));
    bad.writeUInt8(bad.readUInt8(bad.length - 3) ^ 0xff, bad.length - 3);
    await store.put('snapshots/blue-4-dd/manifest.pb', bad);
    await store.put('snapshots/blue-5-ee/manifest.pb', encodeManifest(body('other', 'blue', 5)));

    const catalog = new Catalog(':memory:', { now: () => T0 });
    const r = await rebuildCatalog(catalog, store, { now: T0 + 100 });
    assert.deepEqual(r.snapshots, ['blue-1-aa', 'blue-3-bb', 'red-2-cc']);
    assert.deepEqual(r.newVnes, ['blue', 'red']);
    assert.deepEqual(r.problems, [
      { path: 'snapshots/blue-4-dd/manifest.pb', problem: 'snapshots/blue-4-dd/manifest.pb is corrupt or was modified: its body checksum does not match' },
      { path: 'snapshots/blue-5-ee/manifest.pb', problem: 'snapshots/blue-5-ee/manifest.pb names snapshot other, not blue-5-ee' },
    ]);
    const blue = catalog.getVne('blue');
    assert.equal(blue?.state, 'VNE_STATE_DEFINED');
    assert.equal(blue?.epoch, 3);
    assert.equal(blue?.generation, 2);
    assert.deepEqual(blue?.placement, { a: 'h2' });
    assert.equal(catalog.getVne('red')?.vni, 200);
    const s = catalog.getSnapshot('blue-3-bb');
    assert.equal(s?.state, 'SNAPSHOT_STATE_COMPLETE');
    assert.equal(s?.manifestPath, 'snapshots/blue-3-bb/manifest.pb');
    assert.equal(s?.sizeBytes, 16);
    assert.equal(s?.storedBytes, 10);
    assert.equal(s?.description, 'snap blue-3-bb');
    assert.equal(s?.createdUnixMs, T0 + 3);
    assert.deepEqual(s?.artefacts.map((a) => a.path), ['snapshots/blue-3-bb/a.mem', 'snapshots/blue-3-bb/a.0.chan']);
    assert.deepEqual(catalog.snapshotInternals('blue-3-bb')?.agents, ['h1']);
    assert.equal(catalog.snapshotInternals('blue-3-bb')?.storePrefix, 'snapshots/blue-3-bb/');
    assert.equal(
      describeRebuild(r, { db: '/var/lib/vnsnap/catalog.db', store: `files ${dir}` }),
      `rebuilt the catalog /var/lib/vnsnap/catalog.db from files ${dir}: 3 snapshots of 2 VNEs (blue, red); 2 manifests with problems\n` +
        '  skipped snapshots/blue-4-dd/manifest.pb: snapshots/blue-4-dd/manifest.pb is corrupt or was modified: its body checksum does not match\n' +
        '  skipped snapshots/blue-5-ee/manifest.pb: snapshots/blue-5-ee/manifest.pb names snapshot other, not blue-5-ee\n',
    );
    catalog.close();
  });

  it('refuses a catalog that holds snapshots, saying what the store would overwrite; --force replaces those', async () => {
    const store = new LocalDirStore(dir);
    await store.put('snapshots/blue-1-aa/manifest.pb', encodeManifest(body('blue-1-aa', 'blue', 1)));
    const catalog = new Catalog(':memory:', { now: () => T0 });
    await rebuildCatalog(catalog, store);
    catalog.db.prepare("UPDATE snapshots SET description = 'changed' WHERE id = 'blue-1-aa'").run();
    assert.equal(
      await failureOf(rebuildCatalog(catalog, store)),
      'ERR_FAILED_PRECONDITION: the catalog already holds 1 snapshot; the store would overwrite 1 of them (blue-1-aa): rebuild into an empty catalog, or pass --force to replace those with what the store\'s manifests say',
    );
    assert.equal(catalog.getSnapshot('blue-1-aa')?.description, 'changed', 'nothing changed');
    const r = await rebuildCatalog(catalog, store, { force: true });
    assert.deepEqual(r.replaced, ['blue-1-aa']);
    assert.deepEqual(r.newVnes, [], 'the VNE the catalog has stays as it is');
    assert.equal(catalog.getSnapshot('blue-1-aa')?.description, 'snap blue-1-aa');
    catalog.close();
  });

  it('reads manifests a content-addressed store holds; a VNI taken by another VNE skips that VNE, reported', async () => {
    const store = new CasStore(new MemoryObjects());
    await store.put('snapshots/blue-1-aa/manifest.pb', encodeManifest(body('blue-1-aa', 'blue', 1)));
    await store.put('snapshots/green-1-ff/manifest.pb', encodeManifest(body('green-1-ff', 'green', 1)));
    const catalog = new Catalog(':memory:', { now: () => T0 });
    const r = await rebuildCatalog(catalog, store);
    assert.deepEqual(r.snapshots, ['blue-1-aa']);
    assert.deepEqual(r.problems, [{ path: 'snapshots/green-1-ff/manifest.pb', problem: 'VNE green has VNI 100, which VNE blue of the catalog uses: skipped' }]);
    assert.equal(catalog.getVne('green'), undefined);
    catalog.close();
  });
});
