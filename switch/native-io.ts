/**
 * The native I/O addon's contract (implementation: switch/native/vnsnap_io.c, built by
 * node-gyp into build/Release/vnsnap_io.node at `npm install`).
 *
 * Only what plain Node cannot do well lives in C: opening TAP devices and packet sockets,
 * and moving many frames or datagrams per event-loop wakeup (uv_poll + read loop /
 * recvmmsg / sendmmsg). All switching logic stays in TypeScript.
 *
 * Batches are zero-copy into a caller-owned slab: frame i of a batch is at
 * `slab[i * slotSize + headroom, i * slotSize + headroom + lens[i])`. The slab is reused on
 * the next read, so a frame that must outlive the callback (held, recorded) is copied.
 * Headroom lets the tunnel write its Geneve header in place in front of the frame.
 */
import * as path from 'node:path';
import { VnsnapError } from '../proto/errors';

export interface Poller {
  /** Begin watching the fd; onBatch is called from the event loop when frames are read. */
  start(): void;
  /** Stop watching (idempotent). The fd is not closed. */
  stop(): void;
  /**
   * Read one batch now, synchronously (up to maxBatch), invoking onBatch synchronously if any
   * frame was read. Returns the number read (0 when the fd would block). Used to drain a port.
   */
  poll(): number;
  /**
   * Counters and state (addition; optional so test doubles need not implement it).
   * `dead`: the fd failed for good (a deleted TAP device, a closed fd) and polling stopped;
   * `closed`: the fd was closed through NativeIo.close() (which stops its pollers first).
   */
  stats?(): PollerStats;
}

export interface PollerStats {
  active: boolean;
  dead: boolean;
  closed: boolean;
  wakeups: number;
  batches: number;
  frames: number;
  /** Frames/datagrams longer than slotSize - headroom, dropped. */
  truncated: number;
  /** Read errors other than EAGAIN (each ends a batch). */
  errors: number;
  /** strerror and errno name of the last read error, or null. */
  lastError: string | null;
}

/**
 * Errors: a failing system call throws an Error with `code` 'ERR_NATIVE_IO', a message
 * "<op>(<subject>): <syscall>: <strerror>" (e.g. "tapOpen(vnt0): ioctl TUNSETIFF: Operation
 * not permitted") and the extra properties `errno` (negative, as in Node), `errnoCode`
 * ('EPERM', ...) and `syscall`; writeFrames adds `written` and udpSend `sent` (how many went
 * out before the failure). Wrong argument types/ranges throw TypeError/RangeError with `code`
 * 'ERR_INVALID_ARGUMENT'. Close polled fds with close() below, which stops their pollers first.
 */
export interface NativeIo {
  /** Open (create if needed) a TAP device: IFF_TAP | IFF_NO_PI, non-blocking, link set up by the caller. */
  tapOpen(name: string): { fd: number; name: string };
  /**
   * AF_PACKET SOCK_RAW socket bound to an existing interface (ETH_P_ALL, promiscuous,
   * PACKET_IGNORE_OUTGOING), non-blocking.
   */
  packetOpen(ifname: string): { fd: number; ifindex: number };
  /** IPv4 UDP socket bound to ip:port (port 0 = ephemeral), non-blocking, large buffers. */
  udpOpen(ip: string, port: number): { fd: number; port: number };
  close(fd: number): void;
  /**
   * Write frames to a TAP or packet socket, one write() each. Returns how many were written;
   * stops at the first EAGAIN/ENOBUFS (the caller counts the rest as dropped).
   */
  writeFrames(fd: number, frames: readonly Buffer[], count: number): number;
  /**
   * sendmmsg: frames[i] to ips[i] (IPv4, host byte order) : ports[i]. Returns how many were sent
   * (the caller counts the rest as dropped).
   */
  udpSend(fd: number, frames: readonly Buffer[], ips: Uint32Array, ports: Uint32Array, count: number): number;
  /**
   * A batched reader. kind 'frames' (TAP, packet socket: read() in a loop) or 'udp'
   * (recvmmsg; the source address of datagram i is written to ips[i] / ports[i]).
   * lens[i] receives the length of frame i. onBatch(count) runs with the slab filled.
   */
  createPoller(
    fd: number,
    kind: 'frames' | 'udp',
    slab: Buffer,
    slotSize: number,
    headroom: number,
    maxBatch: number,
    lens: Uint32Array,
    ips: Uint32Array,
    ports: Uint32Array,
    onBatch: (count: number) => void,
  ): Poller;
}

let loaded: NativeIo | undefined;

/** Load the addon once; a missing build is a clear error, not a stack trace. */
export function nativeIo(): NativeIo {
  if (loaded) return loaded;
  const candidates = [
    path.join(__dirname, '..', '..', 'build', 'Release', 'vnsnap_io.node'),
    path.join(__dirname, '..', 'build', 'Release', 'vnsnap_io.node'),
  ];
  let lastErr: unknown;
  for (const c of candidates) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      loaded = require(c) as NativeIo;
      return loaded;
    } catch (e) {
      lastErr = e;
    }
  }
  throw new VnsnapError('ERR_NATIVE_IO', 'the native I/O addon is not built (run `npm install` or `npx node-gyp rebuild`)', { cause: lastErr });
}
