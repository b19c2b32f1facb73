/**
 * A fake Xen toolstack (XenHost) for tests without Xen: domains are page arrays that a running
 * domain keeps dirtying; `migrate` connects to the driver's receiver socket like xl does (reads
 * the banner, sends the xl header, the libxl stream with an inline libxc stream of live passes,
 * suspends the domain — firing the suspend watches — sends the final pass and END, then waits
 * for "ready": a receiver that closes instead makes it resume the domain and exit 1, as xl
 * does); `saveCheckpoint` is stop-and-copy into a file; `restorePaused` rebuilds the pages from
 * an image. The same stream format as Xen's (agent/drivers/xen/stream.ts), so the driver's
 * reader is tested.
 */
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as net from 'node:net';
import type { SuspendWatch, XenHost, XlProcess } from '../../agent/drivers/xen/xl';
import type { VnicVeth } from '../../agent/drivers/xen/vnic-link';
import { nowUs } from '../../proto/core/clock';
import { sleep } from '../support/wait';
import { LIBXC_REC, LIBXL_REC, pagesOf, XenStreamWriter as W, XL_RECEIVER_BANNER } from '../../agent/drivers/xen/stream';

const PAGE = 4096;

interface FakeDom {
  name: string;
  domid: number;
  pages: Buffer[];
  dirty: Set<number>;
  state: 'running' | 'paused' | 'suspended';
  timer: NodeJS.Timeout;
  counter: number;
}

export interface FakeXenHostOptions {
  pages?: number;
  /** Pages dirtied per 5 ms tick while running. */
  dirtyPerTick?: number;
  /** Pages per PAGE_DATA record. */
  batch?: number;
  /** xl migrate gives up after this many live passes, as xl does when the guest never acknowledges the suspend. */
  failSuspendAfterPasses?: number;
  /** ms xl migrate takes from the receiver's close to its exit (xl's resume path). */
  resumeMs?: number;
}

export class FakeXenHost implements XenHost {
  readonly doms = new Map<string, FakeDom>();
  readonly bridges = new Map<string, string>();
  readonly calls: string[] = [];
  private nextId = 1;
  private watches: { domid: number; fire: (us: number) => void; request: () => void }[] = [];

  constructor(private readonly o: FakeXenHostOptions = {}) {}

  /** Change the dirtying rate of running domains (pages per 5 ms tick). */
  setDirtyPerTick(n: number): void {
    this.o.dirtyPerTick = n;
  }

  private make(name: string, pages?: Buffer[], state: FakeDom['state'] = 'running'): FakeDom {
    const n = this.o.pages ?? 64;
    const d: FakeDom = {
      name,
      domid: this.nextId++,
      pages: pages ?? Array.from({ length: n }, (_, i) => Buffer.alloc(PAGE, i & 0xff)),
      dirty: new Set(),
      state,
      counter: 0,
      timer: setInterval(() => {
        if (d.state !== 'running') return;
        for (let k = 0; k < (this.o.dirtyPerTick ?? 2); k++) {
          const p = (d.counter * 7 + k) % d.pages.length;
          (d.pages[p] as Buffer).writeUInt32LE(++d.counter, 0);
          d.dirty.add(p);
        }
      }, 5),
    };
    this.doms.set(name, d);
    return d;
  }

  fingerprint(name: string): string {
    const d = this.doms.get(name);
    if (!d) return 'none';
    const h = createHash('sha256');
    for (const p of d.pages) h.update(p);
    return h.digest('hex');
  }

  private dom(name: string): FakeDom {
    const d = this.doms.get(name);
    if (!d) throw new Error(`xl: no domain ${name}`);
    return d;
  }

  create(_configFile: string, name: string): Promise<number> {
    this.calls.push(`create ${name}`);
    if (this.doms.has(name)) return Promise.reject(new Error(`domain ${name} exists`));
    return Promise.resolve(this.make(name).domid);
  }

  destroy(name: string): Promise<void> {
    const d = this.doms.get(name);
    if (d) {
      clearInterval(d.timer);
      this.doms.delete(name);
    }
    return Promise.resolve();
  }

  pause(name: string): Promise<void> {
    this.dom(name).state = 'paused';
    return Promise.resolve();
  }

  unpause(name: string): Promise<void> {
    this.dom(name).state = 'running';
    return Promise.resolve();
  }

  domid(name: string): Promise<number | null> {
    return Promise.resolve(this.doms.get(name)?.domid ?? null);
  }

  /** libxl's suspend request, then (after `ackMs`, the guest's acknowledgement) the suspend. */
  private async suspend(d: FakeDom, ackMs = 0): Promise<void> {
    for (const w of this.watches.filter((x) => x.domid === d.domid)) w.request();
    if (ackMs) await sleep(ackMs);
    d.state = 'suspended';
    const t = nowUs();
    for (const w of this.watches.filter((x) => x.domid === d.domid)) w.fire(t);
  }

  private header(d: FakeDom): Buffer {
    return Buffer.concat([W.xlHeader(`name = "${d.name}"\n`), W.libxlHeader(), W.record(LIBXL_REC.LIBXC_CONTEXT, Buffer.alloc(0)), W.libxcHeaders(), W.p2mFrames(d.pages.length)]);
  }

