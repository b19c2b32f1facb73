/**
 * The cut of a QEMU background snapshot: from `stop` to QEMU's RESUME, the whole pause of a
 * background-mode VM, kept apart so that nothing else gets into it.
 *
 *   `stop` and `blockdev-snapshot` (the overlay prepared at begin) written back to back ─► the
 *   STOP event (the cut instant) ─► atPause() (the switch's drain and epoch) ─► `migrate`
 *   (serialised before the stop, into the socket opened at begin) ─► QEMU resumes the VM itself
 *   (RESUME).
 * The drain starts at the STOP event, not at the `stop` reply: QEMU emits STOP once the vCPUs are
 * paused and the devices told (virtio-net sends nothing more), and only then drains and flushes
 * the block layer before it replies; the agent's drain runs beside that flush. `migrate` is
 * written as soon as the drain is done, without waiting for the replies of `stop` and
 * `blockdev-snapshot`: QEMU runs a monitor's commands in order, so it starts the migration after
 * the disk is frozen, and the agent's reaction to STOP overlaps QEMU's own stop and disk work
 * instead of following it. `migrate` must wait for the drain: it resumes the VM, and a frame the
 * VM writes after that must not be drained as the old epoch.
 *
 * From before the `stop` until QEMU's RESUME no memory stream of this agent is read
 * (image-stream.ts holdStreamReads; holds nest, so with two VMs of the agent cut together the
 * reads resume once both are running): a VM that resumed first would otherwise send its RAM
 * at once, and the agent would read it, rewrite it into address order and queue it on the
 * event loop that has to read the other VM's STOP and write its `migrate` (the cut traces' loop
 * stalls of 15-40 ms), while QEMU's migration thread and the agent took the cores the other
 * VM's QEMU needs for its own part of the pause. The price: a VM resumed before the agent's
 * last one sends nothing meanwhile, so its vCPU, at its first write to a page not yet saved,
 * waits for the reads to resume (a QEMU background snapshot's write faults wait on its stream).
 *
 * QEMU's own part of the pause (its stop, the device state, the resume) runs with its main thread
 * at SCHED_FIFO when the caller gives a `boost` (pause-boost.ts): taken right before `stop` is
 * written, undone at the RESUME and on every failure. The agent's part (the STOP read, the drain,
 * `migrate` written) runs with the agent's event loop at SCHED_FIFO below QEMU's, raised by the
 * snapshot runner from the snapshot's begin (agent/cut-priority.ts), so it is in place at the STOP.
 *
 * Guarantees: resolves with the cut instant (QEMU's STOP timestamp) and the RESUME event once
 * every command of the cut succeeded; on any failure it rejects with the first error once every
 * command it sent settled (the caller resumes the VM if it is still paused and merges a disk
 * QEMU froze all the same back). `stopped` is called as soon as the VM is known to be paused,
 * `migrating` right before `migrate` is sent (from then on the migration may run even if the cut
 * fails — a `blockdev-snapshot` refused after it was sent — and the caller watches its end).
 */
import { nowUs } from '../../../proto/core/clock';
import { holdStreamReads } from '../image-stream';
import type { QmpClient, QmpEvent } from './qmp';

export interface BackgroundCut {
  q: QmpClient;
  /** The migration URI of the stream opened at begin. */
  uri: string;
  atPause: () => Promise<void>;
  /** blockdev-snapshot of the prepared overlay (sends its command at once). */
  snapshotDisk: () => Promise<void>;
  stopped: () => void;
  migrating: () => void;
  mark: (step: string) => void;
  /**
   * Give QEMU the CPU for the pause (pause-boost.ts): called right before `stop` is written; the
   * function it returns is called at the RESUME and on every failure (at least once).
   */
  boost?: () => () => void;
}

/** A promise whose rejection is handled later (or never, when an earlier step failed). */
function settledLater<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

export async function backgroundCut(c: BackgroundCut): Promise<{ cutUnixUs: number; resume: QmpEvent }> {
  const q = c.q;
  const migrate = q.prepare('migrate', { uri: c.uri });
  // No stream of this agent is read until this VM resumed (nor, holds nesting, any other VM it
  // cuts meanwhile): see the module comment.
  const readAgain = holdStreamReads();
  const unboost = c.boost?.() ?? ((): void => undefined);
  c.mark('start');
  const stopEv = settledLater(q.waitEvent('STOP', undefined, 10_000));
  // Pipelined: QEMU runs blockdev-snapshot right after stop, while the switch drains below.
  const stopped = settledLater(q.execute('stop'));
  const disk = settledLater(c.snapshotDisk());
  const sent: Promise<unknown>[] = [stopped, disk];
  try {
    // QEMU writes STOP before the stop's reply; a reply without it (a VM that was not running)
    // or a refused stop ends the wait too.
    const stop = await Promise.race([stopEv, stopped.then(() => undefined)]);
    c.mark('stopped');
    c.stopped();
    const cutUnixUs = stop?.timestampUs || nowUs();
    await c.atPause();
    c.mark('hook');
    c.migrating();
    const resumeEv = settledLater(q.waitEvent('RESUME', undefined, 30_000));
    resumeEv.then(() => {
      unboost();
      readAgain();
    }, () => undefined);
    sent.push(migrate.send());
    await Promise.all(sent);
    const resume = await resumeEv;
    c.mark('resumed');
    return { cutUnixUs, resume };
  } catch (e) {
    unboost();
    readAgain();
    await Promise.allSettled(sent);
    throw e;
  } finally {
    unboost();
    readAgain();
  }
}
