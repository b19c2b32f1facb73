/**
 * The PV test guest on the nested Xen test bed (runs in dom0): its xl configuration (dom0's own
 * generic kernel + the test bed's busybox initramfs with xen-netfront and vnguest) and readers
 * of its status lines, which xenconsoled logs to /var/log/xen/console/guest-<domain>.log.
 */
import * as fs from 'node:fs';

export interface GuestOptions {
  name: string;
  /** eth0 address, e.g. 10.9.0.1/24 */
  ip: string;
  /** vnguest stream peers (IP[:PORT][@KiB/s]) */
  peers?: string[];
  /** Sender rate, KiB/s (0 = as fast as TCP takes). */
  rate?: number;
  memMib?: number;
  /** vnguest memory load: MiB touched at memrate MiB/s. */
  mem?: number;
  memrate?: number;
  report?: number;
  /**
   * A file-backed raw disk (xvda) and vnguest's disk writer on it at `rate` records/s, whose
   * checks prove memory and disk were captured at the same instant.
   */
  disk?: { file: string; rate: number };
}

/**
 * The image roots (agent config imageRoots) the test guests need in dom0: /boot (dom0's own
 * kernel), /vnxen-img (the initramfs share) and /var/lib/vnsnap/disks (the smoke test's disk).
 */
export const XEN_TEST_IMAGE_ROOTS: readonly string[] = ['/boot', '/vnxen-img', '/var/lib/vnsnap/disks'];

export function dom0Kernel(): string {
  const k = fs.readdirSync('/boot').filter((f) => f.startsWith('vmlinuz-')).sort().pop();
  if (!k) throw new Error('no /boot/vmlinuz-* in dom0');
  return `/boot/${k}`;
}

export function guestConfig(o: GuestOptions): string {
  const extra = [
    'console=hvc0 quiet panic=-1',
    `vnsnap.name=${o.name}`,
    `vnsnap.ip=${o.ip}`,
    o.disk ? `vnsnap.disk=/dev/xvda vnsnap.diskrate=${o.disk.rate}` : 'vnsnap.disk=none',
    `vnsnap.report=${o.report ?? 1}`,
    ...(o.peers?.length ? [`vnsnap.peers=${o.peers.join(',')}`] : []),
    ...(o.rate !== undefined ? [`vnsnap.rate=${o.rate}`] : []),
    ...(o.mem ? [`vnsnap.mem=${o.mem}`, `vnsnap.memrate=${o.memrate ?? 8}`] : []),
  ].join(' ');
  return [
    'type = "pv"',
    `kernel = "${dom0Kernel()}"`,
    'ramdisk = "/vnxen-img/guest-initrd.img"',
    `extra = "${extra}"`,
    `memory = ${o.memMib ?? 128}`,
    'vcpus = 1',
    'on_crash = "preserve"',
    ...(o.disk ? [`disk = [ 'format=raw, vdev=xvda, access=rw, target=${o.disk.file}' ]`] : []),
    '',
  ].join('\n');
}

export interface GuestStatus {
  name: string;
  nonce: string;
  seq: number;
  uptime_ms: number;
  out: { peer: string; connected: boolean; bytes: number; reconnects: number; errors: number }[];
  in: { from: string; open: boolean; bytes: number; errors: number; reconnects: number; reboots: number; idle_ms: number; first_error: string }[];
  mem: { errors: number };
  disk: { enabled: boolean; dev: string; records: number; checks: number; check_ok: number; errors: number; first_error: string };
  totals: { sent: number; received: number; stream_errors: number; reconnects: number; errors: number };
}

/** The VNSTAT lines of a piece of console log (a line cut by the end of the text is left out). */
export function parseStatuses(text: string): GuestStatus[] {
  const out: GuestStatus[] = [];
  for (const m of text.matchAll(/VNSTAT (\{.*\})/g)) {
    try {
      out.push(JSON.parse(m[1] as string) as GuestStatus);
    } catch {
      // a line cut by the end of the file
    }
  }
  return out;
}

/** Every VNSTAT line of a console log (optionally only after a marker line). */
export function statuses(logFile: string, after?: string): GuestStatus[] {
  if (!fs.existsSync(logFile)) return [];
  let text = fs.readFileSync(logFile, 'utf8');
  if (after) {
    const i = text.lastIndexOf(after);
    text = i >= 0 ? text.slice(i) : '';
  }
  return parseStatuses(text);
}

export function latestStatus(logFile: string, after?: string): Promise<GuestStatus | null> {
  return Promise.resolve(statuses(logFile, after).pop() ?? null);
}
