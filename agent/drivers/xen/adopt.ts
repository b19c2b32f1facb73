/**
 * Adoption of a Xen domain a previous agent left running (docs/agent-restart.md): the Xen
 * driver's side of "VMs outlive the agent".
 *
 * A domain is no process of the agent's: it runs on whatever happens to dom0's daemons, and its
 * vifs (vifD.N) stay in the bridges the driver made (network.ts), which outlive the agent too.
 * So does the veth pair beside each vif (vnic-link.ts). What dies with the agent is only the
 * switch's side: its packet sockets on the pairs' switch ends. So the record (XenSavedState) is
 * the domain's name and id, and adoption
 *  - finds the domain by name and checks its domid is the recorded one (a domain destroyed and
 *    made again under the name since, by an operator or another tool, is not this VM):
 *    ERR_NOT_FOUND otherwise, and the agent reports the VM dead;
 *  - re-opens the switch's sockets on the same veth pairs (bridgeUp is idempotent and makes a
 *    pair that is missing, e.g. under a domain an older agent bridged with a TAP), so the vifs
 *    are reachable again;
 *  - unpauses a domain found paused (the dead agent paused it for a cut). A snapshot stream the
 *    dead agent had running (`xl migrate` into its receiver) fails with the receiver, and xl
 *    then resumes the domain itself;
 *  - lifts any CPU cap: the driver's configurations allow none (proto/specs/xen-config.ts), so
 *    a cap on the domain is the convergence cap of a live capture the dead agent had under way
 *    (converge.ts), which would otherwise throttle the guest for good. A failure to lift it is
 *    logged, not fatal: the domain runs, only slower.
 */
import { describeError, VnsnapError } from '../../../proto/core/errors';
import type { VmHandle, VmStartContext, VmStartSpec } from '../driver';
import type { XenVm } from './job-base';
import { attachPorts, xenNames, type DiskRef } from './network';
import type { XenHost } from './xl';
import type { Port } from '../../../switch/port/port';

/** The Xen driver's part of a VM's state record. */
export interface XenSavedState {
  domName: string;
  domid: number;
  disk?: DiskRef;
}

export function xenSavedState(vm: XenVm): XenSavedState {
  return { domName: vm.domName, domid: vm.domid, ...(vm.disk ? { disk: vm.disk } : {}) };
}

/** Check the driver's part of a record against the VM it claims to be. */
export function parseXenSavedState(v: unknown, spec: VmStartSpec): XenSavedState {
  const o = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  const want = xenNames(spec.id, spec.macs.length).domName;
  if (o.domName !== want) throw new VnsnapError('ERR_INVALID_ARGUMENT', `Xen state record of ${spec.id}: domain ${JSON.stringify(o.domName)} is not the VM's (${want})`);
  if (typeof o.domid !== 'number' || !Number.isInteger(o.domid) || o.domid <= 0) throw new VnsnapError('ERR_INVALID_ARGUMENT', `Xen state record of ${spec.id}: bad domid ${JSON.stringify(o.domid)}`);
  const d = o.disk as { kind?: unknown; path?: unknown } | undefined;
  const disk = d && d.kind === 'file' && typeof d.path === 'string' ? { kind: 'file' as const, path: d.path } : undefined;
  return { domName: want, domid: o.domid, ...(disk ? { disk } : {}) };
}

export interface XenAdoptionParts {
  host: XenHost;
  has(id: string): boolean;
  add(id: string, vm: XenVm): void;
  openPort?: (portName: string, ifname: string) => Port;
}

/** Take over a running domain (module comment). */
export async function adoptXenVm(d: XenAdoptionParts, spec: VmStartSpec, state: unknown, ctx: VmStartContext): Promise<VmHandle & { resumed: boolean }> {
  const st = parseXenSavedState(state, spec);
  if (d.has(spec.id)) throw new VnsnapError('ERR_ALREADY_EXISTS', `Xen VM ${spec.id} exists`);
  const domid = await d.host.domid(st.domName);
  if (domid !== st.domid) throw new VnsnapError('ERR_NOT_FOUND', domid === null ? `Xen domain ${st.domName} is gone` : `Xen domain ${st.domName} is another domain now (domid ${domid}, recorded ${st.domid})`);
  const { ports, bridges } = await attachPorts(d.host, spec, ctx, d.openPort);
  let resumed = false;
  try {
    if (await d.host.paused?.(st.domName)) {
      await d.host.unpause(st.domName);
      resumed = true;
    }
  } catch (e) {
    for (const p of ports) p.close();
    throw e;
  }
  d.add(spec.id, { spec, domName: st.domName, domid, status: 'running', ports, bridges, ...(st.disk ? { disk: st.disk } : {}) });
  await d.host.setCap(st.domName, 0).catch((e: unknown) => ctx.log.warn({ domain: st.domName, err: describeError(e) }, 'cannot lift the CPU cap of an adopted Xen domain'));
  ctx.log.info({ domain: st.domName, domid, resumed }, 'xen domain adopted');
  return { name: spec.name, ports, resumed };
}
