/**
 * The agent's Prometheus metrics: one prom-client Registry per Agent (never the global one, so
 * many agents can live in one process), and a tiny HTTP server for `/metrics` used by main.
 *
 * Switch counters are read from `Switch.stats()` at scrape time (no work on the data path).
 */
import * as http from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export type StatsSource = () => Record<string, number>;

export class AgentMetrics {
  readonly registry: Registry;
  readonly phaseSeconds: Histogram<'phase'>;
  readonly pauseSeconds: Histogram<'mode'>;
  readonly lastPauseMs: Gauge<'vm'>;
  readonly commands: Counter<'command' | 'result'>;
  readonly connected: Gauge;
  readonly reconnects: Counter;
  private stats: StatsSource = () => ({});

  constructor(registry = new Registry(), labels: Record<string, string> = {}) {
    this.registry = registry;
    if (Object.keys(labels).length > 0) registry.setDefaultLabels(labels);
    const stats = (): Record<string, number> => this.stats();
    const portGauge = (name: string, help: string, counter: string, extra?: Record<string, string>): void => {
      new Gauge({
        name,
        help,
        labelNames: ['port', ...Object.keys(extra ?? {})],
        registers: [registry],
        collect() {
          this.reset();
          for (const [k, v] of Object.entries(stats())) {
            const m = /^port\.(.+)\.([A-Za-z]+)$/.exec(k);
            if (m && m[2] === counter) this.set({ port: m[1] as string, ...(extra ?? {}) }, v);
          }
        },
      });
    };
    portGauge('vnsnap_switch_port_rx_frames', 'Frames the switch read from a VM port', 'rxFrames');
    portGauge('vnsnap_switch_port_tx_frames', 'Frames the switch wrote to a VM port', 'txFrames');
    portGauge('vnsnap_switch_port_tx_drops', 'Frames a VM port did not accept', 'txDrops');
    portGauge('vnsnap_switch_port_held_frames', 'Future frames held for a port (snapshot rule e(f) > e(d) or gated)', 'held');
    portGauge('vnsnap_switch_port_hold_drops', 'Frames dropped because the hold buffer was full', 'holdDrops');
    portGauge('vnsnap_switch_port_recorded_frames', 'In-flight frames recorded as channel state', 'recorded');
    portGauge('vnsnap_switch_port_injected_frames', 'Recorded frames injected at restore', 'injected');
    portGauge('vnsnap_switch_port_epoch', 'Snapshot epoch of a port', 'epoch');
    new Gauge({
      name: 'vnsnap_switch_counter',
      help: 'Switch-wide counters (tunnelRx, tunnelTx, markersSent, markersReceived, drops by reason, ...)',
      labelNames: ['name'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [k, v] of Object.entries(stats())) if (!k.includes('.')) this.set({ name: k }, v);
      },
    });
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
 * `debug`, when given, is served read-only as JSON at `/debug/vms` (GET only).
 */
export async function serveMetrics(registry: Registry, port: number, host = '0.0.0.0', debug?: () => unknown): Promise<{ server: http.Server; port: number }> {
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
