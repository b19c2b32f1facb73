/**
 * A tracked QEMU VM's base in its state record (tracked-job.ts, adopt.ts): the record's field is
 * parsed strictly, and a snapshot job over a base saves the record without it before its first
 * scan of the RAM (a fake VM, tracker and store recording the order of what the job does), fails
 * without scanning when that save fails, and leaves no base claimed after an abort.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseQemuSavedState } from '../../agent/drivers/qemu/adopt';
import { PAUSE_BOOST_ENV } from '../../agent/drivers/qemu/pause-boost';
import type { QemuOptions, QemuVm } from '../../agent/drivers/qemu/process';
import type { RamWriteTracker, WrittenRuns } from '../../agent/drivers/qemu/ram-track';
import { TRACKED_BLOCK_SIZE, TrackedJob, trackedBasePath } from '../../agent/drivers/qemu/tracked-job';
import { isVnsnapError } from '../../proto/core/errors';
import { silentLogger } from '../../proto/core/log';
import type { BlockImageOptions, BlockImageWriter, SnapshotStore } from '../../proto/store/snapshot-store';

describe('tracked memory base in the state record', () => {
  const ok = { dir: '/run/vnsnap/qemu/vnqm-blue_a-77-1', nic: 'tap', taps: ['vnqm1a2b3c4dn0'], ramPadKib: 8, snapSerial: 2 };
  const parse = (v: unknown): ReturnType<typeof parseQemuSavedState> => parseQemuSavedState(v, '/run/vnsnap/qemu');

  it('reads { path } back, and an older record without it as no base', () => {
    const base = { path: trackedBasePath('blue', 'a') };
    assert.deepEqual(parse(JSON.parse(JSON.stringify({ ...ok, trackedBase: base }))), { ...ok, trackedBase: base });
    assert.equal(parse(ok).trackedBase, undefined);
  });

  it('refuses a malformed one like any other bad field', () => {
    for (const v of [null, 'tracked-bases/blue/a.mem', {}, { path: 3 }, { path: '/etc/passwd' }, { path: 'tracked-bases/../a.mem' }, { path: 'tracked-bases/blue/../a.mem' }, { path: 'snapshots/x/a.mem' }, { path: 'tracked-bases/blue/a.mem/x' }]) {
      assert.throws(() => parse({ ...ok, trackedBase: v }), (e: unknown) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && /trackedBase/.test(e.message), JSON.stringify(v));
    }
  });
});

/** How the fake tracker reads: its runs written by the scan, and its readBlocks. */
interface ReadRig {
  written: WrittenRuns;
  readBlocks: (runs: WrittenRuns, buf: Buffer, blockSize: number, digests: Buffer) => Promise<number>;
}

