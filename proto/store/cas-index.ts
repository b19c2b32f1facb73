/**
 * The layout of the content-addressed store in its object backend (docs/storage.md, "Layout"),
 * in one place: where chunks and artefact indexes live and what an index holds.
 *
 *   chunks/<first 2 hex digits>/<sha256>   one chunk, named by the SHA-256 of its bytes
 *   artefacts/<artefact path>.idx          one artefact's index (JSON, below)
 *
 * An index is the artefact: it lists the artefact's chunks in order with their sizes, plus the
 * artefact's own size and SHA-256 and the chunker that cut it. It is written only after every
 * chunk it names is stored, so an index never names a chunk that was never written; an
 * artefact without its index does not exist. decodeIndex() refuses an index of another format
 * (ERR_UNSUPPORTED_VERSION) or one that is damaged (ERR_DATA_LOSS), naming the artefact.
 */
import { VnsnapError } from '../core/errors';
import type { ChunkerParams } from './chunker';

export const INDEX_FORMAT = 'vnsnap-cas-index/1';
export const CHUNK_PREFIX = 'chunks/';
export const ARTEFACT_PREFIX = 'artefacts/';
const INDEX_SUFFIX = '.idx';

/** One chunk of an artefact: its SHA-256 (lower-case hex) and size. */
export interface ChunkRef {
  sha256: string;
  size: number;
}

export interface ArtefactIndex {
  path: string;
  size: number;
  sha256: string;
  chunker: ChunkerParams & { algo: 'fastcdc-gear32' };
  chunks: ChunkRef[];
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

export function encodeIndex(i: ArtefactIndex): Buffer {
  const body = { format: INDEX_FORMAT, path: i.path, size: i.size, sha256: i.sha256, chunker: i.chunker, chunks: i.chunks.map((c) => [c.sha256, c.size]) };
  return Buffer.from(JSON.stringify(body));
}

const SHA = /^[0-9a-f]{64}$/;
const isSize = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;

/** Parse and check an index read for `relPath`. */
export function decodeIndex(data: Buffer, relPath: string): ArtefactIndex {
  const damaged = (why: string): never => {
    throw new VnsnapError('ERR_DATA_LOSS', `artefact ${relPath}: its index is damaged (${why})`);
  };
  let o: Record<string, unknown> = {};
  try {
    o = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
  } catch {
    damaged('not JSON');
  }
  if (o === null || typeof o !== 'object') damaged('not an object');
  if (o.format !== INDEX_FORMAT) throw new VnsnapError('ERR_UNSUPPORTED_VERSION', `artefact ${relPath}: index format ${JSON.stringify(o.format)} is not ${INDEX_FORMAT}`);
  if (o.path !== relPath) damaged(`it names ${JSON.stringify(o.path)}`);
  if (!isSize(o.size) || typeof o.sha256 !== 'string' || !SHA.test(o.sha256)) damaged('bad size or SHA-256');
  if (!Array.isArray(o.chunks)) damaged('no chunk list');
  const chunks: ChunkRef[] = [];
  let total = 0;
  for (const c of o.chunks as unknown[]) {
    if (!Array.isArray(c) || typeof c[0] !== 'string' || !SHA.test(c[0]) || !isSize(c[1])) damaged(`bad chunk entry ${chunks.length + 1}`);
    const [sha256, size] = c as [string, number];
    chunks.push({ sha256, size });
    total += size;
  }
  if (total !== o.size) damaged(`chunks add up to ${total} bytes, not ${String(o.size)}`);
  return { path: relPath, size: o.size as number, sha256: o.sha256 as string, chunker: o.chunker as ArtefactIndex['chunker'], chunks };
}
