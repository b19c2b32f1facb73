/**
 * Tracked memory across an agent's death (docs/incremental-memory.md, docs/agent-restart.md), on
 * a real TCG test guest: the VM's holder (test/support/tracked-holder.ts, a child process keeping
 * the VM's state record as the agent does) takes a snapshot and is killed with SIGKILL; a new
 * driver adopts the VM from the record and its next snapshot is incremental (the bytes put far
 * below the RAM) and restores byte-exact. Then a holder that adopted the VM is killed after its
 * snapshot job read the first round, before the commit: the record names no base, and the next
 * capture is a full one (and restores exactly too).
 *
 * Everything is named `vnqm` (work directory /tmp/vnqm-test-<pid>-restart) and removed in after()
 * hooks. Needs root, QEMU and Linux 6.7 or later (asynchronous userfaultfd write protection);
 * skipped before that.
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import type { VmImage } from '../../agent/drivers/driver';
import { createLogger, silentLogger } from '../../proto/core/log';
import type { CasStore } from '../../proto/store/cas-store';
import { guestImageRoots, guestSpec, kernelCmdline, type GuestImage } from '../guest/qemu-guest';
import { VNQM_ROOT_PREFIX } from '../support/vnqm-sweep';
import { casStore, countingStore, trackedGuest } from '../support/tracked-memory';
import { writeRecord, type HolderTask } from '../support/tracked-holder';

const RAM_MIB = 128;
const RAM = RAM_MIB * 1024 * 1024;

describe('QEMU tracked memory across an agent killed with SIGKILL', function () {
  this.timeout(240_000);
  const dir = `${VNQM_ROOT_PREFIX}${process.pid}-restart`;
  const log = process.env.VNQM_LOG ? createLogger('vnqm-test', { level: 'debug' }) : silentLogger();
  const recordFile = path.join(dir, 'record.json');
  const workDir = path.join(dir, 'w');
  const storeDir = path.join(dir, 'store');
  let image: GuestImage;
  let task: Omit<HolderTask, 'step' | 'prefix'>;
  let driver: QemuDriver | undefined;
  const holders: ReturnType<typeof spawn>[] = [];

  before(function () {
    image = trackedGuest(this, dir);
    // A guest rewriting 16 MiB of its memory at 4 MiB/s.
    const spec = guestSpec(image, 'r', { append: kernelCmdline({ name: 'r', disk: 'none', memMiB: 16, memRateMiB: 4 }), memMib: RAM_MIB, memory: 'tracked' });
    task = { workDir, storeDir, recordFile, imageRoots: guestImageRoots(image, dir), spec, portNames: ['vnqm/r/0'], settleMs: 2500 };
  });
  after(async () => {
    for (const h of holders) h.kill('SIGKILL');
    // A VM a holder left and no driver adopted: its QEMU by the pid of its record.
    const rec = !driver && fs.existsSync(recordFile) ? (JSON.parse(fs.readFileSync(recordFile, 'utf8')) as { process?: { pid: number } }) : undefined;
    await driver?.close(); // the adopted VM stopped
    if (rec?.process) {
      try {
        process.kill(rec.process.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Run a holder until it holds (its line on stdout), then kill it with SIGKILL and wait for its end. */
  const holdAndKill = async (step: HolderTask['step'], prefix: string): Promise<void> => {
    const h = spawn(process.execPath, [path.join(__dirname, '../support/tracked-holder.js'), JSON.stringify({ ...task, step, prefix })], { stdio: ['ignore', 'pipe', 'pipe'] });
    holders.push(h);
    let err = '';
    h.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    await new Promise<void>((resolve, reject) => {
      h.stdout?.on('data', (d: Buffer) => d.toString().includes('"held"') && resolve());
      h.on('exit', (code) => reject(new Error(`the holder (${step}) exited with ${code} before holding: ${err}`)));
    });
    const gone = new Promise((r) => h.once('exit', r));
    h.kill('SIGKILL');
    await gone;
  };

  const record = (): { process: never; state: { trackedBase?: { path: string } } } => JSON.parse(fs.readFileSync(recordFile, 'utf8')) as { process: never; state: { trackedBase?: { path: string } } };

  /** One snapshot by `d`, the record kept as the agent keeps it; the fingerprint at the pause and the bytes put. */
  const snap = async (d: QemuDriver, cas: CasStore, prefix: string): Promise<{ img: VmImage; fp: string; put: number }> => {
    const counted = countingStore(cas);
    const save = async (): Promise<void> => writeRecord(recordFile, d.persistent(task.spec.id));
    const job = await d.snapshot(task.spec.id, { snapshotId: path.basename(prefix), epoch: 2, mode: 'background', store: counted.store, prefix, saveState: save });
    await job.ready;
    let fp = '';
    await job.cut(async () => {
      fp = await d.fingerprint(task.spec.id);
    });
    const img = await job.durable();
    await save();
    return { img, fp, put: counted.put.get(img.memory.path) ?? -1 };
  };

  const restoresExactly = async (d: QemuDriver, cas: CasStore, s: { img: VmImage; fp: string }): Promise<void> => {
    await d.stop(task.spec.id);
    await d.restore(task.spec, { memory: s.img.memory, disks: s.img.disks }, cas, { portNames: task.portNames, log });
    assert.equal(await d.fingerprint(task.spec.id), s.fp, 'restored state = state at the pause instant');
  };

  it('keeps the base through a SIGKILL: the adopted VM\'s next snapshot is incremental and restores exactly', async () => {
    await holdAndKill('start', 'snapshots/r1/');
    const rec = record();
    assert.deepEqual(rec.state.trackedBase, { path: 'tracked-bases/vnqm/r.mem' }, 'the record names the base after the persist');
    const cas = await casStore(storeDir);
    driver = new QemuDriver({ workDir, imageRoots: task.imageRoots, logger: log });
    // At once: the guest's writes since the holder's capture (its 16 MiB rewritten at 4 MiB/s) are what this one saves.
    await driver.adopt(task.spec, rec, { portNames: task.portNames, log });
    const second = await snap(driver, cas, 'snapshots/r2/');
    assert.ok(second.put > 0 && second.put < RAM / 8, `the first snapshot after the restart puts only written blocks (${second.put} bytes of ${RAM})`);
    assert.ok((second.img.memory.storedBytes ?? RAM) < RAM / 8, `and stores only those (${second.img.memory.storedBytes} bytes)`);
    assert.deepEqual(record().state.trackedBase, { path: 'tracked-bases/vnqm/r.mem' });
    // Handed to the next holder as a stopping agent hands it on.
    await driver.release(task.spec.id);
    driver = undefined;
    await holdAndKill('adopt-begin', 'snapshots/r3/');
    assert.equal(record().state.trackedBase, undefined, 'a job that began reading drops the base from the record first');
    driver = new QemuDriver({ workDir, imageRoots: task.imageRoots, logger: log });
    await driver.adopt(task.spec, record(), { portNames: task.portNames, log });
    const fourth = await snap(driver, cas, 'snapshots/r4/');
    assert.ok(fourth.put >= RAM, `with no base recorded the next capture is a full one (${fourth.put} bytes of ${RAM})`);
    console.log(`      bytes put: ${second.put} after the SIGKILL (stored ${second.img.memory.storedBytes}), ${fourth.put} after the crash mid-job, of ${RAM} bytes of RAM`);
    await restoresExactly(driver, cas, second);
    await restoresExactly(driver, cas, fourth);
  });
});
