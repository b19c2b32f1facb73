/**
 * What the content-addressed store holds, for `vnsnap store stats`: the chunks and bytes
 * stored, the artefacts and their logical bytes (the sum of their sizes, from their indexes),
 * and the dedup ratio between the two. Read-only: one listing of the chunk objects and of the
 * packs (sizes from the listings, no chunk is read), a read of every pack table (for the number
 * of chunks; pack-map.ts keeps those already read) and of every index.
 *
 * Guarantees: storedBytes counts every chunk object and every pack, also unnamed chunks and dead
 * pack bytes garbage collection has not freed yet (they are still paid for; tables not counted);
 * chunks counts chunk objects plus the entries of every pack table; logicalBytes counts an artefact once per index, however many
 * chunks it shares; dedupRatio is logicalBytes / storedBytes, and 1 for an empty store. An
 * index that cannot be read or parsed is an error naming the artefact (cas-index.ts).
 */
import { ARTEFACT_PREFIX, CHUNK_PREFIX, decodeIndex, pathOfIndexKey } from './cas-index';
import { getIfPresent, type ObjectBackend } from './object-backend';
import { PACK_PREFIX } from './pack-format';
import { PackMap } from './pack-map';

export interface StoreStats {
  chunks: number;
  /** Pack objects (their bytes are in storedBytes). */
  packs: number;
  storedBytes: number;
  artefacts: number;
  logicalBytes: number;
  dedupRatio: number;
}

export async function storeStats(backend: ObjectBackend, map = new PackMap()): Promise<StoreStats> {
  const chunks = await backend.listInfo(CHUNK_PREFIX);
  const packs = await backend.listInfo(PACK_PREFIX);
  const storedBytes = chunks.reduce((n, c) => n + c.size, 0) + packs.reduce((n, c) => n + c.size, 0);
  await map.refresh(backend);
  const packed = map.allTables().reduce((n, t) => n + t.chunks.length, 0);
  let artefacts = 0;
  let logicalBytes = 0;
  for (const key of await backend.list(ARTEFACT_PREFIX)) {
    const path = pathOfIndexKey(key);
    if (path === null) continue;
    const data = await getIfPresent(backend, key);
    if (!data) continue; // deleted since listed
    artefacts++;
    logicalBytes += decodeIndex(data, path).size;
  }
  return { chunks: chunks.length + packed, packs: packs.length, storedBytes, artefacts, logicalBytes, dedupRatio: storedBytes === 0 ? 1 : logicalBytes / storedBytes };
}
