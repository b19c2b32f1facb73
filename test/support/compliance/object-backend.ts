/**
 * The ObjectBackend compliance suite: one set of mocha tests every object backend must pass
 * (proto/store/object-backend.ts), run against LocalObjects (test/unit/object-backend-local.test.ts)
 * and S3Objects on a real Ceph RGW (test/integration/object-backend-s3.test.ts).
 *
 *   describeObjectBackendCompliance('local', harness)
 *   describeFullBackendCompliance('local on a 256 KiB tmpfs', openFull)
 *
 * It checks, with exact outcomes: put/get/head/list of objects (empty ones included) and their
 * replacement; list sorted, filtered by prefix, whole past one 1000-key page; delete idempotent;
 * ERR_NOT_FOUND naming the backend and the key; every malformed key refused with
 * ERR_INVALID_ARGUMENT before any I/O (shown on a backend that cannot reach its storage, which
 * would otherwise fail differently); atomicity (a reader racing replacements sees one whole
 * version or the other, never a mix or a part); and, given a full backend, ERR_STORE_FULL with
 * nothing of the failed object left.
 */
import { strict as assert } from 'node:assert';
import { isVnsnapError, type ErrorCode } from '../../../proto/core/errors';
import type { ObjectBackend, ObjectInfo } from '../../../proto/store/object-backend';

export interface ObjectBackendHarness {
  /** A backend with no objects (a fresh directory, or an emptied bucket). */
  open(): Promise<ObjectBackend>;
  /** Remove what the test wrote and release the backend. */
  close(b: ObjectBackend): Promise<void>;
  /** A backend of the same kind whose storage cannot be reached (any I/O fails). */
  unreachable(): ObjectBackend;
}

export function rejectsWith(p: Promise<unknown>, code: ErrorCode, message?: RegExp): Promise<void> {
  return assert.rejects(p, (e) => {
    assert.ok(isVnsnapError(e, code), `expected ${code}, got ${String(e)}`);
    if (message) assert.match((e as Error).message, message);
    assert.ok(!(e as Error).message.includes('\n'), 'the message is one line');
    return true;
  });
}

/** `n` bytes of `fill`. */
const bytes = (n: number, fill: number): Buffer => Buffer.alloc(n, fill);

const BAD_KEYS = ['', '/abs', 'a//b', 'a/./b', '../x', 'a/..', 'trailing/', 'sp ace', 'uni\u00e9', 'q?x', 'x'.repeat(1025), 'nul\0'];

