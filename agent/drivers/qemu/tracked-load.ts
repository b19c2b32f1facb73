/**
 * A restore's tracked memory image into QEMU (tracked-job.ts wrote it; docs/incremental-memory.md):
 * the image is the guest RAM's blocks (RAM_BYTES_ATTRIBUTE bytes) followed by the device state
 * QEMU saved with x-ignore-shared. QEMU was started with the tracked RAM backend and `-incoming
 * defer`; the RAM part of the store's stream is written straight into QEMU's RAM
 * (process_vm_writev, TrackedRamWriter), piece by piece as the store hands out checked chunks,
 * and the rest is QEMU's incoming migration (incoming.ts loadMemory, x-ignore-shared on), which
 * loads the devices over the RAM already in place.
 *
 * Guarantees: no whole image is held in the agent; an image whose RAM size is not this QEMU's is
 * refused (ERR_FAILED_PRECONDITION) before a byte is written; the store's checks apply to every
 * byte (a bad chunk is the store's ERR_CHECKSUM / ERR_DATA_LOSS, as loadMemory reports it); the
 * VM is left paused, loaded, as loadMemory leaves it.
 */
import { VnsnapError } from '../../../proto/core/errors';
import type { MemoryArtefact } from '../driver';
import { ignoreSharedRam } from './device-state';
import { loadMemory } from './incoming';
import type { QemuVm } from './process';
import { TrackedRamWriter } from './ram-track';
import { MEMORY_ATTRIBUTE, MEMORY_TRACKED, RAM_BYTES_ATTRIBUTE } from './tracked-job';

/** Whether a memory artefact is a tracked image. */
export function isTrackedImage(a: Pick<MemoryArtefact, 'attributes'>): boolean {
  return a.attributes?.[MEMORY_ATTRIBUTE] === MEMORY_TRACKED;
}

/** The tracked image's chunks: the RAM part written into QEMU, the device state passed on. */
async function* ramThenDeviceState(source: AsyncIterable<Buffer>, ram: TrackedRamWriter, ramBytes: number, what: string): AsyncGenerator<Buffer> {
  let at = 0;
  for await (const chunk of source) {
    let c = chunk;
    if (at < ramBytes) {
      const n = Math.min(c.length, ramBytes - at);
      ram.write(at, c.subarray(0, n));
      at += n;
      c = c.subarray(n);
    }
    if (c.length > 0) yield c;
  }
  if (at < ramBytes) throw new VnsnapError('ERR_DATA_LOSS', `${what}: the image ends after ${at} of its ${ramBytes} RAM bytes`);
}

/** Load `image` (a tracked image, isTrackedImage) into vm, started for it with -incoming defer; x-ignore-shared set here. */
export async function loadTrackedMemory(vm: QemuVm, image: MemoryArtefact, source: AsyncIterable<Buffer>): Promise<void> {
  const ramBytes = Number(image.attributes?.[RAM_BYTES_ATTRIBUTE]);
  const ram = new TrackedRamWriter(vm.pid as number);
  if (!Number.isSafeInteger(ramBytes) || ramBytes !== ram.length) {
    throw new VnsnapError('ERR_FAILED_PRECONDITION', `memory image ${image.path} holds ${image.attributes?.[RAM_BYTES_ATTRIBUTE] ?? '?'} bytes of RAM; VM ${vm.spec.name} has ${ram.length}: restore it with the memory size it was saved with`);
  }
  await ignoreSharedRam(vm.q(), vm.spec.id);
  await loadMemory(vm, image.path, ramThenDeviceState(source, ram, ramBytes, `memory image ${image.path}`));
}
