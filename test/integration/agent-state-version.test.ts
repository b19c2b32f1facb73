/**
 * An older agent started on a state directory a newer agent left (a record of a newer format)
 * refuses to start, as the real `vnsnap-agent` binary: exit status 2, one line on stderr naming
 * the file, nothing on stdout (no ready line), and nothing touched — every file of the state
 * directory byte for byte and with its modification time, even an unreadable record that a start
 * would remove, and the VM processes (real `sleep`s standing for QEMUs) still running.
 */
import { strict as assert } from 'node:assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { processIdentity, processStartTime, VM_STATE_FORMAT } from '../../agent/vm-state';
import { AGENT_NODE_FLAGS } from '../../agent/node-flags';

const MAIN = path.resolve(__dirname, '../../agent/main.js');

/** Every file below dir with its content and mtime. */
function snapshotTree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of fs.readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort()) {
    const p = path.join(dir, f);
    const st = fs.statSync(p);
    out[f] = st.isDirectory() ? `dir ${st.mtimeMs}` : `${st.mtimeMs} ${fs.readFileSync(p, 'utf8')}`;
  }
  return out;
}

describe('vnsnap-agent on a state directory of a newer format', function () {
  this.timeout(30_000);
  let dir: string;
  const vms: ChildProcess[] = [];

  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-statever-'))));
  after(() => {
    for (const p of vms) p.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function vmProcess(): Promise<number> {
    const p = spawn('sleep', ['600'], { stdio: 'ignore', detached: true });
    vms.push(p);
    await new Promise<void>((r, j) => p.once('spawn', r).once('error', j));
    return p.pid as number;
  }

  it('exits 2 with one line naming the file; the directory and the VM processes are untouched', async () => {
    const state = path.join(dir, 'state');
    const record = async (vm: string, format: number): Promise<string> => {
      const d = path.join(state, 'vms', `blue_${vm}`);
      fs.mkdirSync(d, { recursive: true });
      const spec = { name: vm, host: 'h1', macs: ['52:54:00:00:00:01'], driver: { kind: 'qemu', qemu: { memoryMib: 64 } } };
      const rec = { format, agent: 'h1', vne: 'blue', vm, driver: 'qemu', spec, process: processIdentity(await vmProcess()), epoch: 1, generation: 1, driverState: { dir: '/run/vnsnap/qemu/x', nic: 'tap', taps: [], ramPadKib: 0, snapSerial: 0 }, writtenUnixMs: 1 };
      fs.writeFileSync(path.join(d, 'vm.json'), JSON.stringify(rec));
      return path.join(d, 'vm.json');
    };
    await record('a', VM_STATE_FORMAT);
    const newer = await record('b', VM_STATE_FORMAT + 1);
    fs.mkdirSync(path.join(state, 'vms', 'blue_c'));
    fs.writeFileSync(path.join(state, 'vms', 'blue_c', 'vm.json'), 'not json'); // a start would remove it
    const before = snapshotTree(state);
    const r = spawnSync(process.execPath, [...AGENT_NODE_FLAGS, MAIN, '--id', 'h1', '--coordinator', '127.0.0.1:1', '--tunnel', '127.0.0.1:0', '--store', path.join(dir, 'store'), '--state-dir', state, '--insecure-plaintext', '--log-level', 'info'], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, `vnsnap-agent: VM state ${newer} has format ${VM_STATE_FORMAT + 1}, newer than this agent reads (${VM_STATE_FORMAT}): a newer agent left it; run that version (this one touches nothing) [ERR_UNSUPPORTED_VERSION]\n`);
    assert.deepEqual(snapshotTree(state), before);
    for (const p of vms) assert.notEqual(processStartTime(p.pid as number), undefined, `VM process ${p.pid} runs`);
  });
});
