/**
 * The snapshot store: where VM images, disks and channel state go (DESIGN.md "Storage").
 *
 * Artefacts are named by paths relative to the store's root ("snapshots/<id>/vm1.mem"). Every
 * artefact is written through an ArtefactWriter that
 *   - writes to a temporary name beside the final one (`.<name>.tmp-<random>`),
 *   - computes the size and the lower-case hex SHA-256 while writing,
 *   - on commit(): fsync the file, rename it to its final name, fsync the directory,
 * so an artefact is either absent or complete: a crash before the rename leaves only a
 * temporary file, which list() never shows and deleteByPrefix() removes. A full disk
 * (ENOSPC/EDQUOT) is VnsnapError ERR_STORE_FULL and leaves no partial file behind.
 *
 * `LocalDirStore` is the default: a directory per host (on a shared filesystem every snapshot
 * is restorable everywhere). Other stores (S3 API) implement the same interface.
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VnsnapError } from '../proto/core/errors';

/** A committed artefact: where it is, how big, and its SHA-256. */
export interface StoredArtefact {
  path: string;
  size: number;
  sha256: string;
}

export interface ArtefactWriter {
  readonly path: string;
  /** Bytes written so far. */
  readonly bytes: number;
  write(chunk: Uint8Array): Promise<void>;
  /** fsync, rename to the final name, fsync the directory. */
  commit(): Promise<StoredArtefact>;
  /** Drop the temporary file (idempotent; a no-op after commit). */
  abort(): Promise<void>;
}

export interface SnapshotStore {
  /** A writer for a new artefact (an existing one of that path is replaced at commit). */
  create(relPath: string): Promise<ArtefactWriter>;
  /** Write a whole artefact at once. */
  put(relPath: string, data: Uint8Array): Promise<StoredArtefact>;
  get(relPath: string): Promise<Buffer>;
  /** Size of a committed artefact, or null when absent. */
  stat(relPath: string): Promise<number | null>;
  /** Check an artefact against its expected size and checksum: a problem (one line) or null. */
  verify(a: StoredArtefact): Promise<string | null>;
  /** Committed artefacts whose path starts with prefix, sorted. */
  list(prefix: string): Promise<string[]>;
  /** Delete one artefact (idempotent). */
  delete(relPath: string): Promise<void>;
  /** Delete every artefact (and temporary file) under prefix; returns how many were removed. */
  deleteByPrefix(prefix: string): Promise<number>;
}

const TMP_MARK = '.tmp-';

function isTemp(name: string): boolean {
  return name.startsWith('.') && name.includes(TMP_MARK);
}

