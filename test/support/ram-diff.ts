/**
 * Page-by-page comparison of two guest RAM dumps (QemuDriver.pmemsave): how a snapshot image is
 * checked against the VM's RAM at the cut, exactly, instead of waiting for a restored guest to
 * crash (docs/qemu.md, "Pre-copy and TCG dirty tracking").
 */
import * as fs from 'node:fs';

export const PAGE = 4096;

export interface RamDiff {
  /** Pages whose bytes differ. */
  pages: number;
  /** The differing pages as [first page number, count] runs. */
  runs: [number, number][];
  /** Byte lengths, if they differ (a size mismatch is a difference in itself). */
  lengths?: [number, number];
}

/** Compare two equally long dumps 4 KiB page by page. */
export function diffPages(a: Buffer, b: Buffer): RamDiff {
  const runs: [number, number][] = [];
  let pages = 0;
  const n = Math.ceil(Math.min(a.length, b.length) / PAGE);
  for (let p = 0; p < n; p++) {
    const end = Math.min((p + 1) * PAGE, a.length, b.length);
    if (a.compare(b, p * PAGE, end, p * PAGE, end) === 0) continue;
    pages++;
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === p) last[1]++;
    else runs.push([p, 1]);
  }
  return { pages, runs, ...(a.length !== b.length ? { lengths: [a.length, b.length] as [number, number] } : {}) };
}

export function diffFiles(a: string, b: string): RamDiff {
  return diffPages(fs.readFileSync(a), fs.readFileSync(b));
}

/** "0xd5c4000+1 0xd5d5000+3 …" (at most `max` runs). */
export function describeRuns(d: RamDiff, max = 8): string {
  return d.runs
    .slice(0, max)
    .map(([p, n]) => `0x${(p * PAGE).toString(16)}+${n}`)
    .join(' ');
}
