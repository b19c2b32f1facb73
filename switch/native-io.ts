/**
 * The native I/O addon's contract (implementation: switch/native/*.c, registered by
 * switch/native/addon.c, built by node-gyp into build/Release/vnsnap_io.node at `npm install`).
 * The addon keeps its state per environment, so it may be used from worker threads too.
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
import { VnsnapError } from '../proto/core/errors';

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
  /** vnet TAPs: frames dropped for a virtio_net_hdr the switch cannot handle (addition; optional). */
  gsoDrops?: number;
  /** GRO sockets: datagrams dropped because a batch had no room for more entries (addition; optional). */
  groDropped?: number;
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
/** Bytes of a struct virtio_net_hdr (legacy, native byte order). */
export const VNET_HDR_LEN = 10;
/** virtio_net_hdr.gso_type values the switch meets (byte 1 of the header). */
export const GSO_NONE = 0;
export const GSO_TCPV4 = 1;
export const GSO_TCPV6 = 4;

/** Options of the offload-aware poller kinds (see createPoller). */
export interface PollerOptions {
  /** 'vnet' and GRO 'udp': a virtio_net_hdr per frame/entry, VNET_HDR_LEN bytes each. */
  meta?: Buffer;
  /** 'udp': the socket has UDP_GRO; entries are described by offs/lens/segs. */
  gro?: boolean;
  offs?: Uint32Array;
  segs?: Uint32Array;
}

/** Options of writeFrames and writeFramesVnet. */
export interface WriteOptions {
  /** refused[0] is incremented for each frame the kernel refused on its own (see writeFrames). */
  refused?: Uint32Array;
}

/** What the addon remembers about one UDP socket (see udpSocketStats). */
export interface UdpSocketStats {
  /** The kernel refused a UDP_SEGMENT send on this socket: its segments now go one datagram each. */
  gsoBroken: boolean;
  /** UDP_SEGMENT messages the kernel accepted from this socket. */
  gsoMessages: number;
  /** UDP_SEGMENT messages refused and sent one datagram per segment instead. */
  splitMessages: number;
}

