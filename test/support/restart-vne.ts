/**
 * The two-guest QEMU VNE of the agent-restart test and benchmark (issue 12): on two namespaced
 * hosts of test/support/cluster.ts (`"drivers": ["qemu"]`), guest a on h1 and guest c on h2 (the
 * test guest of docs/guest.md), each streaming byte-checked TCP to the other across the overlay.
 * Killing h1's agent cuts both streams' path. The lost-host test lays out three guests instead
 * (LOST_HOST_VMS: a and b on h1, c on h2; streams across the hosts and within h1). Here: the
 * VNE's definition, where each VM's QEMU runs (and in which host's network namespace), the
 * guests' status, what is wrong between two readings, and the outage the guests see (the longest
 * gap in a stream's received bytes).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { channelStatus, kernelCmdline, type GuestImage, type GuestStatus } from '../guest/qemu-guest';
import { QEMU_WORKDIR } from './qemu-vne';
import { sleep } from './wait';

/** A guest of the layout: its home host, address, MAC and the VMs it streams to (port 7001). */
export interface RestartVm {
  host: string;
  ip: string;
  mac: string;
  peers: string[];
}

/** a on h1, c on h2, streaming to each other. */
export const RESTART_VMS: Record<string, RestartVm> = {
  a: { host: 'h1', ip: '192.168.89.1', mac: '52:54:00:89:00:01', peers: ['c'] },
  c: { host: 'h2', ip: '192.168.89.2', mac: '52:54:00:89:00:02', peers: ['a'] },
};

/** a and b on h1, c on h2: a→c, b→c, c→a cross the hosts, a→b stays on h1. */
export const LOST_HOST_VMS: Record<string, RestartVm> = {
  a: { host: 'h1', ip: '192.168.90.1', mac: '52:54:00:90:00:01', peers: ['c', 'b'] },
  b: { host: 'h1', ip: '192.168.90.2', mac: '52:54:00:90:00:02', peers: ['c'] },
  c: { host: 'h2', ip: '192.168.90.3', mac: '52:54:00:90:00:03', peers: ['a'] },
};

export class RestartVne {
  constructor(
    readonly name: string,
    readonly vms: Record<string, RestartVm> = RESTART_VMS,
    readonly vni = 3089,
  ) {}

  /** The VNE definition file (in `dir`): each VM on its host, streaming to its peers at 256 KiB/s, no disk; memory as VNSNAP_E2E_MEMORY says. */
  writeFile(dir: string, image: GuestImage): string {
    const ipOf = (vm: string): string => (this.vms[vm] as RestartVm).ip;
    // The memory mode of the e2e suites (qemu-vne.ts E2eOptions.memory): tracked VMs adopted too.
    const memory = process.env.VNSNAP_E2E_MEMORY;
    const vms = Object.entries(this.vms).map(([name, v]) => ({
      name,
      host: v.host,
      macs: [v.mac],
      driver: {
        qemu: {
          memoryMib: 128,
          cpus: 1,
          kernel: image.kernel,
          initrd: image.initrd,
          append: kernelCmdline({ name, ip: `${v.ip}/24`, mtu: 1400, peers: v.peers.map((p) => `${ipOf(p)}:7001`), rateKiB: 256, disk: 'none', reportSecs: 5 }),
          extra: { channel: 'org.vnsnap.status', ...(memory ? { memory } : {}) },
        },
      },
    }));
    const file = path.join(dir, `${this.name}.json`);
    fs.writeFileSync(file, JSON.stringify({ name: this.name, vni: this.vni, vms }));
    return file;
  }

  /** The live instance directory and pid of a VM's QEMU (the process whose command line names the directory). */
  qemuOf(vm: string): { dir: string; pid: number } | undefined {
    return this.qemusOf(vm)[0];
  }

