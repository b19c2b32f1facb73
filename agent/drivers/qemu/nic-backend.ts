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
 * before anything is made or spawned; tap-vnet and tap-bpf (both vnet_hdr=on, the same QEMU
 * command line) are interchangeable too, and a VM whose spec names neither, recorded in one of
 * them, restores in the driver's mode for new VMs when that is one of them (the agent's choice:
 * tap-bpf where its data path runs, so an image saved on tap-bpf restores where the data path
 * cannot run, and one saved on tap-vnet gets the data path where it runs). A snapshot without
 * the attribute (older ones) was saved with vnet_hdr=off.
 *
 * New VMs whose spec names no mode get defaultNicMode(): tap-bpf where the agent's in-kernel
 * data path runs (docs/nic-offloads.md, "The in-kernel data path": level with the kernel's own
 * bridge + VXLAN path), tap-vnet elsewhere (guest TSO super-frames cross the switch whole,
 * measured at 2.8x the throughput of tap for a third of its CPU per bit, docs/qemu.md). Images
 * recorded with tap or stream keep restoring in that mode.
 */
import { VnsnapError } from '../../../proto/core/errors';
import type { CutInstant, MemoryArtefact, SnapshotJob } from '../driver';
import { NIC_MODES, type NicMode } from './cmdline';

/** The attribute of a memory image that names its NIC backend. */
export const NIC_ATTRIBUTE = 'nic';

/**
 * The mode of a new VM whose spec names none (the agent's QEMU driver), by whether the agent's
 * in-kernel data path runs: a TAP QEMU holds itself (it outlives the agent, docs/agent-restart.md),
 * with vnet_hdr=on so offloads reach the switch, carried in the kernel where the data path runs.
 */
export const defaultNicMode = (dataPath: boolean): NicMode => (dataPath ? 'tap-bpf' : 'tap-vnet');

/** The mode an agent gives new VMs where its data path runs (the agent's default configuration on a host that can run it). */
export const DEFAULT_NIC_MODE: NicMode = defaultNicMode(true);

const vnetHdr = (m: NicMode): boolean => m === 'tap-vnet' || m === 'tap-bpf';

/**
 * The NIC mode a restore of `vm` uses (module comment); `requested` is the spec's extra.nic,
 * `fallback` the driver's mode for new VMs (defaultNicMode() in the agent).
 */
export function restoreNicMode(vm: string, requested: NicMode | undefined, fallback: NicMode, image: MemoryArtefact): NicMode {
  const rec = image.attributes?.[NIC_ATTRIBUTE];
  if (rec !== undefined && !(NIC_MODES as readonly string[]).includes(rec)) {
    throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${vm}: the snapshot's memory image ${image.path} was saved with NIC backend "${rec}", which this agent does not know (${NIC_MODES.join(', ')})`);
  }
  const recorded = rec as NicMode | undefined;
  // No record: the image predates the attribute, so it was saved with vnet_hdr=off, by an agent
  // whose default then was tap (or by a driver defaulting to stream). The driver's fallback is
  // right when it has vnet_hdr=off too; a tap-vnet or tap-bpf fallback (today's defaults) cannot
  // load such an image, and tap is its vnet_hdr=off twin (the same TAP that outlives the agent) and the mode
  // the image was most likely saved with, so an old image restores as it did before the default
  // changed. Recorded tap-vnet or tap-bpf: the driver's mode when it is one of the two (module comment).
  const mode = requested ?? (recorded !== undefined && vnetHdr(recorded) && vnetHdr(fallback) ? fallback : recorded) ?? (vnetHdr(fallback) ? 'tap' : fallback);
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
    get ownCutWindow() {
      return job.ownCutWindow;
    },
    cut: (atPause, at) => job.cut(atPause, at),
    // Only a job that has it: the agent takes a job with approachCut to do its work before the instant.
    ...(job.approachCut && { approachCut: (at: CutInstant) => job.approachCut?.(at) }),
    durable: async () => {
      const img = await job.durable();
      return { ...img, memory: { ...img.memory, attributes: { ...img.memory.attributes, [NIC_ATTRIBUTE]: mode } } };
    },
    abort: () => job.abort(),
  };
}
