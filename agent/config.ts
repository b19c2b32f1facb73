/**
 * The agent's configuration: a JSON file with the same keys as the command-line flags, flags
 * overriding the file. Validation is strict and every mistake is one line naming the field
 * (ERR_CONFIG), which main prints before exiting with status 2. The driver names accepted are
 * the product drivers (DriverKind) unless the caller passes its own list (the test entry point
 * test/sim/agent-main.ts adds its simulated driver).
 *
 *   {
 *     "id": "h1",
 *     "coordinator": "10.0.0.1:7443",
 *     "tunnel": "10.77.0.1:6081",          // address:port the switch binds (port 0 = ephemeral)
 *     "advertise": "10.77.0.1",            // optional: the address peers reach (default: tunnel's)
 *     "tunnelOffload": true,               // optional: UDP GSO/GRO on the tunnel (default: on where the kernel has them)
 *     "store": "/var/lib/vnsnap/store",     // or { "dir": D, "layout": "files" }, or { "s3": {...} } (below)
 *     "metricsPort": 9464,                 // optional; 0 = ephemeral; absent = no metrics server
 *     "metricsAddress": "127.0.0.1",       // optional: the address /metrics binds (default loopback)
 *     "debugVms": false,                   // optional: also serve GET /debug/vms (default off)
 *     "logLevel": "info",                  // optional
 *     "drivers": ["qemu"],                 // optional; "qemu", "xen" (in dom0)
 *     "imageRoots": ["/var/lib/vnsnap/images"],  // optional: where VM images may come from
 *     "stateDir": "/var/lib/vnsnap",       // optional: records of the VMs that outlive the agent (vms/) and the VMs' disks (disks/)
 *     "tls": { "ca": "/etc/vnsnap/pki/ca.pem", "cert": "/etc/vnsnap/pki/agent-h1.pem",
 *              "key": "/etc/vnsnap/pki/agent-h1-key.pem" },   // mutual TLS to the coordinator
 *     "insecurePlaintext": false,          // true: no TLS, allowed only for a loopback coordinator
 *     "dataPath": { "vxlanPort": 6082 }    // optional: the in-kernel data path (default: on where it can run; below)
 *   }
 *
 * store: where snapshots go, in any form proto/store/store-config.ts parses — a directory (a
 * content-addressed store there), { "dir": D, "layout": "files" } (whole files, the layout before
 * chunks) or { "s3": { "endpoint", "bucket", "region"?, "credentialsFile"? } }; the --store flag
 * names a directory. The coordinator and every agent must name the same store
 * (docs/storage.md, "Pointing vnsnap at a store").
 * imageRoots: the directories every kernel, initrd, ramdisk and disk of a VM must be under
 * (after symlinks are resolved; agent/drivers/image-root.ts). Absolute, normalised paths; "/"
 * is refused (it would admit every file of the host). Default DEFAULT_IMAGE_ROOTS.
 * dataPath: the in-kernel data path (docs/nic-offloads.md, "The in-kernel data path"): the agent
 * loads it at start and its switch lets the kernel carry the frames of `nic: 'tap-bpf'` ports.
 * Absent: on where it can run — the agent runs the QEMU driver and the loader succeeds (the
 * object built at install, bpftool and tc present, the kernel takes the programs) — and off,
 * with one line giving the loader's reason, where it cannot; new QEMU VMs whose spec names no
 * nic then get tap-bpf or tap-vnet accordingly. `false`: off. `true` or { "vxlanPort": N }:
 * required (the agent refuses to start where it cannot run). The VXLAN UDP port (default 6082)
 * is registered with the coordinator; the kernel carries only between agents on the same port
 * (the rest crosses the switches' Geneve); two agents in one network namespace each need their
 * own.
 * Without "tls" the agent refuses to start unless insecurePlaintext is set and the coordinator
 * address is loopback (proto/core/tls.ts checkTransport).
 */
import { isIP } from 'node:net';
import * as path from 'node:path';
import { configError as fail, readJsonObjectFile, rejectUnknownKeys } from '../proto/core/config';
import { checkTransport, parseTlsFiles, tlsFromFlags, type TlsFiles } from '../proto/core/tls';
import type { DriverKind } from './drivers/driver';
import { parseStoreConfig, type StoreConfig } from '../proto/store/store-config';
import { DEFAULT_IMAGE_ROOTS } from './drivers/image-root';
import { DEFAULT_STATE_DIR } from './vm-state';
import { DP_VXLAN_PORT } from './bpf-dp/rx-side';

export interface DataPathConfig {
  vxlanPort: number;
  /** Named in the configuration (true or an object): the agent refuses to start where it cannot run. */
  required: boolean;
}

