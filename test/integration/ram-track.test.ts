/**
 * RamWriteTracker (agent/drivers/qemu/ram-track.ts) on a real QEMU guest and the running kernel:
 * a copy of the guest's RAM kept up to date only from the pages the scans report written equals,
 * byte for byte, a full read of the RAM once the VM is stopped — so the scans miss no write, the
 * guest's nor QEMU's on its behalf — while the guest's memory load rewrites 32 MiB at 8 MiB/s.
 * Also: nothing is written while the VM is stopped, a second agent adopting the descriptor goes on
 * exactly, and a process not started for tracking is refused with a clear message.
 *
 * One TCG test guest (docs/guest.md) with its RAM as a shared memfd and the preloaded library
 * (trackedRamArgs, trackedRamEnv), no network (a hub port with no peer), in a temporary
 * directory named `vnrt-*`; the QEMU is killed in after(), also when a test fails. Needs root,
 * QEMU and Linux 6.7 or later (asynchronous userfaultfd write protection); skipped before that.
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { isVnsnapError } from '../../proto/core/errors';
import { nativeIo } from '../../switch/native-io';
import { QmpClient } from '../../agent/drivers/qemu/qmp';
import { RamWriteTracker, trackedRamArgs, trackedRamEnv, writeTrackedRam, type WrittenRuns } from '../../agent/drivers/qemu/ram-track';
import { buildGuest, ensureQemu, guestFiles, qemuArgs, serialStatuses, type GuestImage } from '../guest/qemu-guest';
import { stopChild } from '../support/netns';
import { FatalWait, until } from '../support/wait';

const RAM_MIB = 256;

/** Copies the runs' contents from the tracker into `mirror` at their offsets; the bytes copied. */
function patch(t: RamWriteTracker, runs: WrittenRuns, mirror: Buffer): number {
  const tmp = Buffer.allocUnsafe(runs.bytes);
  const got = t.read(runs, tmp);
  let at = 0;
  for (let i = 0; i < runs.count; i++) {
    const off = runs.pairs[2 * i] as number;
    const len = runs.pairs[2 * i + 1] as number;
    tmp.copy(mirror, off, at, at + len);
    at += len;
  }
  return got;
}

/** The first offset where a and b differ, or -1. */
function firstDifference(a: Buffer, b: Buffer): number {
  for (let off = 0; off < a.length; off += 4096) {
    if (a.compare(b, off, off + 4096, off, off + 4096) !== 0) return off;
  }
  return -1;
}

