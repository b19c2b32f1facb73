/**
 * Agents against a fake coordinator: a real grpc-js server on 127.0.0.1:0 implementing
 * AgentService.Session that scripts commands. Two agents run in this process, each with its
 * real switch on a loopback UDP port and sim VMs exchanging sequence-numbered frames.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Agent } from '../../agent/agent';
import type { SnapshotJob, SnapshotOptions } from '../../agent/drivers/driver';
import { guestOf, SimDriver, type SimVmState } from '../sim/driver';
import { VnsnapError } from '../../proto/core/errors';
import type { AgentMessage__Output } from '../../proto/gen/vnsnap/v1/AgentMessage';
import type { Artefact__Output } from '../../proto/gen/vnsnap/v1/Artefact';
import type { Command } from '../../proto/gen/vnsnap/v1/Command';
import type { CoordinatorMessage } from '../../proto/gen/vnsnap/v1/CoordinatorMessage';
import type { Progress__Output } from '../../proto/gen/vnsnap/v1/Progress';
import type { Register__Output } from '../../proto/gen/vnsnap/v1/Register';
import type { Result__Output } from '../../proto/gen/vnsnap/v1/Result';
import { loadVnsnap } from '../../proto/core/grpc';
import { sleep, until } from '../support/wait';

type Call = grpc.ServerDuplexStream<AgentMessage__Output, CoordinatorMessage>;
type Body = Omit<Command, 'id'>;

interface FakeSession {
  call: Call;
  register: Register__Output;
  heartbeats: number;
  /** The agent's send time (Heartbeat.unix_ms) of every heartbeat, in arrival order. */
  heartbeatsAt: number[];
  progress: Progress__Output[];
  pending: Map<number, (r: Result__Output) => void>;
  results: Result__Output[];
}

class FakeCoordinator {
  private server = new grpc.Server();
  port = 0;
  readonly sessions = new Map<string, FakeSession>();
  readonly registrations: Register__Output[] = [];
  private nextId = 1;
  private waiters: { id: string; after: number; resolve: (s: FakeSession) => void }[] = [];
  heartbeatMs = 100;
  deadAfterMs = 300;
  refuse: string | undefined;

