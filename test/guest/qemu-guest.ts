/**
 * The vnsnap test guest, from TypeScript: build (or reuse) the image, make the QEMU command line
 * and kernel parameters, read a guest's status (TCP status port, serial console log,
 * virtio-serial channel) and run iperf3 inside it over that channel (channelIperf). Used by test/integration/guest-*.test.ts and meant for the e2e tests
 * of agents and snapshots. See docs/guest.md.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type { VmStartSpec } from '../../agent/drivers/driver';

/** Repository root (this file runs from dist/test/guest/). */
export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
export const BUILD_SCRIPT = path.join(REPO_ROOT, 'test', 'guest', 'build-guest.sh');
export const STATUS_CHANNEL_NAME = 'org.vnsnap.status';

export interface GuestImage {
  kernel: string;
  initrd: string;
  /** vnguest built for the host too: `vnguest query IP:PORT`, `vnguest disk-scan RAW` */
  tool: string;
}

/**
 * Run a caching build script (build-guest.sh, build-distro-guest.sh): `--print-paths` first (a
 * cache hit needs no root), else a build; returns the `NAME=path` lines it prints for `keys`.
 */
export function cachedBuild(script: string, keys: readonly string[], timeoutMs: number): Record<string, string> {
  const name = path.basename(script);
  const parse = (out: string): Record<string, string> => {
    const kv: Record<string, string> = {};
    for (const line of out.split('\n')) {
      const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
      if (m) kv[m[1]!] = m[2]!;
    }
    if (keys.some((k) => !kv[k])) throw new Error(`${name} printed no paths: ${out}`);
    return kv;
  };
  try {
    return parse(execFileSync('bash', [script, '--print-paths'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }));
  } catch {
    /* not cached: build */
  }
  try {
    return parse(execFileSync('bash', [script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, maxBuffer: 64 << 20 }));
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${name} failed: ${err.stderr?.slice(-4000) || err.message}`);
  }
}

/**
 * The image roots an agent or driver running the test guest needs (agent/drivers/image-root.ts):
 * the guest's cache entry (kernel and initrd) and the given directories (the test's disks).
 */
export function guestImageRoots(image: GuestImage, ...dirs: string[]): string[] {
  return [...new Set([path.dirname(image.kernel), path.dirname(image.initrd), ...dirs])];
}

/** Build the guest if the cache has no entry for the current inputs (needs root), else reuse it. */
export function buildGuest(timeoutMs = 20 * 60_000): GuestImage {
  const kv = cachedBuild(BUILD_SCRIPT, ['VNSNAP_GUEST_KERNEL', 'VNSNAP_GUEST_INITRD', 'VNSNAP_GUEST_TOOL'], timeoutMs);
  return { kernel: kv['VNSNAP_GUEST_KERNEL']!, initrd: kv['VNSNAP_GUEST_INITRD']!, tool: kv['VNSNAP_GUEST_TOOL']! };
}

function hasCommand(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Install QEMU with apt-get if it is missing (root). */
export function ensureQemu(): void {
  ensureAptPackages(['qemu-system-x86_64', 'qemu-img'], ['qemu-system-x86', 'qemu-utils']);
}

/** Installs the Debian packages `packages` (apt-get, updating the lists once if needed) unless every command of `commands` is there. */
export function ensureAptPackages(commands: readonly string[], packages: readonly string[]): void {
  if (commands.every(hasCommand)) return;
  const apt = ['-q', '-o', 'DPkg::Lock::Timeout=600'];
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = (): void => {
    execFileSync('apt-get', [...apt, 'install', '-y', '--no-install-recommends', ...packages], { stdio: ['ignore', 'pipe', 'pipe'], env, timeout: 15 * 60_000 });
  };
  try {
    install();
  } catch {
    execFileSync('apt-get', [...apt, 'update'], { stdio: ['ignore', 'pipe', 'pipe'], env, timeout: 15 * 60_000 });
    install();
  }
}

/** Workload settings, passed on the kernel command line as vnsnap.KEY=VALUE. */
export interface GuestParams {
  name: string;
  /** IPv4 address with prefix, e.g. 192.168.90.1/24 */
  ip?: string;
  gw?: string;
  mtu?: number;
  /** stream targets: "IP:PORT" or "IP:PORT@KiB/s" (port defaults to 7001) */
  peers?: string[];
  /** default sender rate in KiB/s (0 or absent: as fast as the connection takes) */
  rateKiB?: number;
  /** memory load: MiB touched, at memRateMiB MiB/s */
  memMiB?: number;
  memRateMiB?: number;
  /** raw disk device in the guest (default: /dev/vda if present), or 'none' */
  disk?: string;
  /** disk records per second (default 20) */
  diskRate?: number;
  /** stream receiver port (default 7001) and status port (default 7070) */
  listenPort?: number;
  statusPort?: number;
  /** seconds between VNSTAT lines on the serial console (default 5) */
  reportSecs?: number;
  /** start an iperf3 server (port 5201) in the guest */
  iperf?: boolean;
}

/** The kernel command line for a guest. */
export function kernelCmdline(p: GuestParams, extra: readonly string[] = []): string {
  const a = ['console=ttyS0', 'quiet', 'panic=-1', `vnsnap.name=${p.name}`];
  if (p.ip) a.push(`vnsnap.ip=${p.ip}`);
  if (p.gw) a.push(`vnsnap.gw=${p.gw}`);
  if (p.mtu) a.push(`vnsnap.mtu=${p.mtu}`);
  if (p.peers?.length) a.push(`vnsnap.peers=${p.peers.join(',')}`);
  if (p.rateKiB !== undefined) a.push(`vnsnap.rate=${p.rateKiB}`);
  if (p.memMiB !== undefined) a.push(`vnsnap.mem=${p.memMiB}`);
  if (p.memRateMiB !== undefined) a.push(`vnsnap.memrate=${p.memRateMiB}`);
  if (p.disk !== undefined) a.push(`vnsnap.disk=${p.disk}`);
  if (p.diskRate !== undefined) a.push(`vnsnap.diskrate=${p.diskRate}`);
  if (p.listenPort !== undefined) a.push(`vnsnap.listen=${p.listenPort}`);
  if (p.statusPort !== undefined) a.push(`vnsnap.status=${p.statusPort}`);
  if (p.reportSecs !== undefined) a.push(`vnsnap.report=${p.reportSecs}`);
  if (p.iperf) a.push('vnsnap.iperf=1');
  return [...a, ...extra].join(' ');
}

export interface QemuGuestOptions {
  image: GuestImage;
  /** directory for this guest's sockets and logs */
  dir: string;
  params: GuestParams;
  memMiB?: number;
  /** the NIC: a TAP device (opened by QEMU, vnet_hdr off) or any other -netdev spec */
  tap?: string;
  netdev?: string;
  mac: string;
  /** a qcow2 file attached as virtio-blk (/dev/vda in the guest) */
  disk?: string;
  /** add the virtio-serial status channel (default true) */
  statusChannel?: boolean;
  /** `-incoming defer` for a restore */
  incoming?: boolean;
  extraArgs?: string[];
}

export interface GuestFiles {
  serialLog: string;
  serialSock: string;
  qmpSock: string;
  statusSock: string;
}

export function guestFiles(dir: string): GuestFiles {
  return {
    serialLog: path.join(dir, 'serial.log'),
    serialSock: path.join(dir, 'serial.sock'),
    qmpSock: path.join(dir, 'qmp.sock'),
    statusSock: path.join(dir, 'status.sock'),
  };
}

/** The qemu-system-x86_64 arguments (without the program name) for one guest under TCG. */
export function qemuArgs(o: QemuGuestOptions): string[] {
  const f = guestFiles(o.dir);
  const netdev = o.netdev ?? `tap,id=n0,ifname=${o.tap},script=no,downscript=no,vnet_hdr=off`;
  if (!o.netdev && !o.tap) throw new Error('qemuArgs: a tap or a netdev is required');
  const args = [
    '-accel', 'tcg', '-machine', 'q35', '-cpu', 'qemu64', '-smp', '1', '-m', String(o.memMiB ?? 256),
    '-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none', '-no-reboot',
    '-kernel', o.image.kernel, '-initrd', o.image.initrd, '-append', kernelCmdline(o.params),
    '-serial', 'chardev:ser0', '-chardev', `socket,id=ser0,path=${f.serialSock},server=on,wait=off,logfile=${f.serialLog}`,
    '-qmp', `unix:${f.qmpSock},server=on,wait=off`,
    '-netdev', netdev, '-device', `virtio-net-pci,netdev=n0,mac=${o.mac},romfile=`,
  ];
  if (o.disk) {
    args.push(
      '-blockdev', `driver=file,filename=${o.disk},node-name=file0`,
      '-blockdev', 'driver=qcow2,file=file0,node-name=disk0',
      '-device', 'virtio-blk-pci,drive=disk0',
    );
  }
  if (o.statusChannel ?? true) {
    args.push(
      '-device', 'virtio-serial-pci',
      '-chardev', `socket,id=st0,path=${f.statusSock},server=on,wait=off`,
      '-device', `virtserialport,chardev=st0,name=${STATUS_CHANNEL_NAME}`,
    );
  }
  if (o.incoming) args.push('-incoming', 'defer');
  args.push(...(o.extraArgs ?? []));
  return args;
}

/** A VmStartSpec (QEMU driver, VNE "vnqm") for the test guest with its status channel. */
export function guestSpec(image: GuestImage, name: string, opts: { disk?: string; append?: string; mac?: string; memMib?: number; nic?: string; accel?: string; memory?: string }): VmStartSpec {
  return {
    id: `vnqm/${name}`,
    vne: 'vnqm',
    name,
    macs: [opts.mac ?? '52:54:00:77:00:01'],
    driver: {
      kind: 'qemu',
      qemu: {
        memoryMib: opts.memMib ?? 256,
        cpus: 1,
        kernel: image.kernel,
        initrd: image.initrd,
        append: opts.append ?? kernelCmdline({ name, disk: 'none' }),
        disk: opts.disk ?? '',
        extra: { channel: STATUS_CHANNEL_NAME, ...(opts.nic ? { nic: opts.nic } : {}), ...(opts.accel ? { accel: opts.accel } : {}), ...(opts.memory ? { memory: opts.memory } : {}) },
      },
    },
  };
}

// ------------------------------------------------------------------ status

export interface OutStream {
  peer: string;
  index: number;
  connected: boolean;
  bytes: number;
  conn_bytes: number;
  connects: number;
  reconnects: number;
  connect_failures: number;
  errors: number;
  rate: number;
  last_error: string;
}

export interface InStream {
  from: string;
  index: number;
  addr: string;
  open: boolean;
  bytes: number;
  conn_bytes: number;
  words: number;
  errors: number;
  connections: number;
  reconnects: number;
  reboots: number;
  idle_ms: number;
  first_error: string;
  close_reason: string;
}

export interface GuestStatus {
  v: number;
  name: string;
  ip: string;
  nonce: string;
  uptime_ms: number;
  seq: number;
  out: OutStream[];
  in: InStream[];
  bad_hellos: number;
  mem: { enabled: boolean; mib: number; rate_mibps: number; passes: number; pages_touched: number; errors: number; first_error: string };
  disk: {
    enabled: boolean;
    dev: string;
    direct: boolean;
    slots: number;
    records: number;
    start_record: number;
    checks: number;
    check_ok: number;
    last_check: { mem: number; disk: number };
    ahead: number;
    behind: number;
    corrupt: number;
    write_errors: number;
    errors: number;
    first_error: string;
  };
  totals: { sent: number; received: number; stream_errors: number; reconnects: number; errors: number };
}

/** Ask a guest's status port through the network namespace that reaches it (vnguest query). */
export function queryStatus(image: GuestImage, netns: string | null, addr: string, timeoutSecs = 3): GuestStatus {
  const cmd = netns ? 'ip' : image.tool;
  const args = netns ? ['netns', 'exec', netns, image.tool, 'query', addr, String(timeoutSecs)] : ['query', addr, String(timeoutSecs)];
  const out = execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: (timeoutSecs + 5) * 1000 });
  return JSON.parse(out) as GuestStatus;
}

/** Every "VNSTAT {...}" line of a serial console log, oldest first. */
export function serialStatuses(serialLog: string): GuestStatus[] {
  let text = '';
  try {
    text = fs.readFileSync(serialLog, 'utf8');
  } catch {
    return [];
  }
  const out: GuestStatus[] = [];
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf('VNSTAT {');
    if (i < 0) continue;
    try {
      out.push(JSON.parse(line.slice(i + 7)) as GuestStatus);
    } catch {
      /* a line cut by the end of the log */
    }
  }
  return out;
}

/**
 * One request over the virtio-serial channel (a unix socket on the host): connect, send `line`,
 * and resolve with the first line `answer` maps to a value. The guest sees the port open a
 * moment after the connection and a line sent before can be lost, so `line` is sent again every
 * 500 ms until `acked` accepts a line from the guest (the guest must treat repeats as one request).
 */
function channelRequest<T>(sock: string, line: string, timeoutMs: number, acked: (l: string) => boolean, answer: (l: string) => T | undefined): Promise<T> {
  return new Promise((resolve, reject) => {
    const s = net.connect(sock);
    let buf = '';
    let again: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => finish(new Error(`no answer on ${sock} within ${timeoutMs} ms`)), timeoutMs);
    const finish = (err: Error | null, v?: T): void => {
      clearTimeout(timer);
      clearInterval(again);
      s.destroy();
      if (err) reject(err);
      else resolve(v as T);
    };
    s.on('connect', () => {
      const ask = (): void => {
        if (!s.destroyed) s.write(`${line}\n`);
      };
      ask();
      again = setInterval(ask, 500);
    });
    s.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const l = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (acked(l)) clearInterval(again);
        const v = answer(l);
        if (v !== undefined) return finish(null, v);
      }
    });
    s.on('error', (e) => finish(e));
  });
}

/** A line that parses as a status object (partial lines and other answers: undefined). */
function parseStatusLine(l: string): GuestStatus | undefined {
  if (!l.startsWith('{')) return undefined;
  try {
    return JSON.parse(l) as GuestStatus;
  } catch {
    return undefined;
  }
}

/** Ask over the virtio-serial channel (a unix socket on the host): send a line, read one JSON line. */
export function channelStatus(statusSock: string, timeoutMs = 5000): Promise<GuestStatus> {
  return channelRequest(statusSock, 'status', timeoutMs, (l) => parseStatusLine(l) !== undefined, parseStatusLine);
}

let iperfIds = 0;

/**
 * Run iperf3 inside a guest over its virtio-serial channel (vnguest's "iperf3 ID ARG..." command,
 * docs/guest.md) and resolve with its -J document. Arguments are passed as argv (no shell) and
 * must not contain whitespace. A run iperf3 itself reports as failed resolves with the document
 * (its `error` field set); no answer within `timeoutMs` or no JSON rejects.
 */
export function channelIperf(channelSock: string, args: readonly string[], timeoutMs: number): Promise<Record<string, unknown>> {
  const bad = args.find((a) => a === '' || /\s/.test(a));
  if (bad !== undefined) return Promise.reject(new Error(`channelIperf: argument ${JSON.stringify(bad)} is empty or has whitespace`));
  const id = `${process.pid}-${++iperfIds}`;
  const prefix = `IPERF3 ${id} `;
  return channelRequest(
    channelSock,
    ['iperf3', id, ...args].join(' '),
    timeoutMs,
    (l) => l === `IPERF3-START ${id}` || l.startsWith(prefix),
    (l) => (l.startsWith(prefix) ? l.slice(prefix.length) : undefined),
  ).then((body) => {
    if (body.startsWith('!')) throw new Error(`iperf3 in the guest: ${body.slice(1)}`);
    return JSON.parse(body) as Record<string, unknown>;
  });
}
