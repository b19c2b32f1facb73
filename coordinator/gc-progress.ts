/**
 * Progress of a garbage collection for the operator (`vnsnap store gc`), without changing the
 * collector (proto/store/cas-gc.ts): the collector runs over this view of the store's object
 * backend, which passes every call through unchanged and reports, as one-line notes, what the
 * calls show — the indexes to read at the mark, the chunks stored, the sweep starting (its second
 * listing of the indexes), and the chunks freed so far every FREED_EVERY deletes; in a packed
 * store also the packs stored (when there are any), each pack a repack writes, and the packs
 * deleted so far every PACKS_EVERY deletes.
 *
 * Guarantees: every call reaches the backend as it was made, with its result and error; a note
 * is never sent for a call that failed.
 */
import { CHUNK_PREFIX, ARTEFACT_PREFIX } from '../proto/store/cas-index';
import type { ObjectBackend, ObjectInfo } from '../proto/store/object-backend';
import { PACK_PREFIX } from '../proto/store/pack-format';
import { formatBytes } from './cli/format';

export const FREED_EVERY = 1000;
export const PACKS_EVERY = 10;

export function withGcProgress(b: ObjectBackend, note: (message: string) => void): ObjectBackend {
  let indexListings = 0;
  const sizes = new Map<string, number>();
  let freed = 0;
  let freedBytes = 0;
  let packsFreed = 0;
  let packBytesFreed = 0;
  return {
    describe: b.describe,
    async put(key: string, data: Uint8Array): Promise<void> {
      await b.put(key, data);
      if (key.startsWith(PACK_PREFIX)) note(`repacking: wrote a pack of ${formatBytes(data.length)}`);
    },
    get: (key) => b.get(key),
    getRange: (key, offset, length) => b.getRange(key, offset, length),
    head: (key) => b.head(key),
    list: (prefix) => b.list(prefix),
    async listInfo(prefix: string): Promise<ObjectInfo[]> {
      const out = await b.listInfo(prefix);
      if (prefix === ARTEFACT_PREFIX) {
        indexListings++;
        note(indexListings === 1 ? `marking: ${out.length} indexes to read` : `sweeping: no writer left; reading the indexes written since the mark`);
      } else if (prefix === CHUNK_PREFIX) {
        for (const o of out) sizes.set(o.key, o.size);
        note(`${out.length} chunks in the store (${formatBytes(out.reduce((n, o) => n + o.size, 0))})`);
      } else if (prefix === PACK_PREFIX && out.length > 0) {
        for (const o of out) sizes.set(o.key, o.size);
        note(`${out.length} packs in the store (${formatBytes(out.reduce((n, o) => n + o.size, 0))})`);
      }
      return out;
    },
    async delete(key: string): Promise<void> {
      await b.delete(key);
      if (key.startsWith(PACK_PREFIX)) {
        packsFreed++;
        packBytesFreed += sizes.get(key) ?? 0;
        if (packsFreed % PACKS_EVERY === 0) note(`deleted ${packsFreed} packs so far (${formatBytes(packBytesFreed)})`);
        return;
      }
      if (!key.startsWith(CHUNK_PREFIX)) return;
      freed++;
      freedBytes += sizes.get(key) ?? 0;
      if (freed % FREED_EVERY === 0) note(`freed ${freed} chunks so far (${formatBytes(freedBytes)})`);
    },
  };
}
