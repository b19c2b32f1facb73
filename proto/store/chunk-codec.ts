/**
 * How a chunk's bytes are kept in a pack (docs/storage.md, "Compression"): as they are, or
 * compressed when that saves at least a sixteenth of them — with zstd (level ZSTD_LEVEL, through
 * the native addon: store-native.ts), what restic and Proxmox Backup Server use, or with raw
 * DEFLATE (zlib level 1), what stores written before zstd hold and what is written when the addon
 * is not built. The codec is recorded per chunk (pack table and index), so a store mixes all three
 * and older stores read as before.
 *
 * Guarantees:
 *   - Compression and decompression run in libuv's thread pool (zlib's asynchronous calls, the
 *     addon's async work), never on the event loop; a batch (a pack's chunks, a ranged read's
 *     chunks) is one piece of zstd work. encodeChunksInto() writes a pack's zstd chunks straight
 *     into the pack's memory and hashes them there, byte for byte what encodeChunks() and a
 *     copy would give.
 *   - decodeChunks() returns exactly `size` bytes per chunk or throws ERR_CHECKSUM naming the
 *     chunk's `what`: a stored chunk that does not decompress, or decompresses to another size, is
 *     corrupt like one whose SHA-256 is wrong (the caller still checks the SHA-256 of what it
 *     returns). A zstd chunk read where the addon is not built is ERR_UNSUPPORTED_VERSION.
 *   - A codec name this vnsnap does not know is refused by the format decoders (cas-index.ts,
 *     pack-format.ts) before any byte is read.
 */
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import { VnsnapError } from '../core/errors';
import { isZstdError, storeNative, type StoreNative } from './store-native';

/** The codecs a chunk may be stored with; absent means plain. */
export const CODECS = ['deflate', 'zstd'] as const;
export type Codec = (typeof CODECS)[number];

export const isCodec = (c: unknown): c is Codec => typeof c === 'string' && (CODECS as readonly string[]).includes(c);

/** DEFLATE level: 1, the fastest (docs/storage.md has the measurements). */
export const DEFLATE_LEVEL = 1;
/** zstd level, chosen by measurement (docs/storage.md, "Compression"). */
export const ZSTD_LEVEL = 1;

/** The codec new chunks get by default: zstd where the addon has it, else DEFLATE. */
export function defaultCodec(native: StoreNative | null = storeNative()): Codec {
  return native ? 'zstd' : 'deflate';
}

const deflateRaw = promisify(zlib.deflateRaw);
const inflateRaw = promisify(zlib.inflateRaw);

/** A chunk as it goes into a pack: its stored bytes and codec (undefined: plain). */
export interface EncodedChunk {
  data: Buffer;
  codec?: Codec;
}

/** A stored chunk to decode: its stored bytes and codec, its own size, and what to call it in errors. */
export interface StoredChunk {
  stored: Buffer;
  codec: Codec | undefined;
  size: number;
  what: string;
}

/** Chunks shorter than this are kept plain: nothing to gain. */
const MIN_COMPRESS = 64;

/**
 * `z` when it saves at least 1/16 of `data`, else `data` plain. The addon's zstdPack applies the
 * same rule and MIN_COMPRESS in C (switch/native/zstd.c); test/unit/zstd-pack.test.ts holds
 * both to the same packs around the threshold.
 */
const keepIfSmaller = (data: Buffer, z: Buffer, codec: Codec): EncodedChunk => (z.length <= data.length - (data.length >> 4) ? { data: z, codec } : { data });

function needNative(native: StoreNative | null, what: string): StoreNative {
  if (native) return native;
  throw new VnsnapError('ERR_UNSUPPORTED_VERSION', `${what} is stored with zstd, and this vnsnap's native addon is not built or has no zstd (rebuild it with \`npm install\`)`);
}

