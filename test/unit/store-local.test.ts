import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { decodeChannel, encodeChannel, plainFrame } from '../../proto/artefacts/channel-state';
import { LocalDirStore } from '../../proto/store/local-dir';
import { storeFailure } from '../../proto/store/atomic-file';
import { isVnsnapError } from '../../proto/core/errors';
import { snapshotStoreCompliance } from '../support/compliance/store';

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** A LocalDirStore in a fresh temporary directory. */
async function tempStore(): Promise<LocalDirStore> {
  const store = new LocalDirStore(fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-store-')));
  await store.init();
  return store;
}

describe('LocalDirStore', () => {
  let dir: string;
  let store: LocalDirStore;
  beforeEach(async () => {
    store = await tempStore();
    dir = store.root;
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('commits atomically with size and lower-case hex SHA-256 computed while writing', async () => {
    const w = await store.create('snapshots/s1/vm1.mem');
    await w.write(Buffer.from('hello '));
    await w.write(Buffer.from('world'));
    assert.equal(w.bytes, 11);
    // Before commit: nothing visible under the final name, nothing listed.
    assert.equal(fs.existsSync(path.join(dir, 'snapshots/s1/vm1.mem')), false);
    assert.deepEqual(await store.list('snapshots/'), []);
    const a = await w.commit();
    assert.deepEqual(a, { path: 'snapshots/s1/vm1.mem', size: 11, sha256: sha('hello world'), storedBytes: 11 });
    assert.equal(fs.readFileSync(path.join(dir, 'snapshots/s1/vm1.mem'), 'utf8'), 'hello world');
    assert.deepEqual(fs.readdirSync(path.join(dir, 'snapshots/s1')), ['vm1.mem'], 'no temporary file left');
    assert.deepEqual(await store.list('snapshots/'), ['snapshots/s1/vm1.mem']);
    assert.equal((await store.get('snapshots/s1/vm1.mem')).toString(), 'hello world');
    assert.equal(await store.stat('snapshots/s1/vm1.mem'), 11);
    assert.equal(await store.stat('snapshots/s1/nope'), null);
  });

  it('a crash before rename leaves nothing visible, and deleteByPrefix removes the leftovers', async () => {
    const w = await store.create('snapshots/s2/vm1.mem');
    await w.write(Buffer.alloc(1000, 7));
    // "crash": the writer is never committed nor aborted.
    const files = fs.readdirSync(path.join(dir, 'snapshots/s2'));
    assert.equal(files.length, 1);
    assert.match(files[0]!, /^\.vm1\.mem\.tmp-[0-9a-f]{12}$/);
    assert.deepEqual(await store.list('snapshots/s2/'), []);
    await assert.rejects(store.get('snapshots/s2/vm1.mem'), (e) => isVnsnapError(e, 'ERR_NOT_FOUND'));
    assert.equal(await store.deleteByPrefix('snapshots/s2/'), 0);
    assert.equal(fs.existsSync(path.join(dir, 'snapshots/s2')), false);
    await w.abort(); // close the handle the "crash" left open
  });

  it('abort removes the temporary file', async () => {
    const w = await store.create('x/y.bin');
    await w.write(Buffer.from('abc'));
    await w.abort();
    await w.abort();
    assert.deepEqual(fs.readdirSync(path.join(dir, 'x')), []);
    await assert.rejects(w.write(Buffer.from('more')), (e) => isVnsnapError(e, 'ERR_STATE'));
  });

  it('verify detects a missing, truncated or modified artefact', async () => {
    const a = await store.put('s/a.bin', Buffer.from('0123456789'));
    assert.equal(await store.verify(a), null);
    assert.equal(await store.verify({ ...a, sha256: a.sha256.toUpperCase() }), null);
    const p = path.join(dir, 's/a.bin');
    fs.truncateSync(p, 5);
    assert.equal(await store.verify(a), 's/a.bin: size 5, expected 10');
    fs.writeFileSync(p, '0123456780');
    assert.equal(await store.verify(a), `s/a.bin: SHA-256 ${sha('0123456780')}, expected ${a.sha256}`);
    fs.rmSync(p);
    assert.equal(await store.verify(a), 's/a.bin: missing');
  });

  it('lists and deletes by prefix, and refuses paths that leave the root', async () => {
    await store.put('snapshots/a/1', Buffer.from('1'));
    await store.put('snapshots/a/2', Buffer.from('2'));
    await store.put('snapshots/ab/3', Buffer.from('3'));
    await store.put('snapshots/b/4', Buffer.from('4'));
    assert.deepEqual(await store.list('snapshots/a'), ['snapshots/a/1', 'snapshots/a/2', 'snapshots/ab/3']);
    assert.deepEqual(await store.list('snapshots/a/'), ['snapshots/a/1', 'snapshots/a/2']);
    assert.equal(await store.deleteByPrefix('snapshots/a/'), 2);
    assert.deepEqual(await store.list(''), ['snapshots/ab/3', 'snapshots/b/4']);
    await store.delete('snapshots/b/4');
    await store.delete('snapshots/b/4');
    assert.deepEqual(await store.list('snapshots/'), ['snapshots/ab/3']);
    for (const bad of ['../x', '/etc/passwd', 'a/../../x', 'a/./b', 'dir/', '']) {
      await assert.rejects(store.create(bad), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'), bad);
    }
    assert.match((await store.verify({ path: '../x', size: 1, sha256: 'aa' }))!, /bad artefact path/);
  });

  describe('failures of its atomic files', () => {
    it('a commit that cannot rename is ERR_INTERNAL and leaves neither the artefact nor a temporary file', async () => {
      await store.put('a/b', Buffer.from('keep'));
      const w = await store.create('a');
      await w.write(Buffer.from('cannot replace a directory'));
      await assert.rejects(w.commit(), (e) => isVnsnapError(e, 'ERR_INTERNAL') && /^store error while committing a: EISDIR/.test((e as Error).message));
      assert.deepEqual(fs.readdirSync(dir), ['a']);
      assert.deepEqual(await store.list(''), ['a/b']);
      await assert.rejects(w.write(Buffer.from('x')), (e) => isVnsnapError(e, 'ERR_STATE'));
    });

    it('a directory that cannot be created is a typed error naming the artefact', async () => {
      fs.writeFileSync(path.join(dir, 'file'), 'x');
      await assert.rejects(store.create('file/y'), (e) => isVnsnapError(e, 'ERR_INTERNAL') && /^store error while creating file\/y: /.test((e as Error).message));
    });

    it('ENOSPC and EDQUOT are ERR_STORE_FULL, any other failure ERR_INTERNAL, each with its cause', () => {
      const errno = (code: string): NodeJS.ErrnoException => Object.assign(new Error(`${code}: failed`), { code });
      for (const code of ['ENOSPC', 'EDQUOT']) {
        const e = storeFailure(errno(code), 'writing', 'snapshots/s/vm1.mem');
        assert.equal(e.code, 'ERR_STORE_FULL');
        assert.equal(e.message, 'store is full while writing snapshots/s/vm1.mem; the partial artefact was removed');
        assert.equal((e.cause as NodeJS.ErrnoException).code, code);
      }
      const other = storeFailure(errno('EIO'), 'committing', 'm.pb');
      assert.equal(other.code, 'ERR_INTERNAL');
      assert.equal(other.message, 'store error while committing m.pb: EIO: failed');
    });
  });
});

snapshotStoreCompliance('LocalDirStore', {
  dedup: false,
  blockImages: false,
  open: tempStore,
  async close(store) {
    fs.rmSync((store as LocalDirStore).root, { recursive: true, force: true });
  },
});

describe('channel-state file', () => {
  it('round-trips frames in order and rejects truncation and garbage', () => {
    const frames = [Buffer.from('first frame'), Buffer.alloc(0), Buffer.alloc(1500, 9)].map(plainFrame);
    const b = encodeChannel(frames);
    assert.equal(b.length, 12 + 3 * (4 + 10) + 11 + 0 + 1500);
    assert.deepEqual(decodeChannel(b), frames);
    assert.deepEqual(decodeChannel(encodeChannel([])), []);
    assert.throws(() => decodeChannel(b.subarray(0, b.length - 1)), (e) => isVnsnapError(e, 'ERR_DATA_LOSS'));
    assert.throws(() => decodeChannel(Buffer.from('not a channel file')), (e) => isVnsnapError(e, 'ERR_DATA_LOSS'));
    const huge = Buffer.from(b);
    huge.writeUInt32BE(0xffffffff, 8);
    assert.throws(() => decodeChannel(huge), /count 4294967295 exceeds the file/);
  });
});
