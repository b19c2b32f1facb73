/**
 * A `nic: 'tap-bpf'` VM's TAP on the in-kernel data path (switch/bpf/vnsnap-dp.bpf.c;
 * docs/nic-offloads.md, "The in-kernel data path"): the agent's pinned data path with its
 * receiving side (agent/bpf-dp/host-dp.ts: loaded once per agent, or found where an earlier agent
 * pinned it), the TAP's entry in its ports map, and the program vn_tx on the TAP's ingress.
 *
 * Why the port does not read the TAP: a packet socket sees a received frame before tc ingress
 * runs, so it would see every frame the kernel carries too. vn_tx hands the switch the frames it
 * does not carry by redirecting them into the ingress of the TAP's veth end `v`, which the port
 * reads (and writes, as tap-vnet does).
 *
 * Guarantees: the TAP's port entry exists before the program is attached (no frame meets the
 * program without it), with the fast path off: every frame reaches the switch through `v` and is
 * handled as on tap-vnet, until a switch that runs the data path (Switch.useDataPath, enabled by
 * the agent's `dataPath` configuration) registers the port (its TAP and punt ifindexes are
 * returned for that), fills the FDB and turns the flag on. Where the data path cannot run (not
 * built at install, no bpftool or tc) the TAP is refused with the loader's
 * ERR_FAILED_PRECONDITION, one line. The entry of a deleted TAP stays in the map until a tap-bpf
 * TAP with the same ifindex overwrites it (a TAP without vn_tx never consults it); the pins stay
 * with the host, as the TAPs of VMs that outlive the agent do.
 */
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { attachDataPath } from '../../bpf-dp/loader';
import { hostDataPath } from '../../bpf-dp/host-dp';
import type { DataPathPortInfo } from '../../../switch/bpf-dp/port';

/** The pinned data path's prefix for an agent whose QEMU work directory is `workDir` (one per agent). */
export const dataPathPrefix = (workDir: string): string => `vnsnap-${createHash('sha256').update(workDir).digest('hex').slice(0, 12)}`;

const ifindex = async (dev: string): Promise<number> => Number((await fsp.readFile(`/sys/class/net/${dev}/ifindex`, 'utf8')).trim());

/** Put `tap` on the data path of `prefix`, frames it does not carry punted into `punt`'s ingress. */
export async function attachTapBpf(prefix: string, tap: string, punt: string): Promise<DataPathPortInfo> {
  // Pins of another build are replaced only when no other TAP still runs their vn_tx (host-dp.ts).
  const { dp, maps } = await hostDataPath(prefix, undefined, async () => new Set([tap]));
  const info = { tapIfindex: await ifindex(tap), puntIfindex: await ifindex(punt) };
  maps.setPort(info.tapIfindex, { vni: 0, epoch: 0, puntIfindex: info.puntIfindex, fast: false, generation: 0 });
  await attachDataPath(dp, tap, 'vn_tx');
  return info;
}
