/**
 * The Xen driver's naming and network plumbing: deterministic domain, bridge and TAP names from
 * the VM key, the VM's xl configuration with the vifs the driver sets, and the switch's side of
 * each vNIC.
 *
 * Every vNIC is a `vif` whose backend `vifD.N` the hotplug script puts into a bridge the driver
 * made (`vnxb<hash><i>`), together with a TAP the switch owns (`vnxt<hash><i>`, opened with
 * offloads: a PV guest sends TCP super-frames with partial checksums, which a plain packet
 * socket on the vif would hand over unsegmented). The bridge survives the domain, so a restored
 * domain (new domid, new vifD.N) lands on the same port.
 */
import { createHash } from 'node:crypto';
import { TapPort } from '../../../switch/port/fd-port';
import type { Port } from '../../../switch/port/port';
import type { VmStartContext, VmStartSpec } from '../driver';
import type { XenHost } from './xl';

export interface DiskRef {
  kind: 'file';
  path: string;
}

/** Deterministic short names from the VM key (interface names are at most 15 characters). */
export function xenNames(id: string, nics: number): { domName: string; bridges: string[]; taps: string[] } {
  const h = createHash('sha256').update(id).digest('hex').slice(0, 8);
  const domName = `vnsnap-${id.replace(/[^A-Za-z0-9_.-]/g, '-')}`.slice(0, 60);
  return {
    domName,
    bridges: Array.from({ length: nics }, (_, i) => `vnxb${h}${i}`),
    taps: Array.from({ length: nics }, (_, i) => `vnxt${h}${i}`),
  };
}


/**
 * The VM's xl configuration with its name and vifs set by the driver (any `name` and `vif`
 * lines of the given text are replaced) and the file-backed disk it uses, if any.
 */
export function xenConfig(text: string, domName: string, macs: string[], bridges: string[]): { config: string; disk?: DiskRef } {
  const lines = text.split('\n');
  const out: string[] = [];
  let skipping = false;
  for (const l of lines) {
    if (skipping) {
      if (l.includes(']')) skipping = false;
      continue;
    }
    if (/^\s*(name|vif)\s*=/.test(l)) {
      if (/^\s*vif\s*=\s*\[/.test(l) && !l.includes(']')) skipping = true;
      continue;
    }
    out.push(l);
  }
  out.push(`name = "${domName}"`);
  out.push(`vif = [ ${macs.map((m, i) => `'mac=${m},bridge=${bridges[i]}'`).join(', ')} ]`);
  let disk: DiskRef | undefined;
  const dm = /^\s*disk\s*=\s*\[([^\]]*)\]/m.exec(text);
  if (dm) {
    const first = /['"]([^'"]+)['"]/.exec(dm[1] as string)?.[1] ?? '';
    const target = /(?:^|,)\s*target=([^,]+)/.exec(first)?.[1] ?? (/^(?:file:|aio:)?(\/[^,]+)/.exec(first)?.[1] ?? '');
    const phy = /(?:^|,)\s*phy:|^\/dev\//.test(first) || /\/dev\//.test(target);
    if (target && !phy) disk = { kind: 'file', path: target.trim() };
  }
  return { config: out.join('\n') + '\n', ...(disk ? { disk } : {}) };
}

/** The switch's side of each vNIC (a TAP, unless `openPort` says otherwise), each bridged with its vif. */
export async function attachPorts(host: XenHost, spec: VmStartSpec, ctx: VmStartContext, openPort?: (portName: string, tapName: string) => Port): Promise<{ ports: Port[]; bridges: string[] }> {
  const names = xenNames(spec.id, spec.macs.length);
  const ports: Port[] = [];
  try {
    for (let i = 0; i < spec.macs.length; i++) {
      const tap = names.taps[i] as string;
      const p = openPort ? openPort(ctx.portNames[i] as string, tap) : new TapPort(ctx.portNames[i] as string, tap, undefined, { offload: true });
      ports.push(p);
      await host.bridgeUp(names.bridges[i] as string, tap);
    }
  } catch (e) {
    for (const p of ports) p.close();
    for (const b of names.bridges) await host.bridgeDown(b).catch(() => undefined);
    throw e;
  }
  return { ports, bridges: names.bridges };
}

export async function detachPorts(host: XenHost, vm: { ports: Port[]; bridges: string[] }): Promise<void> {
  for (const p of vm.ports) p.close();
  for (const b of vm.bridges) await host.bridgeDown(b).catch(() => undefined);
}
