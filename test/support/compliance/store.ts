/**
 * The SnapshotStore compliance suite: one set of mocha tests every store backend must pass
 * (the local directory now, the object store when it arrives), with exact outcomes.
 *
 *   snapshotStoreCompliance('local dir', { open, close })   // the contract, on a fresh store each test
 *   fullStoreCompliance('local dir on tmpfs', openFull)      // a store with little room (needs one)
 *
 * It checks what proto/store/snapshot-store.ts promises: put/get/stat/list/delete/deleteByPrefix
 * semantics; a writer's artefact is invisible until commit (and after abort, or when never
 * committed: the "crash"); writes apply in call order; size and lower-case SHA-256 computed
 * while writing, and verify()'s exact one-line problems; path confinement with its exact
 * messages; block images where the store has them (createBlockImage: an image from its base
 * with only the blocks put replaced, its chunk-list digest verified, linked and deleted like any
 * artefact, the contract's errors) and their absence where it has not; and, given a full store,
 * ERR_STORE_FULL with nothing of the failed artefact left.
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { isVnsnapError, type ErrorCode } from '../../../proto/core/errors';
import { chunkListSha256 } from '../../../proto/store/cas-index';
import { pseudoRandomBytes } from '../memory-objects';
import { CHUNK_LIST_ATTRIBUTE, DIGEST_ATTRIBUTE, DIGEST_CHUNK_LIST, type SnapshotStore } from '../../../proto/store/snapshot-store';

export interface StoreHarness {
  /** A fresh, empty store. */
  open(): Promise<SnapshotStore>;
  /** Release it and everything in it. */
  close(store: SnapshotStore): Promise<void>;
  /** The store keeps each distinct byte sequence once (content-addressed): a repeat or a link adds nothing. */
  dedup: boolean;
  /** The store has createBlockImage (a content-addressed one); without it, callers fall back to create(). */
  blockImages: boolean;
}

/** A fresh, empty store with room for about `room` bytes. */
export type OpenFullStore = () => Promise<{ store: SnapshotStore; room: number }>;

const sha = (b: Uint8Array | string): string => createHash('sha256').update(b).digest('hex');

/** The attributes a store returns for `content` written whole: a content-addressed store binds its chunk list (one chunk for these small artefacts). */
function attrsOf(harness: StoreHarness, content: string): { attributes?: Record<string, string> } {
  if (!harness.dedup) return {};
  return { attributes: { [CHUNK_LIST_ATTRIBUTE]: chunkListSha256(content === '' ? [] : [{ sha256: sha(content), size: Buffer.byteLength(content) }]) } };
}

function rejectsWith(p: Promise<unknown>, code: ErrorCode, message?: string | RegExp): Promise<void> {
  return assert.rejects(p, (e) => {
    assert.ok(isVnsnapError(e, code), `expected ${code}, got ${String(e)}`);
    if (typeof message === 'string') assert.equal((e as Error).message, message);
    else if (message) assert.match((e as Error).message, message);
    return true;
  });
}

