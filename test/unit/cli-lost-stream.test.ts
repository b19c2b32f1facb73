/**
 * A coordinator that dies in the middle of `snapshot create` or `restore`: the CLI had reached
 * it, so it must not say "cannot reach the coordinator" (exit 4) but that the outcome is unknown
 * and how to find it (exit 6). The coordinator here is the fake of test/interop run as its own
 * process, with a long delay between stream events, SIGKILLed once the CLI has printed the first
 * event; test/integration/cli-docs.test.ts does the same to the real coordinator.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { once } from '../support/wait';

const MAIN = path.resolve(__dirname, '../../coordinator/cli/main.js');
const FAKE = path.resolve(__dirname, '../interop/fake-coordinator.js');

async function startFake(): Promise<{ child: ChildProcess; address: string }> {
  const child = spawn(process.execPath, [FAKE, '--listen', '127.0.0.1:0', '--event-delay-ms', '60000'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [line] = (await once(child.stdout as NodeJS.ReadableStream & import('node:events').EventEmitter, 'data', 'the fake coordinator ready')) as [Buffer];
  return { child, address: (JSON.parse(line.toString().split('\n')[0] as string) as { address: string }).address };
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run the CLI; SIGKILL `victim` when the CLI has printed its first line on stdout. */
function runKillingOnFirstLine(args: readonly string[], victim: ChildProcess): Promise<Run> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, VNSNAP_INSECURE_PLAINTEXT: '1' };
    const c = spawn(process.execPath, [MAIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes('\n') && victim.exitCode === null && victim.signalCode === null) victim.kill('SIGKILL');
    });
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('error', reject);
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('cli: the coordinator dies in the middle of a stream', function () {
  this.timeout(30_000);
  let fake: { child: ChildProcess; address: string };

  beforeEach(async () => {
    fake = await startFake();
  });
  afterEach(() => {
    if (fake.child.exitCode === null && fake.child.signalCode === null) fake.child.kill('SIGKILL');
  });

  it('snapshot create: exit 6, the outcome is unknown, find it with snapshot list / events', async () => {
    const r = await runKillingOnFirstLine(['snapshot', 'create', 'blue', '--coordinator', fake.address], fake.child);
    assert.equal(r.code, 6, r.stderr);
    assert.match(r.stdout, /^\+0\.000s {2}state PRECOPY\n/);
    const m = /^vnsnap: lost the connection to the coordinator at 127\.0\.0\.1:\d+ \((.+)\) during the snapshot of VNE blue \(snap-\d+\): its outcome is unknown; find it with: vnsnap snapshot list --vne blue, or vnsnap events --vne blue\n$/.exec(r.stderr);
    assert.ok(m, r.stderr);
    assert.doesNotMatch(r.stderr, /cannot reach|is it running/);
  });

  it('snapshot create --json: the error as one JSON line with exit code 6', async () => {
    const r = await runKillingOnFirstLine(['snapshot', 'create', 'blue', '--json', '--coordinator', fake.address], fake.child);
    assert.equal(r.code, 6, r.stderr);
    const e = (JSON.parse(r.stderr) as { error: { code: string; message: string; exitCode: number } }).error;
    assert.equal(e.code, 'ERR_UNAVAILABLE');
    assert.equal(e.exitCode, 6);
    assert.match(e.message, /: its outcome is unknown; find it with: vnsnap snapshot list --vne blue, or vnsnap events --vne blue$/);
  });

  it('restore: exit 6, the outcome is unknown, find it with snapshot show / vne show / events', async () => {
    const r = await runKillingOnFirstLine(['restore', 'snap-0001', '--stop-running', '--coordinator', fake.address], fake.child);
    assert.equal(r.code, 6, r.stderr);
    assert.match(
      r.stderr,
      /^vnsnap: lost the connection to the coordinator at 127\.0\.0\.1:\d+ \(.+\) during the restore of snapshot snap-0001: its outcome is unknown; find it with: vnsnap snapshot show snap-0001 \(its VNE\), then vnsnap vne show VNE; or vnsnap events\n$/,
    );
  });

  it('a coordinator that was never reached is still exit 4', async () => {
    fake.child.kill('SIGKILL');
    await once(fake.child, 'exit', 'the fake coordinator gone');
    const r = await runKillingOnFirstLine(['snapshot', 'create', 'blue', '--coordinator', fake.address], fake.child);
    assert.equal(r.code, 4, r.stderr);
    assert.match(r.stderr, /^vnsnap: cannot reach the coordinator at 127\.0\.0\.1:\d+: connection refused/);
  });
});
