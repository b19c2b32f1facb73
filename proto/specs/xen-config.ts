/**
 * The Xen driver spec's xl configuration as an allow-list: the configuration is parsed
 * (xl-config.ts, xl-disk.ts) and every key outside ALLOWED is refused, so nothing in it makes
 * dom0 run a program or open a host resource the agent did not choose. A PV or PVH domain needs
 * only what ALLOWED lists: its kernel and ramdisk, their command line, memory, vCPUs, disks and
 * the on_* actions; `name` and `vif` are accepted and replaced by the driver's own.
 *
 * Refused with a reason (REFUSED; xl.cfg(5)): bootloader, bootloader_args (a program dom0 runs
 * as root), device_model_* and stubdomain_* (the device model's binary, arguments and user),
 * init_seclabel/seclabel (XSM labels), firmware and its overrides, device_tree, pci, dtdev,
 * iomem, ioports, irqs, usb*, vtpm, channel, p9, vfb/vkb, ... and `type = "hvm"` (an HVM guest
 * runs QEMU in dom0 with options this list does not cover); every other unknown key is refused
 * generically. Disks: no `script=` (a program dom0 runs), no `backend=` (another domain serves
 * it), format raw only (a qcow/qcow2/vhd image names backing files the backend opens, which
 * the agent does not check), and a target path that is absolute and normalised; whether it is
 * an image under the agent's roots is the agent's decision (agent/drivers/image-root.ts).
 *
 * Numbers: memory and maxmem 16..1048576 MiB, vcpus and maxvcpus 1..256 (the QEMU spec's
 * bounds). Strings: at most 4096 characters.
 *
 * Pure: the coordinator checks at definition, the Xen driver again before it writes a config.
 */
import { VnsnapError } from '../core/errors';
import { checkImagePath } from './image-path';
import { parseXlConfig, type XlAtom, type XlEntry, type XlValue } from './xl-config';
import { KNOWN_FLAGS, parseDiskSpec, type DiskSpec } from './xl-disk';

/** The configuration as checked: its entries in order (name and vif dropped), its images. */
export interface CheckedXenConfig {
  entries: XlEntry[];
  kernel?: string;
  ramdisk?: string;
  disks: DiskSpec[];
}

const MAX_STRING = 4096;
const MAX_DISKS = 16;
const ACTIONS = ['destroy', 'restart', 'rename-restart', 'preserve', 'soft-reset'];

type Rule = { kind: 'string'; check?: (field: string, v: string) => void } | { kind: 'int'; min: number; max: number; unit: string } | { kind: 'list' } | { kind: 'ignored' };

const oneOf = (allowed: readonly string[]) => (field: string, v: string) => {
  if (!allowed.includes(v)) throw invalid(`${field} ${JSON.stringify(v.slice(0, 64))} is not allowed (allowed: ${allowed.join(', ')})`);
};

export const ALLOWED: Readonly<Record<string, Rule>> = {
  name: { kind: 'ignored' },
  vif: { kind: 'ignored' },
  type: { kind: 'string', check: oneOf(['pv', 'pvh']) },
  kernel: { kind: 'string', check: checkImagePath },
  ramdisk: { kind: 'string', check: checkImagePath },
  cmdline: { kind: 'string' },
  extra: { kind: 'string' },
  root: { kind: 'string' },
  memory: { kind: 'int', min: 16, max: 1048576, unit: ' MiB' },
  maxmem: { kind: 'int', min: 16, max: 1048576, unit: ' MiB' },
  vcpus: { kind: 'int', min: 1, max: 256, unit: '' },
  maxvcpus: { kind: 'int', min: 1, max: 256, unit: '' },
  disk: { kind: 'list' },
  uuid: { kind: 'string', check: (f, v) => void (/^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$/.test(v) || fail(`${f} is not a UUID`)) },
  on_poweroff: { kind: 'string', check: oneOf(ACTIONS) },
  on_reboot: { kind: 'string', check: oneOf(ACTIONS) },
  on_watchdog: { kind: 'string', check: oneOf(ACTIONS) },
  on_crash: { kind: 'string', check: oneOf(ACTIONS) },
  on_soft_reset: { kind: 'string', check: oneOf(ACTIONS) },
};

