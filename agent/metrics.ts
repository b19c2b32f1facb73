/**
 * The agent's Prometheus metrics: one prom-client Registry per Agent (never the global one, so
 * many agents can live in one process), and a tiny HTTP server for `/metrics` used by main.
 *
 * Switch counters are read from `Switch.stats()` (typed) at scrape time (no work on the data
 * path): every per-port counter as `vnsnap_switch_port_*{port}`, every switch-wide counter as
 * `vnsnap_switch_counter{name}` (the tunnel's hardening counters too: `unknownCriticalOption`,
 * `markersOutOfWindow`, `markersOverCap`, `markersInvalid`, `acksOutOfWindow`, `dataEpochAhead`), and per VNE its epoch, generation, FDB size and FDB counters
 * (`vnsnap_switch_vne_*{vne}`, `vnsnap_switch_fdb_*{vne}`).
 */
import * as http from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { SwitchStats } from '../switch/stats';
import { newSwitchCounters } from '../switch/stats';

export type StatsSource = () => SwitchStats;

const NO_STATS: SwitchStats = { ...newSwitchCounters(), ports: {}, vnes: {}, peers: {} };

type PortCounter = 'rxFrames' | 'txFrames' | 'superFramesIn' | 'superFramesOut' | 'txDrops' | 'txRefused' | 'held' | 'holdDrops' | 'recorded' | 'runts' | 'injected' | 'lateInFlight' | 'gateDrops' | 'epoch' | 'heldBytes' | 'gateBytes';
type VneValue = 'epoch' | 'generation' | 'fdbSize' | 'ports';
type FdbCounter = 'learned' | 'moved' | 'aged' | 'evicted';

export class AgentMetrics {
  readonly registry: Registry;
  readonly phaseSeconds: Histogram<'phase'>;
  readonly pauseSeconds: Histogram<'mode'>;
  readonly lastPauseMs: Gauge<'vm'>;
  readonly commands: Counter<'command' | 'result'>;
  readonly connected: Gauge;
  readonly reconnects: Counter;
  private stats: StatsSource = () => NO_STATS;

