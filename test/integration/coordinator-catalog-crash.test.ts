/**
 * Crash safety of the catalog now that its commits do not fsync on the event loop: the real
 * coordinator process (dist/coordinator/main.js) and a real in-process Agent (sim driver, UDP
 * tunnel on 127.0.0.1, local store) take a snapshot; the instant the client receives the
 * COMPLETE record the coordinator is killed with SIGKILL; a coordinator restarted on the same
 * catalog file lists that snapshot COMPLETE with its artefacts, and the VNE at its epoch.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import * as grpc from '@grpc/grpc-js';
import { Agent } from '../../agent/agent';
import { loadVnsnap } from '../../proto/core/grpc';
import type { CoordinatorServiceClient } from '../../proto/gen/vnsnap/v1/CoordinatorService';
import type { Snapshot__Output } from '../../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotEvent__Output } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import type { Vne__Output } from '../../proto/gen/vnsnap/v1/Vne';
import { SimDriver } from '../sim/driver';
import { once } from '../support/wait';

const pkg = loadVnsnap();

function startCoordinator(dir: string): Promise<{ child: ChildProcess; address: string }> {
  const child = spawn(process.execPath, [path.join(__dirname, '..', '..', 'coordinator', 'main.js'), '--listen', '127.0.0.1:0', '--insecure-plaintext', '--db', path.join(dir, 'catalog.db'), '--store-dir', path.join(dir, 'store'), '--log-level', 'warn'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  return new Promise((resolve, reject) => {
    readline.createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', (line) => {
      const m = JSON.parse(line) as { event?: string; address?: string };
      if (m.event === 'ready' && m.address) resolve({ child, address: m.address });
      else reject(new Error(`unexpected first line: ${line}`));
    });
    child.once('exit', (c, s) => reject(new Error(`the coordinator exited (${c ?? s}) before it was ready: ${err}`)));
  });
}

function unary<T>(c: CoordinatorServiceClient, method: string, req: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    const fn = (c as unknown as Record<string, (r: unknown, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: T) => void) => void>)[method] as (r: unknown, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: T) => void) => void;
    fn.call(c, req, { deadline: Date.now() + 30_000 }, (e, r) => (e ? reject(new Error(`${method}: ${e.details}`)) : resolve(r as T)));
  });
}

describe('catalog crash safety (real coordinator process, SIGKILL after a reported-complete snapshot)', function () {
  this.timeout(90_000);
  const children: ChildProcess[] = [];
  let agent: Agent | undefined;
  let dir = '';
  const clients: CoordinatorServiceClient[] = [];

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-catcrash-'));
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await agent?.stop().catch(() => undefined);
    agent = undefined;
    for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the snapshot reported COMPLETE is COMPLETE after a restart, with its artefacts and the VNE at its epoch', async () => {
    const first = await startCoordinator(dir);
    children.push(first.child);
    agent = new Agent({
      id: 'catcrash-h1',
      coordinator: first.address,
      tunnel: { address: '127.0.0.1', port: 0 },
      storeConfig: { kind: 'local', dir: path.join(dir, 'store') },
      drivers: [new SimDriver({ tickMs: 50 })],
      hostname: 'catcrash-h1',
    });
    const connected = once(agent, 'connected', 'the agent connected', 20_000);
    await agent.start();
    await connected;
    const client = new pkg.vnsnap.v1.CoordinatorService(first.address, grpc.credentials.createInsecure()) as unknown as CoordinatorServiceClient;
    clients.push(client);
    const vm = { name: 'vm0', host: 'catcrash-h1', macs: ['52:54:00:0c:0c:01'], driver: { sim: { memoryMib: 1, dirtyRateMibS: 0, frameRateHz: 0, peers: [] } } };
    await unary(client, 'DefineVne', { vne: { name: 'catcrash', vni: 3131, vms: [vm] } });
    await unary(client, 'StartVne', { name: 'catcrash' });

    // Snapshot; SIGKILL in the same turn as the COMPLETE record arrives.
    const done = await new Promise<Snapshot__Output>((resolve, reject) => {
      const call = client.CreateSnapshot({ vne: 'catcrash', mode: 'SNAPSHOT_MODE_BACKGROUND' });
      call.on('data', (e: SnapshotEvent__Output) => {
        if (e.event === 'done' && e.done) {
          first.child.kill('SIGKILL');
          resolve(e.done);
        }
      });
      call.on('error', (e: grpc.ServiceError) => reject(new Error(e.details)));
    });
    assert.equal(done.state, 'SNAPSHOT_STATE_COMPLETE');
    if (first.child.exitCode === null && first.child.signalCode === null) await once(first.child, 'exit', 'the killed coordinator exited', 10_000);
    assert.equal(first.child.signalCode, 'SIGKILL');

    const second = await startCoordinator(dir);
    children.push(second.child);
    const again = new pkg.vnsnap.v1.CoordinatorService(second.address, grpc.credentials.createInsecure()) as unknown as CoordinatorServiceClient;
    clients.push(again);
    const rec = await unary<Snapshot__Output>(again, 'GetSnapshot', { id: done.id });
    assert.equal(rec.state, 'SNAPSHOT_STATE_COMPLETE');
    assert.equal(rec.manifestPath, done.manifestPath);
    assert.deepEqual(rec.artefacts.map((a) => a.path).sort(), done.artefacts.map((a) => a.path).sort());
    assert.ok(rec.artefacts.length >= 1);
    const vne = await unary<Vne__Output>(again, 'GetVne', { name: 'catcrash' });
    assert.equal(vne.epoch, done.epoch);
    second.child.kill('SIGTERM');
    await once(second.child, 'exit', 'the restarted coordinator exited', 15_000);
  });
});
