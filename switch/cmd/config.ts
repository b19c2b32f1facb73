/**
 * The switch daemon's static configuration file (JSON), validated with messages that name the
 * offending field, so a typo is a one-line error and never a stack trace. The file-level checks
 * (readable, valid JSON, one object, no unknown field) are the shared ones of proto/core/config.ts.
 *
 * {
 *   "id": "h1",
 *   "tunnel": { "address": "10.77.0.1", "port": 6081, "underlayMtu": 1500 },
 *   "control": "/run/vnsnap/h1-switch.sock",
 *   "peers": [ { "id": "h2", "address": "10.77.0.2", "port": 6081 } ],
 *   "vnes":  [ { "name": "blue", "vni": 100, "generation": 1, "peers": ["h2"] } ],
 *   "ports": [ { "name": "vm1", "vne": "blue", "type": "tap", "ifname": "vnt1" },
 *              { "name": "vm2", "vne": "blue", "type": "packet", "ifname": "tap-qemu2" },
 *              { "name": "vm3", "vne": "blue", "type": "stream", "path": "/run/vnsnap/vm3.sock" } ],
 *   "static": [ { "vne": "blue", "mac": "52:54:00:00:00:04", "peer": "h2" } ]
 * }
 */
import { configError as fail, parseJsonObject, readJsonObjectFile, rejectUnknownKeys } from '../../proto/core/config';

export interface PortSpec {
  name: string;
  vne: string;
  type: 'tap' | 'packet' | 'stream';
  ifname?: string;
  path?: string;
  /** TAP ports: IFF_VNET_HDR + TSO/checksum offloads (default true). Never for a TAP a QEMU backend restores onto. */
  offload?: boolean;
}

export interface SwitchConfig {
  id: string;
  tunnel?: { address: string; port: number; underlayMtu?: number; offload?: boolean };
  control?: string;
  peers: { id: string; address: string; port: number }[];
  vnes: { name: string; vni: number; generation?: number; peers?: string[] }[];
  ports: PortSpec[];
  static: { vne: string; mac: string; peer?: string; port?: string }[];
}

function str(o: Record<string, unknown>, key: string, where: string, optional = false): string | undefined {
  const v = o[key];
  if (v === undefined && optional) return undefined;
  if (typeof v !== 'string' || v.length === 0) fail(`${where}.${key} must be a non-empty string`);
  return v;
}

function int(o: Record<string, unknown>, key: string, where: string, min: number, max: number, optional = false): number | undefined {
  const v = o[key];
  if (v === undefined && optional) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) fail(`${where}.${key} must be an integer ${min}..${max}, got ${JSON.stringify(v)}`);
  return v;
}

function obj(v: unknown, where: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(`${where} must be an object`);
  return v as Record<string, unknown>;
}

function arr(v: unknown, where: string): unknown[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) fail(`${where} must be an array`);
  return v;
}

const KEYS = ['id', 'tunnel', 'control', 'peers', 'vnes', 'ports', 'static'];

/** Parse a configuration's text; `source` (the file) is named in the messages. */
export function parseSwitchConfig(text: string, source = 'config'): SwitchConfig {
  return switchConfigFrom(parseJsonObject(text, source), source);
}

/** Read and parse a configuration file. */
export function loadSwitchConfig(file: string): SwitchConfig {
  return switchConfigFrom(readJsonObjectFile(file), file);
}

