/**
 * The QMP side of a VM's cut trace: from start() to stop(), every command's round trip on the
 * VM's monitor (sent → reply parsed, wall clock) and QEMU's STOP / RESUME events (QEMU's own
 * timestamp → parsed here), as phases of the snapshot's VmSnapshot (PHASE_QMP_*, PHASE_EVENT_*),
 * and QEMU's own save of the device state: its MIGRATION events `setup` → `completed` (or
 * `failed` / `cancelled`), both QEMU's timestamps (PHASE_DEVICE_STATE).
 * A gap between QEMU's timestamp and the receipt, or a round trip much longer than QEMU's work,
 * is time the agent did not read its socket: its event loop was elsewhere.
 *
 * Passive: listens on the client's 'reply' and 'event' emissions, sends nothing, costs nothing
 * on the cut path beyond one array push per reply. stop() is idempotent.
 */
import type { Phase } from '../../../proto/gen/vnsnap/v1/Phase';
import type { PhaseSpan } from '../driver';
import type { QmpClient, QmpEvent, QmpRoundTrip } from './qmp';

const COMMAND_PHASES: Readonly<Record<string, Phase>> = {
  stop: 'PHASE_QMP_STOP',
  cont: 'PHASE_QMP_CONT',
  'blockdev-snapshot': 'PHASE_QMP_BLOCKDEV_SNAPSHOT',
  migrate: 'PHASE_QMP_MIGRATE',
  'migrate-continue': 'PHASE_QMP_MIGRATE_CONTINUE',
  'migrate-set-parameters': 'PHASE_QMP_MIGRATE_SET_PARAMETERS',
  'query-migrate': 'PHASE_QMP_QUERY_MIGRATE',
};

const EVENT_PHASES: Readonly<Record<string, Phase>> = { STOP: 'PHASE_EVENT_STOP', RESUME: 'PHASE_EVENT_RESUME' };

/** The phase a QMP command's round trip is recorded as. */
export function qmpPhase(cmd: string): Phase {
  return COMMAND_PHASES[cmd] ?? 'PHASE_QMP_OTHER';
}

export class CutQmpTrace {
  private readonly spans: PhaseSpan[] = [];
  private stopped = false;
  /** QEMU's timestamp of the MIGRATION `setup` event seen, until its end. */
  private migrationSetupUs: number | undefined;
  private readonly onReply = (r: QmpRoundTrip): void => {
    this.spans.push({ phase: qmpPhase(r.cmd), startUnixUs: r.sentUnixUs, endUnixUs: r.replyUnixUs });
  };
  private readonly onEvent = (e: QmpEvent): void => {
    if (e.event === 'MIGRATION') return this.onMigration(e);
    const phase = EVENT_PHASES[e.event];
    if (phase && e.timestampUs > 0) this.spans.push({ phase, startUnixUs: e.timestampUs, endUnixUs: Math.max(e.timestampUs, e.receivedUnixUs) });
  };

  private onMigration(e: QmpEvent): void {
    const status = e.data.status;
    if (status === 'setup') this.migrationSetupUs = e.timestampUs;
    else if ((status === 'completed' || status === 'failed' || status === 'cancelled') && this.migrationSetupUs !== undefined && e.timestampUs > 0) {
      this.spans.push({ phase: 'PHASE_DEVICE_STATE', startUnixUs: this.migrationSetupUs, endUnixUs: Math.max(this.migrationSetupUs, e.timestampUs) });
      this.migrationSetupUs = undefined;
    }
  }

  private constructor(private readonly q: QmpClient) {
    q.on('reply', this.onReply);
    q.on('event', this.onEvent);
  }

  static start(q: QmpClient): CutQmpTrace {
    return new CutQmpTrace(q);
  }

  /** Stop listening; the spans seen so far, in the order they completed. */
  stop(): PhaseSpan[] {
    if (!this.stopped) {
      this.stopped = true;
      this.q.off('reply', this.onReply);
      this.q.off('event', this.onEvent);
    }
    return [...this.spans];
  }
}
