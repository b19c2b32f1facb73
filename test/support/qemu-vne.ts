/**
 * The four-guest QEMU VNE of the issue-4 end-to-end test, benchmark and demo (two namespaced
 * hosts of test/support/cluster.ts with `"drivers": ["qemu"]`, the test guest of docs/guest.md,
 * or the distro guest when writeVneFile is given a DistroImage): its definition file, the guests' status over their virtio-serial channels, and the checks
 * that every TCP stream, disk and memory load is intact.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { DISTRO_MEMORY_MIB, distroCmdline, distroOverlay, type DistroImage } from '../guest/distro-guest';
import { channelStatus, kernelCmdline, type GuestImage, type GuestParams, type GuestStatus } from '../guest/qemu-guest';
import { METRICS_PORT, type CatalogSnapshot, type Cluster } from './cluster';
import { sleep, until } from './wait';

export const E2E_VNE = 'e2eq';
export const E2E_VMS = ['a', 'b', 'c', 'd'];
export const E2E_HOME: Record<string, string> = { a: 'h1', b: 'h1', c: 'h2', d: 'h2' };
export const E2E_SWAPPED: Record<string, string> = { a: 'h2', b: 'h2', c: 'h1', d: 'h1' };
/** Streams: a→c and d→a cross the overlay, a→b and c→d stay on one host, b→d crosses. */
const PEERS: Record<string, string[]> = { a: ['c', 'b'], b: ['d'], c: ['d'], d: ['a'] };
export const QEMU_WORKDIR = '/run/vnsnap/qemu';

const ipOf = (vm: string): string => `192.168.88.${E2E_VMS.indexOf(vm) + 1}`;

export interface E2eOptions {
  /** guest RAM (default 128 MiB for the test guest, DISTRO_MEMORY_MIB for the distro guest) */
  memoryMib?: number;
  /** a second QMP monitor per VM (extra.monitor=1: monitor.sock), for the benchmark's baseline */
  monitor?: boolean;
  /** per-stream rate in KiB/s (0 = as fast as TCP goes) */
  rateKiB?: number;
  /** the VMs' NIC mode (extra.nic; default: the driver's) */
  nic?: string;
  /**
   * the VMs' memory mode (extra.memory: migration or tracked; default VNSNAP_E2E_MEMORY, else the
   * driver's): `VNSNAP_E2E_MEMORY=tracked npm run test:e2e-qemu` runs the end-to-end suites with
   * tracked memory (docs/incremental-memory.md)
   */
  memory?: string;
}

/**
 * The VNE definition file: four qemu VMs with disks, streams, memory and disk load. The image's
 * kind decides the guest: the test guest (a blank 32 MiB disk each, its raw disk checker) or the
 * distro guest (a DistroImage: each VM boots from its own qcow2 overlay of the cached root image;
 * the image's cache directory must be among the agents' image roots: distroImageRoots()).
 */
export function writeVneFile(dir: string, image: GuestImage | DistroImage, o: E2eOptions = {}): string {
  const distro = 'kind' in image && image.kind === 'distro';
  const memory = o.memory ?? process.env.VNSNAP_E2E_MEMORY;
  const vms = E2E_VMS.map((name, i) => {
    const disk = path.join(dir, `${name}-base.qcow2`);
    if (distro) distroOverlay(image, disk);
    else execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '32M']);
    const params: GuestParams = {
      name,
      ip: `${ipOf(name)}/24`,
      mtu: 1400,
      peers: (PEERS[name] ?? []).map((p) => `${ipOf(p)}:7001`),
      rateKiB: o.rateKiB ?? 256,
      memMiB: 16,
      memRateMiB: 4,
      diskRate: 20,
      reportSecs: 5,
    };
    const append = distro ? distroCmdline(params) : kernelCmdline(params);
    return {
      name,
      host: E2E_HOME[name],
      macs: [`52:54:00:88:00:0${i + 1}`],
      driver: { qemu: { memoryMib: o.memoryMib ?? (distro ? DISTRO_MEMORY_MIB : 128), cpus: 1, kernel: image.kernel, initrd: image.initrd, append, disk, extra: { channel: 'org.vnsnap.status', ...(o.monitor ? { monitor: '1' } : {}), ...(o.nic ? { nic: o.nic } : {}), ...(memory ? { memory } : {}) } } },
    };
  });
  const f = path.join(dir, `${E2E_VNE}.json`);
  fs.writeFileSync(f, JSON.stringify({ name: E2E_VNE, vni: 3088, vms }, null, 2));
  return f;
}

