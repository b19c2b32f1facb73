/**
 * bench:vm-net's command line as an operator meets it (test/bench/vm-net.ts, run as the built
 * script): --snapshot-every-ms takes a whole number of milliseconds of at least 100, a bad value
 * ends with the bench's usage error (status 2, before anything needs root), and --help and the
 * usage line name the flag.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const BENCH = path.resolve(__dirname, '../bench/vm-net.js');
const run = (...args: string[]) => spawnSync(process.execPath, [BENCH, ...args], { encoding: 'utf8', timeout: 60_000 });

describe('bench:vm-net --snapshot-every-ms', () => {
  it('refuses a value below 100, a fraction, a word or none, with the usage line and status 2', () => {
    for (const [args, msg] of [
      [['--snapshot-every-ms', '99'], '--snapshot-every-ms wants an integer >= 100, got 99'],
      [['--snapshot-every-ms=1.5'], '--snapshot-every-ms wants an integer >= 100, got 1.5'],
      [['--snapshot-every-ms', 'often'], '--snapshot-every-ms wants an integer >= 100, got often'],
      [['--snapshot-every-ms'], '--snapshot-every-ms needs a value'],
    ] as const) {
      const r = run(...args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines[0], `bench:vm-net: ${msg}`);
      assert.match(lines[1] ?? '', /^usage: npm run bench:vm-net -- .*\[--snapshot-every-ms N\]/);
    }
  });

  it('accepts 100 and parses on (the next error is the one after it)', () => {
    const r = run('--snapshot-every-ms', '100', '--no-such-flag');
    assert.equal(r.status, 2);
    assert.equal(r.stderr.split('\n')[0], 'bench:vm-net: unknown argument --no-such-flag');
  });

  it('--help describes the flag, its default and its minimum', () => {
    const r = run('--help');
    assert.equal(r.status, 0);
    assert.match(r.stdout, /^usage: .*\[--snapshot-every-ms N\]/);
    assert.match(r.stdout, /--snapshot-every-ms N\n\s+the interval of the background snapshots[^]*\(default 1000, at least 100\)/);
  });
});
