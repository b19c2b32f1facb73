/**
 * IPv6 off on a host-side link the agent makes or adopts for a VM (a VM's TAP, its veth pair,
 * the data path's punt pair, a Xen vif's pair). Why: the host has no address there, and with
 * IPv6 on it would send its own frames (link-local DAD, router solicitations, MLD reports)
 * into the VM's network. Guarantees: never rejects (a kernel without IPv6, or a link already
 * gone, leaves nothing to turn off).
 */
import * as fsp from 'node:fs/promises';

/** Turn IPv6 off on `dev` (see the module comment). */
export function disableIpv6(dev: string): Promise<void> {
  return fsp.writeFile(`/proc/sys/net/ipv6/conf/${dev}/disable_ipv6`, '1').catch(() => undefined);
}
