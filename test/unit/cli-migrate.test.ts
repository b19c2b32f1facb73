/**
 * `vnsnap migrate` against the in-process fake coordinator (test/interop/fake-coordinator.ts):
 * the request it sends, its progress lines and summary, --json, and its refusals with their exit
 * codes.
 */
import { strict as assert } from 'node:assert';
import { startFakeCoordinator, type FakeCoordinator } from '../interop/fake-coordinator';
import { runCliPlaintext } from '../support/child-output';

const vnsnap = runCliPlaintext;

describe('cli: vnsnap migrate', function () {
  this.timeout(30_000);
  let fake: FakeCoordinator;
  const run = (...args: string[]) => vnsnap([...args, '--coordinator', fake.address]);
  beforeEach(async () => {
    fake = await startFakeCoordinator();
  });
  afterEach(async () => {
    await fake.stop();
  });

  it('sends the placement, prints the progress lines and one row per VM moved', async () => {
    const r = await run('migrate', 'blue', '--place', 'vm2=h2', '--timeout-ms', '90000');
    assert.equal(r.code, 0, r.stderr);
    const call = fake.calls.find((c) => c.method === 'MigrateVne');
    assert.deepEqual(call?.request, { vne: 'blue', placement: { vm2: 'h2' }, to: '', timeoutMs: 90000 });
    const lines = r.stdout.split('\n');
    assert.equal(lines[0], '+0.000s  note  migrate: vm2 h1 → h2');
    assert.ok(lines.some((l) => /^\+0\.400s  vm2@h1 +DISK_SYNC/.test(l)), r.stdout);
    assert.ok(lines.some((l) => /^\+2\.000s  vm2@h2 +SWITCHOVER .*pause 41\.5 ms/.test(l)), r.stdout);
    assert.match(r.stdout, /\n\nmigrated 1 VM of VNE blue in 2\.001 s\nVM +FROM +TO +DOWNTIME +TOTAL +DISK +MEMORY\nvm2 +h1 +h2 +41\.5 ms +2\.000 s +32\.0 MiB +140\.0 MiB\n$/);
  });

  it('--json: one proto3 JSON line per event, the last with `migrated`', async () => {
    const r = await run('migrate', 'blue', '--place', 'vm1=h2', '--json');
    assert.equal(r.code, 0, r.stderr);
    const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { migrated?: { vms: { vm: string; toAgent: string; downtimeMs: number }[] } });
    assert.equal(events.length, 5);
    assert.deepEqual(events[4]?.migrated?.vms.map((v) => [v.vm, v.toAgent, v.downtimeMs]), [['vm1', 'h2', 41.5]]);
  });

  it('refusals: no destination (2, nothing sent), an unknown VNE (3), a refused migration (1)', async () => {
    const none = await run('migrate', 'blue');
    assert.deepEqual([none.code, none.stderr], [2, 'vnsnap: say where the VMs go: --place VM=HOST (repeatable) or --to HOST\n']);
    assert.equal(fake.calls.filter((c) => c.method === 'MigrateVne').length, 0);
    const unknown = await run('migrate', 'nope', '--to', 'h1');
    assert.deepEqual([unknown.code, unknown.stderr], [3, 'vnsnap: VNE "nope" does not exist\n']);
    const refused = await run('migrate', 'red', '--to', 'h1');
    assert.equal(refused.code, 1);
    assert.equal(refused.stderr, 'vnsnap: the fake coordinator migrates VMs of blue named with a placement only\n');
    const bad = await run('migrate', 'blue', '--place', 'vm1');
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--place expects VM=HOST/);
  });
});
