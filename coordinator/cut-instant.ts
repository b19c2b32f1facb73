/**
 * The scheduled cut instant of a snapshot's commit (issue 15: the spread of the VMs' cut
 * instants). Without it each agent cuts when the commit reaches it, so the cut instants are as
 * far apart as the commit's arrivals (the fan-out skew: 44–88 ms in the ten-round benches, the
 * agents' and the coordinator's event loops on a busy 2-core host). With it the commit names an
 * instant: the coordinator's clock at the fan-out + a margin that covers the commit's delivery,
 * converted into each agent's clock with that agent's offset (clock-offset.ts), and every agent
 * begins its cuts then. An agent that receives the commit after the instant cuts at once.
 *
 * A pre-copy commit names one (precopyMarginMs(): the margin + a lead) when the lead says so:
 *
 *   VNSNAP_PRECOPY_LEAD_MS unset, empty or `auto` (the default): a lead of TRACKED_PRECOPY_LEAD_MS
 *     when every VM of the VNE is a QEMU VM with tracked memory (qemu extra `memory: tracked`,
 *     proto/specs/qemu-extra.ts memoryMode()), no instant otherwise;
 *   `none`: no instant for any VNE; whole ms: that lead for every VNE.
 *
 * With an instant each agent begins its cuts at the receipt and each VM's driver stops it at the
 * instant. A tracked VM's job reads short rounds of the blocks written, the VM running, from the
 * receipt until the instant, and its `stop` is written at it (agent/drivers/qemu/tracked-job.ts
 * approachCut(); the agent waits for the instant before it gates the VM's ports and cuts): its
 * pause is its last, stopped round and its device state whenever the stop comes, so the instant
 * costs it no pause and brings its cut to the others'. The lead is what the rounds begun at the
 * receipt need to end before the instant: with none (the margin alone) the agents wrote `stop` 11–63 / 107–316
 * ms (test / distro guests, medians of two runs) and up to 309 / 989 ms after it, each when its
 * round ended, and the pre-copy cut spreads reached 80–315 ms; with 300 ms the test guests'
 * spreads were 4–74 ms (docs/performance.md, "Tracked memory in bench:snapshot"). A VM of QEMU's own migration stream runs its final round of the
 * copy until the instant (agent/drivers/qemu/precopy-switchover.ts), but QEMU converges by itself
 * before it in some rounds and the frozen round's set is sent with the VM stopped: measured with
 * a lead of 100 ms it brought the pre-copy cut spreads' median down to 8–14 ms but not their
 * maximum, and the pre-copy pauses over their targets (docs/performance.md, "The pre-copy cut at
 * the commit's instant"). So a VNE with any such VM (or a Xen or sim VM) gets no instant by
 * default: each VM stops when its own final round ends, 14–200 ms after the receipt, differently
 * per VM.
 *
 * A background commit of a VNE whose VMs are all tracked names its instant later by a lead too
 * (backgroundMarginMs(): the margin + TRACKED_BACKGROUND_LEAD_MS, 100 ms): its tracked jobs do the
 * same rounds from the receipt to the instant, after the begin's first round. Before it, each tracked VM's cut ran a round of its own
 * after the instant (when its last round was older than 250 ms) at the agent's own priority,
 * beside the guests' vCPUs and the agent's other VM: the `stop`s came 10–97 ms apart (median
 * 41.6, test guests: docs/performance.md, "Tracked memory in bench:snapshot").
 *
 * The margin adapts to the commit delays measured on the previous background commits (each VM's
 * PHASE_COMMIT: the coordinator wrote it → the agent received it, the agent's clock taken back by
 * its offset): `factor` × the largest of the last `history` delays + `padMs`, within
 * [minMs, maxMs]; `defaultMs` before any was measured. It costs no pause: the VMs run until the
 * instant; the snapshot takes the margin longer. VNSNAP_CUT_MARGIN_MS sets it: `auto` (the default), a fixed
 * number of ms, or 0 for no instant (every agent cuts at receipt, as before the field).
 *
 * Consistency does not depend on it: the epoch colouring of the switches keeps the cut
 * consistent whatever the instants (DESIGN.md); the instant only brings the pauses together.
 */
