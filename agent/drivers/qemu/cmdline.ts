/**
 * The QEMU command line of a VM (docs/qemu.md), and the accelerator probe.
 *
 * One function builds the arguments for both a start and a restore, so a restored VM has
 * exactly the device set of the one that was snapshotted; a restore only adds `-S -incoming
 * defer` (loaded paused: the image of a pre-copy snapshot says "running" and QEMU would start
 * it at once without -S).
 *
 * QemuDriverSpec.extra keys the driver understands:
 *   accel=kvm|tcg        force the accelerator (default: probed once, see probeAccel)
 *   machine=q35          machine type (default q35)
 *   cpu=qemu64           CPU model (default qemu64: the same model on every host, so an image
 *                        restores on another host)
 *   channel=NAME         a virtio-serial port NAME whose host side is a unix socket in the VM's
 *                        directory (inspect(id).channelSock); the test guest's status channel
 *                        is "org.vnsnap.status"
 *   nic=stream|tap|tap-vnet|tap-bpf  how the vNICs join the switch (default: the driver's option):
 *                        stream = `-netdev stream` to a StreamPort; tap = QEMU's TAP with
 *                        vnet_hdr=off read by a packet socket; tap-vnet = QEMU's TAP with
 *                        vnet_hdr=on read by a packet socket with PACKET_VNET_HDR (PacketPort
 *                        offload): the guest's TSO super-frames and partial checksums reach the
 *                        switch whole (docs/nic-offloads.md); tap-bpf = QEMU as tap-vnet, the
 *                        TAP's frames through the in-kernel data path's program (agent/drivers/
 *                        qemu/vm-veth.ts; docs/nic-offloads.md). An image saved with one mode loads
 *                        only with the same one (vnet_hdr is part of the device state).
 *   monitor=1            a second QMP monitor, monitor.sock in the VM's directory, for an
 *                        operator's own tools (the driver keeps qmp.sock to itself; QEMU serves
 *                        one client per monitor socket)
 *   balloon=stats        a virtio-balloon device (id balloon0) that only reports: with the
 *                        guest's virtio_balloon driver, QMP `qom-set /machine/peripheral/balloon0
 *                        guest-stats-polling-interval N` then `qom-get … guest-stats` give the
 *                        guest's own MemTotal, MemFree and MemAvailable (test/bench/image-size.ts).
 *                        No free-page hinting or reporting: neither is safe in a background
 *                        snapshot (docs/qemu.md, "Image size"). Part of the device set: an image
 *                        saved with it loads only with it.
 *
 * Guest RAM under TCG on QEMU < 9.0 is padded by 8 KiB (tcgRamPadKib): QEMU syncs a RAM block's
 * migration dirty bitmap 64 pages at a time when its length is a multiple of 64 pages, and that
 * fast path did not reset TCG's TLB, so guest stores through a cached TLB entry after a sync went
 * unrecorded and pre-copy images lost them (fixed upstream in 9.0, commit 03bfc2188f "physmem:
 * Fix migration dirty bitmap coherency with TCG memory access"). A length that is not a multiple
 * of 64 pages takes the page-by-page path, which resets the TLB. docs/qemu.md has the evidence.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { QemuDriverSpec__Output } from '../../../proto/gen/vnsnap/v1/QemuDriverSpec';
import { exec } from '../exec';
import { readImageChain, type ImageInfo } from './spec-check';
import { trackedRamArgs } from './ram-track';
import { memoryMode } from '../../../proto/specs/qemu-extra';

export type Accel = 'kvm' | 'tcg';
export type NicMode = 'stream' | 'tap' | 'tap-vnet' | 'tap-bpf';

/** Every NIC mode, for validation and messages. */
export const NIC_MODES: readonly NicMode[] = ['stream', 'tap', 'tap-vnet', 'tap-bpf'];

/** Does this mode run QEMU's own TAP (the switch on its host side with a packet socket)? */
export const isTapMode = (m: NicMode): boolean => m !== 'stream';

export interface AccelChoice {
  accel: Accel;
  reason: string;
}

let probed: AccelChoice | undefined;

