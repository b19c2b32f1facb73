/**
 * The measurements of bench:vm-net (test/bench/vm-net.ts), the same for every path: iperf3 runs
 * between two guests, each started inside the sending guest over its virtio-serial channel
 * (channelIperf: vnguest runs `iperf3 ... -J` and returns the document; the receiving guest runs
 * `iperf3 -s -D` from boot), and the machine's CPU from /proc/stat around each run.
 *
 * Guarantees: a TCP figure is what iperf3's receiver counted (end.sum_received); a UDP figure is
 * the datagrams the receiver got (sent minus lost, as the receiver reported them) per second of
 * the run; busy cores are every CPU's non-idle, non-iowait time over the wall time of the run,
 * summed over CPUs (2.0 = both cores of a 2-core machine busy). A run iperf3 reports as failed
 * throws with iperf3's message.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { QemuDriverSpec__Output } from '../../proto/gen/vnsnap/v1/QemuDriverSpec';
import { channelIperf, channelStatus } from '../guest/qemu-guest';
import { UDP64_PAYLOAD } from './iperf';

/** One guest of the pair: its name, inner address (CIDR) and MAC. */
export interface PairGuest {
  name: string;
  cidr: string;
  mac: string;
}

/** What every path starts: the two guests, their QEMU spec, and the check that a guest is up. */
export interface PairSetup {
  guests: readonly [PairGuest, PairGuest];
  specOf(g: PairGuest): QemuDriverSpec__Output;
  /** resolves once the guest behind this channel socket answers */
  ready(sock: string): Promise<unknown>;
}

/** The pair's channel sockets (in guest order) and inner addresses. */
export function guestPair(setup: PairSetup, socks: readonly string[]): GuestPair {
  const ip = (i: 0 | 1): string => setup.guests[i].cidr.split('/')[0] as string;
  return { sockA: socks[0] as string, sockB: socks[1] as string, ipA: ip(0), ipB: ip(1) };
}

/** The two guests of a path: their channel sockets (host side) and inner addresses. */
export interface GuestPair {
  sockA: string;
  sockB: string;
  ipA: string;
  ipB: string;
}

export type Direction = 'a->b' | 'b->a';

interface CpuSample {
  busy: number;
  total: number;
}

/** The aggregate "cpu" line of /proc/stat: busy (all but idle and iowait) and total jiffies. */
export function cpuSample(stat = fs.readFileSync('/proc/stat', 'utf8')): CpuSample {
  const line = stat.split('\n').find((l) => l.startsWith('cpu '));
  if (!line) throw new Error('/proc/stat has no aggregate cpu line');
  const v = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = v.reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { busy: total - idle, total };
}

/** Busy cores between two samples (the busy share of all CPU time times the number of CPUs). */
export function busyCores(a: CpuSample, b: CpuSample, cpus: number): number {
  const dt = b.total - a.total;
  return dt > 0 ? ((b.busy - a.busy) / dt) * cpus : 0;
}

/** The machine's softirqs so far by type (/proc/softirqs: RCU, TIMER, NET_RX, ...), summed over CPUs. */
export function softirqSample(text = fs.readFileSync('/proc/softirqs', 'utf8')): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n').slice(1)) {
    const [name, ...counts] = line.trim().split(/\s+/);
    if (name?.endsWith(':')) out[name.slice(0, -1)] = counts.reduce((a, c) => a + Number(c), 0);
  }
  return out;
}

/** Softirqs of type `kind` per second between two samples `seconds` apart. */
export function softirqRate(a: Record<string, number>, b: Record<string, number>, kind: string, seconds: number): number {
  return seconds > 0 ? ((b[kind] ?? 0) - (a[kind] ?? 0)) / seconds : 0;
}

export interface Summary {
  median: number;
  p95: number;
  max: number;
  n: number;
}

/** Median, 95th percentile (nearest rank) and maximum; zeros for no values. */
export function summarize(xs: readonly number[]): Summary {
  if (xs.length === 0) return { median: 0, p95: 0, max: 0, n: 0 };
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  const median = s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
  const p95 = s[Math.min(s.length - 1, Math.ceil(0.95 * s.length) - 1)] as number;
  return { median, p95, max: s[s.length - 1] as number, n: s.length };
}

/**
 * The share of the `windows`' total length during which one of the `busy` intervals was under way
 * (each a [start, end] pair of one clock; overlapping busy intervals count once): what part of the
 * TCP runs a snapshot took, however many started.
 */
