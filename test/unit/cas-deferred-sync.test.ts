import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VnsnapError } from '../../proto/core/errors';
import { indexKey } from '../../proto/store/cas-index';
import { CasStore } from '../../proto/store/cas-store';
import { LocalObjects } from '../../proto/store/local-objects';
import { packIdOf } from '../../proto/store/pack-format';
import { KiB, SMALL } from '../support/cas-rig';
import { MemoryObjects, pseudoRandomBytes as bytes } from '../support/memory-objects';

const PACK = { targetBytes: 64 * KiB, compress: 'none' as const };

/** The memory backend with the deferred puts, every call recorded in order. */
class DeferringObjects extends MemoryObjects {
  readonly calls: string[] = [];
  failSync: VnsnapError | undefined;

  override async put(key: string, data: Uint8Array): Promise<void> {
    this.calls.push(`put ${key}`);
    await super.put(key, data);
  }

  async putUnsynced(key: string, data: Uint8Array): Promise<void> {
    this.calls.push(`unsynced ${key}`);
    await super.put(key, data);
  }

  async sync(keys: readonly string[]): Promise<void> {
    this.calls.push(`sync ${keys.join(' ')}`);
    if (this.failSync) throw this.failSync;
  }
}

const kind = (c: string): string => `${c.split(' ')[0] as string} ${(c.split(' ')[1] ?? '').split('/')[0] as string}`;

describe('CAS packs: one flush per artefact (deferred sync)', () => {
  it('packs are put unsynced, flushed together at commit, then their tables, then the index', async () => {
    const objects = new DeferringObjects();
    const store = new CasStore(objects, { chunker: SMALL, pack: PACK });
    const data = bytes(300 * KiB, 11);
    const w = await store.create('dsync/a');
    for (let off = 0; off < data.length; off += 32 * KiB) await w.write(data.subarray(off, off + 32 * KiB));
    assert.deepEqual(objects.keys().filter((k) => k.startsWith('packtabs/')), [], 'no table before the commit');
    await w.commit();
    const packs = objects.keys().filter((k) => k.startsWith('packs/'));
    const tables = objects.keys().filter((k) => k.startsWith('packtabs/'));
    assert.ok(packs.length >= 4, `several packs: ${packs.length}`);
    assert.deepEqual(tables.map((k) => packIdOf(k)), packs.map((k) => packIdOf(k)), 'one table per pack');
    const order = objects.calls.filter((c) => !c.startsWith('put locks/')).map(kind);
    const n = packs.length;
    assert.deepEqual(order, [...Array<string>(n).fill('unsynced packs'), 'sync packs', ...Array<string>(n).fill('unsynced packtabs'), 'sync packtabs', 'put artefacts']);
    const syncs = objects.calls.filter((c) => c.startsWith('sync '));
    assert.deepEqual(syncs[0]?.split(' ').slice(1).sort(), [...packs].sort(), 'the first sync names every pack');
    assert.deepEqual(syncs[1]?.split(' ').slice(1).sort(), [...tables].sort(), 'the second every table');
    assert.deepEqual(await store.get('dsync/a'), data);
  });

  it('a failed flush fails the commit with the backend code and puts no table and no index', async () => {
    const objects = new DeferringObjects();
    objects.failSync = new VnsnapError('ERR_STORE_FULL', 'memory: sync failed (injected)');
    const store = new CasStore(objects, { chunker: SMALL, pack: PACK });
    const w = await store.create('dsync/b');
    await w.write(bytes(200 * KiB, 12));
    await assert.rejects(w.commit(), (e: VnsnapError) => e.code === 'ERR_STORE_FULL');
    assert.deepEqual(objects.keys().filter((k) => k.startsWith('packtabs/') || k === indexKey('dsync/b')), []);
    assert.equal(await store.stat('dsync/b'), null);
  });

  it('another writer of the same store finds no chunk of a pack not yet flushed', async () => {
    const objects = new DeferringObjects();
    const store = new CasStore(objects, { chunker: SMALL, pack: PACK });
    const data = bytes(200 * KiB, 13);
    const a = await store.create('dsync/c1');
    await a.write(data);
    const b = await store.create('dsync/c2');
    await b.write(data);
    const sb = await b.commit();
    assert.equal(sb.storedBytes, data.length, 'b stored its own chunks: a had flushed nothing');
    await a.commit();
    assert.deepEqual(await store.get('dsync/c1'), data);
    assert.deepEqual(await store.get('dsync/c2'), data);
    const c = await store.create('dsync/c3');
    await c.write(data);
    assert.equal((await c.commit()).storedBytes, 0, 'once flushed, the chunks are found');
  });

  it('LocalObjects: putUnsynced is whole for readers and sync makes it durable; the store writes and reads through them', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dsync-'));
    try {
      const lo = new LocalObjects(dir);
      await lo.init();
      await lo.putUnsynced('packs/ab/x1', Buffer.from('one'));
      await lo.putUnsynced('packs/cd/x2', Buffer.from('two'));
      await lo.sync(['packs/ab/x1', 'packs/cd/x2']);
      assert.deepEqual(await lo.list('packs/'), ['packs/ab/x1', 'packs/cd/x2']);
      assert.equal((await lo.get('packs/cd/x2')).toString(), 'two');
      await assert.rejects(lo.sync(['packs/ef/none']), (e: VnsnapError) => e.code === 'ERR_INTERNAL' && e.message.includes('packs/ef/none'));
      const store = new CasStore(lo, { chunker: SMALL, pack: PACK });
      const data = bytes(300 * KiB, 14);
      const a = await store.put('dsync/d', data);
      assert.deepEqual(await store.get('dsync/d'), data);
      assert.equal(await store.verify(a), null, 'every chunk and the artefact check');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a writer reuses its packs\' memory from pack to pack: every pack file is the bytes its id names, and the artefact reads back whole', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dsync-'));
    try {
      const lo = new LocalObjects(dir);
      await lo.init();
      const store = new CasStore(lo, { chunker: SMALL, pack: { targetBytes: 64 * KiB, uploads: 3, compress: 'deflate' } });
      // compressible and incompressible runs: packs of encoded and plain chunks, of different sizes
      const data = Buffer.concat([bytes(400 * KiB, 21), Buffer.alloc(200 * KiB, 7), bytes(300 * KiB, 22), Buffer.from('vnsnap '.repeat(40 * 1024))]);
      const w = await store.create('dsync/reuse');
      for (let off = 0; off < data.length; off += 24 * KiB) await w.write(data.subarray(off, off + 24 * KiB));
      const a = await w.commit();
      const packs = (await lo.list('packs/')).filter((k) => packIdOf(k) !== null);
      assert.ok(packs.length >= 8, `${packs.length} packs`);
      for (const k of packs) assert.equal(createHash('sha256').update(await lo.get(k)).digest('hex'), packIdOf(k), `${k} holds the bytes its id names`);
      assert.deepEqual(await store.get('dsync/reuse'), data);
      assert.equal(await store.verify(a), null, 'every chunk and the artefact check');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
