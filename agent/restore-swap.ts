/**
 * Whether this agent can restore its VMs of a running VNE by loading them beside their running
 * instances (RestorePrepare.load_beside; restore-runner.ts), decided before anything is loaded:
 *   - every VM's driver has restoreBeside (the QEMU driver; not Xen, whose domain names and
 *     devices are per VM, nor an older driver), and a VM that runs here runs on that same driver;
 *   - the host has the memory for the loaded copies while the running ones still run: the sum of
 *     the drivers' besideMemoryBytes plus BESIDE_MEMORY_RESERVE_BYTES within MemAvailable.
 * The answer is one line saying why not, or undefined when it can. A refusal costs nothing: the
 * coordinator then restores the older way (a full validation read, then the running VMs stopped
 * before their replacements load).
 */
import type { VmSpec__Output } from '../proto/gen/vnsnap/v1/VmSpec';
import type { HypervisorDriver } from './drivers/driver';

/** Memory left to the host beside the loaded copies (the agent, the switch, page cache of the store's reads). */
export const BESIDE_MEMORY_RESERVE_BYTES = 256 * 1024 * 1024;

export interface BesideParts {
  driverFor(spec: VmSpec__Output): HypervisorDriver;
  /** The running instance of the VM here, if any. */
  running(spec: VmSpec__Output): { driver: HypervisorDriver } | undefined;
  availableMemory(): Promise<number>;
}

const MiB = 1024 * 1024;

export async function besideRefusal(specs: readonly VmSpec__Output[], p: BesideParts): Promise<string | undefined> {
  let need = BESIDE_MEMORY_RESERVE_BYTES;
  for (const spec of specs) {
    const d = p.driverFor(spec);
    if (!d.restoreBeside) return `VM ${spec.name}: the ${d.kind} driver cannot load a VM beside its running instance`;
    const old = p.running(spec);
    if (old && old.driver !== d) return `VM ${spec.name} runs on the ${old.driver.kind} driver, its snapshot on ${d.kind}`;
    need += d.besideMemoryBytes?.(spec.driver ?? {}) ?? 0;
  }
  let avail: number;
  try {
    avail = await p.availableMemory();
  } catch (e) {
    return `the host's available memory is unknown (${(e as Error).message})`;
  }
  if (need > avail) return `loading ${specs.length} VM${specs.length === 1 ? '' : 's'} beside the running ones needs ${Math.ceil(need / MiB)} MiB (with ${BESIDE_MEMORY_RESERVE_BYTES / MiB} MiB kept for the host), ${Math.floor(avail / MiB)} MiB available`;
  return undefined;
}
