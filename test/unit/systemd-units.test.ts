import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.resolve(__dirname, '../../..');
const units = [path.join(root, 'agent/systemd/vnsnap-agent.service'), path.join(root, 'coordinator/systemd/vnsnap-coordinator.service')];

function exposure(unit: string): number {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnunit-'));
  try {
    const copy = path.join(dir, path.basename(unit));
    fs.copyFileSync(unit, copy);
    const r = spawnSync('systemd-analyze', ['security', '--offline=yes', copy], { encoding: 'utf8' });
    const m = /Overall exposure level for .*: ([\d.]+)/.exec(r.stdout + r.stderr);
    assert.ok(m, r.stdout + r.stderr);
    return Number(m[1]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('systemd units', () => {
  it('are valid units (systemd-analyze verify)', () => {
    const r = spawnSync('systemd-analyze', ['verify', ...units], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr.trim(), '');
  });

  it('are hardened: the coordinator needs no privilege, the agent only what TAPs and VMs need', () => {
    assert.ok(exposure(units[1] as string) <= 2.5, 'coordinator exposure');
    assert.ok(exposure(units[0] as string) <= 6.5, 'agent exposure');
  });

  it('restart on failure and point at the installed code and config', () => {
    for (const u of units) {
      const text = fs.readFileSync(u, 'utf8');
      assert.match(text, /^Restart=on-failure$/m);
      assert.match(text, /^ExecStart=\/usr\/bin\/node \/opt\/vnsnap\/dist\/(agent|coordinator)\/main\.js --config \/etc\/vnsnap\/(agent|coordinator)\.json$/m);
    }
  });
});
