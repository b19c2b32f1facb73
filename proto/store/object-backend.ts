/**
 * The object backend: the one thing the content-addressed snapshot store needs from where its
 * bytes live (docs/storage.md). Two kinds keep it: a local directory (the default, no server to
 * run) and an S3 bucket (any S3 API endpoint: Ceph RGW, MinIO, AWS). Everything above it —
 * chunking, SHA-256 naming, manifests, garbage collection — is written once against this
 * interface, and test/support/compliance/object-backend.ts checks every kind against it.
 *
 * The contract:
 *   - Keys are store-relative names: 1–1024 characters of [A-Za-z0-9._/-], no leading "/", no
 *     "." or ".." segment, no empty segment, no trailing "/"; anything else is
 *     ERR_INVALID_ARGUMENT before any I/O.
 *   - put() is atomic: a reader sees no object or the whole new one, never part of one; a failed
 *     put leaves no object (an interrupted put may leave invisible debris that the backend's own
 *     clean-up removes; list() never shows it). Objects are bounded (a pack of about 8 MiB, a
 *     chunk, an index, a manifest): put takes the whole body, there is no multipart upload at
 *     this layer.
 *   - get() of an absent key is ERR_NOT_FOUND; head() of an absent key is null.
 *   - getRange(key, offset, length) returns the bytes [offset, offset + length) of a committed
 *     object, fewer when the object ends first (none past its end); ERR_NOT_FOUND when absent.
 *     It is how a reader takes a few chunks out of a pack file (pack-format.ts) in one request.
 *   - list(prefix) returns every committed key starting with prefix, sorted, whole (the backend
 *     pages internally); listInfo(prefix) returns the same keys, same order, each with its size
 *     and modification time.
 *   - modifiedMs is when the object was last put, in milliseconds since the epoch by the
 *     backend's clock (a local file's mtime, S3's LastModified); a put of an existing key moves
 *     it forward. Garbage collection and lock staleness are judged by it.
 *   - delete() is idempotent.
 *   - Failures are VnsnapError: ERR_STORE_FULL when the backend says it is full (ENOSPC, S3
 *     QuotaExceeded / EntityTooLarge of a bucket quota), ERR_UNAVAILABLE when it cannot be reached
 *     (connection refused or reset, timeout: the caller may retry), ERR_PERMISSION_DENIED when the
 *     credentials are refused, ERR_INTERNAL otherwise; every message is one line naming the
 *     backend and the key.
 */
import { isVnsnapError, VnsnapError } from '../core/errors';

/** What head() and listInfo() know about a committed object. */
export interface ObjectInfo {
  key: string;
  size: number;
  /** When it was last put: milliseconds since the epoch, by the backend's clock. */
  modifiedMs: number;
}

export interface ObjectBackend {
  /** A one-line description for messages and logs, e.g. "local /var/lib/vnsnap/store" or "s3 http://127.0.0.1:7480/vnsnap". */
  readonly describe: string;
  /** Store data whole under key (replacing an older object of that key). */
  put(key: string, data: Uint8Array): Promise<void>;
  /** The bytes of a committed object; ERR_NOT_FOUND when absent. */
  get(key: string): Promise<Buffer>;
  /** Bytes [offset, offset + length) of a committed object, fewer at its end; ERR_NOT_FOUND when absent. */
  getRange(key: string, offset: number, length: number): Promise<Buffer>;
  /** Size and time of a committed object, or null when absent. */
  head(key: string): Promise<ObjectInfo | null>;
  /** Committed keys starting with prefix, sorted. */
  list(prefix: string): Promise<string[]>;
  /** The objects list(prefix) returns, in its order, each with size and time. */
  listInfo(prefix: string): Promise<ObjectInfo[]>;
  /** Delete one object (idempotent). */
  delete(key: string): Promise<void>;
  /**
   * Optional, for a backend whose put() waits for its medium (a local disk's fsyncs): put() that
   * does not wait — atomic and visible as put() is, but a crash may lose it or leave it torn
   * until sync() of its key returned. A writer then waits on the disk once for many objects.
   */
  putUnsynced?(key: string, data: Uint8Array): Promise<void>;
  /** With putUnsynced(): the objects it put under these keys made durable (as put() leaves them). */
  sync?(keys: readonly string[]): Promise<void>;
  /** Release what the backend holds open (an S3 client's sockets); it is unusable afterwards. */
  close?(): void;
}

/** The bytes of a committed object, or null when it is absent (deleted since it was listed). */
export async function getIfPresent(backend: ObjectBackend, key: string): Promise<Buffer | null> {
  try {
    return await backend.get(key);
  } catch (e) {
    if (isVnsnapError(e, 'ERR_NOT_FOUND')) return null;
    throw e;
  }
}

/** ERR_INVALID_ARGUMENT unless offset and length are non-negative safe integers. */
export function checkRange(offset: number, length: number, backend: string): void {
  const ok = (n: number): boolean => Number.isSafeInteger(n) && n >= 0;
  if (!ok(offset) || !ok(length)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${backend}: byte range ${offset}+${length} is not two non-negative integers`);
}

const KEY_CHARS = /^[A-Za-z0-9._/-]+$/;

/** Check a key against the contract; returns it, or throws ERR_INVALID_ARGUMENT naming the problem. */
export function checkObjectKey(key: string, backend: string): string {
  const bad = (why: string): never => {
    throw new VnsnapError('ERR_INVALID_ARGUMENT', `${backend}: object key ${JSON.stringify(key)} ${why}`);
  };
  if (key.length === 0 || key.length > 1024) bad('must be 1 to 1024 characters long');
  if (!KEY_CHARS.test(key)) bad('may hold only letters, digits, ".", "_", "-" and "/"');
  for (const seg of key.split('/')) {
    if (seg === '' || seg === '.' || seg === '..') bad('has an empty, "." or ".." segment');
  }
  return key;
}