import { VnsnapError } from '../proto/core/errors';
import type { VmSnapshot__Output } from '../proto/gen/vnsnap/v1/VmSnapshot';
import type { VmSpec__Output } from '../proto/gen/vnsnap/v1/VmSpec';
import { memoryMode } from '../proto/specs/qemu-extra';

export const CUT_MARGIN_ENV = 'VNSNAP_CUT_MARGIN_MS';

export interface CutMarginOptions {
  defaultMs: number;
  minMs: number;
  maxMs: number;
  factor: number;
  padMs: number;
  history: number;
}

export const CUT_MARGIN: Readonly<CutMarginOptions> = { defaultMs: 100, minMs: 20, maxMs: 250, factor: 1.5, padMs: 5, history: 16 };

export const PRECOPY_LEAD_ENV = 'VNSNAP_PRECOPY_LEAD_MS';

/** The lead of a pre-copy commit's instant over a background one's, ms, for a VNE whose VMs all have tracked memory (the module comment). */
export const TRACKED_PRECOPY_LEAD_MS = 300;

/**
 * The lead of a background commit's instant over the margin, ms, for a VNE whose VMs all have
 * tracked memory (the module comment): room for a round at the receipt and, for a short one, one
 * more ending ROUND_LEAD_MS before the instant (agent/drivers/qemu/round-schedule.ts). It was
 * TRACKED_PRECOPY_LEAD_MS's 300 ms, most of the 0.32 s a background snapshot spent before its cut
 * (issue 15's wall time). Shorter is safe since a cut no longer waits for a round still running at
 * the instant (its scan is done: what was written since is the stopped round's): the stopped round
 * reads what was written since the last round's scan, 30 ms + twice a round before the instant
 * with either lead while a second round fits; otherwise since the receipt's round, or since the
 * begin's first round when that one is fresh (younger than FRESH_ROUND_MS): about as long before
 * the instant (docs/performance.md, branch `wallstart`).
 */
export const TRACKED_BACKGROUND_LEAD_MS = 100;

/** What VNSNAP_PRECOPY_LEAD_MS asks for (the module comment): 'auto', 'none', or whole ms of lead. */
export type PrecopyLead = 'auto' | 'none' | number;

/** VNSNAP_PRECOPY_LEAD_MS parsed: unset, empty or "auto": 'auto'; "none": 'none'; whole ms 0..1000; ERR_CONFIG otherwise. */
export function parsePrecopyLead(v: string | undefined): PrecopyLead {
  const t = v?.trim();
  if (t === undefined || t === '' || t === 'auto') return 'auto';
  if (t === 'none') return 'none';
  const n = Number(t);
  if (!Number.isInteger(n) || n < 0 || n > 1000) throw new VnsnapError('ERR_CONFIG', `${PRECOPY_LEAD_ENV}="${v}": expected auto (an instant for VNEs whose VMs all have tracked memory), none (pre-copy commits name no cut instant), or whole ms 0..1000`);
  return n;
}

/** Whether every VM of a VNE (at least one) is a QEMU VM with tracked memory: its pre-copy commits name an instant by default. */
export function allVmsTracked(vms: readonly Pick<VmSpec__Output, 'driver'>[]): boolean {
  return vms.length > 0 && vms.every((v) => !!v.driver?.qemu && memoryMode(v.driver.qemu.extra) === 'tracked');
}

/** What VNSNAP_CUT_MARGIN_MS asks for: 'auto' (unset or "auto"), or fixed ms (0: no instant). ERR_CONFIG otherwise. */
export function parseCutMargin(v: string | undefined): 'auto' | number {
  if (v === undefined || v.trim() === '' || v.trim() === 'auto') return 'auto';
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 10_000) throw new VnsnapError('ERR_CONFIG', `${CUT_MARGIN_ENV}="${v}": expected auto, or whole ms 0..10000 (0: no scheduled cut instant)`);
  return n;
}

