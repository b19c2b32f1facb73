/**
 * The agent's version, as it reports it in Register (and the coordinator's `vnsnap agents`
 * shows): the "version" of the package.json of the build it runs from (two levels above the
 * compiled agent/ directory). A copy of the build with another package.json is another version:
 * that is how an upgrade is told apart from a restart of the same build (docs/agent-restart.md).
 * It is read once; a build without a readable package.json reports "unknown".
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

function readPackageVersion(): string {
  try {
    const v = (JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version?: unknown }).version;
    return typeof v === 'string' && v !== '' ? v : 'unknown';
  } catch {
    return 'unknown';
  }
}

export const AGENT_VERSION = readPackageVersion();
