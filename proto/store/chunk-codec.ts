/**
 * How a chunk's bytes are kept in a pack (docs/storage.md, "Compression"): as they are, or
 * compressed with raw DEFLATE (zlib level 1) when that saves at least a sixteenth of them — what
 * restic and Proxmox Backup Server do with zstd, which Node's zlib does not have. The codec is
 * recorded per chunk (pack table and index), so a store mixes both and older stores, whose chunks
 * are all plain, read as before.
 *
 * Guarantees:
 *   - Compression and decompression run in libuv's thread pool (zlib's asynchronous calls), never
 *     on the event loop.
 *   - decodeChunk() returns exactly `size` bytes or throws ERR_CHECKSUM naming `what`: a stored
 *     chunk that does not inflate, or inflates to another size, is corrupt like one whose
 *     SHA-256 is wrong (the caller still checks the SHA-256 of what it returns).
 *   - A codec name this vnsnap does not know is refused by the format decoders (cas-index.ts,
 *     pack-format.ts) before any byte is read.
 */
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import { VnsnapError } from '../core/errors';

/** The codecs a chunk may be stored with; absent means plain. */
export const CODECS = ['deflate'] as const;
export type Codec = (typeof CODECS)[number];

export const isCodec = (c: unknown): c is Codec => typeof c === 'string' && (CODECS as readonly string[]).includes(c);

/** DEFLATE level: 1, the fastest (docs/storage.md has the measurements). */
export const DEFLATE_LEVEL = 1;

const deflateRaw = promisify(zlib.deflateRaw);
const inflateRaw = promisify(zlib.inflateRaw);

/** A chunk as it goes into a pack: its stored bytes and codec (undefined: plain). */
export interface EncodedChunk {
  data: Buffer;
  codec?: Codec;
}

/** The chunk compressed when that saves at least 1/16 of it, else as it is. */
export async function encodeChunk(data: Buffer, codec: Codec | undefined): Promise<EncodedChunk> {
  if (codec === undefined || data.length < 64) return { data };
  const z = await deflateRaw(data, { level: DEFLATE_LEVEL });
  return z.length <= data.length - (data.length >> 4) ? { data: z, codec } : { data };
}

/** The chunk's own bytes from its stored bytes; ERR_CHECKSUM (naming `what`) when they do not decode to `size` bytes. */
export async function decodeChunk(stored: Buffer, codec: Codec | undefined, size: number, what: string): Promise<Buffer> {
  if (codec === undefined) return stored;
  let out: Buffer;
  try {
    out = await inflateRaw(stored, { maxOutputLength: Math.max(1, size) });
  } catch (e) {
    throw new VnsnapError('ERR_CHECKSUM', `${what} is corrupt (it does not inflate: ${(e as Error).message})`, { cause: e });
  }
  if (out.length !== size) throw new VnsnapError('ERR_CHECKSUM', `${what} is corrupt (it inflates to ${out.length} bytes, not ${size})`);
  return out;
}
