/**
 * bench:snapshot's restore measurement: one `vnsnap restore` timed from the command's start, with
 * its timeline (every note the coordinator sent, at the coordinator's instant, ms after the
 * command started: the CLI's own start and connection are the first note's offset) and the
 * load-to-resume span between the coordinator's "loading N VMs paused" (or, over a running VNE,
 * "loading N VMs beside the running ones") and "VMs resumed" notes (every VM loaded paused in
 * parallel, then resumed: the slowest VM's own restore; beside, the swap is inside it too). The
 * restore's ratio to that span is the "VNE restore ≤ 1.2× one VM's load". A restore
 * loaded beside also gives its swap: "swapping" note → "VMs resumed" (the old VMs stopped, the new
 * ones attached and resumed: what the running VNE's guests see as the restore's cut-over).
 */
import type { Cluster } from '../support/cluster';

export interface TimedRestore {
  /** Command start → exit. */
  seconds: number;
  /** The coordinator's load-to-resume span (0 when its notes were not seen). */
  loadToResumeS: number;
  /** Command start → the coordinator's "loading" note: everything before the load. */
  beforeLoadS: number;
  /** Loaded beside the running VMs: the "swapping" note → "VMs resumed" (0 otherwise). */
  swapS: number;
  /** "+1234 ms  note" per note. */
  timeline: string[];
}

interface Ev {
  note?: string;
  timeUnixMs?: string | number;
}

/** `vnsnap restore SNAPSHOT ...args`, timed (module comment); throws when it fails. */
export async function timedRestore(c: Cluster, snapshotId: string, args: readonly string[]): Promise<TimedRestore> {
  const t0 = Date.now();
  let loadAt = 0;
  let resumedAt = 0;
  let swapAt = 0;
  const timeline: string[] = [];
  const rr = await c.cliStream<Ev>(['restore', snapshotId, ...args], (e, ms) => {
    if (!e.note) return;
    // The coordinator's instant when it sent the note (same host clock), else its receipt here.
    const at = Number(e.timeUnixMs ?? 0) > 0 ? Number(e.timeUnixMs) - t0 : ms;
    timeline.push(`+${String(at).padStart(5)} ms  ${e.note}`);
    if (/loading \d+ VMs (paused|beside)/.test(e.note)) loadAt = at;
    if (/swapping the loaded VMs in/.test(e.note)) swapAt = at;
    if (/VMs resumed/.test(e.note)) resumedAt = at;
  }).done;
  const seconds = (Date.now() - t0) / 1000;
  if (rr.code !== 0) throw new Error(`restore failed: ${rr.stderr.trim()}`);
  return { seconds, loadToResumeS: loadAt && resumedAt ? (resumedAt - loadAt) / 1000 : 0, beforeLoadS: loadAt / 1000, swapS: swapAt && resumedAt ? (resumedAt - swapAt) / 1000 : 0, timeline };
}