export function coveredShare(busy: readonly (readonly [number, number])[], windows: readonly (readonly [number, number])[]): number {
  const merged: [number, number][] = [];
  for (const [s, e] of [...busy].filter(([s, e]) => e > s).sort((x, y) => x[0] - y[0])) {
    const last = merged[merged.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else merged.push([s, e]);
  }
  let total = 0;
  let covered = 0;
  for (const [ws, we] of windows) {
    if (we <= ws) continue;
    total += we - ws;
    for (const [s, e] of merged) covered += Math.max(0, Math.min(e, we) - Math.max(s, ws));
  }
  return total > 0 ? covered / total : 0;
}

/** The 1-, 5- and 15-minute load averages. */
export function loadAverage(): [number, number, number] {
  const [a, b, c] = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').map(Number);
  return [a ?? 0, b ?? 0, c ?? 0];
}

interface IperfEnd {
  error?: string;
  end?: {
    sum_received?: { seconds?: number; bytes?: number; bits_per_second?: number };
    sum_sent?: { retransmits?: number; bytes?: number };
    sum?: { seconds?: number; packets?: number; lost_packets?: number };
  };
}

function sides(p: GuestPair, dir: Direction): { sock: string; server: string } {
  return dir === 'a->b' ? { sock: p.sockA, server: p.ipB } : { sock: p.sockB, server: p.ipA };
}

async function iperf(sock: string, args: string[], seconds: number): Promise<IperfEnd> {
  let j: IperfEnd;
  try {
    j = (await channelIperf(sock, args, (seconds + 40) * 1000)) as IperfEnd;
  } catch (e) {
    throw new Error(`${(e as Error).message}; ${await stallDiagnosis(sock)}`);
  }
  if (j.error) throw new Error(`iperf3: ${j.error}`);
  return j;
}

/**
 * What a run whose guest gave no answer leaves to look at, before the bench removes its hosts:
 * whether the same channel still answers a status request (then the channel works and what did
 * not return is iperf3 in the guest: the network path or iperf3 itself), the guest's stream
 * totals, and the last lines of its serial console (beside the channel socket, as the QEMU
 * driver and the kernel path lay them out).
 */
export async function stallDiagnosis(sock: string): Promise<string> {
  const out: string[] = [];
  try {
    const st = await channelStatus(sock, 5000);
    out.push(`the channel answers a status request (uptime ${st.uptime_ms} ms, totals ${JSON.stringify(st.totals)}): iperf3 in the guest did not return`);
  } catch (e) {
    out.push(`the channel does not answer a status request either (${(e as Error).message})`);
  }
  try {
    const lines = fs.readFileSync(path.join(path.dirname(sock), 'console.log'), 'utf8').split(/\r?\n/).filter((l) => l && !l.includes('VNSTAT {'));
    out.push(`console tail: ${JSON.stringify(lines.slice(-8))}`);
  } catch (e) {
    out.push(`no console log (${(e as Error).message})`);
  }
  return out.join('; ');
}

export interface TcpRun {
  mbps: number;
  retransmits: number;
  bytes: number;
  busyCores: number;
  /** busy cores per Gbit/s of this run */
  cpuPerGbps: number;
}

/** One TCP stream for `seconds` from one guest to the other. */
export async function tcpRun(p: GuestPair, dir: Direction, seconds: number): Promise<TcpRun> {
  const { sock, server } = sides(p, dir);
  const cpus = cpuCount();
  const c0 = cpuSample();
  const j = await iperf(sock, ['-c', server, '-t', String(seconds), '--connect-timeout', '3000'], seconds);
  const c1 = cpuSample();
  const r = j.end?.sum_received;
  if (typeof r?.bits_per_second !== 'number') throw new Error('iperf3 JSON lacks end.sum_received.bits_per_second');
  const mbps = r.bits_per_second / 1e6;
  const cores = busyCores(c0, c1, cpus);
  return { mbps, retransmits: j.end?.sum_sent?.retransmits ?? 0, bytes: r.bytes ?? 0, busyCores: cores, cpuPerGbps: mbps > 0 ? cores / (mbps / 1000) : 0 };
}

export interface UdpRun {
  /** datagrams the receiver got per second, thousands */
  kpps: number;
  /** datagrams the sender sent per second, thousands */
  sentKpps: number;
}

/** 64-byte frames (UDP64_PAYLOAD bytes of payload) as fast as the sending guest goes. */
export async function udpRun(p: GuestPair, dir: Direction, seconds: number, rate: string): Promise<UdpRun> {
  const { sock, server } = sides(p, dir);
  const j = await iperf(sock, ['-c', server, '-u', '-l', String(UDP64_PAYLOAD), '-b', rate, '-t', String(seconds), '--connect-timeout', '3000'], seconds);
  const s = j.end?.sum;
  if (typeof s?.packets !== 'number' || typeof s.lost_packets !== 'number') throw new Error('iperf3 JSON lacks end.sum.packets/lost_packets');
  const secs = s.seconds || seconds;
  return { kpps: (s.packets - s.lost_packets) / secs / 1000, sentKpps: s.packets / secs / 1000 };
}

/** A short TCP run, retried until one succeeds (ARP, the servers' start): the path carries traffic. */
export async function warmUp(p: GuestPair, tries = 5): Promise<void> {
  let last = '';
  for (let i = 0; i < tries; i++) {
    try {
      await tcpRun(p, 'a->b', 1);
      await tcpRun(p, 'b->a', 1);
      return;
    } catch (e) {
      last = (e as Error).message;
    }
  }
  throw new Error(`no TCP between the guests after ${tries} tries: ${last}`);
}

export function cpuCount(): number {
  return fs.readFileSync('/proc/stat', 'utf8').split('\n').filter((l) => /^cpu\d+ /.test(l)).length;
}
