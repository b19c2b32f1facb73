/**
 * The agent's in-kernel data path on this host, loaded once per agent and shared by everything
 * in the process that needs it: the QEMU driver's `nic: 'tap-bpf'` TAPs (drivers/qemu/tap-bpf.ts)
 * and, when the agent's configuration turns the fast path on (`dataPath`), the switch
 * (wireDataPath: Switch.useDataPath with the wiring of switch/bpf-dp/wiring.ts).
 *
 * Why one place: the pinned programs and maps, the VXLAN device and the punt device are one set
 * per agent (prefix `vnsnap-<hash of the QEMU work directory>`, loader.ts, rx-side.ts); the
 * driver may need them before or after the agent wires its switch, and both must see the same
 * maps and the same VXLAN port.
 *
 * Guarantees: hostDataPath(prefix, port) loads (or adopts the pins an earlier agent left) and
 * makes the receiving side on `port` once; a later call with another port for a prefix already
 * set up is refused (ERR_CONFIG) rather than silently using the first; a failed set-up is
 * forgotten, so the next call retries. wireDataPath opens the punt device's port and hands the
 * switch its wiring; a peer on one of this host's own IPv4 addresses is never given to the
 * kernel (wiring.ts), judged from the interfaces' addresses at most a second old.
 */
import * as os from 'node:os';
import { VnsnapError } from '../../proto/core/errors';
import type { Switch } from '../../switch/switch';
import { DataPathMaps } from '../../switch/bpf-dp/maps';
import { DataPathWiring } from '../../switch/bpf-dp/wiring';
import { ipv4ToNum } from '../../switch/bpf-dp/layout';
import { PacketPort } from '../../switch/port/fd-port';
import { loadDataPath, pinnedDataPath, type LoadedDataPath } from './loader';
import { DP_VXLAN_PORT, ensureReceivingSide, type ReceivingSide } from './rx-side';

export interface HostDataPath {
  dp: LoadedDataPath;
  maps: DataPathMaps;
  rx: ReceivingSide;
  vxlanPort: number;
}

const loaded = new Map<string, { port: number; p: Promise<HostDataPath> }>();

/** The agent's data path of `prefix` with its receiving side on UDP `vxlanPort` (module comment). */
export function hostDataPath(prefix: string, vxlanPort?: number): Promise<HostDataPath> {
  const had = loaded.get(prefix);
  if (had) {
    if (vxlanPort !== undefined && vxlanPort !== had.port) return Promise.reject(new VnsnapError('ERR_CONFIG', `in-kernel data path ${prefix}: already set up on VXLAN port ${had.port}, not ${vxlanPort}`));
    return had.p;
  }
  const port = vxlanPort ?? DP_VXLAN_PORT;
  const p = (async () => {
    const dp = (await pinnedDataPath(prefix)) ?? (await loadDataPath(prefix));
    const maps = new DataPathMaps(dp.mapsDir);
    try {
      return { dp, maps, rx: await ensureReceivingSide(dp, maps, port), vxlanPort: port };
    } catch (e) {
      maps.close();
      throw e;
    }
  })();
  p.catch(() => loaded.delete(prefix));
  loaded.set(prefix, { port, p });
  return p;
}

/** This host's IPv4 addresses, re-read at most once a second. */
function localAddresses(): (ip: number) => boolean {
  let at = -Infinity;
  let set = new Set<number>();
  return (ip) => {
    const now = Date.now();
    if (now - at > 1000) {
      set = new Set(Object.values(os.networkInterfaces()).flatMap((l) => (l ?? []).filter((a) => a.family === 'IPv4').map((a) => ipv4ToNum(a.address))));
      at = now;
    }
    return set.has(ip);
  };
}

/** Put the agent's data path under `sw`: the fast path for its tap-bpf ports (module comment). */
export async function wireDataPath(sw: Switch, prefix: string, vxlanPort: number): Promise<DataPathWiring> {
  const h = await hostDataPath(prefix, vxlanPort);
  const punt = new PacketPort(`${prefix}-punt`, h.rx.punt, undefined, { offload: true });
  const w = new DataPathWiring(h.maps, { isLocalAddress: localAddresses(), punt, vxlanPort });
  try {
    sw.useDataPath(w);
  } catch (e) {
    punt.close();
    throw e;
  }
  return w;
}
