import { strict as assert } from 'node:assert';
import pino from 'pino';
import { isVnsnapError } from '../../proto/core/errors';
import type { Artefact__Output } from '../../proto/gen/vnsnap/v1/Artefact';
import type { SnapshotEvent } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import type { Vne__Output } from '../../proto/gen/vnsnap/v1/Vne';
import type { VmSpec__Output } from '../../proto/gen/vnsnap/v1/VmSpec';
import { decodeManifest } from '../../proto/artefacts/manifest';
import type { CommandBody } from '../../coordinator/agent-link';
import { Catalog } from '../../coordinator/catalog';
import { ManualClock } from '../../proto/core/clock';
import { EventBus } from '../../coordinator/events';
import { SnapshotSequencer, type SequencerDeps, type SnapshotRequest } from '../../coordinator/snapshot-sequencer';
import { CUT_MARGIN, CutMargin, TRACKED_BACKGROUND_LEAD_MS, TRACKED_PRECOPY_LEAD_MS } from '../../coordinator/cut-instant';

/** The pre-copy lead of the sequencer tests that configure one (ms). */
const LEAD = 100;
import { placementOf, simVms, vneRecord } from '../support/vne-record';
import { failed, FakeAgents, flush, log, MemoryManifestStore, ok } from './coordinator-fakes';

const T0 = 1_800_000_000_000;

function vneDef(name: string, vni: number, vms: [string, string][], state: Vne__Output['state'] = 'VNE_STATE_RUNNING'): Vne__Output {
  const hex = (n: number) => n.toString(16).padStart(2, '0');
  const specs = simVms(vms, (i) => `52:54:00:00:${hex(vni)}:${hex(i + 1)}`, { memoryMib: 4 });
  return vneRecord({ name, vni, vms: specs, generation: 1, state, createdUnixMs: T0, updatedUnixMs: T0, placement: placementOf(specs) });
}

function artefacts(id: string, vms: string[]): Artefact__Output[] {
  return vms.flatMap((vm) => [
    { path: `snapshots/${id}/${vm}.mem`, size: 4096, sha256: 'aa'.repeat(32), kind: 'ARTEFACT_KIND_MEMORY' as const, owner: vm, attributes: {}, storedBytes: 0 },
    { path: `snapshots/${id}/${vm}.chan`, size: 100, sha256: 'bb'.repeat(32), kind: 'ARTEFACT_KIND_CHANNEL' as const, owner: vm, attributes: {}, storedBytes: 0 },
  ]);
}

/** A Persist result with a memory and channel artefact for every VM the agent's Begin named. */
function persistFor(h: Harness) {
  return (agent: string, body: CommandBody) => {
    const id = body.snapshotPersist?.snapshotId as string;
    const begin = h.agents.sent.find((s) => s.agent === agent && s.name === 'snapshotBegin' && s.body.snapshotBegin?.snapshotId === id);
    const vms = (begin?.body.snapshotBegin?.vms ?? []) as string[];
    return ok({
      payload: 'persist',
      persist: {
        artefacts: artefacts(id, vms),
        vms: vms.map((vm) => ({ name: vm, host: '', pauseMs: 0, cutUnixUs: 0, phases: [{ phase: 'PHASE_PERSIST', startUnixUs: 5, endUnixUs: 6 }], memoryBytes: 4096, diskBytes: 0, channelFrames: 3 })),
        lostFrames: agent === 'h2' ? 1 : 0,
      },
    });
  };
}

function commitFor(h: Harness) {
  return (agent: string, body: CommandBody) => {
    const id = body.snapshotCommit?.snapshotId as string;
    const begin = h.agents.sent.find((s) => s.agent === agent && s.name === 'snapshotBegin' && s.body.snapshotBegin?.snapshotId === id);
    const vms = (begin?.body.snapshotBegin?.vms ?? []) as string[];
    return ok({
      payload: 'commit',
      commit: { vms: vms.map((vm, i) => ({ name: vm, host: '', pauseMs: 2.5 + i, cutUnixUs: T0 * 1000 + i, phases: [{ phase: 'PHASE_PAUSE', startUnixUs: 1, endUnixUs: 2 }], memoryBytes: 0, diskBytes: 0, channelFrames: 0 })) },
    });
  };
}

