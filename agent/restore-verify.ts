/**
 * The checks of a restore's artefacts that cost no full read, and the checksum of a memory image
 * verified while it is loaded instead of in a separate read before (docs/performance.md, "Image
 * size and restore").
 *
 *   presenceProblems  every artefact is in the store with its recorded size (the index of a
 *                     content-addressed store, a file of the local one): one line per problem;
 *                     metadata only, so a restore can refuse early at no cost.
 *   verifiedRead      the chunks of an artefact, passed on as they come, with its size and SHA-256
 *                     checked; the last chunk is held back until both match, so a consumer (QEMU's
 *                     incoming migration) never receives a whole image that is wrong: a mismatch is
 *                     ERR_CHECKSUM naming the artefact, raised before the stream's end.
 *                     A read its store already checked whole (a content-addressed store's:
 *                     proto/store/checked-read.ts) is not hashed again: the store's claim (its
 *                     index's size and SHA-256) must equal the expected ones, checked before the
 *                     first byte is passed on. Each byte is then hashed twice in all (its chunk,
 *                     the artefact, both in the store), not three times (docs/storage.md, "Reading");
 *                     once only when the manifest recorded the artefact's chunk list
 *                     (CHUNK_LIST_ATTRIBUTE in its attributes): it is handed to the store's read(),
 *                     which then refuses an index listing other chunks and checks each chunk only.
 *                     A block image (DIGEST_ATTRIBUTE = DIGEST_CHUNK_LIST in its attributes) records
 *                     its chunk list's SHA-256 as its sha256: its bytes are never hashed here, and a
 *                     read its store did not check is refused (ERR_FAILED_PRECONDITION) before its
 *                     first byte (proto/store/artefact-digest.ts).
 *   verifyingStore    the store as a driver sees it during a restore: read() and get() of the
 *                     memory images are verifiedRead (get() too, through read()); everything else passes through
 *                     (disk layers are checked by the driver's own chain rebuild, which hands read() their chunk lists). The first read()
 *                     of any artefact (a driver rebuilding a disk chain, or loading a memory image)
 *                     starts reading every checked image ahead (proto/store/read-ahead.ts, at most
 *                     READ_AHEAD_BYTES each), so a VM's memory image is read while its disk layers
 *                     are; get() alone (channel state) starts nothing.
 */
import { createHash } from 'node:crypto';
import { VnsnapError } from '../proto/core/errors';
import { digestIsChunkList, uncheckable } from '../proto/store/artefact-digest';
import { checkedClaim, type Claim } from '../proto/store/checked-read';
import { readAhead } from '../proto/store/read-ahead';
import { CHUNK_LIST_ATTRIBUTE, type ReadExpect, type SnapshotStore, type StoredArtefact } from '../proto/store/snapshot-store';

/** Bytes of each checked memory image read ahead of the driver (docs/storage.md, "Reading"). */
export const READ_AHEAD_BYTES = 16 << 20;

export type Expected = Pick<StoredArtefact, 'path' | 'size' | 'sha256' | 'attributes'>;

/** What the manifest tells the store to check: the chunk list the artefact was written with, if recorded. */
export function expectOf(a: Expected | undefined): ReadExpect | undefined {
  const chunkList = a?.attributes?.[CHUNK_LIST_ATTRIBUTE];
  return chunkList === undefined ? undefined : { chunkList };
}

/** A problem line per artefact that is absent or of another size than recorded (stat only). */
export async function presenceProblems(store: Pick<SnapshotStore, 'stat'>, artefacts: readonly Expected[]): Promise<string[]> {
  const lines = await Promise.all(
    artefacts.map(async (a) => {
      let size: number | null;
      try {
        size = await store.stat(a.path);
      } catch (e) {
        return `${a.path}: ${(e as Error).message}`;
      }
      if (size === null) return `${a.path}: missing`;
      if (size !== Number(a.size)) return `${a.path}: size ${size}, expected ${a.size}`;
      return '';
    }),
  );
  return lines.filter((l) => l !== '');
}

function mismatch(a: Expected, size: number, sha: string): VnsnapError {
  const want = Number(a.size);
  const what = size > want ? `more than the ${want} bytes expected` : size < want ? `${size} bytes, ${want} expected` : `SHA-256 ${sha}, ${a.sha256} expected`;
  return new VnsnapError('ERR_CHECKSUM', `${a.path}: ${what}`);
}

/**
 * The chunks of `a` from `source`, its size and SHA-256 checked; the last chunk only once both
 * match. A source its store checked whole (proto/store/checked-read.ts: a content-addressed
 * store's read) is not hashed again: its claim (the index's size and SHA-256) is compared with
 * `a` before the first chunk is passed on, and its clean end proves the bytes are the claim's.
 */
export async function* verifiedRead(source: AsyncIterable<Buffer>, a: Expected): AsyncGenerator<Buffer> {
  const claim = checkedClaim(source);
  // A block image's recorded digest is its chunk list's: only its store's checked read proves it.
  if (!claim && digestIsChunkList(a)) throw uncheckable(a);
  const h = claim ? undefined : createHash('sha256');
  const want = Number(a.size);
  let size = 0;
  let held: Buffer | undefined;
  let confirmed = false;
  const confirm = async (): Promise<void> => {
    confirmed = true;
    const c = await (claim as Promise<Claim>);
    if (c.size !== want || c.sha256 !== a.sha256.toLowerCase()) throw mismatch(a, c.size, c.sha256);
  };
  for await (const b of source) {
    if (claim && !confirmed) await confirm();
    size += b.length;
    if (size > want) throw mismatch(a, size, '');
    h?.update(b);
    if (held) yield held;
    held = b;
  }
  if (claim && !confirmed) await confirm();
  const sha = h ? h.digest('hex') : a.sha256.toLowerCase();
  if (size !== want || sha !== a.sha256.toLowerCase()) throw mismatch(a, size, sha);
  if (held) yield held;
}

/** `store` with read() and get() of the `checked` artefacts verified (module comment). */
export function verifyingStore(store: SnapshotStore, checked: readonly Expected[], aheadBytes = READ_AHEAD_BYTES): SnapshotStore {
  const byPath = new Map(checked.map((a) => [a.path, a]));
  /** Reads started ahead, each taken by the first read() of its path; null until the first read(). */
  let ahead: Map<string, AsyncIterable<Buffer>> | null = null;
  return new Proxy(store, {
    get(target, prop, receiver) {
      if (prop === 'read') {
        return (p: string, expect?: ReadExpect): AsyncIterable<Buffer> => {
          ahead ??= new Map([...byPath.keys()].filter((q) => q !== p).map((q) => [q, readAhead(target.read(q, expectOf(byPath.get(q))), aheadBytes)]));
          const a = byPath.get(p);
          const early = ahead.get(p);
          ahead.delete(p);
          const source = early ?? target.read(p, expectOf(a) ?? expect);
          return a ? verifiedRead(source, a) : source;
        };
      }
      if (prop === 'get') {
        return async (p: string): Promise<Buffer> => {
          const a = byPath.get(p);
          if (!a) return target.get(p);
          const parts: Buffer[] = [];
          for await (const b of verifiedRead(target.read(p, expectOf(a)), a)) parts.push(b);
          return Buffer.concat(parts);
        };
      }
      const v: unknown = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? (v as (...args: unknown[]) => unknown).bind(target) : v;
    },
  });
}
