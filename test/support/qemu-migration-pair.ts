/**
 * Two QemuDriver instances on one machine as the two "hosts" of a live migration (each its own
 * work and disks directory under `root`), with the test guest of docs/guest.md writing disk
 * records: for the driver-level migration tests (qemu-live-migration, migrate-tls-qemu).
 * `prepare()` (in mocha's before) needs root, builds the guest once and makes `root` empty;
 * `close()` (in after) stops both drivers and removes `root`, also when a test failed.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import type { VmStartContext, VmStartSpec } from '../../agent/drivers/driver';
import { silentLogger } from '../../proto/core/log';
import { buildGuest, channelStatus, ensureQemu, guestImageRoots, guestSpec, kernelCmdline, type GuestImage, type GuestStatus } from '../guest/qemu-guest';
import { until } from './wait';

export class MigrationPair {
  image!: GuestImage;
  private readonly drivers = new Map<string, QemuDriver>();

  constructor(readonly root: string) {}

  /** False when not root (the caller skips). */
  prepare(): boolean {
    if (process.getuid?.() !== 0) return false;
    ensureQemu();
    this.image = buildGuest();
    fs.rmSync(this.root, { recursive: true, force: true });
    fs.mkdirSync(this.root, { recursive: true });
    return true;
  }

  async close(): Promise<void> {
    for (const d of this.drivers.values()) await d.close().catch(() => undefined);
    fs.rmSync(this.root, { recursive: true, force: true });
  }

  /** The driver of `host` (made on first use). */
  driver(host: string): QemuDriver {
    let d = this.drivers.get(host);
    if (!d) {
      d = new QemuDriver({ workDir: path.join(this.root, host, 'w'), disksDir: path.join(this.root, host, 'disks'), imageRoots: guestImageRoots(this.image, this.root) });
      this.drivers.set(host, d);
    }
    return d;
  }

  /** A guest `name` with a fresh 16 MiB base disk, writing 50 records/s, 96 MiB of RAM. */
  guest(name: string): { spec: VmStartSpec; ctx: VmStartContext } {
    const base = path.join(this.root, `${name}-base.qcow2`);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '16M']);
    const spec = guestSpec(this.image, name, { disk: base, append: kernelCmdline({ name, diskRate: 50, memMiB: 8, memRateMiB: 2 }), memMib: 96 });
    return { spec, ctx: { portNames: [`mig/${name}/0`], log: silentLogger() } };
  }

  status(d: QemuDriver, id: string): Promise<GuestStatus> {
    return channelStatus(d.inspect(id)?.channelSock as string, 8000);
  }

  /** The guest's status once `ok` holds (90 s). */
  waitFor(what: string, d: QemuDriver, id: string, ok: (s: GuestStatus) => boolean): Promise<GuestStatus> {
    return until(what, async () => {
      const s = await this.status(d, id);
      return ok(s) ? s : undefined;
    }, { timeoutMs: 90_000, everyMs: 250 }) as Promise<GuestStatus>;
  }
}