interface Harness {
  clock: ManualClock;
  catalog: Catalog;
  agents: FakeAgents;
  manifests: MemoryManifestStore;
  bus: EventBus;
  seq: SnapshotSequencer;
  events: SnapshotEvent[];
  busEvents: string[];
  start(req?: Partial<SnapshotRequest>): ReturnType<SnapshotSequencer['start']>;
}

function harness(extra: Partial<SequencerDeps> = {}): Harness {
  const clock = new ManualClock(T0);
  const catalog = new Catalog(':memory:', { now: () => clock.now() });
  const agents = new FakeAgents(['h1', 'h2']);
  const manifests = new MemoryManifestStore();
  const bus = new EventBus(() => clock.now());
  const seq = new SnapshotSequencer({ agents, catalog, manifests, clock, log, events: bus, version: '0.1.0', newSnapshotId: (vne, e) => `${vne}-s${e}`, ...extra });
  catalog.insertVne(vneDef('blue', 100, [['vm1', 'h1'], ['vm2', 'h2'], ['vm3', 'h2']]));
  catalog.insertVne(vneDef('red', 200, [['r1', 'h1'], ['r2', 'h2']]));
  const events: SnapshotEvent[] = [];
  const busEvents: string[] = [];
  bus.subscribe((e) => busEvents.push(`${e.kind}:${e.snapshotId}:${e.message}`));
  const h: Harness = {
    clock,
    catalog,
    agents,
    manifests,
    bus,
    seq,
    events,
    busEvents,
    start: (req = {}) => seq.start({ vne: 'blue', ...req }, (e) => events.push(e)),
  };
  agents.on('snapshotBegin', 'hold').on('snapshotCommit', commitFor(h)).on('snapshotPersist', persistFor(h));
  return h;
}

const states = (h: Harness) => h.events.filter((e) => e.state !== undefined).map((e) => String(e.state).replace('SNAPSHOT_STATE_', ''));
const ready = (h: Harness, agent: string, vm: string) => h.agents.progress(agent, 'snapshotBegin', { vm, phase: 'PHASE_PRECOPY', phaseDone: true });

