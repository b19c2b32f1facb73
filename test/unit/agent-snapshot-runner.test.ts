import { strict as assert } from 'node:assert';
import * as os from 'node:os';
import { cutPriorityHolds, cutPrioritySettled } from '../../agent/cut-priority';
import { decodeChannel } from '../../proto/artefacts/channel-state';
import { isVnsnapError, VnsnapError } from '../../proto/core/errors';
import type { SnapshotBegin__Output } from '../../proto/gen/vnsnap/v1/SnapshotBegin';
import { CUT_RAISE_LEAD_MS, cutAtWords, cutInstant } from '../../agent/snapshot-runner';
import type { PhaseTiming } from '../../proto/gen/vnsnap/v1/PhaseTiming';
import { AgentParts, flush, T0, testFrame, VNE } from '../support/agent-parts';
import type { FakeJob } from '../support/fake-driver';
import { parseFrame, vmMac } from '../support/frames';

function begin(id: string, epoch: number, vms: string[], mode: SnapshotBegin__Output['mode'] = 'SNAPSHOT_MODE_PRECOPY'): SnapshotBegin__Output {
  return { snapshotId: id, vne: VNE, epoch, mode, vms, storePrefix: `snapshots/${id}/` };
}

/** Agent parts for VMs a and b whose cut-priority changes go into the driver's events ("chrt --fifo", "chrt --other"). */
async function withChrtEvents(): Promise<AgentParts> {
  const parts: AgentParts = await new AgentParts({
    cutPriority: {
      chrt: (args: string[]): Promise<void> => {
        parts.driver.events.push(`chrt ${args[0] ?? ''}`);
        return Promise.resolve();
      },
      policy: () => 0,
      nice: os.getPriority(0),
    },
  }).init(['a', 'b']);
  return parts;
}

const abortOf = (id: string, epoch: number) => ({ snapshotId: id, vne: VNE, epoch, storePrefix: `snapshots/${id}/` });

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return isVnsnapError(e) ? e.code : `not a VnsnapError: ${String(e)}`;
  }
  return 'resolved';
}

function job(h: AgentParts, i = 0): FakeJob {
  const j = h.driver.jobs[i];
  if (!j) throw new Error(`no job ${i}`);
  return j;
}

