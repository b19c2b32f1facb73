/**
 * A read that its store has already checked whole, and what it was checked against: how a
 * restore avoids hashing a memory image or disk layer a second time (docs/storage.md, "Reading").
 *
 * A content-addressed store (cas-store.ts) checks every chunk against its index and the whole
 * artefact against the SHA-256 its index records. A reader that expects a size and SHA-256 of
 * its own (the restore's manifest: agent/restore-verify.ts) need only compare them with the
 * index's, once the index is read, instead of hashing every byte again.
 *
 * Guarantees of a read tagged with checkedRead(source, claim):
 *   - `claim` settles (with the index's size and SHA-256, or the failure of reading the index)
 *     before the iteration yields its first chunk or ends; it is never an unhandled rejection.
 *   - An iteration that ends without throwing has yielded exactly `claim.size` bytes whose
 *     SHA-256 is `claim.sha256`; otherwise it throws (ERR_CHECKSUM, ERR_DATA_LOSS, ...) before its
 *     end, after at most the bytes of the chunks checked so far.
 *   - Wrappers that pass chunks on unchanged (read-ahead.ts, agent/store-handle.ts) keep the tag
 *     with checkedClaim(); anything else drops it, and its reader hashes for itself.
 */

/** What a checked read's bytes are: their size and lower-case hex SHA-256. */
export interface Claim {
  size: number;
  sha256: string;
}

const CLAIM = Symbol('vnsnap.checkedRead');

type Tagged = { [CLAIM]?: Promise<Claim> };

/** `source` tagged as checked against `claim` (module comment). */
export function checkedRead<T extends AsyncIterable<Buffer>>(source: T, claim: Promise<Claim>): T {
  claim.catch(() => undefined); // the iteration throws the same failure
  return Object.assign(source, { [CLAIM]: claim });
}

/** The claim of a checked read, or undefined for a read nobody checked whole. */
export function checkedClaim(source: AsyncIterable<Buffer>): Promise<Claim> | undefined {
  return (source as Tagged)[CLAIM];
}

/** `wrapper` (which passes `source`'s chunks on unchanged) tagged like `source`. */
export function keepClaim<T extends AsyncIterable<Buffer>>(source: AsyncIterable<Buffer>, wrapper: T): T {
  const claim = checkedClaim(source);
  return claim ? checkedRead(wrapper, claim) : wrapper;
}
