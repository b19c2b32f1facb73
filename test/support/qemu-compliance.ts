/**
 * The QEMU driver as the HypervisorDriver compliance suite takes it (compliance/driver.ts), for
 * every suite that runs it on real test guests (test/integration/qemu-driver.test.ts,
 * tracked-memory-qemu.test.ts): a driver with its own work directory under `dir`, a 16 MiB qcow2
 * base disk, the test guest's image roots, `store`, and the directory removed by cleanup().
 * VNQM_LOG=1 logs the driver at debug.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { VmStartSpec } from '../../agent/drivers/driver';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import { createLogger } from '../../proto/core/log';
import type { SnapshotStore } from '../../proto/store/snapshot-store';
import type { DriverUnderTest } from './compliance/driver';
import { guestImageRoots, type GuestImage } from '../guest/qemu-guest';

/** `spec(name, baseDisk)`: the VM spec of a guest named `name` booting from the base disk's overlay. */
export function qemuUnderTest(dir: string, image: GuestImage, store: SnapshotStore, spec: (name: string, baseDisk: string) => VmStartSpec): DriverUnderTest {
  fs.mkdirSync(dir, { recursive: true });
  const base = path.join(dir, 'base.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '16M']);
  const driver = new QemuDriver({ workDir: path.join(dir, 'w'), imageRoots: guestImageRoots(image, dir), ...(process.env.VNQM_LOG ? { logger: createLogger('vnqm-test', { level: 'debug' }) } : {}) });
  return {
    driver,
    store,
    spec: (name) => spec(name, base),
    fingerprint: (id) => driver.fingerprint(id),
    cleanup: async () => fs.rmSync(dir, { recursive: true, force: true }),
    warmupMs: 2500,
  };
}
