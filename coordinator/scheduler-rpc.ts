/**
 * The four schedule RPCs (SetSchedule, ListSchedules, GetSchedule, DeleteSchedule): input
 * checks, each refusal one line naming the request field (the CLI rewrites fields into its
 * flags, cli/wording.ts), then the catalog's schedule rows and a re-armed scheduler.
 *
 * Guarantees: a schedule exists only for an existing VNE; its interval is within
 * [MIN_EVERY_MS, MAX_EVERY_MS]; at least one keep rule is above 0 (a policy keeping nothing
 * would delete every snapshot it takes). Setting a schedule makes the next snapshot due one
 * interval from now.
 */
import { VnsnapError } from '../proto/core/errors';
import type { DeleteScheduleRequest__Output } from '../proto/gen/vnsnap/v1/DeleteScheduleRequest';
import type { GetScheduleRequest__Output } from '../proto/gen/vnsnap/v1/GetScheduleRequest';
import type { Schedule__Output } from '../proto/gen/vnsnap/v1/Schedule';
import type { SetScheduleRequest__Output } from '../proto/gen/vnsnap/v1/SetScheduleRequest';
import type { Clock } from '../proto/core/clock';
import type { Catalog } from './catalog';
import type { Scheduler } from './scheduler';
import { formatInterval, MAX_EVERY_MS, MIN_EVERY_MS } from './scheduler-interval';
import { checkLength, MAX_NAME_CHARS } from './validation';

const MAX_KEEP = 10_000;

export class ScheduleRpcs {
  constructor(private readonly o: { catalog: Catalog; clock: Clock; scheduler: Pick<Scheduler, 'changed'> }) {}

  private vneName(vne: string): string {
    if (!vne) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'VNE name is required');
    checkLength('VNE name', vne, MAX_NAME_CHARS);
    return vne;
  }

  async setSchedule(req: SetScheduleRequest__Output): Promise<Schedule__Output> {
    const vne = this.vneName(req.vne);
    const every = Number(req.everyMs);
    if (!(every >= MIN_EVERY_MS)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `every_ms must be at least ${formatInterval(MIN_EVERY_MS)}, got ${every < 1000 ? `${every} ms` : formatInterval(every)}`);
    if (every > MAX_EVERY_MS) throw new VnsnapError('ERR_INVALID_ARGUMENT', `every_ms must be at most ${formatInterval(MAX_EVERY_MS)}, got ${formatInterval(every)}`);
    for (const [field, n] of [['keep_last', req.keepLast], ['keep_hourly', req.keepHourly], ['keep_daily', req.keepDaily]] as const) {
      if (n > MAX_KEEP) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${field} must be at most ${MAX_KEEP}, got ${n}`);
    }
    if (req.keepLast + req.keepHourly + req.keepDaily === 0) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'at least one of keep_last, keep_hourly, keep_daily must be above 0 (a schedule keeping nothing would delete every snapshot it takes)');
    if (!this.o.catalog.getVne(vne)) throw new VnsnapError('ERR_NOT_FOUND', `VNE "${vne}" does not exist`);
    const now = this.o.clock.now();
    const s = this.o.catalog.schedules.put({ vne, everyMs: every, keepLast: req.keepLast, keepHourly: req.keepHourly, keepDaily: req.keepDaily, mode: req.mode }, now + every, now);
    this.o.scheduler.changed();
    return s;
  }

  async listSchedules(): Promise<{ schedules: Schedule__Output[] }> {
    return { schedules: this.o.catalog.schedules.list() };
  }

  async getSchedule(req: GetScheduleRequest__Output): Promise<Schedule__Output> {
    const s = this.o.catalog.schedules.get(this.vneName(req.vne));
    if (!s) throw new VnsnapError('ERR_NOT_FOUND', `VNE "${req.vne}" has no schedule`);
    return s;
  }

  async deleteSchedule(req: DeleteScheduleRequest__Output): Promise<Record<string, never>> {
    if (!this.o.catalog.schedules.delete(this.vneName(req.vne))) throw new VnsnapError('ERR_NOT_FOUND', `VNE "${req.vne}" has no schedule`);
    this.o.scheduler.changed();
    return {};
  }
}
