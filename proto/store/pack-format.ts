/**
 * Pack files of the content-addressed store (docs/storage.md, "Layout"): many chunks stored back
 * to back in one object, as restic's packs and borg's segments do, so that a snapshot costs tens
 * of requests instead of thousands (an S3 store pays per request, a local one per file and fsync).
 *
 *   packs/<xx>/<id>      the chunks' bytes, concatenated; <id> is the SHA-256 of these bytes
 *   packtabs/<xx>/<id>   the pack's table of contents (JSON below), put after the pack
 *
 * A table is {"format":"vnsnap-pack-table/1","pack":<id>,"size":N,"chunks":[[sha256,offset,size],…]}:
 * every chunk of the pack, in pack order, its entries tiling the pack exactly (size: the bytes in
 * the pack). Format 2 (written only when a chunk of the pack is compressed: chunk-codec.ts) adds
 * entries [sha256,offset,stored,codec,size] for a chunk stored compressed, `size` being the
 * chunk's own size; format 1 tables are read as before. The table is a
 * small separate object so that the chunks a store holds can be learned by listing and reading
 * tables, without reading a pack. Guarantees: a table is put only once its pack is stored, so a
 * table never names a pack that was never written (a pack without a table is debris of a writer
 * that died, which garbage collection removes); decodeTable() refuses a damaged table or one of
 * another format (ERR_DATA_LOSS / ERR_UNSUPPORTED_VERSION), naming its key.
 */
import { createHash } from 'node:crypto';
import { VnsnapError } from '../core/errors';
import { chunkKey, parseObject, type ChunkRef } from './cas-index';
import { encodeChunks, encodeChunksInto, isCodec, type Codec, type EncodedChunk } from './chunk-codec';
import { storeNative, type StoreNative } from './store-native';

export const PACK_PREFIX = 'packs/';
export const TABLE_PREFIX = 'packtabs/';
export const TABLE_FORMAT_1 = 'vnsnap-pack-table/1';
export const TABLE_FORMAT = 'vnsnap-pack-table/2';

/** One chunk in a pack. */
export interface PackEntry {
  sha256: string;
  offset: number;
  /** Bytes in the pack. */
  size: number;
  /** How those bytes encode the chunk (chunk-codec.ts); absent: they are the chunk. */
  codec?: Codec;
  /** The chunk's own size, when codec is set. */
  raw?: number;
}

export interface PackTable {
  /** The pack's id: the SHA-256 of its bytes. */
  pack: string;
  size: number;
  chunks: PackEntry[];
}

const SHA = /^[0-9a-f]{64}$/;
const isSize = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;

export const packKey = (id: string): string => `${PACK_PREFIX}${id.slice(0, 2)}/${id}`;
export const tableKey = (id: string): string => `${TABLE_PREFIX}${id.slice(0, 2)}/${id}`;

/** The pack id a pack or table key stands for, or null for any other key. */
export function packIdOf(key: string): string | null {
  const m = /^(?:packs|packtabs)\/([0-9a-f]{2})\/([0-9a-f]{64})$/.exec(key);
  return m && m[2]?.startsWith(m[1] as string) ? (m[2] as string) : null;
}

/** The object an index entry's chunk is in, and where: its pack at its offset, or its own object (layout 1). */
export function chunkObject(c: ChunkRef): { key: string; offset: number } {
  return c.pack === undefined ? { key: chunkKey(c.sha256), offset: 0 } : { key: packKey(c.pack), offset: c.offset ?? 0 };
}

/** A sealed pack: its bytes, id and table. */
export interface SealedPack {
  id: string;
  data: Buffer;
  table: PackTable;
}

/** A chunk going into a pack: its SHA-256, stored bytes and codec, and its own size when encoded. */
export type PackInput = EncodedChunk & { sha256: string; raw?: number };

/** A chunk as a pack stores it: its SHA-256, bytes in the pack, codec, and its own size when encoded. */
type StoredInput = Omit<PackEntry, 'offset'>;

/** The pack whose bytes are `data` (its chunks back to back, in order), its id (hashed here when not given) and table. */
function sealed(data: Buffer, chunks: StoredInput[], sha256?: Buffer | null): SealedPack {
  const id = (sha256 ?? createHash('sha256').update(data).digest()).toString('hex');
  let offset = 0;
  const entries = chunks.map((c): PackEntry => {
    const e: PackEntry = { sha256: c.sha256, offset, size: c.size, ...(c.codec ? { codec: c.codec, raw: c.raw as number } : {}) };
    offset += c.size;
    return e;
  });
  return { id, data, table: { pack: id, size: data.length, chunks: entries } };
}

/**
 * Concatenate chunks (already hashed, maybe encoded) into a pack with its table: into the start
 * of `into` when they fit there (memory the caller reuses from pack to pack: pack-writer.ts),
 * else into new memory.
 */