function isFull(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

async function fsyncDir(dir: string): Promise<void> {
  const h = await fsp.open(dir, fs.constants.O_RDONLY);
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

export class LocalDirStore implements SnapshotStore {
  readonly root: string;

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  /** Create the root directory if needed. */
  async init(): Promise<void> {
    await fsp.mkdir(this.root, { recursive: true });
  }

  /** The absolute path of an artefact; refuses paths that leave the root. */
  resolve(relPath: string): string {
    if (typeof relPath !== 'string' || relPath === '' || path.isAbsolute(relPath) || relPath.includes('\0')) {
      throw new VnsnapError('ERR_INVALID_ARGUMENT', `bad artefact path "${relPath}": it must be relative to the store root`);
    }
    const parts = relPath.split('/');
    if (parts.some((p) => p === '..' || p === '.')) throw new VnsnapError('ERR_INVALID_ARGUMENT', `bad artefact path "${relPath}": no "." or ".." segments`);
    if (relPath.endsWith('/')) throw new VnsnapError('ERR_INVALID_ARGUMENT', `bad artefact path "${relPath}": it names a directory`);
    if (isTemp(parts[parts.length - 1] as string)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `bad artefact path "${relPath}": reserved temporary name`);
    return path.join(this.root, relPath);
  }

  async create(relPath: string): Promise<ArtefactWriter> {
    const final = this.resolve(relPath);
    const dir = path.dirname(final);
    try {
      await fsp.mkdir(dir, { recursive: true });
    } catch (e) {
      if (isFull(e)) throw new VnsnapError('ERR_STORE_FULL', `store ${this.root} is full (creating ${relPath})`, { cause: e });
      throw e;
    }
    const tmp = path.join(dir, `.${path.basename(final)}${TMP_MARK}${randomBytes(6).toString('hex')}`);
    let h: fsp.FileHandle;
    try {
      h = await fsp.open(tmp, 'wx', 0o644);
    } catch (e) {
      if (isFull(e)) throw new VnsnapError('ERR_STORE_FULL', `store ${this.root} is full (creating ${relPath})`, { cause: e });
      throw e;
    }
    return new LocalWriter(relPath, final, tmp, h);
  }

  async put(relPath: string, data: Uint8Array): Promise<StoredArtefact> {
    const w = await this.create(relPath);
    try {
      await w.write(data);
      return await w.commit();
    } catch (e) {
      await w.abort();
      throw e;
    }
  }

  async get(relPath: string): Promise<Buffer> {
    try {
      return await fsp.readFile(this.resolve(relPath));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new VnsnapError('ERR_NOT_FOUND', `artefact ${relPath} is not in the store`, { cause: e });
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
    const h = createHash('sha256');
    await new Promise<void>((resolve, reject) => {
      fs.createReadStream(abs)
        .on('data', (c) => h.update(c))
        .on('end', () => resolve())
        .on('error', reject);
    });
    const sum = h.digest('hex');
    if (sum !== a.sha256.toLowerCase()) return `${a.path}: SHA-256 ${sum}, expected ${a.sha256}`;
    return null;
  }

  async list(prefix: string): Promise<string[]> {
    return (await this.walk(prefix)).filter((p) => !isTemp(path.posix.basename(p))).sort();
  }

  async delete(relPath: string): Promise<void> {
    await fsp.rm(this.resolve(relPath), { force: true });
  }

  async deleteByPrefix(prefix: string): Promise<number> {
    const all = await this.walk(prefix);
    for (const p of all) await fsp.rm(path.join(this.root, p), { force: true });
    // Remove directories the prefix names entirely ("snapshots/<id>/") once empty.
    if (prefix.endsWith('/')) {
      const dir = path.join(this.root, prefix);
      if (dir.startsWith(this.root + path.sep)) await fsp.rm(dir, { recursive: true, force: true });
    }
    return all.filter((p) => !isTemp(path.posix.basename(p))).length;
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

class LocalWriter implements ArtefactWriter {
  private readonly hash: Hash = createHash('sha256');
  private size = 0;
  private state: 'open' | 'committed' | 'aborted' = 'open';
  /** Writes are serialised: each waits for the one before. */
  private chain: Promise<void> = Promise.resolve();

  constructor(
    readonly path: string,
    private readonly final: string,
    private readonly tmp: string,
    private readonly h: fsp.FileHandle,
  ) {}

  get bytes(): number {
    return this.size;
  }

  write(chunk: Uint8Array): Promise<void> {
    if (this.state !== 'open') return Promise.reject(new VnsnapError('ERR_STATE', `artefact ${this.path} is already ${this.state}`));
    const data = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const p = this.chain.then(async () => {
      if (this.state !== 'open') throw new VnsnapError('ERR_STATE', `artefact ${this.path} is already ${this.state}`);
      try {
        let off = 0;
        while (off < data.length) {
          const { bytesWritten } = await this.h.write(data, off, data.length - off);
          off += bytesWritten;
        }
      } catch (e) {
        throw await this.fail(e, 'writing');
      }
      this.hash.update(data);
      this.size += data.length;
    });
    this.chain = p.catch(() => undefined);
    return p;
  }

  async commit(): Promise<StoredArtefact> {
    await this.chain;
    if (this.state !== 'open') throw new VnsnapError('ERR_STATE', `artefact ${this.path} is already ${this.state}`);
    try {
      await this.h.sync();
      await this.h.close();
      await fsp.rename(this.tmp, this.final);
      await fsyncDir(path.dirname(this.final));
    } catch (e) {
      throw await this.fail(e, 'committing');
    }
    this.state = 'committed';
    return { path: this.path, size: this.size, sha256: this.hash.digest('hex') };
  }

  async abort(): Promise<void> {
    await this.chain;
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.h.close().catch(() => undefined);
    await fsp.rm(this.tmp, { force: true });
  }

  /** Turn a write/commit failure into a typed error and leave nothing behind. */
  private async fail(e: unknown, what: string): Promise<VnsnapError> {
    this.state = 'aborted';
    await this.h.close().catch(() => undefined);
    await fsp.rm(this.tmp, { force: true }).catch(() => undefined);
    if (isFull(e)) return new VnsnapError('ERR_STORE_FULL', `store is full while ${what} ${this.path}; the partial artefact was removed`, { cause: e });
    return new VnsnapError('ERR_INTERNAL', `store error while ${what} ${this.path}: ${(e as Error).message}`, { cause: e });
  }
}
