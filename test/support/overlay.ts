/**
 * A vnsnap overlay on namespaced hosts, for integration tests and the demo: an underlay
 * namespace with a Linux bridge, host namespaces joined to it by veths (10.77.0.N), one
 * vnsnap-switch daemon per host, and VM namespaces whose interface is the switch's TAP moved
 * into them. Every name starts with the Topology's prefix; destroy() removes it all.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ChildProcess } from 'node:child_process';
import { Topology, waitForJsonLine } from './netns';

export interface VmSpec {
  name: string;
  vne: string;
  ip: string; // CIDR
}

export interface OverlaySpec {
  prefix: string;
  hosts: Record<string, VmSpec[]>;
  vnes: { name: string; vni: number }[];
  innerMtu?: number;
}

export class Overlay {
  readonly topo: Topology;
  readonly dir: string;
  readonly daemons = new Map<string, ChildProcess>();
  readonly hostAddr = new Map<string, string>();
  readonly underlayIf = new Map<string, string>();
  private readonly controls = new Map<string, ControlClient>();

  constructor(readonly spec: OverlaySpec) {
    this.topo = new Topology(spec.prefix);
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `${spec.prefix}-`));
  }

  async build(): Promise<void> {
    const t = this.topo;
    const p = this.spec.prefix;
    const hosts = Object.keys(this.spec.hosts);
    t.addNamespace('ul');
    t.exec('ul', 'ip', ['link', 'add', 'br0', 'type', 'bridge']);
    t.exec('ul', 'ip', ['link', 'set', 'br0', 'up']);
    hosts.forEach((h, i) => {
      t.addNamespace(h);
      const addr = `10.77.0.${i + 1}`;
      this.hostAddr.set(h, addr);
      this.underlayIf.set(h, `${p}u${i}`);
      t.veth(h, `${p}u${i}`, 'ul', `${p}b${i}`, `${addr}/24`);
      t.exec('ul', 'ip', ['link', 'set', `${p}b${i}`, 'master', 'br0']);
    });
    const ready: Promise<unknown>[] = [];
    hosts.forEach((h, i) => {
      const vms = this.spec.hosts[h] ?? [];
      const cfg = {
        id: h,
        tunnel: { address: this.hostAddr.get(h), port: 6081 },
        control: this.controlPath(h),
        peers: hosts.filter((x) => x !== h).map((x) => ({ id: x, address: this.hostAddr.get(x), port: 6081 })),
        vnes: this.spec.vnes.map((v) => ({ name: v.name, vni: v.vni, peers: hosts.filter((x) => x !== h) })),
        ports: vms.map((vm, j) => ({ name: vm.name, vne: vm.vne, type: 'tap', ifname: `${p}t${i}${j}` })),
      };
      const file = path.join(this.dir, `${h}.json`);
      fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
      const child = t.spawn(h, process.execPath, [path.resolve(__dirname, '../../switch/cmd/daemon.js'), '--config', file, '--log-level', 'warn']);
      this.daemons.set(h, child);
      ready.push(waitForJsonLine<{ event: string }>(child, (v) => v.event === 'ready'));
    });
    await Promise.all(ready);
    hosts.forEach((h, i) => {
      (this.spec.hosts[h] ?? []).forEach((vm, j) => {
        t.addNamespace(vm.name);
        t.moveLink(h, `${p}t${i}${j}`, vm.name, vm.ip, this.spec.innerMtu ?? 1400);
      });
    });
  }

  controlPath(host: string): string {
    return path.join(this.dir, `${host}.sock`);
  }

  async control(host: string, req: Record<string, unknown>): Promise<Record<string, unknown>> {
    let c = this.controls.get(host);
    if (!c) {
      c = await ControlClient.connect(this.controlPath(host));
      this.controls.set(host, c);
    }
    return c.call(req);
  }

  /**
   * Snapshot `vne` at epoch k on every host at once, then collect every host's channel state
   * (with `frames`: the frames themselves and their virtio_net_hdrs). `first`: that host cuts
   * first, the others once `until` resolved (frames their VMs send meanwhile are in flight).
   */
  async snapshot(vne: string, k: number, opts: { frames?: boolean; first?: { host: string; until: () => Promise<unknown> } } = {}): Promise<Record<string, Record<string, unknown>>> {
    const hosts = [...this.daemons.keys()];
    const cut = (h: string): Promise<Record<string, unknown>> => this.control(h, { op: 'snapshot', vne, epoch: k });
    const lead = opts.first;
    const led = lead ? await cut(lead.host) : undefined;
    if (lead) await lead.until();
    const cuts = await Promise.all(hosts.map((h) => (h === lead?.host ? (led as Record<string, unknown>) : cut(h))));
    cuts.forEach((r, i) => {
      if (r['ok'] !== true) throw new Error(`snapshot ${k} on ${hosts[i]} failed: ${String(r['error'])}`);
    });
    const states = await Promise.all(hosts.map((h) => this.control(h, { op: 'channelState', vne, epoch: k, timeoutMs: 10_000, ...(opts.frames ? { frames: true } : {}) })));
    const out: Record<string, Record<string, unknown>> = {};
    states.forEach((r, i) => {
      if (r['ok'] !== true) throw new Error(`channel state ${k} on ${hosts[i]} failed: ${String(r['error'])}`);
      out[hosts[i] as string] = r;
    });
    return out;
  }

  async stats(host: string): Promise<Record<string, number>> {
    const r = await this.control(host, { op: 'stats' });
    return r['stats'] as Record<string, number>;
  }

  async destroy(): Promise<void> {
    for (const c of this.controls.values()) c.close();
    await this.topo.destroy();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** JSON-lines client of a switch control socket. */
export class ControlClient {
  private nextId = 1;
  private buf = '';
  private readonly waiting = new Map<number, (v: Record<string, unknown>) => void>();
  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (d) => {
      this.buf += d.toString();
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(this.buf.slice(0, i)) as Record<string, unknown>;
        this.buf = this.buf.slice(i + 1);
        const w = this.waiting.get(msg['id'] as number);
        this.waiting.delete(msg['id'] as number);
        w?.(msg);
      }
    });
  }

  static connect(p: string): Promise<ControlClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(p, () => resolve(new ControlClient(s)));
      s.once('error', reject);
    });
  }

  call(req: Record<string, unknown>): Promise<Record<string, unknown>> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.sock.write(JSON.stringify({ ...req, id }) + '\n');
    });
  }

  close(): void {
    this.sock.destroy();
  }
}
