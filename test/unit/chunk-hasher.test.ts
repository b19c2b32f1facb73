import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { decodeIndex, indexKey } from '../../proto/store/cas-index';
import { CasStore } from '../../proto/store/cas-store';
import { InlineChunkHasher, WorkerChunkHasher, type ChunkHasher } from '../../proto/store/chunk-hasher';
import { DEFAULT_CHUNKER } from '../../proto/store/chunker';
import { KiB, SMALL } from '../support/cas-rig';
import { MemoryObjects, pseudoRandomBytes as bytes } from '../support/memory-objects';

/** Feed `data` in pieces of the given sizes (cycled), all pushes in flight at once; the chunks, their names and the artefact's SHA-256. */
async function run(h: ChunkHasher, data: Buffer, sizes: number[]): Promise<{ chunks: Buffer[]; names: string[]; sha: string }> {
  const pending = [];
  for (let off = 0, k = 0; off < data.length; k++) {
    const n = sizes[k % sizes.length] as number;
    pending.push(h.push(Buffer.from(data.subarray(off, off + n))));
    off += n;
  }
  const parts = await Promise.all(pending);
  const last = await h.end();
  return { chunks: [...parts, last].flatMap((p) => p.chunks), names: [...parts, last].flatMap((p) => p.sha256), sha: last.artefactSha256 };
}

describe('chunk hasher: on the caller\'s thread or in the worker', () => {
  it('the worker cuts and names exactly what the caller\'s thread does, whatever the pieces, pushes in flight together', async () => {
    const data = bytes(3 * 1024 * KiB + 123, 21);
    const inline = await run(new InlineChunkHasher(DEFAULT_CHUNKER, 'auto'), data, [512 * KiB]);
    assert.equal(Buffer.concat(inline.chunks).equals(data), true);
    assert.equal(inline.sha, createHash('sha256').update(data).digest('hex'));
    assert.deepEqual(inline.names, inline.chunks.map((c) => createHash('sha256').update(c).digest('hex')));
    const worker = await run(new WorkerChunkHasher(DEFAULT_CHUNKER, 'auto'), data, [1, 4095, 65536, 700 * KiB, 3]);
    assert.equal(worker.sha, inline.sha);
    assert.deepEqual(worker.names, inline.names);
    assert.deepEqual(worker.chunks.map((c) => c.length), inline.chunks.map((c) => c.length));
  });

  it('the addon\'s one-pass pair (where this CPU runs it) names the chunks and the artefact exactly as node:crypto does, whatever the pieces; an empty stream too', async function () {
    const probe = new InlineChunkHasher(DEFAULT_CHUNKER, 'auto');
    probe.close();
    if (!probe.onePass) this.skip(); // no SHA extensions or an addon without them: node:crypto hashes everywhere
    const small = { min: 64, avg: 256, max: 1024 }; // many chunks, many ends per push, every offset mod 64
    for (const [params, data, sizes] of [
      [DEFAULT_CHUNKER, bytes(3 * 1024 * KiB + 123, 31), [512 * KiB, 1, 63, 65, 2 * 1024 * KiB]],
      [small, bytes(200 * KiB + 7, 32), [1, 2, 3, 63, 64, 65, 127, 128, 129, 4096, 10_000]],
      [small, Buffer.alloc(0), [1]],
      [small, bytes(55, 33), [55]],
    ] as const) {
      const node = await run(new InlineChunkHasher(params, 'auto', 'node'), data, [...sizes]);
      const pair = await run(new InlineChunkHasher(params, 'auto'), data, [...sizes]);
      assert.equal(pair.sha, createHash('sha256').update(data).digest('hex'));
      assert.equal(node.sha, pair.sha);
      assert.deepEqual(pair.names, pair.chunks.map((c) => createHash('sha256').update(c).digest('hex')));
      assert.deepEqual(pair.names, node.names);
      assert.equal(Buffer.concat(pair.chunks).equals(data), true);
    }
  });

  it('pushes in shared memory are read in place by the worker, one slot reused for every push: the same chunks and names, whole chunks views of the slot', async () => {
    const data = bytes(3 * 1024 * KiB + 321, 26);
    const inline = await run(new InlineChunkHasher(DEFAULT_CHUNKER, 'auto'), data, [512 * KiB]);
    const slot = Buffer.from(new SharedArrayBuffer(512 * KiB));
    const h = new WorkerChunkHasher(DEFAULT_CHUNKER, 'auto');
    const chunks: Buffer[] = [];
    const names: string[] = [];
    let views = 0;
    for (let off = 0; off < data.length; off += 512 * KiB) {
      const piece = slot.subarray(0, data.copy(slot, 0, off, off + 512 * KiB));
      const r = await h.push(piece);
      views += r.chunks.filter((c) => c.buffer === slot.buffer).length;
      chunks.push(...r.chunks.map((c) => Buffer.from(c))); // used before the slot is reused, as the writer does
      names.push(...r.sha256);
      slot.fill(0xee); // reused: nothing the hasher keeps may see this
    }
    const last = await h.end();
    chunks.push(...last.chunks);
    names.push(...last.sha256);
    assert.equal(last.artefactSha256, inline.sha);
    assert.deepEqual(names, inline.names);
    assert.equal(Buffer.concat(chunks).equals(data), true);
    assert.ok(views > 0 && views < names.length, `${views} of ${names.length} chunks are views of the slot (the others span two pushes)`);
  });

  it('two streams in the worker at once keep apart; a closed one is dropped', async () => {
    const a = bytes(700 * KiB, 22);
    const b = bytes(500 * KiB, 23);
    const dropped = new WorkerChunkHasher(SMALL, 'auto');
    await dropped.push(bytes(100 * KiB, 24));
    dropped.close();
    const [ra, rb] = await Promise.all([run(new WorkerChunkHasher(SMALL, 'auto'), a, [64 * KiB]), run(new WorkerChunkHasher(SMALL, 'auto'), b, [100 * KiB])]);
    assert.equal(ra.sha, createHash('sha256').update(a).digest('hex'));
    assert.equal(rb.sha, createHash('sha256').update(b).digest('hex'));
    assert.equal(Buffer.concat(rb.chunks).equals(b), true);
  });

  it('a store hashing in the worker writes the same index as one hashing on the caller\'s thread, and reads back', async () => {
    const data = bytes(900 * KiB, 25);
    const indexes = [];
    for (const hashWorker of [false, true]) {
      const objects = new MemoryObjects();
      const store = new CasStore(objects, { chunker: SMALL, pack: { targetBytes: 128 * KiB, compress: 'none' }, hashWorker });
      const w = await store.create('hw/a');
      for (let off = 0; off < data.length; off += 100 * KiB) await w.write(data.subarray(off, off + 100 * KiB));
      const a = await w.commit();
      assert.equal(a.sha256, createHash('sha256').update(data).digest('hex'));
      assert.deepEqual(await store.get('hw/a'), data);
      const idx = decodeIndex(await objects.get(indexKey('hw/a')), 'hw/a');
      indexes.push(idx.chunks.map((c) => [c.sha256, c.size, c.offset]));
    }
    assert.deepEqual(indexes[1], indexes[0]);
  });
});
