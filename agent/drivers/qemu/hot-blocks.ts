/**
 * Which blocks of a tracked VM's RAM a round with the VM running leaves to the stopped round:
 * the blocks the guest wrote in the interval of the previous snapshot's stopped round, its hot
 * set (tracked-job.ts).
 *
 * Why: a guest rewrites some of its RAM many times a second (a network stack's buffers under a
 * TCP stream: tens of MiB a second in bench:vm-net). Each round before the `stop` read, hashed,
 * compressed and stored those blocks, and the stopped round read them again, because the guest
 * had written them again meanwhile: the agent's work per snapshot, taken from the guests' cores
 * (docs/performance.md, "Hot blocks left to the stopped round"). Blocks written again within a
 * few hundred ms are the ones a stopped round reads anyway.
 *
 * Guarantees (the exactness of tracked-job.ts rests on them):
 *   - split(written, hot) returns the runs of `written` without the blocks set in `hot`, and
 *     sets every block it leaves out in `left`, so a block a scan reported is either read by the
 *     round or recorded to be read later.
 *   - withLeft(written, left) returns the union of `written` and `left`: the stopped round reads
 *     every block left out since the job began, whether or not the guest wrote it again.
 *   - Runs are block-aligned (ram-track.ts blockRuns) and come back sorted, merged and
 *     block-aligned, the last one cut at `limit` (the RAM's length).
 */
import type { WrittenRuns } from './ram-track';

/** The blocks of block-aligned `runs` as a bitmap of `blocks` entries (1: in a run). */
export function blockSet(runs: WrittenRuns, blockSize: number, blocks: number): Uint8Array {
  const set = new Uint8Array(blocks);
  for (let i = 0; i < runs.count; i++) {
    const first = (runs.pairs[2 * i] as number) / blockSize;
    const end = Math.min(blocks, Math.ceil(((runs.pairs[2 * i] as number) + (runs.pairs[2 * i + 1] as number)) / blockSize));
    set.fill(1, first, end);
  }
  return set;
}

/** The runs of the blocks set in `set`, each block `blockSize` bytes, cut at `limit`. */
export function runsOf(set: Uint8Array, blockSize: number, limit: number): WrittenRuns {
  const out: number[] = [];
  let bytes = 0;
  for (let b = 0; b < set.length; ) {
    if (!set[b]) {
      b++;
      continue;
    }
    let e = b + 1;
    while (e < set.length && set[e]) e++;
    const off = b * blockSize;
    const len = Math.min(limit, e * blockSize) - off;
    out.push(off, len);
    bytes += len;
    b = e;
  }
  return { pairs: Float64Array.from(out), count: out.length / 2, bytes };
}

/** `written` without the blocks set in `hot`; the blocks left out are set in `left`. */
export function split(written: WrittenRuns, hot: Uint8Array, left: Uint8Array, blockSize: number, limit: number): WrittenRuns {
  const set = blockSet(written, blockSize, left.length);
  for (let b = 0; b < set.length; b++) {
    if (set[b] && hot[b]) {
      left[b] = 1;
      set[b] = 0;
    }
  }
  return runsOf(set, blockSize, limit);
}

/** `written` with every block set in `left` added. */
export function withLeft(written: WrittenRuns, left: Uint8Array, blockSize: number, limit: number): WrittenRuns {
  const set = blockSet(written, blockSize, left.length);
  for (let b = 0; b < set.length; b++) if (left[b]) set[b] = 1;
  return runsOf(set, blockSize, limit);
}
