/**
 * The pause of a QEMU pre-copy cut, from the pre-switchover stop to the RESUME: the part of a
 * pre-copy snapshot the guest feels, kept apart so that nothing else gets into it.
 *
 * QEMU has stopped the VM and waits in pre-switchover (the cut). Then, overlapping:
 *   - the agent's hook (atPause: the switch's drain and epoch advance), and
 *   - QEMU's side: blockdev-snapshot (the overlay prepared at begin) and migrate-continue sent
 *     back to back — QMP runs them in order, so the disk is frozen before QEMU sends the final
 *     pass and the device state — then MIGRATION completed.
 * Once the hook is done: `cont`, queued at once behind QEMU's side (QEMU refuses it as "Migration
 * is not finalized yet" until the migration finished; then it is retried on the completed
 * event, at once while QEMU still refuses it), and the RESUME event. The hook never reaches guest RAM (the VM is stopped; frames the switch releases
 * to it wait in QEMU's net queue), so the image is the RAM at the stop whatever the overlap.
 * The caller holds the stream's store writes meanwhile (image-stream.ts holdWrites()).
 *
 * Guarantees: the VM is never resumed before the hook returned and QEMU left finish-migrate; on
 * any failure it rejects with the first error, after QEMU's side settled (the caller cancels
 * what is left, resumes the VM and merges the disk back).
 */
import type { QmpClient, QmpEvent } from './qmp';

export interface PrecopyPause {
  q: QmpClient;
  /** The caller's hook, called once. */
  atPause: () => Promise<void>;
  /** blockdev-snapshot of the prepared overlay (sends its command at once). */
  snapshotDisk: () => Promise<void>;
  /** MIGRATION completed of the current migration (rejects on failed/cancelled). */
  completed: Promise<void>;
  /** Records a step of the cut's trace. */
  mark: (step: string) => void;
}

/** From the pre-switchover stop to the VM running again: resolves with QEMU's RESUME event. */
export async function precopyPause(p: PrecopyPause): Promise<QmpEvent> {
  const hook = settled(p.atPause().then(() => p.mark('hook')));
  const disk = p.snapshotDisk().then(() => p.mark('disk'));
  const cont = p.q.execute('migrate-continue', { state: 'pre-switchover' });
  const qemuSide = settled(Promise.all([disk, cont, p.completed]).then(() => p.mark('completed')));
  const hookErr = await hook;
  if (hookErr) {
    await qemuSide;
    throw hookErr;
  }
  const resumeEv = p.q.waitEvent('RESUME', undefined, 10_000);
  resumeEv.catch(() => undefined);
  await contOnceFinalized(p.q, qemuSide, p.mark);
  const qemuErr = await qemuSide; // settled already: QEMU emits completed before it accepts cont
  if (qemuErr) throw qemuErr;
  const resume = await resumeEv;
  p.mark('resumed');
  return resume;
}

async function settled(p: Promise<unknown>): Promise<Error | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    return e as Error;
  }
}

/**
 * `cont` as soon as QEMU takes it: sent once at once (queued behind migrate-continue, it is
 * taken if the migration already finished, so no round trip after the completed event), then,
 * refused as "Migration is not finalized yet", after QEMU's side settled, retried at once
 * (QEMU emits completed a moment before it leaves finish-migrate). QEMU refuses cont in
 * finish-migrate, so it never resumes the VM before the final pass and the device state are sent.
 */
async function contOnceFinalized(q: QmpClient, qemuSide: Promise<Error | undefined>, mark: (step: string) => void): Promise<void> {
  const end = performance.now() + 5000;
  let settledSide = false;
  for (;;) {
    try {
      await q.execute('cont');
      return;
    } catch (e) {
      if (!/not finalized/.test((e as Error).message) || performance.now() > end) throw e;
      mark('cont-refused');
      if (!settledSide) {
        const err = await qemuSide;
        if (err) throw err;
        settledSide = true;
      } else await new Promise((r) => setImmediate(r));
    }
  }
}