export function snapshotStoreCompliance(label: string, harness: StoreHarness): void {
  describe(`SnapshotStore compliance: ${label}`, () => {
    let store: SnapshotStore;
    beforeEach(async () => {
      store = await harness.open();
    });
    afterEach(async () => {
      await harness.close(store);
    });

    it('put returns the path, size and lower-case SHA-256; get, stat and list see exactly that artefact', async () => {
      const a = await store.put('snapshots/s1/vm1.mem', Buffer.from('hello world'));
      assert.deepEqual(a, { path: 'snapshots/s1/vm1.mem', size: 11, sha256: sha('hello world'), storedBytes: 11, ...attrsOf(harness, 'hello world') });
      assert.deepEqual(await store.get('snapshots/s1/vm1.mem'), Buffer.from('hello world'));
      assert.equal(await store.stat('snapshots/s1/vm1.mem'), 11);
      assert.deepEqual(await store.list(''), ['snapshots/s1/vm1.mem']);
      const empty = await store.put('snapshots/s1/empty', new Uint8Array(0));
      assert.deepEqual(empty, { path: 'snapshots/s1/empty', size: 0, sha256: sha(''), storedBytes: 0, ...attrsOf(harness, '') });
      assert.deepEqual(await store.get('snapshots/s1/empty'), Buffer.alloc(0));
      assert.equal(await store.stat('snapshots/s1/empty'), 0);
    });

    it('read streams the artefact in order; an absent one is ERR_NOT_FOUND', async () => {
      const big = Buffer.alloc(9 << 20);
      for (let i = 0; i < big.length; i += 4096) big.writeUInt32BE(i, i);
      await store.put('snapshots/s1/big', big);
      const parts: Buffer[] = [];
      for await (const b of store.read('snapshots/s1/big')) parts.push(b);
      assert.ok(parts.length > 1, `one ${big.length}-byte piece: read() must stream`);
      assert.ok(Buffer.concat(parts).equals(big));
      await rejectsWith((async () => {
        for await (const _ of store.read('snapshots/none/x')) void _;
      })(), 'ERR_NOT_FOUND', 'artefact snapshots/none/x is not in the store');
    });

    it('link gives an artefact a second, independent name', async () => {
      await store.put('snapshots/s1/disk', Buffer.from('layer bytes'));
      const l = await store.link('snapshots/s1/disk', 'snapshots/s2/disk');
      assert.deepEqual(l, { path: 'snapshots/s2/disk', size: 11, sha256: sha('layer bytes'), storedBytes: harness.dedup ? 0 : 11, ...attrsOf(harness, 'layer bytes') });
      await store.deleteByPrefix('snapshots/s1/');
      assert.deepEqual(await store.get('snapshots/s2/disk'), Buffer.from('layer bytes'));
      assert.equal(await store.verify(l), null);
      assert.deepEqual(await store.list('snapshots/'), ['snapshots/s2/disk']);
      await rejectsWith(store.link('snapshots/s1/disk', 'snapshots/s3/disk'), 'ERR_NOT_FOUND', 'artefact snapshots/s1/disk is not in the store');
      assert.deepEqual(await store.list('snapshots/'), ['snapshots/s2/disk']);
    });

    it('storedBytes of a repeated artefact: nothing new in a content-addressed store, its size otherwise', async () => {
      await store.put('v/a', Buffer.from('same bytes'));
      const again = await store.put('v/b', Buffer.from('same bytes'));
      assert.equal(again.storedBytes, harness.dedup ? 0 : 10);
    });

    it('an absent artefact: get is ERR_NOT_FOUND, stat is null, list is empty, delete is a no-op', async () => {
      await rejectsWith(store.get('snapshots/none/x'), 'ERR_NOT_FOUND');
      assert.equal(await store.stat('snapshots/none/x'), null);
      assert.deepEqual(await store.list('snapshots/'), []);
      await store.delete('snapshots/none/x');
      assert.equal(await store.deleteByPrefix('snapshots/none/'), 0);
    });

    it('put replaces an artefact of the same path whole', async () => {
      await store.put('a/b', Buffer.from('first version, longer'));
      const a = await store.put('a/b', Buffer.from('second'));
      assert.deepEqual(a, { path: 'a/b', size: 6, sha256: sha('second'), storedBytes: 6, ...attrsOf(harness, 'second') });
      assert.deepEqual(await store.get('a/b'), Buffer.from('second'));
      assert.deepEqual(await store.list('a/'), ['a/b']);
    });

    it('a writer: nothing is visible before commit; commit returns what was written, in call order', async () => {
      const w = await store.create('snapshots/s1/vm1.mem');
      assert.equal(w.path, 'snapshots/s1/vm1.mem');
      assert.equal(w.bytes, 0);
      // Not awaited one by one: the writes still land in call order.
      await Promise.all([w.write(Buffer.from('one ')), w.write(Buffer.from('two ')), w.write(Buffer.from('three'))]);
      assert.equal(w.bytes, 13);
      assert.equal(await store.stat('snapshots/s1/vm1.mem'), null);
      await rejectsWith(store.get('snapshots/s1/vm1.mem'), 'ERR_NOT_FOUND');
      assert.deepEqual(await store.list(''), []);
      assert.deepEqual(await w.commit(), { path: 'snapshots/s1/vm1.mem', size: 13, sha256: sha('one two three'), storedBytes: 13, ...attrsOf(harness, 'one two three') });
      assert.deepEqual(await store.get('snapshots/s1/vm1.mem'), Buffer.from('one two three'));
      assert.deepEqual(await store.list(''), ['snapshots/s1/vm1.mem']);
      await rejectsWith(w.write(Buffer.from('more')), 'ERR_STATE', 'artefact snapshots/s1/vm1.mem is already committed');
      await rejectsWith(w.commit(), 'ERR_STATE', 'artefact snapshots/s1/vm1.mem is already committed');
      await w.abort();
      assert.deepEqual(await store.get('snapshots/s1/vm1.mem'), Buffer.from('one two three'), 'abort after commit keeps the artefact');
    });

    it('abort leaves nothing (and keeps the older artefact of that path); it is idempotent and ends the writer', async () => {
      await store.put('x/y.bin', Buffer.from('old'));
      const w = await store.create('x/y.bin');
      await w.write(Buffer.from('new, never committed'));
      await w.abort();
      await w.abort();
      assert.deepEqual(await store.get('x/y.bin'), Buffer.from('old'));
      assert.deepEqual(await store.list(''), ['x/y.bin']);
      await rejectsWith(w.write(Buffer.from('more')), 'ERR_STATE', 'artefact x/y.bin is already aborted');
      await rejectsWith(w.commit(), 'ERR_STATE', 'artefact x/y.bin is already aborted');
      assert.deepEqual(await store.get('x/y.bin'), Buffer.from('old'));
    });

    it('a writer never committed (a crash) is invisible, and deleteByPrefix clears it without counting it', async () => {
      const w = await store.create('snapshots/s2/vm1.mem');
      await w.write(Buffer.alloc(1000, 7));
      assert.deepEqual(await store.list('snapshots/'), []);
      assert.equal(await store.stat('snapshots/s2/vm1.mem'), null);
      assert.equal(await store.deleteByPrefix('snapshots/s2/'), 0);
      assert.deepEqual(await store.list(''), []);
      await w.abort(); // release what the "crash" held
    });

    it('list is sorted and matches the prefix as a string; delete and deleteByPrefix remove exactly what they name', async () => {
      for (const p of ['snapshots/b/4', 'snapshots/a/2', 'snapshots/ab/3', 'snapshots/a/1', 'other/5']) await store.put(p, Buffer.from(p));
      assert.deepEqual(await store.list(''), ['other/5', 'snapshots/a/1', 'snapshots/a/2', 'snapshots/ab/3', 'snapshots/b/4']);
      assert.deepEqual(await store.list('snapshots/a'), ['snapshots/a/1', 'snapshots/a/2', 'snapshots/ab/3']);
      assert.deepEqual(await store.list('snapshots/a/'), ['snapshots/a/1', 'snapshots/a/2']);
      assert.deepEqual(await store.list('snapshots/a/1'), ['snapshots/a/1']);
      assert.deepEqual(await store.list('snapshots/c'), []);
      assert.equal(await store.deleteByPrefix('snapshots/a/'), 2);
      assert.deepEqual(await store.list(''), ['other/5', 'snapshots/ab/3', 'snapshots/b/4']);
      await store.delete('snapshots/b/4');
      await store.delete('snapshots/b/4');
      assert.deepEqual(await store.list(''), ['other/5', 'snapshots/ab/3']);
      assert.equal(await store.deleteByPrefix('snapshots/'), 1);
      assert.deepEqual(await store.list(''), ['other/5']);
      // A directory emptied by deleteByPrefix takes new artefacts again.
      await store.put('snapshots/a/1', Buffer.from('again'));
      assert.deepEqual(await store.list('snapshots/'), ['snapshots/a/1']);
    });

    it('verify: null for the artefact as committed (checksum case-insensitive), else one exact line', async () => {
      const a = await store.put('s/a.bin', Buffer.from('0123456789'));
      assert.equal(await store.verify(a), null);
      assert.equal(await store.verify({ ...a, sha256: a.sha256.toUpperCase() }), null);
      assert.equal(await store.verify({ ...a, size: 11 }), 's/a.bin: size 10, expected 11');
      const other = sha('0123456780');
      assert.equal(await store.verify({ ...a, sha256: other }), `s/a.bin: SHA-256 ${a.sha256}, expected ${other}`);
      assert.equal(await store.verify({ ...a, path: 's/b.bin' }), 's/b.bin: missing');
      await store.delete('s/a.bin');
      assert.equal(await store.verify(a), 's/a.bin: missing');
    });

    if (!harness.blockImages) {
      it('has no createBlockImage: a caller falls back to create() with the whole image', () => {
        assert.equal(store.createBlockImage, undefined);
      });
    } else {
      const BS = 4096;
      const opts = { size: 8 * BS, blockSize: BS };
      const blockOf = (seed: number): Buffer => pseudoRandomBytes(BS, seed); // incompressible: stored bytes are exact

      it('a block image: an incremental one is its base with the blocks put replaced, then its tail; verified, linked, listed and deleted like any artefact', async () => {
        const create = store.createBlockImage?.bind(store) as NonNullable<SnapshotStore['createBlockImage']>;
        const w = await create('s/1/vm.mem', opts);
        assert.equal(w.path, 's/1/vm.mem');
        for (let i = 0; i < 8; i++) await w.putBlock(i, blockOf(i + 1));
        await w.setTail(Buffer.from('device state'));
        const a = await w.commit();
        const base = Buffer.concat([...Array.from({ length: 8 }, (_, i) => blockOf(i + 1))]);
        assert.deepEqual({ path: a.path, size: a.size, digest: a.attributes?.[DIGEST_ATTRIBUTE], list: a.attributes?.[CHUNK_LIST_ATTRIBUTE] }, { path: 's/1/vm.mem', size: 8 * BS + 12, digest: DIGEST_CHUNK_LIST, list: a.sha256 });
        assert.equal(a.storedBytes, 8 * BS + 12);
        assert.deepEqual(await store.get(a.path), Buffer.concat([base, Buffer.from('device state')]));

        const w2 = await create('s/2/vm.mem', { ...opts, base: a.path });
        await w2.putBlock(3, blockOf(99));
        await w2.putBlock(6, blockOf(2)); // a block the store holds: named, not stored
        const b = await w2.commit();
        const want = Buffer.from(base);
        blockOf(99).copy(want, 3 * BS);
        blockOf(2).copy(want, 6 * BS);
        assert.deepEqual(await store.get(b.path), want, 'no tail set: none');
        assert.equal(b.storedBytes, BS);
        assert.equal(await store.stat(b.path), 8 * BS);
        assert.equal(await store.verify(b), null);
        assert.equal(await store.verify({ ...b, sha256: a.sha256 }), `s/2/vm.mem: SHA-256 ${b.sha256}, expected ${a.sha256}`);

        const l = await store.link(b.path, 'keep/vm.mem');
        assert.deepEqual(l, { ...b, path: 'keep/vm.mem', storedBytes: 0 });
        await store.delete(b.path);
        await store.delete(a.path);
        assert.deepEqual(await store.list(''), ['keep/vm.mem']);
        assert.deepEqual(await store.get(l.path), want);
        assert.equal(await store.verify(l), null);
      });

      it("a block image's errors: no base and a block never put, an absent base, a base of another shape", async () => {
        const create = store.createBlockImage?.bind(store) as NonNullable<SnapshotStore['createBlockImage']>;
        const w = await create('s/1/vm.mem', opts);
        for (let i = 0; i < 8; i++) if (i !== 4) await w.putBlock(i, blockOf(i + 1));
        await rejectsWith(w.commit(), 'ERR_FAILED_PRECONDITION', /block 4 /);
        assert.equal(await store.stat('s/1/vm.mem'), null);
        await rejectsWith(create('s/2/vm.mem', { ...opts, base: 's/none' }), 'ERR_NOT_FOUND', /s\/none/);
        await store.put('s/plain', Buffer.alloc(8 * BS));
        await rejectsWith(create('s/2/vm.mem', { ...opts, base: 's/plain' }), 'ERR_FAILED_PRECONDITION', /s\/plain/);
        const full = await create('s/3/vm.mem', opts);
        for (let i = 0; i < 8; i++) await full.putBlock(i, blockOf(1));
        await full.commit();
        await rejectsWith(create('s/2/vm.mem', { size: 16 * BS, blockSize: BS, base: 's/3/vm.mem' }), 'ERR_FAILED_PRECONDITION', /s\/3\/vm\.mem/);
        await rejectsWith(create('s/2/vm.mem', { size: 8 * BS, blockSize: 2 * BS, base: 's/3/vm.mem' }), 'ERR_FAILED_PRECONDITION', /s\/3\/vm\.mem/);
        assert.deepEqual(await store.list(''), ['s/3/vm.mem', 's/plain']);
      });
    }

    it('refuses every path that could leave the store, with a message naming the path and the rule', async () => {
      const rules: [string, string][] = [
        ['../x', 'bad artefact path "../x": no "." or ".." segments'],
        ['a/../../x', 'bad artefact path "a/../../x": no "." or ".." segments'],
        ['a/./b', 'bad artefact path "a/./b": no "." or ".." segments'],
        ['/etc/passwd', 'bad artefact path "/etc/passwd": it must be relative to the store root'],
        ['', 'bad artefact path "": it must be relative to the store root'],
        ['a\0b', 'bad artefact path "a\0b": it must be relative to the store root'],
        ['dir/', 'bad artefact path "dir/": it names a directory'],
        ['a/.b.tmp-0123456789ab', 'bad artefact path "a/.b.tmp-0123456789ab": reserved temporary name'],
      ];
      for (const [bad, message] of rules) {
        await rejectsWith(store.create(bad), 'ERR_INVALID_ARGUMENT', message);
        await rejectsWith(store.put(bad, Buffer.from('x')), 'ERR_INVALID_ARGUMENT', message);
        await rejectsWith(store.get(bad), 'ERR_INVALID_ARGUMENT', message);
        await rejectsWith(store.stat(bad), 'ERR_INVALID_ARGUMENT', message);
        await rejectsWith(store.delete(bad), 'ERR_INVALID_ARGUMENT', message);
        assert.equal(await store.verify({ path: bad, size: 1, sha256: 'aa' }), message);
      }
      await rejectsWith(store.list('../'), 'ERR_INVALID_ARGUMENT', 'bad prefix "../"');
      await rejectsWith(store.deleteByPrefix('/etc/'), 'ERR_INVALID_ARGUMENT', 'bad prefix "/etc/"');
      assert.deepEqual(await store.list(''), []);
    });
  });
}