  private pass(d: FakeDom, pfns: number[]): Buffer[] {
    const out: Buffer[] = [];
    const b = this.o.batch ?? 16;
    for (let i = 0; i < pfns.length; i += b) {
      const part = pfns.slice(i, i + b);
      out.push(W.pageData(part, part.map((p) => Buffer.from(d.pages[p] as Buffer))));
    }
    return out;
  }

  private trailer(): Buffer {
    return Buffer.concat([W.record(LIBXC_REC.X86_PV_VCPU_BASIC, Buffer.alloc(16)), W.record(LIBXC_REC.END, Buffer.alloc(0)), W.record(LIBXL_REC.END, Buffer.alloc(0))]);
  }

  /** receiverCommand is the socket path (the tests' receiverCommand option returns it as is). */
  migrate(name: string, receiverCommand: string): XlProcess {
    this.calls.push(`migrate ${name}`);
    let sock: net.Socket | undefined;
    const exited = (async () => {
      const d = this.dom(name);
      const s = net.connect(receiverCommand);
      sock = s;
      let inbound = '';
      let closed = false;
      const closedP = new Promise<void>((r) => s.on('close', () => ((closed = true), r())));
      s.on('error', () => undefined);
      let bannerSeen = (): void => undefined;
      const bannerP = new Promise<void>((r) => (bannerSeen = r));
      s.on('data', (b: Buffer) => {
        inbound += b.toString();
        if (inbound.includes(XL_RECEIVER_BANNER)) bannerSeen();
      });
      const write = async (b: Buffer): Promise<boolean> => {
        if (closed) return false;
        if (!s.write(b)) await Promise.race([new Promise((r) => s.once('drain', r)), closedP]);
        return !closed;
      };
      await Promise.race([bannerP, closedP]);
      const fail = async (msg: string): Promise<{ code: number; output: string; exitUnixUs: number }> => {
        if (d.state === 'suspended') d.state = 'running';
        return { code: 1, output: msg, exitUnixUs: nowUs() };
      };
      if (!(await write(this.header(d)))) return fail('receiver went away');
      d.dirty.clear();
      let pfns = d.pages.map((_, i) => i);
      for (let it = 1; it <= 5; it++) {
        for (const r of this.pass(d, pfns)) if (!(await write(r))) return fail('receiver went away');
        pfns = [...d.dirty].sort((a, b) => a - b);
        d.dirty.clear();
        if (this.o.failSuspendAfterPasses !== undefined && it >= this.o.failSuspendAfterPasses) {
          s.destroy();
          return { code: 1, output: 'Migration failed, failed to suspend at sender.', exitUnixUs: nowUs() };
        }
        if (pfns.length < 2) break;
        await sleep(5);
      }
      await this.suspend(d, 30);
      pfns = [...new Set([...pfns, ...d.dirty])].sort((a, b) => a - b);
      d.dirty.clear();
      for (const r of this.pass(d, pfns)) if (!(await write(r))) return fail('receiver went away');
      if (!(await write(this.trailer()))) return fail('receiver went away');
      await closedP;
      if (this.o.resumeMs) await sleep(this.o.resumeMs);
      if (inbound.includes('ready')) return { code: 0, output: 'migrated', exitUnixUs: nowUs() };
      return fail('Migration failed, resuming at sender.');
    })();
    return { exited, kill: () => sock?.destroy() };
  }

  async setCap(name: string, percent: number): Promise<void> {
    this.dom(name);
    this.calls.push(`cap ${name} ${percent}`);
  }

  saveCheckpoint(name: string, file: string): XlProcess {
    this.calls.push(`save -c ${name}`);
    const exited = (async () => {
      const d = this.dom(name);
      await sleep(2);
      await this.suspend(d);
      await sleep(20); // the copy
      const all = d.pages.map((_, i) => i);
      await fsp.writeFile(file, Buffer.concat([this.header(d), ...this.pass(d, all), this.trailer()]));
      d.state = 'running';
      return { code: 0, output: '', exitUnixUs: nowUs() };
    })();
    return { exited, kill: () => undefined };
  }

  async restorePaused(file: string, name: string): Promise<number> {
    this.calls.push(`restore -p ${name}`);
    if (this.doms.has(name)) throw new Error(`domain ${name} exists`);
    const data = await fsp.readFile(file);
    const map = pagesOf(data, PAGE);
    const pages = Array.from({ length: map.size }, (_, i) => map.get(i) as Buffer);
    return this.make(name, pages, 'paused').domid;
  }

  watchSuspend(domid: number): SuspendWatch {
    let fire!: (us: number) => void;
    let request!: () => void;
    const suspended = new Promise<number>((r) => (fire = r));
    const requested = new Promise<void>((r) => (request = r));
    const w = { domid, fire, request };
    this.watches.push(w);
    return { suspended, established: Promise.resolve(), requested, close: () => (this.watches = this.watches.filter((x) => x !== w)) };
  }

  bridgeUp(bridge: string, veth: VnicVeth): Promise<void> {
    this.bridges.set(bridge, veth.br);
    return Promise.resolve();
  }

  bridgeDown(bridge: string, _veth: VnicVeth): Promise<void> {
    this.bridges.delete(bridge);
    return Promise.resolve();
  }

  async snapshotDisk(_kind: 'file' | 'lvm', source: string, target: string): Promise<void> {
    await fsp.copyFile(source, target);
  }

  close(): void {
    for (const d of this.doms.values()) clearInterval(d.timer);
    this.doms.clear();
  }
}
