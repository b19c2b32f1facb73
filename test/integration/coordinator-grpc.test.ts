/**
 * The coordinator over real gRPC, in-process: the server on 127.0.0.1:0 and scripted agents
 * that are real AgentService.Session clients writing real files into a shared store directory
 * (the whole-file layout, { dir, layout: "files" }, which these scripted agents write by hand).
 * define → start → snapshot (both modes) → list/get → restore (same hosts, swapped placement)
 * → delete; tampered and newer-major manifests refused with nothing touched; disconnects; the
 * main program's ready line and SIGTERM.
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { ERROR_CODE_METADATA_KEY } from '../../proto/core/grpc-status';
import { loadVnsnap } from '../../proto/core/grpc';
import type { AgentMessage } from '../../proto/gen/vnsnap/v1/AgentMessage';
import type { Artefact } from '../../proto/gen/vnsnap/v1/Artefact';
import type { Command__Output } from '../../proto/gen/vnsnap/v1/Command';
import type { CoordinatorMessage__Output } from '../../proto/gen/vnsnap/v1/CoordinatorMessage';
import type { CoordinatorServiceClient } from '../../proto/gen/vnsnap/v1/CoordinatorService';
import type { Event__Output } from '../../proto/gen/vnsnap/v1/Event';
import type { Result } from '../../proto/gen/vnsnap/v1/Result';
import type { SnapshotEvent__Output } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import type { Vne } from '../../proto/gen/vnsnap/v1/Vne';
import { decodeManifest, encodeManifest } from '../../proto/artefacts/manifest';
import { silentLogger } from '../../proto/core/log';
import { CoordinatorServer } from '../../coordinator/server';
import { until } from '../support/wait';

const pkg = loadVnsnap();
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A scripted agent: a real Session client answering commands the way the real agent would. */
class ScriptedAgent {
  readonly commands: Command__Output[] = [];
  readonly running = new Set<string>();

  /** What a real agent reports when it registers: the VMs it runs (every VM here is in "blue"). */
  runningVms(): { vne: string; vm: string; epoch: number; generation: number }[] {
    return [...this.running].map((vm) => ({ vne: 'blue', vm, epoch: 0, generation: 0 }));
  }
  /** Commands (by body name) this agent leaves unanswered. */
  readonly hold = new Set<string>();
  private call?: grpc.ClientDuplexStream<AgentMessage, CoordinatorMessage__Output>;
  private hb?: NodeJS.Timeout;
  private client?: grpc.Client;
  refused = '';

  constructor(
    readonly id: string,
    readonly tunnelPort: number,
    readonly storeDir: string,
  ) {}

  connect(address: string): Promise<void> {
    const client = new pkg.vnsnap.v1.AgentService(address, grpc.credentials.createInsecure());
    this.client = client;
    const call = client.Session();
    this.call = call;
    return new Promise((resolve, reject) => {
      call.on('data', (m: CoordinatorMessage__Output) => {
        if (m.welcome) {
          this.hb = setInterval(() => call.write({ heartbeat: { seq: 1, unixMs: Date.now() } }), m.welcome.heartbeatIntervalMs);
          resolve();
        } else if (m.refused) {
          this.refused = m.refused;
          resolve();
        } else if (m.command) {
          this.commands.push(m.command);
          if (!this.hold.has(m.command.body ?? '')) void this.handle(m.command);
        }
      });
      call.on('error', (e: grpc.ServiceError) => (e.code === grpc.status.CANCELLED ? undefined : reject(e)));
      call.write({ register: { agentId: this.id, hostname: `host-${this.id}`, version: 'test', tunnelAddress: '127.0.0.1', tunnelPort: this.tunnelPort, drivers: ['sim'], running: this.runningVms() } });
    });
  }

  close(): void {
    clearInterval(this.hb);
    this.call?.cancel();
    this.client?.close();
  }

  names(): string[] {
    return this.commands.map((c) => c.body as string);
  }

  private result(r: Omit<Result, 'commandId'>, id: number): void {
    this.call?.write({ result: { commandId: id, ...r } });
  }

  private file(p: string): string {
    return path.join(this.storeDir, p);
  }

  /** A line per artefact missing or not of its size and SHA-256. */
  private async problems(artefacts: readonly { path: string; size: unknown; sha256: string }[]): Promise<string[]> {
    const problems: string[] = [];
    for (const a of artefacts) {
      const b = await fs.promises.readFile(this.file(a.path)).catch(() => undefined);
      if (!b) problems.push(`${a.path}: missing`);
      else if (b.length !== Number(a.size) || sha(b) !== a.sha256) problems.push(`${a.path}: size or sha256 mismatch`);
    }
    return problems;
  }

