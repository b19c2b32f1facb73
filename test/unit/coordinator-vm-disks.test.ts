/**
 * Where each VM's disk is, on the coordinator: the catalog's vm_disks table (schema 3, and the
 * migration of a schema-2 catalog), the VmStatus disk fields, and `vne show`'s disks block.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { Catalog, CATALOG_SCHEMA_VERSION } from '../../coordinator/catalog';
import { MIGRATIONS } from '../../coordinator/catalog-schema';
import { renderVne } from '../../coordinator/cli/format';
import { withDiskStatus } from '../../coordinator/vm-disks';
import type { Vne__Output } from '../../proto/gen/vnsnap/v1/Vne';
import { simVms, vneRecord } from '../support/vne-record';

const T0 = 1_800_000_000_000;
const MiB = 1024 * 1024;

function blue(state: Vne__Output['state']): Vne__Output {
  const vms = simVms([['a', 'h1'], ['b', 'h1']], (i) => `52:54:00:00:00:0${i + 1}`, { memoryMib: 4, dirtyRateMibS: 0, frameRateHz: 0 });
  return vneRecord({ vni: 7, vms, generation: 1, state, createdUnixMs: T0, updatedUnixMs: T0, placement: { a: 'h1', b: 'h1' } });
}

describe('coordinator: where VM disks are (vm_disks)', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-keepdisks-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a schema-2 catalog is migrated to 3: its VNEs kept, vm_disks added', () => {
    const file = path.join(dir, 'c.db');
    const old = new Database(file);
    old.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_unix_ms INTEGER NOT NULL)');
    for (const v of [1, 2]) {
      old.exec(MIGRATIONS[v - 1] as string);
      old.prepare('INSERT INTO schema_migrations VALUES (?, ?)').run(v, T0);
    }
    old.prepare("INSERT INTO vnes (name, vni, vms, generation, epoch, state, placement, created_unix_ms, updated_unix_ms) VALUES ('blue', 7, '[]', 1, 0, 'VNE_STATE_DEFINED', '{}', ?, ?)").run(T0, T0);
    old.close();

    const c = new Catalog(file, { now: () => T0 + 1 });
    assert.equal(CATALOG_SCHEMA_VERSION, 5);
    assert.equal(c.schemaVersion, 5);
    assert.deepEqual(c.db.prepare('SELECT version, applied_unix_ms FROM schema_migrations ORDER BY version').all(), [
      { version: 1, applied_unix_ms: T0 },
      { version: 2, applied_unix_ms: T0 },
      { version: 3, applied_unix_ms: T0 + 1 },
      { version: 4, applied_unix_ms: T0 + 1 },
      { version: 5, applied_unix_ms: T0 + 1 },
    ]);
    assert.equal(c.getVne('blue')?.state, 'VNE_STATE_DEFINED');
    c.disks.put({ vne: 'blue', vm: 'a', host: 'h1', path: '/var/lib/vnsnap/disks/blue_a', bytes: 5, keptUnixMs: T0 });
    c.disks.put({ vne: 'blue', vm: 'b', host: 'h1', path: '/var/lib/vnsnap/disks/blue_b', bytes: 0, keptUnixMs: 0 });
    c.close();

    const again = new Catalog(file);
    assert.deepEqual([...again.disks.kept('blue').keys()], ['a']);
    assert.deepEqual([...again.disks.of('blue').keys()], ['a', 'b']);
    again.deleteVne('blue');
    assert.deepEqual([...again.disks.of('blue')], []);
    again.close();
  });

  it('VmStatus disk fields and vne show: kept, from the spec, on the running host', () => {
    const c = new Catalog(':memory:');
    c.disks.put({ vne: 'blue', vm: 'a', host: 'h1', path: '/var/lib/vnsnap/disks/blue_a', bytes: 12.3 * MiB, keptUnixMs: T0 });
    const stopped = withDiskStatus(c.disks, blue('VNE_STATE_DEFINED'), [
      { vm: 'a', host: 'h1', hostReachable: true, state: 'VM_RUN_STATE_STOPPED' },
      { vm: 'b', host: 'h1', hostReachable: true, state: 'VM_RUN_STATE_STOPPED' },
    ]);
    assert.deepEqual(
      stopped.vmStatus.map((s) => [s.vm, s.diskSource, s.diskHost, s.diskPath, s.diskBytes, s.diskKeptUnixMs]),
      [
        ['a', 'DISK_SOURCE_KEPT', 'h1', '/var/lib/vnsnap/disks/blue_a', 12.3 * MiB, T0],
        ['b', 'DISK_SOURCE_SPEC', '', '', 0, 0],
      ],
    );
    assert.ok(renderVne(stopped).endsWith("disks:\n  a: kept on h1: /var/lib/vnsnap/disks/blue_a (12.3 MiB)\n  b: from its spec's image\n"), renderVne(stopped));

    c.disks.put({ vne: 'blue', vm: 'a', host: 'h1', path: '/var/lib/vnsnap/disks/blue_a', bytes: 0, keptUnixMs: 0 });
    const running = withDiskStatus(c.disks, blue('VNE_STATE_RUNNING'), [
      { vm: 'a', host: 'h1', hostReachable: true, state: 'VM_RUN_STATE_RUNNING' },
      { vm: 'b', host: 'h1', hostReachable: true, state: 'VM_RUN_STATE_RUNNING' },
    ]);
    assert.ok(renderVne(running).endsWith('disks:\n  a: on h1: /var/lib/vnsnap/disks/blue_a\n  b: on h1\n'), renderVne(running));
    c.close();
  });
});
