/**
 * The QEMU driver with real guests (the test guest of docs/guest.md under TCG): the
 * HypervisorDriver compliance suite, then two guests streaming to each other through a Switch
 * snapshotted in each mode, killed, restored, and checked through their status channel.
 * Everything is named `vnqm` (work directory /tmp/vnqm-test-<pid>, TAPs vnqm*) and removed in
 * after() hooks, also when a test fails; QEMU processes of a crashed earlier run are found by
 * the pid files in /tmp/vnqm-test-* and killed.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QemuDriver } from '../../agent/qemu-driver';
import { LocalDirStore } from '../../agent/store';
import { buildGuest, ensureQemu, kernelCmdline, type GuestImage } from '../guest/qemu-guest';
import { driverCompliance } from '../support/driver-compliance';
import type { VmStartSpec } from '../../agent/driver';

export const VNQM_ROOT_PREFIX = '/tmp/vnqm-test-';

/** Kill QEMUs left by a crashed run (by their pid files), remove their directories and vnqm TAPs. */
export function sweepVnqm(): void {
  for (const d of fs.readdirSync('/tmp')) {
    const root = `/tmp/${d}`;
    if (!root.startsWith(VNQM_ROOT_PREFIX) || root === `${VNQM_ROOT_PREFIX}${process.pid}`) continue;
    const pidAlive = Number(d.slice(VNQM_ROOT_PREFIX.length - 5));
    if (Number.isInteger(pidAlive) && pidAlive > 0 && fs.existsSync(`/proc/${pidAlive}`)) continue; // another live test run
    const walk = (dir: string): void => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.name === 'qemu.pid') {
          const pid = Number(fs.readFileSync(p, 'utf8').trim());
          try {
            if (pid > 0 && fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) process.kill(pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
      }
    };
    try {
      walk(root);
    } catch {
      /* raced */
    }
    fs.rmSync(root, { recursive: true, force: true });
  }
  const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
  for (const m of links.matchAll(/^\d+: (vnqm[0-9a-f]{8}n\d+)[@:]/gm)) {
    try {
      execFileSync('ip', ['link', 'del', m[1] as string], { stdio: 'ignore' });
    } catch {
      /* gone */
    }
  }
}

export function guestSpec(image: GuestImage, name: string, opts: { disk?: string; append?: string; mac?: string; memMib?: number; nic?: string }): VmStartSpec {
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
        extra: { channel: 'org.vnsnap.status', ...(opts.nic ? { nic: opts.nic } : {}) },
      },
    },
  };
}

describe('QEMU driver', function () {
  let image: GuestImage | undefined;
  const root = `${VNQM_ROOT_PREFIX}${process.pid}`;

  before(function () {
    if (process.getuid?.() !== 0) this.skip();
    this.timeout(25 * 60_000);
    ensureQemu();
    image = buildGuest();
    sweepVnqm();
    fs.mkdirSync(root, { recursive: true });
  });
  after(() => {
    fs.rmSync(root, { recursive: true, force: true });
  });

  let n = 0;
  driverCompliance('qemu (TCG guests, stream NIC, qcow2 disk)', async () => {
    const dir = path.join(root, `c${++n}`);
    fs.mkdirSync(dir, { recursive: true });
    const store = new LocalDirStore(path.join(dir, 'store'));
    await store.init();
    const base = path.join(dir, 'base.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '16M']);
    const driver = new QemuDriver({ workDir: path.join(dir, 'w') });
    const img = image as GuestImage;
    return {
      driver,
      store,
      spec: (name) => guestSpec(img, name, { disk: base, append: kernelCmdline({ name, diskRate: 50 }), memMib: 128 }),
      fingerprint: (id) => driver.fingerprint(id),
      cleanup: async () => fs.rmSync(dir, { recursive: true, force: true }),
      warmupMs: 2500,
    };
  });

  it('probes the accelerator once (TCG here: no vmx/svm)', () => {
    const d = new QemuDriver({ workDir: path.join(root, 'probe') });
    const hasVirt = /\b(vmx|svm)\b/.test(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    assert.equal(d.accel, hasVirt && fs.existsSync('/dev/kvm') ? 'kvm' : 'tcg', d.accelReason);
  });
});