export interface AgentConfig {
  id: string;
  coordinator: string;
  tunnel: { address: string; port: number };
  advertise?: string;
  /** UDP GSO/GRO on the tunnel: false = off; absent or true = on where the kernel has them (probed at start). */
  tunnelOffload?: boolean;
  /** Where snapshots go (parsed; opened by the agent at start). */
  store: StoreConfig;
  metricsPort?: number;
  /** IP address the metrics server binds; absent = 127.0.0.1 (METRICS_DEFAULT_ADDRESS). */
  metricsAddress?: string;
  /** Serve GET /debug/vms (every VM's spec and state) beside /metrics; off unless asked for. */
  debugVms: boolean;
  logLevel: string;
  drivers: string[];
  /** Directories VM images must be under (default DEFAULT_IMAGE_ROOTS). */
  imageRoots: string[];
  /** PEM files for mutual TLS to the coordinator. */
  tls?: TlsFiles;
  /** No TLS (allowed only when the coordinator address is loopback). */
  insecurePlaintext?: boolean;
  /** The agent's state directory (agent/vm-state.ts; default /var/lib/vnsnap). */
  stateDir: string;
  /**
   * The in-kernel data path and its VXLAN UDP port; `required` false: on where it can run (the
   * default), true: refuse to start without it. Absent: off (`dataPath: false`).
   */
  dataPath?: DataPathConfig;
}

const KEYS = ['id', 'coordinator', 'tunnel', 'advertise', 'tunnelOffload', 'store', 'metricsPort', 'metricsAddress', 'debugVms', 'logLevel', 'drivers', 'imageRoots', 'tls', 'insecurePlaintext', 'stateDir', 'dataPath'] as const;
/** Where /metrics and /debug/vms listen unless metricsAddress says otherwise: never the network by default. */
export const METRICS_DEFAULT_ADDRESS = '127.0.0.1';
const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
/** The product drivers. */
export const PRODUCT_DRIVERS: readonly DriverKind[] = ['qemu', 'xen'];

/** "host:port" → parts; port in 0..65535 when allowZero, else 1..65535. */
export function parseHostPort(s: unknown, field: string, allowZero: boolean): { host: string; port: number } {
  if (typeof s !== 'string' || s.trim() === '') fail(`${field}: expected "host:port", got ${JSON.stringify(s)}`);
  const m = /^(.+):(\d{1,5})$/.exec(s.trim());
  if (!m) fail(`${field}: expected "host:port", got "${s}"`);
  const port = Number(m[2]);
  if (port > 65535 || (!allowZero && port === 0)) fail(`${field}: port ${port} is out of range`);
  return { host: (m[1] as string).replace(/^\[(.*)\]$/, '$1'), port };
}

function isIpv4(s: string): boolean {
  const p = s.split('.');
  return p.length === 4 && p.every((x) => /^\d{1,3}$/.test(x) && Number(x) <= 255);
}

