/**
 * LocalObjects: the object backend (object-backend.ts) on a local directory, the default store
 * with no server to run. A key is a file path under the root ("chunks/ab/abcd…" is the file
 * ROOT/chunks/ab/abcd…), so an operator can read the store with ls.
 *
 * Guarantees, on top of the contract:
 *   - put() writes through AtomicFile (atomic-file.ts): a temporary file beside the final name,
 *     fsync, rename over the final name, fsync of the directory. A reader sees the old object or
 *     the whole new one; a failed put removes its temporary file; a crash leaves at most a
 *     temporary file, which list() never shows.
 *   - putUnsynced() is put() without its two fsyncs (the optional half of the contract a pack
 *     writer uses): readers see the same, but a crash may lose the object or leave it torn until
 *     sync() of its key returned; sync() fsyncs the keys' files and then their directories, in
 *     parallel, so a writer waits on the disk once for all its packs instead of four times per pack.
 *   - ENOSPC/EDQUOT is ERR_STORE_FULL with nothing of the failed object left.
 *   - Keys are checked (checkObjectKey) before any I/O; a key whose last segment has the shape
 *     of a temporary name (".x.tmp-…") is refused too, so no object can hide behind one.
 *
 * One difference from S3, by nature of a filesystem: a key cannot be both an object and a
 * "directory" of other keys ("a" and "a/b"); the second put of such a pair fails with
 * ERR_FAILED_PRECONDITION. The content-addressed store never names keys that way. Empty
 * directories left by delete() are kept (removing them would race a concurrent put into them).
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VnsnapError, isVnsnapError } from '../core/errors';
import { AtomicFile, confine, isTempName, syncFiles } from './atomic-file';
import { checkObjectKey, checkRange, type ObjectBackend, type ObjectInfo } from './object-backend';

const errno = (e: unknown): string | undefined => (e as NodeJS.ErrnoException | undefined)?.code;

/** Characters a list() prefix may hold (a key's, or empty); "." and ".." segments are refused. */
const PREFIX_CHARS = /^[A-Za-z0-9._/-]*$/;

export class LocalObjects implements ObjectBackend {
  readonly root: string;
  readonly describe: string;

  constructor(root: string) {
    this.root = path.resolve(root);
    this.describe = `local ${this.root}`;
  }

  /** Create the root directory if needed. */
  async init(): Promise<void> {
    try {
      await fsp.mkdir(this.root, { recursive: true });
    } catch (e) {
      throw this.failure('creating the store root', '', e);
    }
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    await this.write(key, data, true);
  }

  /** put() without the fsyncs: whole or absent for readers, durable once sync() of its key returned. */
  async putUnsynced(key: string, data: Uint8Array): Promise<void> {
    await this.write(key, data, false);
  }

  /** Every key's file fsynced, then each of their directories once, in parallel. */
  async sync(keys: readonly string[]): Promise<void> {
    if (keys.length === 0) return;
    const files = keys.map((k) => this.fileOf(k));
    try {
      await syncFiles(files, keys[0] as string);
    } catch (e) {
      throw this.failure('sync', keys.length === 1 ? (keys[0] as string) : `${keys[0] as string} and ${keys.length - 1} more`, e);
    }
  }

  private async write(key: string, data: Uint8Array, durable: boolean): Promise<void> {
    const file = this.fileOf(key);
    let f: AtomicFile | undefined;
    try {
      f = await AtomicFile.create(file, key);
      await f.write(data);
      await f.commit({ durable });
    } catch (e) {
      await f?.abort();
      throw this.failure('put', key, e);
    }
  }

  async get(key: string): Promise<Buffer> {
    const file = this.fileOf(key);
    try {
      return await fsp.readFile(file);
    } catch (e) {
      if (['ENOENT', 'ENOTDIR', 'EISDIR'].includes(errno(e) ?? '')) throw new VnsnapError('ERR_NOT_FOUND', `${this.describe}: object ${key} does not exist`, { cause: e });
      throw this.failure('get', key, e);
    }
  }

  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    const file = this.fileOf(key);
    checkRange(offset, length, this.describe);
    let fh: fsp.FileHandle | undefined;
    try {
      fh = await fsp.open(file, 'r');
      const buf = Buffer.allocUnsafe(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return got === length ? buf : buf.subarray(0, got);
    } catch (e) {
      if (['ENOENT', 'ENOTDIR', 'EISDIR'].includes(errno(e) ?? '')) throw new VnsnapError('ERR_NOT_FOUND', `${this.describe}: object ${key} does not exist`, { cause: e });
      throw this.failure('get', key, e);
    } finally {
      await fh?.close();
    }
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const file = this.fileOf(key);
    try {
      const st = await fsp.stat(file);
      return st.isFile() ? { key, size: st.size, modifiedMs: Math.floor(st.mtimeMs) } : null;
    } catch (e) {
      if (errno(e) === 'ENOENT' || errno(e) === 'ENOTDIR') return null;
      throw this.failure('head', key, e);
    }
  }

