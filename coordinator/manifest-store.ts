/**
 * The coordinator's side of the snapshot store: manifests, written to and read from the one
 * SnapshotStore the coordinator opened (server.ts; the store its config names, which every
 * agent must name too: docs/storage.md, "Pointing vnsnap at a store"). Any backend: a
 * content-addressed store in a local directory or on S3, or the whole-file directory layout.
 *
 * write: through the store's writer — a reader sees the old manifest or the whole new one, never
 * part of one (the SnapshotStore contract). read: size-capped before reading
 * (MANIFEST_MAX_BYTES). remove: the manifest; on the whole-file layout also its snapshot's
 * directory when nothing else is left in it (a content-addressed store has no directories).
 * Paths are relative to the store root and may not escape it (the store refuses them).
 */
import * as path from 'node:path';
import { VnsnapError } from '../proto/core/errors';
import { MANIFEST_MAX_BYTES } from '../proto/artefacts/manifest';
import { LocalDirStore } from '../proto/store/local-dir';
import type { SnapshotStore } from '../proto/store/snapshot-store';

export interface ManifestStore {
  write(relPath: string, bytes: Uint8Array): Promise<void>;
  /** The bytes, or ERR_NOT_FOUND when absent, ERR_DATA_LOSS when too big to be a manifest. */
  read(relPath: string): Promise<Buffer>;
  /** Idempotent. */
  remove(relPath: string): Promise<void>;
}

export class StoreManifests implements ManifestStore {
  constructor(readonly store: SnapshotStore) {}

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
    if (dir !== '.' && this.store instanceof LocalDirStore) await this.store.removeDirIfEmpty(dir);
  }
}