export function describeObjectBackendCompliance(label: string, harness: ObjectBackendHarness): void {
  describe(`ObjectBackend compliance: ${label}`, function () {
    this.timeout(120_000);
    let b: ObjectBackend;
    beforeEach(async () => {
      b = await harness.open();
    });
    afterEach(async () => {
      await harness.close(b);
    });

    it('put, get, head and list see exactly the objects put, empty ones included', async () => {
      assert.deepEqual(await b.list(''), []);
      await b.put('chunks/ab/abcdef', Buffer.from('hello world'));
      await b.put('manifests/s1', new Uint8Array(0));
      assert.deepEqual(await b.get('chunks/ab/abcdef'), Buffer.from('hello world'));
      assert.deepEqual(await b.get('manifests/s1'), Buffer.alloc(0));
      assert.deepEqual(keyAndSize(await b.head('chunks/ab/abcdef')), { key: 'chunks/ab/abcdef', size: 11 });
      assert.deepEqual(keyAndSize(await b.head('manifests/s1')), { key: 'manifests/s1', size: 0 });
      assert.deepEqual(await b.list(''), ['chunks/ab/abcdef', 'manifests/s1']);
    });

    it('head and listInfo give each object its size and a last-put time that a replacement does not move back', async () => {
      const before = Date.now();
      await b.put('t/one', bytes(300, 2));
      await b.put('t/two', Buffer.from('xy'));
      const after = Date.now();
      const one = await b.head('t/one');
      assert.ok(one !== null);
      // S3 keeps whole seconds (rounded down); a local file keeps the filesystem's time.
      assert.ok(one.modifiedMs >= before - 1000 && one.modifiedMs <= after + 1000, `modifiedMs ${one.modifiedMs} not within [${before}, ${after}] ± 1 s`);
      const infos = await b.listInfo('t/');
      assert.deepEqual(infos.map((i) => i.key), await b.list('t/'));
      assert.deepEqual(infos.map(keyAndSize), [{ key: 't/one', size: 300 }, { key: 't/two', size: 2 }]);
      // Ceph RGW lists milliseconds but its HEAD gives whole seconds: the two agree within 1 s.
      assert.ok(Math.abs((infos[0]?.modifiedMs ?? 0) - one.modifiedMs) < 1000, `listInfo ${infos[0]?.modifiedMs} vs head ${one.modifiedMs}`);
      await b.put('t/one', Buffer.from('z'));
      const again = await b.head('t/one');
      assert.ok(again !== null && again.size === 1 && again.modifiedMs >= one.modifiedMs);
      assert.deepEqual(await b.listInfo('none/'), []);
    });

    it('getRange returns exactly the bytes asked for, fewer at the end, none past it; an absent key is ERR_NOT_FOUND', async () => {
      const body = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 7 + (i >> 8)) & 0xff));
      await b.put('packs/ab/range', body);
      assert.deepEqual(await b.getRange('packs/ab/range', 0, 5000), body);
      assert.deepEqual(await b.getRange('packs/ab/range', 1234, 100), body.subarray(1234, 1334));
      assert.deepEqual(await b.getRange('packs/ab/range', 4990, 100), body.subarray(4990));
      assert.deepEqual(await b.getRange('packs/ab/range', 5000, 10), Buffer.alloc(0));
      assert.deepEqual(await b.getRange('packs/ab/range', 17, 0), Buffer.alloc(0));
      await assert.rejects(b.getRange('packs/ab/none', 0, 10), (e: unknown) => isVnsnapError(e, 'ERR_NOT_FOUND') && e.message.includes('packs/ab/none'));
      await assert.rejects(b.getRange('packs/ab/range', -1, 10), (e: unknown) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'));
    });

    it('put replaces an object whole', async () => {
      await b.put('k/obj', bytes(5000, 1));
      await b.put('k/obj', Buffer.from('short'));
      assert.deepEqual(await b.get('k/obj'), Buffer.from('short'));
      assert.deepEqual(keyAndSize(await b.head('k/obj')), { key: 'k/obj', size: 5 });
      assert.deepEqual(await b.list('k/'), ['k/obj']);
    });

    it('list is sorted and filtered by a prefix that need not end at a "/"', async () => {
      const keys = ['b/2', 'a-x', 'a/1', 'a/0', 'ab/c', 'A/z', 'a.b', '_u', 'a/sub/deep/9'];
      for (const k of keys) await b.put(k, Buffer.from(k));
      assert.deepEqual(await b.list(''), [...keys].sort());
      assert.deepEqual(await b.list('a/'), ['a/0', 'a/1', 'a/sub/deep/9']);
      assert.deepEqual(await b.list('a'), ['a-x', 'a.b', 'a/0', 'a/1', 'a/sub/deep/9', 'ab/c']);
      assert.deepEqual(await b.list('a/s'), ['a/sub/deep/9']);
      assert.deepEqual(await b.list('zzz'), []);
      assert.deepEqual(await b.list('a/sub/deep/9'), ['a/sub/deep/9']);
    });

    it('list returns every key past one 1000-key page, sorted', async () => {
      const keys = Array.from({ length: 1003 }, (_, i) => `many/${String((i * 7919) % 1003).padStart(4, '0')}`);
      for (let i = 0; i < keys.length; i += 32) await Promise.all(keys.slice(i, i + 32).map((k) => b.put(k, Buffer.from('x'))));
      const listed = await b.list('many/');
      assert.equal(listed.length, 1003);
      assert.deepEqual(listed, [...keys].sort());
      assert.deepEqual(await b.list('many/100'), ['many/1000', 'many/1001', 'many/1002']);
    });

    it('delete removes an object and is idempotent; get of an absent key is ERR_NOT_FOUND naming backend and key, head is null', async () => {
      await b.put('d/x', Buffer.from('x'));
      await b.delete('d/x');
      await b.delete('d/x');
      await b.delete('never/was');
      assert.equal(await b.head('d/x'), null);
      assert.deepEqual(await b.list('d/'), []);
      const escaped = b.describe.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      await rejectsWith(b.get('d/x'), 'ERR_NOT_FOUND', new RegExp(`^${escaped}: object d/x does not exist$`));
      await rejectsWith(b.get('no/such/key'), 'ERR_NOT_FOUND', /no\/such\/key/);
    });

    it('refuses every malformed key with ERR_INVALID_ARGUMENT before any I/O', async () => {
      const off = harness.unreachable();
      for (const backend of [b, off]) {
        for (const k of BAD_KEYS) {
          await rejectsWith(backend.put(k, Buffer.from('x')), 'ERR_INVALID_ARGUMENT', /object key/);
          await rejectsWith(backend.get(k), 'ERR_INVALID_ARGUMENT', /object key/);
          await rejectsWith(backend.head(k), 'ERR_INVALID_ARGUMENT', /object key/);
          await rejectsWith(backend.delete(k), 'ERR_INVALID_ARGUMENT', /object key/);
        }
        await rejectsWith(backend.list('sp ace'), 'ERR_INVALID_ARGUMENT', /prefix/);
      }
      assert.deepEqual(await b.list(''), [], 'nothing was written');
      // The same backend does fail when it has to reach its storage: the refusals above came first.
      await assert.rejects(off.put('fine/key', Buffer.from('x')), (e) => isVnsnapError(e) && e.code !== 'ERR_INVALID_ARGUMENT');
    });

    it('a reader racing replacements sees one whole version or the other, never a part or a mix', async () => {
      const size = 2 << 20;
      const versions = [bytes(size, 0xa1), bytes(size, 0xb2)];
      await b.put('race/obj', versions[0] as Buffer);
      let writing = true;
      const writer = (async () => {
        for (let i = 1; i <= 12; i++) await b.put('race/obj', versions[i % 2] as Buffer);
        writing = false;
      })();
      let reads = 0;
      const seen = new Set<number>();
      while (writing) {
        const got = await b.get('race/obj');
        reads++;
        assert.equal(got.length, size, 'a whole object');
        const first = got[0] as number;
        assert.ok(first === 0xa1 || first === 0xb2);
        assert.equal(got.indexOf(first === 0xa1 ? 0xb2 : 0xa1), -1, 'one version, not a mix');
        assert.ok(got.every((x) => x === first), 'no byte of any other content');
        seen.add(first);
        const h = await b.head('race/obj');
        assert.equal(h?.size, size);
      }
      await writer;
      assert.ok(reads >= 1);
      assert.deepEqual(await b.list('race/'), ['race/obj'], 'no temporary object is listed');
    });
  });
}