  constructor(registry = new Registry(), labels: Record<string, string> = {}) {
    this.registry = registry;
    if (Object.keys(labels).length > 0) registry.setDefaultLabels(labels);
    const stats = (): SwitchStats => this.stats();
    /** A gauge with one label whose (label value, value) rows are read from the stats at scrape time. */
    const gauge = (name: string, help: string, label: string, rows: (s: SwitchStats) => [string, number][]): void => {
      new Gauge({
        name,
        help,
        labelNames: [label],
        registers: [registry],
        collect() {
          this.reset();
          for (const [l, v] of rows(stats())) this.set({ [label]: l }, v);
        },
      });
    };
    const portGauge = (name: string, help: string, c: PortCounter): void => gauge(name, help, 'port', (s) => Object.entries(s.ports).map(([n, p]) => [n, p[c]]));
    const vneGauge = (name: string, help: string, c: VneValue): void => gauge(name, help, 'vne', (s) => Object.entries(s.vnes).map(([n, v]) => [n, v[c]]));
    const fdbGauge = (name: string, help: string, c: FdbCounter): void => gauge(name, help, 'vne', (s) => Object.entries(s.vnes).map(([n, v]) => [n, v.fdb[c]]));
    portGauge('vnsnap_switch_port_rx_frames', 'Frames the switch read from a VM port', 'rxFrames');
    portGauge('vnsnap_switch_port_tx_frames', 'Frames the switch wrote to a VM port', 'txFrames');
    portGauge('vnsnap_switch_port_super_frames_in', 'TCP super-frames (with a virtio_net_hdr) the switch read from a VM port, each one of rx_frames', 'superFramesIn');
    portGauge('vnsnap_switch_port_super_frames_out', 'TCP super-frames a VM port accepted whole (delivered or injected), each one of its frames', 'superFramesOut');
    portGauge('vnsnap_switch_port_tx_drops', 'Frames a VM port did not accept', 'txDrops');
    portGauge('vnsnap_switch_port_tx_refused', 'Frames the kernel refused one by one when written to a VM port (too long, a bad header), each one of tx_drops', 'txRefused');
    portGauge('vnsnap_switch_port_held_frames', 'Future frames held for a port (snapshot rule e(f) > e(d) or gated)', 'held');
    portGauge('vnsnap_switch_port_hold_drops', 'Frames dropped because the hold buffer was full', 'holdDrops');
    portGauge('vnsnap_switch_port_recorded_frames', 'In-flight frames recorded as channel state', 'recorded');
    portGauge('vnsnap_switch_port_injected_frames', 'Recorded frames injected at restore', 'injected');
    portGauge('vnsnap_switch_port_epoch', 'Snapshot epoch of a port', 'epoch');
    portGauge('vnsnap_switch_port_runts', 'Frames shorter than an Ethernet header read from a VM port', 'runts');
    portGauge('vnsnap_switch_port_late_in_flight', 'Older-epoch frames delivered to a port with no recording in progress', 'lateInFlight');
    portGauge('vnsnap_switch_port_held_bytes', 'Bytes held for a port by the snapshot rules', 'heldBytes');
    portGauge('vnsnap_switch_port_gate_drops', 'Frames dropped because the restore gate was full', 'gateDrops');
    portGauge('vnsnap_switch_port_gate_bytes', "Bytes kept behind a port's restore gate", 'gateBytes');
    gauge('vnsnap_switch_counter', 'Switch-wide counters (tunnelRx, tunnelTx, markersSent, markersReceived, drops by reason, unknownCriticalOption, markersOutOfWindow, markersOverCap, markersInvalid, ...)', 'name', (s) =>
      Object.entries(s).filter((e): e is [string, number] => typeof e[1] === 'number'),
    );
    vneGauge('vnsnap_switch_vne_epoch', 'Highest snapshot epoch every local port of a VNE has passed', 'epoch');
    vneGauge('vnsnap_switch_vne_generation', 'Generation of a VNE (data frames of another generation are dropped)', 'generation');
    vneGauge('vnsnap_switch_vne_ports', 'Local ports attached to a VNE', 'ports');
    vneGauge('vnsnap_switch_fdb_entries', "Entries in a VNE's forwarding database", 'fdbSize');
    fdbGauge('vnsnap_switch_fdb_learned', "MACs learned (new entries) in a VNE's forwarding database", 'learned');
    fdbGauge('vnsnap_switch_fdb_moved', 'Learned MACs that moved to another port or peer', 'moved');
    fdbGauge('vnsnap_switch_fdb_aged', 'Learned entries removed by aging', 'aged');
    fdbGauge('vnsnap_switch_fdb_evicted', 'Entries evicted at the size cap', 'evicted');
    this.phaseSeconds = new Histogram({
      name: 'vnsnap_agent_snapshot_phase_seconds',
      help: 'Duration of snapshot and restore phases on this agent',
      labelNames: ['phase'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: [registry],
    });
    this.pauseSeconds = new Histogram({
      name: 'vnsnap_agent_vm_pause_seconds',
      help: 'VM downtime per snapshot (pause to resume)',
      labelNames: ['mode'],
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2],
      registers: [registry],
    });
    this.lastPauseMs = new Gauge({ name: 'vnsnap_agent_vm_last_pause_ms', help: 'Pause of the last snapshot of each VM (ms)', labelNames: ['vm'], registers: [registry] });
    this.commands = new Counter({ name: 'vnsnap_agent_commands_total', help: 'Commands executed, by command and result', labelNames: ['command', 'result'], registers: [registry] });
    this.connected = new Gauge({ name: 'vnsnap_agent_session_connected', help: '1 while the session with the coordinator is up', registers: [registry] });
    this.reconnects = new Counter({ name: 'vnsnap_agent_session_reconnects_total', help: 'Session attempts after the first', registers: [registry] });
  }

  /** Where switch counters come from (the agent's switch). */
  setStatsSource(s: StatsSource): void {
    this.stats = s;
  }
}

/**
 * Serve `/metrics` of a registry on host:port (port 0 = ephemeral); resolves with the bound port.
 * `debug`, when given, is served read-only as JSON at `/debug/vms` (GET only). Without it the
 * route does not exist (404 like any unknown path): the agent passes it only when its config
 * enables `debugVms`, because the view holds every VM's spec and state.
 */
export async function serveMetrics(registry: Registry, port: number, host = '127.0.0.1', debug?: () => unknown): Promise<{ server: http.Server; port: number }> {
  const server = http.createServer((req, res) => {
    const route = req.url?.split('?')[0];
    if (debug && route === '/debug/vms' && req.method === 'GET') {
      let body: string;
      try {
        // Binary fields (a driver's state may hold a memory copy) are summarised, not dumped.
        body = JSON.stringify(debug(), function (this: Record<string, unknown>, key: string, value: unknown) {
          const raw = this[key];
          return ArrayBuffer.isView(raw) ? { bytes: raw.byteLength } : value;
        });
      } catch (e) {
        res.writeHead(500).end(`${(e as Error).message}\n`);
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(`${body}\n`);
      return;
    }
    if (route !== '/metrics') {
      res.writeHead(404).end('not found\n');
      return;
    }
    registry.metrics().then(
      (body) => res.writeHead(200, { 'content-type': registry.contentType }).end(body),
      (e: Error) => res.writeHead(500).end(`${e.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const addr = server.address();
  return { server, port: typeof addr === 'object' && addr ? addr.port : port };
}
