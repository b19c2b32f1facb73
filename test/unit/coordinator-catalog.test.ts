import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isVnsnapError } from '../../proto/core/errors';
import type { Vne__Output } from '../../proto/gen/vnsnap/v1/Vne';
import { CATALOG_SCHEMA_VERSION, Catalog, RESTARTED_ERROR } from '../../coordinator/catalog';
import { simVms, vneRecord } from '../support/vne-record';

const T0 = 1_800_000_000_000;

function vne(name: string, state: Vne__Output['state'], placement: Record<string, string>): Vne__Output {
  const vms = simVms(Object.keys(placement).map((vm) => [vm, 'h1']), (i) => `52:54:00:00:00:0${i + 1}`, { memoryMib: 4, dirtyRateMibS: 0, frameRateHz: 0 });
  return vneRecord({ name, vni: 7, vms, generation: 2, epoch: 4, state, createdUnixMs: T0, updatedUnixMs: T0, placement });
}

describe('coordinator catalog', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-catalog-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('is one WAL SQLite file with a migration table', () => {
    const c = new Catalog(path.join(dir, 'c.db'), { now: () => T0 });
    assert.equal(c.db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(c.schemaVersion, CATALOG_SCHEMA_VERSION);
    assert.deepEqual(c.db.prepare('SELECT version, applied_unix_ms FROM schema_migrations').all(), [
      { version: 1, applied_unix_ms: T0 },
      { version: 2, applied_unix_ms: T0 },
      { version: 3, applied_unix_ms: T0 },
      { version: 4, applied_unix_ms: T0 },
      { version: 5, applied_unix_ms: T0 },
    ]);
    c.close();
  });

  it('keeps everything across a reopen', () => {
    const file = path.join(dir, 'c.db');
    let c = new Catalog(file, { now: () => T0 });
    c.insertVne(vne('blue', 'VNE_STATE_RUNNING', { a: 'h1', b: 'h2' }));
    c.upsertAgent({ id: 'h1', hostname: 'host1', version: '0.1.0', tunnelAddress: '10.0.0.1', tunnelPort: 6081, drivers: ['sim', 'qemu'], connectedUnixMs: T0, lastSeenUnixMs: T0 });
    c.touchAgent('h1', T0 + 5);
    c.insertSnapshot({ id: 's1', vne: 'blue', epoch: 5, generation: 2, mode: 'SNAPSHOT_MODE_PRECOPY', description: 'd', storePrefix: 'snapshots/s1/', agents: ['h1', 'h2'], vneDefinition: vne('blue', 'VNE_STATE_RUNNING', { a: 'h1', b: 'h2' }), createdUnixMs: T0 });
    c.setSnapshotPhase('s1', 'SNAPSHOT_STATE_COMMITTING', T0 + 1);
    c.setSnapshotPhase('s1', 'SNAPSHOT_STATE_PERSISTING', T0 + 2);
    const art = { path: 'snapshots/s1/a.mem', size: 10, sha256: 'ab'.repeat(32), kind: 'ARTEFACT_KIND_MEMORY' as const, owner: 'a', attributes: {}, storedBytes: 0 };
    const vm = { name: 'a', host: 'h1', pauseMs: 1.25, cutUnixUs: T0 * 1000, phases: [{ phase: 'PHASE_PAUSE' as const, startUnixUs: 1, endUnixUs: 2 }, { phase: 'PHASE_PERSIST' as const, startUnixUs: 3, endUnixUs: 4 }], memoryBytes: 10, diskBytes: 0, channelFrames: 2 };
    c.completeSnapshot('s1', { completedUnixMs: T0 + 3, manifestPath: 'snapshots/s1/manifest.pb', artefacts: [art], vms: [vm], lostFrames: 1, sizeBytes: 99 });
    c.insertRestore({ id: 'r1', snapshotId: 's1', vne: 'blue', generation: 3, placement: { a: 'h2' }, createdUnixMs: T0 });
    c.finishRestore('r1', 'COMPLETE');
    c.addPendingAborts([{ snapshotId: 's0', agentId: 'h2', vne: 'blue', epoch: 4, storePrefix: 'snapshots/s0/' }]);
    c.close();

    c = new Catalog(file, { now: () => T0 + 100 });
    assert.deepEqual(c.getVne('blue'), vne('blue', 'VNE_STATE_RUNNING', { a: 'h1', b: 'h2' }));
    assert.deepEqual(c.getAgent('h1'), { id: 'h1', hostname: 'host1', version: '0.1.0', tunnelAddress: '10.0.0.1', tunnelPort: 6081, drivers: ['sim', 'qemu'], connectedUnixMs: T0, lastSeenUnixMs: T0 + 5 });
    assert.deepEqual(c.getSnapshot('s1'), {
      id: 's1',
      vne: 'blue',
      epoch: 5,
      mode: 'SNAPSHOT_MODE_PRECOPY',
      state: 'SNAPSHOT_STATE_COMPLETE',
      description: 'd',
      createdUnixMs: T0,
      completedUnixMs: T0 + 3,
      error: '',
      vms: [vm],
      artefacts: [art],
      manifestPath: 'snapshots/s1/manifest.pb',
      sizeBytes: 99,
      lostFrames: 1,
      generation: 2,
      storedBytes: 0,
      storedBytesKnown: true,
      verifiedUnixMs: 0,
      verifyProblems: [],
    });
    assert.deepEqual(c.snapshotInternals('s1')?.agents, ['h1', 'h2']);
    assert.equal(c.snapshotInternals('s1')?.committingUnixMs, T0 + 1);
    assert.equal(c.snapshotInternals('s1')?.persistingUnixMs, T0 + 2);
    assert.deepEqual(c.listRestores().map((r) => [r.id, r.state, r.placement]), [['r1', 'COMPLETE', { a: 'h2' }]]);
    assert.deepEqual(c.pendingAborts('h2'), [{ snapshotId: 's0', agentId: 'h2', vne: 'blue', epoch: 4, storePrefix: 'snapshots/s0/' }]);
    assert.deepEqual(c.recovered, { snapshots: [], restores: [] });
    c.deleteSnapshot('s1');
    assert.deepEqual(c.db.prepare('SELECT COUNT(*) AS n FROM snapshot_vm_phases').get(), { n: 0 });
    assert.deepEqual(c.db.prepare('SELECT COUNT(*) AS n FROM snapshot_vms').get(), { n: 0 }, 'per-VM rows go with the snapshot');
    c.close();
  });

  it('on restart, in-progress snapshots become ABORTED and every agent of the VNE gets a pending abort', () => {
    const file = path.join(dir, 'c.db');
    let c = new Catalog(file, { now: () => T0 });
    c.insertVne(vne('blue', 'VNE_STATE_SNAPSHOTTING', { a: 'h1', b: 'h2', c: 'h3' }));
    c.insertVne(vne('red', 'VNE_STATE_RESTORING', { x: 'h1' }));
    const def = vne('blue', 'VNE_STATE_RUNNING', { a: 'h1', b: 'h2', c: 'h3' });
    for (const [id, state] of [['p', 'PRECOPY'], ['c', 'COMMITTING'], ['s', 'PERSISTING'], ['done', 'COMPLETE']] as const) {
      c.insertSnapshot({ id, vne: 'blue', epoch: 5, generation: 2, mode: 'SNAPSHOT_MODE_PRECOPY', description: '', storePrefix: `snapshots/${id}/`, agents: ['h1', 'h2'], vneDefinition: def, createdUnixMs: T0 });
      if (state === 'COMMITTING' || state === 'PERSISTING') c.setSnapshotPhase(id, `SNAPSHOT_STATE_${state}`, T0);
      if (state === 'COMPLETE') c.completeSnapshot(id, { completedUnixMs: T0, manifestPath: 'm', artefacts: [], vms: [], lostFrames: 0, sizeBytes: 0 });
    }
    c.insertRestore({ id: 'r1', snapshotId: 'done', vne: 'red', generation: 3, placement: {}, createdUnixMs: T0 });
    c.close();

    c = new Catalog(file, { now: () => T0 + 50 });
    assert.deepEqual(c.recovered, { snapshots: ['p', 'c', 's'], restores: ['r1'] });
    for (const id of ['p', 'c', 's']) {
      const s = c.getSnapshot(id);
      assert.equal(s?.state, 'SNAPSHOT_STATE_ABORTED');
      assert.equal(s?.error, RESTARTED_ERROR);
      assert.equal(s?.completedUnixMs, T0 + 50);
    }
    assert.equal(c.getSnapshot('done')?.state, 'SNAPSHOT_STATE_COMPLETE');
    assert.deepEqual(
      c.pendingAborts().map((p) => `${p.agentId}:${p.snapshotId}:${p.epoch}:${p.storePrefix}`),
      ['h1:c:5:snapshots/c/', 'h1:p:5:snapshots/p/', 'h1:s:5:snapshots/s/', 'h2:c:5:snapshots/c/', 'h2:p:5:snapshots/p/', 'h2:s:5:snapshots/s/', 'h3:c:5:snapshots/c/', 'h3:p:5:snapshots/p/', 'h3:s:5:snapshots/s/'],
    );
    assert.equal(c.getVne('blue')?.state, 'VNE_STATE_RUNNING');
    assert.equal(c.getVne('blue')?.epoch, 5);
    assert.equal(c.getVne('red')?.state, 'VNE_STATE_FAILED');
    assert.deepEqual(c.listRestores().map((r) => [r.state, r.error]), [['FAILED', RESTARTED_ERROR]]);
    c.removePendingAbort('p', 'h1');
    c.close();

    // A second restart changes nothing more.
    c = new Catalog(file, { now: () => T0 + 60 });
    assert.deepEqual(c.recovered, { snapshots: [], restores: [] });
    assert.equal(c.pendingAborts().length, 8);
    c.close();
  });

  it('refuses a catalog written by a newer schema', () => {
    const file = path.join(dir, 'c.db');
    const c = new Catalog(file);
    c.db.prepare('INSERT INTO schema_migrations (version, applied_unix_ms) VALUES (?, 0)').run(CATALOG_SCHEMA_VERSION + 1);
    c.close();
    assert.throws(
      () => new Catalog(file),
      (e) => isVnsnapError(e, 'ERR_UNSUPPORTED_VERSION') && e.message === `catalog ${file} has schema version ${CATALOG_SCHEMA_VERSION + 1}, newer than this coordinator knows (${CATALOG_SCHEMA_VERSION}): upgrade vnsnap`,
    );
  });
});
