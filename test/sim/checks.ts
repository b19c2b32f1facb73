/**
 * Consistency checks of sim VMs (test/sim/driver.ts) run by real agents, read through the
 * agents' /debug/vms and the snapshot's files in the shared store (test/support/cluster.ts).
 */
import type { SimGuestState, SimVmState } from './driver';
import type { CatalogSnapshot, Cluster, SimFrame } from '../support/cluster';

export type States = Record<string, SimVmState>;

/** Every VM of the VNE once, by name (throws when one is missing or held twice). */
export async function readStates(c: Cluster, vne: string, vms: readonly string[]): Promise<States> {
  const all = await c.vneVms(vne);
  const out: States = {};
  for (const vm of vms) {
    const where = all.get(vm) ?? [];
    if (where.length !== 1 || !where[0]?.vm.state) throw new Error(`VM ${vm} is held by ${where.length} agents`);
    out[vm] = where[0].vm.state;
  }
  return out;
}

/**
 * Live checks, with traffic running: two readings A then B of every VM.
 *   - every VM running, no gap, duplicate, orphan, NIC queue drop or misdelivered frame;
 *   - nobody received more than was sent: A[r].expected[s] <= B[s].sent[r] (B read after A);
 *   - nothing stuck: every pair made progress since `since` (when given).
 * Returns the problems (empty when all hold) and reading B.
 */
export async function liveProblems(c: Cluster, vne: string, vms: readonly string[], since?: States): Promise<{ problems: string[]; states: States }> {
  const a = await readStates(c, vne, vms);
  const b = await readStates(c, vne, vms);
  const problems: string[] = [];
  for (const r of vms) {
    const s = b[r] as SimVmState;
    if (s.status !== 'running') problems.push(`${r} is ${s.status}`);
    for (const k of ['gaps', 'duplicates', 'orphans', 'rxQueueDrops', 'misdelivered'] as const) if (s[k] !== 0) problems.push(`${r}: ${k} = ${s[k]}`);
    for (const snd of vms) {
      if (snd === r) continue;
      const got = a[r]?.expected[snd] ?? 0;
      const sent = b[snd]?.sent[r] ?? 0;
      if (got > sent) problems.push(`${r} expects ${got} from ${snd}, which has sent only ${sent}`);
      if (since && (s.expected[snd] ?? 0) <= (since[r]?.expected[snd] ?? 0)) problems.push(`${r} received nothing from ${snd} since the last reading (${s.expected[snd]})`);
    }
  }
  return { problems, states: b };
}

/**
 * The cut is consistent and its channel state complete, from the snapshot's files alone: for
 * every receiver r and sender s, the frames recorded for r from s are exactly the sequence
 * numbers s sent before its cut and r had not received before its cut,
 * [image[r].expected[s], image[s].sent[r]), each once and in order — no orphan (r never got
 * more than s had sent), nothing in flight lost or recorded twice. Images hold no gap,
 * duplicate or orphan, and carry the snapshot's epoch.
 */
export function cutProblems(images: Record<string, SimGuestState>, channel: Record<string, SimFrame[]>, vms: readonly string[], epoch: number): { problems: string[]; inFlight: number } {
  const problems: string[] = [];
  let inFlight = 0;
  for (const r of vms) {
    const img = images[r];
    if (!img) {
      problems.push(`no image of ${r}`);
      continue;
    }
    if (img.epoch !== epoch) problems.push(`image of ${r} has epoch ${img.epoch}, snapshot ${epoch}`);
    for (const k of ['gaps', 'duplicates', 'orphans'] as const) if (img[k] !== 0) problems.push(`image of ${r}: ${k} = ${img[k]}`);
    const recorded = (channel[r] ?? []).filter((f) => f.type === 1);
    for (const s of vms) {
      if (s === r) continue;
      const from = img.expected[s] ?? 0;
      const to = images[s]?.sent[r] ?? 0;
      if (from > to) problems.push(`orphan: ${r} had received ${from} from ${s}, which had sent ${to} at its cut`);
      const seqs = recorded.filter((f) => f.src === s).map((f) => f.seq);
      const want = Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
      if (seqs.join(',') !== want.join(',')) problems.push(`${r} from ${s}: recorded [${seqs.join(',')}], in flight at the cut [${want.join(',')}]`);
      inFlight += want.length;
    }
    for (const f of recorded) if (f.epoch >= epoch) problems.push(`${r}: recorded a frame of epoch ${f.epoch} from ${f.src} (not in flight across cut ${epoch})`);
  }
  return { problems, inFlight };
}

/**
 * After a restore of a snapshot whose images are `images`: every VM continued from its image —
 * its counters are the image's plus what came after, no gap or duplicate (so the recorded
 * in-flight frames were delivered exactly once, before anything newer), and it has received
 * from every peer beyond what the image had.
 */
export function continuityProblems(now: States, images: Record<string, SimGuestState>, vms: readonly string[]): string[] {
  const problems: string[] = [];
  for (const r of vms) {
    const s = now[r];
    const img = images[r];
    if (!s || !img) continue;
    if (s.epoch < img.epoch) problems.push(`${r} is at epoch ${s.epoch}, below the snapshot's ${img.epoch}`);
    for (const snd of vms) {
      if (snd === r) continue;
      if ((s.expected[snd] ?? 0) <= (img.expected[snd] ?? 0)) problems.push(`${r} has received nothing from ${snd} since the restore`);
      if ((s.sent[snd] ?? 0) <= (img.sent[snd] ?? 0)) problems.push(`${r} has sent nothing to ${snd} since the restore`);
      // What r received after the restore = exactly the sequence numbers after its image's.
      const receivedSince = (s.received[snd] ?? 0) - (img.received[snd] ?? 0);
      const advanced = (s.expected[snd] ?? 0) - (img.expected[snd] ?? 0);
      if (receivedSince !== advanced) problems.push(`${r} from ${snd}: ${receivedSince} frames received since the restore, sequence advanced ${advanced}`);
    }
  }
  return problems;
}

/** A CatalogSnapshot's total recorded frames (its VMs' channel_frames). */
export function recordedFrames(s: CatalogSnapshot): number {
  return s.vms.reduce((n, v) => n + v.channelFrames, 0);
}
