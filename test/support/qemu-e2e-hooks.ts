/**
 * The mocha hooks every four-guest QEMU end-to-end file shares: before, a fresh two-host QEMU
 * cluster (root only, QEMU present, the test guest built, stray QEMUs of an earlier run killed);
 * after each failed test, the cluster's log tail and the guests' consoles saved; after all, the
 * VNE stopped, the cluster destroyed and every QEMU of the test killed, even when a test failed.
 */
import { buildGuest, ensureQemu, guestImageRoots, type GuestImage } from '../guest/qemu-guest';
import { Cluster } from './cluster';
import { E2E_VNE, killE2eQemus, saveConsoles } from './qemu-vne';

export interface QemuE2eHooks {
  /** Names what the cluster creates (namespaces, directories). */
  prefix: string;
  /** Where a failed test's guest consoles are copied. */
  consoles: string;
  /** Called once the cluster runs. */
  ready(c: Cluster, image: GuestImage): void;
  /** Called first in the after-all hook (figures to print). */
  beforeTeardown?(): void;
}

/** Register the hooks in the calling describe(). */
export function qemuE2eHooks(o: QemuE2eHooks): void {
  let c: Cluster | undefined;
  before(async function () {
    if (process.getuid?.() !== 0) this.skip();
    ensureQemu();
    const image = buildGuest();
    killE2eQemus();
    c = new Cluster({ prefix: o.prefix, hosts: ['h1', 'h2'], drivers: ['qemu'], imageRoots: guestImageRoots(image), heartbeatIntervalMs: 1000, deadAfterMs: 10_000 });
    await c.start();
    o.ready(c, image);
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && c) {
      console.log(c.logTail(30));
      console.log(`      guest consoles: ${saveConsoles(o.consoles).join(', ')}`);
    }
  });

  after(async function () {
    this.timeout(60_000);
    if (!c) return;
    o.beforeTeardown?.();
    try {
      await c.cli(['vne', 'stop', E2E_VNE], 30_000);
    } catch {
      /* best effort */
    }
    killE2eQemus();
    await c.destroy();
    killE2eQemus();
  });
}
