/**
 * The layout of the content-addressed store in its object backend (docs/storage.md, "Layout"),
 * in one place: where chunks and artefact indexes live and what an index holds.
 *
 *   packs/<xx>/<sha256 of the pack>        a pack: many chunks back to back (pack-format.ts)
 *   packtabs/<xx>/<sha256 of the pack>     its table of contents: chunk, offset, size
 *   chunks/<first 2 hex digits>/<sha256>   one chunk alone (layout 1, and stores written before packs)
 *   artefacts/<artefact path>.idx          one artefact's index (JSON, below)
 *
 * An index is the artefact: it lists the artefact's chunks in order with their sizes, plus the
 * artefact's own size and SHA-256 and the chunker that cut it. In format 2 each chunk also names
 * where it was stored (a pack and the offset in it), so a reader needs no global map and can read
 * neighbouring chunks of a pack in one ranged request; a chunk without a location is a chunk
 * object of layout 1. Format 3 (written only when a chunk is stored compressed: chunk-codec.ts)
 * adds entries [sha256, size, pack, offset, codec, stored bytes]. Formats 1 (every chunk its own
 * object) and 2 are still read, and written when they suffice. Format 4 is a block image's
 * (block-image-writer.ts): entries as in format 3, plus `"digest":"chunk-list"` (its `sha256` is
 * chunkListSha256 of its chunks, not the SHA-256 of its bytes) and the chunker `{"algo":"blocks",
 * "blockSize":B,"blocks":N}` (its first N chunks are its blocks, B bytes each, the rest its tail).
 * Only block images are written in format 4, so a vnsnap that predates them refuses one
 * (ERR_UNSUPPORTED_VERSION) rather than calling its chunk-list digest a wrong content hash; its
 * garbage collection stops before deleting anything. An index is written only
 * after every chunk it names is stored, so an index never names a chunk that was never written;
 * an artefact without its index does not exist. decodeIndex() refuses an index of another
 * format (ERR_UNSUPPORTED_VERSION) or one that is damaged (ERR_DATA_LOSS), naming the artefact.
 */
import { createHash } from 'node:crypto';
import { VnsnapError } from '../core/errors';
import type { ChunkerParams } from './chunker';
import { isCodec, type Codec } from './chunk-codec';
import { CHUNK_LIST_ATTRIBUTE, DIGEST_ATTRIBUTE, DIGEST_CHUNK_LIST } from './snapshot-store';

export const INDEX_FORMAT_1 = 'vnsnap-cas-index/1';
export const INDEX_FORMAT_2 = 'vnsnap-cas-index/2';
export const INDEX_FORMAT = 'vnsnap-cas-index/3';
export const INDEX_FORMAT_BLOCKS = 'vnsnap-cas-index/4';
const READ_FORMATS = [INDEX_FORMAT_BLOCKS, INDEX_FORMAT, INDEX_FORMAT_2, INDEX_FORMAT_1];
/** The `digest` of a format-4 index: its sha256 is its chunk list's. */
const CHUNK_LIST_DIGEST = DIGEST_CHUNK_LIST;
/** Smallest and largest block of a block image (snapshot-store.ts BlockImageOptions). */
export const MIN_BLOCK = 4096;
export const MAX_BLOCK = 1 << 20;
export const CHUNK_PREFIX = 'chunks/';
export const ARTEFACT_PREFIX = 'artefacts/';
const INDEX_SUFFIX = '.idx';

/** One chunk of an artefact: its SHA-256 (lower-case hex) and size; where it was stored, if in a pack. */
export interface ChunkRef {
  sha256: string;
  size: number;
  /** The pack (its SHA-256) and byte offset in it; absent for a chunk object (layout 1). */
  pack?: string;
  offset?: number;
  /** How the chunk is stored in its pack (chunk-codec.ts), and the bytes it takes there; absent: plain, `size` bytes. */
  codec?: Codec;
  stored?: number;
}

