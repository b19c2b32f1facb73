/**
 * A port speaking QEMU's stream netdev protocol (`-netdev stream,...,addr.type=unix,...`):
 * every Ethernet frame is preceded by its length as a 4-byte big-endian integer. The switch
 * listens on a unix socket and QEMU connects to it (`server=off`, with `reconnect=1` QEMU comes
 * back after a switch restart); no kernel network device is involved.
 *
 * Frames parsed from one read are handed to the switch as one batch. drain() lets the event
 * loop read what is already queued in the socket (two turns), which after a VM pause is what
 * the VM wrote before it.
 */
import * as net from 'node:net';
import type { Port, RxBatch } from './port';
import { DEFAULT_MAX_BATCH, newRxBatch } from './port';
import { closeUnix, listenUnix } from './unix-listen';

const MAX_FRAME = 65535;
/** Bytes queued towards the VM beyond which new frames are dropped (a stalled reader). */
const MAX_QUEUED = 4 * 1024 * 1024;

export class StreamPort implements Port {
  readonly kind = 'stream' as const;
  readonly rx: RxBatch;
  private server: net.Server | undefined;
  private conn: net.Socket | undefined;
  private pending: Buffer = Buffer.alloc(0);
  private onBatch: ((n: number) => void) | undefined;
  badFrames = 0;

  constructor(
    readonly name: string,
    readonly path: string,
    maxBatch = DEFAULT_MAX_BATCH,
  ) {
    this.rx = newRxBatch(maxBatch);
  }

  /** Listen on the socket path (a stale socket file is replaced). Resolves when listening. */
  async listen(): Promise<void> {
    this.server = await listenUnix(this.path, `stream port ${this.name}`, (s) => this.accept(s));
  }

  get connected(): boolean {
    return this.conn !== undefined;
  }

  open(onBatch: (n: number) => void): void {
    this.onBatch = onBatch;
  }

  private accept(s: net.Socket): void {
    // One VM per port: a new connection replaces the old one (QEMU reconnecting).
    this.conn?.destroy();
    this.conn = s;
    this.pending = Buffer.alloc(0);
    s.setNoDelay(true);
    s.on('data', (d: Buffer) => this.onData(d));
    s.on('error', () => s.destroy());
    s.on('close', () => {
      if (this.conn === s) this.conn = undefined;
    });
  }

  private onData(d: Buffer): void {
    let buf = this.pending.length > 0 ? Buffer.concat([this.pending, d]) : d;
    let off = 0;
    let n = 0;
    const rx = this.rx;
    const max = rx.lens.length;
    const room = rx.slotSize - rx.headroom;
    while (buf.length - off >= 4) {
      const len = buf.readUInt32BE(off);
      if (len > MAX_FRAME) {
        // Not a stream of frames: drop the connection rather than misparse forever.
        this.badFrames++;
        this.conn?.destroy();
        this.pending = Buffer.alloc(0);
        return;
      }
      if (buf.length - off - 4 < len) break;
      if (len <= room) {
        buf.copy(rx.slab, n * rx.slotSize + rx.headroom, off + 4, off + 4 + len);
        rx.lens[n++] = len;
      } else {
        this.badFrames++;
      }
      off += 4 + len;
      if (n === max) {
        this.onBatch?.(n);
        n = 0;
      }
    }
    if (n > 0) this.onBatch?.(n);
    buf = buf.subarray(off);
    this.pending = buf.length > 0 ? Buffer.from(buf) : Buffer.alloc(0);
  }

  async drain(): Promise<number> {
    for (let i = 0; i < 2; i++) await new Promise((r) => setImmediate(r));
    return 0;
  }

  send(frames: readonly Buffer[], count: number): number {
    const c = this.conn;
    if (!c || c.writableLength > MAX_QUEUED) return 0;
    let total = 0;
    for (let i = 0; i < count; i++) total += 4 + (frames[i] as Buffer).length;
    const out = Buffer.allocUnsafe(total);
    let off = 0;
    for (let i = 0; i < count; i++) {
      const f = frames[i] as Buffer;
      out.writeUInt32BE(f.length, off);
      f.copy(out, off + 4);
      off += 4 + f.length;
    }
    c.write(out);
    return count;
  }

  close(): void {
    this.conn?.destroy();
    this.conn = undefined;
    closeUnix(this.server, this.path);
    this.server = undefined;
  }
}