/** Keys refused with the reason an operator reads. */
export const REFUSED: Readonly<Record<string, string>> = {
  bootloader: 'it names a program dom0 runs as root',
  bootloader_args: 'it is the argument list of a program dom0 runs as root',
  bootloader_restrict: 'it belongs to a bootloader, which is refused',
  bootloader_user: 'it belongs to a bootloader, which is refused',
  device_model_override: 'it names the device model binary dom0 runs',
  device_model_version: 'it selects a device model, which only HVM guests use',
  device_model_args: 'it passes arguments to the device model dom0 runs',
  device_model_args_pv: 'it passes arguments to the device model dom0 runs',
  device_model_args_hvm: 'it passes arguments to the device model dom0 runs',
  device_model_user: 'it chooses the user the device model runs as',
  device_model_stubdomain_override: 'it changes where the device model runs',
  device_model_stubdomain_seclabel: 'it sets an XSM label',
  stubdomain_kernel: 'it loads a host file as the stub domain kernel',
  stubdomain_ramdisk: 'it loads a host file as the stub domain ramdisk',
  stubdomain_cmdline: 'it configures a stub domain',
  init_seclabel: 'it sets an XSM label',
  seclabel: 'it sets an XSM label',
  firmware: 'it loads a host file as firmware',
  firmware_override: 'it loads a host file as firmware',
  acpi_firmware: 'it loads a host file as ACPI tables',
  smbios_firmware: 'it loads a host file as SMBIOS tables',
  device_tree: 'it loads a host file as the device tree',
  builder: 'it is the old spelling of type (only type = "pv" or "pvh" is accepted)',
  pci: 'it passes host PCI devices through',
  dtdev: 'it passes host devices through',
  iomem: 'it maps host memory into the guest',
  ioports: 'it gives the guest host I/O ports',
  irqs: 'it gives the guest host interrupts',
  usb: 'it passes host USB devices through',
  usbctrl: 'it passes host USB devices through',
  usbdev: 'it passes host USB devices through',
  usbdevice: 'it passes host USB devices through',
  vtpm: 'it attaches a TPM backend',
  channel: 'it connects the guest to host sockets or files',
  p9: 'it shares a host directory with the guest',
  vfb: 'it opens a display backend in dom0',
  vkb: 'it opens an input backend in dom0',
  vdispl: 'it opens a display backend',
  vsnd: 'it opens a sound backend',
  serial: 'it connects the guest to a host device or file',
  rdm: 'it maps reserved host memory',
  max_grant_frames: 'it changes hypervisor limits',
  max_maptrack_frames: 'it changes hypervisor limits',
  driver_domain: 'it makes the guest a driver domain',
};

function invalid(msg: string): VnsnapError {
  return new VnsnapError('ERR_INVALID_ARGUMENT', msg);
}

function fail(msg: string): never {
  throw invalid(msg);
}

function atomString(field: string, v: XlValue): string {
  if (v.kind !== 'string') throw invalid(`${field} must be a string`);
  if (v.value.length > MAX_STRING) throw invalid(`${field} is ${v.value.length} characters long; the limit is ${MAX_STRING}`);
  return v.value;
}

function atomInt(field: string, v: XlValue, min: number, max: number, unit: string): number {
  const n = v.kind === 'number' ? Number(v.text) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) throw invalid(`${field} ${v.kind === 'list' ? '[...]' : v.kind === 'number' ? v.text : JSON.stringify(v.value.slice(0, 64))} is out of range (${min}..${max}${unit})`);
  return n;
}