/** The bytes a chunk takes where it is stored. */
export const storedSize = (c: ChunkRef): number => (c.codec ? (c.stored as number) : c.size);

/** How a block image is cut: `blocks` chunks of `blockSize` bytes, then its tail. */
export interface BlockLayout {
  algo: 'blocks';
  blockSize: number;
  blocks: number;
}

export interface ArtefactIndex {
  path: string;
  size: number;
  /** The SHA-256 of its bytes; of a block image (chunker.algo 'blocks'), of its chunk list. */
  sha256: string;
  chunker: (ChunkerParams & { algo: 'fastcdc-gear32' }) | BlockLayout;
  chunks: ChunkRef[];
}

/** Whether the index is a block image's (format 4): its sha256 is its chunk list's SHA-256. */
export const isBlockImage = (i: ArtefactIndex): i is ArtefactIndex & { chunker: BlockLayout } => i.chunker.algo === 'blocks';

/** Whether `n` is a block size a block image may have: a power of two, MIN_BLOCK .. MAX_BLOCK. */
export const isBlockSize = (n: number): boolean => Number.isInteger(n) && n >= MIN_BLOCK && n <= MAX_BLOCK && (n & (n - 1)) === 0;

/** Characters of chunk-list lines hashed per call (chunkListSha256). */
const CHUNK_LIST_PIECE = 64 * 1024;

/**
 * The SHA-256 of a chunk list: each chunk's SHA-256 and size in order, under a format line. A
 * manifest that records it (snapshot-store.ts, CHUNK_LIST_ATTRIBUTE) binds the artefact to exactly
 * these chunks: an index that lists others — forged, or replaced — no longer matches, so checking
 * each chunk against the index proves the whole artefact without hashing it again.
 */
export function chunkListSha256(chunks: readonly Pick<ChunkRef, 'sha256' | 'size'>[]): string {
  const h = createHash('sha256').update('vnsnap-chunk-list/1\n');
  // The lines handed over in pieces of ~64 KiB, not one call each: a block image's commit hashes
  // ~4,100 of them per snapshot, and a call into the hash per line cost twice the hashing.
  let piece = '';
  for (const c of chunks) {
    piece += `${c.sha256} ${c.size}\n`;
    if (piece.length >= CHUNK_LIST_PIECE) {
      h.update(piece);
      piece = '';
    }
  }
  return h.update(piece).digest('hex');
}

/**
 * What the store's results say of an artefact with this index (snapshot-store.ts): its chunk
 * list's SHA-256 (CHUNK_LIST_ATTRIBUTE; `list` when already computed), and for a block image that
 * its sha256 is that same value (DIGEST_ATTRIBUTE = DIGEST_CHUNK_LIST).
 */
export function attributesOf(i: Pick<ArtefactIndex, 'chunker' | 'chunks'>, list = chunkListSha256(i.chunks)): Record<string, string> {
  return { [CHUNK_LIST_ATTRIBUTE]: list, ...(i.chunker.algo === 'blocks' ? { [DIGEST_ATTRIBUTE]: DIGEST_CHUNK_LIST } : {}) };
}

/** The object key of the chunk with this SHA-256. */
export function chunkKey(sha256: string): string {
  return `${CHUNK_PREFIX}${sha256.slice(0, 2)}/${sha256}`;
}

/** The object key of an artefact's index. */
export function indexKey(relPath: string): string {
  return `${ARTEFACT_PREFIX}${relPath}${INDEX_SUFFIX}`;
}

/** The artefact path an index key stands for, or null for any other key. */
export function pathOfIndexKey(key: string): string | null {
  if (!key.startsWith(ARTEFACT_PREFIX) || !key.endsWith(INDEX_SUFFIX)) return null;
  const p = key.slice(ARTEFACT_PREFIX.length, key.length - INDEX_SUFFIX.length);
  return p === '' ? null : p;
}

