/**
 * Does batched UDP in the native addon (udpSend = sendmmsg, 'udp' poller = recvmmsg) beat
 * Node's dgram? Loopback, 64-byte and 1400-byte payloads, median of 3 runs per figure.
 *
 *  pipeline: one thread sends and receives (as a relay or the switch's tunnel does): each
 *            event-loop turn sends a burst while fewer than WINDOW datagrams are in flight;
 *            figure = datagrams received per second.
 *  rx-only:  a worker thread floods the receiver with sendmmsg as fast as it can (another
 *            core); figure = datagrams the receiver (dgram 'message' vs addon poller) takes in
 *            per second, whatever the loss.
 *  tx-only:  datagrams per second one thread can send (to a socket nobody reads).
 *
 * Usage: npm run bench:udp -- [--duration-ms 1500] [--runs 3] [--json]
 */
import * as dgram from 'node:dgram';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { nativeIo, NativeIo } from '../../switch/native-io';
import { forEachFlag, helpExit, usageExit, wholeArg } from './args';

const LOOPBACK = 0x7f000001;
const BURST = 64;
const WINDOW = 1024;
const MAX_BATCH = 64;
const SLOT = 2048;

const USAGE = 'usage: npm run bench:udp -- [--duration-ms MS] [--runs N] [--json] [--help]   (defaults: 1500 ms, 3 runs; median of the runs per figure; --json: stdout is one JSON object, the report goes to stderr)';

/** The command line (the main thread only: the flooding worker has none); a mistake exits 2 with the reason and the usage. */
function parseUdpArgs(argv: readonly string[]): { durationMs: number; runs: number; json: boolean } {
  const out = { durationMs: 1500, runs: 3, json: false };
  if (!isMainThread) return out;
  const usage = (msg: string): never => usageExit('bench:udp', USAGE, msg);
  forEachFlag(argv, usage, (flag, value) => {
    if (flag === '--help') helpExit(USAGE);
    else if (flag === '--json') out.json = true;
    else if (flag === '--duration-ms') out.durationMs = wholeArg(flag, value(), 1, usage);
    else if (flag === '--runs') out.runs = wholeArg(flag, value(), 1, usage);
    else usage(`unknown argument ${flag}`);
  });
  return out;
}
const ARGS = parseUdpArgs(process.argv.slice(2));
const DURATION_MS = ARGS.durationMs;
const RUNS = ARGS.runs;
/** The report: stdout, or stderr under --json (stdout is then the one JSON object). */
const say = (line: string): void => {
  (ARGS.json ? process.stderr : process.stdout).write(`${line}\n`);
};
const WARMUP_MS = 200;

const turn = () => new Promise<void>((r) => setImmediate(r));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const kpps = (x: number) => `${(x / 1000).toFixed(0).padStart(5)} kpps`;

function payloads(size: number, n: number): Buffer[] {
  return Array.from({ length: n }, (_, i) => Buffer.alloc(size, i & 0xff));
}

/** Receiver on the addon: a started 'udp' poller that counts. */
function addonReceiver(io: NativeIo) {
  const sock = io.udpOpen('127.0.0.1', 0);
  const counter = { n: 0 };
  const slab = Buffer.alloc(SLOT * MAX_BATCH);
  const u = () => new Uint32Array(MAX_BATCH);
  const poller = io.createPoller(sock.fd, 'udp', slab, SLOT, 0, MAX_BATCH, u(), u(), u(), (c) => {
    counter.n += c;
  });
  poller.start();
  return {
    port: sock.port,
    counter,
    close() {
      poller.stop();
      io.close(sock.fd);
    },
  };
}

/** Receiver on dgram: a 'message' listener that counts. */
async function dgramReceiver() {
  const sock = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
  const counter = { n: 0 };
  sock.on('message', () => {
    counter.n++;
  });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
  return {
    port: sock.address().port,
    counter,
    close: () => sock.close(),
  };
}

/** Measures counter.n growth over DURATION_MS after a warm-up. */
async function rate(counter: { n: number }, whileRunning: () => Promise<void> = turn): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 < WARMUP_MS) await whileRunning();
  const n0 = counter.n;
  const t1 = process.hrtime.bigint();
  while (Number(process.hrtime.bigint() - t1) / 1e6 < DURATION_MS) await whileRunning();
  const secs = Number(process.hrtime.bigint() - t1) / 1e9;
  return (counter.n - n0) / secs;
}

// ---------------------------------------------------------------------------------------

async function pipelineDgram(size: number): Promise<number> {
  const rx = await dgramReceiver();
  const tx = dgram.createSocket({ type: 'udp4', sendBufferSize: 4 << 20 });
  await new Promise<void>((r) => tx.bind(0, '127.0.0.1', r));
  const frames = payloads(size, BURST);
  let sent = 0;
  const r = await rate(rx.counter, async () => {
    for (let i = 0; i < BURST && sent - rx.counter.n < WINDOW; i++, sent++) tx.send(frames[i]!, rx.port, '127.0.0.1');
    await turn();
  });
  tx.close();
  rx.close();
  return r;
}