  private async handle(c: Command__Output): Promise<void> {
    const ok = { ok: true };
    switch (c.body) {
      case 'configureVne':
        return this.result(ok, c.id);
      case 'startVm':
        this.running.add(c.startVm?.vm?.name ?? '');
        return this.result(ok, c.id);
      case 'stopVm':
        this.running.delete(c.stopVm?.vm ?? '');
        return this.result(ok, c.id);
      case 'snapshotBegin': {
        const b = c.snapshotBegin!;
        if (b.mode === 'SNAPSHOT_MODE_PRECOPY') {
          for (const vm of b.vms) {
            this.call?.write({ progress: { commandId: c.id, vm: { vm, phase: 'PHASE_PRECOPY', bytesDone: 50, bytesTotal: 100, iteration: 1, dirtyRateMibS: 3 } } });
            this.call?.write({ progress: { commandId: c.id, vm: { vm, phase: 'PHASE_PRECOPY', bytesDone: 100, bytesTotal: 100, iteration: 2, phaseDone: true } } });
          }
        }
        this.jobs.set(b.snapshotId, { vms: b.vms, prefix: b.storePrefix, epoch: b.epoch });
        return this.result(ok, c.id);
      }
      case 'snapshotCommit': {
        const j = this.jobs.get(c.snapshotCommit!.snapshotId)!;
        const now = Date.now() * 1000;
        return this.result({ ok: true, commit: { vms: j.vms.map((vm) => ({ name: vm, host: this.id, pauseMs: 1.5, cutUnixUs: now, phases: [{ phase: 'PHASE_PAUSE', startUnixUs: now, endUnixUs: now + 1500 }] })) } }, c.id);
      }
      case 'snapshotPersist': {
        const j = this.jobs.get(c.snapshotPersist!.snapshotId)!;
        const artefacts: Artefact[] = [];
        for (const vm of j.vms) {
          for (const [suffix, kind, owner, data] of [
            ['mem', 'ARTEFACT_KIND_MEMORY', vm, `memory of ${vm} at epoch ${j.epoch}`],
            ['0.chan', 'ARTEFACT_KIND_CHANNEL', `${vm}.0`, `frames of ${vm}`],
          ] as const) {
            const rel = `${j.prefix}${vm}.${suffix}`;
            const buf = Buffer.from(data);
            await fs.promises.mkdir(path.dirname(this.file(rel)), { recursive: true });
            await fs.promises.writeFile(this.file(rel), buf);
            artefacts.push({ path: rel, size: buf.length, sha256: sha(buf), kind, owner });
          }
        }
        return this.result({ ok: true, persist: { artefacts, vms: j.vms.map((vm) => ({ name: vm, memoryBytes: 20, channelFrames: 1 })), lostFrames: 0 } }, c.id);
      }
      case 'snapshotAbort':
        await fs.promises.rm(this.file(c.snapshotAbort!.storePrefix), { recursive: true, force: true });
        return this.result(ok, c.id);
      case 'deleteArtefacts':
        for (const p of c.deleteArtefacts!.paths) await fs.promises.rm(this.file(p), { force: true });
        if (c.deleteArtefacts!.storePrefix) await fs.promises.rm(this.file(c.deleteArtefacts!.storePrefix), { recursive: true, force: true });
        return this.result(ok, c.id);
      case 'validateArtefacts':
        return this.result({ ok: true, validate: { problems: await this.problems(c.validateArtefacts!.artefacts) } }, c.id);
      case 'restorePrepare': {
        const p = c.restorePrepare!;
        // Loading beside verifies every image while it loads: a bad one fails the prepare.
        const bad = p.loadBeside ? await this.problems(p.vms.flatMap((v) => [v.memory!, ...v.channel])) : [];
        if (bad.length > 0) return this.result({ ok: false, errorCode: 'ERR_CHECKSUM', errorMessage: bad.join('; ') }, c.id);
        for (const v of p.vms) {
          // Loaded beside: the running VMs go only at RestoreSwap.
          if (p.stopRunning && !p.loadBeside) this.running.delete(v.vm?.name ?? '');
          await fs.promises.readFile(this.file(v.memory!.path));
        }
        this.prepared = p.vms.map((v) => v.vm?.name ?? '');
        this.injected = p.vms.reduce((n, v) => n + v.channel.length, 0);
        return this.result({ ok: true, restorePrepare: { vms: p.vms.map((v) => ({ name: v.vm?.name, host: this.id })), beside: p.loadBeside } }, c.id);
      }
      case 'restoreSwap':
        for (const vm of this.prepared) this.running.delete(vm);
        return this.result(ok, c.id);
      case 'restoreResume':
        for (const vm of this.prepared) this.running.add(vm);
        return this.result({ ok: true, resume: { vms: this.prepared.map((vm) => ({ name: vm, host: this.id })), injectedFrames: this.injected } }, c.id);
      case 'restoreCancel':
        return this.result(ok, c.id);
      default:
        return this.result({ ok: false, errorCode: 'ERR_INVALID_ARGUMENT', errorMessage: `unknown command ${c.body}` }, c.id);
    }
  }