export function fullStoreCompliance(label: string, openFull: OpenFullStore): void {
  describe(`SnapshotStore compliance, full store: ${label}`, () => {
    it('a write past the room is ERR_STORE_FULL and leaves nothing of the artefact; a small one still fits', async () => {
      const { store, room } = await openFull();
      const w = await store.create('snapshots/s1/vm1.mem');
      const chunk = 16 * 1024;
      let err: unknown;
      try {
        for (let i = 0; i * chunk < 4 * room; i++) await w.write(Buffer.alloc(chunk, i));
        await w.commit();
      } catch (e) {
        err = e;
      }
      assert.ok(isVnsnapError(err, 'ERR_STORE_FULL'), `expected ERR_STORE_FULL, got ${String(err)}`);
      assert.match((err as Error).message, /^store is full while (writing|committing) snapshots\/s1\/vm1\.mem; the partial artefact was removed$/);
      await w.abort();
      assert.equal(await store.stat('snapshots/s1/vm1.mem'), null);
      assert.deepEqual(await store.list(''), []);
      await rejectsWith(store.put('snapshots/s1/big', Buffer.alloc(4 * room)), 'ERR_STORE_FULL', /^store is full while (writing|committing) snapshots\/s1\/big; the partial artefact was removed$/);
      assert.deepEqual(await store.list(''), []);
      const a = await store.put('snapshots/s1/small', Buffer.from('ok'));
      assert.deepEqual(a, { path: 'snapshots/s1/small', size: 2, sha256: sha('ok'), storedBytes: 2 });
      assert.equal(await store.verify(a), null);
      assert.deepEqual(await store.list(''), ['snapshots/s1/small']);
    });
  });
}
