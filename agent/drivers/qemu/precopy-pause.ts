/**
 * The pause of a QEMU pre-copy cut, from the pre-switchover stop to the RESUME: the part of a
 * pre-copy snapshot the guest feels, kept apart so that nothing else gets into it.
 *
 * QEMU has stopped the VM and waits in pre-switchover (the cut). Then, overlapping:
 *   - the agent's hook (atPause: the switch's drain and epoch advance), and
 *   - QEMU's side: blockdev-snapshot (the overlay prepared at begin) and migrate-continue sent
 *     back to back — QMP runs them in order, so the disk is frozen before QEMU sends the final
 *     pass and the device state — then MIGRATION completed.
 * When both are done: `cont`, sent on the event (retried at once while QEMU answers "Migration
 * is not finalized yet": it emits completed a moment before it leaves finish-migrate), and the
 * RESUME event. The hook never reaches guest RAM (the VM is stopped; frames the switch releases
 * to it wait in QEMU's net queue), so the image is the RAM at the stop whatever the overlap.
 * The caller holds the stream's store writes meanwhile (image-stream.ts holdWrites()).
 *
 * Guarantees: the VM is never resumed before the hook returned and the migration completed; on
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
  const [hookErr, qemuErr] = await Promise.all([hook, qemuSide]);
  if (hookErr || qemuErr) throw hookErr ?? qemuErr;
  const resumeEv = p.q.waitEvent('RESUME', undefined, 10_000);
  await contAfterMigration(p.q);
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

/** `cont` right after MIGRATION completed, retried while QEMU refuses it as "not finalized". */
async function contAfterMigration(q: QmpClient): Promise<void> {
  const end = performance.now() + 5000;
  for (;;) {
    try {
      await q.execute('cont');
      return;
    } catch (e) {
      if (!/not finalized/.test((e as Error).message) || performance.now() > end) throw e;
      await new Promise((r) => setImmediate(r));
    }
  }
}
