/**
 * VNE records for unit tests: one builder of the catalog's `Vne` message (and of sim VM specs)
 * instead of a literal of every field in each test file. Defaults are those of a definition as a
 * client sends it (generation 0, epoch 0, state UNSPECIFIED, no placement, times 0); a test states
 * only the fields its assertion depends on. Every field of the message is present, so a record
 * built here compares exactly (deepEqual) with what the catalog returns.
 */
import type { Vne__Output } from '../../proto/gen/vnsnap/v1/Vne';
import type { VmSpec__Output } from '../../proto/gen/vnsnap/v1/VmSpec';

/** What a sim VM of a test does (the sim driver's knobs). */
export interface SimKnobs {
  memoryMib?: number;
  dirtyRateMibS?: number;
  frameRateHz?: number;
  peers?: string[];
}

/** A sim VM `name` on `host` with one NIC `mac` (8 MiB, 1 MiB/s dirtied, 10 frames/s unless said). */
export function simVmSpec(name: string, host: string, mac: string, knobs: SimKnobs = {}): VmSpec__Output {
  const sim = { memoryMib: knobs.memoryMib ?? 8, dirtyRateMibS: knobs.dirtyRateMibS ?? 1, frameRateHz: knobs.frameRateHz ?? 10, peers: knobs.peers ?? [] };
  return { name, host, macs: [mac], driver: { sim, kind: 'sim' } };
}

/** Sim VMs from (name, host) pairs, the i-th (from 0) with the MAC `mac(i)`. */
export function simVms(vms: [string, string][], mac: (i: number) => string, knobs: SimKnobs = {}): VmSpec__Output[] {
  return vms.map(([name, host], i) => simVmSpec(name, host, mac(i), knobs));
}

/** Each VM's name → its host: the placement of a VNE started where its specs say. */
export function placementOf(vms: VmSpec__Output[]): Record<string, string> {
  const placement: Record<string, string> = {};
  for (const v of vms) placement[v.name] = v.host;
  return placement;
}

/** A VNE record: `blue`, VNI 100, no VMs, as defined by a client, with `over` on top. */
export function vneRecord(over: Partial<Vne__Output> = {}): Vne__Output {
  return {
    name: 'blue',
    vni: 100,
    vms: [],
    generation: 0,
    epoch: 0,
    state: 'VNE_STATE_UNSPECIFIED',
    createdUnixMs: 0,
    updatedUnixMs: 0,
    placement: {},
    vmStatus: [],
    fenced: [],
    stateReason: '',
    ...over,
  };
}