/** Run f and return the unhandled rejections reported while it ran (after one more flush). */
async function unhandledDuring(f: () => Promise<void>): Promise<unknown[]> {
  const unhandled: unknown[] = [];
  const onUnhandled = (r: unknown): void => void unhandled.push(r);
  process.on('unhandledRejection', onUnhandled);
  try {
    await f();
    await flush();
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
  return unhandled;
}

describe('agent snapshot runner (fake driver, real switch over fake ports, manual clock)', () => {
  let h: AgentParts;
  afterEach(() => h.close());

  it('precopy: Progress throttled on the clock, Begin answers when ready, the cut in order, channel state recorded and persisted', async () => {
    h = await new AgentParts().init(['a', 'b']);
    h.driver.holdReady = true;
    let begun = false;
    const p = h.snapshots.begin(begin('s1', 1, ['a']), h.sink).then((r) => ((begun = true), r));
    await flush();
    const j = job(h);
    j.progress({ bytesDone: 256, bytesRemaining: 768, bytesTotal: 1024 });
    h.clock.advance(499);
    j.progress({ bytesDone: 384, bytesRemaining: 640, bytesTotal: 1024 }); // within 500 ms: dropped
    h.clock.advance(1);
    j.progress({ bytesDone: 512, bytesRemaining: 512, bytesTotal: 1024 });
    j.progress({ bytesDone: 896, bytesRemaining: 128, bytesTotal: 1024, ready: true }); // readiness: at once
    await flush();
    assert.equal(begun, false);
    j.setReady();
    assert.deepEqual(await p, {});
    assert.deepEqual(h.progress, [
      { vm: 'a', fraction: 0.25, phaseDone: false },
      { vm: 'a', fraction: 0.5, phaseDone: false },
      { vm: 'a', fraction: 0.875, phaseDone: false },
      { vm: 'a', fraction: 1, phaseDone: true },
    ]);

    // Frames the VMs wrote before the cut and the switch has not read yet: a's is drained as
    // epoch 0 at a's cut (b is still at 0: delivered, not recorded); b's is drained when b, a
    // bystander, passes the cut after a did (a is at 1: delivered and recorded as a's channel).
    h.driver.port('blue/a').vm.send(testFrame(1, 2, 1));
    h.driver.port('blue/b').vm.send(testFrame(2, 1, 1));
    h.clock.advance(250);
    const commit = await h.snapshots.commit({ snapshotId: 's1' });
    const cutUs = (T0 + 750) * 1000;
    assert.deepEqual(commit, {
      commit: {
        vms: [
          {
            name: 'a',
            host: 'h1',
            pauseMs: 1,
            cutUnixUs: cutUs,
            phases: [
              { phase: 'PHASE_PRECOPY', startUnixUs: T0 * 1000, endUnixUs: cutUs },
              { phase: 'PHASE_PAUSE', startUnixUs: cutUs, endUnixUs: cutUs + 1000 },
              // the cut trace: the commit arrived (no send instant: an older coordinator), the drain in the pause
              { phase: 'PHASE_COMMIT', startUnixUs: cutUs, endUnixUs: cutUs },
              { phase: 'PHASE_DRAIN', startUnixUs: cutUs, endUnixUs: cutUs },
            ],
          },
        ],
      },
    });
    assert.deepEqual(h.driver.events, ['start a', 'start b', 'pause a', 'atPause a', 'resume a']);
    assert.deepEqual([h.sw.portEpoch('blue/a/0'), h.sw.portEpoch('blue/b/0')], [1, 1]);
    assert.deepEqual(h.driver.port('blue/a').vm.received.map((f) => parseFrame(f)?.sender), [2]);
    assert.deepEqual(h.driver.port('blue/b').vm.received.map((f) => parseFrame(f)?.sender), [1]);

    const persist = await h.snapshots.persist({ snapshotId: 's1' });
    const arts = persist.persist?.artefacts ?? [];
    assert.deepEqual(
      arts.map((a) => [a.kind, a.path, a.owner]),
      [
        ['ARTEFACT_KIND_MEMORY', 'snapshots/s1/a.mem', 'a'],
        ['ARTEFACT_KIND_CHANNEL', 'snapshots/s1/a.0.chan', 'blue/a/0'],
      ],
    );
    assert.equal(persist.persist?.lostFrames, 0);
    const vm = persist.persist?.vms?.[0];
    assert.equal(vm?.channelFrames, 1);
    assert.equal(vm?.memoryBytes, Buffer.byteLength('memory of a'));
    assert.deepEqual(
      vm?.phases?.map((x) => x.phase),
      ['PHASE_PRECOPY', 'PHASE_PAUSE', 'PHASE_COMMIT', 'PHASE_DRAIN', 'PHASE_CHANNEL', 'PHASE_PERSIST'],
    );
    const chan = decodeChannel(await h.store.get('snapshots/s1/a.0.chan'), 'a.0.chan');
    assert.deepEqual(
      chan.map((f) => (f.vnetHdr === null ? parseFrame(f.frame) : 'super-frame')),
      [{ dst: vmMac(1), src: vmMac(2), sender: 2, seq: 1, epoch: 0 }],
    );
    assert.deepEqual(h.snapshots.inProgress, []);
  });

  it('background: Begin answers at once (each VM reported ready); the cut has no pre-copy phase; every VM of the snapshot is cut', async () => {
    h = await new AgentParts().init(['a', 'b']);
    assert.deepEqual(await h.snapshots.begin(begin('s2', 3, ['a', 'b'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink), {});
    const r = await h.snapshots.commit({ snapshotId: 's2' });
    assert.deepEqual(
      r.commit?.vms?.map((v) => [v.name, v.phases?.map((x) => x.phase)]),
      [
        ['a', ['PHASE_PAUSE', 'PHASE_COMMIT', 'PHASE_DRAIN']],
        ['b', ['PHASE_PAUSE', 'PHASE_COMMIT', 'PHASE_DRAIN']],
      ],
    );
    assert.deepEqual(h.driver.events.filter((e) => e.startsWith('atPause')), ['atPause a', 'atPause b']);
    assert.deepEqual([h.sw.portEpoch('blue/a/0'), h.sw.portEpoch('blue/b/0')], [3, 3]);
    assert.deepEqual(h.progress, [
      { vm: 'a', fraction: 1, phaseDone: true },
      { vm: 'b', fraction: 1, phaseDone: true },
    ]);
  });

  it('background: the event loop raised from Begin to the last VM\'s drain (one window over the commit), dropped at an abort; a pre-copy never raises it', async () => {
    h = await withChrtEvents();
    const events = (): string[] => h.driver.events.splice(0).filter((e) => !e.startsWith('start'));
    await h.snapshots.begin(begin('s11', 1, ['a', 'b'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    await cutPrioritySettled();
    assert.deepEqual(events(), ['chrt --fifo'], 'raised at Begin');
    assert.equal(cutPriorityHolds(), 1);
    await h.snapshots.commit({ snapshotId: 's11' });
    await cutPrioritySettled();
    assert.equal(cutPriorityHolds(), 0);
    assert.deepEqual(events(), ['pause a', 'atPause a', 'pause b', 'atPause b', 'resume a', 'resume b', 'chrt --other'], 'dropped after the last drain');
    await h.snapshots.persist({ snapshotId: 's11' });

    await h.snapshots.begin(begin('s12', 2, ['a'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    await h.snapshots.abort(abortOf('s12', 2));
    await cutPrioritySettled();
    assert.deepEqual(events(), ['chrt --fifo', 'chrt --other', 'abort a']);
    assert.equal(cutPriorityHolds(), 0);

    h.driver.failPause = true;
    await h.snapshots.begin(begin('s13', 3, ['a'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    assert.equal(await code(h.snapshots.commit({ snapshotId: 's13' })), 'ERR_DRIVER');
    await cutPrioritySettled();
    assert.equal(cutPriorityHolds(), 0, 'a failed cut drops it too');
    assert.deepEqual(events(), ['chrt --fifo', 'chrt --other']);
    await h.snapshots.abort(abortOf('s13', 3));
    assert.deepEqual(events(), ['abort a'], 'nothing more to drop');
    h.driver.failPause = false;

    await h.snapshots.begin(begin('s14', 4, ['a']), h.sink);
    await h.snapshots.commit({ snapshotId: 's14' });
    await cutPrioritySettled();
    assert.deepEqual(events(), ['pause a', 'atPause a', 'resume a'], 'the pre-copy raised nothing');
  });

  it('background with jobs that own their cut window (tracked memory): no window from Begin or the commit, each job raises the loop for its own pause; a job without one among them keeps the agent\'s window', async () => {
    h = await withChrtEvents();
    const events = (): string[] => h.driver.events.splice(0).filter((e) => !e.startsWith('start'));
    h.driver.ownCutWindow = true;
    await h.snapshots.begin(begin('s21', 1, ['a', 'b'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    await cutPrioritySettled();
    assert.deepEqual(events(), [], 'nothing raised at Begin');
    assert.equal(cutPriorityHolds(), 0);
    await h.snapshots.commit({ snapshotId: 's21' });
    await cutPrioritySettled();
    assert.equal(cutPriorityHolds(), 0, 'every job released its window');
    const cut = events();
    assert.deepEqual(cut.filter((e) => !e.startsWith('chrt')), ['pause a', 'window a', 'atPause a', 'pause b', 'window b', 'atPause b', 'resume a', 'resume b']);
    assert.equal(cut[cut.length - 1], 'chrt --other', 'the loop back at its own policy after the last pause');
    assert.ok(cut.indexOf('chrt --fifo') > cut.indexOf('pause a'), 'raised only once a VM was paused');
    await h.snapshots.persist({ snapshotId: 's21' });


    // A pre-copy: the jobs raise nothing (their windows are background cuts' only).
    await h.snapshots.begin(begin('s22', 2, ['a']), h.sink);
    await h.snapshots.commit({ snapshotId: 's22' });
    await cutPrioritySettled();
    assert.deepEqual(events(), ['pause a', 'atPause a', 'resume a']);
    await h.snapshots.persist({ snapshotId: 's22' });

    // One job without its own window: the agent's window from Begin, as for any background snapshot.
    h.driver.ownCutWindow = false;
    await h.snapshots.begin(begin('s23', 3, ['a'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    await cutPrioritySettled();
    assert.deepEqual(events(), ['chrt --fifo'], 'raised at Begin');
    await h.snapshots.commit({ snapshotId: 's23' });
    await cutPrioritySettled();
    assert.equal(cutPriorityHolds(), 0);
    assert.deepEqual(events(), ['pause a', 'atPause a', 'resume a', 'chrt --other']);
    // With an instant: the loop raised CUT_RAISE_LEAD_MS before it (not at the receipt), dropped after the last pause.
    h.driver.ownCutWindow = true;
    await h.snapshots.begin(begin('s24', 4, ['a', 'b'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    events();
    const rx = h.clock.now() * 1000;
    const p = h.snapshots.commit({ snapshotId: 's24', sentUnixUs: rx - 2000, cutAtUnixUs: rx + 100_000 });
    await flush();
    h.clock.advance(100 - CUT_RAISE_LEAD_MS - 1);
    await flush();
    assert.deepEqual(events().filter((e) => e.startsWith('chrt')), [], 'not raised at the receipt');
    h.clock.advance(1);
    await cutPrioritySettled();
    assert.deepEqual(events().filter((e) => e.startsWith('chrt') || e.startsWith('pause')), ['chrt --fifo'], `raised ${CUT_RAISE_LEAD_MS} ms before the instant, nothing paused yet`);
    assert.equal(cutPriorityHolds(), 1);
    h.clock.advance(CUT_RAISE_LEAD_MS);
    await p;
    await cutPrioritySettled();
    assert.equal(cutPriorityHolds(), 0, 'every hold released after the cut');
    assert.equal(events().at(-1), 'chrt --other');
    await h.snapshots.persist({ snapshotId: 's24' });
  });

  it("the cut trace: COMMIT from the coordinator's send instant to the receipt (receipt alone from an older coordinator), DRAIN while the VM is paused, no stall on a clock that does not move", async () => {
    h = await new AgentParts().init(['a', 'b']);
    await h.snapshots.begin(begin('s9', 1, ['a'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    h.clock.advance(40);
    const rx = h.clock.now() * 1000;
    const r = await h.snapshots.commit({ snapshotId: 's9', sentUnixUs: rx - 1234 });
    const trace = (r.commit?.vms?.[0]?.phases ?? []).filter((p) => p.phase !== 'PHASE_PAUSE');
    assert.deepEqual(trace, [
      { phase: 'PHASE_COMMIT', startUnixUs: rx - 1234, endUnixUs: rx },
      { phase: 'PHASE_DRAIN', startUnixUs: rx, endUnixUs: rx },
    ]);
    assert.deepEqual(h.driver.events.filter((e) => e.endsWith(' a')), ['start a', 'pause a', 'atPause a', 'resume a'], 'the drain ran inside the pause hook');
    await h.snapshots.abort(abortOf('s9', 1));
    await h.snapshots.begin(begin('s10', 2, ['a'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    const old = await h.snapshots.commit({ snapshotId: 's10' });
    assert.deepEqual(old.commit?.vms?.[0]?.phases?.find((p) => p.phase === 'PHASE_COMMIT'), { phase: 'PHASE_COMMIT', startUnixUs: rx, endUnixUs: rx });
  });

  it("a commit naming a cut instant: the VMs run (no pause, no gate) until this agent's clock reaches it, CUT_AT traces the instant → the cuts' begin; one that names none cuts at receipt", async () => {
    h = await new AgentParts().init(['a', 'b']);
    await h.snapshots.begin(begin('s20', 1, ['a', 'b'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    const rx = h.clock.now() * 1000;
    let done = false;
    const p = h.snapshots.commit({ snapshotId: 's20', sentUnixUs: rx - 2000, cutAtUnixUs: rx + 30_000 }).then((r) => ((done = true), r));
    await flush();
    h.clock.advance(29);
    await flush();
    assert.deepEqual(h.driver.events, ['start a', 'start b'], 'nothing paused 1 ms before the instant');
    h.driver.port('blue/b').vm.send(testFrame(2, 1, 3));
    h.driver.port('blue/b').vm.pumpAll();
    await flush();
    assert.equal(h.driver.port('blue/a').vm.received.length, 1, 'a frame to a VM waiting for its cut is delivered, not held');
    assert.equal(done, false);
    h.clock.advance(1);
    const r = await p;
    assert.deepEqual(h.driver.events.filter((e) => e.startsWith('pause')), ['pause a', 'pause b'], 'both VMs cut at the instant');
    for (const vm of r.commit?.vms ?? [])
      assert.deepEqual(
        (vm.phases ?? []).filter((x) => x.phase === 'PHASE_COMMIT' || x.phase === 'PHASE_CUT_AT'),
        [
          { phase: 'PHASE_COMMIT', startUnixUs: rx - 2000, endUnixUs: rx },
          { phase: 'PHASE_CUT_AT', startUnixUs: rx + 30_000, endUnixUs: rx + 30_000 },
        ],
        vm.name ?? '',
      );
    assert.deepEqual(cutAtWords({ phase: 'PHASE_CUT_AT', startUnixUs: rx + 30_000, endUnixUs: rx + 30_000 }, rx), { waitedMs: 30 });
    await h.snapshots.persist({ snapshotId: 's20' });
    // An older coordinator: no instant, the cut at once and no CUT_AT.
    await h.snapshots.begin(begin('s21', 2, ['a'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    const old = await h.snapshots.commit({ snapshotId: 's21', sentUnixUs: 0 });
    assert.deepEqual(old.commit?.vms?.[0]?.phases?.map((x) => x.phase).filter((x) => x === 'PHASE_COMMIT' || x === 'PHASE_CUT_AT'), ['PHASE_COMMIT']);
  });

  it('a pre-copy commit naming a cut instant: the cuts begin at the receipt (ports gated) and the driver gets the instant, bounded by maxCutWaitMs; none named, none given', async () => {
    h = await new AgentParts({ maxCutWaitMs: 200 }).init(['a', 'b']);
    await h.snapshots.begin(begin('s25', 1, ['a', 'b'], 'SNAPSHOT_MODE_PRECOPY'), h.sink);
    const rx = h.clock.now() * 1000;
    const r = await h.snapshots.commit({ snapshotId: 's25', sentUnixUs: rx - 2000, cutAtUnixUs: rx + 120_000 });
    assert.deepEqual(h.driver.events.filter((e) => e.startsWith('instant') || e.startsWith('pause')), [`instant a ${rx + 120_000}`, 'pause a', `instant b ${rx + 120_000}`, 'pause b'], 'no wait here: the instant goes to the driver');
    for (const vm of r.commit?.vms ?? []) assert.equal((vm.phases ?? []).some((x) => x.phase === 'PHASE_CUT_AT'), false, 'CUT_AT is the driver’s in pre-copy');
    await h.snapshots.persist({ snapshotId: 's25' });
    await h.snapshots.begin(begin('s26', 2, ['a'], 'SNAPSHOT_MODE_PRECOPY'), h.sink);
    const t = h.clock.now() * 1000;
    await h.snapshots.commit({ snapshotId: 's26', cutAtUnixUs: t + 5_000_000 });
    assert.equal(h.driver.events.at(-4), `instant a ${t + 200_000}`, 'bounded by maxCutWaitMs');
    await h.snapshots.persist({ snapshotId: 's26' });
    await h.snapshots.begin(begin('s27', 3, ['a'], 'SNAPSHOT_MODE_PRECOPY'), h.sink);
    const n = h.driver.events.length;
    await h.snapshots.commit({ snapshotId: 's27' });
    assert.equal(h.driver.events.slice(n).some((e) => e.startsWith('instant')), false);
    assert.deepEqual(cutInstant(0, t), undefined);
    assert.deepEqual(cutInstant(t - 5, t), { stopAtUs: t - 5 }, 'an instant already past is handed on: the driver knows it is late');
  });

  it("a background commit's instant with jobs that approach it: their work starts at the receipt (no gate, no pause), every VM's cut begins at the instant without it, also a job whose work runs late (the cut does not wait for it; the persist does)", async () => {
    h = await new AgentParts().init(['a', 'b']);
    h.driver.approach = true;
    h.driver.holdApproach = true;
    await h.snapshots.begin(begin('s30', 1, ['a', 'b'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    const rx = h.clock.now() * 1000;
    const p = h.snapshots.commit({ snapshotId: 's30', sentUnixUs: rx - 2000, cutAtUnixUs: rx + 30_000 });
    await flush();
    assert.deepEqual(h.driver.events, ['start a', 'start b', `approach a ${rx + 30_000}`, `approach b ${rx + 30_000}`], 'both approaches begun at the receipt');
    h.driver.port('blue/b').vm.send(testFrame(2, 1, 3));
    h.driver.port('blue/b').vm.pumpAll();
    await flush();
    assert.equal(h.driver.port('blue/a').vm.received.length, 1, 'a frame to an approaching VM is delivered, not held');
    job(h, 0).endApproach();
    await flush();
    h.clock.advance(29);
    await flush();
    assert.deepEqual(h.driver.events.slice(4), ['approached a'], 'a done early: still not cut before the instant');
    const EVENTS_AT_INSTANT = ['approached a', 'pause a', 'atPause a', 'late b', 'pause b', 'atPause b', 'resume a', 'resume b'];
    h.clock.advance(1);
    const r = await p;
    assert.deepEqual(h.driver.events.slice(4), EVENTS_AT_INSTANT, "both cut at the instant, b's without waiting for its work still running");
    assert.equal(h.driver.events.some((e) => e.startsWith('instant')), false, 'the cuts get no instant: they stop at once');
    for (const vm of r.commit?.vms ?? []) assert.deepEqual(vm.phases?.find((x) => x.phase === 'PHASE_CUT_AT'), { phase: 'PHASE_CUT_AT', startUnixUs: rx + 30_000, endUnixUs: rx + 30_000 }, vm.name ?? '');
    h.driver.port('blue/a').vm.send(testFrame(1, 2, 4));
    h.driver.port('blue/a').vm.pumpAll();
    await flush();
    assert.equal(h.driver.port('blue/b').vm.received.length, 1, "b's ports are released after its cut, its work still running");
    // The image waits for that work: the persist ends only once it ended.
    let persisted = false;
    const pp = h.snapshots.persist({ snapshotId: 's30' }).then(() => (persisted = true));
    await flush();
    assert.equal(persisted, false, "the persist waits for b's work");
    job(h, 1).endApproach();
    await pp;
    assert.deepEqual(h.driver.events.slice(4 + EVENTS_AT_INSTANT.length), ['approached b']);
    // No instant named: no approach, the cut at once.
    await h.snapshots.begin(begin('s31', 2, ['a'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    const n = h.driver.events.length;
    await h.snapshots.commit({ snapshotId: 's31' });
    assert.deepEqual(h.driver.events.slice(n), ['pause a', 'atPause a', 'resume a']);
  });

  it('a pre-copy commit whose jobs all approach its instant is waited for here as a background one; with one job that does not, every cut begins at the receipt with the instant', async () => {
    h = await new AgentParts({ maxCutWaitMs: 200 }).init(['a', 'b']);
    h.driver.approach = true;
    await h.snapshots.begin(begin('s32', 1, ['a', 'b'], 'SNAPSHOT_MODE_PRECOPY'), h.sink);
    const rx = h.clock.now() * 1000;
    let done = false;
    const p = h.snapshots.commit({ snapshotId: 's32', sentUnixUs: rx - 2000, cutAtUnixUs: rx + 5_000_000 }).then((x) => ((done = true), x));
    await flush();
    assert.deepEqual(h.driver.events, ['start a', 'start b', `approach a ${rx + 200_000}`, `approach b ${rx + 200_000}`, 'approached a', 'approached b'], 'the instant bounded by maxCutWaitMs, as the wait');
    h.clock.advance(199);
    await flush();
    assert.equal(done, false);
    h.clock.advance(1);
    const r = await p;
    assert.deepEqual(h.driver.events.slice(6).filter((e) => /^(pause|instant)/.test(e)), ['pause a', 'pause b'], 'cut at the instant, without it');
    for (const vm of r.commit?.vms ?? []) assert.deepEqual(vm.phases?.find((x) => x.phase === 'PHASE_CUT_AT'), { phase: 'PHASE_CUT_AT', startUnixUs: rx + 5_000_000, endUnixUs: rx + 200_000 });
    await h.snapshots.persist({ snapshotId: 's32' });
    await h.snapshots.begin(begin('s33', 2, ['a', 'b'], 'SNAPSHOT_MODE_PRECOPY'), h.sink);
    job(h, 3).approachCut = undefined; // b's job: a driver without it
    const n = h.driver.events.length;
    const t = h.clock.now() * 1000;
    await h.snapshots.commit({ snapshotId: 's33', cutAtUnixUs: t + 100_000 });
    assert.deepEqual(
      h.driver.events.slice(n).filter((e) => /^(instant|pause|approach)/.test(e)),
      [`instant a ${t + 100_000}`, 'pause a', `instant b ${t + 100_000}`, 'pause b'],
      'no approach, no wait: the instant goes to the drivers',
    );
  });

  it('an abort while a job approaches the instant ends its approach: Commit fails ERR_SNAPSHOT_ABORTED, no VM was paused, its ports un-gated', async () => {
    h = await new AgentParts().init(['a', 'b']);
    h.driver.approach = true;
    h.driver.holdApproach = true;
    await h.snapshots.begin(begin('s34', 1, ['a'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    const c = code(h.snapshots.commit({ snapshotId: 's34', cutAtUnixUs: h.clock.now() * 1000 + 10_000 }));
    await flush();
    h.clock.advance(9); // the approach still runs, the instant not reached
    await flush();
    await h.snapshots.abort(abortOf('s34', 1));
    assert.equal(await c, 'ERR_SNAPSHOT_ABORTED');
    assert.deepEqual(
      h.driver.events.filter((e) => e.endsWith(' a')),
      ['start a', 'abort a', 'approached a'],
    );
    h.driver.port('blue/b').vm.send(testFrame(2, 1, 3));
    h.driver.port('blue/b').vm.pumpAll();
    await flush();
    assert.equal(h.driver.port('blue/a').vm.received.length, 1, 'not gated');
  });

  it('a commit received after its cut instant cuts at once, and its CUT_AT says how late (the receipt); an instant beyond maxCutWaitMs is cut then', async () => {
    h = await new AgentParts({ maxCutWaitMs: 200 }).init(['a']);
    await h.snapshots.begin(begin('s22', 1, ['a'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    const rx = h.clock.now() * 1000;
    const r = await h.snapshots.commit({ snapshotId: 's22', sentUnixUs: rx - 50_000, cutAtUnixUs: rx - 12_500 });
    const at = r.commit?.vms?.[0]?.phases?.find((x) => x.phase === 'PHASE_CUT_AT');
    assert.deepEqual(at, { phase: 'PHASE_CUT_AT', startUnixUs: rx - 12_500, endUnixUs: rx });
    assert.deepEqual(cutAtWords(at as PhaseTiming, rx), { lateMs: 12.5, by: 'receipt' });
    await h.snapshots.persist({ snapshotId: 's22' });
    await h.snapshots.begin(begin('s23', 2, ['a'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    const t = h.clock.now() * 1000;
    let done = false;
    const far = h.snapshots.commit({ snapshotId: 's23', cutAtUnixUs: t + 5_000_000 }).then((x) => ((done = true), x));
    await flush();
    h.clock.advance(199);
    await flush();
    assert.equal(done, false);
    h.clock.advance(1);
    const rf = await far;
    assert.deepEqual(rf.commit?.vms?.[0]?.phases?.find((x) => x.phase === 'PHASE_CUT_AT'), { phase: 'PHASE_CUT_AT', startUnixUs: t + 5_000_000, endUnixUs: t + 200_000 });
  });

  it('an abort during the wait for the cut instant ends it at once: Commit fails ERR_SNAPSHOT_ABORTED, no VM was paused, no timer is left', async () => {
    h = await new AgentParts().init(['a']);
    await h.snapshots.begin(begin('s24', 1, ['a'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink);
    const c = code(h.snapshots.commit({ snapshotId: 's24', cutAtUnixUs: h.clock.now() * 1000 + 100_000 }));
    await flush();
    await h.snapshots.abort(abortOf('s24', 1));
    assert.equal(await c, 'ERR_SNAPSHOT_ABORTED');
    assert.equal(h.driver.events.includes('pause a'), false);
    assert.equal(h.clock.pending, 0);
  });

  it('a VM that cannot be paused: Commit fails with the driver code, atPause never ran, the VNE still passes the cut; Abort cleans up', async () => {
    h = await new AgentParts().init(['a', 'b']);
    await h.snapshots.begin(begin('s3', 2, ['a']), h.sink);
    h.driver.failPause = true;
    assert.equal(await code(h.snapshots.commit({ snapshotId: 's3' })), 'ERR_DRIVER');
    assert.deepEqual(h.driver.events, ['start a', 'start b']);
    assert.deepEqual([h.sw.portEpoch('blue/a/0'), h.sw.portEpoch('blue/b/0')], [2, 2]);
    // Un-gated: a frame to a is delivered, not held.
    h.driver.port('blue/b').vm.send(testFrame(2, 1, 7));
    h.driver.port('blue/b').vm.pumpAll();
    assert.deepEqual(h.driver.port('blue/a').vm.received.map((f) => parseFrame(f)?.seq), [7]);
    assert.deepEqual(h.snapshots.inProgress, ['s3']);
    await h.snapshots.abort(abortOf('s3', 2));
    assert.equal(job(h).aborted, true);
    assert.deepEqual(h.snapshots.inProgress, []);
  });

  it('SnapshotAbort during pre-copy: Begin fails as aborted (abort releases ready), VMs resumed, ports advanced, partials deleted', async () => {
    h = await new AgentParts().init(['a', 'b']);
    const unhandled = await unhandledDuring(async () => {
      h.driver.holdReady = true;
      const p = code(h.snapshots.begin(begin('s4', 5, ['a']), h.sink));
      await flush();
      await h.store.put('snapshots/s4/a.mem', Buffer.from('partial'));
      assert.deepEqual(await h.snapshots.abort(abortOf('s4', 5)), {});
      assert.equal(await p, 'ERR_SNAPSHOT_ABORTED');
      assert.deepEqual(h.driver.events, ['start a', 'start b', 'abort a']);
      assert.deepEqual([h.sw.portEpoch('blue/a/0'), h.sw.portEpoch('blue/b/0')], [5, 5]);
      assert.deepEqual(await h.store.list('snapshots/s4/'), []);
    });
    assert.deepEqual(unhandled, []);
  });

  it('a copy that fails before it is ready: Begin fails with the driver\'s code, the rejected ready is handled', async () => {
    h = await new AgentParts().init(['a']);
    const unhandled = await unhandledDuring(async () => {
      h.driver.holdReady = true;
      const p = code(h.snapshots.begin(begin('s7', 6, ['a']), h.sink));
      await flush();
      job(h).failCopy(new VnsnapError('ERR_DRIVER', 'the copy of a failed'));
      assert.equal(await p, 'ERR_DRIVER');
    });
    assert.deepEqual(unhandled, []);
  });

  it("Begin begins every VM's job at once (one VM's begin does not wait for another's); Begin answers once every job has begun and is ready", async () => {
    h = await new AgentParts().init(['a', 'b']);
    h.driver.holdBegin = true;
    let answered = false;
    const p = h.snapshots.begin(begin('s40', 2, ['a', 'b'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink).then((r) => ((answered = true), r));
    await flush();
    assert.deepEqual(h.driver.events, ['start a', 'start b', 'begin a', 'begin b'], "b's begin is under way while a's is");
    h.driver.releaseBegin('b');
    await flush();
    assert.equal(answered, false, "a's job has not begun");
    h.driver.releaseBegin('a');
    assert.deepEqual(await p, {});
    const r = await h.snapshots.commit({ snapshotId: 's40' });
    assert.deepEqual(r.commit?.vms?.map((v) => v.name), ['a', 'b'], 'the VMs in their order, whichever began first');
  });

  it('a job that cannot begin while another begins: Begin fails with its code once both settled, the other job is aborted, the ports advanced, no unhandled rejection', async () => {
    h = await new AgentParts().init(['a', 'b']);
    const unhandled = await unhandledDuring(async () => {
      h.driver.holdBegin = true;
      const p = code(h.snapshots.begin(begin('s41', 4, ['a', 'b'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink));
      await flush();
      h.driver.failBegin('a', new VnsnapError('ERR_DRIVER', 'a cannot begin'));
      await flush();
      assert.deepEqual(h.driver.events, ['start a', 'start b', 'begin a', 'begin b', 'abort a'], 'b still begins: nothing aborted under it');
      h.driver.releaseBegin('b');
      assert.equal(await p, 'ERR_DRIVER');
      assert.deepEqual(h.driver.events.slice(4), ['abort a', 'begun b', 'abort b']);
      assert.deepEqual([h.sw.portEpoch('blue/a/0'), h.sw.portEpoch('blue/b/0')], [4, 4]);
      assert.equal(h.snapshots.inProgress.length, 0);
    });
    assert.deepEqual(unhandled, []);
  });

  it('SnapshotAbort while the jobs begin: every job is aborted once it has begun, Begin fails as aborted', async () => {
    h = await new AgentParts().init(['a', 'b']);
    h.driver.holdBegin = true;
    const p = code(h.snapshots.begin(begin('s42', 3, ['a', 'b'], 'SNAPSHOT_MODE_BACKGROUND'), h.sink));
    await flush();
    const aborted = h.snapshots.abort(abortOf('s42', 3));
    await flush();
    assert.deepEqual(h.driver.events, ['start a', 'start b', 'begin a', 'begin b'], 'the abort waits for the begins');
    h.driver.releaseBegin('a');
    h.driver.releaseBegin('b');
    assert.deepEqual(await aborted, {});
    assert.equal(await p, 'ERR_SNAPSHOT_ABORTED');
    assert.deepEqual(h.driver.events.slice(4).sort(), ['abort a', 'abort b', 'begun a', 'begun b']);
    assert.deepEqual([job(h, 0).aborted, job(h, 1).aborted], [true, true]);
  });

  it('SnapshotAbort of a snapshot unknown here still advances the VNE and deletes the prefix', async () => {
    h = await new AgentParts().init(['a']);
    await h.store.put('snapshots/s5/a.0.chan', Buffer.from('x'));
    await h.snapshots.abort(abortOf('s5', 4));
    assert.equal(h.sw.portEpoch('blue/a/0'), 4);
    assert.deepEqual(await h.store.list('snapshots/s5/'), []);
  });

  it('a lost session aborts the snapshots in progress after dead_after_ms on the clock, not before', async () => {
    h = await new AgentParts().init(['a', 'b']);
    h.driver.holdReady = true;
    const p = code(h.snapshots.begin(begin('s6', 1, ['a']), h.sink));
    await flush();
    h.snapshots.sessionLost(3000);
    h.clock.advance(2999);
    await flush();
    assert.equal(job(h).aborted, false);
    assert.deepEqual(h.snapshots.inProgress, ['s6']);
    h.clock.advance(1);
    assert.equal(await p, 'ERR_SNAPSHOT_ABORTED');
    await flush();
    assert.equal(job(h).aborted, true);
    assert.deepEqual(h.snapshots.inProgress, []);
    assert.deepEqual([h.sw.portEpoch('blue/a/0'), h.sw.portEpoch('blue/b/0')], [1, 1]);
    assert.equal(h.clock.pending, 0);
  });

  it('a snapshot that completes before dead_after_ms is left alone; with nothing in progress no timer is set', async () => {
    h = await new AgentParts().init(['a']);
    h.snapshots.sessionLost(3000);
    assert.equal(h.clock.pending, 0);
    await h.snapshots.begin(begin('s7', 1, ['a']), h.sink);
    h.snapshots.sessionLost(3000);
    await h.snapshots.commit({ snapshotId: 's7' });
    await h.snapshots.persist({ snapshotId: 's7' });
    h.clock.advance(3000);
    await flush();
    assert.equal(job(h).aborted, false);
    assert.deepEqual(await h.store.list('snapshots/s7/'), ['snapshots/s7/a.0.chan', 'snapshots/s7/a.mem']);
  });

  it('stop: abortAll aborts what is in progress and cancels the session-loss timers', async () => {
    h = await new AgentParts().init(['a']);
    h.driver.holdReady = true;
    const p = code(h.snapshots.begin(begin('s8', 2, ['a']), h.sink));
    await flush();
    h.snapshots.sessionLost(3000);
    await h.snapshots.abortAll('agent stopping');
    assert.equal(await p, 'ERR_SNAPSHOT_ABORTED');
    assert.equal(h.clock.pending, 0);
    assert.equal(h.sw.portEpoch('blue/a/0'), 2);
  });

  it('refuses with stable codes: unknown VNE, VM, snapshot; bad epoch; a second Begin; Persist before Commit; Commit twice', async () => {
    h = await new AgentParts().init(['a']);
    assert.equal(await code(h.snapshots.begin({ ...begin('x', 1, ['a']), vne: 'red' }, h.sink)), 'ERR_VNE_UNKNOWN');
    assert.equal(await code(h.snapshots.begin(begin('x', 1, ['zz']), h.sink)), 'ERR_NOT_FOUND');
    assert.equal(await code(h.snapshots.begin(begin('x', 0, ['a']), h.sink)), 'ERR_INVALID_ARGUMENT');
    assert.equal(await code(h.snapshots.commit({ snapshotId: 'nope' })), 'ERR_NOT_FOUND');
    assert.equal(await code(h.snapshots.persist({ snapshotId: 'nope' })), 'ERR_NOT_FOUND');
    await h.snapshots.begin(begin('s9', 1, ['a']), h.sink);
    assert.equal(await code(h.snapshots.begin(begin('s9', 1, ['a']), h.sink)), 'ERR_ALREADY_EXISTS');
    assert.equal(await code(h.snapshots.persist({ snapshotId: 's9' })), 'ERR_STATE');
    await h.snapshots.commit({ snapshotId: 's9' });
    assert.equal(await code(h.snapshots.commit({ snapshotId: 's9' })), 'ERR_STATE');
    assert.deepEqual(h.snapshots.inProgress, ['s9']);
  });
});