  async list(prefix: string): Promise<string[]> {
    return (await this.walk(prefix)).map((f) => f.key);
  }

  async listInfo(prefix: string): Promise<ObjectInfo[]> {
    const out: ObjectInfo[] = [];
    for (const f of await this.walk(prefix)) {
      try {
        const st = await fsp.stat(f.file);
        out.push({ key: f.key, size: st.size, modifiedMs: Math.floor(st.mtimeMs) });
      } catch (e) {
        // Deleted between the walk and the stat: it is no longer committed.
        if (errno(e) !== 'ENOENT') throw this.failure('list', prefix, e);
      }
    }
    return out;
  }

  /** The committed files under prefix, sorted by key. */
  private async walk(prefix: string): Promise<{ key: string; file: string }[]> {
    if (!PREFIX_CHARS.test(prefix) || prefix.startsWith('/') || prefix.split('/').some((s) => s === '.' || s === '..')) {
      throw new VnsnapError('ERR_INVALID_ARGUMENT', `${this.describe}: list prefix ${JSON.stringify(prefix)} is not a key prefix`);
    }
    // Read the deepest directory the prefix names whole, recursively, and keep committed files.
    const base = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
    let entries;
    try {
      entries = await fsp.readdir(path.join(this.root, base), { recursive: true, withFileTypes: true });
    } catch (e) {
      if (errno(e) === 'ENOENT' || errno(e) === 'ENOTDIR') return [];
      throw this.failure('list', prefix, e);
    }
    const files: { key: string; file: string }[] = [];
    for (const d of entries) {
      if (!d.isFile() || isTempName(d.name)) continue;
      const file = path.join(d.parentPath, d.name);
      const key = path.relative(this.root, file).split(path.sep).join('/');
      if (key.startsWith(prefix)) files.push({ key, file });
    }
    return files.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(key: string): Promise<void> {
    const file = this.fileOf(key);
    try {
      await fsp.unlink(file);
    } catch (e) {
      if (['ENOENT', 'ENOTDIR', 'EISDIR', 'EPERM'].includes(errno(e) ?? '') && (await this.head(key)) === null) return;
      throw this.failure('delete', key, e);
    }
  }

  /** The file of a key, checked before any I/O (ERR_INVALID_ARGUMENT). */
  private fileOf(key: string): string {
    checkObjectKey(key, this.describe);
    try {
      return confine(this.root, key);
    } catch (e) {
      throw new VnsnapError('ERR_INVALID_ARGUMENT', `${this.describe}: object key ${JSON.stringify(key)} is reserved (${(e as Error).message})`);
    }
  }

  /** One typed line naming the backend, the operation and the key. */
  private failure(op: string, key: string, e: unknown): VnsnapError {
    const what = key === '' ? op : `${op} ${key}`;
    if (isVnsnapError(e)) {
      // ENOTDIR/EISDIR/EEXIST (from mkdir): a key and a "directory" of keys collide (see the header).
      const code = e.code === 'ERR_STORE_FULL' ? 'ERR_STORE_FULL' : ['ENOTDIR', 'EISDIR', 'EEXIST'].includes(errno(e.cause) ?? '') ? 'ERR_FAILED_PRECONDITION' : e.code;
      return new VnsnapError(code, `${this.describe}: ${what} failed: ${e.message}`, { cause: e });
    }
    if (errno(e) === 'ENOSPC' || errno(e) === 'EDQUOT') return new VnsnapError('ERR_STORE_FULL', `${this.describe}: ${what} failed: the disk is full`, { cause: e });
    if (errno(e) === 'EACCES' || errno(e) === 'EROFS') return new VnsnapError('ERR_PERMISSION_DENIED', `${this.describe}: ${what} failed: ${(e as Error).message}`, { cause: e });
    return new VnsnapError('ERR_INTERNAL', `${this.describe}: ${what} failed: ${(e as Error).message}`, { cause: e });
  }
}
