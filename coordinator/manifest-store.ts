/**
 * The coordinator's side of the snapshot store: manifests, written atomically into the store
 * directory (`storeDir`; on one machine or a shared filesystem it is the agents' store too).
 *
 * write: a temporary name beside the target, fsync, rename, fsync the directory — a reader sees
 * the old manifest or the whole new one, never part of one, and a crash leaves at most a
 * temporary file. read: size-capped before reading (MANIFEST_MAX_BYTES). Paths are relative
 * to the store root and may not escape it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { VnsnapError } from '../proto/core/errors';
import { MANIFEST_MAX_BYTES } from '../proto/artefacts/manifest';

export interface ManifestStore {
  write(relPath: string, bytes: Uint8Array): Promise<void>;
  /** The bytes, or ERR_NOT_FOUND when absent, ERR_DATA_LOSS when too big to be a manifest. */
  read(relPath: string): Promise<Buffer>;
  /** Idempotent. */
  remove(relPath: string): Promise<void>;
}

export class FsManifestStore implements ManifestStore {
  readonly root: string;

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  resolve(relPath: string): string {
    const p = path.resolve(this.root, relPath);
    if (path.isAbsolute(relPath) || (p !== this.root && !p.startsWith(this.root + path.sep))) {
      throw new VnsnapError('ERR_INVALID_ARGUMENT', `store path "${relPath}" is outside the store`);
    }
    return p;
  }

  async write(relPath: string, bytes: Uint8Array): Promise<void> {
    const target = this.resolve(relPath);
    const dir = path.dirname(target);
    const tmp = path.join(dir, `.${path.basename(target)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      await fs.promises.mkdir(dir, { recursive: true });
      const fh = await fs.promises.open(tmp, 'wx', 0o644);
      try {
        await fh.writeFile(bytes);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.promises.rename(tmp, target);
      await fsyncDir(dir);
    } catch (e) {
      await fs.promises.rm(tmp, { force: true }).catch(() => undefined);
      throw new VnsnapError(isNoSpace(e) ? 'ERR_STORE_FULL' : 'ERR_INTERNAL', `cannot write manifest ${relPath}: ${(e as Error).message}`, { cause: e });
    }
  }

  async read(relPath: string): Promise<Buffer> {
    const p = this.resolve(relPath);
    let st: fs.Stats;
    try {
      st = await fs.promises.stat(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new VnsnapError('ERR_NOT_FOUND', `manifest ${relPath} does not exist in the store`);
      throw new VnsnapError('ERR_INTERNAL', `cannot read manifest ${relPath}: ${(e as Error).message}`, { cause: e });
    }
    if (st.size > MANIFEST_MAX_BYTES) throw new VnsnapError('ERR_DATA_LOSS', `${relPath} is ${st.size} bytes, more than a manifest can be (${MANIFEST_MAX_BYTES})`);
    return fs.promises.readFile(p);
  }

  async remove(relPath: string): Promise<void> {
    const p = this.resolve(relPath);
    await fs.promises.rm(p, { force: true });
    // Remove the snapshot's directory too when nothing else is left in it.
    await fs.promises.rmdir(path.dirname(p)).catch(() => undefined);
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.promises.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function isNoSpace(e: unknown): boolean {
  const c = (e as NodeJS.ErrnoException | undefined)?.code;
  return c === 'ENOSPC' || c === 'EDQUOT';
}
