/**
 * The test command: runs mocha over the compiled tests and ends with the one line CI reads,
 * `N passed, N failed` (mocha's own summary is not recognised there).
 *
 * Usage: node dist/test/support/run-tests.js [unit|security|integration|PATTERN...]
 * Unit tests run first (fast, no root needed), then the security suite (test/security: TLS,
 * roles, refused driver specs, tunnel floods; `npm run test:security`), then integration tests
 * (namespaces, TAP, ...).
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
  const suites = args.length === 0 ? SUITES : args;
  const files: string[] = [];
  for (const s of suites) {
    if (SUITES.includes(s)) files.push(...collect(path.join(testRoot, s)));
    else files.push(...collect(testRoot).filter((f) => f.includes(s)));
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
