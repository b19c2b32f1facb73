/**
 * A stand-in for an agent holding one tracked QEMU VM, run as a child process by
 * test/integration/tracked-memory-qemu.test.ts so that the test can kill it with SIGKILL, as an
 * agent dies, and adopt the VM it leaves running.
 *
 * It keeps the VM's state record as the agent does: the driver's persistent() written atomically
 * to a JSON file ({ process, state }) by the snapshot job's saveState and again after the
 * image is durable (the persist phase). Its steps (argv[2], a JSON HolderTask):
 *   - `start`: start the VM, let it run `settleMs`, take one snapshot to durable, record it;
 *   - `adopt-begin`: adopt the VM from the record and begin a snapshot (its first round read),
 *     then stop there: a crash after the job dropped the base from the record, before its commit.
 * Then it prints one line `{"held":...}` on stdout and waits to be killed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import type { VmStartSpec } from '../../agent/drivers/driver';
import { createLogger, silentLogger } from '../../proto/core/log';
import { casStore } from './tracked-memory';

export interface HolderTask {
  step: 'start' | 'adopt-begin';
  workDir: string;
  storeDir: string;
  recordFile: string;
  imageRoots: string[];
  spec: VmStartSpec;
  portNames: string[];
  settleMs: number;
  prefix: string;
}

/** Write `v` to `file` atomically (a reader sees the old or the whole new content). */
export function writeRecord(file: string, v: unknown): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp`);
  fs.writeFileSync(tmp, JSON.stringify(v));
  fs.renameSync(tmp, file);
}

async function main(): Promise<void> {
  const t = JSON.parse(process.argv[2] as string) as HolderTask;
  const log = process.env.VNQM_LOG ? createLogger('vnqm-holder', { level: 'debug' }) : silentLogger();
  const store = await casStore(t.storeDir);
  const driver = new QemuDriver({ workDir: t.workDir, imageRoots: t.imageRoots, logger: log });
  const ctx = { portNames: t.portNames, log };
  const save = async (): Promise<void> => writeRecord(t.recordFile, driver.persistent(t.spec.id));
  if (t.step === 'start') {
    await driver.start(t.spec, ctx);
    await new Promise((r) => setTimeout(r, t.settleMs)); // the guest boots and starts writing
  } else {
    await driver.adopt(t.spec, JSON.parse(fs.readFileSync(t.recordFile, 'utf8')) as { process: never; state: unknown }, ctx);
  }
  const job = await driver.snapshot(t.spec.id, { snapshotId: path.basename(t.prefix), epoch: 1, mode: 'background', store, prefix: t.prefix, saveState: save });
  await job.ready;
  if (t.step === 'start') {
    await job.cut(async () => undefined);
    const img = await job.durable();
    await save();
    process.stdout.write(`${JSON.stringify({ held: 'durable', memory: img.memory.path })}\n`);
  } else {
    process.stdout.write(`${JSON.stringify({ held: 'begun' })}\n`);
  }
  setInterval(() => undefined, 60_000); // held until killed
}

if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`tracked-holder: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
}
