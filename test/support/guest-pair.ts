/**
 * Two test guests, `a` and `b`, streaming to each other through a Switch under one QEMU driver:
 * each with its own 32 MiB qcow2 base disk in `root`, memory and disk load, attached to the
 * switch's VNE `vne` at epoch 0; resolves once both streams are connected and moving. What the
 * RAM-diff diagnostic and the store cycle test start from.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { VmStartSpec } from '../../agent/drivers/driver';
import type { QemuDriver } from '../../agent/drivers/qemu/driver';
import { silentLogger, type Logger } from '../../proto/core/log';
import type { Port } from '../../switch/port/port';
import type { Switch } from '../../switch/switch';
import { channelStatus, guestSpec, kernelCmdline, type GuestImage } from '../guest/qemu-guest';
import { until } from './wait';

export interface GuestPairOptions {
  driver: QemuDriver;
  sw: Switch;
  image: GuestImage;
  /** Where the base disks go. */
  root: string;
  /** The switch's VNE, already configured; also the VM id prefix (`<vne>/a`). */
  vne: string;
  /** Third octet of 192.168.X.0/24 and the fifth byte of the MACs. */
  net: number;
  /** Per-stream rate in KiB/s. */
  rateKiB: number;
  accel?: string;
  /** The VMs' log (the driver's lines about their jobs); silent when absent. */
  log?: Logger;
}

export const PAIR_NAMES = ['a', 'b'] as const;

/** Start the pair and wait for both streams; the specs by name. */
export async function startGuestPair(o: GuestPairOptions): Promise<Map<string, VmStartSpec>> {
  const specs = new Map<string, VmStartSpec>();
  for (const [i, name] of PAIR_NAMES.entries()) {
    const base = path.join(o.root, `${name}-base.qcow2`);
    fs.rmSync(base, { force: true });
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '32M']);
    const append = kernelCmdline({ name, ip: `192.168.${o.net}.${i + 1}/24`, peers: [`192.168.${o.net}.${2 - i}:7001`], rateKiB: o.rateKiB, memMiB: 16, memRateMiB: 4, diskRate: 20, reportSecs: 2 });
    const sp = guestSpec(o.image, name, { disk: base, append, mac: `52:54:00:${o.net}:00:0${i + 1}`, ...(o.accel ? { accel: o.accel } : {}) });
    specs.set(name, sp);
    const h = await o.driver.start(sp, { portNames: [`${o.vne}/${name}/0`], log: o.log ?? silentLogger() });
    o.sw.attachPort(o.vne, h.ports[0] as Port, { epoch: 0 });
  }
  await until(
    'both guests streaming',
    async () => {
      for (const name of PAIR_NAMES) {
        const s = await channelStatus(o.driver.inspect(`${o.vne}/${name}`)?.channelSock as string, 8000);
        if (!s.out[0]?.connected || !s.in[0]?.open || (s.in[0]?.bytes ?? 0) < 100_000) return undefined;
      }
      return true;
    },
    { timeoutMs: 120_000, everyMs: 1000 },
  );
  return specs;
}