  /**
   * Every live QEMU instance of a VM (two while a fenced one runs on an away host), with the
   * network namespace it runs in (the inode of /proc/PID/ns/net; compare with netnsInode).
   */
  qemusOf(vm: string): { dir: string; pid: number; netns: number }[] {
    if (!fs.existsSync(QEMU_WORKDIR)) return [];
    const out: { dir: string; pid: number; netns: number }[] = [];
    for (const d of fs.readdirSync(QEMU_WORKDIR)) {
      if (!d.startsWith(`vnqm-${this.name}_${vm}-`)) continue;
      const dir = path.join(QEMU_WORKDIR, d);
      try {
        const pid = Number(fs.readFileSync(path.join(dir, 'qemu.pid'), 'utf8').trim());
        if (pid > 0 && fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) out.push({ dir, pid, netns: fs.statSync(`/proc/${pid}/ns/net`).ino });
      } catch {
        /* not started or gone */
      }
    }
    return out;
  }

  async status(vm: string): Promise<GuestStatus> {
    const q = this.qemuOf(vm);
    if (!q) throw new Error(`no running QEMU for ${vm}`);
    return channelStatus(path.join(q.dir, 'channel.sock'), 5000);
  }

  async statuses(): Promise<Record<string, GuestStatus>> {
    const out: Record<string, GuestStatus> = {};
    for (const vm of Object.keys(this.vms)) out[vm] = await this.status(vm);
    return out;
  }

  /** Every stream of the layout connected and moving. */
  streamsUp(st: Record<string, GuestStatus>): boolean {
    const inbound = (vm: string): number => Object.values(this.vms).filter((v) => v.peers.includes(vm)).length;
    return Object.entries(this.vms).every(([vm, v]) => {
      const s = st[vm];
      return !!s && s.out.length === v.peers.length && s.out.every((o) => o.connected) && s.in.length === inbound(vm) && s.in.every((i) => i.open && i.bytes >= 50_000);
    });
  }

  /** Kill every QEMU of this VNE and remove its directories (a killed agent leaves its VMs running). */
  killQemus(): void {
    if (!fs.existsSync(QEMU_WORKDIR)) return;
    for (const d of fs.readdirSync(QEMU_WORKDIR)) {
      if (!d.startsWith(`vnqm-${this.name}_`)) continue;
      const q = this.qemuOf(d.slice(`vnqm-${this.name}_`.length).split('-')[0] as string);
      if (q) process.kill(q.pid, 'SIGKILL');
      fs.rmSync(path.join(QEMU_WORKDIR, d), { recursive: true, force: true });
    }
  }

  /** Samples every guest's received bytes until stopped; the longest time (ms) a stream received nothing. */
  outageSampler(): { stop(): Promise<number> } {
    let running = true;
    const last = new Map<string, { bytes: number; at: number }>();
    let longest = 0;
    const vms = this.vms;
    const loop = (async () => {
      while (running) {
        for (const vm of Object.keys(vms)) {
          const st = await this.status(vm).catch(() => undefined);
          const now = Date.now();
          for (const i of st?.in ?? []) {
            const k = `${i.from}→${vm}`;
            const l = last.get(k);
            if (!l || i.bytes > l.bytes) {
              if (l) longest = Math.max(longest, now - l.at);
              last.set(k, { bytes: i.bytes, at: now });
            }
          }
        }
        await sleep(100); // the sampling period of the measurement
      }
    })();
    return {
      async stop() {
        running = false;
        await loop;
        return longest;
      },
    };
  }
}

/** What is wrong between two readings (empty = intact): same run, no error, no reconnect, every stream moved. */
export function streamProblems(label: string, before: Record<string, GuestStatus>, after: Record<string, GuestStatus>): string[] {
  const p: string[] = [];
  for (const vm of Object.keys(before)) {
    const b = before[vm] as GuestStatus;
    const a = after[vm] as GuestStatus;
    if (a.nonce !== b.nonce) p.push(`${label}: ${vm} is another guest run`);
    if (a.totals.errors !== 0 || a.totals.reconnects !== 0) p.push(`${label}: ${vm}: ${a.totals.errors} errors, ${a.totals.reconnects} reconnects`);
    for (const i of a.in) {
      const ib = b.in.find((x) => x.from === i.from && x.index === i.index);
      if (!i.open || i.reconnects !== 0 || i.errors !== 0) p.push(`${label}: ${i.from}→${vm}: open ${i.open}, ${i.reconnects} reconnects, ${i.errors} errors ${i.first_error}`);
      if (!ib || i.bytes <= ib.bytes) p.push(`${label}: ${i.from}→${vm} did not move`);
    }
  }
  return p;
}
