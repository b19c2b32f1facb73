/**
 * The scheduled cut instant of a snapshot's commit (issue 15: the spread of the VMs' cut
 * instants). Without it each agent cuts when the commit reaches it, so the cut instants are as
 * far apart as the commit's arrivals (the fan-out skew: 44–88 ms in the ten-round benches, the
 * agents' and the coordinator's event loops on a busy 2-core host). With it the commit names an
 * instant: the coordinator's clock at the fan-out + a margin that covers the commit's delivery,
 * converted into each agent's clock with that agent's offset (clock-offset.ts), and every agent
 * begins its cuts then. An agent that receives the commit after the instant cuts at once.
 *
 * Pre-copy commits name one only when VNSNAP_PRECOPY_LEAD_MS gives a lead (precopyMarginMs(): the
 * margin + the lead; unset: none, each VM stops when its own final round ends, 14–200 ms after the
 * receipt, differently per VM). With one, each agent begins its cuts at the receipt, and each
 * VM's final round of its copy runs (the VM running) until the instant, when the agent writes
 * `stop` (agent/drivers/qemu/precopy-switchover.ts); the lead is the time the rounds get to send
 * their sets before it. Opt-in: measured with a lead of 100 ms it brought the pre-copy cut
 * spreads' median down to 8–14 ms but not their maximum (QEMU still converged by itself before
 * the instant in some rounds), and the pre-copy pauses over their targets (docs/performance.md,
 * "The pre-copy cut at the commit's instant").
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

/** What VNSNAP_PRECOPY_LEAD_MS asks for: whole ms (a pre-copy commit's instant that much after a background one's), or 'none' (unset or empty too: pre-copy commits name no instant). ERR_CONFIG otherwise. */
export function parsePrecopyLead(v: string | undefined): number | 'none' {
  if (v === undefined || v.trim() === '' || v.trim() === 'none') return 'none';
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 1000) throw new VnsnapError('ERR_CONFIG', `${PRECOPY_LEAD_ENV}="${v}": expected whole ms 0..1000, or none (pre-copy commits name no cut instant)`);
  return n;
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
    private readonly precopyLead: number | 'none' = 'none',
  ) {
    this.o = { ...CUT_MARGIN, ...o };
  }

  /** A pre-copy commit's margin: marginMs() + the lead; 0 (no instant) when marginMs() is 0 or the lead 'none'. */
  precopyMarginMs(): number {
    const m = this.marginMs();
    return m === 0 || this.precopyLead === 'none' ? 0 : m + this.precopyLead;
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