export function sealPack(chunks: PackInput[], into?: Buffer): SealedPack {
  const total = chunks.reduce((n, c) => n + c.data.length, 0);
  let data: Buffer;
  if (into && into.length >= total) {
    let at = 0;
    for (const c of chunks) at += c.data.copy(into, at);
    data = into.subarray(0, total);
  } else data = Buffer.concat(chunks.map((c) => c.data), total);
  return sealed(
    data,
    chunks.map((c) => ({ sha256: c.sha256, size: c.data.length, codec: c.codec, raw: c.raw })),
  );
}

/** A chunk going into a pack before encoding: its SHA-256 and own bytes. */
export interface RawPackInput {
  sha256: string;
  data: Buffer;
}

/**
 * Encode chunks with `codec` (chunk-codec.ts) and seal them into a pack: with zstd, an addon that
 * has zstdPack and `into`, compressed and hashed straight into `into` in the thread pool
 * (encodeChunksInto); otherwise encoded (encodeChunks) then concatenated (sealPack). The same
 * pack, id and table either way (test/unit/zstd-pack.test.ts).
 */
export async function encodeAndSealPack(chunks: RawPackInput[], codec: Codec | undefined, into?: Buffer, native: StoreNative | null = storeNative()): Promise<SealedPack> {
  const own = chunks.map((c) => c.data);
  const packed = into ? await encodeChunksInto(own, codec, into, native) : null;
  if (!packed) {
    const encoded = await encodeChunks(own, codec, native);
    return sealPack(
      encoded.map((e, i) => ({ ...e, sha256: (chunks[i] as RawPackInput).sha256, raw: (own[i] as Buffer).length })),
      into,
    );
  }
  const stored = chunks.map((c, i): StoredInput => ({ sha256: c.sha256, size: packed.stored[i] as number, codec: packed.codecs[i], raw: c.data.length }));
  return sealed((into as Buffer).subarray(0, stored.reduce((n, c) => n + c.size, 0)), stored, packed.sha256);
}

/** Format 1 when no chunk is encoded (what older readers understand), else format 2. */
export function encodeTable(t: PackTable): Buffer {
  const format = t.chunks.some((c) => c.codec) ? TABLE_FORMAT : TABLE_FORMAT_1;
  return Buffer.from(JSON.stringify({ format, pack: t.pack, size: t.size, chunks: t.chunks.map((c) => (c.codec ? [c.sha256, c.offset, c.size, c.codec, c.raw] : [c.sha256, c.offset, c.size])) }));
}

/** Parse and check the table read from `key`. */
export function decodeTable(data: Buffer, key: string): PackTable {
  const damaged = (why: string): never => {
    throw new VnsnapError('ERR_DATA_LOSS', `pack table ${key} is damaged (${why})`);
  };
  const o = parseObject(data, damaged);
  if (o.format !== TABLE_FORMAT && o.format !== TABLE_FORMAT_1) {
    throw new VnsnapError('ERR_UNSUPPORTED_VERSION', `pack table ${key}: format ${JSON.stringify(o.format)} is neither ${TABLE_FORMAT} nor ${TABLE_FORMAT_1}; this vnsnap is older than the store, upgrade it`);
  }
  const v2 = o.format === TABLE_FORMAT;
  if (typeof o.pack !== 'string' || packIdOf(key) !== o.pack) damaged(`it names pack ${JSON.stringify(o.pack)}`);
  if (!isSize(o.size) || !Array.isArray(o.chunks)) damaged('bad size or chunk list');
  const chunks: PackEntry[] = [];
  let at = 0;
  for (const c of o.chunks as unknown[]) {
    const bad = (): never => damaged(`bad chunk entry ${chunks.length + 1}`);
    if (!Array.isArray(c) || typeof c[0] !== 'string' || !SHA.test(c[0]) || c[1] !== at || !isSize(c[2])) bad();
    const [sha256, offset, size, codec, raw] = c as [string, number, number, unknown, unknown];
    const len = (c as unknown[]).length;
    if (len === 3) chunks.push({ sha256, offset, size });
    else if (v2 && len === 5 && isCodec(codec) && isSize(raw)) chunks.push({ sha256, offset, size, codec, raw });
    else if (v2 && len === 5 && !isCodec(codec)) throw new VnsnapError('ERR_UNSUPPORTED_VERSION', `pack table ${key}: chunk ${chunks.length + 1} is stored with codec ${JSON.stringify(codec)}, unknown to this vnsnap; upgrade it`);
    else bad();
    at += size;
  }
  if (at !== o.size) damaged(`chunks add up to ${at} bytes, not ${String(o.size)}`);
  return { pack: o.pack as string, size: o.size as number, chunks };
}