describe('coordinator snapshot sequencer', () => {
  it("the commit's log line says when, after the record, every VM was ready and the record durable (what the begin waited for)", async () => {
    const lines: Record<string, unknown>[] = [];
    const capture = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
    const h = harness({ log: capture });
    h.start({ mode: 'SNAPSHOT_MODE_BACKGROUND' });
    await flush();
    h.clock.advance(40);
    for (const [agent, vm] of [['h1', 'vm1'], ['h2', 'vm2'], ['h2', 'vm3']] as const) ready(h, agent, vm);
    await flush();
    const sent = lines.find((l) => l.msg === 'snapshot commit sent');
    assert.ok(sent, lines.map((l) => l.msg).join(', '));
    assert.deepEqual([sent.readyMs, sent.recordDurableMs], [40, 0], 'ready 40 ms after the record; an in-memory catalog is durable at once');
  });

  it("a background commit's cut instant: now + the margin, in each agent's clock (its offset); the next margin from the commit delays the CommitResults report; a margin of 0 names none", async () => {
    // h2's clock is 40 ms behind the coordinator's; h1's offset is not known (taken as 0).
    const h = harness({ clockOffset: (a) => (a === 'h2' ? { offsetUs: -40_000, delayUs: 500 } : undefined), cutMargin: new CutMargin('auto', {}, LEAD) });
    // Each agent received the commit: h1 12 ms, h2 30 ms after it was sent (h2's receipt in its own clock).
    const delays: Record<string, number> = { h1: 12_000, h2: 30_000 - 40_000 };
    const commit = commitFor(h);
    h.agents.on('snapshotCommit', (agent, body) => {
      const r = commit(agent, body);
      const sent = T0 * 1000;
      for (const vm of r.commit?.vms ?? []) vm.phases.push({ phase: 'PHASE_COMMIT', startUnixUs: sent, endUnixUs: sent + (delays[agent] as number) });
      return r;
    });
    const background = async (x: Harness) => {
      const r = x.start({ mode: 'SNAPSHOT_MODE_BACKGROUND' });
      for (const a of ['h1', 'h2']) x.agents.reply(a, 'snapshotBegin'); // background: ready with the Begin Result
      await flush();
      return r;
    };
    const run = await background(h);
    const cutAt = () => h.agents.sent.filter((x) => x.name === 'snapshotCommit').map((x) => [x.agent, x.body.snapshotCommit?.cutAtUnixUs]);
    assert.deepEqual(cutAt(), [
      ['h1', T0 * 1000 + 100_000],
      ['h2', T0 * 1000 + 100_000 - 40_000],
    ]);
    assert.equal((await run.done).state, 'SNAPSHOT_STATE_COMPLETE');
    assert.deepEqual(h.seq.cutMargin.recent(), [12, 30], 'h2: 30 ms once its clock is taken back by its offset');
    assert.equal(h.seq.cutMargin.marginMs(), 50, '1.5 × 30 + 5');
    h.clock.advance(1000);
    const second = await background(h);
    assert.deepEqual(cutAt().slice(2), [
      ['h1', (T0 + 1000) * 1000 + 50_000],
      ['h2', (T0 + 1000) * 1000 + 50_000 - 40_000],
    ]);
    await second.done;
    // With a lead configured a pre-copy commit names one later by it, and its delays count too.
    h.clock.advance(1000);
    const precopy = h.start();
    for (const [a, vm] of [['h1', 'vm1'], ['h2', 'vm2'], ['h2', 'vm3']] as const) ready(h, a, vm);
    assert.deepEqual(cutAt().slice(4), [
      ['h1', (T0 + 2000) * 1000 + (50 + LEAD) * 1000],
      ['h2', (T0 + 2000) * 1000 + (50 + LEAD) * 1000 - 40_000],
    ]);
    await precopy.done;
    assert.deepEqual(h.seq.cutMargin.recent(), [12, 30, 12, 30, 12, 30]);

    // No lead (the default): pre-copy commits name no instant, background ones still do.
    const noLead = harness();
    const pr = noLead.start();
    for (const [a, vm] of [['h1', 'vm1'], ['h2', 'vm2'], ['h2', 'vm3']] as const) ready(noLead, a, vm);
    assert.deepEqual(
      noLead.agents.sent.filter((x) => x.name === 'snapshotCommit').map((x) => x.body.snapshotCommit),
      [{ snapshotId: 'blue-s1' }, { snapshotId: 'blue-s1' }],
    );
    await pr.done;

    // ... unless every VM of the VNE has tracked memory: then an instant, the margin + TRACKED_PRECOPY_LEAD_MS.
    const tracked = harness();
    const qemuVms = (mem: string[]): VmSpec__Output[] =>
      vneDef('green', 300, [['g1', 'h1'], ['g2', 'h2']]).vms.map((v, i) => {
        const extra: Record<string, string> = mem[i] ? { memory: mem[i] as string } : {};
        return { ...v, driver: { kind: 'qemu' as const, qemu: { memoryMib: 128, cpus: 1, kernel: '/k', initrd: '', append: '', disk: '', extra } } };
      });
    const greenCommits = async (x: Harness, vms: ReturnType<typeof qemuVms>, mode: 'SNAPSHOT_MODE_PRECOPY' | 'SNAPSHOT_MODE_BACKGROUND' = 'SNAPSHOT_MODE_PRECOPY') => {
      if (!x.catalog.getVne('green')) x.catalog.insertVne({ ...vneDef('green', 300, [['g1', 'h1'], ['g2', 'h2']]), vms });
      const g = x.start({ vne: 'green', mode });
      if (mode === 'SNAPSHOT_MODE_BACKGROUND') for (const a of ['h1', 'h2']) x.agents.reply(a, 'snapshotBegin');
      else for (const [a, vm] of [['h1', 'g1'], ['h2', 'g2']] as const) ready(x, a, vm);
      await g.done;
      return x.agents.sent.filter((s) => s.name === 'snapshotCommit' && s.body.snapshotCommit?.snapshotId === g.id).map((s) => [s.agent, s.body.snapshotCommit?.cutAtUnixUs]);
    };
    assert.deepEqual(await greenCommits(tracked, qemuVms(['tracked', 'tracked'])), [
      ['h1', T0 * 1000 + (CUT_MARGIN.defaultMs + TRACKED_PRECOPY_LEAD_MS) * 1000],
      ['h2', T0 * 1000 + (CUT_MARGIN.defaultMs + TRACKED_PRECOPY_LEAD_MS) * 1000],
    ]);
    assert.deepEqual(await greenCommits(harness(), qemuVms(['tracked', 'migration'])), [
      ['h1', undefined],
      ['h2', undefined],
    ], 'one VM of the migration stream: none');
    // A background commit of an all-tracked VNE: the margin + TRACKED_BACKGROUND_LEAD_MS; with one VM of the migration stream, the margin alone.
    const bg = harness();
    assert.deepEqual(await greenCommits(bg, qemuVms(['tracked', 'tracked']), 'SNAPSHOT_MODE_BACKGROUND'), [
      ['h1', T0 * 1000 + (CUT_MARGIN.defaultMs + TRACKED_BACKGROUND_LEAD_MS) * 1000],
      ['h2', T0 * 1000 + (CUT_MARGIN.defaultMs + TRACKED_BACKGROUND_LEAD_MS) * 1000],
    ]);
    assert.deepEqual(await greenCommits(harness(), qemuVms(['migration', 'tracked']), 'SNAPSHOT_MODE_BACKGROUND'), [
      ['h1', T0 * 1000 + CUT_MARGIN.defaultMs * 1000],
      ['h2', T0 * 1000 + CUT_MARGIN.defaultMs * 1000],
    ]);
    assert.deepEqual(await greenCommits(harness({ cutMargin: new CutMargin('auto', {}, 'none') }), qemuVms(['tracked', 'tracked'])), [
      ['h1', undefined],
      ['h2', undefined],
    ], 'VNSNAP_PRECOPY_LEAD_MS=none: none');

    const off = harness({ cutMargin: new CutMargin(0) });
    const r = await background(off);
    assert.deepEqual(
      off.agents.sent.filter((x) => x.name === 'snapshotCommit').map((x) => x.body.snapshotCommit),
      [{ snapshotId: 'blue-s1' }, { snapshotId: 'blue-s1' }],
    );
    await r.done;
  });


  it('PRECOPY → COMMITTING → PERSISTING → COMPLETE: Begin to every agent, commit in one turn, manifest, catalog', async () => {
    const h = harness();
    const run = h.start({ description: 'first' });
    assert.equal(run.id, 'blue-s1');
    assert.equal(run.epoch, 1);
    assert.equal(h.catalog.getVne('blue')?.state, 'VNE_STATE_SNAPSHOTTING');
    assert.equal(h.catalog.getSnapshot('blue-s1')?.state, 'SNAPSHOT_STATE_PRECOPY');
    assert.deepEqual(h.agents.names(), ['h1:snapshotBegin', 'h2:snapshotBegin']);
    assert.deepEqual(h.agents.sent[1]?.body.snapshotBegin, { snapshotId: 'blue-s1', vne: 'blue', epoch: 1, mode: 'SNAPSHOT_MODE_PRECOPY', vms: ['vm2', 'vm3'], storePrefix: 'snapshots/blue-s1/' });

    h.agents.progress('h2', 'snapshotBegin', { vm: 'vm2', phase: 'PHASE_PRECOPY', bytesDone: 100, bytesTotal: 400, iteration: 1, dirtyRateMibS: 2 });
    const relayed = h.events.find((e) => e.vm);
    assert.equal(relayed?.vm?.host, 'h2');
    assert.equal(relayed?.vm?.bytesDone, 100);
    ready(h, 'h1', 'vm1');
    ready(h, 'h2', 'vm2');
    assert.equal(run.state, 'SNAPSHOT_STATE_PRECOPY');
    ready(h, 'h2', 'vm3');
    assert.equal(run.state, 'SNAPSHOT_STATE_COMMITTING');
    const commits = h.agents.sent.filter((s) => s.name === 'snapshotCommit');
    assert.deepEqual(commits.map((c) => c.agent), ['h1', 'h2']);
    assert.equal(commits[0]?.turn, commits[1]?.turn, 'commits leave in the same turn');
    // A pre-copy commit names no cut instant without a lead configured (each VM stops at its own final round's end).
    assert.deepEqual(commits[0]?.body.snapshotCommit, { snapshotId: 'blue-s1' });

    const snap = await run.done;
    assert.equal(snap.state, 'SNAPSHOT_STATE_COMPLETE');
    assert.deepEqual(states(h), ['PRECOPY', 'COMMITTING', 'PERSISTING', 'COMPLETE']);
    assert.deepEqual(h.events.at(-1)?.done, snap);
    assert.equal(snap.epoch, 1);
    assert.equal(snap.generation, 1);
    assert.equal(snap.description, 'first');
    assert.equal(snap.manifestPath, 'snapshots/blue-s1/manifest.pb');
    assert.equal(snap.lostFrames, 1);
    assert.deepEqual(snap.vms.map((v) => [v.name, v.host, v.pauseMs, v.memoryBytes, v.channelFrames, v.phases.map((p) => p.phase)]), [
      ['vm1', 'h1', 2.5, 4096, 3, ['PHASE_PAUSE', 'PHASE_PERSIST']],
      ['vm2', 'h2', 2.5, 4096, 3, ['PHASE_PAUSE', 'PHASE_PERSIST']],
      ['vm3', 'h2', 3.5, 4096, 3, ['PHASE_PAUSE', 'PHASE_PERSIST']],
    ]);
    assert.equal(snap.artefacts.length, 6);
    const manifest = h.manifests.files.get('snapshots/blue-s1/manifest.pb') as Buffer;
    assert.equal(snap.sizeBytes, 3 * 4096 + 3 * 100 + manifest.length);
    const m = decodeManifest(manifest).body;
    assert.equal(m.snapshotId, 'blue-s1');
    assert.equal(m.epoch, 1);
    assert.equal(m.vne?.name, 'blue');
    assert.equal(m.vne?.epoch, 1);
    assert.deepEqual(m.vne?.placement, { vm1: 'h1', vm2: 'h2', vm3: 'h2' });
    assert.equal(m.artefacts.length, 6);
    assert.equal(m.vnsnapVersion, '0.1.0');
    const vne = h.catalog.getVne('blue');
    assert.equal(vne?.state, 'VNE_STATE_RUNNING');
    assert.equal(vne?.epoch, 1);
    assert.equal(h.seq.active('blue'), undefined);
    assert.equal(h.clock.pending, 0, 'timers cleared');
    assert.deepEqual(h.catalog.pendingAborts(), []);
    assert.deepEqual(h.busEvents, [
      'snapshot.state:blue-s1:SNAPSHOT_STATE_PRECOPY',
      'snapshot.state:blue-s1:SNAPSHOT_STATE_COMMITTING',
      'snapshot.state:blue-s1:SNAPSHOT_STATE_PERSISTING',
      `snapshot.complete:blue-s1:snapshot complete: 3 VMs, 6 artefacts, ${snap.sizeBytes} bytes`,
    ]);
  });

  it('a Begin Result marks all that agent\'s VMs ready', async () => {
    const h = harness();
    const run = h.start();
    h.agents.reply('h2', 'snapshotBegin');
    await flush();
    assert.equal(run.state, 'SNAPSHOT_STATE_PRECOPY');
    ready(h, 'h1', 'vm1');
    assert.equal(run.state, 'SNAPSHOT_STATE_COMMITTING');
    h.agents.reply('h1', 'snapshotBegin');
    assert.equal((await run.done).state, 'SNAPSHOT_STATE_COMPLETE');
  });

  it('BACKGROUND mode: Begin returns at once, commit follows, no precopy deadline timer', async () => {
    const h = harness();
    h.agents.on('snapshotBegin', ok());
    const run = h.start({ mode: 'SNAPSHOT_MODE_BACKGROUND' });
    assert.equal(h.clock.pending, 1, 'only the overall timeout');
    assert.equal(h.agents.sent[0]?.body.snapshotBegin?.mode, 'SNAPSHOT_MODE_BACKGROUND');
    const snap = await run.done;
    assert.equal(snap.state, 'SNAPSHOT_STATE_COMPLETE');
    assert.equal(snap.mode, 'SNAPSHOT_MODE_BACKGROUND');
    assert.deepEqual(h.agents.names(), ['h1:snapshotBegin', 'h2:snapshotBegin', 'h1:snapshotCommit', 'h2:snapshotCommit', 'h1:snapshotPersist', 'h2:snapshotPersist']);
  });

  it('the precopy deadline commits with VMs still copying', async () => {
    const h = harness();
    const run = h.start({ precopyDeadlineMs: 5000 });
    ready(h, 'h1', 'vm1');
    h.clock.advance(4999);
    assert.equal(run.state, 'SNAPSHOT_STATE_PRECOPY');
    h.clock.advance(1);
    assert.equal(run.state, 'SNAPSHOT_STATE_COMMITTING');
    assert.equal(h.events.find((e) => e.note)?.note, 'precopy deadline (5000 ms) passed with 1 of 3 VMs ready: committing');
    // The Begins answer after the commit (as agents do): ignored.
    h.agents.reply('h1', 'snapshotBegin');
    h.agents.reply('h2', 'snapshotBegin');
    assert.equal((await run.done).state, 'SNAPSHOT_STATE_COMPLETE');
  });

  const abortCases: { name: string; act: (h: Harness) => Promise<void>; error: string; phase: string }[] = [
    {
      name: 'an agent fails SnapshotBegin',
      act: async (h) => h.agents.reply('h2', 'snapshotBegin', failed('ERR_DRIVER', 'qemu migrate failed')),
      error: 'agent h2: SnapshotBegin failed: qemu migrate failed [ERR_DRIVER]',
      phase: 'PRECOPY',
    },
    {
      name: 'an agent fails SnapshotCommit',
      act: async (h) => {
        h.agents.on('snapshotCommit', failed('ERR_CUT_IN_PROGRESS', 'port busy'), 'h1');
        for (const [a, vm] of [['h1', 'vm1'], ['h2', 'vm2'], ['h2', 'vm3']] as const) ready(h, a, vm);
      },
      error: 'agent h1: SnapshotCommit failed: port busy [ERR_CUT_IN_PROGRESS]',
      phase: 'COMMITTING',
    },
    {
      name: 'an agent fails SnapshotPersist',
      act: async (h) => {
        h.agents.on('snapshotPersist', failed('ERR_STORE_FULL', 'no space left'), 'h2');
        for (const [a, vm] of [['h1', 'vm1'], ['h2', 'vm2'], ['h2', 'vm3']] as const) ready(h, a, vm);
      },
      error: 'agent h2: SnapshotPersist failed: no space left [ERR_STORE_FULL]',
      phase: 'PERSISTING',
    },
    {
      name: 'an agent returns an unknown error code',
      act: async (h) => h.agents.reply('h1', 'snapshotBegin', failed('WHATEVER', 'odd')),
      error: 'agent h1: SnapshotBegin failed: odd [ERR_INTERNAL]',
      phase: 'PRECOPY',
    },
  ];
  for (const c of abortCases) {
    it(`ABORTED when ${c.name}: SnapshotAbort to every agent, epoch advanced, VNE running`, async () => {
      const h = harness();
      const run = h.start();
      await c.act(h);
      const snap = await run.done;
      assert.equal(snap.state, 'SNAPSHOT_STATE_ABORTED');
      assert.equal(snap.error, c.error);
      assert.deepEqual(states(h).slice(-2), [c.phase, 'ABORTED']);
      const aborts = h.agents.sent.filter((s) => s.name === 'snapshotAbort');
      assert.deepEqual(aborts.map((a) => [a.agent, a.body.snapshotAbort]), [
        ['h1', { snapshotId: 'blue-s1', vne: 'blue', epoch: 1, storePrefix: 'snapshots/blue-s1/' }],
        ['h2', { snapshotId: 'blue-s1', vne: 'blue', epoch: 1, storePrefix: 'snapshots/blue-s1/' }],
      ]);
      await flush();
      assert.deepEqual(h.catalog.pendingAborts(), [], 'acknowledged aborts are no longer pending');
      const vne = h.catalog.getVne('blue');
      assert.equal(vne?.epoch, 1);
      assert.equal(vne?.state, 'VNE_STATE_RUNNING');
      assert.equal(h.catalog.getSnapshot('blue-s1')?.state, 'SNAPSHOT_STATE_ABORTED');
      assert.equal(h.manifests.files.size, 0);
      assert.equal(h.agents.held.length, 0, 'in-flight commands cancelled');
      assert.equal(h.clock.pending, 0);
      assert.equal(h.busEvents.at(-1), `snapshot.aborted:blue-s1:${c.error}`);
      // The next snapshot gets the next epoch.
      assert.equal(h.start().epoch, 2);
    });
  }

  for (const phase of ['PRECOPY', 'COMMITTING', 'PERSISTING'] as const) {
    it(`ABORTED when an agent disconnects in ${phase}; the disconnected agent's abort stays pending`, async () => {
      const h = harness();
      if (phase !== 'PRECOPY') h.agents.on('snapshotBegin', ok()).on(phase === 'COMMITTING' ? 'snapshotCommit' : 'snapshotPersist', 'hold', 'h2');
      const run = h.start();
      await flush();
      assert.equal(run.state, `SNAPSHOT_STATE_${phase}`);
      h.agents.disconnect('h2');
      const snap = await run.done;
      assert.equal(snap.state, 'SNAPSHOT_STATE_ABORTED');
      const cmd = { PRECOPY: 'SnapshotBegin', COMMITTING: 'SnapshotCommit', PERSISTING: 'SnapshotPersist' }[phase];
      assert.equal(snap.error, `agent h2 disconnected during ${cmd} (session ended by the agent) [ERR_AGENT_DISCONNECTED]`);
      assert.deepEqual(h.agents.names('snapshotAbort'), ['h1:snapshotAbort']);
      await flush();
      assert.deepEqual(h.catalog.pendingAborts(), [{ snapshotId: 'blue-s1', agentId: 'h2', vne: 'blue', epoch: 1, storePrefix: 'snapshots/blue-s1/' }]);
      assert.equal(h.catalog.getVne('blue')?.epoch, 1);
    });
  }

  it('ABORTED when the overall timeout passes', async () => {
    const h = harness();
    h.agents.on('snapshotCommit', 'hold');
    const run = h.start({ timeoutMs: 10_000, precopyDeadlineMs: 3000 });
    h.clock.advance(3000);
    assert.equal(run.state, 'SNAPSHOT_STATE_COMMITTING');
    h.clock.advance(7000);
    const snap = await run.done;
    assert.equal(snap.error, 'snapshot did not complete within 10000 ms (it was committing) [ERR_TIMEOUT]');
    assert.equal(snap.completedUnixMs, T0 + 10_000);
    assert.deepEqual(h.agents.names('snapshotAbort'), ['h1:snapshotAbort', 'h2:snapshotAbort']);
  });

  it('ABORTED when a persisted VM has no memory artefact, or an artefact lies outside the prefix', async () => {
    const h = harness();
    h.agents.on('snapshotBegin', ok()).on('snapshotPersist', ok({ payload: 'persist', persist: { artefacts: artefacts('blue-s1', ['vm1']), vms: [], lostFrames: 0 } }), 'h1');
    h.agents.on('snapshotPersist', ok({ payload: 'persist', persist: { artefacts: artefacts('blue-s1', ['vm2']), vms: [], lostFrames: 0 } }), 'h2');
    const snap = await h.start().done;
    assert.equal(snap.error, 'agent h2 persisted no memory artefact for VM vm3 [ERR_INTERNAL]');

    const h2 = harness();
    h2.agents.on('snapshotBegin', ok()).on('snapshotPersist', ok({ payload: 'persist', persist: { artefacts: artefacts('other', ['vm1']), vms: [], lostFrames: 0 } }), 'h1');
    assert.equal((await h2.start().done).error, `agent h1 reported artefact "snapshots/other/vm1.mem" outside the snapshot's store prefix snapshots/blue-s1/ [ERR_INTERNAL]`);
  });

  it('ABORTED when the manifest cannot be written; a manifest finished after a timeout is removed', async () => {
    const h = harness();
    h.agents.on('snapshotBegin', ok());
    h.manifests.failWith = new Error('disk on fire');
    const snap = await h.start().done;
    assert.equal(snap.state, 'SNAPSHOT_STATE_ABORTED');
    assert.equal(snap.error, 'disk on fire');

    const h2 = harness();
    h2.agents.on('snapshotBegin', ok());
    h2.manifests.hold = true;
    const run = h2.start({ timeoutMs: 1000 });
    await flush();
    assert.equal(h2.manifests.writes, 1);
    h2.clock.advance(1000);
    assert.equal((await run.done).state, 'SNAPSHOT_STATE_ABORTED');
    h2.manifests.release();
    await flush();
    assert.equal(h2.manifests.files.size, 0, 'no manifest for an aborted snapshot');
    assert.equal(h2.catalog.getSnapshot('blue-s1')?.state, 'SNAPSHOT_STATE_ABORTED');
    assert.equal(h2.catalog.getSnapshot('blue-s1')?.manifestPath, '');
  });

  it('abort() from outside (stop) aborts with the reason', async () => {
    const h = harness();
    const run = h.start();
    await h.seq.stop('coordinator stopping');
    assert.equal((await run.done).error, 'coordinator stopping [ERR_SNAPSHOT_ABORTED]');
    assert.equal(h.seq.activeCount, 0);
  });

  it('refuses a second snapshot of the same VNE; snapshots of different VNEs run concurrently', async () => {
    const h = harness();
    const blue = h.start();
    assert.throws(
      () => h.start(),
      (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'a snapshot of VNE "blue" is already in progress (blue-s1): one snapshot per VNE at a time',
    );
    const red = h.seq.start({ vne: 'red', mode: 'SNAPSHOT_MODE_BACKGROUND' });
    for (const [a, vm] of [['h1', 'vm1'], ['h2', 'vm2'], ['h2', 'vm3']] as const) ready(h, a, vm);
    h.agents.reply('h1', 'snapshotBegin');
    h.agents.reply('h1', 'snapshotBegin');
    h.agents.reply('h2', 'snapshotBegin');
    h.agents.reply('h2', 'snapshotBegin');
    const [b, r] = await Promise.all([blue.done, red.done]);
    assert.equal(b.state, 'SNAPSHOT_STATE_COMPLETE');
    assert.equal(r.state, 'SNAPSHOT_STATE_COMPLETE');
    assert.equal(r.id, 'red-s1');
    assert.deepEqual(h.catalog.listSnapshots().map((s) => s.id), ['blue-s1', 'red-s1']);
  });

  it('refuses to begin, recording nothing: unknown VNE, not running, restoring, agent disconnected', () => {
    const h = harness();
    h.catalog.insertVne(vneDef('idle', 300, [['i1', 'h1']], 'VNE_STATE_DEFINED'));
    h.catalog.insertVne(vneDef('busy', 301, [['b1', 'h1']], 'VNE_STATE_RESTORING'));
    const refuse = (vne: string, code: string, msg: string) =>
      assert.throws(
        () => h.seq.start({ vne }),
        (e) => isVnsnapError(e) && e.code === code && e.message === msg,
      );
    refuse('', 'ERR_INVALID_ARGUMENT', 'vne is required');
    refuse('nope', 'ERR_NOT_FOUND', 'VNE "nope" does not exist');
    refuse('idle', 'ERR_FAILED_PRECONDITION', 'VNE "idle" is not running (defined): start it first');
    refuse('busy', 'ERR_FAILED_PRECONDITION', 'VNE "busy" is being restored; snapshot it when the restore is done');
    h.agents.connected.delete('h2');
    refuse('blue', 'ERR_AGENT_DISCONNECTED', 'agent "h2" (running vm2, vm3) is not connected; nothing was snapshotted');
    assert.deepEqual(h.catalog.listSnapshots(), []);
    assert.deepEqual(h.agents.sent, []);
    assert.equal(h.catalog.getVne('blue')?.epoch, 0);
    assert.equal(h.catalog.getVne('blue')?.state, 'VNE_STATE_RUNNING');
  });

  it('aborts go to every agent of the VNE, including ones placed after a restore elsewhere', async () => {
    const h = harness();
    h.agents.connected.add('h3');
    h.catalog.updateVne('blue', { placement: { vm1: 'h3', vm2: 'h2', vm3: 'h2' } });
    const run = h.start();
    assert.deepEqual(h.agents.names(), ['h3:snapshotBegin', 'h2:snapshotBegin']);
    h.agents.reply('h3', 'snapshotBegin', failed('ERR_DRIVER', 'x'));
    await run.done;
    assert.deepEqual(h.agents.names('snapshotAbort'), ['h3:snapshotAbort', 'h2:snapshotAbort']);
  });
});