/** The margin of the next commit's instant: fixed, or from the commit delays observed. */
export class CutMargin {
  private readonly delays: number[] = [];
  private readonly o: CutMarginOptions;

  constructor(
    private readonly fixedMs: 'auto' | number = 'auto',
    o: Partial<CutMarginOptions> = {},
    private readonly precopyLead: PrecopyLead = 'auto',
  ) {
    this.o = { ...CUT_MARGIN, ...o };
  }

  /**
   * A pre-copy commit's margin for a VNE whose VMs are all tracked (`allTracked`: allVmsTracked())
   * or not: marginMs() + the lead ('auto': TRACKED_PRECOPY_LEAD_MS when allTracked, else none);
   * 0 (no instant) when marginMs() is 0 or there is no lead.
   */
  precopyMarginMs(allTracked: boolean): number {
    const m = this.marginMs();
    const lead = this.precopyLead === 'auto' ? (allTracked ? TRACKED_PRECOPY_LEAD_MS : 'none') : this.precopyLead;
    return m === 0 || lead === 'none' ? 0 : m + lead;
  }

  /**
   * A background commit's margin: marginMs(), + TRACKED_BACKGROUND_LEAD_MS for a VNE whose VMs
   * are all tracked (`allTracked`: allVmsTracked()); 0 (no instant) when marginMs() is 0.
   */
  backgroundMarginMs(allTracked: boolean): number {
    const m = this.marginMs();
    return m === 0 || !allTracked ? m : m + TRACKED_BACKGROUND_LEAD_MS;
  }

  /** 0: no scheduled instant (cut at receipt). */
  marginMs(): number {
    if (this.fixedMs !== 'auto') return this.fixedMs;
    if (this.delays.length === 0) return this.o.defaultMs;
    const worst = Math.max(...this.delays);
    return Math.min(this.o.maxMs, Math.max(this.o.minMs, Math.ceil(this.o.factor * worst + this.o.padMs)));
  }

  /** One commit's delay to one agent (ms); negative values (clock error) count as 0. */
  observe(delayMs: number): void {
    if (!Number.isFinite(delayMs)) return;
    this.delays.push(Math.max(0, delayMs));
    if (this.delays.length > this.o.history) this.delays.shift();
  }

  /** The delays it has, oldest first (for logs and tests). */
  recent(): number[] {
    return [...this.delays];
  }
}

/**
 * Each agent's cut instant in its own clock: the coordinator's `atUs` plus the agent's offset
 * (its clock minus the coordinator's; unknown: 0, the hosts' clocks taken as they are).
 */
export function cutInstants(atUs: number, agents: readonly string[], offsetUs: (agent: string) => number | undefined): Map<string, number> {
  return new Map(agents.map((a) => [a, Math.round(atUs + (offsetUs(a) ?? 0))]));
}

/**
 * The commit's delay to one agent (ms), from its VMs' PHASE_COMMIT (start: the coordinator's
 * clock, end: the agent's), the agent's clock taken back by `offsetUs`; the largest over the
 * VMs (they share one receipt), undefined when none has both ends.
 */
export function commitDelayMs(vms: readonly VmSnapshot__Output[], offsetUs: number): number | undefined {
  let worst: number | undefined;
  for (const v of vms)
    for (const p of v.phases ?? []) {
      if (p.phase !== 'PHASE_COMMIT' || !(Number(p.startUnixUs) > 0) || !(Number(p.endUnixUs) > 0)) continue;
      const d = (Number(p.endUnixUs) - offsetUs - Number(p.startUnixUs)) / 1000;
      worst = worst === undefined ? d : Math.max(worst, d);
    }
  return worst;
}