/**
 * Format 1 when no chunk is in a pack (what readers before packs understand), else format 2:
 * "packs" lists the packs once, each chunk is [sha256, size] or [sha256, size, pack number, offset];
 * format 3 when a chunk is compressed: its entry is [sha256, size, pack number, offset, codec, stored];
 * format 4, with any of those entries, for a block image (and only for one).
 */
export function encodeIndex(i: ArtefactIndex): Buffer {
  return Buffer.from(indexJson(i));
}

/**
 * The index `i` as encodeIndex gives it under each of `paths` in turn (the same artefact under
 * two names: BlockImageOptions.alsoAt), its chunk list turned into JSON once: the path is the
 * encoding's second member, after the format, so only the head differs.
 */
export function encodeIndexAs(i: ArtefactIndex, paths: readonly string[]): Buffer[] {
  const format = formatOf(i);
  const json = indexJson(i, format);
  const head = (path: string): string => `{"format":${JSON.stringify(format)},"path":${JSON.stringify(path)}`;
  const own = head(i.path);
  if (!json.startsWith(own)) throw new VnsnapError('ERR_INTERNAL', `an index encoding does not begin with ${own}`); // indexJson's member order changed
  if (paths.length === 1 && paths[0] === i.path) return [Buffer.from(json)];
  // The rest as bytes once, each path's head put before it in a copy: no second copy of the JSON as a string.
  const rest = Buffer.from(json.slice(own.length));
  return paths.map((p) => Buffer.concat([Buffer.from(head(p)), rest]));
}

/** The format encodeIndex writes `i` in. */
function formatOf(i: ArtefactIndex): string {
  if (isBlockImage(i)) return INDEX_FORMAT_BLOCKS;
  if (i.chunks.every((c) => c.pack === undefined)) return INDEX_FORMAT_1;
  return i.chunks.some((c) => c.codec) ? INDEX_FORMAT : INDEX_FORMAT_2;
}

/** The encoding's JSON: `format` first, then `path` (encodeIndexAs relies on that order). */
function indexJson(i: ArtefactIndex, format = formatOf(i)): string {
  const head = { path: i.path, size: i.size, sha256: i.sha256, ...(isBlockImage(i) ? { digest: CHUNK_LIST_DIGEST } : {}), chunker: i.chunker };
  if (format === INDEX_FORMAT_1) return JSON.stringify({ format, ...head, chunks: i.chunks.map((c) => [c.sha256, c.size]) });
  const packs = new Map<string, number>();
  // A loop, not a callback per chunk (as in the other per-block loops of a block image's open and
  // commit): V8 optimized such a callback (4,097 calls per snapshot of a 256 MiB guest) anew about
  // every tenth snapshot, once per full garbage collection, the optimizing compiler ~10 % of the
  // agents' CPU per tracked snapshot (docs/performance.md, branch `agentcpu`).
  const chunks = new Array<unknown[]>(i.chunks.length);
  for (let k = 0; k < i.chunks.length; k++) {
    const c = i.chunks[k] as ChunkRef;
    if (c.pack === undefined) {
      chunks[k] = [c.sha256, c.size];
      continue;
    }
    let n = packs.get(c.pack);
    if (n === undefined) packs.set(c.pack, (n = packs.size));
    chunks[k] = c.codec ? [c.sha256, c.size, n, c.offset ?? 0, c.codec, c.stored] : [c.sha256, c.size, n, c.offset ?? 0];
  }
  return JSON.stringify({ format, ...head, packs: [...packs.keys()], chunks });
}

const SHA = /^[0-9a-f]{64}$/;
const isSize = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;

/** The JSON object in data; `damaged` names what is wrong when it is none. */
export function parseObject(data: Buffer, damaged: (why: string) => never): Record<string, unknown> {
  let o: unknown;
  try {
    o = JSON.parse(data.toString('utf8'));
  } catch {
    damaged('not JSON');
  }
  if (o === null || typeof o !== 'object') damaged('not an object');
  return o as Record<string, unknown>;
}

