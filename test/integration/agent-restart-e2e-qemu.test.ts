/**
 * Issue 12, agent side, with real VMs: the VMs outlive their agent. Two namespaced hosts of
 * test/support/cluster.ts (`"drivers": ["qemu"]`, real coordinator and agents, mutual TLS), one
 * TCG test guest on each (docs/guest.md) with byte-checked TCP streams both ways across the
 * overlay. The agent of h1 is killed (SIGKILL, then in a second round SIGTERM), kept down a few
 * seconds, and started again (after the SIGTERM: an upgrade, a copy of the build with a newer
 * version in another directory, which the coordinator then lists):
 *   - the QEMU process of its VM is the same (same pid), the guest the same run (same nonce);
 *   - every stream continues with 0 errors and 0 reconnects (frames lost while the agent was
 *     down are retransmitted by TCP), and moves again without any command;
 *   - the VNE reads RUNNING.
 * Then: the agent killed while its VM sits paused in a snapshot's pre-switchover (the cut; made
 * over QMP while the agent is down) — the new agent cancels the stream and resumes the VM;
 * snapshots (both modes) of the adopted VMs and a restore replacing them pass the stream checks
 * (and the restored VMs are adopted in the rounds after); the same with the coordinator also
 * restarted while the agent is down; a VM killed while its agent is down
 * is reported dead when the agent returns (VNE FAILED), the other host's VM undisturbed.
 * The outage each guest sees (the longest gap in a stream's received bytes, sampled over the
 * guests' status channels) is printed per round, and measured over VNSNAP_RESTART_ROUNDS (3)
 * rounds of SIGKILL + immediate restart.
 *
 * About 40 s here (two TCG guests boot) and needs root: runs with VNSNAP_E2E_QEMU=1
 * (`npm run test:e2e-qemu`, whose filter matches this file's name).
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { GuestImage } from '../guest/qemu-guest';
import { qemuE2eHooks } from '../support/qemu-e2e-hooks';
import { QmpClient } from '../../agent/drivers/qemu/qmp';
import { Cluster } from '../support/cluster';
import { RestartVne, streamProblems as problems } from '../support/restart-vne';
import { sleep, until } from '../support/wait';
import { QEMU_WORKDIR } from '../support/qemu-vne';
import { tapTag } from '../../agent/drivers/qemu/leftovers';
import { dataPathVxlanRx } from '../support/dp-vxlan';

const ENABLED = process.env.VNSNAP_E2E_QEMU === '1';
/** The checkout whose dist/ runs the tests. */
const ROOT = path.resolve(__dirname, '../../..');

function packageVersion(root: string): string {
  return (JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string }).version;
}

/**
 * A newer build, as an upgrade installs it: a copy of this build (dist/ without the tests, the
 * .proto files, the native addon, the in-kernel data path's object) in another directory, its package.json's version one patch
 * level higher; node_modules is linked. `dataPath: false`: without the data path's object (a
 * build made where clang or libbpf-dev was missing). Returns its agent entry point and version.
 */
