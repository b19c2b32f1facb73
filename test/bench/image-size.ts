/**
 * How big a VM's memory image is against the memory its guest uses (issue: "smaller images";
 * docs/performance.md, "Image size and restore"). The guest's own figures are read inside the
 * guest: its virtio_balloon driver reports MemTotal, MemFree and MemAvailable to a reporting-only
 * balloon device (qemu extra balloon=stats), read over QMP. "In use" is MemTotal − MemFree (every
 * page whose content the guest still holds, page cache included: what an exact image must
 * carry); MemTotal − MemAvailable (without reclaimable cache) is reported beside it.
 *
 *   imageVsUsed(imageBytes, mem)   the ratio image / (MemTotal − MemFree): the figure the bench
 *                                  reports as image_vs_used (target ≤ 1.1)
 *   guestMemory(execute)           the guest's figures (QMP through `execute`)
 *   pageBound(pages)               the largest image QEMU can write for RAM with these zero and
 *                                  non-zero pages: every page once, a non-zero one as its 8-byte
 *                                  header + 4096 bytes, a zero one as header + 1 byte (9 bytes)
 *   measureDistroImage(image, o)   one distro guest booted (init_on_free=1 unless zeroFreed is
 *                                  false), settled, its figures read, a background snapshot into
 *                                  the store an agent has by default (a new local content-addressed
 *                                  one) with the RAM dumped at the cut: the image against all of
 *                                  the above, and the bytes the store wrote for it (compressed);
 *                                  `memory` sets the VM's qemu extra memory (a tracked VM's first
 *                                  image holds every block of its RAM: no base yet)
 *
 * Run alone (as root): `node dist/test/bench/image-size.js` measures the distro guest with and
 * without init_on_free and prints one JSON object per run; `--ram MiB` and `--load MiB` size the VM
 * and its workload's memory (default 192 and 16), `--zero-freed-only` skips the run without
 * init_on_free.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import { silentLogger } from '../../proto/core/log';
import { openStore } from '../../proto/store/store-config';
import { buildDistroGuest, distroImageRoots, distroOverlay, distroSpec, type DistroImage } from '../guest/distro-guest';
import { channelStatus, ensureQemu } from '../guest/qemu-guest';
import { sleep, until } from '../support/wait';
import { forEachFlag, usageExit, wholeArg } from './args';
import type { MemoryMode } from '../../proto/specs/qemu-extra';

const PAGE = 4096;
/** A RAM page in QEMU's stream (RAM_SAVE_FLAG_CONTINUE: no block name): 8-byte offset|flags, then 4096 bytes or one fill byte. */
const PAGE_RECORD = 8 + PAGE;
const ZERO_RECORD = 8 + 1;

export interface GuestMemory {
  /** MemTotal, MemFree, MemAvailable of the guest's /proc/meminfo, in bytes. */
  totalBytes: number;
  freeBytes: number;
  availableBytes: number;
}

type Execute = <T = unknown>(cmd: string, args?: Record<string, unknown>) => Promise<T>;

interface GuestStats {
  stats: Record<string, number>;
  'last-update': number;
}

/** The guest's memory figures from its balloon driver (the VM runs with extra balloon=stats). */
export async function guestMemory(execute: Execute, timeoutMs = 60_000): Promise<GuestMemory> {
  const dev = '/machine/peripheral/balloon0';
  await execute('qom-set', { path: dev, property: 'guest-stats-polling-interval', value: 1 });
  const since = Math.floor(Date.now() / 1000);
  const got = await until(
    'the guest balloon driver reporting its memory',
    async () => {
      const r = await execute<GuestStats>('qom-get', { path: dev, property: 'guest-stats' });
      const s = r.stats;
      const ok = r['last-update'] > since && [s['stat-total-memory'], s['stat-free-memory'], s['stat-available-memory']].every((v) => v !== undefined && v >= 0);
      return ok ? s : undefined;
    },
    { timeoutMs, everyMs: 500 },
  );
  return { totalBytes: got['stat-total-memory'] as number, freeBytes: got['stat-free-memory'] as number, availableBytes: got['stat-available-memory'] as number };
}

/** image / (MemTotal − MemFree): the bench's image_vs_used. */
export function imageVsUsed(imageBytes: number, mem: GuestMemory): number {
  return imageBytes / (mem.totalBytes - mem.freeBytes);
}

/** The most bytes QEMU writes for RAM of these pages (module comment). */
export function pageBound(pages: { zero: number; nonZero: number }): number {
  return pages.nonZero * PAGE_RECORD + pages.zero * ZERO_RECORD;
}

