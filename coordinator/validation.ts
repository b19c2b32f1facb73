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
 *
 * Driver spec policy (proto/specs/, docs/security.md "Driver specs: what a VM may touch"): QEMU
 * image paths (kernel, initrd, disk) absolute and normalised, `extra` only its allow-listed keys
 * with their value grammars; a Xen config parsed and refused on any key outside its allow-list
 * (bootloader, device_model_*, disk script=, ...), its numbers within bounds. The agent checks
 * the same again, and alone decides whether a path is under its image roots.
 *
 * Bounds (documented in proto/vnsnap/v1/types.proto and coordinator.proto, and in
 * docs/control-plane.md): every string is length-checked before anything else looks at it, and
 * a refusal never echoes more than a short prefix of what it refuses (a 1 MB name must not
 * become a 1 MB status message, which clients cannot receive). Numbers of a driver spec are
 * checked against BOUNDS at definition, so a bad value is INVALID_ARGUMENT at `vne define`,
 * never a failure at start. Timeouts are at most MAX_TIMEOUT_MS: Node timers hold 2^31-1 ms,
 * and a longer delay would fire at once.
 */
import { VnsnapError } from '../proto/core/errors';
import { checkImagePath } from '../proto/specs/image-path';
import { checkQemuExtra } from '../proto/specs/qemu-extra';
import { checkXenConfig } from '../proto/specs/xen-config';
import type { DriverSpec__Output } from '../proto/gen/vnsnap/v1/DriverSpec';
import type { VmSpec__Output } from '../proto/gen/vnsnap/v1/VmSpec';
import type { Vne__Output } from '../proto/gen/vnsnap/v1/Vne';

export const MAX_VNI = 0xffffff;
/** The longest timer Node keeps (2^31-1 ms, about 24.8 days); a longer one fires after 1 ms. */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;
/** Longest VNE and VM name. */
export const MAX_NAME_CHARS = 63;
/** Longest agent id and snapshot id. */
export const MAX_ID_CHARS = 128;
export const MAX_DESCRIPTION_CHARS = 1024;
/** Longest kernel, initrd or disk path, kernel command line, or QEMU extra value. */
export const MAX_PATH_CHARS = 4096;
export const MAX_XEN_CONFIG_CHARS = 65536;
export const MAX_QEMU_EXTRA_KEYS = 64;
/** What a refusal quotes of a long string. */
const SHOWN_CHARS = 64;

/** The numeric fields of the driver specs: inclusive bounds, and the unit shown in refusals. */
export const BOUNDS = {
  'sim.memory_mib': { min: 1, max: 1048576, unit: ' MiB' },
  'sim.dirty_rate_mib_s': { min: 0, max: 65536, unit: ' MiB/s' },
  'sim.frame_rate_hz': { min: 0, max: 100000, unit: ' Hz' },
  'qemu.memory_mib': { min: 16, max: 1048576, unit: ' MiB' },
  'qemu.cpus': { min: 0, max: 256, unit: '' },
} as const;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const AGENT_RE = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/;

function invalid(msg: string): VnsnapError {
  return new VnsnapError('ERR_INVALID_ARGUMENT', msg);
}

/** A string as a refusal quotes it: whole when short, else its start and its length. */
export function shown(value: string): string {
  return value.length <= SHOWN_CHARS ? JSON.stringify(value) : `${JSON.stringify(value.slice(0, 32))}... (${value.length} characters)`;
}

/** Refuse a string longer than max: INVALID_ARGUMENT naming the field and the limit. */
export function checkLength(field: string, value: string, max: number): void {
  if (value.length > max) throw invalid(`${field} is ${value.length} characters long; the limit is ${max}`);
}

/** Refuse a timeout Node cannot keep (0 means the default and is allowed). */
export function checkTimeoutMs(field: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > MAX_TIMEOUT_MS) throw invalid(`${field} ${value} is out of range (0..${MAX_TIMEOUT_MS} ms, about 24.8 days; 0 = the default)`);
}

function checkBound(vm: string, field: keyof typeof BOUNDS, value: number): void {
  const b = BOUNDS[field];
  if (!Number.isInteger(value) || value < b.min || value > b.max) throw invalid(`VM "${vm}": ${field} ${value} is out of range (${b.min}..${b.max}${b.unit})`);
}

export function checkName(what: string, name: string): void {
  if (!name) throw invalid(`${what} name is required`);
  checkLength(`${what} name`, name, MAX_NAME_CHARS);
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
    checkLength(`VM "${vm.name}": host`, vm.host, MAX_ID_CHARS);
    if (!AGENT_RE.test(vm.host)) throw invalid(`VM "${vm.name}": host "${vm.host}" is not a valid agent id`);
    if (vm.macs.length === 0) throw invalid(`VM "${vm.name}" has no MAC address (one per vNIC)`);
    const macs: string[] = [];
    for (const raw of vm.macs) {
      const mac = raw.trim().toLowerCase();
      if (!MAC_RE.test(mac)) throw invalid(`VM "${vm.name}": ${shown(raw)} is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)`);
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
      checkLength(`VM "${vm.name}": sim peer name`, p, MAX_NAME_CHARS);
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
    checkBound(vm, 'sim.memory_mib', d.sim.memoryMib);
    checkBound(vm, 'sim.dirty_rate_mib_s', d.sim.dirtyRateMibS);
    checkBound(vm, 'sim.frame_rate_hz', d.sim.frameRateHz);
  } else if (kind === 'qemu') {
    const q = d.qemu;
    if (!q?.memoryMib) throw invalid(`VM "${vm}": qemu driver needs memory_mib > 0`);
    checkBound(vm, 'qemu.memory_mib', q.memoryMib);
    checkBound(vm, 'qemu.cpus', q.cpus);
    for (const f of ['kernel', 'initrd', 'append', 'disk'] as const) checkLength(`VM "${vm}": qemu.${f}`, q[f], MAX_PATH_CHARS);
    const extra = Object.entries(q.extra);
    if (extra.length > MAX_QEMU_EXTRA_KEYS) throw invalid(`VM "${vm}": qemu.extra has ${extra.length} keys; the limit is ${MAX_QEMU_EXTRA_KEYS}`);
    for (const [k, v] of extra) {
      checkLength(`VM "${vm}": a qemu.extra key`, k, MAX_NAME_CHARS);
      checkLength(`VM "${vm}": qemu.extra.${k}`, v, MAX_PATH_CHARS);
    }
    if (!q.kernel && !q.disk) throw invalid(`VM "${vm}": qemu driver needs a kernel or a disk`);
    for (const f of ['kernel', 'initrd', 'disk'] as const) if (q[f]) checkImagePath(`VM "${vm}": qemu.${f}`, q[f]);
    checkQemuExtra(`VM "${vm}": `, q.extra);
  } else if (kind === 'xen') {
    if (!d.xen?.config.trim()) throw invalid(`VM "${vm}": xen driver needs its xl config`);
    checkLength(`VM "${vm}": xen.config`, d.xen.config, MAX_XEN_CONFIG_CHARS);
    checkXenConfig(`VM "${vm}": `, d.xen.config);
  }
}
