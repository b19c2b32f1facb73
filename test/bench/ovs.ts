/**
 * Open vSwitch userspace-datapath baseline: one ovsdb-server + ovs-vswitchd per host namespace,
 * started by us (no system service), with every socket, database, pidfile and log under a
 * private directory.
 *
 * Per host (OVS "userspace tunneling" layout, since the netdev datapath does Geneve itself):
 *   brphy (netdev) ── underlay veth; the underlay address lives on brphy's internal port, so
 *                     OVS's own route/ARP tables resolve the tunnel's next hop
 *   brint (netdev) ── tap port (type=tap) moved into the VM namespace
 *                 └── geneve port, key=vni, remote_ip=peer underlay address
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ChildProcess } from 'node:child_process';
import { sh, Topology } from '../support/netns';
import { collectOutput } from './proc';
import { until } from '../support/wait';

export interface OvsHostSpec {
  /** Host namespace (short name). */
  host: string;
  /** Underlay interface already in the host namespace (no address on it). */
  underlayIf: string;
  /** Underlay address with prefix length, put on brphy, e.g. 10.77.0.1/24. */
  underlayCidr: string;
  peerAddress: string;
  vni: number;
  /** Tap port name; moved to vmNs with vmCidr and vmMtu. */
  tapName: string;
  vmNs: string;
  vmCidr: string;
  vmMtu: number;
  tunnel: 'geneve' | 'vxlan';
}

export interface OvsHost {
  spec: OvsHostSpec;
  dir: string;
  vsctl(args: readonly string[]): string;
  appctl(args: readonly string[]): string;
  logTail(): string;
}

const SCHEMA_CANDIDATES = ['/usr/share/openvswitch/vswitch.ovsschema', '/usr/local/share/openvswitch/vswitch.ovsschema'];

export function ovsAvailable(): string | null {
  for (const bin of ['ovsdb-server', 'ovs-vswitchd', 'ovs-vsctl', 'ovsdb-tool', 'ovs-appctl']) {
    if (!sh('sh', ['-c', `command -v ${bin}`], { allowFail: true }).trim()) return `${bin} not found (apt-get install openvswitch-switch)`;
  }
  if (!SCHEMA_CANDIDATES.some((p) => fs.existsSync(p))) return 'vswitch.ovsschema not found';
  return null;
}

/** until(), polling every 50 ms, with the daemon's diagnostics in the timeout error. */
async function untilOr(cond: () => boolean, timeoutMs: number, what: string, diag: () => string): Promise<void> {
  await until(what, cond, { timeoutMs, everyMs: 50 }).catch((e: Error) => {
    throw new Error(`${e.message}: ${diag()}`);
  });
}

function exited(c: ChildProcess): boolean {
  return c.exitCode !== null || c.signalCode !== null;
}

/**
 * Start OVS for one host and build its bridges. The daemons are spawned through topo, so
 * topo.destroy() stops them (SIGTERM, then SIGKILL).
 */
export async function startOvsHost(topo: Topology, baseDir: string, spec: OvsHostSpec): Promise<OvsHost> {
  const dir = path.join(baseDir, `ovs-${spec.host}`);
  fs.mkdirSync(dir, { recursive: true });
  const schema = SCHEMA_CANDIDATES.find((p) => fs.existsSync(p)) as string;
  const db = path.join(dir, 'conf.db');
  const dbSock = path.join(dir, 'db.sock');
  const ctl = path.join(dir, 'ovs-vswitchd.ctl');
  sh('ovsdb-tool', ['create', db, schema]);
  const env = { ...process.env, OVS_RUNDIR: dir, OVS_DBDIR: dir, OVS_LOGDIR: dir, OVS_SYSCONFDIR: dir, OVS_PKGDATADIR: path.dirname(schema) };

  const dbServer = topo.spawn(
    spec.host,
    'ovsdb-server',
    [db, `--remote=punix:${dbSock}`, `--pidfile=${path.join(dir, 'ovsdb-server.pid')}`, `--unixctl=${path.join(dir, 'ovsdb-server.ctl')}`, `--log-file=${path.join(dir, 'ovsdb-server.log')}`, '-vconsole:off'],
    { env },
  );
  const dbOut = collectOutput(dbServer);
  await untilOr(() => fs.existsSync(dbSock) || exited(dbServer), 10_000, 'ovsdb-server socket', () => dbOut.stderr());
  if (exited(dbServer)) throw new Error(`ovsdb-server exited: ${dbOut.stderr()}`);

  const vsctl = (args: readonly string[]): string => sh('ovs-vsctl', [`--db=unix:${dbSock}`, '--timeout=20', ...args]);
  const appctl = (args: readonly string[]): string => sh('ovs-appctl', ['-t', ctl, ...args]);
  vsctl(['--no-wait', 'init']);

  const vswitchd = topo.spawn(
    spec.host,
    'ovs-vswitchd',
    [`unix:${dbSock}`, `--pidfile=${path.join(dir, 'ovs-vswitchd.pid')}`, `--unixctl=${ctl}`, `--log-file=${path.join(dir, 'ovs-vswitchd.log')}`, '-vconsole:off'],
    { env },
  );
  const swOut = collectOutput(vswitchd);
  const logTail = (): string => {
    try {
      return fs.readFileSync(path.join(dir, 'ovs-vswitchd.log'), 'utf8').split('\n').slice(-30).join('\n');
    } catch {
      return swOut.stderr();
    }
  };
  await untilOr(() => fs.existsSync(ctl) || exited(vswitchd), 10_000, 'ovs-vswitchd control socket', logTail);
  if (exited(vswitchd)) throw new Error(`ovs-vswitchd exited: ${swOut.stderr()} ${logTail()}`);

  // Underlay bridge: the physical (veth) port, and the host's tunnel address on brphy itself.
  vsctl(['add-br', 'brphy', '--', 'set', 'bridge', 'brphy', 'datapath_type=netdev']);
  vsctl(['add-port', 'brphy', spec.underlayIf]);
  topo.exec(spec.host, 'ip', ['addr', 'add', spec.underlayCidr, 'dev', 'brphy']);
  topo.exec(spec.host, 'ip', ['link', 'set', 'brphy', 'up']);

  // Integration bridge: the VM's tap and the tunnel.
  vsctl(['add-br', 'brint', '--', 'set', 'bridge', 'brint', 'datapath_type=netdev']);
  vsctl(['add-port', 'brint', spec.tapName, '--', 'set', 'interface', spec.tapName, 'type=tap']);
  vsctl([
    'add-port', 'brint', 'tun0', '--', 'set', 'interface', 'tun0', `type=${spec.tunnel}`,
    `options:remote_ip=${spec.peerAddress}`, `options:key=${spec.vni}`,
  ]);
  // ovs-vsctl (without --no-wait) returns once ovs-vswitchd applied the change, so the tap exists.
  await untilOr(
    () => topo.exec(spec.host, 'ip', ['link', 'show', 'dev', spec.tapName], { allowFail: true }) !== '',
    5000,
    `tap ${spec.tapName}`,
    logTail,
  );
  topo.moveLink(spec.host, spec.tapName, spec.vmNs, spec.vmCidr, spec.vmMtu);
  return { spec, dir, vsctl, appctl, logTail };
}

/** A one-line description of the OVS build, for the report. */
export function ovsVersion(): string {
  return sh('ovs-vswitchd', ['--version'], { allowFail: true }).split('\n')[0]?.trim() ?? '';
}