/** Validate a raw object (the file merged with the flags). */
export function validateAgentConfig(raw: Record<string, unknown>, knownDrivers: readonly string[] = PRODUCT_DRIVERS): AgentConfig {
  rejectUnknownKeys(raw, KEYS);
  const id = raw.id;
  if (typeof id !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(id)) fail(`id: expected a name of letters, digits, ".", "_" or "-", got ${JSON.stringify(id)}`);
  const coord = parseHostPort(raw.coordinator, 'coordinator', false);
  const tun = parseHostPort(raw.tunnel, 'tunnel', true);
  if (!isIpv4(tun.host)) fail(`tunnel: the address must be IPv4, got "${tun.host}"`);
  if (raw.advertise !== undefined && (typeof raw.advertise !== 'string' || !isIpv4(raw.advertise))) fail(`advertise: expected an IPv4 address, got ${JSON.stringify(raw.advertise)}`);
  if (tun.host === '0.0.0.0' && raw.advertise === undefined) fail('advertise: required when the tunnel binds 0.0.0.0 (peers need an address to reach)');
  if (raw.tunnelOffload !== undefined && typeof raw.tunnelOffload !== 'boolean') fail(`tunnelOffload: expected true or false, got ${JSON.stringify(raw.tunnelOffload)}`);
  const store = parseStoreConfig(raw.store, 'store');
  let metricsPort: number | undefined;
  if (raw.metricsPort !== undefined) {
    const n = typeof raw.metricsPort === 'string' ? Number(raw.metricsPort) : raw.metricsPort;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 65535) fail(`metricsPort: expected 0..65535, got ${JSON.stringify(raw.metricsPort)}`);
    metricsPort = n;
  }
  const metricsAddress = raw.metricsAddress;
  if (metricsAddress !== undefined && (typeof metricsAddress !== 'string' || isIP(metricsAddress) === 0)) fail(`metricsAddress: expected an IPv4 or IPv6 address, got ${JSON.stringify(metricsAddress)}`);
  const debugVms = raw.debugVms === undefined ? false : raw.debugVms;
  if (typeof debugVms !== 'boolean') fail(`debugVms: expected true or false, got ${JSON.stringify(raw.debugVms)}`);
  const logLevel = raw.logLevel ?? 'info';
  if (typeof logLevel !== 'string' || !LEVELS.includes(logLevel)) fail(`logLevel: expected one of ${LEVELS.join(', ')}, got ${JSON.stringify(raw.logLevel)}`);
  const drivers = raw.drivers ?? [];
  if (!Array.isArray(drivers) || drivers.some((d) => typeof d !== 'string' || !knownDrivers.includes(d))) fail(`drivers: expected a list of ${knownDrivers.join(', ')}, got ${JSON.stringify(raw.drivers)}`);
  const imageRoots = validateImageRoots(raw.imageRoots);
  const tls = raw.tls !== undefined ? parseTlsFiles(raw.tls, 'config') : undefined;
  if (raw.insecurePlaintext !== undefined && typeof raw.insecurePlaintext !== 'boolean') fail(`insecurePlaintext: expected true or false, got ${JSON.stringify(raw.insecurePlaintext)}`);
  const insecurePlaintext = raw.insecurePlaintext === true;
  const stateDir = raw.stateDir ?? DEFAULT_STATE_DIR;
  if (typeof stateDir !== 'string' || !path.posix.isAbsolute(stateDir) || stateDir === '/') fail(`stateDir: expected an absolute directory other than "/", got ${JSON.stringify(raw.stateDir)}`);
  const dataPath = validateDataPath(raw.dataPath);
  return {
    id,
    coordinator: `${coord.host}:${coord.port}`,
    tunnel: { address: tun.host, port: tun.port },
    ...(raw.advertise !== undefined ? { advertise: raw.advertise as string } : {}),
    ...(raw.tunnelOffload !== undefined ? { tunnelOffload: raw.tunnelOffload } : {}),
    store,
    ...(metricsPort !== undefined ? { metricsPort } : {}),
    ...(metricsAddress !== undefined ? { metricsAddress } : {}),
    debugVms,
    logLevel,
    drivers: drivers as string[],
    imageRoots,
    ...(tls ? { tls } : {}),
    insecurePlaintext,
    stateDir,
    ...(dataPath ? { dataPath } : {}),
  };
}

/** dataPath: absent (on where it can run), false (off), true (required, port 6082) or { vxlanPort: 1..65535 } (required). */
function validateDataPath(v: unknown): DataPathConfig | undefined {
  if (v === false) return undefined;
  if (v === undefined) return { vxlanPort: DP_VXLAN_PORT, required: false };
  if (v === true) return { vxlanPort: DP_VXLAN_PORT, required: true };
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(`dataPath: expected true, false or { "vxlanPort": N }, got ${JSON.stringify(v)}`);
  rejectUnknownKeys(v as Record<string, unknown>, ['vxlanPort'], 'dataPath');
  const port = (v as { vxlanPort?: unknown }).vxlanPort ?? DP_VXLAN_PORT;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) fail(`dataPath.vxlanPort: expected 1..65535, got ${JSON.stringify(port)}`);
  return { vxlanPort: port, required: true };
}

/** imageRoots: a non-empty list of absolute, normalised directories, not "/" (module comment). */
function validateImageRoots(v: unknown): string[] {
  if (v === undefined) return [...DEFAULT_IMAGE_ROOTS];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.length === 0) fail(`imageRoots: expected a list of directories, got ${JSON.stringify(v)}`);
  for (const r of list) {
    if (typeof r !== 'string' || !path.posix.isAbsolute(r) || path.posix.normalize(r) !== r || (r.endsWith('/') && r !== '/')) fail(`imageRoots: expected absolute, normalised directories, got ${JSON.stringify(r)}`);
    if (r === '/') fail('imageRoots: "/" would let VMs load every file of the host; name the image directories');
  }
  return list as string[];
}

/** Read the file (if any), apply the flags over it, validate, and check the transport rule. */
export function loadAgentConfig(file: string | undefined, flags: Record<string, unknown>, knownDrivers: readonly string[] = PRODUCT_DRIVERS): AgentConfig {
  const raw = file !== undefined ? readJsonObjectFile(file) : {};
  const { tlsCa, tlsCert, tlsKey, ...rest } = flags;
  for (const [k, v] of Object.entries(rest)) if (v !== undefined) raw[k] = v;
  if (tlsCa !== undefined || tlsCert !== undefined || tlsKey !== undefined) {
    raw.tls = tlsFromFlags(raw.tls !== undefined ? parseTlsFiles(raw.tls, 'config') : undefined, { ca: tlsCa as string | undefined, cert: tlsCert as string | undefined, key: tlsKey as string | undefined });
  }
  const cfg = validateAgentConfig(raw, knownDrivers);
  checkTransport(cfg, 'coordinator', cfg.coordinator);
  return cfg;
}
