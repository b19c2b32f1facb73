/**
 * The coordinator's side of the snapshot store: manifests, kept in the store directory
 * (`storeDir`; on one machine or a shared filesystem it is the agents' store too) through the
 * same LocalDirStore the agents write artefacts with.
 *
 * write: atomic (proto/store/atomic-file.ts) — a reader sees the old manifest or the whole new
 * one, never part of one, and a crash leaves at most a temporary file. read: size-capped before
 * reading (MANIFEST_MAX_BYTES). remove: the manifest, then its snapshot's directory when
 * nothing else is left in it. Paths are relative to the store root and may not escape it.
 */
import * as path from 'node:path';
import { VnsnapError } from '../proto/core/errors';
import { MANIFEST_MAX_BYTES } from '../proto/artefacts/manifest';
import { LocalDirStore } from '../proto/store/local-dir';

export interface ManifestStore {
  write(relPath: string, bytes: Uint8Array): Promise<void>;
  /** The bytes, or ERR_NOT_FOUND when absent, ERR_DATA_LOSS when too big to be a manifest. */
  read(relPath: string): Promise<Buffer>;
  /** Idempotent. */
  remove(relPath: string): Promise<void>;
}

export class FsManifestStore implements ManifestStore {
  private readonly store: LocalDirStore;

  constructor(root: string) {
    this.store = new LocalDirStore(root);
  }

  get root(): string {
    return this.store.root;
  }

  async write(relPath: string, bytes: Uint8Array): Promise<void> {
    await this.store.put(relPath, bytes);
  }

  async read(relPath: string): Promise<Buffer> {
    const size = await this.store.stat(relPath);
    if (size === null) throw new VnsnapError('ERR_NOT_FOUND', `manifest ${relPath} does not exist in the store`);
    if (size > MANIFEST_MAX_BYTES) throw new VnsnapError('ERR_DATA_LOSS', `${relPath} is ${size} bytes, more than a manifest can be (${MANIFEST_MAX_BYTES})`);
    return this.store.get(relPath);
  }

  async remove(relPath: string): Promise<void> {
    await this.store.delete(relPath);
    const dir = path.posix.dirname(relPath);
    if (dir !== '.') await this.store.removeDirIfEmpty(dir);
  }
}
