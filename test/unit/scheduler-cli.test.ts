/**
 * `vnsnap schedule ...`: the CLI (runCli, in process) against the fake coordinator (a real
 * grpc-js server), asserting exact output, the request sent, and that a bad --every or an empty
 * keep policy never reaches the coordinator. Also the interval syntax of --every.
 */
import { strict as assert } from 'node:assert';
import { PassThrough } from 'node:stream';
import { runCli } from '../../coordinator/cli/cli';
import { startFakeCoordinator, T0_MS, type FakeCoordinator } from '../interop/fake-coordinator';
import { formatInterval, parseInterval } from '../../coordinator/scheduler-interval';

/** The CLI in process (stdout a pipe), against a plaintext loopback coordinator. */
async function vnsnap(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const io = { out: (t: string) => void (stdout += t), err: (t: string) => void (stderr += t), isTTY: false, barStream: new PassThrough(), now: () => Date.now(), onInterrupt: () => () => undefined };
  const code = await runCli(args, io, { VNSNAP_INSECURE_PLAINTEXT: '1' });
  return { code, stdout, stderr };
}

describe('schedule intervals', () => {
  it('parses and formats 90s, 15m, 1h, 2h30m, 1d; refuses anything else', () => {
    assert.deepEqual(['90s', '15m', '1h', '2h30m', '1d'].map(parseInterval), [90_000, 900_000, 3_600_000, 9_000_000, 86_400_000]);
    assert.deepEqual(['', '1', 'h', '1x', '1.5h', '-1h', '1h ', 'h1'].map(parseInterval), Array(8).fill(undefined));
    assert.deepEqual([90_000, 900_000, 3_600_000, 9_000_000, 86_400_000, 0].map(formatInterval), ['1m30s', '15m', '1h', '2h30m', '1d', '0s']);
  });
});

describe('cli: vnsnap schedule against a fake coordinator', function () {
  this.timeout(30_000);
  let fake: FakeCoordinator;
  const run = (...args: string[]) => vnsnap([...args, '--coordinator', fake.address]);
  beforeEach(async () => (fake = await startFakeCoordinator()));
  afterEach(async () => fake.stop());

  it('refuses a bad --every or a policy keeping nothing before calling the coordinator (exit 2)', async () => {
    const a = await run('schedule', 'set', 'blue', '--every', '30s', '--keep-last', '3');
    assert.deepEqual([a.code, a.stdout, a.stderr], [2, '', "vnsnap: option '--every <INTERVAL>' argument '30s' is invalid. --every must be at least 1m, got 30s\n(add --help for usage)\n"]);
    const b = await run('schedule', 'set', 'blue', '--every', '1h');
    assert.deepEqual([b.code, b.stderr], [2, 'vnsnap: at least one of --keep-last, --keep-hourly, --keep-daily must be above 0 (a schedule keeping nothing would delete every snapshot it takes)\n']);
    const c = await run('schedule', 'set', 'blue', '--every', '1h', '--keep-last', '-1');
    assert.equal(c.code, 2);
    assert.match(c.stderr, /--keep-last expects a whole number ≥ 0, got "-1"/);
    assert.equal(fake.calls.length, 0);
  });

  it('set, list, show, delete', async () => {
    const set = await run('schedule', 'set', 'blue', '--every', '2h30m', '--keep-last', '24', '--keep-daily', '7', '--mode', 'background');
    assert.equal(set.stderr, '');
    const next = new Date(T0_MS + 9_000_000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
    assert.equal(set.stdout, `VNE blue: a background snapshot every 2h30m, keep last 24, daily 7; next at ${next}\n`);
    assert.deepEqual(fake.calls.map((c) => c.method), ['SetSchedule']);
    assert.deepEqual(fake.calls[0]?.request, { vne: 'blue', everyMs: 9_000_000, keepLast: 24, keepHourly: 0, keepDaily: 7, mode: 'SNAPSHOT_MODE_BACKGROUND' });
    const list = await run('schedule', 'list');
    assert.equal(list.stdout, `VNE   EVERY  KEEP              MODE        NEXT                  LAST RESULT\nblue  2h30m  last 24, daily 7  background  ${next}  -\n`);
    const show = await run('schedule', 'show', 'blue', '--json');
    assert.equal((JSON.parse(show.stdout) as { everyMs: unknown }).everyMs, 9000000);
    const del = await run('schedule', 'delete', 'blue');
    assert.equal(del.stdout, 'deleted the schedule of VNE blue\n');
    const gone = await run('schedule', 'show', 'blue');
    assert.deepEqual([gone.code, gone.stderr], [3, 'vnsnap: VNE "blue" has no schedule\n']);
  });
});