  private readonly jobs = new Map<string, { vms: string[]; prefix: string; epoch: number }>();
  private prepared: string[] = [];
  private injected = 0;
}

function unary<Req, Res>(client: CoordinatorServiceClient, method: string, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    (client as unknown as Record<string, (r: Req, cb: (e: grpc.ServiceError | null, r?: Res) => void) => void>)[method]!.call(client, req, (e, r) => (e ? reject(e) : resolve(r as Res)));
  });
}

function streamAll(s: grpc.ClientReadableStream<SnapshotEvent__Output>): Promise<{ events: SnapshotEvent__Output[]; error?: grpc.ServiceError }> {
  const events: SnapshotEvent__Output[] = [];
  return new Promise((resolve) => {
    s.on('data', (e: SnapshotEvent__Output) => events.push(e));
    s.on('error', (error: grpc.ServiceError) => resolve({ events, error }));
    s.on('end', () => resolve({ events }));
  });
}

function expectStatus(e: unknown, code: grpc.status, vnsnapCode: string, details?: string): void {
  const se = e as grpc.ServiceError;
  assert.equal(se.code, code, se.details);
  assert.equal(se.metadata.get(ERROR_CODE_METADATA_KEY)[0], vnsnapCode);
  if (details !== undefined) assert.equal(se.details, details);
}

const VNE: Vne = {
  name: 'blue',
  vni: 4242,
  vms: [
    { name: 'vm1', host: 'h1', macs: ['52:54:00:00:00:01'], driver: { sim: { memoryMib: 4, dirtyRateMibS: 1, frameRateHz: 10, peers: ['vm2'] } } },
    { name: 'vm2', host: 'h2', macs: ['52:54:00:00:00:02'], driver: { sim: { memoryMib: 4, dirtyRateMibS: 1, frameRateHz: 10, peers: ['vm1'] } } },
  ],
};

