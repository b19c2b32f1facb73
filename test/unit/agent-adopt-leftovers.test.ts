/**
 * What a dead agent left, removed by the next one (agent/drivers/qemu/leftovers.ts): real
 * processes stand for QEMUs (a Node process whose command line names an instance directory, as
 * QEMU's names its QMP socket), a temporary directory for the driver's work directory, and a
 * recorded fake for the `ip` device list. Only what is ours and dead goes; everything else —
 * another prefix, a path outside the work directory, a live agent's directory, a record left
 * alone, an adopted VM's disk overlays — stays, and its processes keep running.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cleanQemuLeftovers, creatorPid, instanceDirIn, tapTag } from '../../agent/drivers/qemu/leftovers';
import { processStartTime, VmStateDir } from '../../agent/vm-state';
import { silentLogger } from '../../proto/core/log';
import { until } from '../support/wait';

const procs: ChildProcess[] = [];

/** A live process whose command line names `arg` (it sleeps). */
async function processNaming(arg: string): Promise<number> {
  const p = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 600000)', arg], { stdio: 'ignore' });
  procs.push(p);
  await new Promise<void>((r, j) => p.once('spawn', r).once('error', j));
  return p.pid as number;
}

/** A pid no process has now (a process that ran and exited). */
async function deadPid(): Promise<number> {
  const p = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
  await new Promise<void>((r) => p.once('exit', () => r()));
  return p.pid as number;
}

const alive = (pid: number): boolean => processStartTime(pid) !== undefined;

