/**
 * `vnsnap vne show` of a VNE while a host is away: per VM where it runs, whether that host is
 * reachable, the VM's state, and the instances a lost-host restore fenced.
 */
import { strict as assert } from 'node:assert';
import type { Vne__Output } from '../../proto/gen/vnsnap/v1/Vne';
import { renderVne } from '../../coordinator/cli/format';
import { simVms, vneRecord } from '../support/vne-record';

const T0 = 1_800_000_000_000;
const NO_DISK = { diskSource: 'DISK_SOURCE_UNSPECIFIED', diskHost: '', diskPath: '', diskBytes: 0, diskKeptUnixMs: 0 } as const;

function vne(over: Partial<Vne__Output>): Vne__Output {
  const vms = simVms([['a', 'h1'], ['b', 'h2']], (i) => `52:54:00:00:00:0${i + 1}`, { memoryMib: 4, dirtyRateMibS: 0, frameRateHz: 0 });
  return vneRecord({ vms, generation: 3, epoch: 2, state: 'VNE_STATE_DEGRADED', createdUnixMs: T0, updatedUnixMs: T0, placement: { a: 'h1', b: 'h2' }, ...over });
}

describe('vne show: per-VM status and fenced instances', () => {
  it('a degraded VNE: host, reachability and state per VM', () => {
    const out = renderVne(
      vne({
        stateReason: 'agent h2 (host of b) disconnected: its VMs are unmanaged; snapshots and restores are refused until it is back',
        vmStatus: [
          { vm: 'a', host: 'h1', hostReachable: true, state: 'VM_RUN_STATE_RUNNING', ...NO_DISK },
          { vm: 'b', host: 'h2', hostReachable: false, state: 'VM_RUN_STATE_UNMANAGED', ...NO_DISK },
        ],
      }),
    );
    assert.equal(
      out,
      'VNE blue: DEGRADED, vni 100, epoch 2, generation 3\n' +
        'created 2027-01-15 08:00:00Z, updated 2027-01-15 08:00:00Z\n' +
        'reason: agent h2 (host of b) disconnected: its VMs are unmanaged; snapshots and restores are refused until it is back\n' +
        '\n' +
        'VM  HOST  RUNS ON  REACHABLE  VM STATE   DRIVER     MACS\n' +
        'a   h1    h1       yes        RUNNING    sim 4 MiB  52:54:00:00:00:01\n' +
        'b   h2    h2       no         UNMANAGED  sim 4 MiB  52:54:00:00:00:02\n',
    );
  });

  it('after a lost-host restore: the fenced instance, stopped or not yet', () => {
    const out = renderVne(
      vne({
        state: 'VNE_STATE_RUNNING',
        generation: 4,
        placement: { a: 'h1', b: 'h1' },
        vmStatus: [
          { vm: 'a', host: 'h1', hostReachable: true, state: 'VM_RUN_STATE_RUNNING', ...NO_DISK },
          { vm: 'b', host: 'h1', hostReachable: true, state: 'VM_RUN_STATE_RUNNING', ...NO_DISK },
        ],
        fenced: [{ vm: 'b', agent: 'h2', generation: 3, fencedUnixMs: T0, stopped: false }],
      }),
    );
    assert.match(out, /\nb {3}h2 {4}h1 {7}yes {8}RUNNING /);
    assert.ok(out.endsWith('fenced: b on h2 (generation 3, not stopped yet: stopped when the host returns)\n'), out);
    assert.ok(renderVne(vne({ fenced: [{ vm: 'b', agent: 'h2', generation: 3, fencedUnixMs: T0, stopped: true }] })).endsWith('fenced: b on h2 (generation 3, stopped)\n'));
  });
});
