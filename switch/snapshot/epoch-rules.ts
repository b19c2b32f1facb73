/**
 * The frame rules of the snapshot algorithm (DESIGN.md, "Frame rules"), as one pure function.
 *
 * A port d has an epoch e(d): the number of the last snapshot whose cut its VM has passed. A
 * data frame f carries e(f), its source port's epoch when it left the VM. At d:
 *   e(f) = e(d)  deliver;
 *   e(f) < e(d)  deliver AND record a copy as channel state (it was in flight across d's cut);
 *   e(f) > e(d)  hold until d's cut (delivering it now would make an orphan: its receipt would
 *                be in d's image while its send is not in the sender's).
 * While d is gated (between the start of its cut and the advance of its epoch), every frame is
 * held: the VM is being paused and a frame written to it now would be neither in its image nor
 * in the channel state.
 */

export const enum Verdict {
  Deliver = 0,
  DeliverAndRecord = 1,
  Hold = 2,
}

export function classify(frameEpoch: number, portEpoch: number, gated: boolean): Verdict {
  if (gated || frameEpoch > portEpoch) return Verdict.Hold;
  return frameEpoch === portEpoch ? Verdict.Deliver : Verdict.DeliverAndRecord;
}
