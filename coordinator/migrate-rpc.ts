/**
 * MigrateVne's request checks (bounds of coordinator/validation.ts) before the VNE's operation
 * lock is taken and the migration sequenced (migrate-sequencer.ts). Kept out of service.ts so
 * that file stays one RPC per method.
 */
import { VnsnapError } from '../proto/core/errors';
import type { MigrateVneRequest__Output } from '../proto/gen/vnsnap/v1/MigrateVneRequest';
import type { MigrationResult } from '../proto/gen/vnsnap/v1/MigrationResult';
import type { SnapshotEvent } from '../proto/gen/vnsnap/v1/SnapshotEvent';
import type { MigrateSequencer } from './migrate-sequencer';
import { checkLength, checkTimeoutMs, MAX_ID_CHARS, MAX_NAME_CHARS } from './validation';

type Locked = <T>(vne: string, fn: () => Promise<T>) => Promise<T>;

export async function migrateVne(seq: MigrateSequencer | undefined, req: Partial<MigrateVneRequest__Output>, sink: (e: SnapshotEvent) => void, locked: Locked): Promise<MigrationResult> {
  if (!seq) throw new VnsnapError('ERR_FAILED_PRECONDITION', 'this coordinator does not migrate VMs');
  const vne = req.vne ?? '';
  if (!vne) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'vne is required');
  checkLength('vne', vne, MAX_NAME_CHARS);
  checkTimeoutMs('timeout_ms', req.timeoutMs ?? 0);
  for (const [vm, agent] of Object.entries(req.placement ?? {})) {
    checkLength('placement: a VM name', vm, MAX_NAME_CHARS);
    checkLength(`placement of VM "${vm}"`, agent, MAX_ID_CHARS);
    if (!agent) throw new VnsnapError('ERR_INVALID_ARGUMENT', `placement of VM "${vm}" is empty`);
  }
  checkLength('to', req.to ?? '', MAX_ID_CHARS);
  if (!req.to && Object.keys(req.placement ?? {}).length === 0) throw new VnsnapError('ERR_INVALID_ARGUMENT', 'say where the VMs go: a placement (--place VM=HOST) or a destination for all (--to HOST)');
  return locked(vne, async () => {
    seq.plan({ vne, placement: req.placement ?? {}, to: req.to ?? '' });
    return seq.migrate({ vne, placement: req.placement ?? {}, to: req.to ?? '', timeoutMs: req.timeoutMs ?? 0 }, sink);
  });
}