describe('leftovers of a dead agent (QEMU driver)', () => {
  let root: string;
  before(() => (root = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-leftovers-'))));
  after(() => {
    for (const p of procs) p.kill('SIGKILL');
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('finds the instance directory a command line names, and the creating agent\'s pid', () => {
    assert.equal(instanceDirIn(['qemu-system-x86_64', '-qmp', 'unix:/run/q/vnqm-blue_a-77-1/qmp.sock,server=on,wait=off'].join('\0'), '/run/q/', 'vnqm'), '/run/q/vnqm-blue_a-77-1');
    assert.equal(instanceDirIn(['qemu', '-qmp', 'unix:/run/qq/vnqm-blue_a-77-1/qmp.sock'].join('\0'), '/run/q', 'vnqm'), undefined);
    assert.equal(instanceDirIn(['qemu', 'unix:/run/q/vnqmx-blue_a-77-1/qmp.sock'].join('\0'), '/run/q', 'vnqm'), undefined);
    assert.equal(creatorPid('/run/q/vnqm-blue_a-77-1'), 77);
    assert.equal(creatorPid('/run/q/vnqm-blue_a'), undefined);
  });

  it('kills stray QEMUs of ours, deletes their TAPs and directories and partial snapshot files, keeps a dead VM\'s disk images; touches nothing else', async () => {
    const work = path.join(root, 'qemu');
    const dead = await deadPid();
    const liveAgent = await processNaming('an agent');
    const dir = (name: string, files: string[] = ['console.log']): string => {
      const d = path.join(work, name);
      fs.mkdirSync(d, { recursive: true });
      for (const f of files) fs.writeFileSync(path.join(d, f), f);
      return d;
    };
    const adopted = dir(`vnqm-blue_a-${dead}-1`, ['disk-e3-1.qcow2', 'frozen.qcow2', 'mem-e3-1.img', 'mem-e3-1.img.done0', 'frozen-e3-1.qcow2', 'fp-0a1b2c3d.bin']);
    const adoptedPid = await processNaming(`unix:${adopted}/qmp.sock,server=on`);
    const stray = dir(`vnqm-blue_b-${dead}-2`);
    const strayPid = await processNaming(`unix:${stray}/qmp.sock,server=on`);
    const deadVm = dir(`vnqm-blue_c-${dead}-3`);
    const liveAgents = dir(`vnqm-blue_d-${liveAgent}-1`);
    const liveAgentsVm = await processNaming(`unix:${liveAgents}/qmp.sock`);
    const other = dir(`vnqm-blue_e-${dead}-5`);
    const otherPid = await processNaming(`unix:${other}/qmp.sock`);
    const notOurs = dir(`xyz-blue_g-${dead}-1`);
    const notOursPid = await processNaming(`unix:${notOurs}/qmp.sock`);
    const deadWithDisk = dir(`vnqm-blue_h-${dead}-6`, ['disk0.qcow2', 'disk-e2-1.qcow2', 'console.log', 'qemu.pid']);
    const deadNoDisk = dir(`vnqm-blue_i-${dead}-7`);
    const outside = await processNaming(`unix:${root}/elsewhere/vnqm-blue_f-${dead}-1/qmp.sock`);
    const links = [`vnqm${tapTag(stray)}n0`, `vnqm${tapTag(stray)}n1`, `vnqm${tapTag(deadVm)}n0`, `vnqm${tapTag(adopted)}n0`, `vnqm${tapTag(liveAgents)}n0`, `vnqm${tapTag(other)}n0`, `vnqm${tapTag(deadWithDisk)}n0`, 'vnqm0000ffffn0'];
    const deleted: string[] = [];
    const report = await cleanQemuLeftovers({
      workDir: work,
      prefix: 'vnqm',
      adoptedDirs: [adopted],
      otherDirs: [other],
      deadDirs: [deadWithDisk, deadNoDisk],
      log: silentLogger(),
      listLinks: () => Promise.resolve(links),
      deleteLink: (n) => Promise.resolve(void deleted.push(n)),
    });
    assert.deepEqual(report, [
      `killed stray QEMU ${strayPid} (instance ${stray}: no VM of this agent)`,
      ...['fp-0a1b2c3d.bin', 'frozen-e3-1.qcow2', 'mem-e3-1.img', 'mem-e3-1.img.done0'].map((f) => `removed partial snapshot file ${adopted}/${f} (a dead agent's snapshot or restore)`),
      `deleted TAP vnqm${tapTag(stray)}n0 of a dead instance (${stray})`,
      `deleted TAP vnqm${tapTag(stray)}n1 of a dead instance (${stray})`,
      `removed instance directory ${stray} (no VM of this agent)`,
      `deleted TAP vnqm${tapTag(deadVm)}n0 of a dead instance (${deadVm})`,
      `removed instance directory ${deadVm} (no VM of this agent)`,
      `deleted TAP vnqm${tapTag(deadWithDisk)}n0 of a dead instance (${deadWithDisk})`,
      `kept the disk images of a VM that died while no agent ran: ${deadWithDisk} (disk-e2-1.qcow2, disk0.qcow2); delete them when they are not needed`,
      `removed instance directory ${deadNoDisk} (no VM of this agent)`,
    ]);
    assert.deepEqual(deleted, [`vnqm${tapTag(stray)}n0`, `vnqm${tapTag(stray)}n1`, `vnqm${tapTag(deadVm)}n0`, `vnqm${tapTag(deadWithDisk)}n0`]);
    await until('the stray QEMU is gone', () => !alive(strayPid));
    for (const pid of [adoptedPid, liveAgentsVm, otherPid, notOursPid, outside, liveAgent]) assert.equal(alive(pid), true, `process ${pid} runs on`);
    assert.deepEqual(fs.readdirSync(work).sort(), [path.basename(adopted), path.basename(liveAgents), path.basename(other), path.basename(deadWithDisk), path.basename(notOurs)].sort());
    assert.deepEqual(fs.readdirSync(deadWithDisk).sort(), ['disk-e2-1.qcow2', 'disk0.qcow2'], 'a dead VM\'s disk images are its last disk: kept');
    assert.deepEqual(fs.readdirSync(adopted).sort(), ['disk-e3-1.qcow2', 'frozen.qcow2']);
    for (const d of [liveAgents, other, notOurs]) assert.deepEqual(fs.readdirSync(d), ['console.log']);
  });

  it('a state directory\'s temporary files of interrupted writes are removed; records and other files stay', async () => {
    const st = new VmStateDir(path.join(root, 'state'));
    fs.mkdirSync(path.join(st.dirOf('blue', 'a')), { recursive: true });
    fs.writeFileSync(path.join(st.dirOf('blue', 'a'), 'vm.json'), '{}');
    fs.writeFileSync(path.join(st.dirOf('blue', 'a'), '.vm.json.tmp-0a1b2c'), '{"half');
    fs.mkdirSync(path.join(st.vmsDir, '.blue_b.tmp-0a1b2c'));
    fs.mkdirSync(path.join(st.root, 'disks', 'blue_a'), { recursive: true });
    fs.writeFileSync(path.join(st.root, 'disks', 'blue_a', '.disk.qcow2.tmp-0a1b2c'), 'kept');
    assert.deepEqual(await st.removeTemps(), [path.join(st.vmsDir, '.blue_b.tmp-0a1b2c'), path.join(st.dirOf('blue', 'a'), '.vm.json.tmp-0a1b2c')]);
    assert.deepEqual(fs.readdirSync(st.vmsDir), ['blue_a']);
    assert.deepEqual(fs.readdirSync(st.dirOf('blue', 'a')), ['vm.json']);
    assert.deepEqual(fs.readdirSync(path.join(st.root, 'disks', 'blue_a')), ['.disk.qcow2.tmp-0a1b2c'], 'disks/ is never touched');
  });
});
