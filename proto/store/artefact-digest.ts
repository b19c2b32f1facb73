/**
 * The digest of an artefact the way its manifest records it: what a checker outside the store
 * (the coordinator's `snapshot verify`, a restore) compares with the manifest's `sha256`.
 *
 * Most artefacts record the SHA-256 of their bytes. A block image (snapshot-store.ts
 * createBlockImage) records its chunk list's SHA-256 instead, and says so in its attributes
 * (DIGEST_ATTRIBUTE = DIGEST_CHUNK_LIST): hashing its bytes gives a value that never matches, and
 * only the content-addressed store that holds it can prove its bytes against that digest (each
 * chunk checked against an index whose chunk list has that SHA-256: cas-store.ts).
 *
 * Guarantees of readDigest():
 *   - A content digest is the SHA-256 of every byte read, computed here.
 *   - A chunk-list digest is the claim of the store's checked read (checked-read.ts), returned
 *     only after the read ended cleanly (every chunk checked, the index consistent, its chunk list
 *     the manifest's CHUNK_LIST_ATTRIBUTE when recorded); a read no store checked cannot prove
 *     one: ERR_FAILED_PRECONDITION naming the artefact, before any byte is read.
 *   - The size is the bytes read either way; a problem of the artefact is thrown as the store
 *     threw it (ERR_CHECKSUM, ERR_DATA_LOSS, ERR_NOT_FOUND).
 */
import { createHash } from 'node:crypto';
import { VnsnapError } from '../core/errors';
import { checkedClaim, type Claim } from './checked-read';
import { CHUNK_LIST_ATTRIBUTE, DIGEST_ATTRIBUTE, DIGEST_CHUNK_LIST, type ReadExpect, type SnapshotStore, type StoredArtefact } from './snapshot-store';

/** What a manifest records of an artefact that readDigest() needs. */
export type Recorded = Pick<StoredArtefact, 'path' | 'attributes'>;

/** Whether the manifest records this artefact's digest as its chunk list's SHA-256 (a block image). */
export function digestIsChunkList(a: Pick<StoredArtefact, 'attributes'>): boolean {
  return a.attributes?.[DIGEST_ATTRIBUTE] === DIGEST_CHUNK_LIST;
}

/** ERR_FAILED_PRECONDITION: `a` records a chunk-list digest, and its read was not checked by its store. */
export function uncheckable(a: Pick<StoredArtefact, 'path'>): VnsnapError {
  return new VnsnapError('ERR_FAILED_PRECONDITION', `artefact ${a.path}: its digest is its chunk list's SHA-256 (a block image), which only the content-addressed store holding it can check, and this read was not checked by one`);
}

/** Read `a` whole: its size and its digest as its manifest records it (module comment). */
export async function readDigest(store: Pick<SnapshotStore, 'read'>, a: Recorded, onBytes: (n: number) => void = () => undefined): Promise<{ size: number; sha256: string }> {
  const chunkList = digestIsChunkList(a);
  const list = a.attributes?.[CHUNK_LIST_ATTRIBUTE];
  const expect: ReadExpect | undefined = chunkList && list !== undefined ? { chunkList: list } : undefined;
  const source = store.read(a.path, expect);
  const claim = checkedClaim(source);
  if (chunkList && !claim) throw uncheckable(a);
  const hash = chunkList ? undefined : createHash('sha256');
  let size = 0;
  for await (const b of source) {
    hash?.update(b);
    size += b.length;
    onBytes(b.length);
  }
  return { size, sha256: hash ? hash.digest('hex') : (await (claim as Promise<Claim>)).sha256 };
}