async function pipelineAddon(io: NativeIo, size: number): Promise<number> {
  const rx = addonReceiver(io);
  const tx = io.udpOpen('127.0.0.1', 0);
  const frames = payloads(size, BURST);
  const ips = new Uint32Array(BURST).fill(LOOPBACK);
  const ports = new Uint32Array(BURST).fill(rx.port);
  let sent = 0;
  const r = await rate(rx.counter, async () => {
    const room = Math.min(BURST, WINDOW - (sent - rx.counter.n));
    if (room > 0) sent += io.udpSend(tx.fd, frames, ips, ports, room);
    await turn();
  });
  io.close(tx.fd);
  rx.close();
  return r;
}

/** A worker thread flooding port with sendmmsg until told to stop. */
function startFlood(port: number, size: number): { stop(): Promise<number> } {
  const stopFlag = new Int32Array(new SharedArrayBuffer(4));
  const w = new Worker(__filename, { workerData: { port, size, stopFlag } });
  const done = new Promise<number>((resolve, reject) => {
    w.once('message', (m: number) => resolve(m));
    w.once('error', reject);
  });
  return {
    async stop() {
      Atomics.store(stopFlag, 0, 1);
      const sent = await done;
      await w.terminate();
      return sent;
    },
  };
}

function floodWorker(): void {
  const { port, size, stopFlag } = workerData as { port: number; size: number; stopFlag: Int32Array };
  const io = nativeIo();
  const tx = io.udpOpen('127.0.0.1', 0);
  const frames = payloads(size, 256);
  const ips = new Uint32Array(256).fill(LOOPBACK);
  const ports = new Uint32Array(256).fill(port);
  let sent = 0;
  while (Atomics.load(stopFlag, 0) === 0) sent += io.udpSend(tx.fd, frames, ips, ports, 256);
  io.close(tx.fd);
  parentPort!.postMessage(sent);
}

async function rxOnly(kind: 'dgram' | 'addon', io: NativeIo, size: number): Promise<number> {
  const rx = kind === 'dgram' ? await dgramReceiver() : addonReceiver(io);
  const flood = startFlood(rx.port, size);
  const r = await rate(rx.counter);
  await flood.stop();
  rx.close();
  return r;
}

async function txOnly(kind: 'dgram' | 'addon', io: NativeIo, size: number): Promise<number> {
  const sink = io.udpOpen('127.0.0.1', 0); // never read: the kernel drops what overflows
  const frames = payloads(size, BURST);
  const counter = { n: 0 };
  let r: number;
  if (kind === 'dgram') {
    const tx = dgram.createSocket({ type: 'udp4' });
    await new Promise<void>((res) => tx.bind(0, '127.0.0.1', res));
    r = await rate(counter, async () => {
      for (let i = 0; i < BURST; i++) tx.send(frames[i]!, sink.port, '127.0.0.1');
      counter.n += BURST;
      await turn();
    });
    tx.close();
  } else {
    const tx = io.udpOpen('127.0.0.1', 0);
    const ips = new Uint32Array(BURST).fill(LOOPBACK);
    const ports = new Uint32Array(BURST).fill(sink.port);
    r = await rate(counter, async () => {
      counter.n += io.udpSend(tx.fd, frames, ips, ports, BURST);
      await turn();
    });
    io.close(tx.fd);
  }
  io.close(sink.fd);
  return r;
}

async function main(): Promise<void> {
  const io = nativeIo();
  const figures: { size: number; case: string; dgram_pps: number; addon_pps: number; ratio: number }[] = [];
  say(`udp-batch-bench: loopback, ${RUNS} runs x ${DURATION_MS} ms each, median; addon batch ${MAX_BATCH}, burst ${BURST}, window ${WINDOW}`);
  say('(dgram and addon runs alternate, so background load hits both alike; ratio = median of per-run ratios)');
  for (const size of [64, 1400]) {
    const cases: [string, () => Promise<number>, () => Promise<number>][] = [
      ['pipeline (send+receive, one thread)', () => pipelineDgram(size), () => pipelineAddon(io, size)],
      ['rx-only (flooded from a worker)', () => rxOnly('dgram', io, size), () => rxOnly('addon', io, size)],
      ['tx-only', () => txOnly('dgram', io, size), () => txOnly('addon', io, size)],
    ];
    for (const [name, dgramRun, addonRun] of cases) {
      const ds: number[] = [];
      const as: number[] = [];
      const ratios: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        ds.push(await dgramRun());
        as.push(await addonRun());
        ratios.push(as[i]! / ds[i]!);
      }
      const d = median(ds);
      const a = median(as);
      const gbit = (x: number) => `${((x * size * 8) / 1e9).toFixed(2)} Gbit/s`;
      figures.push({ size, case: name, dgram_pps: Math.round(d), addon_pps: Math.round(a), ratio: Number(median(ratios).toFixed(2)) });
      say(
        `${String(size).padStart(4)} B  ${name.padEnd(36)} dgram ${kpps(d)} (${gbit(d)})   addon ${kpps(a)} (${gbit(a)})   ratio ${median(ratios).toFixed(2)}x`,
      );
    }
  }
  if (ARGS.json) process.stdout.write(`${JSON.stringify({ duration_ms: DURATION_MS, runs: RUNS, figures })}\n`);
}

if (isMainThread) {
  main().catch((e: unknown) => {
    console.error(`bench:udp: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  });
} else {
  floodWorker();
}