/** The live instance directory of a VM (the one whose QEMU runs) of VNE `vne` (default the e2e VNE). */
export function instanceDir(vm: string, vne = E2E_VNE): string | undefined {
  if (!fs.existsSync(QEMU_WORKDIR)) return undefined;
  for (const d of fs.readdirSync(QEMU_WORKDIR)) {
    if (!d.startsWith(`vnqm-${vne}_${vm}-`)) continue;
    const dir = path.join(QEMU_WORKDIR, d);
    try {
      const pid = Number(fs.readFileSync(path.join(dir, 'qemu.pid'), 'utf8').trim());
      if (pid > 0 && fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) return dir;
    } catch {
      /* not started or gone */
    }
  }
  return undefined;
}

/** A guest's status over its virtio-serial channel. */
export async function guestStatus(vm: string): Promise<GuestStatus> {
  const dir = instanceDir(vm);
  if (!dir) throw new Error(`no running QEMU for ${vm}`);
  return channelStatus(path.join(dir, 'channel.sock'), 8000);
}

export async function allStatuses(): Promise<Record<string, GuestStatus>> {
  const out: Record<string, GuestStatus> = {};
  for (const vm of E2E_VMS) out[vm] = await guestStatus(vm);
  return out;
}

/** Tear down a cluster that ran the e2e VNE: stop the VNE, kill any QEMU of it left, remove the cluster. */
export async function destroyE2eCluster(c: Cluster): Promise<void> {
  await c.cli(['vne', 'stop', E2E_VNE], 30_000).catch(() => undefined);
  killE2eQemus();
  await c.destroy();
  killE2eQemus();
}

