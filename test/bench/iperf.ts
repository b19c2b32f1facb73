/**
 * iperf3 runs between two namespaces: TCP throughput and 64-byte-frame UDP packet rate.
 *
 * Each run starts its own one-shot server (`iperf3 -s -1`), so a run that breaks (lost
 * end-of-test exchange, dead dataplane) cannot wedge the next one.
 */
import { ChildProcess } from 'node:child_process';
import { stopChild, Topology } from '../support/netns';
import { collectOutput, runInNs } from './proc';

/** UDP payload giving 60-byte Ethernet frames (64 with FCS): 14 + 20 + 8 + 18. */
export const UDP64_PAYLOAD = 18;

export interface TcpResult {
  gbps: number;
  retransmits: number | null;
}

export interface UdpResult {
  /** Frames delivered to the receiving VM interface (rx_packets delta) per second, thousands. */
  kpps: number;
  /** Datagrams the iperf3 server actually received per second, thousands. */
  appKpps: number;
  /** Datagrams the client sent per second, thousands. */
  sentKpps: number;
  /** Average received frame size on the interface (bytes, without FCS). */
  frameBytes: number;
}

async function startServer(topo: Topology, ns: string, bindAddr: string, port: number): Promise<ChildProcess> {
  const child = topo.spawn(ns, 'iperf3', ['-s', '-1', '-B', bindAddr, '-p', String(port), '--forceflush']);
  const out = collectOutput(child);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`iperf3 server did not start: ${out.stderr()}`));
    }, 5000);
    const onData = (): void => {
      if (/Server listening/.test(out.stdout())) {
        cleanup();
        resolve();
      }
    };
    const onExit = (): void => {
      cleanup();
      reject(new Error(`iperf3 server exited: ${out.stderr()}${out.stdout()}`));
    };
    function cleanup(): void {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
    }
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
    onData();
  });
  return child;
}

interface IperfJson {
  error?: string;
  end?: {
    sum_sent?: { seconds?: number; bytes?: number; bits_per_second?: number; retransmits?: number; packets?: number };
    sum_received?: { seconds?: number; bytes?: number; bits_per_second?: number; packets?: number; lost_packets?: number };
  };
}

async function client(topo: Topology, ns: string, args: string[], durationS: number): Promise<IperfJson> {
  const r = await runInNs(topo.ns(ns), 'iperf3', [...args, '-J', '--connect-timeout', '3000'], { timeoutMs: (durationS + 25) * 1000 });
  let j: IperfJson;
  try {
    j = JSON.parse(r.stdout) as IperfJson;
  } catch {
    throw new Error(`iperf3 client: ${r.timedOut ? 'timed out; ' : ''}exit ${r.code}: ${r.stderr.trim() || r.stdout.trim().slice(0, 500)}`);
  }
  if (j.error) throw new Error(`iperf3: ${j.error}`);
  if (r.timedOut) throw new Error('iperf3 client timed out');
  return j;
}

export interface Endpoints {
  clientNs: string;
  serverNs: string;
  serverAddr: string;
  /** The receiving VM's interface (in serverNs), for the frame counter. */
  serverIf: string;
  port?: number;
}

export async function tcpRun(topo: Topology, ep: Endpoints, durationS: number): Promise<TcpResult> {
  const port = ep.port ?? 5201;
  const server = await startServer(topo, ep.serverNs, ep.serverAddr, port);
  try {
    const j = await client(topo, ep.clientNs, ['-c', ep.serverAddr, '-p', String(port), '-t', String(durationS)], durationS);
    const bps = j.end?.sum_received?.bits_per_second;
    if (typeof bps !== 'number') throw new Error('iperf3 JSON lacks end.sum_received.bits_per_second');
    return { gbps: bps / 1e9, retransmits: j.end?.sum_sent?.retransmits ?? null };
  } finally {
    await stopChild(server, 1000);
  }
}

export function rxPackets(topo: Topology, ns: string, ifname: string): { packets: number; bytes: number } {
  const out = topo.exec(ns, 'ip', ['-j', '-s', 'link', 'show', 'dev', ifname]);
  const j = JSON.parse(out) as Array<{ stats64?: { rx?: { packets?: number; bytes?: number } } }>;
  const rx = j[0]?.stats64?.rx;
  if (typeof rx?.packets !== 'number' || typeof rx.bytes !== 'number') throw new Error(`no rx stats for ${ifname}`);
  return { packets: rx.packets, bytes: rx.bytes };
}

/**
 * 64-byte frames at a high offered rate (`rate` is iperf3's -b per stream; "0" = as fast as the
 * client can; `streams` is iperf3's -P).
 * The figure is frames delivered to the receiving VM's interface per second of sending.
 */
export async function udp64Run(topo: Topology, ep: Endpoints, durationS: number, rate: string, streams = 1): Promise<UdpResult> {
  const port = ep.port ?? 5201;
  const server = await startServer(topo, ep.serverNs, ep.serverAddr, port);
  try {
    const before = rxPackets(topo, ep.serverNs, ep.serverIf);
    const j = await client(
      topo,
      ep.clientNs,
      ['-c', ep.serverAddr, '-p', String(port), '-u', '-l', String(UDP64_PAYLOAD), '-b', rate, '-t', String(durationS), '-P', String(streams)],
      durationS,
    );
    const after = rxPackets(topo, ep.serverNs, ep.serverIf);
    const sent = j.end?.sum_sent;
    const recv = j.end?.sum_received;
    const secs = sent?.seconds ?? durationS;
    const frames = after.packets - before.packets;
    const appPackets = typeof recv?.bytes === 'number' ? recv.bytes / UDP64_PAYLOAD : (recv?.packets ?? 0) - (recv?.lost_packets ?? 0);
    return {
      kpps: frames / secs / 1000,
      appKpps: appPackets / (recv?.seconds || secs) / 1000,
      sentKpps: (sent?.packets ?? (sent?.bytes ?? 0) / UDP64_PAYLOAD) / secs / 1000,
      frameBytes: frames > 0 ? (after.bytes - before.bytes) / frames : 0,
    };
  } finally {
    await stopChild(server, 1000);
  }
}
