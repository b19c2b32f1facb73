/**
 * The test command: runs mocha over the compiled tests and ends with the one line CI reads,
 * `N passed, N failed` (mocha's own summary is not recognised there).
 *
 * Usage: node dist/test/support/run-tests.js [unit|security|integration]... [PATTERN...]
 * With no argument: unit tests first (fast, no root needed), then the security suite
 * (test/security: TLS, roles, refused driver specs, tunnel floods; `npm run test:security`), then
 * integration tests (namespaces, TAP, ...). Suite names select suites; patterns (substrings of a
 * test file's path) then keep only the matching files of those suites, or of every test file when
 * no suite is named: `npm run test:integration -- qemu-driver` runs the integration suite's
 * qemu-driver file alone, `run-tests.js e2e-qemu qemu-driver` the files matching either pattern.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import Mocha from 'mocha';

function collect(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...collect(p));
    else if (e.name.endsWith('.test.js')) out.push(p);
  }
  return out.sort();
}

async function main(): Promise<void> {
  const testRoot = path.resolve(__dirname, '..');
  const args = process.argv.slice(2);
  const SUITES = ['unit', 'security', 'integration'];
  const named = args.filter((a) => SUITES.includes(a));
  const patterns = args.filter((a) => !SUITES.includes(a));
  const base = named.length > 0 ? named.flatMap((s) => collect(path.join(testRoot, s))) : patterns.length > 0 ? collect(testRoot) : SUITES.flatMap((s) => collect(path.join(testRoot, s)));
  const files = patterns.length > 0 ? base.filter((f) => patterns.some((p) => f.includes(p))) : base;
  if (files.length === 0) {
    console.error(`run-tests: no test file matches ${args.join(' ')}`);
    console.log('\n0 passed, 0 failed');
    process.exit(1);
  }
  const mocha = new Mocha({ reporter: 'spec', timeout: 120_000, forbidOnly: true });
  for (const f of files) mocha.addFile(f);
  let passed = 0;
  let failed = 0;
  let pending = 0;
  const runner = mocha.run((failures) => {
    // Let 'after' hooks and their clean-up finish printing before the closing line.
    setImmediate(() => {
      // CI reads the last line and wants exactly `N passed, N failed`: skipped tests go on the line before.
      if (pending > 0) console.log(`\n${pending} skipped (on-demand suites; see README)`);
      console.log(`\n${passed} passed, ${failed} failed`);
      process.exit(failures > 0 || failed > 0 ? 1 : 0);
    });
  });
  runner.on('pass', () => passed++);
  runner.on('fail', () => failed++);
  runner.on('pending', () => pending++);
}

void main();
