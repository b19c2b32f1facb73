/**
 * The NIC backend of a QEMU VM across snapshot and restore. A memory image holds the
 * virtio-net device state, and that state says whether the backend had vnet_hdr: QEMU refuses
 * to load an image saved with vnet_hdr=on onto a backend without it; the reverse was not tried,
 * and even if it loads, the guest keeps the features it negotiated without the header. So a
 * snapshot records the mode (stream, tap, tap-vnet) as the memory artefact's attribute "nic",
 * and a restore uses the same mode.
 *
 * Guarantees: restoreNicMode returns the recorded mode unless the VM's spec names one itself;
 * a named mode is honoured when it has the same vnet_hdr as the recorded one (stream and tap,
 * both vnet_hdr=off, are interchangeable) and refused with ERR_FAILED_PRECONDITION otherwise,
 * before anything is made or spawned. A snapshot without the attribute (older ones) was saved
 * with vnet_hdr=off.
 */
import { VnsnapError } from '../../../proto/core/errors';
import type { MemoryArtefact, SnapshotJob } from '../driver';
import { NIC_MODES, type NicMode } from './cmdline';

/** The attribute of a memory image that names its NIC backend. */
export const NIC_ATTRIBUTE = 'nic';

const vnetHdr = (m: NicMode): boolean => m === 'tap-vnet';

/** The NIC mode a restore of `vm` uses (module comment); `requested` is the spec's extra.nic. */
export function restoreNicMode(vm: string, requested: NicMode | undefined, fallback: NicMode, image: MemoryArtefact): NicMode {
  const rec = image.attributes?.[NIC_ATTRIBUTE];
  if (rec !== undefined && !(NIC_MODES as readonly string[]).includes(rec)) {
    throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${vm}: the snapshot's memory image ${image.path} was saved with NIC backend "${rec}", which this agent does not know (${NIC_MODES.join(', ')})`);
  }
  const recorded = rec as NicMode | undefined;
  const mode = requested ?? recorded ?? (fallback === 'tap-vnet' ? 'tap' : fallback);
  const savedVnet = recorded !== undefined && vnetHdr(recorded);
  if (vnetHdr(mode) !== savedVnet) {
    const saved = recorded === undefined ? 'stream or tap (no record: vnet_hdr=off)' : `${recorded} (vnet_hdr=${savedVnet ? 'on' : 'off'})`;
    throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${vm}: the snapshot was saved with NIC backend ${saved} and cannot be restored onto nic=${mode} (vnet_hdr=${vnetHdr(mode) ? 'on' : 'off'}); restore it with nic=${savedVnet ? 'tap-vnet' : 'stream or tap'}`);
  }
  return mode;
}

/** The job, with its memory image recording the NIC mode it was saved with. */
export function recordNicMode(job: SnapshotJob, mode: NicMode): SnapshotJob {
  return {
    get vm() {
      return job.vm;
    },
    get mode() {
      return job.mode;
    },
    get ready() {
      return job.ready;
    },
    cut: (atPause) => job.cut(atPause),
    durable: async () => {
      const img = await job.durable();
      return { ...img, memory: { ...img.memory, attributes: { ...img.memory.attributes, [NIC_ATTRIBUTE]: mode } } };
    },
    abort: () => job.abort(),
  };
}
