#!/usr/bin/env node
/**
 * `vnsnap`, the operator CLI: a CoordinatorService client. Thin on purpose: everything is in
 * cli.ts (commands, help, exit codes) and the modules beside it.
 */
import { runCli } from './cli';
import { processIo } from './io';

runCli(process.argv.slice(2), processIo(), process.env).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`vnsnap: unexpected error: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
