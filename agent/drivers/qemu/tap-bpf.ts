/**
 * A `nic: 'tap-bpf'` VM's TAP on the in-kernel data path (switch/bpf/vnsnap-dp.bpf.c;
 * docs/nic-offloads.md, "The in-kernel data path"): the agent's pinned data path (loaded once per
 * agent, or found where an earlier agent pinned it) with its receiving side (agent/bpf-dp/rx-side.ts:
 * the VXLAN device with vn_rx and the punt device, in vn_cfg), the TAP's entry in its ports map,
 * and the program vn_tx on the TAP's ingress.
 *
 * Why the port does not read the TAP: a packet socket sees a received frame before tc ingress
 * runs, so it would see every frame the kernel carries too. vn_tx hands the switch the frames it
 * does not carry by redirecting them into the ingress of the TAP's veth end `v`, which the port
 * reads (and writes, as tap-vnet does).
 *
 * Guarantees: the TAP's port entry exists before the program is attached (no frame meets the
 * program without it); the entry has the fast path off until the switch fills the FDB and turns
 * it on (the switch's side is not built yet), so today every frame reaches the switch through
 * `v` and is handled as on tap-vnet; where the data path cannot run (not built at install, no
 * bpftool or tc) the TAP is refused with the loader's ERR_FAILED_PRECONDITION, one line. The
 * entry of a deleted TAP stays in the map until a tap-bpf TAP with the same ifindex overwrites it
 * (a TAP without vn_tx never consults it); the pins stay with the host, as the TAPs of VMs that
 * outlive the agent do.
 */
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { attachDataPath, loadDataPath, pinnedDataPath, type LoadedDataPath } from '../../bpf-dp/loader';
import { ensureReceivingSide } from '../../bpf-dp/rx-side';
import { DataPathMaps } from '../../../switch/bpf-dp/maps';

/** The pinned data path's prefix for an agent whose QEMU work directory is `workDir` (one per agent). */
export const dataPathPrefix = (workDir: string): string => `vnsnap-${createHash('sha256').update(workDir).digest('hex').slice(0, 12)}`;

const loaded = new Map<string, Promise<{ dp: LoadedDataPath; maps: DataPathMaps }>>();

/** The agent's data path: loaded on first use, or the set an earlier agent of this prefix pinned. */
function dataPath(prefix: string): Promise<{ dp: LoadedDataPath; maps: DataPathMaps }> {
  let p = loaded.get(prefix);
  if (!p) {
    p = (async () => {
      const dp = (await pinnedDataPath(prefix)) ?? (await loadDataPath(prefix));
      const maps = new DataPathMaps(dp.mapsDir);
      try {
        await ensureReceivingSide(dp, maps);
      } catch (e) {
        maps.close();
        throw e;
      }
      return { dp, maps };
    })();
    p.catch(() => loaded.delete(prefix));
    loaded.set(prefix, p);
  }
  return p;
}

const ifindex = async (dev: string): Promise<number> => Number((await fsp.readFile(`/sys/class/net/${dev}/ifindex`, 'utf8')).trim());

/** Put `tap` on the data path of `prefix`, frames it does not carry punted into `punt`'s ingress. */
export async function attachTapBpf(prefix: string, tap: string, punt: string): Promise<void> {
  const { dp, maps } = await dataPath(prefix);
  maps.setPort(await ifindex(tap), { vni: 0, epoch: 0, puntIfindex: await ifindex(punt), fast: false });
  await attachDataPath(dp, tap, 'vn_tx');
}
