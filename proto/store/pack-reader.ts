/**
 * Reading an artefact's chunks from the content-addressed store (cas-store.ts), in order, each
 * checked before it is handed out. Neighbouring chunks of one pack (the index says where each
 * chunk is: cas-index.ts) are taken in one ranged request of up to `rangeBytes`, and requests
 * run ahead of the consumer, at most `concurrency` of them and about `aheadBytes` at a time; a
 * chunk of layout 1 (its own object) is one request.
 *
 * Guarantees:
 *   - Every chunk's size and SHA-256 are checked against the index before it is yielded: a
 *     corrupt or short chunk is ERR_CHECKSUM, a missing one ERR_DATA_LOSS, both naming the
 *     artefact and the chunk ("artefact P: chunk 3 of 12 (<sha256>) is corrupt (…)").
 *   - A pack that is gone (garbage collection repacked its live chunks into a new pack) is not
 *     the end: each of its chunks is looked up through `locate` (the store's pack map, read from
 *     the pack tables) and read from where it is now; only a chunk found nowhere is missing.
 *   - A compressed chunk (chunk-codec.ts) is decompressed in libuv's thread pool (a run's chunks
 *     as one batch), then checked like any other; one that does not decompress to its size is
 *     ERR_CHECKSUM.
 *   - Backend failures other than an absent object (ERR_UNAVAILABLE, …) pass through unchanged.
 */
import { createHash } from 'node:crypto';
import { isVnsnapError, VnsnapError } from '../core/errors';
import { chunkKey, storedSize, type ArtefactIndex, type ChunkRef } from './cas-index';
import { decodeChunk, decodeChunks, type Codec } from './chunk-codec';
import type { ObjectBackend } from './object-backend';
import { packKey } from './pack-format';
import type { ChunkLocation } from './pack-map';

export interface ReadOptions {
  backend: ObjectBackend;
  /** Where a chunk is now, for a chunk whose pack is gone; undefined when nowhere. */
  locate: (sha256: string) => Promise<ChunkLocation | undefined>;
  /** Requests in flight. */
  concurrency: number;
  /** Largest ranged request. */
  rangeBytes: number;
  /** Bytes requested ahead of the consumer (at least one request). */
  aheadBytes: number;
}

/** Neighbouring chunks of one pack (or one chunk object), read in one request. */
interface Run {
  first: number;
  refs: ChunkRef[];
  bytes: number;
}

/** Split an index's chunks into runs: same pack, each starting where the one before ends. */
export function planRuns(chunks: readonly ChunkRef[], rangeBytes: number): Run[] {
  const runs: Run[] = [];
  let cur: Run | undefined;
  chunks.forEach((c, i) => {
    const last = cur?.refs[cur.refs.length - 1];
    const size = storedSize(c);
    const joins = cur && last && c.pack !== undefined && last.pack === c.pack && (last.offset as number) + storedSize(last) === c.offset && cur.bytes + size <= rangeBytes;
    if (joins && cur) {
      cur.refs.push(c);
      cur.bytes += size;
    } else {
      cur = { first: i, refs: [c], bytes: size };
      runs.push(cur);
    }
  });
  return runs;
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** The chunks of `idx`, in order, each checked. */
export async function* readChunks(idx: ArtefactIndex, o: ReadOptions): AsyncGenerator<Buffer> {
  const runs = planRuns(idx.chunks, o.rangeBytes);
  const ahead: { p: Promise<Buffer[]>; bytes: number }[] = [];
  let aheadBytes = 0;
  let next = 0;
  const fill = (): void => {
    while (next < runs.length && ahead.length < o.concurrency && (ahead.length === 0 || aheadBytes + (runs[next] as Run).bytes <= o.aheadBytes)) {
      const run = runs[next++] as Run;
      const p = readRun(idx, run, o);
      p.catch(() => undefined); // handled when its turn comes
      ahead.push({ p, bytes: run.bytes });
      aheadBytes += run.bytes;
    }
  };
  fill();
  while (ahead.length > 0) {
    const head = ahead.shift() as { p: Promise<Buffer[]>; bytes: number };
    const chunks = await head.p;
    aheadBytes -= head.bytes;
    fill();
    for (const c of chunks) yield c;
  }
}

/** One run's chunks, checked; through `locate` when its pack is gone. */
async function readRun(idx: ArtefactIndex, run: Run, o: ReadOptions): Promise<Buffer[]> {
  const first = run.refs[0] as ChunkRef;
  if (first.pack === undefined) return [check(idx, run.first, await absentIsLoss(idx, run.first, o.backend.get(chunkKey(first.sha256))))];
  let data: Buffer;
  try {
    data = await o.backend.getRange(packKey(first.pack), first.offset as number, run.bytes);
  } catch (e) {
    if (!isVnsnapError(e, 'ERR_NOT_FOUND')) throw e;
    const out: Buffer[] = [];
    for (let k = 0; k < run.refs.length; k++) out.push(await relocated(idx, run.first + k, o, e));
    return out;
  }
  let at = 0;
  const stored = run.refs.map((ref, k) => {
    const b = data.subarray(at, at + storedSize(ref));
    at += storedSize(ref);
    return { stored: b, codec: ref.codec, size: ref.size, what: `artefact ${idx.path}: ${which(idx, run.first + k)}` };
  });
  return (await decodeChunks(stored)).map((b, k) => check(idx, run.first + k, b));
}

/** Chunk i's own bytes from the bytes stored for it. */
function decode(idx: ArtefactIndex, i: number, stored: Buffer, codec: Codec | undefined): Promise<Buffer> {
  return decodeChunk(stored, codec, (idx.chunks[i] as ChunkRef).size, `artefact ${idx.path}: ${which(idx, i)}`);
}

/** Chunk i read from where the pack map says it is now. */
async function relocated(idx: ArtefactIndex, i: number, o: ReadOptions, cause: unknown): Promise<Buffer> {
  const ref = idx.chunks[i] as ChunkRef;
  const loc = await o.locate(ref.sha256);
  if (!loc) throw missing(idx, i, cause);
  return check(idx, i, await decode(idx, i, await absentIsLoss(idx, i, o.backend.getRange(packKey(loc.pack), loc.offset, loc.size)), loc.codec));
}

function which(idx: ArtefactIndex, i: number): string {
  return `chunk ${i + 1} of ${idx.chunks.length} (${(idx.chunks[i] as ChunkRef).sha256})`;
}

function missing(idx: ArtefactIndex, i: number, cause: unknown): VnsnapError {
  return new VnsnapError('ERR_DATA_LOSS', `artefact ${idx.path}: ${which(idx, i)} is missing from the store`, { cause });
}

async function absentIsLoss(idx: ArtefactIndex, i: number, p: Promise<Buffer>): Promise<Buffer> {
  try {
    return await p;
  } catch (e) {
    if (isVnsnapError(e, 'ERR_NOT_FOUND')) throw missing(idx, i, e);
    throw e;
  }
}

/** Chunk i's bytes, or ERR_CHECKSUM when they are not what the index says. */
function check(idx: ArtefactIndex, i: number, b: Buffer): Buffer {
  const ref = idx.chunks[i] as ChunkRef;
  const sum = sha256(b);
  if (b.length !== ref.size || sum !== ref.sha256) throw new VnsnapError('ERR_CHECKSUM', `artefact ${idx.path}: ${which(idx, i)} is corrupt (${b.length} bytes, SHA-256 ${sum})`);
  return b;
}
