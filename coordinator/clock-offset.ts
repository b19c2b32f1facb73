/**
 * Each agent's wall-clock offset against the coordinator's, from the session's own round trips,
 * so that a cut instant chosen on the coordinator's clock can be told to an agent in the agent's
 * clock (cut-instant.ts) without the hosts being synchronised.
 *
 * Every Command carries the coordinator's instant of writing it (t1), every Result the agent's
 * instants of receiving that command (t2) and of writing the Result (t3); the coordinator reads
 * the Result at t4. As in NTP (RFC 5905): offset θ = ((t2 − t1) + (t3 − t4)) / 2 (the agent's clock
 * minus the coordinator's), round-trip delay δ = (t4 − t1) − (t3 − t2). The error of θ is at most
 * δ / 2 (an asymmetric path), so the estimate is the sample with the smallest δ among the last
 * `window` (NTP's clock filter): a round trip whose reading waited on a busy event loop is long
 * and is passed over. Two processes on one host share the clock: θ ≈ 0 within δ / 2.
 *
 * Guarantees: samples with a missing stamp (an older agent or coordinator: 0) or an impossible
 * order (δ < 0 beyond `slackUs`, from clocks stepped between the stamps) are refused; estimate()
 * is undefined until a sample was accepted.
 */

export interface OffsetSample {
  /** The agent's clock minus the coordinator's, µs. */
  offsetUs: number;
  /** The round trip without the agent's own time, µs. */
  delayUs: number;
}

/**
 * One sample from the four stamps (µs): t1 the coordinator wrote the command, t2 the agent
 * received it, t3 the agent wrote its Result, t4 the coordinator read the Result. undefined when
 * a stamp is missing (≤ 0) or the order is impossible.
 */
export function offsetSample(t1: number, t2: number, t3: number, t4: number, slackUs = 1000): OffsetSample | undefined {
  if (!(t1 > 0 && t2 > 0 && t3 > 0 && t4 > 0) || t3 < t2 || t4 < t1) return undefined;
  const delayUs = t4 - t1 - (t3 - t2);
  if (delayUs < -slackUs) return undefined;
  return { offsetUs: Math.round((t2 - t1 + (t3 - t4)) / 2), delayUs: Math.max(0, delayUs) };
}

/** The last `window` samples of one agent's session; the estimate is the one with the smallest delay. */
export class ClockOffset {
  private readonly samples: OffsetSample[] = [];

  constructor(private readonly window = 16) {}

  add(s: OffsetSample | undefined): void {
    if (!s) return;
    this.samples.push(s);
    if (this.samples.length > this.window) this.samples.shift();
  }

  /** The smallest-delay sample of the window (the first of equals), or undefined without one. */
  estimate(): OffsetSample | undefined {
    let best: OffsetSample | undefined;
    for (const s of this.samples) if (!best || s.delayUs < best.delayUs) best = s;
    return best;
  }
}
