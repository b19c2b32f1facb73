/**
 * The distro guest (docs/guest.md "The distro guest"), from TypeScript: build (or reuse) the
 * cached Debian 12 image of test/guest/build-distro-guest.sh, and what a test needs to run one
 * under the QEMU driver — a qcow2 overlay of the cached root image per VM (the cached image is
 * never written), the kernel command line (root, console, then the same vnsnap.* parameters as
 * the test guest) and a VmStartSpec with the status channel. The workload inside is the test
 * guest's vnguest, so status, stream and disk checks (qemu-guest.ts) apply unchanged.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { VmStartSpec } from '../../agent/drivers/driver';
import { cachedBuild, kernelCmdline, REPO_ROOT, STATUS_CHANNEL_NAME, type GuestParams } from './qemu-guest';

export const DISTRO_BUILD_SCRIPT = path.join(REPO_ROOT, 'test', 'guest', 'build-distro-guest.sh');
/** The VM memory the distro guest is measured with (FACTS: Debian 12 guests of 192 MiB). */
export const DISTRO_MEMORY_MIB = 192;
/** Kernel arguments before the vnsnap.* ones: the ext4 root on the VM's disk, eth0, a quiet serial console. */
export const DISTRO_ROOT_ARGS = ['root=/dev/vda', 'rw', 'rootfstype=ext4', 'net.ifnames=0'];
/**
 * The guest kernel zeroes every page it frees, so a memory image holds the freed pages as QEMU's
 * zero pages (a few bytes each) instead of their stale contents: exact in every snapshot mode
 * (docs/guest.md, "Smaller memory images").
 */
export const ZERO_FREED_ARG = 'init_on_free=1';

export interface DistroImage {
  kind: 'distro';
  kernel: string;
  initrd: string;
  /** the cached root image (qcow2, read-only base): boot a VM from an overlay of it (distroOverlay) */
  disk: string;
  /** vnguest for the host (`vnguest query`, `disk-scan`) */
  tool: string;
}

/** Build the distro guest if the cache has no entry for the current inputs (root, network), else reuse it. */
export function buildDistroGuest(timeoutMs = 30 * 60_000): DistroImage {
  const keys = ['KERNEL', 'INITRD', 'DISK', 'TOOL'].map((k) => `VNSNAP_DISTRO_${k}`);
  const kv = cachedBuild(DISTRO_BUILD_SCRIPT, keys, timeoutMs);
  const [kernel, initrd, disk, tool] = keys.map((k) => kv[k]!) as [string, string, string, string];
  return { kind: 'distro', kernel, initrd, disk, tool };
}

/** The image roots a driver or agent running distro guests needs: the cache entry and the given directories. */
export function distroImageRoots(image: DistroImage, ...dirs: string[]): string[] {
  return [...new Set([path.dirname(image.kernel), path.dirname(image.initrd), path.dirname(image.disk), ...dirs])];
}

/** A new qcow2 overlay of the cached root image at `file` (one per VM: the VM's own disk). */
export function distroOverlay(image: DistroImage, file: string): string {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', image.disk, '-F', 'qcow2', file]);
  return file;
}

/**
 * The distro guest's kernel command line: the root arguments, init_on_free=1 (unless
 * zeroFreed is false: the measurement of what it saves), then the test guest's line
 * (console=ttyS0 quiet panic=-1 vnsnap.*). Without `disk` the workload writes its records to a
 * file on the root filesystem (/var/lib/vnguest/disk.img), never to /dev/vda.
 */
export function distroCmdline(p: GuestParams, extra: readonly string[] = [], o: { zeroFreed?: boolean } = {}): string {
  return [...DISTRO_ROOT_ARGS, ...(o.zeroFreed === false ? [] : [ZERO_FREED_ARG]), kernelCmdline(p, extra)].join(' ');
}

/** A VmStartSpec (QEMU driver) for a distro guest: `disk` is the VM's own overlay (distroOverlay). */
export function distroSpec(image: DistroImage, vne: string, name: string, opts: { disk: string; params?: Omit<GuestParams, 'name'>; mac?: string; memMib?: number; nic?: string; accel?: string; zeroFreed?: boolean; balloonStats?: boolean; memory?: string }): VmStartSpec {
  return {
    id: `${vne}/${name}`,
    vne,
    name,
    macs: [opts.mac ?? '52:54:00:78:00:01'],
    driver: {
      kind: 'qemu',
      qemu: {
        memoryMib: opts.memMib ?? DISTRO_MEMORY_MIB,
        cpus: 1,
        kernel: image.kernel,
        initrd: image.initrd,
        append: distroCmdline({ name, ...(opts.params ?? {}) }, [], { zeroFreed: opts.zeroFreed !== false }),
        disk: opts.disk,
        extra: { channel: STATUS_CHANNEL_NAME, ...(opts.nic ? { nic: opts.nic } : {}), ...(opts.accel ? { accel: opts.accel } : {}), ...(opts.balloonStats ? { balloon: 'stats' } : {}), ...(opts.memory ? { memory: opts.memory } : {}) },
      },
    },
  };
}
