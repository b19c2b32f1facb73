/**
 * The convergence cap of a Xen live capture (docs/xen.md, "How the live capture works"): QEMU's
 * auto-converge done by Xen's scheduler. From the commit the domain is capped at `start` % of a
 * CPU, halved at every live pass libxc starts (never below FLOOR), and uncapped the moment libxl
 * asks the guest to suspend — a guest left at 1 % of a TCG CPU once missed libxl's suspend
 * timeout. Cap changes run one after another; a failing one only costs a longer final pass.
 */
import type { XenHost } from './xl';

/** The cap is never tightened below this (% of a CPU). */
const FLOOR = 2;

export class ConvergeCap {
  /** The cap last asked for (0 = none). */
  private now = 0;
  /** A cap is in force on the domain (the last successful call set one). */
  private applied = false;
  /** Set once the suspend was requested: no more tightening. */
  private lifted = false;
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly host: XenHost,
    private readonly domName: string,
    private readonly start: number,
    private readonly warn: (msg: string) => void,
  ) {}

  /** At the commit: put the first cap on (awaited, so the passes that follow run capped). */
  async begin(): Promise<void> {
    this.now = this.start;
    await this.set(this.now);
  }

  /** libxc started another live pass: halve the cap. */
  tighten(): void {
    if (this.lifted || this.now <= FLOOR) return;
    this.now = Math.max(FLOOR, Math.floor(this.now / 2));
    const pct = this.now;
    this.enqueue(() => (this.lifted ? Promise.resolve() : this.set(pct)));
  }

  /** libxl asked the guest to suspend: let it run freely. */
  lift(): void {
    this.lifted = true;
    this.enqueue(() => this.set(0));
  }

  /** After the capture (done or aborted): wait for pending changes, then make sure no cap is left. */
  async release(): Promise<void> {
    this.lifted = true;
    await this.chain;
    await this.set(0);
  }

  private enqueue(step: () => Promise<void>): void {
    this.chain = this.chain.then(step);
  }

  private async set(percent: number): Promise<void> {
    if (this.start === 0 || (percent === 0 && !this.applied)) return;
    try {
      await this.host.setCap(this.domName, percent);
      this.applied = percent > 0;
    } catch (e) {
      this.warn(`xen: could not ${percent ? `cap ${this.domName} at ${percent}% CPU` : `lift the CPU cap of ${this.domName}`}: ${(e as Error).message}`);
    }
  }
}