/** Parse and check an index read for `relPath`. */
export function decodeIndex(data: Buffer, relPath: string): ArtefactIndex {
  const damaged = (why: string): never => {
    throw new VnsnapError('ERR_DATA_LOSS', `artefact ${relPath}: its index is damaged (${why})`);
  };
  const o = parseObject(data, damaged);
  if (!READ_FORMATS.includes(o.format as string)) {
    throw new VnsnapError('ERR_UNSUPPORTED_VERSION', `artefact ${relPath}: index format ${JSON.stringify(o.format)} is none of ${READ_FORMATS.join(', ')}; this vnsnap is older than the store, upgrade it`);
  }
  const packs = o.format === INDEX_FORMAT_1 ? [] : o.packs;
  const v3 = o.format === INDEX_FORMAT || o.format === INDEX_FORMAT_BLOCKS;
  if (!Array.isArray(packs) || !packs.every((p) => typeof p === 'string' && SHA.test(p))) damaged('bad pack list');
  if (o.path !== relPath) damaged(`it names ${JSON.stringify(o.path)}`);
  if (!isSize(o.size) || typeof o.sha256 !== 'string' || !SHA.test(o.sha256)) damaged('bad size or SHA-256');
  if (!Array.isArray(o.chunks)) damaged('no chunk list');
  const chunks: ChunkRef[] = [];
  let total = 0;
  for (const c of o.chunks as unknown[]) {
    if (!Array.isArray(c) || typeof c[0] !== 'string' || !SHA.test(c[0]) || !isSize(c[1])) damaged(`bad chunk entry ${chunks.length + 1}`);
    const [sha256, size, n, offset, codec, stored] = c as [string, number, unknown, unknown, unknown, unknown];
    const len = (c as unknown[]).length;
    const located = (len === 4 || len === 6) && isSize(n) && n < (packs as string[]).length && isSize(offset);
    if (len === 2) chunks.push({ sha256, size });
    else if (located && len === 4) chunks.push({ sha256, size, pack: (packs as string[])[n] as string, offset });
    else if (located && v3 && !isCodec(codec)) throw new VnsnapError('ERR_UNSUPPORTED_VERSION', `artefact ${relPath}: chunk ${chunks.length + 1} is stored with codec ${JSON.stringify(codec)}, unknown to this vnsnap; upgrade it`);
    else if (located && v3 && isSize(stored)) chunks.push({ sha256, size, pack: (packs as string[])[n] as string, offset, codec: codec as Codec, stored });
    else damaged(`bad chunk entry ${chunks.length + 1}`);
    total += size;
  }
  if (total !== o.size) damaged(`chunks add up to ${total} bytes, not ${String(o.size)}`);
  if (o.format === INDEX_FORMAT_BLOCKS) checkBlocks(o, chunks, damaged);
  return { path: relPath, size: o.size as number, sha256: o.sha256 as string, chunker: o.chunker as ArtefactIndex['chunker'], chunks };
}

/** A format-4 index is a block image's: its digest, its layout, and blocks of its block size. */
function checkBlocks(o: Record<string, unknown>, chunks: readonly ChunkRef[], damaged: (why: string) => never): void {
  if (o.digest !== CHUNK_LIST_DIGEST) damaged(`digest ${JSON.stringify(o.digest)} in a block image`);
  const c = o.chunker as Partial<BlockLayout> | null;
  if (c === null || typeof c !== 'object' || c.algo !== 'blocks' || !isBlockSize(c.blockSize as number) || !isSize(c.blocks) || c.blocks > chunks.length) damaged('bad block layout');
  const { blockSize, blocks } = c as BlockLayout;
  for (let i = 0; i < blocks; i++) if ((chunks[i] as ChunkRef).size !== blockSize) damaged(`block ${i} is ${(chunks[i] as ChunkRef).size} bytes, not ${blockSize}`);
}
