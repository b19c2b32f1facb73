/**
 * The rig of the QEMU tests that snapshot one of the two streaming test guests and restore it
 * elsewhere: under `root` (a vnqm test directory, made here, removed by close()), a QEMU driver
 * running the guest pair (test/support/guest-pair.ts) through a Switch's VNE `vnqm`, and a second
 * driver to restore into. Leftovers of a crashed run are swept first.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { VmStartSpec } from '../../agent/drivers/driver';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import { Switch } from '../../switch/switch';
import { buildGuest, ensureQemu, guestImageRoots } from '../guest/qemu-guest';
import { startGuestPair } from './guest-pair';
import { sweepVnqm } from './vnqm-sweep';

export interface GuestPairRig {
  driver: QemuDriver;
  restorer: QemuDriver;
  sw: Switch;
  specs: Map<string, VmStartSpec>;
  close(): Promise<void>;
}

/** Start the rig: `net` is the VNE's VNI and the pair's subnet octet, `rateKiB` each stream's rate. */
export async function startGuestPairRig(root: string, net: number, rateKiB: number): Promise<GuestPairRig> {
  ensureQemu();
  const image = buildGuest();
  sweepVnqm();
  fs.mkdirSync(root, { recursive: true });
  const driver = new QemuDriver({ workDir: path.join(root, 'w'), imageRoots: guestImageRoots(image, root) });
  const restorer = new QemuDriver({ workDir: path.join(root, 'r'), imageRoots: guestImageRoots(image, root) });
  const sw = new Switch({ id: 'vnqm' });
  const close = async (): Promise<void> => {
    await restorer.close().catch(() => undefined);
    await driver.close().catch(() => undefined);
    sw.stop();
    fs.rmSync(root, { recursive: true, force: true });
  };
  try {
    sw.configureVne({ name: 'vnqm', vni: net });
    sw.start();
    const specs = await startGuestPair({ driver, sw, image, root, vne: 'vnqm', net, rateKiB });
    return { driver, restorer, sw, specs, close };
  } catch (e) {
    await close();
    throw e;
  }
}