/** Each chunk compressed with `codec` when that saves at least 1/16 of it, else as it is. */
export async function encodeChunks(chunks: Buffer[], codec: Codec | undefined, native: StoreNative | null = storeNative()): Promise<EncodedChunk[]> {
  if (codec === undefined) return chunks.map((data) => ({ data }));
  const big = chunks.filter((c) => c.length >= MIN_COMPRESS);
  let z: Buffer[];
  if (codec === 'zstd') z = big.length > 0 ? await needNative(native, 'a new chunk').zstdCompress(big, ZSTD_LEVEL) : [];
  else z = await Promise.all(big.map((c) => deflateRaw(c, { level: DEFLATE_LEVEL })));
  let k = 0;
  return chunks.map((data) => (data.length < MIN_COMPRESS ? { data } : keepIfSmaller(data, z[k++] as Buffer, codec)));
}

/** Chunks as encodeChunksInto() wrote them: each one's stored size and codec, and the SHA-256 of all their stored bytes (null: not computed). */
export interface PackedChunks {
  stored: Uint32Array;
  codecs: (Codec | undefined)[];
  sha256: Buffer | null;
}

/**
 * encodeChunks()'s stored bytes written straight into `dest`, back to back, with their SHA-256,
 * in one piece of thread-pool work (the addon's zstdPack: no Buffer per compressed chunk, no
 * copy, no hash on the event loop); the same bytes and codecs encodeChunks() gives. Null, and
 * nothing written, unless the codec is zstd, the addon has zstdPack and dest holds the chunks'
 * total length: the caller then encodes and copies.
 */
export async function encodeChunksInto(chunks: Buffer[], codec: Codec | undefined, dest: Buffer, native: StoreNative | null = storeNative()): Promise<PackedChunks | null> {
  if (codec !== 'zstd' || !native?.zstdPack || dest.length < chunks.reduce((n, c) => n + c.length, 0)) return null;
  const { sizes, sha256 } = await native.zstdPack(chunks, ZSTD_LEVEL, dest);
  return { stored: sizes, codecs: chunks.map((c, i) => ((sizes[i] as number) < c.length ? codec : undefined)), sha256 };
}

/** encodeChunks() of one chunk. */
export async function encodeChunk(data: Buffer, codec: Codec | undefined, native: StoreNative | null = storeNative()): Promise<EncodedChunk> {
  return (await encodeChunks([data], codec, native))[0] as EncodedChunk;
}

/** Each chunk's own bytes from its stored bytes (module comment): one batch of zstd work for all zstd chunks. */
export async function decodeChunks(chunks: readonly StoredChunk[], native: StoreNative | null = storeNative()): Promise<Buffer[]> {
  const zs = chunks.filter((c) => c.codec === 'zstd');
  let unz: Buffer[] = [];
  if (zs.length > 0) {
    const n = needNative(native, (zs[0] as StoredChunk).what);
    try {
      unz = await n.zstdDecompress(
        zs.map((c) => c.stored),
        zs.map((c) => c.size),
      );
    } catch (e) {
      if (!isZstdError(e)) throw e;
      throw new VnsnapError('ERR_CHECKSUM', `${(zs[e.index] as StoredChunk).what} is corrupt (${e.message})`, { cause: e });
    }
  }
  let k = 0;
  return Promise.all(chunks.map((c) => (c.codec === 'zstd' ? (unz[k++] as Buffer) : inflate(c))));
}

/** decodeChunks() of one chunk. */
export async function decodeChunk(stored: Buffer, codec: Codec | undefined, size: number, what: string, native: StoreNative | null = storeNative()): Promise<Buffer> {
  return (await decodeChunks([{ stored, codec, size, what }], native))[0] as Buffer;
}

/** A plain or DEFLATE chunk's own bytes. */
async function inflate(c: StoredChunk): Promise<Buffer> {
  if (c.codec === undefined) return c.stored;
  let out: Buffer;
  try {
    out = await inflateRaw(c.stored, { maxOutputLength: Math.max(1, c.size) });
  } catch (e) {
    throw new VnsnapError('ERR_CHECKSUM', `${c.what} is corrupt (it does not inflate: ${(e as Error).message})`, { cause: e });
  }
  if (out.length !== c.size) throw new VnsnapError('ERR_CHECKSUM', `${c.what} is corrupt (it inflates to ${out.length} bytes, not ${c.size})`);
  return out;
}