export interface NativeIo {
  /**
   * Open (create if needed) a TAP device: IFF_TAP | IFF_NO_PI, non-blocking, link set up by the
   * caller. opts.vnetHdr adds IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6): frames are read and
   * written behind a virtio_net_hdr and may be TCP super-frames (`offloads`: TUNSETOFFLOAD worked).
   */
  tapOpen(name: string, opts?: { vnetHdr?: boolean }): { fd: number; name: string; vnetHdr?: boolean; offloads?: boolean };
  /**
   * AF_PACKET SOCK_RAW socket bound to an existing interface (ETH_P_ALL, promiscuous,
   * PACKET_IGNORE_OUTGOING), non-blocking. opts.vnetHdr adds PACKET_VNET_HDR: frames are read
   * (poller kind 'vnet') and written (writeFramesVnet) behind a virtio_net_hdr and may be TCP
   * super-frames, as on a TAP opened with vnetHdr (switch/native/packet.c says what the kernel
   * delivers and accepts). opts.writeOnly: a socket that only writes (a filter accepting nothing
   * is attached before the bind, no promiscuous mode): the writing face of a port that reads
   * elsewhere.
   */
  packetOpen(ifname: string, opts?: { vnetHdr?: boolean; writeOnly?: boolean }): { fd: number; ifindex: number; vnetHdr?: boolean; writeOnly?: boolean };
  /** IPv4 UDP socket bound to ip:port (port 0 = ephemeral), non-blocking, large buffers. */
  udpOpen(ip: string, port: number, opts?: { gro?: boolean }): { fd: number; port: number; gro?: boolean };
  /** Close an fd opened here: stops its pollers and drops its socket state first. */
  close(fd: number): void;
  /**
   * The GSO state of the socket fd names now (addition; optional so test doubles need not
   * implement it). State belongs to the socket, not the fd number: a socket opened later on the
   * same number starts fresh.
   */
  udpSocketStats?(fd: number): UdpSocketStats;
  /**
   * SO_NO_CHECK on a UDP socket (addition, for tests): the kernel then refuses UDP_SEGMENT
   * (EINVAL), which makes udpSend fall back to one datagram per segment on that socket.
   */
  udpSetNoCheck?(fd: number, on: boolean): void;
  /**
   * Write frames to a TAP or packet socket, one write() each. Returns how many were written;
   * stops at the first EAGAIN/ENOBUFS (the caller counts the rest as dropped). A frame the
   * kernel refuses on its own (EMSGSIZE, EINVAL, ENOMEM, EFAULT: too long for the device, a
   * header it rejects) is skipped, not counted as written, and counted in opts.refused[0]; the
   * rest of the batch goes on. Any other error (ENXIO, ENETDOWN, EBADF, EIO...: the socket or
   * the device) throws ERR_NATIVE_IO with `written`.
   */
  writeFrames(fd: number, frames: readonly Buffer[], count: number, opts?: WriteOptions): number;
  /**
   * writeFrames for a TAP or packet socket opened with vnetHdr: frame i goes out behind metas[10i, 10i+10) (its
   * virtio_net_hdr), or behind a zero header when metas is null. Errors as writeFrames. opts.splitFlushTail (a packet socket on a veth whose
   * peer coalesces with GRO): a TCP super-frame with FIN/PSH/URG goes out as its first n-1
   * segments (one super-frame) then its last segment, so GRO cannot deliver that segment ahead
   * of the rest (switch/native/frame_write.c says why); it counts once, when both went out.
   */
  writeFramesVnet(fd: number, frames: readonly Buffer[], count: number, metas: Buffer | null, opts?: WriteOptions & { splitFlushTail?: boolean }): number;
  /**
   * sendmmsg: frames[i] to ips[i] (IPv4, host byte order) : ports[i]. Returns how many were sent
   * (the caller counts the rest as dropped).
   */
  udpSend(fd: number, frames: readonly Buffer[], ips: Uint32Array, ports: Uint32Array, count: number): number;
  /**
   * udpSend with offloads: metas holds a virtio_net_hdr per entry; an entry whose gso_type is
   * TCPV4/TCPV6 is a Geneve header followed by a TCP super-frame, cut into segments of at most
   * maxFrame bytes of inner frame (each behind the same Geneve header, with correct IP/TCP
   * headers and checksums) and sent with UDP_SEGMENT (or one datagram each where the socket
   * refuses it). segs[i] receives how many datagrams of entry i the kernel accepted. Returns how
   * many entries went out entirely (stops at EAGAIN/ENOBUFS); an unsegmentable super-frame is
   * dropped (segs[i] = 0).
   */
  udpSend(fd: number, frames: readonly Buffer[], ips: Uint32Array, ports: Uint32Array, count: number, metas: Buffer, segs: Uint32Array, maxFrame: number): number;
  /**
   * The segments of a TCP super-frame as new buffers: dgram[0, prefixLen) (e.g. a Geneve header)
   * + one segment each, at most maxFrame bytes of frame (0: the header's gso_size decides). A
   * frame without GSO comes back as one copy (partial checksum completed). null: not segmentable.
   */
  gsoSegment(dgram: Buffer, meta: Buffer, metaOff: number, maxFrame: number, prefixLen?: number): Buffer[] | null;
  /**
   * What a GRO poller does with one received buffer (for tests): buf[0, len) holds datagrams of
   * gsoSize bytes (the last may be shorter); consecutive Geneve data datagrams with identical
   * headers carrying consecutive segments of one TCP flow are coalesced in place into one
   * super-frame. Entry i: buf[offs[i], offs[i] + lens[i]), segs[i] datagrams, header at metas[10i].
   */
  groSplit(buf: Buffer, len: number, gsoSize: number, offs: Uint32Array, lens: Uint32Array, segs: Uint32Array, metas: Buffer): number;
  /**
   * A batched reader. kind 'frames' (TAP, packet socket: read() in a loop), 'vnet' (a TAP or a
   * packet socket opened with vnetHdr: opts.meta receives each frame's virtio_net_hdr, zero unless it is a TCP
   * super-frame) or 'udp' (recvmmsg; the source address of datagram i is written to ips[i] /
   * ports[i]; with opts.gro the socket must have UDP_GRO and onBatch counts entries, entry i
   * at slab[offs[i], offs[i] + lens[i]) standing for segs[i] datagrams).
   * lens[i] receives the length of frame i. onBatch(count) runs with the slab filled.
   */
  createPoller(
    fd: number,
    kind: 'frames' | 'udp' | 'vnet',
    slab: Buffer,
    slotSize: number,
    headroom: number,
    maxBatch: number,
    lens: Uint32Array,
    ips: Uint32Array,
    ports: Uint32Array,
    onBatch: (count: number) => void,
    opts?: PollerOptions,
  ): Poller;
  /** A pinned bpf map or program (bpf(BPF_OBJ_GET)); the fd is closed with close(). */
  bpfObjGet(path: string): number;
  /** Write one element (flags: 0 any, 1 only new, 2 only existing); false when flags forbid it. */
  bpfMapUpdate(fd: number, key: Buffer, value: Buffer, flags: number): boolean;
  /** Read one element into valueOut; false when there is none. */
  bpfMapLookup(fd: number, key: Buffer, valueOut: Buffer): boolean;
  /** Delete one element; false when there was none. */
  bpfMapDelete(fd: number, key: Buffer): boolean;
  /** Run a program once on `data` (BPF_PROG_TEST_RUN), ctx as its struct __sk_buff; the frame it left in dataOut[0, size). */
  bpfProgTestRun(fd: number, data: Buffer, ctx: Buffer | null, dataOut: Buffer): { retval: number; size: number };
  /**
   * Thread `tid`'s scheduling policy with one sched_setscheduler(2) (native/sched.c): policy 1 is
   * SCHED_FIFO at `priority` (1-99), 0 SCHED_OTHER (priority 0); its nice value is kept. Throws
   * ERR_NATIVE_IO with the errno's code (EPERM, ESRCH, EINVAL) and changes nothing when refused.
   */
  setThreadPolicy(tid: number, policy: 0 | 1, priority: number): void;
  /**
   * Whether this kernel has asynchronous userfaultfd write protection and PAGEMAP_SCAN (Linux
   * 6.7 or later; native/ram_track.c): probed on a userfaultfd of the caller's own.
   */
  uffdWriteTrackingAvailable(): boolean;
  /** A copy of process `pid`'s descriptor `targetFd` (pidfd_getfd(2)); closed with close(). */
  uffdAdopt(pid: number, targetFd: number): number;
  /**
   * Asynchronous write protection on userfaultfd `ufd` over [start, start+length) of its address
   * space (page-aligned), the whole range protected now: every later write to a page is resolved
   * by the kernel alone and leaves the page "written" until the next scan. 'adopted' when the
   * descriptor was enabled before (by an earlier agent): the range's protection is left as that
   * agent left it, so the next scan reports every page written since its last scan. Throws
   * ERR_NATIVE_IO when refused.
   */
  uffdTrackWrites(ufd: number, start: number, length: number): 'new' | 'adopted';
  /**
   * One PAGEMAP_SCAN over [start, start+length) of the process whose /proc/PID/pagemap is
   * `pagemapFd`: the runs of pages written since last protected, as (offset from start, length)
   * pairs into `out`, each protected again in the same walk. Stops when `out` is full or after 512
   * runs: everything before `walkEnd` is reported and protected again (start + length when the
   * walk is complete).
   */
  pagemapScanWritten(pagemapFd: number, start: number, length: number, out: Float64Array): { regions: number; walkEnd: number };
  /**
   * Copies `count` (address, length) pairs of `ranges` from process `pid`'s memory back to back
   * into buf[offset, ...] (process_vm_readv(2)); the bytes copied. Throws ERR_NATIVE_IO on a
   * refusal or a short copy (a range not mapped), RangeError when they do not fit.
   */
  readProcessMemory(pid: number, ranges: Float64Array, count: number, buf: Buffer, offset: number): number;
  /** readProcessMemory the other way: buf[offset, ...] into the ranges of process `pid` (process_vm_writev(2)). */
  writeProcessMemory(pid: number, ranges: Float64Array, count: number, buf: Buffer, offset: number): number;
  /**
   * readProcessMemory in libuv's thread pool, off the event loop (native/ram_read.c), with the
   * SHA-256 of each `blockSize` bytes copied (from offset on; a whole number of blocks) into
   * digests[32*i, 32*i+32): the SHA extensions where this CPU has them, else portable C
   * (`portable` forces it); digests null reads alone, nothing hashed; `fifoPriority` runs the work at SCHED_FIFO at that priority (1-99)
   * where permitted, the pool thread's own policy put back after it; `ownThread` runs it on a
   * thread created for it instead of the pool (never queued behind the pool's other work; the
   * pool where no thread can be made); `timing` (3 values or more) holds, once the promise
   * settled, the wall-clock µs the work was submitted, began and ended. Resolves with the bytes copied. buf and digests belong to the call
   * until the promise settles, also when it rejects: neither read, written nor reused before.
   * Arguments are checked at the call (thrown); a refused or short copy (a range not mapped)
   * rejects with ERR_NATIVE_IO naming the range.
   */
  readProcessBlocks(pid: number, ranges: Float64Array, count: number, buf: Buffer, offset: number, blockSize: number, digests: Buffer | null, opts?: ReadBlocksOptions): Promise<number>;
  /**
   * The SHA-256 of each `blockSize` bytes of data (a whole number of blocks) into
   * digests[32*i, 32*i+32), in the thread pool as readProcessBlocks hashes; resolves with data's
   * length. data and digests belong to the call until the promise settles.
   */
  sha256Blocks(data: Buffer, blockSize: number, digests: Buffer, opts?: { portable?: boolean }): Promise<number>;
  /**
   * A unix stream socket bound and listening at `path` (a socket file there is replaced; a bind
   * or listen failure throws ERR_NATIVE_IO), whose one connection is accepted and read to its end
   * on a thread of its own (native/unix_sink.c: created at SCHED_FIFO at `fifoPriority` where
   * permitted), never on the event loop: the promise resolves with every byte sent once the peer
   * closed the connection, or rejects with ERR_NATIVE_IO (more than `maxBytes`, default 64 MiB;
   * a failed accept or read; unixSinkClose() before the end). The socket file is the caller's
   * to remove.
   */
  unixSinkListen(path: string, opts?: { fifoPriority?: number; maxBytes?: number }): [UnixSinkHandle, Promise<Buffer>];
  /** Ends a sink whose promise has not settled (it then rejects); nothing after it settled. Idempotent. */
  unixSinkClose(handle: UnixSinkHandle): void;
}