/** Kill every QEMU of this VNE (an agent killed by destroy() leaves its QEMUs behind). */
export function killE2eQemus(): void {
  if (!fs.existsSync(QEMU_WORKDIR)) return;
  for (const d of fs.readdirSync(QEMU_WORKDIR)) {
    if (!d.startsWith(`vnqm-${E2E_VNE}_`)) continue;
    const dir = path.join(QEMU_WORKDIR, d);
    try {
      const pid = Number(fs.readFileSync(path.join(dir, 'qemu.pid'), 'utf8').trim());
      if (pid > 0 && fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Every stream connected and moving (receivers have bytes), nothing counted wrong. */
export function streamsUp(st: Record<string, GuestStatus>, minBytes = 50_000): boolean {
  return E2E_VMS.every((vm) => {
    const s = st[vm];
    if (!s) return false;
    const want = E2E_VMS.filter((x) => (PEERS[x] ?? []).includes(vm)).length;
    return s.out.length === (PEERS[vm] ?? []).length && s.out.every((o) => o.connected) && s.in.length === want && s.in.every((i) => i.open && i.bytes >= minBytes);
  });
}

/**
 * What is wrong between two status readings of the same run (empty = intact): same nonce (no
 * reboot), no error, no reconnect, every connection open, every stream and the disk checks moved on.
 */
export function intactProblems(label: string, before: Record<string, GuestStatus>, after: Record<string, GuestStatus>): string[] {
  const p: string[] = [];
  for (const vm of E2E_VMS) {
    const b = before[vm];
    const a = after[vm];
    if (!a || !b) {
      p.push(`${label}: ${vm}: no status`);
      continue;
    }
    if (a.nonce !== b.nonce) p.push(`${label}: ${vm} restarted vnguest (nonce ${b.nonce} → ${a.nonce})`);
    if (a.totals.errors !== 0) p.push(`${label}: ${vm}: ${a.totals.errors} errors (stream ${a.totals.stream_errors}, mem ${a.mem.errors} ${a.mem.first_error}, disk ${a.disk.errors} ${a.disk.first_error}; in: ${a.in.map((i) => i.first_error).join('|')})`);
    if (a.totals.reconnects !== 0) p.push(`${label}: ${vm}: ${a.totals.reconnects} reconnects`);
    for (const o of a.out) {
      const ob = b.out.find((x) => x.peer === o.peer);
      if (!o.connected) p.push(`${label}: ${vm}→${o.peer} not connected (${o.last_error})`);
      if (ob && o.bytes <= ob.bytes && o.conn_bytes <= ob.conn_bytes) p.push(`${label}: ${vm}→${o.peer} did not move (${ob.bytes} → ${o.bytes})`);
    }
    for (const i of a.in) {
      const ib = b.in.find((x) => x.from === i.from && x.index === i.index);
      if (!i.open) p.push(`${label}: ${i.from}→${vm} closed (${i.close_reason})`);
      if (i.reconnects !== 0 || i.reboots !== 0) p.push(`${label}: ${i.from}→${vm}: ${i.reconnects} reconnects, ${i.reboots} reboots`);
      if (ib && i.bytes <= ib.bytes) p.push(`${label}: ${i.from}→${vm} did not move (${ib.bytes} → ${i.bytes})`);
    }
    if (a.disk.check_ok <= b.disk.check_ok && a.disk.records <= b.disk.records) p.push(`${label}: ${vm}: disk checks did not continue`);
  }
  return p;
}

/** After a restore the counters went back to the snapshot: compare with a reading taken just after it. */
export async function checkAfterRestore(label: string, firstEver: Record<string, GuestStatus>, settleMs = 5000): Promise<string[]> {
  const r0 = await until(`${label}: status of every restored guest`, () => allStatuses(), { timeoutMs: 60_000, everyMs: 500 });
  await sleep(settleMs); // kept: the window over which every restored stream must move and none break
  const r1 = await allStatuses();
  const p = intactProblems(label, r0, r1);
  for (const vm of E2E_VMS) if (r1[vm]?.nonce !== firstEver[vm]?.nonce) p.push(`${label}: ${vm} is not the same guest run (nonce)`);
  return p;
}

/**
 * A background snapshot of the running VNE taken under its streams (complete, its artefacts
 * checked, every stream, disk and memory load intact over the 3 s after it), then restored over
 * the running VNE on the same hosts: the problems found, none when all held.
 */
export async function backgroundSnapshotAndRestore(c: Cluster, firstEver: Record<string, GuestStatus>): Promise<string[]> {
  const before = await allStatuses();
  const r = await c.cliStream<{ done?: CatalogSnapshot }>(['snapshot', 'create', E2E_VNE, '--mode', 'background']).done;
  if (r.code !== 0) return [`snapshot create: exit ${String(r.code)}: ${r.stderr.trim()}`];
  const done = r.events[r.events.length - 1]?.done;
  if (!done) return ['snapshot create: the stream did not end with the final record'];
  if (done.state !== 'SNAPSHOT_STATE_COMPLETE') return [`snapshot ${done.id}: ${done.state} ${done.error}`];
  const p = await c.completeSnapshotProblems(done);
  await sleep(3000); // kept: the window over which every stream must move and none break
  p.push(...intactProblems('after the background snapshot', before, await allStatuses()));
  if (p.length > 0) return p;
  const rr = await c.cliStream<{ done?: CatalogSnapshot }>(['restore', done.id, '--stop-running']).done;
  if (rr.code !== 0) return [`restore ${done.id}: exit ${String(rr.code)}: ${rr.stderr.trim()}`];
  return checkAfterRestore('background, same hosts', firstEver);
}

/** Frames the switch of `host` read from guest vm's port (its /metrics endpoint). */
export function portRxFrames(c: Cluster, host: string, vm: string, vne = E2E_VNE): number {
  const text = c.topo.exec(host, 'curl', ['-sf', '--max-time', '20', `http://127.0.0.1:${METRICS_PORT}/metrics`]);
  const m = new RegExp(`^vnsnap_switch_port_rx_frames\\{[^}]*port="${vne}/${vm}/0"[^}]*\\} (\\d+)`, 'm').exec(text);
  if (!m) throw new Error(`no rx_frames metric for ${vne}/${vm}/0 on ${host}`);
  return Number(m[1]);
}

/** Copy every running guest's console log to `dest` (for a failure report); returns the files. */
export function saveConsoles(dest: string): string[] {
  const out: string[] = [];
  fs.mkdirSync(dest, { recursive: true });
  for (const vm of E2E_VMS) {
    const d = instanceDir(vm);
    if (!d || !fs.existsSync(path.join(d, 'console.log'))) continue;
    const f = path.join(dest, `${vm}-console.log`);
    fs.copyFileSync(path.join(d, 'console.log'), f);
    out.push(f);
  }
  return out;
}

/**
 * Define and start the four-guest VNE on `c` (placement E2E_HOME) and wait until every stream is
 * connected and moving (boot takes a while under TCG): those first statuses, and the time from
 * the start to them.
 */
export async function startE2eVne(c: Cluster, image: GuestImage): Promise<{ first: Record<string, GuestStatus>; bootMs: number }> {
  const def = await c.cliJson<{ state: string }>(['vne', 'define', writeVneFile(c.dir, image)]);
  if (def.state !== 'VNE_STATE_DEFINED') throw new Error(`vne define: ${def.state}`);
  const t0 = Date.now();
  const started = await c.cliJson<{ vne: { state: string; placement: Record<string, string> } }>(['vne', 'start', E2E_VNE]);
  if (started.vne.state !== 'VNE_STATE_RUNNING' || JSON.stringify(started.vne.placement) !== JSON.stringify(E2E_HOME)) throw new Error(`vne start: ${started.vne.state} on ${JSON.stringify(started.vne.placement)}`);
  const first = (await until('every stream connected and moving', async () => {
    const st = await allStatuses();
    return streamsUp(st) ? st : undefined;
  }, { timeoutMs: 180_000, everyMs: 2000 })) as Record<string, GuestStatus>;
  return { first, bootMs: Date.now() - t0 };
}
