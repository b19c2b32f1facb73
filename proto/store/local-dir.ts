/**
 * The local-directory snapshot store (the default): a directory per host; on a shared
 * filesystem every snapshot is restorable everywhere. It keeps the SnapshotStore contract
 * (snapshot-store.ts) with the filesystem's own means:
 *   - every artefact is an AtomicFile (atomic-file.ts): written as `.<name>.tmp-<random>` beside
 *     its final name, fsynced, renamed, the directory fsynced; the size and SHA-256 are
 *     computed while writing;
 *   - a crash before the rename leaves only a temporary file, which list() never shows and
 *     deleteByPrefix() removes;
 *   - a full disk (ENOSPC/EDQUOT) is ERR_STORE_FULL and leaves no partial file behind;
 *   - resolve() is the path confinement: nothing outside the root is ever named.
 * Directories are created as artefacts need them; deleteByPrefix("<dir>/") removes the
 * directory it names.
 */
import { createHash, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VnsnapError } from '../core/errors';
import { AtomicFile, confine, isTempName } from './atomic-file';
import type { ArtefactWriter, SnapshotStore, StoredArtefact } from './snapshot-store';
import { putThroughWriter } from './snapshot-store';

export type { ArtefactWriter, SnapshotStore, StoredArtefact } from './snapshot-store';

/** Bytes per chunk read() yields. */
const READ_CHUNK = 4 << 20;

export class LocalDirStore implements SnapshotStore {
  readonly root: string;

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  /** Create the root directory if needed. */
  async init(): Promise<void> {
    await fsp.mkdir(this.root, { recursive: true });
  }

  /** The absolute path of an artefact; refuses paths that leave the root (ERR_INVALID_ARGUMENT). */
  resolve(relPath: string): string {
    return confine(this.root, relPath);
  }

  async create(relPath: string): Promise<ArtefactWriter> {
    return new LocalWriter(relPath, await AtomicFile.create(this.resolve(relPath), relPath));
  }

  put(relPath: string, data: Uint8Array): Promise<StoredArtefact> {
    return putThroughWriter(this, relPath, data);
  }

  async get(relPath: string): Promise<Buffer> {
    try {
      return await fsp.readFile(this.resolve(relPath));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new VnsnapError('ERR_NOT_FOUND', `artefact ${relPath} is not in the store`, { cause: e });
      throw e;
    }
  }

  async *read(relPath: string): AsyncGenerator<Buffer> {
    let h: fsp.FileHandle;
    try {
      h = await fsp.open(this.resolve(relPath), 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new VnsnapError('ERR_NOT_FOUND', `artefact ${relPath} is not in the store`, { cause: e });
      throw e;
    }
    try {
      for (;;) {
        const buf = Buffer.allocUnsafe(READ_CHUNK);
        const { bytesRead } = await h.read(buf, 0, buf.length, null);
        if (bytesRead === 0) return;
        yield buf.subarray(0, bytesRead);
      }
    } finally {
      await h.close();
    }
  }

  /** A copy under the new name (a hard link would tie the two files' fates to one inode's). */
  async link(from: string, to: string): Promise<StoredArtefact> {
    const w = await this.create(to);
    try {
      for await (const b of this.read(from)) await w.write(b);
      return await w.commit();
    } catch (e) {
      await w.abort();
      throw e;
    }
  }

  async stat(relPath: string): Promise<number | null> {
    try {
      const st = await fsp.stat(this.resolve(relPath));
      return st.isFile() ? st.size : null;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async verify(a: StoredArtefact): Promise<string | null> {
    let abs: string;
    try {
      abs = this.resolve(a.path);
    } catch (e) {
      return (e as Error).message;
    }
    const size = await this.stat(a.path);
    if (size === null) return `${a.path}: missing`;
    if (size !== Number(a.size)) return `${a.path}: size ${size}, expected ${a.size}`;
    const sum = await sha256File(abs);
    if (sum !== a.sha256.toLowerCase()) return `${a.path}: SHA-256 ${sum}, expected ${a.sha256}`;
    return null;
  }

  async list(prefix: string): Promise<string[]> {
    return (await this.walk(prefix)).filter((p) => !isTempName(path.posix.basename(p))).sort();
  }

  async delete(relPath: string): Promise<void> {
    await fsp.rm(this.resolve(relPath), { force: true });
  }

  /** Remove the directory `relDir` if it is empty (a no-op when it holds anything or is absent). */
  async removeDirIfEmpty(relDir: string): Promise<void> {
    await fsp.rmdir(confine(this.root, relDir)).catch(() => undefined);
  }

  async deleteByPrefix(prefix: string): Promise<number> {
    const all = await this.walk(prefix);
    for (const p of all) await fsp.rm(path.join(this.root, p), { force: true });
    // Remove directories the prefix names entirely ("snapshots/<id>/") once empty.
    if (prefix.endsWith('/')) {
      const dir = path.join(this.root, prefix);
      if (dir.startsWith(this.root + path.sep)) await fsp.rm(dir, { recursive: true, force: true });
    }
    return all.filter((p) => !isTempName(path.posix.basename(p))).length;
  }

  /** Every file (temporary ones included) whose relative path starts with prefix. */
  private async walk(prefix: string): Promise<string[]> {
    if (prefix.split('/').some((p) => p === '..') || path.isAbsolute(prefix)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `bad prefix "${prefix}"`);
    // Start at the deepest directory the prefix fully names.
    const slash = prefix.lastIndexOf('/');
    const baseRel = slash >= 0 ? prefix.slice(0, slash) : '';
    const out: string[] = [];
    const visit = async (rel: string): Promise<void> => {
      let entries: fs.Dirent[];
      try {
        entries = await fsp.readdir(path.join(this.root, rel), { withFileTypes: true });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return;
        throw e;
      }
      for (const d of entries) {
        const r = rel === '' ? d.name : `${rel}/${d.name}`;
        if (d.isDirectory()) {
          if (r.startsWith(prefix) || prefix.startsWith(r + '/')) await visit(r);
        } else if (r.startsWith(prefix)) out.push(r);
      }
    };
    await visit(baseRel);
    return out;
  }
}

/** The lower-case hex SHA-256 of a file, read as a stream. */
export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  await new Promise<void>((resolve, reject) => {
    fs.createReadStream(file)
      .on('data', (c) => h.update(c))
      .on('end', () => resolve())
      .on('error', reject);
  });
  return h.digest('hex');
}

/** An ArtefactWriter over an AtomicFile that hashes and counts what it writes. */
class LocalWriter implements ArtefactWriter {
  private readonly hash: Hash = createHash('sha256');
  private size = 0;

  constructor(
    readonly path: string,
    private readonly file: AtomicFile,
  ) {}

  get bytes(): number {
    return this.size;
  }

  async write(chunk: Uint8Array): Promise<void> {
    await this.file.write(chunk);
    this.hash.update(chunk);
    this.size += chunk.byteLength;
  }

  async commit(): Promise<StoredArtefact> {
    await this.file.commit();
    return { path: this.path, size: this.size, sha256: this.hash.digest('hex'), storedBytes: this.size };
  }

  abort(): Promise<void> {
    return this.file.abort();
  }
}
