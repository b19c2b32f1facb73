/**
 * Issue 3: the coordinator's gRPC API from a gRPC implementation other than grpc-js, against the
 * REAL thing: vnsnap-coordinator and two vnsnap-agents (sim driver, real switches) as processes
 * on namespaced hosts (test/support/cluster.ts, hosts h1 and h2 as test/interop/sim-vne.json
 * wants them).
 *
 * Runs test/interop/interop_check.py with Debian's python3-grpcio (the C-core stack) and stubs it
 * generates from proto/ with grpc_tools.protoc, inside the underlay namespace: health,
 * reflection, ListVnes, DefineVne+StartVne of test/interop/sim-vne.json (real sim VMs start on
 * the agents), a CreateSnapshot stream read to its end (a real snapshot: its manifest and
 * artefacts are checked in the store), and the error mapping (NOT_FOUND with the vnsnap error
 * code in the trailers), all over mutual TLS (grpc.ssl_channel_credentials with an operator's
 * certificate of the cluster's CA). The `vnsnap` CLI is then pointed at the same coordinator. Skipped when
 * python3-grpcio / python3-grpc-tools are absent. (The fake coordinator,
 * test/interop/fake-coordinator.ts, is no longer needed here; docs/cli.md's examples use it.)
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { runInNs } from '../bench/proc';
import { Cluster, type CatalogSnapshot } from '../support/cluster';

const REPO = path.resolve(__dirname, '../../..');
const CHECK = path.join(REPO, 'test/interop/interop_check.py');
const VNE_FILE = path.join(REPO, 'test/interop/sim-vne.json');

interface Report {
  ok: boolean;
  implementation: string;
  transport?: string;
  problems: string[];
  warnings?: string[];
  health?: Record<string, string>;
  reflection?: { api: string; services: string[]; file?: string; methods: string[]; methodsMatchProto: boolean; descriptorsValid?: boolean; fieldMismatches?: number };
  defineVne?: { name: string; state: string };
  listVnes?: { vnes?: { name: string }[] };
  createSnapshot?: { vne: string; events: number; eventKinds: Record<string, number>; states: string[]; final: { id: string; state: string; vms?: { name: string }[] } | null } | null;
  errors?: { status: string; details: string; vnsnapErrorCode: string | null };
}

function findPython(): string | undefined {
  for (const p of [process.env.VNSNAP_PYTHON, '/usr/bin/python3', 'python3']) {
    if (!p) continue;
    const r = spawnSync(p, ['-c', 'import grpc, grpc_tools.protoc'], { stdio: 'ignore' });
    if (r.status === 0) return p;
  }
  return undefined;
}

describe('interop: the real coordinator (with real agents) from Python grpcio (C core)', function () {
  this.timeout(180_000);
  let python: string | undefined;
  let cluster: Cluster | undefined;
  let report: Report;
  let exitCode: number | null;

  before(async function () {
    python = findPython();
    if (!python) {
      console.log('      (skipped: needs Debian python3-grpcio and python3-grpc-tools: apt-get install -y python3-grpcio python3-grpc-tools)');
      this.skip();
    }
    cluster = new Cluster({ prefix: 'vnc4', hosts: ['h1', 'h2'] });
    await cluster.start();
    const r = await runInNs(cluster.topo.ns('ul'), python as string, [CHECK, '--address', cluster.coordinatorAddress, '--define', VNE_FILE, '--timeout', '15', '--snapshot-timeout', '120', ...cluster.tlsArgs()], { timeoutMs: 600_000 });
    exitCode = r.code;
    try {
      report = JSON.parse(r.stdout) as Report;
    } catch {
      throw new Error(`interop_check.py printed no JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
    }
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && cluster) console.log(cluster.logTail(30));
  });

  after(async () => {
    await cluster?.destroy();
  });

  it('grpc.health.v1 Check over mutual TLS: SERVING for the server and for vnsnap.v1.CoordinatorService', () => {
    assert.match(report.implementation, /^grpcio \d+\.\d+/);
    assert.equal(report.transport, 'mutual TLS');
    assert.deepEqual(report.health, { '': 'SERVING', 'vnsnap.v1.CoordinatorService': 'SERVING' });
  });

  it('server reflection lists the vnsnap services and resolves the CoordinatorService file with the methods of proto/', () => {
    const r = report.reflection;
    assert.ok(r, JSON.stringify(report.problems));
    assert.match(r.api, /^grpc\.reflection\.v1(alpha)?$/);
    assert.ok(r.services.includes('vnsnap.v1.CoordinatorService'), r.services.join(','));
    assert.ok(r.file, 'a file descriptor holding the service');
    assert.ok(r.methods.includes('CreateSnapshot') && r.methods.includes('ListVnes'));
    assert.equal(r.methodsMatchProto, true);
  });

  // proto/core/grpc.ts serves protoc-equivalent descriptors (snake_case fields, `<Field>Entry`
  // map entries): a strict runtime must accept every one.
  it('reflection descriptors are accepted by a strict protobuf runtime (grpcurl, Python, Go)', () => {
    const reflectionProblems = report.problems.filter((p) => p.startsWith('reflection:'));
    assert.deepEqual(reflectionProblems, []);
    assert.equal(report.reflection?.descriptorsValid, true);
  });

  it('DefineVne + StartVne from proto3 JSON parsed by protobuf-python, and ListVnes', () => {
    assert.deepEqual(report.defineVne, { name: 'green', state: 'VNE_STATE_RUNNING' });
    assert.ok(report.listVnes?.vnes?.some((v) => v.name === 'green'));
  });

  it('CreateSnapshot: the stream read to its end, ending with the COMPLETE record', () => {
    const s = report.createSnapshot;
    assert.ok(s, JSON.stringify(report.problems));
    assert.equal(s.vne, 'green');
    assert.equal(s.states[0], 'SNAPSHOT_STATE_PRECOPY');
    assert.equal(s.states[s.states.length - 1], 'SNAPSHOT_STATE_COMPLETE');
    assert.equal(s.eventKinds.done, 1);
    assert.ok((s.eventKinds.vm ?? 0) > 0);
    assert.equal(s.final?.state, 'SNAPSHOT_STATE_COMPLETE');
    assert.deepEqual(s.final?.vms?.map((v) => v.name).sort(), ['a', 'b']);
  });

  it('errors: NOT_FOUND with the vnsnap error code in the trailers', () => {
    assert.equal(report.errors?.status, 'NOT_FOUND');
    assert.equal(report.errors?.vnsnapErrorCode, 'ERR_NOT_FOUND');
  });

  it('nothing else failed', () => {
    assert.deepEqual(report.problems, []);
    assert.equal(exitCode, 0);
  });

  it('the snapshot Python took is real: manifest and artefacts in the store, the VMs still running on the agents', async () => {
    const c = cluster as Cluster;
    const s = await c.cliJson<CatalogSnapshot>(['snapshot', 'show', report.createSnapshot?.final?.id as string]);
    assert.equal(s.state, 'SNAPSHOT_STATE_COMPLETE');
    assert.deepEqual(await c.completeSnapshotProblems(s), []);
    assert.deepEqual(await c.consistencyProblems('green'), []);
  });

  it('the vnsnap CLI sees what Python did (same coordinator)', async () => {
    const r = await (cluster as Cluster).cli(['snapshot', 'list', '--vne', 'green', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const snaps = (JSON.parse(r.stdout) as { snapshots: { id: string; state: string; description: string }[] }).snapshots;
    assert.deepEqual(
      snaps.map((s) => [s.id, s.state, s.description]),
      [[report.createSnapshot?.final?.id, 'SNAPSHOT_STATE_COMPLETE', 'interop check (python grpcio)']],
    );
  });
});