  async start(): Promise<void> {
    const pkg = loadVnsnap();
    this.server.addService(pkg.vnsnap.v1.AgentService.service, {
      Session: (call: Call) => {
        let s: FakeSession | undefined;
        call.on('data', (m: AgentMessage__Output) => {
          if (m.msg === 'register' && m.register) {
            this.registrations.push(m.register);
            if (this.refuse !== undefined) {
              call.write({ refused: this.refuse });
              call.end();
              return;
            }
            s = { call, register: m.register, heartbeats: 0, heartbeatsAt: [], progress: [], pending: new Map(), results: [] };
            this.sessions.set(m.register.agentId, s);
            call.write({ welcome: { heartbeatIntervalMs: this.heartbeatMs, deadAfterMs: this.deadAfterMs, coordinatorId: 'fake' } });
            const n = this.registrations.filter((r) => r.agentId === m.register?.agentId).length;
            for (const w of [...this.waiters]) {
              if (w.id === m.register.agentId && n > w.after) {
                this.waiters.splice(this.waiters.indexOf(w), 1);
                w.resolve(s);
              }
            }
          } else if (s && m.msg === 'heartbeat') {
            s.heartbeats++;
            if (m.heartbeat) s.heartbeatsAt.push(m.heartbeat.unixMs);
          }
          else if (s && m.msg === 'progress' && m.progress) s.progress.push(m.progress);
          else if (s && m.msg === 'result' && m.result) {
            s.results.push(m.result);
            const p = s.pending.get(m.result.commandId);
            s.pending.delete(m.result.commandId);
            p?.(m.result);
          }
        });
        call.on('error', () => undefined);
        call.on('end', () => call.end());
      },
    });
    this.port = await new Promise<number>((resolve, reject) => this.server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  }

  /** Resolves at the agent's registration number `after + 1`. */
  registered(id: string, after = 0): Promise<FakeSession> {
    const n = this.registrations.filter((r) => r.agentId === id).length;
    const s = this.sessions.get(id);
    if (n > after && s) return Promise.resolve(s);
    return new Promise((resolve) => this.waiters.push({ id, after, resolve }));
  }

  send(agent: string, body: Body): Promise<Result__Output> {
    const s = this.sessions.get(agent);
    if (!s) throw new Error(`no session for ${agent}`);
    const id = this.nextId++;
    const p = new Promise<Result__Output>((resolve) => s.pending.set(id, resolve));
    s.call.write({ command: { id, ...body } });
    return p;
  }

  async ok(agent: string, body: Body): Promise<Result__Output> {
    const r = await this.send(agent, body);
    assert.equal(r.ok, true, `${agent} ${Object.keys(body).join(',')}: ${r.errorCode} ${r.errorMessage}`);
    return r;
  }

  drop(agent: string): void {
    const s = this.sessions.get(agent);
    this.sessions.delete(agent);
    s?.call.end();
  }

  async stop(): Promise<void> {
    for (const s of this.sessions.values()) s.call.end();
    await new Promise<void>((r) => this.server.tryShutdown(() => r()));
    this.server.forceShutdown();
  }
}

const VNE = 'blue';
const MACS: Record<string, string> = { a: '52:54:00:00:00:0a', b: '52:54:00:00:00:0b', c: '52:54:00:00:00:0c' };
const HOST: Record<string, string> = { a: 'h1', b: 'h1', c: 'h2' };
const vmSpec = (name: string) => ({
  name,
  host: HOST[name],
  macs: [MACS[name] as string],
  driver: { sim: { memoryMib: 2, dirtyRateMibS: 20, frameRateHz: 400, peers: Object.keys(MACS).filter((x) => x !== name) } },
});


describe('agent sessions with a fake coordinator (two agents, sim VMs, loopback UDP)', function () {
  this.timeout(60_000);
  let coord: FakeCoordinator;
  let root: string;
  const agents = new Map<string, Agent>();
  const drivers = new Map<string, SimDriver>();

  /** While set, a snapshot job's `ready` never resolves and rejects on abort, as the Xen driver's does. */
  let holdReady = false;
  /** Snapshot jobs handed out with such a held `ready`. */
  let heldJobs = 0;
  class XenLikeSim extends SimDriver {
    override async snapshot(id: string, opts: SnapshotOptions): Promise<SnapshotJob> {
      const job = await super.snapshot(id, opts);
      if (!holdReady) return job;
      let reject!: (e: Error) => void;
      const ready = new Promise<void>((_res, rej) => (reject = rej));
      ready.catch(() => undefined);
      heldJobs++;
      return {
        vm: job.vm,
        mode: job.mode,
        ready,
        cut: (f) => job.cut(f),
        durable: () => job.durable(),
        abort: async () => {
          reject(new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted'));
          await job.abort();
        },
      };
    }
  }

  async function makeAgent(id: string): Promise<Agent> {
    const d = new XenLikeSim({ batchSize: 16 });
    const agent = new Agent({
      id,
      coordinator: `127.0.0.1:${coord.port}`,
      tunnel: { address: '127.0.0.1', port: 0 },
      storeConfig: { kind: 'local', dir: root }, // one shared store: every snapshot restorable on every host
      drivers: [d],
      reconnect: { initialMs: 100, maxMs: 400 },
      switchOptions: { recordingGraceMs: 300 },
    });
    agents.set(id, agent);
    drivers.set(id, d);
    await agent.start();
    return agent;
  }

  const state = (vm: string): SimVmState => agents.get(HOST[vm] as string)?.vmState(VNE, vm) as SimVmState;

  /** Pause every VM, let the network drain into their NIC queues, resume them all at once, read their states. */
  async function settle(): Promise<Record<string, SimVmState>> {
    for (const vm of Object.keys(MACS)) await drivers.get(HOST[vm] as string)?.pause(`${VNE}/${vm}`);
    // Wait until nothing more reaches the paused NICs (two equal readings 50 ms apart).
    const arrived = (): number => Object.keys(MACS).reduce((n, vm) => n + state(vm).framesWhilePaused, 0);
    let last = -1;
    await until(
      'nothing more reaching the paused NICs',
      () => {
        const now = arrived();
        const still = now === last;
        last = now;
        return still;
      },
      { timeoutMs: 3000, everyMs: 50 },
    );
    for (const vm of Object.keys(MACS)) await drivers.get(HOST[vm] as string)?.resume(`${VNE}/${vm}`);
    const out: Record<string, SimVmState> = {};
    for (const vm of Object.keys(MACS)) out[vm] = state(vm);
    return out;
  }

  /** Wait until every VM has received `n` more in-order frames from every peer: traffic flows again. */
  async function flowing(what: string, n = 20): Promise<void> {
    const vms = Object.keys(MACS);
    const base = Object.fromEntries(vms.map((r) => [r, { ...state(r).expected }]));
    await until(`${what}: ${n} more frames between every pair`, () => vms.every((r) => vms.every((snd) => snd === r || (state(r).expected[snd] ?? 0) >= (base[r]?.[snd] ?? 0) + n)), 5000);
  }

  function checkContinuity(st: Record<string, SimVmState>, label: string): void {
    for (const [r, s] of Object.entries(st)) {
      assert.equal(s.gaps, 0, `${label}: ${r} saw gaps`);
      assert.equal(s.duplicates, 0, `${label}: ${r} saw duplicates`);
      assert.equal(s.orphans, 0, `${label}: ${r} saw orphans`);
      assert.equal(s.rxQueueDrops, 0);
      for (const snd of Object.keys(MACS)) {
        if (snd === r) continue;
        assert.equal(s.expected[snd], st[snd]?.sent[r], `${label}: ${r} expects ${s.expected[snd]} from ${snd}, which sent ${st[snd]?.sent[r]}`);
      }
    }
  }

  /** The last VNE generation configured (each ConfigureVne and restore uses the next one). */
  let generation = 0;

  function configure(generation: number): Promise<unknown> {
    const peers = ['h1', 'h2'].map((h) => ({ agentId: h, address: '127.0.0.1', port: agents.get(h)?.boundTunnelPort }));
    const macs = Object.keys(MACS).map((vm) => ({ mac: MACS[vm], agentId: HOST[vm] }));
    return Promise.all(['h1', 'h2'].map((h) => coord.ok(h, { configureVne: { vne: VNE, vni: 100, generation, peers, macs } })));
  }

  before(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-agent-'));
    coord = new FakeCoordinator();
    await coord.start();
    await makeAgent('h1');
    await makeAgent('h2');
    const r1 = await coord.registered('h1');
    const r2 = await coord.registered('h2');
    assert.equal(r1.register.tunnelPort, agents.get('h1')?.boundTunnelPort);
    assert.ok(r2.register.tunnelPort > 0);
    assert.deepEqual(r1.register.drivers, ['sim']);
    assert.equal(r1.register.tunnelAddress, '127.0.0.1');
  });

  after(async () => {
    for (const a of agents.values()) await a.stop();
    await coord.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  interface Snap {
    id: string;
    epoch: number;
    prefix: string;
    artefacts: Map<string, Artefact__Output[]>;
    channelFrames: number;
    cutStates: Record<string, SimVmState>;
  }

  /** Configure the VNE and start the three VMs, asserting a duplicate start is refused. */
  async function startAll(): Promise<void> {
    await configure(++generation);
    for (const vm of Object.keys(MACS)) await coord.ok(HOST[vm] as string, { startVm: { vne: VNE, vm: vmSpec(vm), epoch: 0 } });
  }

  /** Each `it` starts from the three VMs running with traffic; starts them if an earlier `it` did not. */
  async function running(): Promise<void> {
    if (Object.keys(MACS).every((vm) => state(vm)?.status === 'running')) return;
    await startAll();
    await flowing('after starting the VMs');
  }

  /** The epoch after the highest one any port is at. */
  const nextEpoch = (): number => 1 + Math.max(...Object.keys(MACS).map((vm) => agents.get(HOST[vm] as string)?.switch.portEpoch(`${VNE}/${vm}/0`) ?? 0));

  async function snapshot(epoch: number, mode: 'SNAPSHOT_MODE_PRECOPY' | 'SNAPSHOT_MODE_BACKGROUND'): Promise<Snap> {
    const id = `snap-${epoch}`;
    const prefix = `snapshots/${id}/`;
    const vmsOf = (h: string) => Object.keys(MACS).filter((vm) => HOST[vm] === h);
    const begins = await Promise.all(['h1', 'h2'].map((h) => coord.ok(h, { snapshotBegin: { snapshotId: id, vne: VNE, epoch, mode, vms: vmsOf(h), storePrefix: prefix } })));
    assert.equal(begins.length, 2);
    if (mode === 'SNAPSHOT_MODE_PRECOPY') {
      const prog = coord.sessions.get('h1')?.progress.filter((p) => p.vm?.phase === 'PHASE_PRECOPY') ?? [];
      assert.ok(prog.some((p) => p.vm?.vm === 'a' && p.vm.phaseDone), 'a reported ready');
      assert.ok(prog.some((p) => p.vm?.vm === 'b' && (p.vm.bytesDone ?? 0) > 0 && p.vm.iteration >= 1), 'b reported copy progress');
    }
    // The commit goes to every agent in the same event-loop turn.
    const commits = await Promise.all(['h1', 'h2'].map((h) => coord.ok(h, { snapshotCommit: { snapshotId: id } })));
    for (const [i, h] of ['h1', 'h2'].entries()) {
      const vms = commits[i]?.commit?.vms ?? [];
      assert.deepEqual(vms.map((v) => v.name).sort(), vmsOf(h));
      for (const v of vms) {
        assert.equal(v.host, h);
        assert.ok(v.pauseMs > 0 && v.pauseMs < 1000, `pause ${v.pauseMs}`);
        assert.ok(v.cutUnixUs > 1_600_000_000_000_000);
        assert.ok(v.phases.some((p) => p.phase === 'PHASE_PAUSE'));
      }
    }
    const persists = await Promise.all(['h1', 'h2'].map((h) => coord.ok(h, { snapshotPersist: { snapshotId: id } })));
    const s: Snap = { id, epoch, prefix, artefacts: new Map(), channelFrames: 0, cutStates: {} };
    for (const [i, h] of ['h1', 'h2'].entries()) {
      const p = persists[i]?.persist;
      assert.ok(p);
      assert.equal(p.lostFrames, 0);
      for (const vm of vmsOf(h)) {
        const arts: Artefact__Output[] = p.artefacts.filter((a) => a.owner === vm || a.owner === `${VNE}/${vm}/0`);
        assert.deepEqual(arts.map((a) => a.kind).sort(), ['ARTEFACT_KIND_CHANNEL', 'ARTEFACT_KIND_MEMORY']);
        for (const a of arts) assert.ok(a.path.startsWith(prefix) && /^[0-9a-f]{64}$/.test(a.sha256));
        s.artefacts.set(vm, arts);
        s.cutStates[vm] = drivers.get(h)?.cutState(`${VNE}/${vm}`, epoch) as SimVmState;
        assert.equal(s.cutStates[vm]?.epoch, epoch);
      }
      s.channelFrames += p.vms.reduce((n, v) => n + v.channelFrames, 0);
      const validate = await coord.ok(h, { validateArtefacts: { artefacts: p.artefacts } });
      assert.deepEqual(validate.validate?.problems, []);
    }
    for (const h of ['h1', 'h2']) for (const vm of vmsOf(h)) assert.equal(agents.get(h)?.switch.portEpoch(`${VNE}/${vm}/0`), epoch);
    return s;
  }

  async function restore(s: Snap, generation: number): Promise<number> {
    await configure(generation);
    const restoreId = `restore-${s.id}-${generation}`;
    const vmsOf = (h: string) => Object.keys(MACS).filter((vm) => HOST[vm] === h);
    const prepared = await Promise.all(
      ['h1', 'h2'].map((h) =>
        coord.ok(h, {
          restorePrepare: {
            restoreId,
            vne: VNE,
            epoch: s.epoch,
            generation,
            stopRunning: true,
            vms: vmsOf(h).map((vm) => {
              const arts: Artefact__Output[] = s.artefacts.get(vm) ?? [];
              return { vm: vmSpec(vm), memory: arts.find((a) => a.kind === 'ARTEFACT_KIND_MEMORY'), channel: arts.filter((a) => a.kind === 'ARTEFACT_KIND_CHANNEL') };
            }),
          },
        }),
      ),
    );
    assert.equal(prepared.flatMap((p) => p.restorePrepare?.vms ?? []).length, 3);
    // Loaded paused, with exactly the state of the pause instant.
    for (const vm of Object.keys(MACS)) {
      const st = state(vm);
      assert.equal(st.status, 'paused');
      assert.deepEqual(guestOf(st), guestOf(s.cutStates[vm] as SimVmState), `${vm} restored = ${vm} at the cut`);
      assert.equal(agents.get(HOST[vm] as string)?.switch.portEpoch(`${VNE}/${vm}/0`), s.epoch);
    }
    const resumed = await Promise.all(['h1', 'h2'].map((h) => coord.ok(h, { restoreResume: { restoreId, vne: VNE } })));
    const injected = resumed.reduce((n, r) => n + (r.resume?.injectedFrames ?? 0), 0);
    assert.equal(injected, s.channelFrames, 'every recorded in-flight frame injected once');
    return injected;
  }

  it('ConfigureVne + StartVm: sim VMs on two agents exchange frames over the real switches', async () => {
    await startAll();
    const dup = await coord.send('h1', { startVm: { vne: VNE, vm: vmSpec('a'), epoch: 0 } });
    assert.equal(dup.ok, false);
    assert.equal(dup.errorCode, 'ERR_ALREADY_EXISTS');
    await until('traffic between every pair', () => Object.keys(MACS).every((r) => Object.keys(MACS).every((snd) => snd === r || (state(r)?.expected[snd] ?? 0) > 50)), 5000);
    assert.ok((agents.get('h1')?.switch.stats().tunnelTx ?? 0) > 0);
    checkContinuity(await settle(), 'before any snapshot');
  });

  // One `it`: the restores need the snapshots taken before them, and the refused restore one of them.
  it('snapshots in precopy and background mode (consistent cuts, durable artefacts, no gap/duplicate/orphan); StopVm, then RestorePrepare/RestoreResume of each continues exactly from the cut; RestorePrepare touches nothing when an artefact is of another size (no image read: checksums are verified by the coordinator validation and while loading)', async () => {
    await running();
    const snaps: Snap[] = [];
    snaps.push(await snapshot(1, 'SNAPSHOT_MODE_PRECOPY'));
    await flowing('after snapshot 1');
    snaps.push(await snapshot(2, 'SNAPSHOT_MODE_BACKGROUND'));
    await flowing('after snapshot 2');
    checkContinuity(await settle(), 'after two snapshots');
    const metrics = await agents.get('h1')?.metrics.registry.metrics();
    assert.match(metrics ?? '', /vnsnap_agent_vm_pause_seconds_count\{mode="precopy"\} 2/);
    assert.match(metrics ?? '', /vnsnap_switch_port_epoch\{port="blue\/a\/0"\} 2/);
    console.log(`      in-flight frames recorded: snapshot 1 ${snaps[0]?.channelFrames}, snapshot 2 ${snaps[1]?.channelFrames}`);

    // StopVm, then RestorePrepare/RestoreResume of each snapshot: every sequence continues exactly from the cut.
    for (const vm of Object.keys(MACS)) await coord.ok(HOST[vm] as string, { stopVm: { vne: VNE, vm } });
    await coord.ok('h1', { stopVm: { vne: VNE, vm: 'a' } }); // idempotent
    assert.deepEqual(agents.get('h1')?.vmKeys(), []);
    for (const s of snaps) {
      await restore(s, ++generation);
      await flowing(`after restoring ${s.id}`);
      const st = await settle();
      checkContinuity(st, `after restoring ${s.id}`);
      for (const vm of Object.keys(MACS)) {
        for (const peer of Object.keys(MACS)) if (peer !== vm) assert.ok((st[vm]?.expected[peer] ?? 0) > (s.cutStates[vm]?.expected[peer] ?? 0), `${vm} receives from ${peer} again`);
      }
    }
    const total = snaps.reduce((n, s) => n + s.channelFrames, 0);
    console.log(`      restored ${snaps.length} snapshots, ${total} in-flight frames injected`);

    // RestorePrepare touches nothing when an artefact is of another size than recorded.
    const s = snaps[0] as Snap;
    const before = state('a');
    const arts = s.artefacts.get('a') ?? [];
    const mem = arts.find((a) => a.kind === 'ARTEFACT_KIND_MEMORY') as Artefact__Output;
    const r = await coord.send('h1', {
      restorePrepare: { restoreId: 'bad', vne: VNE, epoch: s.epoch, generation: 9, stopRunning: true, vms: [{ vm: vmSpec('a'), memory: { ...mem, size: mem.size + 1 }, channel: [] }] },
    });
    assert.equal(r.ok, false);
    assert.equal(r.errorCode, 'ERR_FAILED_PRECONDITION');
    assert.equal(r.errorMessage, `restore bad: ${mem.path}: size ${mem.size}, expected ${mem.size + 1} [ERR_FAILED_PRECONDITION]`);
    assert.equal(state('a').status, 'running');
    assert.ok(state('a').framesReceived >= before.framesReceived);
    assert.equal(agents.get('h1')?.switch.stats().vnes['blue']?.generation, snaps.length + 1);
  });

  it('a session dropped mid-snapshot: the agent aborts locally after dead_after_ms (VM running, ports advanced, partials deleted) and reconnects', async () => {
    await running();
    const epoch = nextEpoch();
    const prefix = 'snapshots/dropped/';
    await coord.ok('h2', { snapshotBegin: { snapshotId: 'dropped', vne: VNE, epoch, mode: 'SNAPSHOT_MODE_BACKGROUND', vms: ['c'], storePrefix: prefix } });
    await coord.ok('h2', { snapshotCommit: { snapshotId: 'dropped' } });
    assert.equal(agents.get('h2')?.switch.portEpoch(`${VNE}/c/0`), epoch);
    // The agents' one store (content-addressed), read through the store API.
    const store = (agents.get('h2') as Agent).store;
    await until('the image is committed', async () => (await store.stat(`${prefix}c.mem`)) !== null);
    const regs = coord.registrations.filter((r) => r.agentId === 'h2').length;
    coord.drop('h2');
    const again = await coord.registered('h2', regs);
    assert.deepEqual(
      again.register.running.map((r) => [r.vm, r.epoch]),
      [['c', epoch]],
    );
    await until('local abort', async () => (await store.stat(`${prefix}c.mem`)) === null, 3000);
    assert.equal(state('c').status, 'running');
    const r = await coord.send('h2', { snapshotPersist: { snapshotId: 'dropped' } });
    assert.equal(r.errorCode, 'ERR_NOT_FOUND');
    // h1's VMs are still at the epoch before; the coordinator's SnapshotAbort (idempotent, for a snapshot it never saw) advances them.
    await coord.ok('h1', { snapshotAbort: { snapshotId: 'dropped', vne: VNE, epoch, storePrefix: prefix } });
    await coord.ok('h2', { snapshotAbort: { snapshotId: 'dropped', vne: VNE, epoch, storePrefix: prefix } });
    assert.equal(agents.get('h1')?.switch.portEpoch(`${VNE}/a/0`), epoch);
    await flowing('after the dropped snapshot');
    checkContinuity(await settle(), 'after the dropped snapshot');
  });

  it('a session dropped during pre-copy aborts it too, and SnapshotAbort of a running snapshot resumes and cleans up', async () => {
    await running();
    const epoch = nextEpoch();
    const prefix = 'snapshots/pre/';
    await coord.ok('h1', { snapshotBegin: { snapshotId: 'pre', vne: VNE, epoch, mode: 'SNAPSHOT_MODE_PRECOPY', vms: ['a', 'b'], storePrefix: prefix } });
    const regs = coord.registrations.filter((r) => r.agentId === 'h1').length;
    coord.drop('h1');
    await coord.registered('h1', regs);
    // The local abort advances the ports; nothing of the snapshot is left in the store.
    await until('local abort', () => agents.get('h1')?.switch.portEpoch(`${VNE}/a/0`) === epoch, 3000);
    const store = (agents.get('h1') as Agent).store;
    assert.deepEqual(await store.list(prefix), []);
    assert.equal(state('a').status, 'running');
    await coord.ok('h2', { snapshotAbort: { snapshotId: 'pre', vne: VNE, epoch, storePrefix: prefix } });
    // An explicit abort while a precopy is running.
    await coord.ok('h1', { snapshotBegin: { snapshotId: 'ab', vne: VNE, epoch: epoch + 1, mode: 'SNAPSHOT_MODE_PRECOPY', vms: ['a'], storePrefix: 'snapshots/ab/' } });
    await coord.ok('h1', { snapshotAbort: { snapshotId: 'ab', vne: VNE, epoch: epoch + 1, storePrefix: 'snapshots/ab/' } });
    await coord.ok('h2', { snapshotAbort: { snapshotId: 'ab', vne: VNE, epoch: epoch + 1, storePrefix: 'snapshots/ab/' } });
    assert.deepEqual(await store.list('snapshots/ab/'), []);
    await flowing('after aborted snapshots');
    checkContinuity(await settle(), 'after aborted snapshots');
  });

  it('a snapshot aborted before its VM is ready: the rejected ready is handled (no unhandled rejection), the begin fails as aborted', async () => {
    await running();
    const epoch = nextEpoch();
    const unhandled: unknown[] = [];
    const onUnhandled = (r: unknown): void => void unhandled.push(r);
    process.on('unhandledRejection', onUnhandled);
    holdReady = true;
    const held = heldJobs;
    try {
      const begin = coord.send('h1', { snapshotBegin: { snapshotId: 'nr', vne: VNE, epoch, mode: 'SNAPSHOT_MODE_PRECOPY', vms: ['a'], storePrefix: 'snapshots/nr/' } });
      await until('the snapshot job waiting for its VM to be ready', () => heldJobs > held, 5000);
      await coord.ok('h1', { snapshotAbort: { snapshotId: 'nr', vne: VNE, epoch, storePrefix: 'snapshots/nr/' } });
      const r = await begin;
      assert.equal(r.ok, false);
      assert.equal(r.errorCode, 'ERR_SNAPSHOT_ABORTED');
      await coord.ok('h2', { snapshotAbort: { snapshotId: 'nr', vne: VNE, epoch, storePrefix: 'snapshots/nr/' } });
      // Kept: the test is that nothing arrives. A rejection nobody handles is reported a few turns
      // after it happens; give one the time to show up before asserting there was none.
      await sleep(100);
      assert.deepEqual(unhandled, []);
      assert.equal(state('a').status, 'running');
    } finally {
      holdReady = false;
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('heartbeats at the Welcome interval; a refused session is retried with backoff', async () => {
    // The Welcome asks for one heartbeat every coord.heartbeatMs (100 ms); without it the agent
    // would send one a second. Judge six consecutive heartbeats by the agent's own send times
    // (Heartbeat.unix_ms), so neither delivery delays nor a late start of the window count:
    // no gap may be shorter than the interval (a timer never fires early; 10% for clock
    // granularity), and on average at most half the default second apart (a busy event loop only
    // ever delays a timer, so the upper bound is generous).
    await until('h1 connected', () => agents.get('h1')?.connected === true, 5000);
    const s = await coord.registered('h1');
    const from = s.heartbeatsAt.length;
    await until('six heartbeats', () => s.heartbeatsAt.length >= from + 6, 10_000);
    const at = s.heartbeatsAt.slice(from, from + 6);
    const gaps = at.slice(1).map((t, i) => t - (at[i] as number));
    const mean = ((at[5] as number) - (at[0] as number)) / 5;
    assert.ok(Math.min(...gaps) >= 0.9 * coord.heartbeatMs && mean <= 5 * coord.heartbeatMs, `heartbeat gaps at a ${coord.heartbeatMs} ms interval: ${gaps.join(', ')} ms`);
    coord.refuse = 'agent id h1 already has a live session';
    const regs = coord.registrations.filter((r) => r.agentId === 'h1').length;
    coord.drop('h1');
    await until('two refused attempts', () => coord.registrations.filter((r) => r.agentId === 'h1').length >= regs + 2, 5000);
    assert.equal(agents.get('h1')?.connected, false);
    coord.refuse = undefined;
    await coord.registered('h1', coord.registrations.filter((r) => r.agentId === 'h1').length);
    await until('connected', () => agents.get('h1')?.connected === true);
    const metrics = await agents.get('h1')?.metrics.registry.metrics();
    assert.match(metrics ?? '', /vnsnap_agent_session_connected 1/);
  });
});
