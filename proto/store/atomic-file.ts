/**
 * Atomic files: the one way vnsnap writes a file that others may read (artefacts, manifests).
 *
 * A file is written under a temporary name in the directory of its final name
 * (`.<name>.tmp-<12 hex digits>`), then on commit: fsync the file, rename it over the final
 * name, fsync the directory. A reader therefore sees the old file or the whole new one, never
 * part of one; a crash before the rename leaves only a temporary file, which `isTempName`
 * recognises so listings can hide it and clean-ups can remove it.
 *
 * Failures are typed and leave nothing behind: every failure of create, write or commit
 * removes the temporary file and is a VnsnapError, ERR_STORE_FULL when the filesystem is full
 * (ENOSPC, or EDQUOT for a quota) and ERR_INTERNAL otherwise, with the errno error as cause.
 *
 * Paths: `confine(root, relPath)` is the one check that a store-relative path stays under
 * its root (relative, no "." or ".." segment, no NUL, not a directory, not a temporary name).
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VnsnapError } from '../core/errors';

const TEMP_MARK = '.tmp-';

/** True for the name (last path segment) of a temporary file written by AtomicFile. */
export function isTempName(name: string): boolean {
  return name.startsWith('.') && name.includes(TEMP_MARK);
}

/** A fresh temporary name beside `final`. */
function tempPathFor(final: string): string {
  return path.join(path.dirname(final), `.${path.basename(final)}${TEMP_MARK}${randomBytes(6).toString('hex')}`);
}

/** The filesystem (or the user's quota) is full. */
function isNoSpace(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/** A failed step on `label` as the typed error: ERR_STORE_FULL when the disk is full, else ERR_INTERNAL. */
export function storeFailure(e: unknown, step: 'creating' | 'writing' | 'committing', label: string): VnsnapError {
  if (isNoSpace(e)) return new VnsnapError('ERR_STORE_FULL', `store is full while ${step} ${label}; the partial artefact was removed`, { cause: e });
  return new VnsnapError('ERR_INTERNAL', `store error while ${step} ${label}: ${(e as Error).message}`, { cause: e });
}

/** Make a directory entry (a rename, a new file) durable. */
async function fsyncDir(dir: string): Promise<void> {
  const h = await fsp.open(dir, fs.constants.O_RDONLY);
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

/**
 * Make files committed with `durable: false` durable: each file fsynced and then each of their
 * directories once (its entry, the rename), all in parallel so the filesystem can commit them
 * together. ENOSPC/EDQUOT is ERR_STORE_FULL, any other failure ERR_INTERNAL naming `label`.
 */
export async function syncFiles(files: readonly string[], label: string): Promise<void> {
  try {
    await Promise.all(files.map(async (f) => {
      const h = await fsp.open(f, fs.constants.O_RDONLY);
      try {
        await h.sync();
      } finally {
        await h.close();
      }
    }));
    await Promise.all([...new Set(files.map((f) => path.dirname(f)))].map((d) => fsyncDir(d)));
  } catch (e) {
    throw storeFailure(e, 'committing', label);
  }
}

/** The absolute path of `relPath` under `root`; ERR_INVALID_ARGUMENT for a path that could leave it. */
export function confine(root: string, relPath: string): string {
  if (typeof relPath !== 'string' || relPath === '' || path.isAbsolute(relPath) || relPath.includes('\0')) {
    throw new VnsnapError('ERR_INVALID_ARGUMENT', `bad artefact path "${relPath}": it must be relative to the store root`);
  }
  const parts = relPath.split('/');
  if (parts.some((p) => p === '..' || p === '.')) throw new VnsnapError('ERR_INVALID_ARGUMENT', `bad artefact path "${relPath}": no "." or ".." segments`);
  if (relPath.endsWith('/')) throw new VnsnapError('ERR_INVALID_ARGUMENT', `bad artefact path "${relPath}": it names a directory`);
  if (isTempName(parts[parts.length - 1] as string)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `bad artefact path "${relPath}": reserved temporary name`);
  return path.join(root, relPath);
}

/**
 * One file being written atomically. Writes are serialised (each waits for the one before);
 * after a failure, commit or abort the file is closed and its temporary name removed, and
 * further writes are refused (ERR_STATE).
 */
export class AtomicFile {
  private state: 'open' | 'committed' | 'aborted' = 'open';
  private chain: Promise<void> = Promise.resolve();

  private constructor(
    /** Names the file in error messages (a store-relative path). */
    readonly label: string,
    readonly final: string,
    readonly tmp: string,
    private readonly h: fsp.FileHandle,
  ) {}

  /** Create the directory if needed and open a new temporary file beside `final`. */
  static async create(final: string, label: string): Promise<AtomicFile> {
    const tmp = tempPathFor(final);
    let h: fsp.FileHandle;
    try {
      await fsp.mkdir(path.dirname(final), { recursive: true });
      h = await fsp.open(tmp, 'wx', 0o644);
    } catch (e) {
      throw storeFailure(e, 'creating', label);
    }
    return new AtomicFile(label, final, tmp, h);
  }

  /** Append all of `data`. */
  write(data: Uint8Array): Promise<void> {
    if (this.state !== 'open') return Promise.reject(this.stateError());
    const p = this.chain.then(async () => {
      if (this.state !== 'open') throw this.stateError();
      try {
        let off = 0;
        while (off < data.byteLength) {
          const { bytesWritten } = await this.h.write(data, off, data.byteLength - off);
          off += bytesWritten;
        }
      } catch (e) {
        throw await this.fail(e, 'writing');
      }
    });
    this.chain = p.catch(() => undefined);
    return p;
  }

  /**
   * After the pending writes: fsync, rename to the final name, fsync the directory. With
   * `durable: false` only the rename: the file is whole or absent for readers now, but a crash
   * may lose or tear it until syncFiles() of its path returned (a caller that flushes many files
   * at once, in parallel, instead of waiting on the disk for each).
   */
  async commit(o: { durable?: boolean } = {}): Promise<void> {
    await this.chain;
    if (this.state !== 'open') throw this.stateError();
    const durable = o.durable ?? true;
    try {
      if (durable) await this.h.sync();
      await this.h.close();
      await fsp.rename(this.tmp, this.final);
      if (durable) await fsyncDir(path.dirname(this.final));
    } catch (e) {
      throw await this.fail(e, 'committing');
    }
    this.state = 'committed';
  }

  /** Drop the temporary file (idempotent; a no-op after commit). */
  async abort(): Promise<void> {
    await this.chain;
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.h.close().catch(() => undefined);
    await fsp.rm(this.tmp, { force: true });
  }

  private stateError(): VnsnapError {
    return new VnsnapError('ERR_STATE', `artefact ${this.label} is already ${this.state}`);
  }

  /** Turn a failure into the typed error and leave nothing behind. */
  private async fail(e: unknown, step: 'writing' | 'committing'): Promise<VnsnapError> {
    this.state = 'aborted';
    await this.h.close().catch(() => undefined);
    await fsp.rm(this.tmp, { force: true }).catch(() => undefined);
    return storeFailure(e, step, this.label);
  }
}
