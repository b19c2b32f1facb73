/**
 * The mocha hooks every QEMU end-to-end file shares: before, a fresh two-host QEMU cluster
 * (root only, QEMU present, the test guest built, stray QEMUs of an earlier run killed); after
 * each failed test, the cluster's log tail (and the guests' consoles when asked); after all, the
 * VNE stopped, the cluster destroyed and every QEMU of the test killed, even when a test failed.
 */
import { buildGuest, ensureQemu, guestImageRoots, type GuestImage } from '../guest/qemu-guest';
import { Cluster } from './cluster';
import { s3Unavailable, type ClusterStoreKind } from './cluster-store';
import { E2E_VNE, killE2eQemus, saveConsoles } from './qemu-vne';

export interface QemuE2eHooks {
  /** Names what the cluster creates (namespaces, directories). */
  prefix: string;
  /** Where a failed test's guest consoles are copied (none when absent). */
  consoles?: string;
  /** The VNE the after-all hook stops (default the four-guest VNE). */
  vne?: string;
  /** Session timings of the cluster (default 1 s heartbeats, dead after 10 s). */
  heartbeatIntervalMs?: number;
  deadAfterMs?: number;
  /** The cluster's store (cluster-store.ts; default 'local'). */
  store?: ClusterStoreKind;
  /** Lines of the log tail printed after a failed test (default 30). */
  logLines?: number;
  /** Kills the test's QEMUs (default the four-guest VNE's). */
  killQemus?: () => void;
  /** The agents' dataPath key (tap-bpf NICs carried in the kernel; default: the agent's, on where it can run). */
  dataPath?: boolean;
  /** Called once the cluster runs. */
  ready(c: Cluster, image: GuestImage): void;
  /** Called first in the after-all hook (figures to print). */
  beforeTeardown?(): void;
}

/** Register the hooks in the calling describe(). */
export function qemuE2eHooks(o: QemuE2eHooks): void {
  let c: Cluster | undefined;
  const kill = o.killQemus ?? killE2eQemus;
  before(async function () {
    if (process.getuid?.() !== 0) this.skip();
    const noS3 = o.store === 's3' ? s3Unavailable() : null;
    if (noS3) {
      console.log(`      skipped: ${noS3}`);
      this.skip();
    }
    ensureQemu();
    const image = buildGuest();
    kill();
    c = new Cluster({ prefix: o.prefix, hosts: ['h1', 'h2'], drivers: ['qemu'], imageRoots: guestImageRoots(image), heartbeatIntervalMs: o.heartbeatIntervalMs ?? 1000, deadAfterMs: o.deadAfterMs ?? 10_000, ...(o.store ? { store: o.store } : {}), ...(o.dataPath !== undefined ? { dataPath: o.dataPath } : {}) });
    await c.start();
    o.ready(c, image);
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && c) {
      console.log(c.logTail(o.logLines ?? 30));
      if (o.consoles) console.log(`      guest consoles: ${saveConsoles(o.consoles).join(', ')}`);
    }
  });

  after(async function () {
    this.timeout(60_000);
    if (!c) return;
    o.beforeTeardown?.();
    try {
      await c.cli(['vne', 'stop', o.vne ?? E2E_VNE], 30_000);
    } catch {
      /* best effort */
    }
    kill();
    await c.destroy();
    kill();
  });
}
