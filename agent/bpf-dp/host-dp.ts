/**
 * The agent's in-kernel data path on this host, loaded once per agent and shared by everything
 * in the process that needs it: the QEMU driver's `nic: 'tap-bpf'` TAPs (drivers/qemu/tap-bpf.ts)
 * and, when the agent's configuration turns the fast path on (`dataPath`), the switch
 * (wireDataPath: Switch.useDataPath with the wiring of switch/bpf-dp/wiring.ts).
 *
 * Why one place: the pinned programs and maps, the VXLAN devices and the punt device are one set
 * per agent (prefix `vnsnap-<hash of the QEMU work directory>`, loader.ts, rx-side.ts); the
 * driver may need them before or after the agent wires its switch, and both must see the same
 * maps and the same VXLAN port.
 *
 * Guarantees: hostDataPath(prefix, port) loads (or adopts the pins an earlier agent of the same
 * build left) and makes the receiving side on `port` once. Pins of another build (loader.ts: the
 * stamp) are replaced — unloaded, then loaded afresh — only when every TAP that still runs their
 * vn_tx is one the caller re-attaches (`reattached`: the TAPs of the VMs it adopts; the old
 * program keeps running on a TAP, with the old maps, until a new vn_tx replaces it); otherwise
 * the data path is refused with ERR_UNSUPPORTED_VERSION naming those TAPs, and nothing is
 * touched; a later call with another port for a prefix already
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
import { devicesRunning, loadDataPath, pinnedDataPath, unloadDataPath, type LoadedDataPath, type PinnedDataPath } from './loader';
import { DP_VXLAN_PORT, ensureReceivingSide, VniDevices, type ReceivingSide } from './rx-side';

export interface HostDataPath {
  dp: LoadedDataPath;
  maps: DataPathMaps;
  rx: ReceivingSide;
  vxlanPort: number;
  /** Set when the pins of another build were replaced: their stamp and the TAPs that ran their vn_tx. */
  replaced?: { stamp: string | undefined; taps: string[] };
}

/** The TAPs the caller puts on the new program itself (module comment). */
export type Reattached = () => Promise<ReadonlySet<string>>;

/**
 * Unload the stale pins `found` when every device still running their vn_tx (in this network
 * namespace, or `netns`) is in `reattached`; refuse otherwise (module comment). Returns those devices.
 */
export async function replaceStale(found: PinnedDataPath, reattached: Reattached, netns?: string): Promise<string[]> {
  const taps = await devicesRunning(found.dp.prog('vn_tx'), netns);
  const keep = await reattached();
  const left = taps.filter((t) => !keep.has(t));
  if (left.length > 0) {
    throw new VnsnapError(
      'ERR_UNSUPPORTED_VERSION',
      `in-kernel data path ${found.dp.prefix}: the pins under ${found.dp.dir} are of another build (stamp ${found.stamp ?? 'none'}) and ${left.join(', ')} still run their vn_tx without a VM this agent adopts; stop those VMs (or run the agent of the build that pinned it) before starting this one`,
    );
  }
  await unloadDataPath(found.dp.prefix);
  return taps;
}

const loaded = new Map<string, { port: number; p: Promise<HostDataPath> }>();

/**
 * The agent's data path of `prefix` with its receiving side on UDP `vxlanPort` (module comment);
 * `reattached` names the TAPs the caller re-attaches, should the pins be of another build.
 */
export function hostDataPath(prefix: string, vxlanPort?: number, reattached: Reattached = async () => new Set()): Promise<HostDataPath> {
  const had = loaded.get(prefix);
  if (had) {
    if (vxlanPort !== undefined && vxlanPort !== had.port) return Promise.reject(new VnsnapError('ERR_CONFIG', `in-kernel data path ${prefix}: already set up on VXLAN port ${had.port}, not ${vxlanPort}`));
    return had.p;
  }
  const port = vxlanPort ?? DP_VXLAN_PORT;
  const p = (async () => {
    const found = await pinnedDataPath(prefix);
    const replaced = found && !found.current ? { stamp: found.stamp, taps: await replaceStale(found, reattached) } : undefined;
    const dp = found?.current ? found.dp : await loadDataPath(prefix);
    const maps = new DataPathMaps(dp.mapsDir);
    try {
      return { dp, maps, rx: await ensureReceivingSide(dp, maps), vxlanPort: port, ...(replaced ? { replaced } : {}) };
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
export async function wireDataPath(sw: Switch, prefix: string, vxlanPort: number, reattached?: Reattached): Promise<DataPathWiring> {
  const h = await hostDataPath(prefix, vxlanPort, reattached);
  const punt = new PacketPort(`${prefix}-punt`, h.rx.punt, undefined, { offload: true });
  const w = new DataPathWiring(h.maps, { isLocalAddress: localAddresses(), punt, vxlanPort, tunnel: new VniDevices(h.dp, h.maps, vxlanPort) });
  try {
    sw.useDataPath(w);
  } catch (e) {
    punt.close();
    throw e;
  }
  return w;
}