/** A fake tracked VM: the record claims a base exactly while persistent() would write one (valid). */
function rig(o: { base?: boolean; saveFails?: boolean; read?: ReadRig; order?: string[]; qmpGate?: Promise<void> } = {}) {
  const order: string[] = o.order ?? [];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-tb-'));
  const basePath = trackedBasePath('blue', 'a');
  const blocks = 4;
  const vm = {
    spec: { id: 'blue/a', vne: 'blue', name: 'a' },
    files: { dir },
    snapSerial: 0,
    hasDisk: false,
    exited: false,
    status: 'running',
    log: silentLogger(),
    job: undefined as unknown,
    trackedBase: o.base ? { path: basePath, valid: true } : undefined,
    q: () => ({
      execute: async (cmd: string) => {
        order.push(`qmp ${cmd}`);
        await o.qmpGate;
        return cmd === 'query-migrate-capabilities' ? [{ capability: 'events' }, { capability: 'x-ignore-shared' }] : {};
      },
    }),
  } as unknown as QemuVm;
  let recordClaims = o.base === true; // the record on disk, as the agent last wrote it
  const none: WrittenRuns = { pairs: new Float64Array(0), count: 0, bytes: 0 };
  const tracker = {
    length: blocks * TRACKED_BLOCK_SIZE,
    scan: () => {
      order.push(`scan (record claims a base: ${recordClaims})`);
      return o.read?.written ?? none;
    },
    read: (runs: WrittenRuns) => runs.bytes,
    readBlocks: o.read?.readBlocks ?? (async (runs: WrittenRuns) => runs.bytes),
  } as unknown as RamWriteTracker;
  const writer: BlockImageWriter = {
    path: 'snapshots/s1/a.mem',
    putBlock: async () => undefined,
    putNamedBlock: async (i, d, sha) => void order.push(`put ${i} ${d.length} ${sha.slice(0, 8)}`),
    setTail: async () => undefined,
    commit: async () => ({ path: 'snapshots/s1/a.mem', size: 0, sha256: '' }),
    abort: async () => void order.push('image abort'),
  };
  const store = {
    createBlockImage: async (p: string, bo: BlockImageOptions) => {
      order.push(`create ${bo.base ?? 'full'}`);
      return writer;
    },
    link: async () => undefined,
    delete: async () => undefined,
  } as unknown as SnapshotStore;
  const saveState = async (): Promise<void> => {
    order.push('save');
    if (o.saveFails) throw new Error('disk full');
    recordClaims = vm.trackedBase?.valid === true;
  };
  const job = new TrackedJob(vm, tracker, { snapshotId: 's1', epoch: 1, mode: 'background', store, prefix: 'snapshots/s1/', saveState }, {} as QemuOptions);
  return { job, vm, order, store, claims: () => recordClaims, done: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

describe('tracked job: the base leaves the record before the first scan', () => {
  const env = process.env[PAUSE_BOOST_ENV];
  before(() => (process.env[PAUSE_BOOST_ENV] = '0')); // no chrt helper for a fake VM
  after(() => (env === undefined ? delete process.env[PAUSE_BOOST_ENV] : (process.env[PAUSE_BOOST_ENV] = env)));

  it('over a valid base: invalid, saved, then the image over the base and the scan', async () => {
    const r = rig({ base: true });
    try {
      await r.job.begin();
      const steps = r.order.filter((s) => !s.startsWith('qmp'));
      assert.deepEqual(steps, ['save', `create ${trackedBasePath('blue', 'a')}`, 'scan (record claims a base: false)']);
      assert.equal(r.vm.trackedBase?.valid, false);
      assert.equal(r.vm.trackedBase?.store, r.store, 'a base adopted from a record takes the job\'s store');
      await r.job.abort();
      assert.equal(r.claims(), false, 'after an abort the record names no base');
    } finally {
      r.done();
    }
  });

  it('without a base: no save, a full first round', async () => {
    const r = rig();
    try {
      await r.job.begin();
      assert.deepEqual(r.order.filter((s) => !s.startsWith('qmp') && !s.startsWith('put')), ['create full', 'scan (record claims a base: false)']);
      await r.job.abort();
    } finally {
      r.done();
    }
  });

  it('the record cannot be saved: the job fails before any scan', async () => {
    const r = rig({ base: true, saveFails: true });
    try {
      await assert.rejects(r.job.begin(), (e: unknown) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && /state record could not be written/.test(e.message) && /disk full/.test(e.message));
      await r.job.abort();
      assert.ok(!r.order.some((s) => s.startsWith('scan') || s.startsWith('create')), r.order.join(', '));
      assert.equal(r.claims(), true, 'the record still names the base, which no scan moved past');
    } finally {
      r.done();
    }
  });
});

describe('tracked job: a round read and named off the event loop', () => {
  const env = process.env[PAUSE_BOOST_ENV];
  before(() => (process.env[PAUSE_BOOST_ENV] = '0'));
  after(() => (env === undefined ? delete process.env[PAUSE_BOOST_ENV] : (process.env[PAUSE_BOOST_ENV] = env)));

  /** Blocks 1 and 2 written; a read that waits for release() and names block k by 32 bytes of k + 0xa0. */
  function pendingRead(order: string[], fail?: Error) {
    let release = (): void => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const read: ReadRig = {
      written: { pairs: Float64Array.of(TRACKED_BLOCK_SIZE, 2 * TRACKED_BLOCK_SIZE), count: 1, bytes: 2 * TRACKED_BLOCK_SIZE },
      readBlocks: async (runs, buf, blockSize, digests) => {
        order.push(`read ${runs.bytes / blockSize} blocks`);
        await gate;
        order.push('read settled');
        if (fail) throw fail;
        for (let k = 0; k < runs.bytes / blockSize; k++) digests.fill(0xa0 + k, 32 * k, 32 * k + 32);
        return runs.bytes;
      },
    };
    return { read, release: () => release() };
  }

  it('scans, then reads, and puts each block under the digest the read gave it once the read settled', async () => {
    const order: string[] = [];
    const p = pendingRead(order);
    const r = rig({ base: true, read: p.read, order });
    try {
      const begun = r.job.begin();
      await new Promise(setImmediate);
      assert.deepEqual(order.filter((s) => !s.startsWith('qmp') && s !== 'save' && !s.startsWith('create')), ['scan (record claims a base: false)', 'read 2 blocks'], 'nothing put while the read runs');
      p.release();
      await begun;
      assert.deepEqual(order.filter((s) => s.startsWith('read') || s.startsWith('put')), ['read 2 blocks', 'read settled', `put 1 ${TRACKED_BLOCK_SIZE} a0a0a0a0`, `put 2 ${TRACKED_BLOCK_SIZE} a1a1a1a1`]);
      await r.job.abort();
    } finally {
      r.done();
    }
  });

  it("begin's two lines at once: the memory's (save, image, first round) does not wait for QEMU's answers, ready only once both ended", async () => {
    const order: string[] = [];
    let answer = (): void => undefined;
    const r = rig({ base: true, order, qmpGate: new Promise<void>((res) => (answer = res)) });
    try {
      let ready = false;
      const begun = r.job.begin().then(() => (ready = true));
      for (let i = 0; i < 5; i++) await new Promise(setImmediate);
      assert.deepEqual(order, ['qmp query-migrate-capabilities', 'save', `create ${trackedBasePath('blue', 'a')}`, 'scan (record claims a base: false)'], 'QEMU has not answered; the first round ran');
      assert.equal(ready, false);
      answer();
      await begun;
      assert.ok(order.includes('qmp migrate-set-capabilities'), order.join(', '));
      await r.job.abort();
    } finally {
      r.done();
    }
  });

  it("a failure of one line is thrown once the other settled: the first round's read is not cut under", async () => {
    const order: string[] = [];
    const p = pendingRead(order);
    const r = rig({ base: true, read: p.read, order });
    (r.vm as unknown as { q: () => unknown }).q = () => ({ execute: async () => [{ capability: 'events' }] }); // no x-ignore-shared
    try {
      let settled = false;
      const begun = r.job.begin().finally(() => (settled = true));
      begun.catch(() => undefined);
      for (let i = 0; i < 5; i++) await new Promise(setImmediate);
      assert.equal(settled, false, 'the read still runs');
      p.release();
      await assert.rejects(begun, /x-ignore-shared/);
      assert.ok(order.includes('read settled'));
      await r.job.abort();
      assert.ok(order.includes('image abort'));
    } finally {
      r.done();
    }
  });

  it('a failed read fails the round with its error, after it settled, and puts nothing', async () => {
    const order: string[] = [];
    const p = pendingRead(order, Object.assign(new Error('readProcessBlocks(1, range 0): process_vm_readv: Bad address'), { code: 'ERR_NATIVE_IO' }));
    const r = rig({ base: true, read: p.read, order });
    try {
      const begun = r.job.begin();
      p.release();
      await assert.rejects(begun, /process_vm_readv: Bad address/);
      assert.deepEqual(order.filter((s) => s.startsWith('read') || s.startsWith('put')), ['read 2 blocks', 'read settled']);
      await r.job.abort();
    } finally {
      r.done();
    }
  });
});
