/**
 * The HypervisorDriver compliance suite: one set of mocha tests any driver must pass, run
 * against every implementation: the sim driver (test/unit/driver-sim.test.ts), QEMU
 * (test/integration/qemu-driver.test.ts, as root with the test guest) and Xen with its fake
 * toolstack (test/integration/xen-driver.test.ts).
 *
 *   driverCompliance('sim', async () => ({ driver, store, spec, fingerprint, cleanup }))
 *
 * `fingerprint(id)` must return a string that identifies the VM's complete guest state and is
 * stable while the VM is paused (sim: memory hash + guest state; qemu: e.g. a hash of guest
 * memory read through QMP). The suite checks: start/stop/pause/resume; precopy and background
 * snapshots with the hook called exactly once at the pause instant with the VM paused, the
 * image durable and verifiable, the VM running afterwards; abort leaves the VM running and no
 * artefact; restore comes back paused with exactly the state of the pause instant; `ready` keeps
 * driver.ts's contract on abort (it resolves, it never rejects); a job with approachCut (work
 * before its stop begun at the commit's receipt) keeps the VM running through it, cuts exactly
 * when called at the instant or before the work ends, and an abort during it leaves nothing.
 */
import { strict as assert } from 'node:assert';
import type { HypervisorDriver, SnapshotModeName, VmStartSpec } from '../../../agent/drivers/driver';
import type { SnapshotStore } from '../../../proto/store/local-dir';
import { createLogger, silentLogger } from '../../../proto/core/log';
import { sleep } from '../wait';

export interface DriverUnderTest {
  driver: HypervisorDriver;
  store: SnapshotStore;
  /** A VM spec (id/name given) the driver can start. */
  spec(name: string): VmStartSpec;
  fingerprint(id: string): Promise<string>;
  cleanup(): Promise<void>;
  /** Time to let a started VM run before snapshotting (ms). */
  warmupMs?: number;
}

