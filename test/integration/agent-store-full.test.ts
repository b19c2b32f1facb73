import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LocalDirStore } from '../../proto/store/local-dir';
import { isVnsnapError } from '../../proto/core/errors';
import { fullStoreCompliance } from '../support/compliance/store';

describe('LocalDirStore on a full disk (tmpfs of 256 KiB)', function () {
  let dir: string;
  let mounted = false;
  before(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-full-'));
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', dir], { stdio: 'pipe' });
      mounted = true;
    } catch {
      this.skip();
    }
  });
  after(() => {
    if (mounted) execFileSync('umount', [dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('ENOSPC becomes ERR_STORE_FULL and leaves no partial file; a small artefact still fits afterwards', async () => {
    const store = new LocalDirStore(dir);
    await store.init();
    const w = await store.create('snapshots/s1/vm1.mem');
    let err: unknown;
    try {
      for (let i = 0; i < 64; i++) await w.write(Buffer.alloc(16 * 1024, i));
      await w.commit();
    } catch (e) {
      err = e;
    }
    assert.ok(isVnsnapError(err, 'ERR_STORE_FULL'), `expected ERR_STORE_FULL, got ${String(err)}`);
    assert.match((err as Error).message, /store is full while writing snapshots\/s1\/vm1\.mem; the partial artefact was removed/);
    assert.deepEqual(fs.readdirSync(path.join(dir, 'snapshots/s1')), []);
    await w.abort();
    await assert.rejects(store.put('snapshots/s1/big', Buffer.alloc(512 * 1024)), (e) => isVnsnapError(e, 'ERR_STORE_FULL'));
    assert.deepEqual(fs.readdirSync(path.join(dir, 'snapshots/s1')), []);
    const a = await store.put('snapshots/s1/small', Buffer.from('ok'));
    assert.equal(await store.verify(a), null);
    await store.deleteByPrefix('snapshots/');
  });

  let stores = 0;
  fullStoreCompliance('LocalDirStore on the 256 KiB tmpfs', async () => {
    const store = new LocalDirStore(path.join(dir, `store-${++stores}`));
    await store.init();
    return { store, room: 256 * 1024 };
  });
});