/** The disk policy (module comment) on one parsed disk. */
function checkDisk(field: string, d: DiskSpec): void {
  const refusedOther = d.other[0];
  if (refusedOther !== undefined) {
    const k = refusedOther.split('=')[0]?.trim() ?? '';
    const why = k === 'script' ? ' (a program dom0 runs as root)' : k === 'backend' ? ' (another domain would serve the disk)' : '';
    throw invalid(`${field}: ${JSON.stringify(k.slice(0, 64))} is not allowed${why} (allowed: ${['target', 'format', 'vdev', 'access', 'devtype', 'backendtype', 'cdrom', ...KNOWN_FLAGS].join(', ')})`);
  }
  if (d.format !== undefined && d.format !== 'raw') throw invalid(`${field}: format ${JSON.stringify(d.format.slice(0, 64))} is not allowed (only raw: other formats name backing files the agent does not check)`);
  if (d.vdev !== undefined && !/^((xvd|hd|sd)[a-z]{1,3}[0-9]{0,3}|d[0-9]{1,3}(p[0-9]{1,3})?)$/.test(d.vdev)) throw invalid(`${field}: vdev ${JSON.stringify(d.vdev.slice(0, 64))} is not a virtual device name (e.g. xvda)`);
  if (d.access !== undefined && !['r', 'ro', 'w', 'rw'].includes(d.access)) throw invalid(`${field}: access ${JSON.stringify(d.access.slice(0, 64))} is not r, ro, w or rw`);
  if (d.devtype !== undefined && !['disk', 'cdrom'].includes(d.devtype)) throw invalid(`${field}: devtype ${JSON.stringify(d.devtype.slice(0, 64))} is not disk or cdrom`);
  if (d.backendtype !== undefined && !['phy', 'qdisk', 'tap'].includes(d.backendtype)) throw invalid(`${field}: backendtype ${JSON.stringify(d.backendtype.slice(0, 64))} is not phy, qdisk or tap`);
  if (d.target === '') {
    if (d.devtype !== 'cdrom') throw invalid(`${field}: a disk needs a target`);
  } else checkImagePath(`${field} target`, d.target);
}

function listAtoms(field: string, v: XlValue): XlAtom[] {
  if (v.kind !== 'list') throw invalid(`${field} must be a list`);
  return v.items;
}

/**
 * Parse and check an xl configuration; ERR_INVALID_ARGUMENT naming the key (and `where`, e.g.
 * `VM "a": `) on the first thing refused.
 */
export function checkXenConfig(where: string, text: string): CheckedXenConfig {
  let entries: XlEntry[];
  try {
    entries = parseXlConfig(text);
  } catch (e) {
    throw e instanceof VnsnapError ? invalid(`${where}${e.message}`) : e;
  }
  const out: CheckedXenConfig = { entries: [], disks: [] };
  try {
    for (const e of entries) {
      const field = `xen.config ${e.key}`;
      const reason = REFUSED[e.key];
      if (reason !== undefined) throw invalid(`${field} is not allowed: ${reason}`);
      const rule = Object.hasOwn(ALLOWED, e.key) ? ALLOWED[e.key] : undefined;
      if (!rule) throw invalid(`${field} is not allowed (allowed: ${Object.keys(ALLOWED).join(', ')})`);
      if (rule.kind === 'ignored') continue;
      if (rule.kind === 'string') {
        const v = atomString(field, e.value);
        rule.check?.(field, v);
        if (e.key === 'kernel') out.kernel = v;
        if (e.key === 'ramdisk') out.ramdisk = v;
      } else if (rule.kind === 'int') atomInt(field, e.value, rule.min, rule.max, rule.unit);
      else {
        const items = listAtoms(field, e.value);
        if (items.length > MAX_DISKS) throw invalid(`${field} has ${items.length} disks; the limit is ${MAX_DISKS}`);
        items.forEach((a, i) => {
          const f = `xen.config disk[${i}]`;
          const d = parseDiskSpec(f, atomString(f, a));
          checkDisk(f, d);
          out.disks.push(d);
        });
      }
      out.entries.push(e);
    }
  } catch (e) {
    throw e instanceof VnsnapError ? invalid(`${where}${e.message}`) : e;
  }
  return out;
}
