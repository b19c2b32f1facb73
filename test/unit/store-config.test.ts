/** The `store` config value: what each form parses to, the one-line refusals, and the layout guard of openStore(). */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isVnsnapError } from '../../proto/core/errors';
import { CasStore } from '../../proto/store/cas-store';
import { LocalDirStore } from '../../proto/store/local-dir';
import { describeStore, openStore, parseStoreConfig } from '../../proto/store/store-config';
import { StoreHandle } from '../../agent/store-handle';
import { MemoryObjects } from '../support/memory-objects';

const refuses = (raw: unknown, code: string, message: string): void => {
  assert.throws(
    () => parseStoreConfig(raw),
    (e) => isVnsnapError(e) && e.code === code && e.message === message,
  );
};

describe('store config', () => {
  it('parses a directory, a files layout and an S3 bucket', () => {
    assert.deepEqual(parseStoreConfig('/srv/s'), { kind: 'local', dir: '/srv/s' });
    assert.deepEqual(parseStoreConfig({ dir: '/srv/s' }), { kind: 'local', dir: '/srv/s' });
    assert.deepEqual(parseStoreConfig({ dir: '/srv/s', layout: 'files' }), { kind: 'files', dir: '/srv/s' });
    const s3 = parseStoreConfig({ s3: { endpoint: 'http://127.0.0.1:7480', bucket: 'vn-snap', credentialsFile: '/etc/k.json' } });
    assert.deepEqual(s3, { kind: 's3', s3: { endpoint: 'http://127.0.0.1:7480', bucket: 'vn-snap', credentialsFile: '/etc/k.json' } });
    assert.equal(describeStore(s3), 's3 http://127.0.0.1:7480/vn-snap');
    assert.equal(describeStore(parseStoreConfig('/srv/s')), 'local /srv/s');
  });

  it('refuses bad values in one line naming the field', () => {
    refuses('', 'ERR_CONFIG', 'store: expected a directory or { "s3": {...} }, got ""');
    refuses(7, 'ERR_CONFIG', 'store: expected a directory or { "s3": {...} }, got 7');
    refuses({ dir: '/x', layout: 'tar' }, 'ERR_CONFIG', 'store.layout: expected "chunks" or "files", got "tar"');
    refuses({ s3: { endpoint: 'rgw:7480', bucket: 'b1b' } }, 'ERR_CONFIG', 'store.s3.endpoint: expected http(s)://host[:port], got "rgw:7480"');
    refuses({ s3: { endpoint: 'http://h', bucket: 'B' } }, 'ERR_CONFIG', 'store.s3.bucket: expected an S3 bucket name (3-63 of a-z 0-9 . -), got "B"');
    refuses({ s3: { endpoint: 'http://h', bucket: 'bkt', secretAccessKey: 'x' } }, 'ERR_CONFIG', 'store.s3: unknown key "secretAccessKey" (known: endpoint, bucket, region, credentialsFile)');
  });

  it('openStore opens each local layout and refuses a directory holding the other one', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-storecfg-'));
    try {
      const cas = await openStore({ kind: 'local', dir: `${dir}/a` });
      assert.ok(cas instanceof CasStore);
      await cas.put('snapshots/s1/m', Buffer.from('x'));
      await assert.rejects(openStore({ kind: 'files', dir: `${dir}/a` }), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === `store ${dir}/a holds content-addressed chunks; set "store": "${dir}/a" to use it`);
      const files = await openStore({ kind: 'files', dir: `${dir}/b` });
      assert.ok(files instanceof LocalDirStore);
      await files.put('snapshots/s1/m', Buffer.from('x'));
      await assert.rejects(openStore({ kind: 'local', dir: `${dir}/b` }), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message.startsWith(`store ${dir}/b holds snapshots as whole files`));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('closing a store', () => {
  it('CasStore.close() closes its backend once; StoreHandle.close() closes the store it opened and then refuses calls', async () => {
    const objects = new MemoryObjects();
    let closed = 0;
    (objects as unknown as { close: () => void }).close = () => void closed++;
    new CasStore(objects).close();
    assert.equal(closed, 1);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnscl-'));
    try {
      const h = new StoreHandle({ kind: 'local', dir });
      await h.open();
      await h.put('a/b', Buffer.from('x'));
      h.close();
      h.close();
      await assert.rejects(h.get('a/b'), (e) => isVnsnapError(e) && e.code === 'ERR_STATE');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