function newerBuild(dir: string, o: { dataPath?: boolean } = {}): { main: string; version: string } {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(path.join(dir, 'dist'), { recursive: true });
  for (const d of ['agent', 'proto', 'switch']) fs.cpSync(path.join(ROOT, 'dist', d), path.join(dir, 'dist', d), { recursive: true });
  fs.cpSync(path.join(ROOT, 'proto', 'vnsnap'), path.join(dir, 'proto', 'vnsnap'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'build', 'Release'), { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'build', 'Release', 'vnsnap_io.node'), path.join(dir, 'build', 'Release', 'vnsnap_io.node'));
  if (o.dataPath !== false && fs.existsSync(path.join(ROOT, 'build', 'bpf'))) fs.cpSync(path.join(ROOT, 'build', 'bpf'), path.join(dir, 'build', 'bpf'), { recursive: true });
  fs.symlinkSync(fs.realpathSync(path.join(ROOT, 'node_modules')), path.join(dir, 'node_modules'));
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const [maj, min, patch] = pkg.version.split(/[.-]/).map(Number);
  pkg.version = `${maj}.${min}.${(patch ?? 0) + 1}`;
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(pkg, null, 2) + '\n');
  return { main: path.join(dir, 'dist', 'agent', 'main.js'), version: pkg.version };
}
const ROUNDS = Number(process.env.VNSNAP_RESTART_ROUNDS ?? '3');
const VNE = 'vnar';
/** How long the agent stays down in the restart rounds (the issue: "keep it down 5 s"). */
const AGENT_DOWN_MS = 5000;
const v = new RestartVne(VNE);
const qemuOf = (vm: string): { dir: string; pid: number } | undefined => v.qemuOf(vm);
const statuses = (): ReturnType<RestartVne['statuses']> => v.statuses();
(ENABLED ? describe : describe.skip)('VMs outlive the agent: SIGKILL/SIGTERM and restart of an agent under stream load (2 hosts, 2 TCG guests)', function () {
  this.timeout(10 * 60_000);
  let c!: Cluster;
  let image: GuestImage;
  const figures: string[] = [];

  qemuE2eHooks({
    prefix: VNE,
    vne: VNE,
    logLines: 40,
    killQemus: () => v.killQemus(),
    ready: (cl, img) => {
      c = cl;
      image = img;
    },
    beforeTeardown: () => {
      if (figures.length) console.log(`      ${figures.join('\n      ')}`);
    },
  });

  it('starts the VNE; both streams run across the hosts', async () => {
    const file = v.writeFile(c.dir, image);
    await c.cliJson(['vne', 'define', file]);
    const started = await c.cliJson<{ vne: { state: string } }>(['vne', 'start', VNE]);
    assert.equal(started.vne.state, 'VNE_STATE_RUNNING');
    await until('both streams connected and moving', async () => {
      const st = await statuses().catch(() => undefined);
      return st && v.streamsUp(st) ? st : undefined;
    }, { timeoutMs: 180_000, everyMs: 2000 });
  });

  for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
    // SIGTERM is the upgrade: the agent started again is a copy of the build with a newer version.
    const upgrade = signal === 'SIGTERM';
    it(`${signal} of h1's agent, down 5 s (the issue's figure), start ${upgrade ? 'a newer build' : 'it again'}: same QEMU pid, streams continue with 0 errors and 0 reconnects, VNE RUNNING${upgrade ? ', the coordinator sees the new version' : ''}`, async () => {
      const pid = qemuOf('a')?.pid;
      assert.ok(pid, 'the QEMU of a runs');
      // Detached: QEMU leads its own session and process group (fields 5 and 6 of /proc/PID/stat).
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
      assert.deepEqual([Number(stat[2]), Number(stat[3])], [pid, pid], 'QEMU is its own process group and session leader');
      const before = await statuses();
      const sampler = v.outageSampler();
      const t0 = Date.now();
      await c.kill('h1', signal);
      // With the in-kernel data path (the default where it runs) a stopped agent leaves it
      // carrying, whatever the signal: the VMs' frames keep crossing h1's VXLAN device.
      const vx0 = dataPathVxlanRx(c.topo, 'h1');
      assert.equal(qemuOf('a')?.pid, pid, 'the VM outlived its agent');
      const next = upgrade ? newerBuild(path.join(c.dir, `${VNE}-next-build`)) : undefined;
      await sleep(AGENT_DOWN_MS); // kept: the agent stays down this long (the outage under test)
      assert.equal(qemuOf('a')?.pid, pid, 'the VM runs while its agent is down');
      const carried = vx0 === undefined ? undefined : (dataPathVxlanRx(c.topo, 'h1') ?? 0) - vx0;
      await c.startAgent('h1', true, next?.main);
      await until('every stream moves again', async () => {
        const st = await statuses();
        return problems('', before, st).length === 0 ? st : undefined;
      }, { timeoutMs: 60_000, everyMs: 500 });
      const back = Date.now() - t0;
      const mid = await statuses();
      await sleep(3000); // kept: the window over which every stream must keep moving and none break
      const outage = await sampler.stop();
      assert.deepEqual(problems(`after ${signal}`, mid, await statuses()), []);
      assert.deepEqual(problems(`across ${signal}`, before, await statuses()), []);
      assert.equal(qemuOf('a')?.pid, pid, 'the same QEMU process');
      const vne = await c.cliJson<{ state: string }>(['vne', 'show', VNE]);
      assert.equal(vne.state, 'VNE_STATE_RUNNING');
      const agents = (await c.cliJson<{ agents: { id: string; version: string }[] }>(['agents'])).agents;
      assert.equal(agents.find((x) => x.id === 'h1')?.version, next?.version ?? packageVersion(ROOT), 'the version h1 reports');
      figures.push(`${signal}: agent down ${AGENT_DOWN_MS / 1000} s; streams moving again ${(back / 1000).toFixed(1)} s after the kill; longest gap in received bytes ${outage} ms${carried === undefined ? '' : `; VXLAN packets h1 received while its agent was down ${carried}`}`);
      if (carried !== undefined) {
        assert.ok(carried > 100, `the kernel carried while h1's agent was down: ${carried} VXLAN packets`);
        assert.ok(outage < AGENT_DOWN_MS, `the guests' longest gap (${outage} ms) is shorter than the agent's absence`);
      }
    });
  }

  it('SIGKILL in the middle of a cut (the VM paused in a snapshot\'s pre-switchover): the new agent cancels the stream and resumes the VM; streams intact', async () => {
    const pid = qemuOf('a')?.pid;
    const before = await statuses();
    await c.kill('h1', 'SIGKILL');
    // What the dead agent left: a pre-copy migration held paused before the switchover (the cut).
    const q = await QmpClient.connect(path.join(qemuOf('a')?.dir as string, 'qmp.sock'), { timeoutMs: 10_000 });
    try {
      await q.execute('migrate-set-capabilities', { capabilities: [{ capability: 'pause-before-switchover', state: true }, { capability: 'events', state: true }] });
      const held = q.waitEvent('MIGRATION', (d) => d.status === 'pre-switchover', 60_000);
      await q.execute('migrate', { uri: 'exec:cat > /dev/null' });
      await held;
      assert.equal((await q.execute<{ status: string }>('query-status')).status, 'finish-migrate');
    } finally {
      q.close();
    }
    await c.startAgent('h1');
    await until('every stream moves again', async () => (problems('', before, await statuses()).length === 0 ? true : undefined), { timeoutMs: 60_000, everyMs: 500 });
    assert.equal(qemuOf('a')?.pid, pid);
    const mid = await statuses();
    await sleep(3000); // kept: the window over which every stream must keep moving
    assert.deepEqual(problems('after the cut was cut short', mid, await statuses()), []);
    assert.equal((await c.cliJson<{ state: string }>(['vne', 'show', VNE])).state, 'VNE_STATE_RUNNING');
  });

  it('after the adoptions, a snapshot of the VNE and a restore of it (--stop-running replaces the adopted VM) pass the stream checks', async () => {
    const oldPid = qemuOf('a')?.pid;
    for (const mode of ['precopy', 'background']) {
      const r = await c.cliStream<{ done?: { id: string; state: string; error: string } }>(['snapshot', 'create', VNE, '--mode', mode]).done;
      assert.equal(r.code, 0, r.stderr);
      const done = r.events[r.events.length - 1]?.done;
      assert.equal(done?.state, 'SNAPSHOT_STATE_COMPLETE', done?.error);
      if (mode === 'background') continue;
      const nonce = (await statuses()).a?.nonce;
      const rr = await c.cliStream(['restore', done?.id as string, '--stop-running']).done;
      assert.equal(rr.code, 0, rr.stderr);
      assert.notEqual(qemuOf('a')?.pid, oldPid, 'the adopted QEMU was replaced');
      const r0 = await until('the restored guests answer', () => statuses(), { timeoutMs: 60_000, everyMs: 500 });
      assert.equal(r0.a?.nonce, nonce, 'the same guest run, restored');
      await sleep(3000); // kept: the window over which every restored stream must move and none break
      assert.deepEqual(problems('after the restore', r0, await statuses()), []);
    }
    assert.equal((await c.cliJson<{ state: string }>(['vne', 'show', VNE])).state, 'VNE_STATE_RUNNING');
  });

  it(`SIGKILL + immediate restart of h1's agent, ${ROUNDS} rounds: the outage the guests see (longest gap in received bytes)`, async () => {
    const pid = qemuOf('a')?.pid;
    const outages: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const before = await statuses();
      const sampler = v.outageSampler();
      await c.kill('h1', 'SIGKILL');
      await c.startAgent('h1');
      await until('every stream moves again', async () => (problems('', before, await statuses()).length === 0 ? true : undefined), { timeoutMs: 60_000, everyMs: 200 });
      await sleep(2000); // kept: the window after the restart in which a later gap would show
      outages.push(await sampler.stop());
      assert.deepEqual(problems(`round ${r + 1}`, before, await statuses()), []);
    }
    assert.equal(qemuOf('a')?.pid, pid, 'the same QEMU process through every round');
    const sorted = [...outages].sort((x, y) => x - y);
    figures.push(`SIGKILL + restart x${ROUNDS}: outage ms ${outages.join(', ')} (median ${sorted[Math.floor(sorted.length / 2)]}, max ${sorted[sorted.length - 1]})`);
  });

  it('SIGKILL of h1\'s agent, then the coordinator restarted while it is down, then the agent started: same pid, streams intact, VNE RUNNING', async () => {
    const pid = qemuOf('a')?.pid;
    const before = await statuses();
    await c.kill('h1', 'SIGKILL');
    await c.kill('coordinator', 'SIGKILL');
    await c.startCoordinator();
    await c.startAgent('h1');
    await c.waitConnected(['h1', 'h2']);
    await until('every stream moves again', async () => (problems('', before, await statuses()).length === 0 ? true : undefined), { timeoutMs: 60_000, everyMs: 500 });
    const mid = await statuses();
    await sleep(3000); // kept: the window over which every stream must keep moving
    assert.deepEqual(problems('after the agent and the coordinator restarted', mid, await statuses()), []);
    assert.equal(qemuOf('a')?.pid, pid);
    assert.equal((await c.cliJson<{ state: string }>(['vne', 'show', VNE])).state, 'VNE_STATE_RUNNING');
  });

  it('SIGTERM of h1\'s agent, then a build that cannot run the data path started: its tap-bpf VM is adopted as tap-vnet (the program off its TAP), same pid, streams intact through the switches', async () => {
    const a = qemuOf('a');
    assert.ok(a, 'the QEMU of a runs');
    const tap = `vnqm${tapTag(a.dir)}n0`;
    const clsact = (): boolean => c.topo.exec('h1', 'tc', ['qdisc', 'show', 'dev', tap]).includes('clsact');
    const onDataPath = clsact();
    const before = await statuses();
    await c.kill('h1', 'SIGTERM');
    await c.startAgent('h1', true, newerBuild(path.join(c.dir, `${VNE}-nodp-build`), { dataPath: false }).main);
    await until('every stream moves again', async () => (problems('', before, await statuses()).length === 0 ? true : undefined), { timeoutMs: 60_000, everyMs: 500 });
    const mid = await statuses();
    await sleep(3000); // kept: the window over which every stream must keep moving
    assert.deepEqual(problems('after the agent without the data path started', mid, await statuses()), []);
    assert.equal(qemuOf('a')?.pid, a.pid, 'the same QEMU process');
    assert.equal((await c.cliJson<{ state: string }>(['vne', 'show', VNE])).state, 'VNE_STATE_RUNNING');
    assert.equal(clsact(), false, `the program is off ${tap}`);
    figures.push(`SIGTERM, a build without the data path started: a adopted (its TAP ${onDataPath ? 'had' : 'did not have'} vn_tx before), streams intact`);
  });

  it('a VM killed while its agent is down is reported dead when the agent returns (VNE FAILED), its TAP and directory removed, a stray QEMU of a dead agent killed; the other VM runs on', async () => {
    const other = qemuOf('c')?.pid;
    await c.kill('h1', 'SIGKILL');
    const a = qemuOf('a');
    assert.ok(a);
    const tapsOfA = (): string[] => c.topo.exec('h1', 'ip', ['-o', 'link', 'show']).split('\n').filter((l) => l.includes(`vnqm${tapTag(a.dir)}n`));
    assert.equal(tapsOfA().length, 1, 'the TAP of a, in h1');
    process.kill(a.pid, 'SIGKILL');
    await until('the QEMU of a is gone', () => qemuOf('a') === undefined);
    // A stray "QEMU" in h1's namespace: a process naming an instance directory whose agent is dead (as a restore-prepared QEMU of a killed agent does).
    const gone = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
    await new Promise<void>((r) => gone.once('exit', () => r()));
    const strayDir = path.join(QEMU_WORKDIR, `vnqm-${VNE}_zz-${gone.pid}-1`);
    fs.mkdirSync(strayDir, { recursive: true });
    const stray = c.topo.spawn('h1', process.execPath, ['-e', 'setTimeout(() => {}, 600000)', `unix:${strayDir}/qmp.sock,server=on`]);
    const strayExit = new Promise<string | null>((r) => stray.once('exit', (_code, sig) => r(sig)));
    await new Promise<void>((r, j) => stray.once('spawn', r).once('error', j));
    await c.startAgent('h1');
    assert.equal(await strayExit, 'SIGKILL', 'the stray QEMU was killed before the agent registered');
    assert.equal(fs.existsSync(strayDir), false);
    assert.equal(fs.existsSync(a.dir), false, 'the dead VM\'s instance directory is removed');
    assert.deepEqual(tapsOfA(), [], 'the dead VM\'s TAP is deleted');
    const vne = await until('the VNE is FAILED', async () => {
      const shown = await c.cliJson<{ state: string; message?: string }>(['vne', 'show', VNE]);
      return shown.state === 'VNE_STATE_FAILED' ? shown : undefined;
    }, { timeoutMs: 30_000, everyMs: 500 });
    assert.equal(vne.state, 'VNE_STATE_FAILED');
    assert.equal(qemuOf('c')?.pid, other, 'the VM of h2 is undisturbed');
    assert.deepEqual(fs.readdirSync(path.join(c.dir, 'state', 'h1', 'vms')), [], 'the dead VM\'s record is gone');
  });

  it('the VNE stopped and deleted: both hosts\' data path VXLAN devices of it are removed (ForgetVne)', async function () {
    if (dataPathVxlanRx(c.topo, 'h2') === undefined) this.skip(); // no data path on this machine: no device to remove
    await c.cli(['vne', 'stop', VNE], 60_000);
    await c.cli(['vne', 'delete', VNE, '--with-snapshots'], 60_000);
    assert.equal(dataPathVxlanRx(c.topo, 'h1'), undefined, 'h1 (its agent restarted since the VNE was configured)');
    assert.equal(dataPathVxlanRx(c.topo, 'h2'), undefined, 'h2');
  });
});
