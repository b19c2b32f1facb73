/**
 * fileToStore (agent/drivers/job.ts): a local file into an artefact writer, read in chunks. With
 * copyChunks each chunk handed over is a buffer of its own, never read into again (the writer
 * may keep it: a pack does; a reused buffer would change the chunks kept before), sized to what
 * is left of the file; without, one buffer is reused.
 * Either way the writer gets the file's bytes in order, whatever the file's size against the
 * chunk size.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileToStore } from '../../agent/drivers/job';
import type { ArtefactWriter, StoredArtefact } from '../../proto/store/snapshot-store';

/** A writer that keeps the chunks it is handed as they are (no copy), as a pack does. */
class KeepingWriter implements ArtefactWriter {
  readonly path = 'f';
  readonly kept: Uint8Array[] = [];
  bytes = 0;
  write(chunk: Uint8Array): Promise<void> {
    this.kept.push(chunk);
    this.bytes += chunk.length;
    return Promise.resolve();
  }
  commit(): Promise<StoredArtefact> {
    return Promise.resolve({ path: this.path, size: this.bytes, sha256: '' });
  }
  abort(): Promise<void> {
    return Promise.resolve();
  }
}

describe('fileToStore', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnfs-unit-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const size of [0, 10, 64 * 1024, 1024 * 1024, 3 * 1024 * 1024 + 5]) {
    it(`a file of ${size} bytes: kept chunks hold the file, each chunk a buffer of its own at most the chunk size`, async () => {
      const file = path.join(dir, 'f');
      const data = Buffer.alloc(size);
      for (let i = 0; i < size; i++) data[i] = (i * 7 + (i >> 12)) & 0xff;
      fs.writeFileSync(file, data);
      const w = new KeepingWriter();
      const a = await fileToStore(file, w, { chunkBytes: 1024 * 1024, copyChunks: true });
      assert.equal(a.size, size);
      assert.ok(Buffer.concat(w.kept).equals(data));
      assert.ok(w.kept.every((c) => c.length <= 1024 * 1024 && c.length > 0));
    });
  }

  it('without copyChunks one buffer is read into again: a writer must copy what it keeps', async () => {
    const file = path.join(dir, 'f');
    const data = Buffer.alloc(2 * 1024 * 1024 + 3, 1);
    data.fill(2, 1024 * 1024);
    fs.writeFileSync(file, data);
    const w = new KeepingWriter();
    await fileToStore(file, w, { chunkBytes: 1024 * 1024 });
    assert.equal(w.kept.length, 3);
    assert.equal(new Set(w.kept.map((c) => c.buffer)).size, 1);
  });

  it('an aborted job stops before the next chunk', async () => {
    const file = path.join(dir, 'f');
    fs.writeFileSync(file, Buffer.alloc(10));
    await assert.rejects(fileToStore(file, new KeepingWriter(), { copyChunks: true, aborted: () => true }), /aborted/);
  });
});