/** A backend with room for about `room` bytes, and a way to see every name it holds on disk. */
export type OpenFullBackend = () => Promise<{ backend: ObjectBackend; room: number; close(): Promise<void>; rawNames(): Promise<string[]> }>;

export function describeFullBackendCompliance(label: string, openFull: OpenFullBackend): void {
  describe(`ObjectBackend compliance, full storage: ${label}`, function () {
    this.timeout(60_000);
    it('a put that does not fit is ERR_STORE_FULL and leaves nothing; the objects before it stay whole', async () => {
      const t = await openFull();
      try {
        const piece = Math.max(4096, Math.floor(t.room / 8));
        const kept: string[] = [];
        let failure: unknown;
        for (let i = 0; i < 64 && failure === undefined; i++) {
          const key = `full/${String(i).padStart(2, '0')}`;
          try {
            await t.backend.put(key, bytes(piece, i));
            kept.push(key);
          } catch (e) {
            failure = e;
            assert.equal(await t.backend.head(key), null, 'the failed object does not exist');
          }
        }
        assert.ok(isVnsnapError(failure, 'ERR_STORE_FULL'), `expected ERR_STORE_FULL, got ${String(failure)}`);
        assert.match((failure as Error).message, new RegExp(`^${t.backend.describe.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: put full/\\d\\d failed`));
        assert.ok(kept.length >= 1);
        assert.deepEqual(await t.backend.list('full/'), kept);
        assert.deepEqual((await t.rawNames()).sort(), kept, 'no temporary file is left behind');
        for (const [i, k] of kept.entries()) assert.deepEqual(await t.backend.get(k), bytes(piece, i));
      } finally {
        await t.close();
      }
    });
  });
}

/** The key and size of an ObjectInfo (its time is checked on its own). */
function keyAndSize(i: ObjectInfo | null): { key: string; size: number } | null {
  return i === null ? null : { key: i.key, size: i.size };
}
