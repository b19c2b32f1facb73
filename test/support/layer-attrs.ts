/**
 * What a disk layer's manifest entry carries when a content-addressed store wrote it (the
 * incremental disk tests): its number, and the chunk list the store's index holds for it, which a
 * restore hands back to read() so each byte is hashed once. Read from the store itself, so a test
 * asserts the exact attributes rather than their shape.
 */
import { strict as assert } from 'node:assert';
import { chunkListSha256 } from '../../proto/store/cas-index';
import type { CasStore } from '../../proto/store/cas-store';
import { CHUNK_LIST_ATTRIBUTE, type SnapshotStore } from '../../proto/store/snapshot-store';

export async function storedLayerAttrs(store: SnapshotStore, relPath: string, n: number): Promise<Record<string, string>> {
  const idx = await (store as CasStore).index(relPath);
  assert.ok(idx, `${relPath} has an index in the store`);
  return { [CHUNK_LIST_ATTRIBUTE]: chunkListSha256(idx.chunks), layer: String(n) };
}