/** Zero and non-zero 4 KiB pages of a RAM dump. */
export function countPages(file: string): { zero: number; nonZero: number } {
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(1 << 20);
  let zero = 0;
  let nonZero = 0;
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      for (let o = 0; o + PAGE <= n; o += PAGE) {
        let z = true;
        for (let i = o; i < o + PAGE; i += 8) {
          if (buf.readBigUInt64LE(i) !== 0n) {
            z = false;
            break;
          }
        }
        if (z) zero++;
        else nonZero++;
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return { zero, nonZero };
}

export interface ImageMeasurement {
  zeroFreed: boolean;
  ramBytes: number;
  imageBytes: number;
  mem: GuestMemory;
  /** RAM pages at the cut (pmemsave inside the pause). */
  pages: { zero: number; nonZero: number };
  /** image − pageBound(pages): device state, section headers and the RAM block list. */
  overheadBytes: number;
  imageVsUsed: number;
  /** What the store wrote for the image (its chunks compressed; the store is new, so nothing deduplicated against an earlier snapshot). */
  storedBytes: number;
  /** storedBytes / (MemTotal − MemFree): the image as kept, against the memory in use. */
  storedVsUsed: number;
  imageVsUsedAvailable: number;
  imageVsRam: number;
  pauseMs: number;
}

/** One distro guest: boot, settle `settleMs`, read its memory, take a background snapshot with a RAM dump at the cut. */
export async function measureDistroImage(image: DistroImage, o: { zeroFreed: boolean; settleMs?: number; root?: string; ramMib?: number; loadMib?: number; memory?: MemoryMode }): Promise<ImageMeasurement> {
  const root = o.root ?? `/tmp/vnim-${process.pid}`;
  const vne = 'vnim';
  fs.mkdirSync(root, { recursive: true });
  // the store an agent gets by default (a local directory, content-addressed, chunks compressed)
  const store = await openStore({ kind: 'local', dir: path.join(root, 'store') });
  const driver = new QemuDriver({ workDir: path.join(root, 'w'), imageRoots: distroImageRoots(image, root) });
  const id = `${vne}/g`;
  try {
    const disk = distroOverlay(image, path.join(root, `g-${o.zeroFreed ? 'z' : 'n'}.qcow2`));
    const spec = distroSpec(image, vne, 'g', { disk, params: { ip: '192.168.79.1/24', memMiB: o.loadMib ?? 16, memRateMiB: 4, diskRate: 20 }, zeroFreed: o.zeroFreed, balloonStats: true, ...(o.ramMib ? { memMib: o.ramMib } : {}), ...(o.memory ? { memory: o.memory } : {}) });
    await driver.start(spec, { portNames: [`${vne}/g/0`], log: silentLogger() });
    const sock = driver.inspect(id)?.channelSock as string;
    await until('the distro guest answering on its status channel', () => channelStatus(sock, 5000).catch(() => undefined), { timeoutMs: 400_000, everyMs: 2000 });
    await sleep(o.settleMs ?? 20_000); // kept: boot services finish and free what they used
    const execute: Execute = (cmd, args) => driver.execute(id, cmd, args);
    const mem = await guestMemory(execute);
    const job = await driver.snapshot(id, { snapshotId: 'im', epoch: 1, mode: 'background', store, prefix: 'snapshots/im/' });
    await job.ready;
    const dump = path.join(root, 'cut.bin');
    const cut = await job.cut(() => driver.pmemsave(id, dump));
    const img = await job.durable();
    const pages = countPages(dump);
    const ramBytes = (spec.driver.qemu?.memoryMib ?? 0) * 1024 * 1024;
    const imageBytes = Number(img.memory.size);
    const storedBytes = img.memory.storedBytes ?? imageBytes;
    return {
      zeroFreed: o.zeroFreed,
      ramBytes,
      imageBytes,
      mem,
      pages,
      overheadBytes: imageBytes - pageBound(pages),
      imageVsUsed: imageVsUsed(imageBytes, mem),
      storedBytes,
      storedVsUsed: imageVsUsed(storedBytes, mem),
      imageVsUsedAvailable: imageBytes / (mem.totalBytes - mem.availableBytes),
      imageVsRam: imageBytes / ramBytes,
      pauseMs: cut.pauseMs,
    };
  } finally {
    await driver.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
}

const USAGE = `usage: node dist/test/bench/image-size.js [--ram MiB] [--load MiB] [--zero-freed-only] [--help]
  --ram MiB           the distro guest's RAM (default 192)
  --load MiB          its workload's memory (default 16)
  --zero-freed-only   only the run with init_on_free=1 (default: without it, then with it)
Prints one JSON object per run. Needs root, qemu-system-x86_64 and the distro guest (built if missing).`;

/** The command line: exit 2 with the reason and the usage on a mistake. */
function parseImageSizeArgs(argv: readonly string[]): { help: boolean; zeroFreedOnly: boolean; ramMib?: number; loadMib?: number } {
  const out: { help: boolean; zeroFreedOnly: boolean; ramMib?: number; loadMib?: number } = { help: false, zeroFreedOnly: false };
  const usage = (msg: string): never => usageExit('image-size', USAGE, msg);
  forEachFlag(argv, usage, (flag, value) => {
    if (flag === '--help') out.help = true;
    else if (flag === '--zero-freed-only') out.zeroFreedOnly = true;
    // --ram and --load: the same measurement with more memory in use, so the fixed part of the
    // image above it can be told from the rest.
    else if (flag === '--ram') out.ramMib = wholeArg(flag, value(), 1, usage);
    else if (flag === '--load') out.loadMib = wholeArg(flag, value(), 1, usage);
    else usage(`unknown argument ${flag}`);
  });
  return out;
}

async function main(): Promise<void> {
  const args = parseImageSizeArgs(process.argv.slice(2));
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (process.getuid?.() !== 0) throw new Error('image-size needs root (QEMU, the guest image cache)');
  ensureQemu();
  const image = buildDistroGuest();
  const sized = { ...(args.ramMib ? { ramMib: args.ramMib } : {}), ...(args.loadMib ? { loadMib: args.loadMib } : {}) };
  const modes = args.zeroFreedOnly ? [true] : [false, true];
  for (const zeroFreed of modes) console.log(JSON.stringify(await measureDistroImage(image, { zeroFreed, ...sized })));
}

if (require.main === module) {
  main().catch((e: Error) => {
    console.error(`image-size: ${e.message}`);
    process.exit(1);
  });
}
