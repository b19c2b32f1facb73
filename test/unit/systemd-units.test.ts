import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AGENT_NODE_FLAGS, missingNodeFlags } from '../../agent/node-flags';

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
    // The scores of systemd 252 (Debian 12) at the last hardening: a change may lower them, never raise them
    // (the agent's 6.1: realtime scheduling allowed for the cuts' bounded boosts, the next test).
    assert.ok(exposure(units[1] as string) <= 1.7, 'coordinator exposure');
    assert.ok(exposure(units[0] as string) <= 6.1, 'agent exposure');
  });

  it("the agent may raise a VM's QEMU and its own loop to realtime for a cut (CAP_SYS_NICE, no RestrictRealtime)", () => {
    const text = fs.readFileSync(units[0] as string, 'utf8');
    assert.match(text, /^CapabilityBoundingSet=.*\bCAP_SYS_NICE\b/m);
    assert.doesNotMatch(text, /^RestrictRealtime=yes/m);
  });

  it('restart on failure and point at the installed code and config', () => {
    for (const u of units) assert.match(fs.readFileSync(u, 'utf8'), /^Restart=on-failure$/m);
    const execStart = (u: string): string[] => fs.readFileSync(u, 'utf8').match(/^ExecStart=.*$/gm) ?? [];
    assert.deepEqual(execStart(units[0] as string), [`ExecStart=/usr/bin/node ${AGENT_NODE_FLAGS.join(' ')} /opt/vnsnap/dist/agent/main.js --config /etc/vnsnap/agent.json`]);
    assert.deepEqual(execStart(units[1] as string), ['ExecStart=/usr/bin/node /opt/vnsnap/dist/coordinator/main.js --config /etc/vnsnap/coordinator.json']);
  });

  it("the agent's Node flags are the same in its unit and its #! line", () => {
    assert.deepEqual(AGENT_NODE_FLAGS, ['--single-threaded-gc']);
    const firstLine = fs.readFileSync(path.join(root, 'agent/main.ts'), 'utf8').split('\n')[0];
    assert.equal(firstLine, `#!/usr/bin/env -S node ${AGENT_NODE_FLAGS.join(' ')}`);
    assert.deepEqual(missingNodeFlags(['--inspect']), ['--single-threaded-gc']);
    assert.deepEqual(missingNodeFlags(['--inspect', '--single-threaded-gc']), []);
  });

  it('reload sends SIGHUP to the main process (the daemons re-read their TLS files on it)', () => {
    for (const u of units) assert.match(fs.readFileSync(u, 'utf8'), /^ExecReload=\/bin\/kill -HUP \$MAINPID$/m);
  });

  it("the coordinator's private key reaches it only as a credential; its config's path is the credential's", () => {
    const text = fs.readFileSync(units[1] as string, 'utf8');
    assert.match(text, /^DynamicUser=yes$/m);
    const creds = [...text.matchAll(/^LoadCredential=(.*)$/gm)].map((m) => m[1]);
    assert.deepEqual(creds, ['tls-key.pem:/etc/vnsnap/pki/coordinator-key.pem']);
    // systemd puts a system service's credential ID at /run/credentials/UNIT/ID: the path the docs tell operators to configure.
    const inService = `/run/credentials/${path.basename(units[1] as string)}/tls-key.pem`;
    assert.equal(inService, '/run/credentials/vnsnap-coordinator.service/tls-key.pem');
    assert.ok(text.includes(`"key": "${inService}"`), 'the unit names the configured key path');
    assert.ok(fs.readFileSync(path.join(root, 'docs/security.md'), 'utf8').includes(`"key": "${inService}"`), 'docs/security.md names the configured key path');
  });

  it('the agent reads its TLS files in place, read-only (a credential would need a restart)', () => {
    const text = fs.readFileSync(units[0] as string, 'utf8');
    assert.match(text, /^ReadOnlyPaths=\/etc\/vnsnap$/m);
    assert.match(text, /^ProtectSystem=strict$/m);
    assert.doesNotMatch(text, /^LoadCredential/m);
  });

  it('stopping the agent signals only its main process: the VMs outlive it (KillMode=process), and its state directory is writable', () => {
    const text = fs.readFileSync(units[0] as string, 'utf8');
    assert.deepEqual(text.match(/^KillMode=.*$/gm), ['KillMode=process']);
    assert.match(text, /^ReadWritePaths=.*\/var\/lib\/vnsnap( |$)/m);
  });
});