/** A sink of unixSinkListen (opaque). */
export type UnixSinkHandle = { readonly __unixSink: unique symbol };

/** readProcessBlocks' options (native/ram_read.c). */
export interface ReadBlocksOptions {
  portable?: boolean;
  fifoPriority?: number;
  ownThread?: boolean;
  timing?: Float64Array;
}

/**
 * The addon interface this TypeScript speaks (VNSNAP_IO_INTERFACE_VERSION in native/addon.h):
 * bump both together whenever an entry point, an option or a result changes meaning.
 */
export const NATIVE_INTERFACE_VERSION = 11;

let loaded: NativeIo | undefined;

/**
 * Load the addon once; a missing build, or an addon built from other sources than this
 * TypeScript (`npm run build` after a pull, without `npm install`), is a clear error, not a
 * stack trace or frames misread in silence.
 */
export function nativeIo(): NativeIo {
  if (loaded) return loaded;
  const candidates = [
    path.join(__dirname, '..', '..', 'build', 'Release', 'vnsnap_io.node'),
    path.join(__dirname, '..', 'build', 'Release', 'vnsnap_io.node'),
  ];
  let lastErr: unknown;
  for (const c of candidates) {
    let mod: NativeIo & { interfaceVersion?: unknown };
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      mod = require(c) as NativeIo & { interfaceVersion?: unknown };
    } catch (e) {
      lastErr = e;
      continue;
    }
    checkInterfaceVersion(c, mod.interfaceVersion);
    loaded = mod;
    return loaded;
  }
  throw new VnsnapError('ERR_NATIVE_IO', 'the native I/O addon is not built (run `npm install` or `npx node-gyp rebuild`)', { cause: lastErr });
}

/** Refuse an addon of another interface version, naming the file and the way out. */
export function checkInterfaceVersion(file: string, version: unknown): void {
  if (version === NATIVE_INTERFACE_VERSION) return;
  const got = typeof version === 'number' ? `interface ${version}` : 'an interface older than version 2';
  throw new VnsnapError('ERR_NATIVE_IO', `the native I/O addon ${file} has ${got}, this build needs ${NATIVE_INTERFACE_VERSION}: it was built from other sources; rebuild it with \`npm install\` (npm run build compiles only the TypeScript)`);
}
