/**
 * The cut of a QEMU background snapshot: from `stop` to QEMU's RESUME, the whole pause of a
 * background-mode VM, kept apart so that nothing else gets into it.
 *
 *   `stop` and `blockdev-snapshot` (the overlay prepared at begin) written back to back (QEMU
 *   freezes the disk right after the stop, while the switch drains) ─► STOP (the cut instant) ─►
 *   atPause() (the switch's drain and epoch) ─► the disk frozen ─► `migrate` (serialised before
 *   the stop, into the socket opened at begin) ─► QEMU resumes the VM itself (RESUME).
 * `migrate` waits for the drain: it resumes the VM, and a frame the VM writes after that must
 * not be drained as the old epoch.
 *
 * Guarantees: resolves with the cut instant (QEMU's STOP timestamp) and the RESUME event; on any
 * failure it rejects with the first error once the disk step settled (the caller resumes the VM
 * and merges a disk QEMU froze all the same back). `stopped` is called as soon as the VM is
 * known to be paused, `migrating` right before `migrate` is sent (the caller watches the
 * migration's end from there).
 */
import { nowUs } from '../../../proto/core/clock';
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
}

export async function backgroundCut(c: BackgroundCut): Promise<{ cutUnixUs: number; resume: QmpEvent }> {
  const q = c.q;
  const migrate = q.prepare('migrate', { uri: c.uri });
  c.mark('start');
  const stopEv = q.waitEvent('STOP', undefined, 10_000).catch(() => undefined);
  // Pipelined: QEMU runs blockdev-snapshot right after stop, while the switch drains below.
  const stopped = q.execute('stop');
  const disk = c.snapshotDisk();
  disk.catch(() => undefined);
  try {
    await stopped;
    const stop = await stopEv;
    c.mark('stopped');
    c.stopped();
    const cutUnixUs = stop?.timestampUs || nowUs();
    await c.atPause();
    c.mark('hook');
    await disk;
    c.migrating();
    const resumeEv = q.waitEvent('RESUME', undefined, 30_000);
    await migrate.send();
    const resume = await resumeEv;
    c.mark('resumed');
    return { cutUnixUs, resume };
  } catch (e) {
    await disk.catch(() => undefined);
    throw e;
  }
}
