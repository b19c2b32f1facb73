/**
 * The start of a QEMU pre-copy cut: from the commit to the VM stopped and QEMU waiting in
 * pre-switchover, so that the VM is cut at the commit rather than whenever its own pre-copy
 * happens to converge, and its pause holds nothing but its own final copy.
 *
 * At the commit the pre-copy is held (migration.ts: max-bandwidth holdBandwidth, downtime-limit
 * 1 ms, the VM running). Then:
 *   1. max-bandwidth up and downtime-limit = cutDowntimeMs, and a short final round
 *      (FINAL_ROUND_MS) with the VM still running: QEMU sends what it has queued at full speed;
 *   2. `stop` (serialised before the round) when the round ends, unless QEMU converged and
 *      stopped the VM by itself first. Its STOP is the cut: on every VM the commit's receipt +
 *      the round at most, whatever the guest's dirty rate, so the cut instants of a VNE spread by
 *      the commit fan-out and the agents' wake-ups only;
 *   3. with the VM stopped nothing more is dirtied: QEMU sends what is left, converges and waits
 *      in pre-switchover (its MIGRATION event), where precopy-pause.ts takes over.
 * Waiting for QEMU to converge by itself instead (the code before) put each VM's cut at its own
 * convergence, 0.1–2 s after the commit on a loaded machine: the VNE's cut instants spread by as
 * much, and the VM's ports stayed gated (their frames held) all that time.
 * A stopped VM always converges (its dirty set only shrinks); should QEMU not reach
 * pre-switchover within escalateMs all the same, downtime-limit is raised ×4 (QEMU's threshold
 * is its measured bandwidth × the limit), up to 60 s.
 *
 * Guarantees: resolves once QEMU is in pre-switchover (the VM stopped, the final pass not sent);
 * `stopped` is called once, as soon as the VM is known to be stopped (ours or QEMU's); rejects
 * when the migration ends or fails before the switchover (the caller cancels and resumes: its
 * `stoppedByUs` says whether `stop` was sent).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { VnsnapError } from '../../../proto/core/errors';
import type { Logger } from '../../../proto/core/log';
import { MiB } from './process';
import type { QmpClient, QmpEvent } from './qmp';

/** The final round with the VM running, from the bandwidth's lift to `stop` (ms). */
export const FINAL_ROUND_MS = 25;

export interface Switchover {
  q: QmpClient;
  vm: string;
  log: Logger;
  cutDowntimeMs: number;
  escalateMs: number;
  /** Resolves with QEMU's pre-switchover MIGRATION event (at once if it came already). */
  preSwitchover: Promise<QmpEvent>;
  /** The migration's end: anything before the switchover is a failure. */
  ended: Promise<void>;
  /** The VM is stopped from now on (called once). */
  stopped: () => void;
  mark: (step: string) => void;
  /** Set when `stop` was sent (the caller resumes the VM on failure). */
  stoppedByUs?: boolean;
}

/** From the commit to QEMU in pre-switchover with the VM stopped (see the module comment). */
export async function reachSwitchover(s: Switchover, finalRoundMs = FINAL_ROUND_MS): Promise<void> {
  const q = s.q;
  const stop = q.prepare('stop');
  let isStopped = false;
  const stopped = (): void => {
    if (isStopped) return;
    isStopped = true;
    s.stopped();
  };
  const paused = s.preSwitchover.then(() => {
    stopped();
    return 'paused' as const;
  });
  const ended = s.ended.then(() => {
    throw new VnsnapError('ERR_DRIVER', `migration of ${s.vm} ended before the switchover`);
  });
  ended.catch(() => undefined);
  const wait = (ms: number): Promise<'paused' | 'late'> => Promise.race([paused, ended, sleep(ms).then(() => 'late' as const)]);
  let downtime = s.cutDowntimeMs;
  await q.execute('migrate-set-parameters', { 'max-bandwidth': 8 * 1024 * MiB, 'downtime-limit': downtime });
  if ((await wait(finalRoundMs)) === 'paused') return;
  s.stoppedByUs = true;
  await stop.send();
  stopped();
  s.mark('stop');
  while ((await wait(s.escalateMs)) !== 'paused') {
    downtime = Math.min(60_000, downtime * 4);
    s.log.info({ downtime }, 'stopped, no switchover yet: raising downtime-limit');
    await q.execute('migrate-set-parameters', { 'downtime-limit': downtime });
  }
}