function switchConfigFrom(o: Record<string, unknown>, source: string): SwitchConfig {
  rejectUnknownKeys(o, KEYS, source, { noun: 'field' });
  const cfg: SwitchConfig = { id: str(o, 'id', source) as string, peers: [], vnes: [], ports: [], static: [] };
  if (o['tunnel'] !== undefined) {
    const t = obj(o['tunnel'], `${source}.tunnel`);
    cfg.tunnel = {
      address: str(t, 'address', 'tunnel') as string,
      port: int(t, 'port', 'tunnel', 0, 65535) as number,
    };
    const mtu = int(t, 'underlayMtu', 'tunnel', 576, 65535, true);
    if (mtu !== undefined) cfg.tunnel.underlayMtu = mtu;
    if (t['offload'] !== undefined) {
      if (typeof t['offload'] !== 'boolean') fail('tunnel.offload must be true or false');
      cfg.tunnel.offload = t['offload'];
    }
  }
  const control = str(o, 'control', source, true);
  if (control !== undefined) cfg.control = control;
  arr(o['peers'], 'peers').forEach((p, i) => {
    const po = obj(p, `peers[${i}]`);
    const id = str(po, 'id', `peers[${i}]`) as string;
    if (cfg.peers.some((x) => x.id === id)) fail(`peers[${i}].id: peer "${id}" is listed twice`);
    cfg.peers.push({ id, address: str(po, 'address', `peers[${i}]`) as string, port: int(po, 'port', `peers[${i}]`, 1, 65535) as number });
  });
  arr(o['vnes'], 'vnes').forEach((v, i) => {
    const vo = obj(v, `vnes[${i}]`);
    const peers = arr(vo['peers'], `vnes[${i}].peers`).map((p, j) => {
      if (typeof p !== 'string') fail(`vnes[${i}].peers[${j}] must be a peer id`);
      if (!cfg.peers.some((x) => x.id === p)) fail(`vnes[${i}].peers[${j}]: no peer with id "${p}"`);
      return p;
    });
    const vne: SwitchConfig['vnes'][number] = { name: str(vo, 'name', `vnes[${i}]`) as string, vni: int(vo, 'vni', `vnes[${i}]`, 0, 0xffffff) as number, peers };
    if (cfg.vnes.some((x) => x.name === vne.name)) fail(`vnes[${i}].name: VNE "${vne.name}" is listed twice`);
    if (cfg.vnes.some((x) => x.vni === vne.vni)) fail(`vnes[${i}].vni: VNI ${vne.vni} is used by two VNEs`);
    const gen = int(vo, 'generation', `vnes[${i}]`, 0, 0xffffffff, true);
    if (gen !== undefined) vne.generation = gen;
    cfg.vnes.push(vne);
  });
  arr(o['ports'], 'ports').forEach((p, i) => {
    const po = obj(p, `ports[${i}]`);
    const type = po['type'];
    if (type !== 'tap' && type !== 'packet' && type !== 'stream') fail(`ports[${i}].type must be "tap", "packet" or "stream", got ${JSON.stringify(type)}`);
    const spec: PortSpec = { name: str(po, 'name', `ports[${i}]`) as string, vne: str(po, 'vne', `ports[${i}]`) as string, type };
    if (!cfg.vnes.some((v) => v.name === spec.vne)) fail(`ports[${i}].vne: no VNE named "${spec.vne}"`);
    if (po['offload'] !== undefined) {
      if (type !== 'tap') fail(`ports[${i}].offload applies to "tap" ports only`);
      if (typeof po['offload'] !== 'boolean') fail(`ports[${i}].offload must be true or false`);
      spec.offload = po['offload'];
    }
    if (type === 'stream') spec.path = str(po, 'path', `ports[${i}]`) as string;
    else {
      spec.ifname = str(po, 'ifname', `ports[${i}]`) as string;
      if (spec.ifname.length > 15) fail(`ports[${i}].ifname "${spec.ifname}" is longer than 15 characters (the kernel's IFNAMSIZ)`);
    }
    cfg.ports.push(spec);
  });
  arr(o['static'], 'static').forEach((s, i) => {
    const so = obj(s, `static[${i}]`);
    const e: SwitchConfig['static'][number] = { vne: str(so, 'vne', `static[${i}]`) as string, mac: str(so, 'mac', `static[${i}]`) as string };
    const peer = str(so, 'peer', `static[${i}]`, true);
    const port = str(so, 'port', `static[${i}]`, true);
    if ((peer === undefined) === (port === undefined)) fail(`static[${i}] needs exactly one of "peer" or "port"`);
    const vne = cfg.vnes.find((v) => v.name === e.vne);
    if (!vne) fail(`static[${i}].vne: no VNE named "${e.vne}"`);
    if (peer !== undefined && !(vne.peers ?? []).includes(peer)) fail(`static[${i}].peer: "${peer}" is not a peer of VNE ${e.vne}`);
    if (peer !== undefined) e.peer = peer;
    if (port !== undefined) e.port = port;
    cfg.static.push(e);
  });
  return cfg;
}
