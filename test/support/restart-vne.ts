/**
 * The two-guest QEMU VNE of the agent-restart test and benchmark (issue 12): on two namespaced
 * hosts of test/support/cluster.ts (`"drivers": ["qemu"]`), guest a on h1 and guest c on h2 (the
 * test guest of docs/guest.md), each streaming byte-checked TCP to the other across the overlay.
 * Killing h1's agent cuts both streams' path. Here: the VNE's definition, where each VM's QEMU
 * runs, the guests' status, what is wrong between two readings, and the outage the guests see
 * (the longest gap in a stream's received bytes).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { channelStatus, kernelCmdline, type GuestImage, type GuestStatus } from '../guest/qemu-guest';
import { QEMU_WORKDIR } from './qemu-vne';
import { sleep } from './wait';

export const RESTART_VMS: Record<string, { host: string; ip: string; peer: string; mac: string }> = {
  a: { host: 'h1', ip: '192.168.89.1', peer: '192.168.89.2', mac: '52:54:00:89:00:01' },
  c: { host: 'h2', ip: '192.168.89.2', peer: '192.168.89.1', mac: '52:54:00:89:00:02' },
};

export class RestartVne {
  constructor(readonly name: string) {}

  /** The VNE definition file (in `dir`): a on h1, c on h2, streams both ways at 256 KiB/s, no disk. */
  writeFile(dir: string, image: GuestImage): string {
    const vms = Object.entries(RESTART_VMS).map(([name, v]) => ({
      name,
      host: v.host,
      macs: [v.mac],
      driver: {
        qemu: {
          memoryMib: 128,
          cpus: 1,
          kernel: image.kernel,
          initrd: image.initrd,
          append: kernelCmdline({ name, ip: `${v.ip}/24`, mtu: 1400, peers: [`${v.peer}:7001`], rateKiB: 256, disk: 'none', reportSecs: 5 }),
          extra: { channel: 'org.vnsnap.status' },
        },
      },
    }));
    const file = path.join(dir, `${this.name}.json`);
    fs.writeFileSync(file, JSON.stringify({ name: this.name, vni: 3089, vms }));
    return file;
  }

  /** The live instance directory and pid of a VM's QEMU (the process whose command line names the directory). */
  qemuOf(vm: string): { dir: string; pid: number } | undefined {
    if (!fs.existsSync(QEMU_WORKDIR)) return undefined;
    for (const d of fs.readdirSync(QEMU_WORKDIR)) {
      if (!d.startsWith(`vnqm-${this.name}_${vm}-`)) continue;
      const dir = path.join(QEMU_WORKDIR, d);
      try {
        const pid = Number(fs.readFileSync(path.join(dir, 'qemu.pid'), 'utf8').trim());
        if (pid > 0 && fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) return { dir, pid };
      } catch {
        /* not started or gone */
      }
    }
    return undefined;
  }

  async status(vm: string): Promise<GuestStatus> {
    const q = this.qemuOf(vm);
    if (!q) throw new Error(`no running QEMU for ${vm}`);
    return channelStatus(path.join(q.dir, 'channel.sock'), 5000);
  }

  async statuses(): Promise<Record<string, GuestStatus>> {
    const out: Record<string, GuestStatus> = {};
    for (const vm of Object.keys(RESTART_VMS)) out[vm] = await this.status(vm);
    return out;
  }

  /** Both streams connected and moving. */
  streamsUp(st: Record<string, GuestStatus>): boolean {
    return Object.values(st).every((s) => s.out.length === 1 && s.out.every((o) => o.connected) && s.in.length === 1 && s.in.every((i) => i.open && i.bytes >= 50_000));
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
    const loop = (async () => {
      while (running) {
        for (const vm of Object.keys(RESTART_VMS)) {
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
  for (const vm of Object.keys(RESTART_VMS)) {
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
