/**
 * Input validation for VNE definitions: every rule, with the message an operator sees
 * (INVALID_ARGUMENT). Returns the normalised definition (lower-case MACs, server-owned fields
 * dropped).
 *
 * Rules: names (VNE and VM) are 1–63 characters of letters, digits, '.', '_' and '-', starting
 * with a letter or digit (they become store paths); VNI in 0..2^24-1; at least one VM; VM
 * names unique; every VM has a host (agent id) and at least one MAC; MACs are six hex pairs,
 * unicast, not all zero, unique within the VNE; a driver spec (sim, qemu or xen) with its
 * essentials (memory for sim and qemu, kernel or disk for qemu, config for xen); sim peers
 * are other VMs of the same VNE. (sim is the tests' simulated driver, test/sim/: only a test
 * agent runs it, but the coordinator checks its spec like any other.)
 */
import { VnsnapError } from '../proto/core/errors';
import type { DriverSpec__Output } from '../proto/gen/vnsnap/v1/DriverSpec';
import type { VmSpec__Output } from '../proto/gen/vnsnap/v1/VmSpec';
import type { Vne__Output } from '../proto/gen/vnsnap/v1/Vne';

export const MAX_VNI = 0xffffff;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const AGENT_RE = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/;

function invalid(msg: string): VnsnapError {
  return new VnsnapError('ERR_INVALID_ARGUMENT', msg);
}

export function checkName(what: string, name: string): void {
  if (!name) throw invalid(`${what} name is required`);
  if (!NAME_RE.test(name)) throw invalid(`${what} name "${name}" is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`);
}

export interface VneDefinition {
  name: string;
  vni: number;
  vms: VmSpec__Output[];
}

/** Validate a DefineVne/UpdateVne request's VNE. */
export function validateVneDefinition(vne: Vne__Output | null | undefined): VneDefinition {
  if (!vne) throw invalid('vne is required');
  checkName('VNE', vne.name);
  if (!Number.isInteger(vne.vni) || vne.vni < 0 || vne.vni > MAX_VNI) throw invalid(`VNI ${vne.vni} is out of range (0..${MAX_VNI})`);
  if (vne.vms.length === 0) throw invalid(`VNE "${vne.name}" has no VMs`);
  const names = new Set<string>();
  const macOwner = new Map<string, string>();
  const vms: VmSpec__Output[] = [];
  for (const vm of vne.vms) {
    checkName('VM', vm.name);
    if (names.has(vm.name)) throw invalid(`VM name "${vm.name}" is used twice in VNE "${vne.name}"`);
    names.add(vm.name);
    if (!vm.host) throw invalid(`VM "${vm.name}" has no host (the agent id it runs on)`);
    if (!AGENT_RE.test(vm.host)) throw invalid(`VM "${vm.name}": host "${vm.host}" is not a valid agent id`);
    if (vm.macs.length === 0) throw invalid(`VM "${vm.name}" has no MAC address (one per vNIC)`);
    const macs: string[] = [];
    for (const raw of vm.macs) {
      const mac = raw.trim().toLowerCase();
      if (!MAC_RE.test(mac)) throw invalid(`VM "${vm.name}": "${raw}" is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)`);
      if (parseInt(mac.slice(0, 2), 16) & 1) throw invalid(`VM "${vm.name}": ${mac} is a multicast address; a vNIC needs a unicast MAC`);
      if (mac === '00:00:00:00:00:00') throw invalid(`VM "${vm.name}": 00:00:00:00:00:00 is not a usable MAC address`);
      const other = macOwner.get(mac);
      if (other !== undefined) throw invalid(other === vm.name ? `VM "${vm.name}" lists MAC ${mac} twice` : `MAC ${mac} is used by both VM "${other}" and VM "${vm.name}"`);
      macOwner.set(mac, vm.name);
      macs.push(mac);
    }
    checkDriver(vm.name, vm.driver);
    vms.push({ name: vm.name, host: vm.host, macs, driver: vm.driver });
  }
  for (const vm of vms) {
    const sim = vm.driver?.sim;
    if (!sim) continue;
    for (const p of sim.peers) {
      if (p === vm.name) throw invalid(`VM "${vm.name}": a sim VM cannot be its own peer`);
      if (!names.has(p)) throw invalid(`VM "${vm.name}": sim peer "${p}" is not a VM of VNE "${vne.name}"`);
    }
  }
  return { name: vne.name, vni: vne.vni, vms };
}

function checkDriver(vm: string, d: DriverSpec__Output | null | undefined): void {
  const kind = d?.kind ?? (d?.sim ? 'sim' : d?.qemu ? 'qemu' : d?.xen ? 'xen' : undefined);
  if (!d || !kind) throw invalid(`VM "${vm}" has no driver spec (sim, qemu or xen)`);
  if (kind === 'sim') {
    if (!d.sim?.memoryMib) throw invalid(`VM "${vm}": sim driver needs memory_mib > 0`);
  } else if (kind === 'qemu') {
    if (!d.qemu?.memoryMib) throw invalid(`VM "${vm}": qemu driver needs memory_mib > 0`);
    if (!d.qemu.kernel && !d.qemu.disk) throw invalid(`VM "${vm}": qemu driver needs a kernel or a disk`);
  } else if (kind === 'xen') {
    if (!d.xen?.config.trim()) throw invalid(`VM "${vm}": xen driver needs its xl config`);
  }
}