describe('coordinator over gRPC (in-process, scripted agents)', function () {
  this.timeout(60_000);
  let dir: string;
  let storeDir: string;
  let server: CoordinatorServer;
  let client: CoordinatorServiceClient;
  let h1: ScriptedAgent;
  let h2: ScriptedAgent;
  let watched: Event__Output[];
  let watch: grpc.ClientReadableStream<Event__Output>;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-coord-'));
    storeDir = path.join(dir, 'store');
    server = new CoordinatorServer({ config: { listen: '127.0.0.1:0', insecurePlaintext: true, db: path.join(dir, 'catalog.db'), store: { kind: 'files', dir: storeDir }, deadAfterMs: 1500, heartbeatIntervalMs: 300 }, log: silentLogger(), version: 'test' });
    await server.start();
    client = new pkg.vnsnap.v1.CoordinatorService(server.address, grpc.credentials.createInsecure());
    watched = [];
    watch = client.WatchEvents({});
    watch.on('data', (e: Event__Output) => watched.push(e));
    watch.on('error', () => undefined);
    h1 = new ScriptedAgent('h1', 6081, storeDir);
    h2 = new ScriptedAgent('h2', 6082, storeDir);
    await h1.connect(server.address);
    await h2.connect(server.address);
  });

  after(async () => {
    watch?.cancel();
    h1?.close();
    h2?.close();
    client?.close();
    await server?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('serves health and lists the connected agents; a second session for an id is refused', async () => {
    const Health = grpc.makeGenericClientConstructor(healthService, 'Health');
    const hc = new Health(server.address, grpc.credentials.createInsecure()) as unknown as { Check: (r: object, cb: (e: Error | null, r: { status: string }) => void) => void; close(): void };
    const st = await new Promise<{ status: string }>((res, rej) => hc.Check({ service: 'vnsnap.v1.CoordinatorService' }, (e, r) => (e ? rej(e) : res(r))));
    assert.equal(st.status, 'SERVING');
    hc.close();
    const { agents } = await unary<object, { agents: { id: string; state: string; tunnelAddress: string; tunnelPort: number; hostname: string }[] }>(client, 'ListAgents', {});
    assert.deepEqual(agents.map((a) => [a.id, a.state, a.tunnelAddress, a.tunnelPort, a.hostname]), [
      ['h1', 'AGENT_STATE_CONNECTED', '127.0.0.1', 6081, 'host-h1'],
      ['h2', 'AGENT_STATE_CONNECTED', '127.0.0.1', 6082, 'host-h2'],
    ]);
    const dup = new ScriptedAgent('h1', 1, storeDir);
    await dup.connect(server.address);
    assert.equal(dup.refused, 'agent id "h1" already has a live session');
    dup.close();
    await until('the agent.joined events', () => watched.filter((e) => e.kind === 'agent.joined').length >= 0, 5000);
  });

  it('validates definitions with exact status codes', async () => {
    await assert.rejects(unary(client, 'DefineVne', { vne: { ...VNE, vni: 1 << 24 } }), (e) => {
      expectStatus(e, grpc.status.INVALID_ARGUMENT, 'ERR_INVALID_ARGUMENT', 'VNI 16777216 is out of range (0..16777215)');
      return true;
    });
    await assert.rejects(unary(client, 'DefineVne', { vne: { ...VNE, vms: [{ ...VNE.vms![0], driver: {} }] } }), (e) => {
      expectStatus(e, grpc.status.INVALID_ARGUMENT, 'ERR_INVALID_ARGUMENT', 'VM "vm1" has no driver spec (sim, qemu or xen)');
      return true;
    });
    await assert.rejects(unary(client, 'GetVne', { name: 'blue' }), (e) => {
      expectStatus(e, grpc.status.NOT_FOUND, 'ERR_NOT_FOUND', 'VNE "blue" does not exist');
      return true;
    });
  });

  it('bounds over the wire: a 1 MB name and 2^32-1 MiB are INVALID_ARGUMENT naming the field; a timeout above 2^31-1 ms is refused, not fired at once', async () => {
    await assert.rejects(unary(client, 'DefineVne', { vne: { ...VNE, name: 'a'.repeat(1 << 20) } }), (e) => {
      expectStatus(e, grpc.status.INVALID_ARGUMENT, 'ERR_INVALID_ARGUMENT', 'VNE name is 1048576 characters long; the limit is 63');
      return true;
    });
    await assert.rejects(unary(client, 'GetVne', { name: 'a'.repeat(1 << 20) }), (e) => {
      expectStatus(e, grpc.status.INVALID_ARGUMENT, 'ERR_INVALID_ARGUMENT', 'VNE name is 1048576 characters long; the limit is 63');
      return true;
    });
    await assert.rejects(unary(client, 'DefineVne', { vne: { ...VNE, vms: [{ ...VNE.vms![0], driver: { qemu: { memoryMib: 4294967295, kernel: '/k' } } }] } }), (e) => {
      expectStatus(e, grpc.status.INVALID_ARGUMENT, 'ERR_INVALID_ARGUMENT', 'VM "vm1": qemu.memory_mib 4294967295 is out of range (16..1048576 MiB)');
      return true;
    });
    // Only a request above the server's receive limit (4 MiB) is the transport's refusal.
    await assert.rejects(unary(client, 'GetVne', { name: 'a'.repeat(5 << 20) }), (e) => {
      assert.equal((e as grpc.ServiceError).code, grpc.status.RESOURCE_EXHAUSTED);
      return true;
    });
    const { events, error } = await streamAll(client.CreateSnapshot({ vne: 'blue', timeoutMs: 4294967295 }));
    assert.deepEqual(events, []);
    expectStatus(error, grpc.status.INVALID_ARGUMENT, 'ERR_INVALID_ARGUMENT', 'timeout_ms 4294967295 is out of range (0..2147483647 ms, about 24.8 days; 0 = the default)');
  });

  // One it: each step needs exactly the state the steps before it left (the VNE defined and
  // running, the snapshots taken, the placement swapped, the epochs and generations reached).
  it('a VNE through its life: define → start, precopy and background snapshots, restores onto the same and a swapped placement, refused restores, delete, a concurrent snapshot and an agent dying mid-snapshot, a stopping coordinator', async () => {
    let snapPrecopy = '';
    let snapBackground = '';

    // define → start: ConfigureVne with peers and MAC routes, then StartVm.
    {
      const v = await unary<object, { state: string; generation: number }>(client, 'DefineVne', { vne: VNE });
      assert.equal(v.state, 'VNE_STATE_DEFINED');
      await assert.rejects(unary(client, 'DefineVne', { vne: VNE }), (e) => {
        expectStatus(e, grpc.status.ALREADY_EXISTS, 'ERR_ALREADY_EXISTS', 'VNE "blue" already exists');
        return true;
      });
      const { vne } = await unary<object, { vne: { state: string; placement: Record<string, string> } }>(client, 'StartVne', { name: 'blue' });
      assert.equal(vne.state, 'VNE_STATE_RUNNING');
      assert.deepEqual(vne.placement, { vm1: 'h1', vm2: 'h2' });
      assert.deepEqual(h1.names(), ['configureVne', 'startVm']);
      assert.deepEqual(h1.commands[0]?.configureVne?.peers, [{ agentId: 'h2', address: '127.0.0.1', port: 6082, dataPathPort: 0 }]);
      assert.deepEqual(h2.commands[0]?.configureVne?.macs, [
        { mac: '52:54:00:00:00:01', agentId: 'h1' },
        { mac: '52:54:00:00:00:02', agentId: 'h2' },
      ]);
      assert.deepEqual([...h1.running, ...h2.running], ['vm1', 'vm2']);
  
    }

    // CreateSnapshot (precopy) streams states, per-VM progress and the complete record; the manifest is on disk.
    {
      const { events, error } = await streamAll(client.CreateSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_PRECOPY', description: 'pre' }));
      assert.equal(error, undefined);
      assert.deepEqual(events.filter((e) => e.event === 'state').map((e) => e.state), ['SNAPSHOT_STATE_PRECOPY', 'SNAPSHOT_STATE_COMMITTING', 'SNAPSHOT_STATE_PERSISTING', 'SNAPSHOT_STATE_COMPLETE']);
      const progress = events.filter((e) => e.event === 'vm').map((e) => `${e.vm?.vm}@${e.vm?.host}:${e.vm?.iteration}:${e.vm?.phaseDone}`);
      assert.deepEqual(progress.sort(), ['vm1@h1:1:false', 'vm1@h1:2:true', 'vm2@h2:1:false', 'vm2@h2:2:true']);
      const done = events.at(-1)?.done;
      assert.equal(done?.state, 'SNAPSHOT_STATE_COMPLETE');
      assert.equal(done?.epoch, 1);
      assert.deepEqual(done?.vms.map((v) => [v.name, v.host, v.pauseMs, v.memoryBytes]), [['vm1', 'h1', 1.5, 20], ['vm2', 'h2', 1.5, 20]]);
      snapPrecopy = done!.id;
      const m = decodeManifest(fs.readFileSync(path.join(storeDir, done!.manifestPath))).body;
      assert.equal(m.snapshotId, snapPrecopy);
      assert.equal(m.artefacts.length, 4);
      assert.equal(m.description, 'pre');
  
    }

    // CreateSnapshot (background) completes at the next epoch; List/Get show both.
    {
      const { events } = await streamAll(client.CreateSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_BACKGROUND' }));
      const done = events.at(-1)?.done;
      assert.equal(done?.state, 'SNAPSHOT_STATE_COMPLETE');
      assert.equal(done?.mode, 'SNAPSHOT_MODE_BACKGROUND');
      assert.equal(done?.epoch, 2);
      assert.equal(events.filter((e) => e.event === 'vm').length, 0);
      snapBackground = done!.id;
      const { snapshots } = await unary<object, { snapshots: { id: string; state: string }[] }>(client, 'ListSnapshots', { vne: 'blue' });
      assert.deepEqual(snapshots.map((s) => [s.id, s.state]), [[snapPrecopy, 'SNAPSHOT_STATE_COMPLETE'], [snapBackground, 'SNAPSHOT_STATE_COMPLETE']]);
      const got = await unary<object, { id: string; artefacts: unknown[]; vms: unknown[] }>(client, 'GetSnapshot', { id: snapBackground });
      assert.equal(got.artefacts.length, 4);
      assert.equal(got.vms.length, 2);
      const vne = await unary<object, { epoch: number; state: string }>(client, 'GetVne', { name: 'blue' });
      assert.deepEqual([vne.epoch, vne.state], [2, 'VNE_STATE_RUNNING']);
  
    }

    // RestoreSnapshot refuses a running VNE without stop_running.
    {
      const { error } = await streamAll(client.RestoreSnapshot({ snapshotId: snapPrecopy }));
      expectStatus(error, grpc.status.FAILED_PRECONDITION, 'ERR_FAILED_PRECONDITION', 'VNE "blue" is running: stop it first or restore with stop_running to replace its VMs');
  
    }

    // RestoreSnapshot onto the same hosts, over the running VNE: loaded beside (no separate validation), configure (new generation), swap, resume.
    {
      const before1 = h1.commands.length;
      const { events, error } = await streamAll(client.RestoreSnapshot({ snapshotId: snapPrecopy, stopRunning: true }));
      assert.equal(error, undefined);
      assert.equal(events.at(-1)?.done?.id, snapPrecopy);
      assert.deepEqual(h1.commands.slice(before1).map((c) => c.body), ['restorePrepare', 'configureVne', 'restoreSwap', 'restoreResume']);
      assert.equal(h1.commands.find((c) => c.restorePrepare)?.restorePrepare?.loadBeside, true);
      assert.equal(h1.commands.find((c) => c.restorePrepare)?.restorePrepare?.generation, 2);
      assert.equal(h1.commands.find((c) => c.restorePrepare)?.restorePrepare?.epoch, 1);
      const vne = await unary<object, { epoch: number; generation: number; state: string; placement: Record<string, string> }>(client, 'GetVne', { name: 'blue' });
      assert.deepEqual([vne.state, vne.epoch, vne.generation, vne.placement], ['VNE_STATE_RUNNING', 1, 2, { vm1: 'h1', vm2: 'h2' }]);
  
    }

    // RestoreSnapshot onto a swapped placement: each VM loads on its new host.
    {
      const n1 = h1.commands.length;
      const n2 = h2.commands.length;
      const { error, events } = await streamAll(client.RestoreSnapshot({ snapshotId: snapBackground, stopRunning: true, placement: { vm1: 'h2', vm2: 'h1' } }));
      assert.equal(error, undefined);
      assert.match(events.filter((e) => e.event === 'note').at(-1)?.note ?? '', /2 VMs resumed at epoch 2, generation 3; 2 recorded frames injected/);
      const prep2 = h2.commands.slice(n2).find((c) => c.restorePrepare)?.restorePrepare;
      assert.deepEqual(prep2?.vms.map((v) => [v.vm?.name, v.vm?.host, v.memory?.path.endsWith('vm1.mem'), v.channel.length]), [['vm1', 'h2', true, 1]]);
      assert.deepEqual(h1.commands.slice(n1).map((c) => c.body), ['restorePrepare', 'stopVm', 'configureVne', 'restoreSwap', 'restoreResume']);
      assert.equal(h1.commands.slice(n1).find((c) => c.restorePrepare)?.restorePrepare?.loadBeside, true);
      assert.deepEqual(h1.commands.slice(n1).find((c) => c.configureVne)?.configureVne?.macs, [
        { mac: '52:54:00:00:00:01', agentId: 'h2' },
        { mac: '52:54:00:00:00:02', agentId: 'h1' },
      ]);
      const vne = await unary<object, { generation: number; epoch: number; placement: Record<string, string> }>(client, 'GetVne', { name: 'blue' });
      assert.deepEqual([vne.generation, vne.epoch, vne.placement], [3, 2, { vm1: 'h2', vm2: 'h1' }]);
      // The next snapshot follows the new placement.
      const { events: ev2 } = await streamAll(client.CreateSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_BACKGROUND' }));
      const done = ev2.at(-1)?.done;
      assert.deepEqual(done?.vms.map((v) => [v.name, v.host]), [['vm1', 'h2'], ['vm2', 'h1']]);
      assert.equal(done?.epoch, 3);
      assert.equal(done?.generation, 3);
  
    }

    // a tampered manifest (DATA_LOSS) and a newer-major manifest (FAILED_PRECONDITION) are refused with nothing touched.
    {
      const snap = await unary<object, { manifestPath: string }>(client, 'GetSnapshot', { id: snapPrecopy });
      const file = path.join(storeDir, snap.manifestPath);
      const good = fs.readFileSync(file);
      const n1 = h1.commands.length;
      const n2 = h2.commands.length;
      const vneBefore = await unary<object, object>(client, 'GetVne', { name: 'blue' });

      const tampered = Buffer.from(good);
      const i = tampered.indexOf(Buffer.from('vm2.mem'));
      tampered[i + 2] = '9'.charCodeAt(0);
      fs.writeFileSync(file, tampered);
      const r1 = await streamAll(client.RestoreSnapshot({ snapshotId: snapPrecopy, stopRunning: true }));
      expectStatus(r1.error, grpc.status.DATA_LOSS, 'ERR_CHECKSUM', `${snap.manifestPath} is corrupt or was modified: its body checksum does not match`);

      fs.writeFileSync(file, encodeManifest(decodeManifest(good).body as never, { major: 2, minor: 1 }));
      const r2 = await streamAll(client.RestoreSnapshot({ snapshotId: snapPrecopy, stopRunning: true }));
      expectStatus(r2.error, grpc.status.FAILED_PRECONDITION, 'ERR_UNSUPPORTED_VERSION', `${snap.manifestPath} has manifest format 2.1, newer than this vnsnap reads (1.x): upgrade vnsnap to restore it`);

      assert.equal(h1.commands.length, n1, 'no command reached h1');
      assert.equal(h2.commands.length, n2, 'no command reached h2');
      assert.deepEqual(await unary(client, 'GetVne', { name: 'blue' }), vneBefore);
      fs.writeFileSync(file, good);
  
    }

    // an artefact changed on disk, in a restore that moves every VM back, is refused while loading on the new hosts: nothing stopped, configured or swapped.
    {
      const snap = await unary<object, { artefacts: { path: string }[] }>(client, 'GetSnapshot', { id: snapPrecopy });
      const art = path.join(storeDir, snap.artefacts[0]!.path);
      const orig = fs.readFileSync(art);
      fs.writeFileSync(art, Buffer.concat([orig, Buffer.from('!')]));
      const n1 = h1.commands.length;
      const n2 = h2.commands.length;
      type Shown = { state: string; generation: number; epoch: number; placement: Record<string, string> };
      const shown = async (): Promise<unknown[]> => {
        const v = await unary<object, Shown>(client, 'GetVne', { name: 'blue' });
        return [v.state, v.generation, v.epoch, v.placement];
      };
      const vneBefore = await shown();
      assert.deepEqual(vneBefore.slice(0, 1).concat(vneBefore.slice(3)), ['VNE_STATE_RUNNING', { vm1: 'h2', vm2: 'h1' }]);
      const r = await streamAll(client.RestoreSnapshot({ snapshotId: snapPrecopy, stopRunning: true, placement: { vm1: 'h1', vm2: 'h2' } }));
      expectStatus(r.error, grpc.status.DATA_LOSS, 'ERR_CHECKSUM', `agent h1: RestorePrepare failed: ${snap.artefacts[0]!.path}: size or sha256 mismatch`);
      assert.deepEqual([...h1.commands.slice(n1), ...h2.commands.slice(n2)].map((c) => c.body).filter((b) => b !== 'restoreCancel'), ['restorePrepare', 'restorePrepare']);
      assert.deepEqual(await shown(), vneBefore);
      fs.writeFileSync(art, orig);
  
    }

    // DeleteSnapshot removes artefacts, manifest and the catalog entry.
    {
      const snap = await unary<object, { manifestPath: string; artefacts: { path: string }[] }>(client, 'GetSnapshot', { id: snapBackground });
      assert.ok(fs.existsSync(path.join(storeDir, snap.manifestPath)));
      await unary(client, 'DeleteSnapshot', { id: snapBackground });
      assert.equal(fs.existsSync(path.join(storeDir, 'snapshots', snapBackground)), false);
      await assert.rejects(unary(client, 'GetSnapshot', { id: snapBackground }), (e) => {
        expectStatus(e, grpc.status.NOT_FOUND, 'ERR_NOT_FOUND', `snapshot "${snapBackground}" does not exist`);
        return true;
      });
  
    }

    // a concurrent snapshot of the same VNE is FAILED_PRECONDITION; an agent dying mid-snapshot aborts it.
    {
      h1.hold.add('snapshotBegin');
      const first = streamAll(client.CreateSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_PRECOPY', precopyDeadlineMs: 60_000 }));
      await until('h1 holding SnapshotBegin', () => h1.commands.at(-1)?.body === 'snapshotBegin', 5000);
      const second = await streamAll(client.CreateSnapshot({ vne: 'blue' }));
      assert.match(second.error?.details ?? '', /^a snapshot of VNE "blue" is already in progress \(.+\): one snapshot per VNE at a time$/);
      assert.equal(second.error?.code, grpc.status.FAILED_PRECONDITION);
      h1.close(); // its session ends: the Begin in flight fails
      const { events, error } = await first;
      assert.equal(error, undefined);
      const done = events.at(-1)?.done;
      assert.equal(done?.state, 'SNAPSHOT_STATE_ABORTED');
      assert.match(done?.error ?? '', /^agent h1 disconnected during SnapshotBegin \(session (ended by the agent|cancelled|closed)\) \[ERR_AGENT_DISCONNECTED\]$/);
      await until('SnapshotAbort on h2', () => h2.commands.at(-1)?.body === 'snapshotAbort', 5000);
      const { agents } = await unary<object, { agents: { id: string; state: string }[] }>(client, 'ListAgents', {});
      assert.deepEqual(agents.map((a) => [a.id, a.state]), [['h1', 'AGENT_STATE_DISCONNECTED'], ['h2', 'AGENT_STATE_CONNECTED']]);
      // The snapshot needs every agent: the VNE is degraded while h1 is away.
      const r = await streamAll(client.CreateSnapshot({ vne: 'blue' }));
      expectStatus(r.error, grpc.status.FAILED_PRECONDITION, 'ERR_FAILED_PRECONDITION', 'VNE "blue" is degraded: agent h1 (host of vm2) is disconnected; snapshots are refused until it is back; nothing was snapshotted');
      // h1's session comes back (the agent kept running, with its VMs) and receives the abort it
      // missed before anything else.
      const before = h1.running;
      h1 = new ScriptedAgent('h1', 6081, storeDir);
      for (const vm of before) h1.running.add(vm);
      await h1.connect(server.address);
      // ... then ConfigureVne at the VNE's generation and epoch (it re-attaches its VMs' ports),
      // and the VNE is RUNNING again by itself.
      await until('two commands on the new h1 session', () => h1.commands.length >= 2, 5000);
      assert.deepEqual(h1.commands.map((c) => [c.body, c.snapshotAbort?.snapshotId]), [['snapshotAbort', done?.id], ['configureVne', undefined]]);
      await until('VNE blue running again', async () => (await unary<object, { state: string }>(client, 'GetVne', { name: 'blue' })).state === 'VNE_STATE_RUNNING', 5000);
      assert.deepEqual(watched.filter((e) => e.agent === 'h1').map((e) => e.kind), ['agent.joined', 'agent.left', 'vne.degraded', 'agent.joined', 'vne.recovered']);
      assert.ok(watched.some((e) => e.kind === 'snapshot.aborted' && e.snapshotId === done?.id));
  
    }

    // a stopping coordinator aborts the snapshot in progress and tells the agents.
    {
      h2.hold.add('snapshotBegin');
      const first = streamAll(client.CreateSnapshot({ vne: 'blue', mode: 'SNAPSHOT_MODE_PRECOPY', precopyDeadlineMs: 60_000 }));
      await until('h2 holding SnapshotBegin', () => h2.commands.at(-1)?.body === 'snapshotBegin', 5000);
      const id = h2.commands.at(-1)?.snapshotBegin?.snapshotId;
      const t0 = Date.now();
      await server.stop();
      assert.ok(Date.now() - t0 < 1500, 'no wait for the forced shutdown: streams were ended');
      const { events } = await first;
      assert.equal(events.at(-1)?.done?.error, 'coordinator stopping [ERR_SNAPSHOT_ABORTED]');
      await until('SnapshotAbort on both agents', () => h1.commands.some((c) => c.snapshotAbort?.snapshotId === id) && h2.commands.some((c) => c.snapshotAbort?.snapshotId === id), 5000);
      // Reopen on the same catalog: everything is still there.
      server = new CoordinatorServer({ config: { listen: '127.0.0.1:0', insecurePlaintext: true, db: path.join(dir, 'catalog.db'), store: { kind: 'files', dir: storeDir } }, log: silentLogger() });
      await server.start();
      const c2 = new pkg.vnsnap.v1.CoordinatorService(server.address, grpc.credentials.createInsecure());
      const { snapshots } = await unary<object, { snapshots: { id: string; state: string }[] }>(c2, 'ListSnapshots', {});
      assert.deepEqual(snapshots.map((s) => s.state), ['SNAPSHOT_STATE_COMPLETE', 'SNAPSHOT_STATE_COMPLETE', 'SNAPSHOT_STATE_ABORTED', 'SNAPSHOT_STATE_ABORTED']);
      c2.close();
  
    }
  });
});

describe('vnsnap-coordinator main', function () {
  this.timeout(30_000);
  it('prints the ready line, serves, and exits 0 on SIGTERM', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-coord-main-'));
    try {
      const cfg = path.join(dir, 'c.json');
      fs.writeFileSync(cfg, JSON.stringify({ storeDir: path.join(dir, 'store'), deadAfterMs: 2000 }));
      const child = spawn(process.execPath, [path.join(__dirname, '..', '..', 'coordinator', 'main.js'), '--listen', '127.0.0.1:0', '--insecure-plaintext', '--db', path.join(dir, 'c.db'), '--config', cfg, '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
      const line = await new Promise<string>((resolve, reject) => {
        readline.createInterface({ input: child.stdout }).once('line', resolve);
        child.once('exit', (c) => reject(new Error(`exited ${c}`)));
      });
      const ready = JSON.parse(line) as { event: string; address: string };
      assert.equal(ready.event, 'ready');
      assert.match(ready.address, /^127\.0\.0\.1:\d+$/);
      const c = new pkg.vnsnap.v1.CoordinatorService(ready.address, grpc.credentials.createInsecure());
      assert.deepEqual(await unary(c, 'ListVnes', {}), { vnes: [] });
      c.close();
      const code = await new Promise<number | null>((resolve) => {
        child.once('exit', resolve);
        child.kill('SIGTERM');
      });
      assert.equal(code, 0);

      fs.writeFileSync(cfg, JSON.stringify({ listen: 7 }));
      const bad = spawn(process.execPath, [path.join(__dirname, '..', '..', 'coordinator', 'main.js'), '--config', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      bad.stderr.on('data', (d: Buffer) => (err += d.toString()));
      assert.equal(await new Promise((r) => bad.once('exit', r)), 1);
      assert.equal(err, `vnsnap-coordinator: config ${cfg}: "listen" must be a string [ERR_CONFIG]\n`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
