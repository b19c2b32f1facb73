/**
 * The content-addressed store on a real S3 server (a single-node Ceph RADOS Gateway on loopback,
 * test/support/ceph-rgw.sh) when the server dies in the middle of an artefact (issue 14: "RGW
 * killed mid-upload: the snapshot aborts, no manifest, the next GC removes the orphans"):
 *   - the writer fails with ERR_UNAVAILABLE naming the store, and no index is ever written, so
 *     the half-uploaded artefact does not exist (get: ERR_NOT_FOUND, list: absent);
 *   - its chunks stay behind as orphans, and the next garbage collection after the gateway's
 *     restart removes exactly them: an artefact committed before the fault stays whole.
 * Both layouts: one object per chunk, and packs (the gateway killed while packs are uploading:
 * what it leaves, packs with or without their tables, is removed the same way).
 * The failed writer could not delete its session lock (the server was gone); the GC then waits
 * for the lock to go stale (cas-locks.ts, STALE_MS): its clock is set that far ahead here
 * instead of waiting five minutes.
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { isVnsnapError } from '../../proto/core/errors';
import { CHUNK_PREFIX } from '../../proto/store/cas-index';
import { PACK_PREFIX, TABLE_PREFIX } from '../../proto/store/pack-format';
import { STALE_MS } from '../../proto/store/cas-locks';
import { CasStore, type PackOptions } from '../../proto/store/cas-store';
import { S3Objects } from '../../proto/store/s3-objects';
import { cephRgwAvailable, startCephRgw, type CephRgw } from '../support/ceph-rgw';
import { until } from '../support/wait';

const MiB = 1 << 20;

const LAYOUTS: { name: string; pack?: PackOptions; prefixes: string[]; what: string }[] = [
  { name: 'one object per chunk', prefixes: [CHUNK_PREFIX], what: 'chunks' },
  { name: 'packs', pack: { targetBytes: 2 * MiB }, prefixes: [PACK_PREFIX, TABLE_PREFIX], what: 'packs' },
];

describe('CasStore on a real Ceph RGW: the gateway killed in the middle of an artefact', function () {
  this.timeout(180_000);
  let rgw: CephRgw | undefined;
  let objects: S3Objects | undefined;

  before(async function () {
    if (!cephRgwAvailable()) this.skip();
    rgw = await startCephRgw('vnsnap-it-cas-s3');
  });
  after(async () => {
    objects?.close();
    await rgw?.stop();
  });

  for (const layout of LAYOUTS) it(`${layout.name}: aborts the artefact with ERR_UNAVAILABLE, writes no index, and the next GC removes its orphan ${layout.what}`, async () => {
    const c = rgw as CephRgw;
    objects?.close();
    objects = new S3Objects({ endpoint: c.endpoint, bucket: c.bucket, region: c.region, credentialsFile: c.credentialsFile, connectTimeoutMs: 1000, requestTimeoutMs: 10_000, maxAttempts: 1 });
    const store = new CasStore(objects, layout.pack ? { pack: layout.pack } : {});
    const stored = async (): Promise<string[]> => (await Promise.all(layout.prefixes.map((p) => (objects as S3Objects).list(p)))).flat();
    const kept = randomBytes(3 * MiB);
    const keptArtefact = await store.put(`snapshots/${layout.what}1/vm1.mem`, kept);
    const keptObjects = await stored();

    const w = await store.create(`snapshots/${layout.what}2/vm1.mem`);
    let failure: unknown;
    try {
      // Feed it until some chunks of its own are stored, then kill the gateway and go on writing.
      const piece = (): Buffer => randomBytes(MiB);
      for (let i = 0; i < 4; i++) await w.write(piece());
      await until(`${layout.what} of the second artefact stored`, async () => (await stored()).length > keptObjects.length);
      await c.killRgw();
      for (let i = 0; i < 64; i++) await w.write(piece());
      await w.commit();
    } catch (e) {
      failure = e;
      await w.abort();
    }
    assert.ok(isVnsnapError(failure, 'ERR_UNAVAILABLE'), `expected ERR_UNAVAILABLE, got ${String(failure)}`);
    const prefix = `store s3 http://127.0.0.1:${new URL(c.endpoint).port}/vnsnap-test failed while writing snapshots/${layout.what}2/vm1.mem: `;
    assert.ok((failure as Error).message.startsWith(prefix) && (failure as Error).message.includes(' failed: the S3 endpoint cannot be reached'), (failure as Error).message);

    await c.startRgw();
    await assert.rejects(store.get(`snapshots/${layout.what}2/vm1.mem`), (e) => isVnsnapError(e, 'ERR_NOT_FOUND'));
    assert.deepEqual(await store.list(`snapshots/${layout.what}`), [`snapshots/${layout.what}1/vm1.mem`]);
    const orphans = (await stored()).length - keptObjects.length;
    assert.ok(orphans > 0, `the killed upload left no ${layout.what} behind: the test did not kill it mid-way`);

    const gc = await store.gc({ graceMs: 0, clock: () => Date.now() + STALE_MS + 60_000 });
    if (layout.pack) assert.ok(gc.packsDeleted > 0 && gc.packsWritten === 0, JSON.stringify(gc));
    else assert.equal(gc.chunksDeleted, orphans);
    assert.deepEqual(await stored(), keptObjects);
    assert.equal(await store.verify(keptArtefact), null);
    assert.deepEqual(await store.get(`snapshots/${layout.what}1/vm1.mem`), kept);
  });
});