describe('RAM write tracking (real QEMU guest, running kernel)', function () {
  this.timeout(180_000);
  let dir = '';
  let image: GuestImage;
  let qemu: ChildProcess | undefined;
  let qmp: QmpClient | undefined;
  let restored: { dir: string; qemu: ChildProcess; qmp: QmpClient } | undefined;
  /** The RAM and the device state of the snapshot the second test takes, for the third. */
  let snapshot: { ram: Buffer; deviceState: string; uptimeMs: number } | undefined;

  const args = (d: string, incoming: boolean): string[] =>
    qemuArgs({
      image, dir: d, memMiB: RAM_MIB, mac: '52:54:00:72:74:01', netdev: 'hubport,id=n0,hubid=0', statusChannel: false, incoming,
      params: { name: 'rt', memMiB: 32, memRateMiB: 8, disk: 'none', reportSecs: 1 },
      extraArgs: trackedRamArgs(RAM_MIB * 1024),
    });
  const trackers: RamWriteTracker[] = [];

  before(async function () {
    if (process.getuid?.() !== 0 || !nativeIo().uffdWriteTrackingAvailable()) this.skip();
    ensureQemu();
    image = buildGuest();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnrt-'));
    qemu = spawn('qemu-system-x86_64', args(dir, false), { stdio: 'ignore', env: { ...process.env, ...trackedRamEnv() } });
    const alive = (): boolean => qemu?.exitCode === null && qemu.signalCode === null;
    qmp = await QmpClient.connect(guestFiles(dir).qmpSock, { isAlive: alive, timeoutMs: 30_000 });
  });

  after(async () => {
    for (const t of trackers) t.close();
    qmp?.close();
    restored?.qmp.close();
    if (qemu) await stopChild(qemu);
    if (restored) await stopChild(restored.qemu);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a process whose RAM was not set up for tracking, saying why', function () {
    assert.throws(
      () => RamWriteTracker.start(process.pid),
      (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === `QEMU ${process.pid} has no RAM backend pc.ram as shared memfd: it was not started for write tracking`,
    );
  });

  it('keeps a copy exact from the written pages alone, across a second agent adopting the descriptor', async function () {
    const pid = qemu?.pid as number;
    let t = RamWriteTracker.start(pid);
    trackers.push(t);
    assert.equal(t.how, 'new');
    assert.equal(t.length, RAM_MIB * 1024 * 1024);
    const mirror = Buffer.alloc(t.length);
    assert.equal(t.readAll(mirror), t.length);

    // Rounds while the guest boots, then while its memory load runs: only the written pages are copied.
    const serialLog = guestFiles(dir).serialLog;
    await until('the guest program to start', () => {
      patch(t, t.scan(), mirror);
      return fs.existsSync(serialLog) && fs.readFileSync(serialLog, 'utf8').includes('VNGUEST-READY');
    }, { timeoutMs: 120_000, everyMs: 250 });
    const atReady = Buffer.from(mirror);
    let written = 0;
    let rounds = 0;
    await until('the guest to write 48 MiB of its RAM', () => {
      const runs = t.scan();
      written += patch(t, runs, mirror);
      rounds++;
      return written >= 48 * 1024 * 1024;
    }, { timeoutMs: 120_000, everyMs: 250 });

    assert.ok(rounds >= 4, `the memory load took several rounds (${rounds})`);
    // A second agent: the descriptor and its protection are adopted; the copy goes on from them.
    for (let i = 0; i < 2; i++) patch(t, t.scan(), mirror);
    t.close();
    t = RamWriteTracker.start(pid);
    trackers.push(t);
    assert.equal(t.how, 'adopted');
    for (let i = 0; i < 3; i++) patch(t, t.scan(), mirror);

    await (qmp as QmpClient).execute('stop');
    const last = t.scan();
    patch(t, last, mirror);
    const full = Buffer.alloc(t.length);
    t.readAll(full);
    // The thread pool's read with each block's SHA-256 (a tracked round's) sees the same bytes.
    const BLOCK = 64 * 1024;
    const pooled = Buffer.alloc(t.length);
    const digests = Buffer.alloc((32 * t.length) / BLOCK);
    assert.equal(await t.readBlocks({ pairs: Float64Array.of(0, t.length), count: 1, bytes: t.length }, pooled, BLOCK, digests), t.length);
    assert.ok(pooled.equals(full), 'readBlocks reads what read does');
    for (let i = 0; i < t.length / BLOCK; i += 7) {
      assert.equal(digests.toString('hex', 32 * i, 32 * i + 32), createHash('sha256').update(full.subarray(i * BLOCK, (i + 1) * BLOCK)).digest('hex'), `block ${i}'s digest`);
    }
    const diff = firstDifference(mirror, full);
    assert.equal(diff, -1, `the copy differs from the RAM at offset 0x${diff.toString(16)} (${rounds} rounds, ${written} bytes written)`);
    assert.ok(last.bytes < 32 * 1024 * 1024, `the last scan reports only what was written since the one before (${last.bytes} bytes)`);
    // Not vacuous: the guest did change its RAM after it started its program.
    assert.notEqual(firstDifference(atReady, full), -1, 'the RAM changed while the rounds ran');

    // Stopped: no page is written any more.
    const idle = t.scan();
    assert.deepEqual({ count: idle.count, bytes: idle.bytes }, { count: 0, bytes: 0 });

    // The snapshot the next test restores: this RAM and the device state alone (x-ignore-shared).
    const q = qmp as QmpClient;
    const deviceState = path.join(dir, 'device.state');
    await q.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await q.execute('migrate', { uri: `exec:cat > ${deviceState}` });
    await until('the device state saved', async () => {
      const st = await q.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (st.status === 'failed' || st.status === 'cancelled') throw new FatalWait(`device state: ${st.status} ${st['error-desc'] ?? ''}`);
      return st.status === 'completed';
    }, { timeoutMs: 30_000, everyMs: 20 });
    const uptimeMs = serialStatuses(serialLog).at(-1)?.uptime_ms ?? 0;
    snapshot = { ram: mirror, deviceState, uptimeMs };
    assert.ok(fs.statSync(deviceState).size < 2 * 1024 * 1024, 'the device state holds no guest RAM');
  });

  it('restores that RAM and device state into a new QEMU: the guest goes on with its memory intact', async function () {
    if (!snapshot) this.skip();
    const snap = snapshot as NonNullable<typeof snapshot>;
    qmp?.close();
    qmp = undefined;
    if (qemu) await stopChild(qemu);
    const d = fs.mkdtempSync(path.join(dir, 'restored-'));
    const proc = spawn('qemu-system-x86_64', args(d, true), { stdio: 'ignore', env: { ...process.env, ...trackedRamEnv() } });
    const q = await QmpClient.connect(guestFiles(d).qmpSock, { isAlive: () => proc.exitCode === null && proc.signalCode === null, timeoutMs: 30_000 });
    restored = { dir: d, qemu: proc, qmp: q };
    writeTrackedRam(proc.pid as number, snap.ram);
    await q.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await q.execute('migrate-incoming', { uri: `exec:cat ${snap.deviceState}` });
    await until('the device state loaded', async () => {
      const st = await q.execute<{ status?: string }>('query-migrate');
      if (st.status === 'failed') throw new FatalWait('the device state did not load');
      return st.status === 'completed';
    }, { timeoutMs: 30_000, everyMs: 20 });
    await q.execute('cont');
    // The guest program reports every second: it goes on from the snapshot's uptime, its memory
    // load's pattern checks all pass (a page of the RAM image wrong would fail one).
    const log = guestFiles(d).serialLog;
    const after = await until('three reports of the restored guest', () => {
      const st = serialStatuses(log).filter((x) => x.uptime_ms > snap.uptimeMs);
      return st.length >= 3 ? st : null;
    }, { timeoutMs: 60_000, everyMs: 250 });
    const last = after.at(-1) as (typeof after)[number];
    assert.deepEqual({ errors: last.mem.errors, firstError: last.mem.first_error }, { errors: 0, firstError: '' });
    assert.ok(last.mem.pages_touched > (after[0] as (typeof after)[number]).mem.pages_touched, 'the memory load runs on');
  });
});
