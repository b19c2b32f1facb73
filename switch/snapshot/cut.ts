/**
 * The cut of snapshot k at this switch (DESIGN.md, "The cut"): the one sequence every caller
 * uses — the agent's snapshot commit, the daemon's control socket, the tests.
 *
 *   gate   every named port: from now on every frame for it is held (before the VM pauses,
 *          so nothing reaches a VM that is being paused);
 *   pause  the caller's hook runs once; it pauses the VMs and calls `pass` while they are
 *          paused (a driver's cut(atPause) does exactly that);
 *   drain  each port in turn: what its VM wrote before the pause leaves stamped k-1;
 *   advance the port's epoch to k, and it joins recording k;
 *   release held frames under the rules (future frames stay held, older ones are delivered
 *          and recorded).
 * On failure (the hook throws, or a drain fails) every named port still being cut is
 * un-gated at its old epoch and the error is rethrown. Then, success or not, the other ports of
 * the VNEs involved that are still behind k and not being cut by someone else pass the cut
 * without a pause hook: a port nobody snapshots must not hold back the VNE's markers.
 * abort(v, k) advances every port below k to k without recording.
 */
import { VnsnapError } from '../../proto/core/errors';
import type { CutObserver } from '../bpf-dp/epoch-sync';
import type { LocalPort, Vne } from '../tables';
import type { Delivery } from './delivery';
import type { Markers } from './markers';

/** The caller's pause hook: pauses the VMs, calls `pass` while they are paused, resumes them. */
export type AtPause<T> = (pass: () => Promise<void>) => Promise<T> | T;

export class Cuts {
  /** The in-kernel data path's port epochs (switch/bpf-dp/epoch-sync.ts); undefined: none. */
  dataPath: CutObserver | undefined;

  constructor(
    private readonly delivery: Delivery,
    private readonly markers: Markers,
  ) {}

  /** Gate a port: from now on every frame for it is held until finish/cancel. */
  private begin(lp: LocalPort, k: number): void {
    if (lp.cutting) throw new VnsnapError('ERR_CUT_IN_PROGRESS', `port ${lp.name} is already being cut`);
    if (k <= lp.epoch) throw new VnsnapError('ERR_EPOCH_ORDER', `port ${lp.name} is at epoch ${lp.epoch}; cannot cut to ${k}`);
    lp.cutting = true;
    lp.gated = true;
    this.dataPath?.gated(lp.name);
    this.markers.recording(lp.vne, k);
  }

  private cancel(lp: LocalPort): void {
    lp.cutting = false;
    lp.gated = false;
    this.dataPath?.cancelled(lp.name);
    this.delivery.releaseHeld(lp);
    this.delivery.flush();
  }

  /** Drain the port as its old epoch, advance it to k, start recording, release held frames. */
  private async finish(lp: LocalPort, k: number): Promise<void> {
    if (!lp.cutting) throw new VnsnapError('ERR_STATE', `port ${lp.name}: finish without begin`);
    try {
      await lp.port.drain();
    } finally {
      lp.cutting = false;
      lp.gated = false;
    }
    const v = lp.vne;
    if (lp.epoch < k) {
      lp.epoch = k;
      v.noteEpoch(k);
      const r = v.recordings.get(k);
      if (r && !r.done && !r.aborted) lp.recordings.push(r);
    }
    this.dataPath?.advanced(lp.name, lp.epoch);
    this.delivery.releaseHeld(lp);
    this.delivery.flush();
    this.markers.checkLocalCut(v, k);
  }

  /** The cut sequence of the header over `ports`; resolves with the hook's result. */
  async cut<T>(ports: readonly LocalPort[], k: number, atPause?: AtPause<T>): Promise<T | undefined> {
    try {
      const begun: LocalPort[] = [];
      try {
        for (const lp of ports) {
          this.begin(lp, k);
          begun.push(lp);
        }
      } catch (e) {
        for (const lp of begun) this.cancel(lp);
        throw e;
      }
      let passing: Promise<void> | undefined;
      const pass = (): Promise<void> =>
        (passing ??= (async () => {
          for (const lp of ports) await this.finish(lp, k);
        })());
      try {
        const out = atPause ? await atPause(pass) : undefined;
        await pass();
        return out;
      } catch (e) {
        for (const lp of ports) if (lp.cutting) this.cancel(lp);
        throw e;
      }
    } finally {
      for (const v of new Set(ports.map((lp) => lp.vne))) await this.cutRest(v, k);
    }
  }

  /** Ports of v still behind k that nobody is cutting pass the cut, one by one, without a pause. */
  private async cutRest(v: Vne, k: number): Promise<void> {
    for (const lp of [...v.ports]) {
      if (lp.epoch >= k || lp.cutting || !v.ports.includes(lp)) continue;
      this.begin(lp, k);
      await this.finish(lp, k);
    }
  }

  /** Abort snapshot k: every port below k advances to k without recording; recording k is dropped. */
  abort(v: Vne, k: number): void {
    this.markers.abort(v, k);
    for (const lp of v.ports) {
      if (lp.epoch < k) {
        lp.epoch = k;
        lp.gated = false;
        this.dataPath?.advanced(lp.name, k);
        this.delivery.releaseHeld(lp);
      }
    }
    v.cutEpoch = Math.max(v.cutEpoch, k);
    v.noteEpoch(k);
    this.delivery.flush();
  }

  /** Set a port's epoch directly (a port attached at restore). */
  setEpoch(lp: LocalPort, epoch: number): void {
    if (lp.cutting) throw new VnsnapError('ERR_CUT_IN_PROGRESS', `port ${lp.name} is being cut`);
    lp.epoch = epoch;
    this.dataPath?.advanced(lp.name, epoch);
    lp.vne.noteEpoch(epoch);
    lp.vne.cutEpoch = Math.max(lp.vne.cutEpoch, Math.min(...lp.vne.ports.map((p) => p.epoch)));
    this.delivery.releaseHeld(lp);
    this.delivery.flush();
  }
}
