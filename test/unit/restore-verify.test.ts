import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { isVnsnapError } from '../../proto/core/errors';
import { expectOf, verifiedRead, verifyingStore } from '../../agent/restore-verify';
import { chunkListSha256, decodeIndex, encodeIndex, indexKey } from '../../proto/store/cas-index';
import { CHUNK_LIST_ATTRIBUTE } from '../../proto/store/snapshot-store';
import { checkedClaim } from '../../proto/store/checked-read';
import { packKey } from '../../proto/store/pack-format';
import { readAhead } from '../../proto/store/read-ahead';
import { KiB, rig, type Rig } from '../support/cas-rig';
import { failureOf as failure, pseudoRandomBytes as bytes } from '../support/memory-objects';

async function* chunks(...parts: string[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield Buffer.from(p);
}

/** What a consumer received before the stream ended, and how it ended. */
async function consume(src: AsyncIterable<Buffer>): Promise<{ got: string; error: string }> {
  let got = '';
  try {
    for await (const b of src) got += b.toString();
  } catch (e) {
    return { got, error: isVnsnapError(e) ? `${e.code}: ${e.message}` : String(e) };
  }
  return { got, error: '' };
}

describe('restore-verify: a memory image checked while it streams', () => {
  const sha = (s: string): string => createHash('sha256').update(s).digest('hex');
  const a = { path: 'snapshots/s/vm.mem', size: 9, sha256: sha('abcdefghi') };

  it('passes a right artefact on whole, chunk by chunk', async () => {
    assert.deepEqual(await consume(verifiedRead(chunks('abc', 'def', 'ghi'), a)), { got: 'abcdefghi', error: '' });
  });

  it('a wrong SHA-256 is ERR_CHECKSUM before the last chunk is handed out (the consumer never has the whole image)', async () => {
    assert.deepEqual(await consume(verifiedRead(chunks('abc', 'def', 'ghX'), a)), { got: 'abcdef', error: `ERR_CHECKSUM: snapshots/s/vm.mem: SHA-256 ${sha('abcdefghX')}, ${a.sha256} expected` });
  });

  it('a short or a long artefact is ERR_CHECKSUM naming the sizes', async () => {
    assert.deepEqual(await consume(verifiedRead(chunks('abc', 'def'), a)), { got: 'abc', error: 'ERR_CHECKSUM: snapshots/s/vm.mem: 6 bytes, 9 expected' });
    assert.deepEqual(await consume(verifiedRead(chunks('abc', 'def', 'ghij'), a)), { got: 'abc', error: 'ERR_CHECKSUM: snapshots/s/vm.mem: more than the 9 bytes expected' });
  });
});

describe('restore-verify over a content-addressed store: each byte hashed twice, not three times', () => {
  const PACK = { targetBytes: 64 * KiB, rangeBytes: 32 * KiB, aheadBytes: 64 * KiB };
  const data = bytes(200 * KiB, 21);
  const right = { path: 's1/vm.mem', size: data.length, sha256: createHash('sha256').update(data).digest('hex') };

  /** Bytes fed to SHA-256 while `run` runs (node:crypto's createHash, counted). */
  async function hashedBytes(run: () => Promise<void>): Promise<number> {
    const crypto = createRequire(__filename)('node:crypto') as { createHash: typeof createHash }; // the module itself, as the store's code calls it
    const real = crypto.createHash;
    let n = 0;
    crypto.createHash = ((alg: string) => {
      const h = real(alg);
      const update = h.update.bind(h);
      h.update = ((b: Buffer) => {
        n += b.length;
        return update(b);
      }) as typeof h.update;
      return h;
    }) as typeof createHash;
    try {
      await run();
    } finally {
      crypto.createHash = real;
    }
    return n;
  }

  async function stored(): Promise<Rig> {
    const r = rig({ pack: PACK });
    await r.store.put(right.path, data);
    return r;
  }

  it('a read and a get of a memory image hash its bytes twice (per chunk, whole) and hand them all out', async () => {
    const r = await stored();
    let got = '';
    assert.equal(await hashedBytes(async () => void (got = (await consume(verifiedRead(r.store.read(right.path), right))).error)), 2 * data.length);
    assert.equal(got, '');
    let whole: Buffer = Buffer.alloc(0);
    assert.equal(await hashedBytes(async () => void (whole = await verifyingStore(r.store, [right]).get(right.path))), 2 * data.length);
    assert.deepEqual(whole, data);
  });

  it('verify hashes each byte twice too', async () => {
    const r = await stored();
    assert.equal(await hashedBytes(async () => assert.equal(await r.store.verify(right), null)), 2 * data.length);
  });

  it('a read the store checked stays tagged through a read ahead', async () => {
    const r = await stored();
    assert.ok(checkedClaim(r.store.read(right.path)));
    assert.ok(checkedClaim(readAhead(r.store.read(right.path), 64 * KiB)));
  });

  it('an image whose index names another SHA-256 or size is ERR_CHECKSUM before any byte is handed out', async () => {
    const r = await stored();
    const other = { ...right, sha256: 'e'.repeat(64) };
    assert.deepEqual(await consume(verifiedRead(r.store.read(right.path), other)), { got: '', error: `ERR_CHECKSUM: s1/vm.mem: SHA-256 ${right.sha256}, ${other.sha256} expected` });
    assert.deepEqual(await consume(verifiedRead(r.store.read(right.path), { ...right, size: right.size + 1 })), { got: '', error: `ERR_CHECKSUM: s1/vm.mem: ${right.size} bytes, ${right.size + 1} expected` });
    assert.equal(await failure(verifyingStore(r.store, [other]).get(right.path)), `ERR_CHECKSUM: s1/vm.mem: SHA-256 ${right.sha256}, ${other.sha256} expected`);
  });

  it('a corrupt chunk, a missing pack and an index whose chunks are not its SHA-256 are still refused, the last chunk never handed out', async () => {
    let r = await stored();
    const idx = decodeIndex(await r.objects.get(indexKey(right.path)), right.path);
    r.objects.corrupt(packKey(idx.chunks[0]?.pack as string));
    assert.match((await consume(verifiedRead(r.store.read(right.path), right))).error, /^ERR_CHECKSUM: artefact s1\/vm\.mem: chunk \d+ of \d+ \(\w+\) is corrupt /);
    r = await stored();
    await r.objects.delete(packKey(idx.chunks[0]?.pack as string));
    assert.match((await consume(verifiedRead(r.store.read(right.path), right))).error, /^ERR_DATA_LOSS: artefact s1\/vm\.mem: chunk 1 of \d+ \(\w+\) is missing from the store$/);
    // A forged index: the expected SHA-256 over the chunks of another artefact.
    r = await stored();
    await r.store.put('s1/other', bytes(200 * KiB, 22));
    const forged = decodeIndex(await r.objects.get(indexKey('s1/other')), 's1/other');
    await r.objects.put(indexKey(right.path), encodeIndex({ ...forged, path: right.path, sha256: right.sha256 }));
    const out = await consume(verifiedRead(r.store.read(right.path), right));
    assert.match(out.error, /^ERR_CHECKSUM: artefact s1\/vm\.mem: its chunks have SHA-256 \w+, its index says /);
    const raw = await consume(r.store.read(right.path));
    assert.equal(raw.error, out.error);
    assert.ok(out.got.length > 0 && out.got.length < raw.got.length, 'the chunks before the last, not the last');
  });

  describe('with the chunk list the manifest recorded (CHUNK_LIST_ATTRIBUTE): each byte hashed once', () => {
    /** The artefact as its manifest records it: with the attributes its commit returned. */
    async function recorded(): Promise<{ r: Rig; a: typeof right & { attributes: Record<string, string> } }> {
      const r = rig({ pack: PACK });
      const s = await r.store.put(right.path, data);
      assert.deepEqual(Object.keys(s.attributes ?? {}), [CHUNK_LIST_ATTRIBUTE]);
      return { r, a: { ...right, attributes: s.attributes as Record<string, string> } };
    }

    /** Each byte once, plus the chunk list's text (its SHA-256 compared with the manifest's). */
    async function hashedOnce(r: Rig, path: string): Promise<number> {
      const idx = decodeIndex(await r.objects.get(indexKey(path)), path);
      return data.length + 'vnsnap-chunk-list/1\n'.length + idx.chunks.reduce((n, c) => n + `${c.sha256} ${c.size}\n`.length, 0);
    }

    it('a read and a get of a memory image hash its bytes once (per chunk) and hand them all out', async () => {
      const { r, a } = await recorded();
      const once = await hashedOnce(r, a.path);
      const parts: Buffer[] = [];
      assert.equal(await hashedBytes(async () => {
        for await (const b of verifyingStore(r.store, [a]).read(a.path)) parts.push(b);
      }), once);
      assert.deepEqual(Buffer.concat(parts), data);
      let whole: Buffer = Buffer.alloc(0);
      assert.equal(await hashedBytes(async () => void (whole = await verifyingStore(r.store, [a]).get(a.path))), once);
      assert.deepEqual(whole, data);
    });

    it('a disk layer read as the chain rebuild reads it (read() given its manifest entry\'s chunk list through the restore\'s store) hashes its bytes once', async () => {
      const { r, a } = await recorded();
      const parts: Buffer[] = [];
      assert.equal(await hashedBytes(async () => {
        for await (const b of verifiedRead(verifyingStore(r.store, []).read(a.path, expectOf(a)), a)) parts.push(b);
      }), await hashedOnce(r, a.path));
      assert.deepEqual(Buffer.concat(parts), data);
    });

    it('a forged index (another artefact\'s chunks under the expected SHA-256) is ERR_CHECKSUM before any byte is handed out', async () => {
      const { r, a } = await recorded();
      await r.store.put('s1/other', bytes(200 * KiB, 22));
      const forged = decodeIndex(await r.objects.get(indexKey('s1/other')), 's1/other');
      await r.objects.put(indexKey(a.path), encodeIndex({ ...forged, path: a.path, sha256: a.sha256 }));
      const out = await consume(verifyingStore(r.store, [a]).read(a.path));
      const msg = `ERR_CHECKSUM: artefact s1/vm.mem: its index lists other chunks than when it was written (chunk list SHA-256 ${chunkListSha256(forged.chunks)}, the manifest says ${a.attributes[CHUNK_LIST_ATTRIBUTE]}): the index was replaced or forged`;
      assert.deepEqual(out, { got: '', error: msg });
      assert.equal(await failure(verifyingStore(r.store, [a]).get(a.path)), msg);
      // A manifest without the chunk list (an older one) gets the whole-artefact check, as before.
      assert.match((await consume(verifyingStore(r.store, [right]).read(a.path))).error, /^ERR_CHECKSUM: artefact s1\/vm\.mem: its chunks have SHA-256 \w+, its index says /);
    });

    it('a corrupt chunk is still refused naming it, the last chunk never handed out', async () => {
      const { r, a } = await recorded();
      const idx = decodeIndex(await r.objects.get(indexKey(a.path)), a.path);
      r.objects.corrupt(packKey(idx.chunks[idx.chunks.length - 1]?.pack as string));
      const out = await consume(verifyingStore(r.store, [a]).read(a.path));
      assert.match(out.error, /^ERR_CHECKSUM: artefact s1\/vm\.mem: chunk \d+ of \d+ \(\w+\) is corrupt /);
      assert.ok(out.got.length < data.length);
    });
  });
});
