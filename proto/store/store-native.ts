/**
 * The snapshot store's native helpers: zstd compression, the content-defined chunker's inner
 * loop, the two SHA-256s of a written stream in one pass and a pack compressed and hashed in
 * place, in C in the vnsnap_io addon
 * (switch/native/zstd.c, cdc.c, sha256x2.c), because the
 * store's write path in JavaScript and zlib ran at about 47 MiB/s against 653 MiB/s for whole
 * files (docs/performance.md, "Snapshot storage"). The coordinator opens stores too and imports
 * only proto/, so the store loads the addon itself (the same build/Release/vnsnap_io.node that
 * switch/native-io.ts loads; Node loads it once per process) rather than through switch/.
 *
 * Guarantees:
 *   - storeNative() is the addon's store entry points, loaded once, or null when the addon is not
 *     built or lacks them (built from older sources): the store then falls back to the JavaScript
 *     chunker (same boundaries, chunker.ts) and writes DEFLATE instead of zstd (chunk-codec.ts);
 *     only reading a zstd chunk needs the addon, and without it is ERR_UNSUPPORTED_VERSION saying so.
 *   - Nothing here throws at import; loading is lazy.
 */
import * as path from 'node:path';

export interface StoreNative {
  /** One zstd frame per chunk, compressed at `level` in libuv's thread pool. */
  zstdCompress(chunks: Buffer[], level: number): Promise<Buffer[]>;
  /**
   * Frame i decompressed to exactly sizes[i] bytes, in the thread pool; rejects with code
   * 'ERR_ZSTD', `index` the first frame that failed, when one is not a whole frame of its size.
   */
  zstdDecompress(frames: Buffer[], sizes: number[]): Promise<Buffer[]>;
  /**
   * A pack written straight into dest, in one piece of thread-pool work: the chunks back to
   * back, each one the frame zstdCompress makes of it (byte for byte) when the chunk is at least
   * 64 bytes and the frame at most len - (len >> 4) bytes, else the chunk's own bytes (chunk-codec.ts
   * keepIfSmaller's rule); sizes[i] is chunk i's stored size (< its length: zstd, == its length:
   * plain) and sha256 the SHA-256 of dest[0 .. sum of sizes), or null where the CPU has no SHA
   * extensions (the caller hashes). dest must hold the chunks' total length and overlap none of
   * them (else a RangeError, code ERR_INVALID_ARGUMENT); chunks and dest are held until it settles.
   * Absent from an addon built from older sources.
   */
  zstdPack?(chunks: Buffer[], level: number, dest: Buffer): Promise<{ sizes: Uint32Array; sha256: Buffer | null }>;
  /**
   * The chunk boundaries in data (offsets just past each chunk that closes), written to out;
   * state [pos, h] carries the open chunk across calls; params [min, avg, max, maskS, maskL].
   * out needs data.length / min + 2 entries. Returns how many were written.
   */
  cdcCuts(data: Uint8Array, state: Uint32Array, params: Uint32Array, out: Uint32Array): number;
}

/**
 * The artefact's and its chunks' SHA-256s in one pass (switch/native/sha256x2.c): contexts are
 * SHA256_CTX_BYTES the caller owns. sha256Pair hashes all of data into `whole`, and into `open`
 * up to each of the first `count` ends (each chunk's digest into out, 32 bytes each, `open` then
 * empty again), the rest staying in `open`. Only where sha256x2Available() (the CPU's SHA
 * extensions): otherwise node:crypto hashes (chunk-hasher.ts).
 */
export interface Sha256Pair {
  sha256Reset(ctx: Uint8Array): void;
  sha256Pair(data: Uint8Array, ends: Uint32Array, count: number, whole: Uint8Array, open: Uint8Array, out: Uint8Array): void;
  sha256Final(ctx: Uint8Array, out: Uint8Array): void;
}

let copy: ((dst: Uint8Array, at: number, src: Uint8Array) => number) | null | undefined;

/** The addon's memcpy into a buffer (switch/native/bytes.c: dst[at..] := src, returns at + src.length), or null. */
export function nativeCopy(): ((dst: Uint8Array, at: number, src: Uint8Array) => number) | null {
  if (copy !== undefined) return copy;
  const m = storeNative() as (StoreNative & { copyBytes?: (dst: Uint8Array, at: number, src: Uint8Array) => number }) | null;
  copy = m && typeof m.copyBytes === 'function' ? m.copyBytes.bind(m) : null;
  return copy;
}

/**
 * Keep the whole pages inside `buf` out of the children this process starts (switch/native/bytes.c
 * keepFromChildren: MADV_DONTFORK), so a fork does not leave them write-protected; memory reused
 * for the process's life (stream batches, held pages) then takes no copy-on-write fault per page
 * after each child started. Only for memory never freed while the process lives: memory freed
 * with the mark still on could be reused by malloc for what a child needs between its fork and
 * its exec. Nothing without the addon.
 */
export function keepFromChildren(buf: Uint8Array): void {
  const m = storeNative() as (StoreNative & { keepFromChildren?: (b: Uint8Array) => number }) | null;
  m?.keepFromChildren?.(buf);
}

/** Bytes of a sha256x2.c context. */
export const SHA256_CTX_BYTES = 112;

let pair: Sha256Pair | null | undefined;

/** The addon's one-pass SHA-256 pair where the addon has it and the CPU runs it, else null. */
export function sha256Pair(): Sha256Pair | null {
  if (pair !== undefined) return pair;
  const m = storeNative() as (StoreNative & Partial<Sha256Pair> & { sha256x2Available?: () => boolean }) | null;
  pair = m && typeof m.sha256x2Available === 'function' && typeof m.sha256Pair === 'function' && m.sha256x2Available() ? (m as Sha256Pair) : null;
  return pair;
}

/** The error zstdDecompress rejects with. */
export interface ZstdError extends Error {
  code: 'ERR_ZSTD';
  index: number;
}

export const isZstdError = (e: unknown): e is ZstdError => e instanceof Error && (e as { code?: unknown }).code === 'ERR_ZSTD' && typeof (e as { index?: unknown }).index === 'number';

let loaded: StoreNative | null | undefined;

/** The addon's store entry points, or null (module comment). */
export function storeNative(): StoreNative | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  for (const c of [path.join(__dirname, '..', '..', '..', 'build', 'Release', 'vnsnap_io.node'), path.join(__dirname, '..', '..', 'build', 'Release', 'vnsnap_io.node')]) {
    let mod: Partial<StoreNative>;
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      mod = require(c) as Partial<StoreNative>;
    } catch {
      continue;
    }
    if (typeof mod.zstdCompress === 'function' && typeof mod.zstdDecompress === 'function' && typeof mod.cdcCuts === 'function') loaded = mod as StoreNative;
    break;
  }
  return loaded;
}