/**
 * KVM when it can run guests, else TCG; probed once per process.
 * /dev/kvm alone proves nothing (on this project's machines it exists but is a shim without
 * hardware virtualisation, and a Linux guest hangs or dies with "KVM internal error"): KVM is
 * chosen only when /dev/kvm opens read-write AND the CPU advertises vmx or svm.
 */
export function probeAccel(): AccelChoice {
  if (probed) return probed;
  let kvmOpen = false;
  try {
    fs.closeSync(fs.openSync('/dev/kvm', 'r+'));
    kvmOpen = true;
  } catch {
    /* absent or not permitted */
  }
  let hw = false;
  try {
    hw = /^flags\s*:.*\b(vmx|svm)\b/m.test(fs.readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    /* not Linux? */
  }
  if (!kvmOpen) probed = { accel: 'tcg', reason: '/dev/kvm cannot be opened read-write' };
  else if (!hw) probed = { accel: 'tcg', reason: '/dev/kvm opens but the CPU has no vmx/svm flag: KVM here cannot run guests' };
  else probed = { accel: 'kvm', reason: '/dev/kvm opens and the CPU has vmx/svm' };
  return probed;
}

const versions = new Map<string, [number, number]>();

/** QEMU's version [major, minor] from `BINARY --version` (cached per binary; [0, 0] if unknown). */
export async function qemuVersion(binary: string): Promise<[number, number]> {
  let v = versions.get(binary);
  if (!v) {
    v = [0, 0];
    try {
      const m = /version (\d+)\.(\d+)/.exec(await exec(binary, ['--version'], { timeoutMs: 10_000 }));
      if (m) v = [Number(m[1]), Number(m[2])];
    } catch {
      /* the start will fail with QEMU's own message */
    }
    versions.set(binary, v);
  }
  return v;
}

/** KiB of RAM padding that steer QEMU < 9.0 under TCG off its buggy dirty-sync path (module comment). */
export function tcgRamPadKib(accel: Accel, version: [number, number]): number {
  return accel === 'tcg' && version[0] < 9 ? 8 : 0;
}

export interface VmFiles {
  dir: string;
  qmpSock: string;
  consoleLog: string;
  channelSock: string;
  pidFile: string;
  /** QEMU's stderr (it outlives the agent, so no pipe to it). */
  stderrLog: string;
  /** Where the VM's disk chain lives (the agent's disks directory for the VM: ../disk-dir.ts). */
  diskDir: string;
  /** The first disk overlay of the instance (the top changes with every snapshot). */
  disk0: string;
  netSock(i: number): string;
}

/** The instance's files in `dir`; its disk chain in `diskDir` (default: the instance directory itself). */
export function vmFiles(dir: string, diskDir = dir): VmFiles {
  return {
    dir,
    qmpSock: `${dir}/qmp.sock`,
    consoleLog: `${dir}/console.log`,
    channelSock: `${dir}/channel.sock`,
    pidFile: `${dir}/qemu.pid`,
    stderrLog: `${dir}/qemu.stderr`,
    diskDir,
    disk0: `${diskDir}/disk0.qcow2`,
    netSock: (i) => `${dir}/net${i}.sock`,
  };
}

export interface NicArg {
  mode: NicMode;
  mac: string;
  /** stream: the switch's unix socket; tap, tap-vnet: the TAP device QEMU opens. */
  target: string;
}

export interface CmdlineInput {
  spec: QemuDriverSpec__Output;
  files: VmFiles;
  accel: Accel;
  nics: NicArg[];
  /** Attach the disk as virtio-blk (node names file0/disk0): files.disk0, or diskFile when given. */
  disk: boolean;
  /** The image to boot from when it is not files.disk0 (the top of a kept disk's chain). */
  diskFile?: string;
  /** Restore: -S -incoming defer. */
  incoming: boolean;
  /** Extra guest RAM in KiB (tcgRamPadKib); the same value must be used to restore. */
  ramPadKib?: number;
  /**
   * The disk's backing chain below its top, top down (`qemu-img info --backing-chain`): given, every
   * layer is a node of its own with drop-cache off (diskArgs); absent, QEMU opens the chain itself.
   */
  backing?: BackingLayer[];
}

/** One image under the disk's top. */
export interface BackingLayer {
  file: string;
  format: 'qcow2' | 'raw';
}

/**
 * The chain under `top` as QEMU would open it (`qemu-img info -U --backing-chain`), for diskArgs;
 * undefined when it cannot be read or holds anything but absolute paths to qcow2 images (a raw
 * one last), so QEMU then opens the chain itself as before.
 */
export async function readBackingChain(top: string, qemuImg: (args: string[]) => Promise<string>): Promise<BackingLayer[] | undefined> {
  let images: ImageInfo[];
  try {
    images = await readImageChain(top, qemuImg);
  } catch {
    return undefined;
  }
  const layers: BackingLayer[] = [];
  for (const [i, img] of images.slice(1).entries()) {
    const last = i === images.length - 2;
    if (typeof img.filename !== 'string' || !path.isAbsolute(img.filename)) return undefined;
    if (img.format !== 'qcow2' && !(img.format === 'raw' && last)) return undefined;
    layers.push({ file: img.filename, format: img.format });
  }
  return layers;
}

/** A value in QEMU's `key=value,...` option syntax (a comma doubled). */
const optValue = (v: string): string => v.replaceAll(',', ',,');

/**
 * The disk's block nodes: the top image (file0/disk0), written by the VM, over its backing chain,
 * each layer given as nodes of its own (back<i>/bfile<i>, read-only) when the chain is known.
 * Every file node has `drop-cache=off`: a pre-copy's completion inactivates the block nodes and
 * the `cont` that resumes the VM re-activates them, and with QEMU's default (drop-cache on) the
 * re-activation evicts every image file of the chain from the host's page cache
 * (posix_fadvise DONTNEED) and re-reads each qcow2 layer's header and tables from the disk, all
 * inside the VM's pause (10-75 ms of a distro guest's; docs/qemu.md). The option only matters for
 * images another host may have written (shared storage); these are the agent's own local files,
 * read and written only through the host's one page cache. A chain QEMU opens itself (no
 * `backing` given) would leave the lower layers at the default.
 */
function diskArgs(top: string, backing: BackingLayer[] | undefined): string[] {
  const args: string[] = [];
  const chain = backing ?? [];
  for (let i = chain.length - 1; i >= 0; i--) {
    const l = chain[i] as BackingLayer;
    const below = i < chain.length - 1 ? `,backing=back${i + 1}` : '';
    args.push(
      '-blockdev', `driver=file,filename=${optValue(l.file)},node-name=bfile${i},read-only=on,drop-cache=off`,
      '-blockdev', `driver=${l.format},file=bfile${i},node-name=back${i},read-only=on${l.format === 'qcow2' ? below : ''}`,
    );
  }
  args.push(
    '-blockdev', `driver=file,filename=${optValue(top)},node-name=file0,drop-cache=off`,
    '-blockdev', `driver=qcow2,file=file0,node-name=disk0${chain.length ? ',backing=back0' : ''}`,
  );
  return args;
}

export function qemuCmdline(c: CmdlineInput): string[] {
  const s = c.spec;
  const extra = s.extra ?? {};
  const mem = s.memoryMib || 256;
  const cpus = s.cpus || 1;
  const args = [
    '-accel', c.accel, '-machine', extra.machine ?? 'q35', '-cpu', extra.cpu ?? 'qemu64',
    '-smp', String(cpus), '-m', c.ramPadKib ? `${mem * 1024 + c.ramPadKib}k` : String(mem),
    '-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none', '-no-reboot',
    '-serial', `file:${c.files.consoleLog}`,
    '-qmp', `unix:${c.files.qmpSock},server=on,wait=off`,
    '-pidfile', c.files.pidFile,
  ];
  // Tracked memory (docs/incremental-memory.md): the RAM a shared memfd the agent reads; `-m` stays (the same size).
  if (memoryMode(extra) === 'tracked') args.push(...trackedRamArgs(mem * 1024 + (c.ramPadKib ?? 0)));
  if (extra.monitor === '1') args.push('-qmp', `unix:${c.files.dir}/monitor.sock,server=on,wait=off`);
  if (s.kernel) args.push('-kernel', s.kernel);
  if (s.initrd) args.push('-initrd', s.initrd);
  if (s.append) args.push('-append', s.append);
  c.nics.forEach((n, i) => {
    const netdev =
      n.mode === 'stream'
        ? `stream,id=n${i},server=off,addr.type=unix,addr.path=${n.target}`
        : `tap,id=n${i},ifname=${n.target},script=no,downscript=no,vnet_hdr=${n.mode === 'tap-vnet' || n.mode === 'tap-bpf' ? 'on' : 'off'}`;
    args.push('-netdev', netdev, '-device', `virtio-net-pci,netdev=n${i},mac=${n.mac},romfile=`);
  });
  if (c.disk) {
    args.push(...diskArgs(c.diskFile ?? c.files.disk0, c.backing), '-device', 'virtio-blk-pci,drive=disk0');
  }
  if (extra.channel) {
    args.push(
      '-device', 'virtio-serial-pci',
      '-chardev', `socket,id=ch0,path=${c.files.channelSock},server=on,wait=off`,
      '-device', `virtserialport,chardev=ch0,name=${extra.channel}`,
    );
  }
  if (extra.balloon === 'stats') args.push('-device', 'virtio-balloon-pci,id=balloon0');
  // QEMU's threads named (/proc/PID/task/TID/comm: `IO mon_iothread`, `live_migration`, `CPU 0/TCG`):
  // the pause boost finds the QMP monitor thread by its name (pause-boost.ts). Not part of the
  // device state: an image loads with or without it.
  args.push('-name', `${path.basename(c.files.dir)},debug-threads=on`);
  if (c.incoming) args.push('-S', '-incoming', 'defer');
  args.push(...traceArgs(c.files.dir));
  return args;
}

/** Set to a directory: every QEMU started writes its cut's trace events there (traceArgs). */
export const QEMU_TRACE_ENV = 'VNSNAP_QEMU_TRACE_DIR';

/**
 * QEMU's own trace events of a cut (its stop, the QMP commands, the background snapshot's setup,
 * device state and write protection, the events it emits), timestamped, into
 * `DIR/<instance directory's name>.trace` (each line by thread id; the threads are named with
 * every command line: /proc/PID/task/TID/comm), when VNSNAP_QEMU_TRACE_DIR is set; nothing
 * otherwise. Diagnostics only: they do not change the device set, so an image loads with or
 * without them.
 */
export function traceArgs(instanceDir: string, env: NodeJS.ProcessEnv = process.env): string[] {
  const dir = env[QEMU_TRACE_ENV];
  if (!dir) return [];
  const events = [
    'handle_qmp_command', 'monitor_qmp_respond', 'monitor_protocol_event_emit', 'vm_stop_flush_all',
    'migrate_set_state', 'migration_thread_setup_complete', 'savevm_state_setup', 'savevm_state_header',
    'savevm_section_start', 'savevm_section_end', 'ram_write_tracking_ramblock_start', 'file_paio_submit', 'qcow2_cache_flush',
    // The disk work of a cut: each block-layer job on QEMU's thread pool (a flush's fdatasync among
    // them) from submit to completion, what the stop, the completion's inactivation and the `cont`'s
    // reactivation spend in it, and the run states between them.
    'thread_pool_submit', 'thread_pool_complete', 'qcow2_cache_entry_flush', 'qcow2_cache_get_read', 'runstate_set',
    'migration_completion_vm_stop', 'savevm_state_complete_precopy', 'qmp_enter_stop', 'qmp_exit_stop', 'qmp_enter_cont',
    'qmp_exit_cont', 'qmp_enter_migrate_continue', 'qmp_exit_migrate_continue',
    // The end of pause_all_vcpus in a stop (the vCPUs parked; the device handlers follow, then STOP).
    'vm_state_notify',
  ];
  return ['-msg', 'timestamp=on', '-D', path.join(dir, `${path.basename(instanceDir)}.trace`), ...events.flatMap((e) => ['-trace', `enable=${e}`])];
}