export function driverCompliance(label: string, make: () => Promise<DriverUnderTest>): void {
  describe(`HypervisorDriver compliance: ${label}`, function () {
    this.timeout(60_000);
    let t: DriverUnderTest;
    let n = 0;
    const ctx = (spec: VmStartSpec) => ({ portNames: spec.macs.map((_, i) => `${spec.id}/${i}`), log: process.env.VNQM_LOG ? createLogger('compliance', { level: 'debug' }) : silentLogger() });

    beforeEach(async () => {
      t = await make();
    });
    afterEach(async () => {
      await t.driver.close();
      await t.cleanup();
    });

    const startOne = async (): Promise<VmStartSpec> => {
      const spec = t.spec(`vm${++n}`);
      const h = await t.driver.start(spec, ctx(spec));
      assert.equal(h.ports.length, spec.macs.length);
      assert.deepEqual(
        h.ports.map((p) => p.name),
        ctx(spec).portNames,
      );
      await sleep(t.warmupMs ?? 50);
      return spec;
    };

    it('starts, pauses, resumes and stops a VM', async () => {
      const spec = await startOne();
      assert.equal(t.driver.status(spec.id), 'running');
      await t.driver.pause(spec.id);
      assert.equal(t.driver.status(spec.id), 'paused');
      const a = await t.fingerprint(spec.id);
      await sleep(30);
      assert.equal(await t.fingerprint(spec.id), a, 'a paused VM does not change');
      await t.driver.resume(spec.id);
      assert.equal(t.driver.status(spec.id), 'running');
      await t.driver.stop(spec.id);
      assert.equal(t.driver.status(spec.id), 'stopped');
      await t.driver.stop(spec.id); // idempotent
    });

    for (const mode of ['precopy', 'background'] as SnapshotModeName[]) {
      it(`${mode}: hook once at the pause instant, VM running after, image durable; restore gives the exact state`, async () => {
        const spec = await startOne();
        const prefix = `snapshots/${mode}-${n}/`;
        const progress: number[] = [];
        const job = await t.driver.snapshot(spec.id, { snapshotId: `s${n}`, epoch: 1, mode, store: t.store, prefix, onProgress: (p) => progress.push(p.iteration) });
        assert.equal(job.vm, spec.id);
        // A pre-copy held at pre-switchover is paused by QEMU when it converges, which may be before
        // cut() is called: its cut instant (the STOP) then lies between the start of the wait for
        // `ready` and the end of cut().
        const beforeReady = Date.now() * 1000;
        await job.ready;
        if (mode === 'precopy') assert.ok(progress.length >= 1, 'precopy reports progress');
        let calls = 0;
        let statusAtHook = '';
        let fp = '';
        const before = Date.now() * 1000;
        const report = await job.cut(async () => {
          calls++;
          statusAtHook = t.driver.status(spec.id);
          fp = await t.fingerprint(spec.id);
        });
        const after = Date.now() * 1000;
        assert.equal(calls, 1);
        assert.equal(statusAtHook, 'paused');
        assert.equal(t.driver.status(spec.id), 'running');
        assert.ok(report.pauseMs >= 0 && report.pauseMs < 5000, `pause ${report.pauseMs} ms`);
        const earliest = mode === 'precopy' ? beforeReady : before;
        assert.ok(report.cutUnixUs >= earliest - 5000 && report.cutUnixUs <= after + 5000, 'cut instant within the call (for a held pre-copy: since the wait for ready)');
        assert.ok(report.resumeUnixUs >= report.cutUnixUs);
        assert.ok(report.phases.some((p) => p.phase === 'PHASE_PAUSE'));
        const img = await job.durable();
        assert.equal(await t.store.verify(img.memory), null);
        assert.ok(img.memory.path.startsWith(prefix));
        assert.match(img.memory.sha256, /^[0-9a-f]{64}$/);
        // The VM went on running and changed.
        await sleep(50);
        assert.equal(t.driver.status(spec.id), 'running');
        await t.driver.stop(spec.id);
        const h = await t.driver.restore(spec, { memory: img.memory, disks: img.disks }, t.store, ctx(spec));
        assert.equal(h.ports.length, spec.macs.length);
        assert.equal(t.driver.status(spec.id), 'paused');
        assert.equal(await t.fingerprint(spec.id), fp, 'restored state = state at the pause instant');
        await t.driver.resume(spec.id);
        assert.equal(t.driver.status(spec.id), 'running');
      });
    }

    // A job with work before its stop (SnapshotJob.approachCut: tracked memory's rounds); others skip.
    it('approachCut: the work from the call with the VM running; the cut at the instant, and one called before the work ends (not waiting for it), each pause once, restore exact', async function () {
      const spec = await startOne();
      for (const [i, early] of [
        [1, false],
        [2, true],
      ] as const) {
        const prefix = `snapshots/approach-${n}-${i}/`;
        const job = await t.driver.snapshot(spec.id, { snapshotId: `p${n}-${i}`, epoch: i, mode: 'background', store: t.store, prefix });
        await job.ready;
        if (!job.approachCut) {
          await job.abort();
          this.skip();
        }
        const atUs = Date.now() * 1000 + 300_000;
        job.approachCut({ stopAtUs: atUs });
        assert.equal(t.driver.status(spec.id), 'running');
        await sleep(early ? 20 : 300);
        assert.equal(t.driver.status(spec.id), 'running', 'still running');
        let calls = 0;
        let fp = '';
        const report = await job.cut(async () => {
          calls++;
          assert.equal(t.driver.status(spec.id), 'paused');
          fp = await t.fingerprint(spec.id);
        });
        assert.equal(calls, 1);
        assert.equal(t.driver.status(spec.id), 'running');
        if (early) assert.ok(report.cutUnixUs < atUs - 150_000, `a cut called 280 ms before the instant did not wait for the work still running (${(atUs - report.cutUnixUs) / 1000} ms before it)`);
        const img = await job.durable();
        assert.equal(await t.store.verify(img.memory), null);
        await t.driver.stop(spec.id);
        await t.driver.restore(spec, { memory: img.memory, disks: img.disks }, t.store, ctx(spec));
        assert.equal(await t.fingerprint(spec.id), fp, 'restored state = state at the pause instant');
        await t.driver.resume(spec.id);
        await sleep(t.warmupMs ?? 50);
      }
    });

    it('approachCut: an abort while the work runs leaves the VM running and no artefact; the cut then rejects', async function () {
      const spec = await startOne();
      const prefix = `snapshots/approach-abort-${n}/`;
      const job = await t.driver.snapshot(spec.id, { snapshotId: `q${n}`, epoch: 1, mode: 'background', store: t.store, prefix });
      await job.ready;
      if (!job.approachCut) {
        await job.abort();
        this.skip();
      }
      job.approachCut({ stopAtUs: Date.now() * 1000 + 1_000_000 });
      await sleep(150);
      await job.abort();
      await assert.rejects(job.cut(async () => undefined));
      assert.equal(t.driver.status(spec.id), 'running');
      assert.deepEqual(await t.store.list(prefix), []);
    });

    it('abort during pre-copy leaves the VM running and no artefact', async () => {
      const spec = await startOne();
      const prefix = `snapshots/abort-${n}/`;
      const job = await t.driver.snapshot(spec.id, { snapshotId: `a${n}`, epoch: 1, mode: 'precopy', store: t.store, prefix });
      await sleep(20);
      await job.abort();
      await job.abort(); // idempotent
      assert.equal(t.driver.status(spec.id), 'running');
      assert.deepEqual(await t.store.list(prefix), []);
    });

    it('abort before the pre-copy is ready resolves `ready` (never rejects), VM running, no artefact', async () => {
      const spec = await startOne();
      const prefix = `snapshots/abort-ready-${n}/`;
      const job = await t.driver.snapshot(spec.id, { snapshotId: `r${n}`, epoch: 1, mode: 'precopy', store: t.store, prefix });
      const outcome = job.ready.then(
        () => 'resolved',
        (e: unknown) => `rejected: ${String(e)}`,
      );
      await job.abort();
      assert.equal(await Promise.race([outcome, sleep(10_000).then(() => 'still pending 10 s after abort()')]), 'resolved');
      assert.equal(t.driver.status(spec.id), 'running');
      assert.deepEqual(await t.store.list(prefix), []);
    });

    it('abort after a background cut (image still being written) leaves the VM running and no artefact', async () => {
      const spec = await startOne();
      const prefix = `snapshots/abort-bg-${n}/`;
      const job = await t.driver.snapshot(spec.id, { snapshotId: `b${n}`, epoch: 1, mode: 'background', store: t.store, prefix });
      await job.ready;
      await job.cut(async () => undefined);
      await job.abort();
      await assert.rejects(job.durable());
      assert.equal(t.driver.status(spec.id), 'running');
      assert.deepEqual(await t.store.list(prefix), []);
    });

    it('a cut whose hook throws resumes the VM and rejects', async () => {
      const spec = await startOne();
      const job = await t.driver.snapshot(spec.id, { snapshotId: `h${n}`, epoch: 1, mode: 'background', store: t.store, prefix: `snapshots/hook-${n}/` });
      await job.ready;
      await assert.rejects(
        job.cut(async () => {
          throw new Error('switch failed');
        }),
        /switch failed/,
      );
      assert.equal(t.driver.status(spec.id), 'running');
      await job.abort();
      assert.deepEqual(await t.store.list(`snapshots/hook-${n}/`), []);
    });
  });
}
