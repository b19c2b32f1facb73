/**
 * Issue 3, end to end: the real coordinator and three real agents (sim driver, real switches,
 * Geneve over a bridged veth underlay) as processes on namespaced hosts, driven only through
 * the `vnsnap` CLI (test/support/cluster.ts). Five sim VMs exchange sequence-numbered frames;
 * snapshots in both modes are checked from the store (a consistent cut, every in-flight frame
 * recorded exactly once), then restored onto the same and onto a different placement, and every
 * VM's received sequence numbers must continue exactly from its snapshot. Then bad input: unknown
 * ids, malformed requests, a tampered manifest, a manifest of a newer format, a tampered image —
 * each refused with nothing touched.
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { decodeManifest, encodeManifest } from '../../proto/artefacts/manifest';
import { Cluster, type CatalogSnapshot } from '../support/cluster';
import { continuityProblems, cutProblems, liveProblems, readStates, recordedFrames, type States } from '../sim/checks';
import { until } from '../support/wait';

const VNE = 'blue';
const VMS = ['a', 'b', 'c', 'd', 'e'];
const HOST: Record<string, string> = { a: 'h1', b: 'h1', c: 'h2', d: 'h2', e: 'h3' };
const MEMORY_MIB = 8;
const MIB: Record<string, number> = Object.fromEntries(VMS.map((v) => [v, MEMORY_MIB]));

function vneFile(dir: string): string {
  const f = path.join(dir, 'blue.json');
  const vms = VMS.map((name, i) => ({
    name,
    host: HOST[name],
    macs: [`52:54:00:e3:00:0${i + 1}`],
    driver: { sim: { memory_mib: MEMORY_MIB, dirty_rate_mib_s: 4, frame_rate_hz: 40, peers: VMS.filter((x) => x !== name) } },
  }));
  fs.writeFileSync(f, JSON.stringify({ name: VNE, vni: 3003, vms }, null, 2));
  return f;
}

interface SnapshotEvent {
  state?: string;
  note?: string;
  vm?: { vm: string; phase: string; phaseDone?: boolean };
  done?: CatalogSnapshot;
}

describe('end to end on namespaced hosts: coordinator + 3 agents (sim VMs, real switches) through the vnsnap CLI', function () {
  this.timeout(240_000);
  const c = new Cluster({ prefix: 'vnc1' });
  /** The first snapshot taken in each mode, for the its that restore or tamper with one. */
  const firstOf = new Map<string, CatalogSnapshot>();

  before(async function () {
    this.timeout(60_000);
    await c.start();
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(c.logTail(40));
  });

  after(async () => {
    await c.destroy();
  });

  async function snapshot(mode: 'precopy' | 'background'): Promise<CatalogSnapshot> {
    const t0 = Date.now();
    const r = await c.cliStream<SnapshotEvent>(['snapshot', 'create', VNE, '--mode', mode, '--description', `e2e ${mode}`]).done;
    assert.equal(r.code, 0, r.stderr);
    const done = r.events[r.events.length - 1]?.done;
    assert.ok(done, 'the stream ends with the final record');
    assert.equal(done.state, 'SNAPSHOT_STATE_COMPLETE');
    const states = r.events.filter((e) => e.state).map((e) => e.state);
    assert.deepEqual(states, ['SNAPSHOT_STATE_PRECOPY', 'SNAPSHOT_STATE_COMMITTING', 'SNAPSHOT_STATE_PERSISTING', 'SNAPSHOT_STATE_COMPLETE']);
    assert.deepEqual(await c.completeSnapshotProblems(done), []);
    assert.equal(done.lostFrames, 0);
    const { problems, inFlight } = cutProblems(await c.imageStates(done, MIB), await c.channelFrames(done), VMS, done.epoch);
    assert.deepEqual(problems, []);
    assert.equal(recordedFrames(done), inFlight);
    console.log(`      ${done.id} (${mode}): epoch ${done.epoch}, ${Date.now() - t0} ms, max pause ${Math.max(...done.vms.map((v) => v.pauseMs)).toFixed(1)} ms, ${inFlight} frames in flight at the cut, all recorded`);
    if (!firstOf.has(mode)) firstOf.set(mode, done);
    return done;
  }

  async function restore(s: CatalogSnapshot, place: Record<string, string>): Promise<number> {
    const args = ['restore', s.id, '--stop-running', ...Object.entries(place).flatMap(([vm, h]) => ['--place', `${vm}=${h}`])];
    const t0 = Date.now();
    const r = await c.cliStream<SnapshotEvent>(args).done;
    assert.equal(r.code, 0, r.stderr);
    // In place or moved, every image is verified while it loads: no separate validation read.
    assert.deepEqual(r.events.filter((e) => e.note?.startsWith('restore: validating')), []);
    const note = r.events.map((e) => e.note ?? '').find((n) => /recorded frames injected/.test(n)) ?? '';
    const m = /(\d+) recorded frames injected/.exec(note);
    assert.ok(m, `restore reports what it injected: ${note}`);
    console.log(`      restored ${s.id} in ${Date.now() - t0} ms onto ${JSON.stringify({ ...Object.fromEntries(VMS.map((v) => [v, HOST[v]])), ...place })}: ${m[1]} frames injected`);
    return Number(m[1]);
  }

  /**
   * Wait until every VM has sent to and received from every peer at least `n` frames beyond
   * `since` (a reading, or a snapshot's images): the network carries traffic past that point.
   */
  async function progressed(what: string, since: Record<string, { expected: Record<string, number>; sent: Record<string, number> }>, n = 1): Promise<void> {
    await until(
      what,
      async () => {
        const st = await readStates(c, VNE, VMS);
        return VMS.every((r) => VMS.every((p) => p === r || ((st[r]?.expected[p] ?? 0) >= (since[r]?.expected[p] ?? 0) + n && (st[r]?.sent[p] ?? 0) >= (since[r]?.sent[p] ?? 0) + n)));
      },
      { timeoutMs: 10_000, everyMs: 100 },
    );
  }

  async function defineAndStart(): Promise<void> {
    const def = await c.cliJson<{ name: string; state: string }>(['vne', 'define', vneFile(c.dir)]);
    assert.equal(def.state, 'VNE_STATE_DEFINED');
    const started = await c.cliJson<{ vne: { state: string; placement: Record<string, string> } }>(['vne', 'start', VNE]);
    assert.equal(started.vne.state, 'VNE_STATE_RUNNING');
    assert.deepEqual(started.vne.placement, HOST);
    await until(
      'traffic between every pair',
      async () => {
        const st = await readStates(c, VNE, VMS);
        return VMS.every((r) => VMS.every((s) => s === r || (st[r]?.expected[s] ?? 0) > 20));
      },
      { everyMs: 100 },
    );
  }

  /** Each it starts from the VNE running; defines and starts it if no earlier it did. */
  async function running(): Promise<void> {
    const { vnes } = await c.cliJson<{ vnes: { name: string }[] }>(['vne', 'list']);
    if (!vnes.some((v) => v.name === VNE)) await defineAndStart();
  }

  /** The first snapshot taken in `mode`, taken now if no earlier it took one. */
  async function snapshotIn(mode: 'precopy' | 'background'): Promise<CatalogSnapshot> {
    await running();
    return firstOf.get(mode) ?? (await snapshot(mode));
  }

  async function trafficOk(label: string, since?: States): Promise<States> {
    const r = await liveProblems(c, VNE, VMS, since);
    assert.deepEqual(r.problems, [], label);
    return r.states;
  }

  it('defines and starts the VNE through the CLI; the VMs exchange frames across the three hosts', async () => {
    await defineAndStart();
    const before = await trafficOk('before any snapshot');
    await progressed('traffic still flowing', before);
    await trafficOk('still flowing', before);
  });

  it('snapshots in precopy and background mode: consistent cuts, every in-flight frame recorded once, artefacts durable', async () => {
    await running();
    await snapshot('precopy');
    const mid = await trafficOk('between the snapshots');
    await snapshot('background');
    await progressed('traffic after both snapshots', mid);
    await trafficOk('after both snapshots', mid);
    assert.deepEqual(await c.consistencyProblems(VNE), []);
  });

  it('restore onto the same hosts: every VM continues exactly from its snapshot, recorded frames delivered once', async () => {
    const s = await snapshotIn('precopy');
    await progressed('the running VMs well past the snapshot', await c.imageStates(s, MIB), 5);
    const injected = await restore(s, {});
    assert.equal(injected, recordedFrames(s));
    await progressed(`traffic after restoring ${s.id}`, await c.imageStates(s, MIB), 3);
    const now = await trafficOk(`after restoring ${s.id}`);
    assert.deepEqual(continuityProblems(now, await c.imageStates(s, MIB), VMS), []);
    assert.deepEqual(await c.consistencyProblems(VNE), []);
  });

  // One it with the snapshot of the moved VNE: that snapshot needs the move before it.
  it('restore onto a different placement (every VM moved): continues exactly, old instances gone; a snapshot of the moved VNE is consistent too', async () => {
    const s = await snapshotIn('background');
    const place = { a: 'h2', b: 'h3', c: 'h1', d: 'h3', e: 'h1' };
    const injected = await restore(s, place);
    assert.equal(injected, recordedFrames(s));
    const vne = await c.cliJson<{ placement: Record<string, string>; generation: number; epoch: number }>(['vne', 'show', VNE]);
    assert.deepEqual(vne.placement, place);
    assert.equal(vne.epoch, s.epoch);
    await progressed(`traffic after restoring ${s.id} elsewhere`, await c.imageStates(s, MIB), 3);
    const now = await trafficOk(`after restoring ${s.id} elsewhere`);
    assert.deepEqual(continuityProblems(now, await c.imageStates(s, MIB), VMS), []);
    assert.deepEqual(await c.consistencyProblems(VNE), []);

    // A snapshot of the moved VNE is consistent too.
    await snapshot('precopy');
    assert.deepEqual(await c.consistencyProblems(VNE), []);
  });

  // ---- bad input ------------------------------------------------------------------------

  function errorOf(r: { stderr: string }): { code: string; exitCode: number } {
    return (JSON.parse(r.stderr.trim().split('\n').pop() as string) as { error: { code: string; exitCode: number } }).error;
  }

  it('unknown VNE, snapshot, VM and agent ids: NOT_FOUND / INVALID_ARGUMENT with the CLI exit codes, nothing changes', async () => {
    const s0 = await snapshotIn('precopy');
    const cases: [string[], number, string][] = [
      [['vne', 'show', 'nope'], 3, 'ERR_NOT_FOUND'],
      [['vne', 'start', 'nope'], 3, 'ERR_NOT_FOUND'],
      [['snapshot', 'create', 'nope'], 3, 'ERR_NOT_FOUND'],
      [['snapshot', 'show', 'snap-nope'], 3, 'ERR_NOT_FOUND'],
      [['snapshot', 'delete', 'snap-nope'], 3, 'ERR_NOT_FOUND'],
      [['restore', 'snap-nope'], 3, 'ERR_NOT_FOUND'],
      [['restore', s0.id, '--stop-running', '--place', 'zz=h1'], 2, 'ERR_INVALID_ARGUMENT'],
      [['restore', s0.id, '--stop-running', '--place', 'a=h9'], 3, 'ERR_NOT_FOUND'],
    ];
    for (const [args, exit, code] of cases) {
      const r = await c.cli([...args, '--json']);
      assert.equal(r.code, exit, `vnsnap ${args.join(' ')}: ${r.stderr}`);
      assert.equal(errorOf(r).code, code, `vnsnap ${args.join(' ')}`);
    }
    assert.deepEqual(await c.consistencyProblems(VNE), []);
  });

  function rawCall(method: string, hex: string): Promise<{ ok: boolean; code?: string; details?: string; vnsnapErrorCode?: string | null }> {
    return new Promise((resolve, reject) => {
      const p = spawn('ip', ['netns', 'exec', c.topo.ns('ul'), process.execPath, path.resolve(__dirname, '../support/raw-grpc.js'), c.coordinatorAddress, method, hex], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, VNSNAP_CA: c.operator.ca, VNSNAP_CERT: c.operator.cert, VNSNAP_KEY: c.operator.key },
      });
      let out = '';
      let err = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (err += d.toString()));
      p.on('error', reject);
      p.on('close', () => {
        try {
          resolve(JSON.parse(out) as { ok: boolean });
        } catch {
          reject(new Error(`raw-grpc printed no JSON: ${out} ${err}`));
        }
      });
    });
  }

  it('malformed requests: bytes that are not protobuf, and protobuf that is not a valid request, are errors, never a crash', async () => {
    await running();
    const S = '/vnsnap.v1.CoordinatorService';
    // Not protobuf at all (a truncated length-delimited field, an invalid wire type).
    for (const [m, hex] of [
      ['DefineVne', '0aff'],
      ['GetSnapshot', 'ffffffffffff'],
      ['RestoreSnapshot', '0a05ab'],
      ['CreateSnapshot', '0f'],
    ] as const) {
      const r = await rawCall(`${S}/${m}`, hex);
      assert.equal(r.ok, false, `${m} ${hex}`);
      // protobufjs decodes some truncated strings leniently ("0a05ab" → id "\xab"): then the
      // coordinator answers for that id (NOT_FOUND); otherwise the request is refused outright.
      assert.ok(['INTERNAL', 'INVALID_ARGUMENT', 'NOT_FOUND'].includes(r.code as string), `${m} ${hex}: ${JSON.stringify(r)}`);
    }
    // Valid protobuf, invalid requests: a VNE named "x" with a 25-bit VNI and no VMs; an empty snapshot id.
    const bigVni = await rawCall(`${S}/DefineVne`, '0a080a017810808080' + '10');
    assert.equal(bigVni.code, 'INVALID_ARGUMENT', JSON.stringify(bigVni));
    assert.equal(bigVni.vnsnapErrorCode, 'ERR_INVALID_ARGUMENT');
    const empty = await rawCall(`${S}/GetSnapshot`, '');
    assert.equal(empty.code, 'INVALID_ARGUMENT', JSON.stringify(empty));
    const noMethod = await rawCall(`${S}/NoSuchMethod`, '');
    assert.equal(noMethod.code, 'UNIMPLEMENTED');
    // The coordinator is alive and unchanged.
    const list = await c.cliJson<{ vnes: { name: string }[] }>(['vne', 'list']);
    assert.deepEqual(list.vnes.map((v) => v.name), [VNE]);
    assert.deepEqual(await c.consistencyProblems(VNE), []);
  });

  /**
   * Restore after `tamper` changed the store (it returns its undo): refused with `exit`/`code`,
   * nothing touched; the store is put back.
   */
  async function refusedRestore(s: CatalogSnapshot, tamper: () => Promise<() => unknown>, exit: number, code: string, message: RegExp, place: Record<string, string> = {}): Promise<void> {
    const vneBefore = await c.cliJson<{ generation: number; epoch: number; placement: Record<string, string> }>(['vne', 'show', VNE]);
    const before = await readStates(c, VNE, VMS);
    const undo = await tamper();
    try {
      const r = await c.cli(['restore', s.id, '--stop-running', '--json', ...Object.entries(place).flatMap(([vm, h]) => ['--place', `${vm}=${h}`])]);
      assert.equal(r.code, exit, r.stderr);
      assert.equal(errorOf(r).code, code);
      assert.match(r.stderr, message);
    } finally {
      await undo();
    }
    // Nothing touched: same generation, epoch and placement, the same instances still running on.
    const vneAfter = await c.cliJson<{ generation: number; epoch: number; placement: Record<string, string> }>(['vne', 'show', VNE]);
    assert.deepEqual(vneAfter, { ...vneAfter, generation: vneBefore.generation, epoch: vneBefore.epoch, placement: vneBefore.placement });
    const after = await trafficOk('after a refused restore', before);
    for (const vm of VMS) assert.ok((after[vm]?.memWrites ?? 0) > (before[vm]?.memWrites ?? 0), `${vm} kept running (not replaced)`);
    assert.deepEqual(await c.consistencyProblems(VNE), []);
  }

  // The store is content-addressed: tampering is a byte changed in a chunk file of the manifest
  // or the image (chunks/xx/<sha>), which the store itself finds on reading.
  it('a tampered manifest is refused (its chunk fails its SHA-256), nothing touched', async () => {
    const s = await snapshotIn('precopy');
    await refusedRestore(s, () => c.tamperChunk(s.manifestPath, (b) => (b[b.length - 70] = (b[b.length - 70] as number) ^ 0x40)), 1, 'ERR_CHECKSUM', /checksum|SHA-256|tamper|corrupt/i);
  });

  it('a manifest of a newer major format version is refused with a clear error, nothing touched', async () => {
    const s = await snapshotIn('precopy');
    const store = await c.openStore();
    const original = await store.get(s.manifestPath);
    const { body } = decodeManifest(original);
    await refusedRestore(
      s,
      async () => {
        await store.put(s.manifestPath, encodeManifest(body, { major: 2, minor: 0 }));
        return () => store.put(s.manifestPath, original);
      },
      1,
      'ERR_UNSUPPORTED_VERSION',
      /format.*2|version/i,
    );
  });

  it('a tampered memory image is found while loading beside the running VMs, before anything is touched (CHECKSUM, naming the chunk)', async () => {
    const s = await snapshotIn('precopy');
    const mem = s.artefacts.find((a) => a.kind === 'ARTEFACT_KIND_MEMORY' && a.owner === 'c');
    assert.ok(mem);
    await refusedRestore(s, () => c.tamperChunk(mem.path, (b) => (b[100] = (b[100] as number) ^ 1)), 1, 'ERR_CHECKSUM', /c\.mem: chunk \d+ of \d+ \(\w+\) is corrupt/);
  });

  it('a tampered memory image is found while loading on the new hosts of a restore that moves every VM, before any VM is stopped (CHECKSUM, naming the chunk)', async () => {
    const s = await snapshotIn('precopy');
    const mem = s.artefacts.find((a) => a.kind === 'ARTEFACT_KIND_MEMORY' && a.owner === 'c');
    assert.ok(mem);
    const vne = await c.cliJson<{ placement: Record<string, string> }>(['vne', 'show', VNE]);
    const hosts = ['h1', 'h2', 'h3'];
    const moved = Object.fromEntries(VMS.map((vm) => [vm, hosts[(hosts.indexOf(vne.placement[vm] as string) + 1) % hosts.length] as string]));
    await refusedRestore(s, () => c.tamperChunk(mem.path, (b) => (b[100] = (b[100] as number) ^ 1)), 1, 'ERR_CHECKSUM', /c\.mem: chunk \d+ of \d+ \(\w+\) is corrupt/, moved);
  });
});
