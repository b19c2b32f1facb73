#!/usr/bin/env node
/**
 * `vnsnap`, the operator CLI: a CoordinatorService client. Thin on purpose: everything is in
 * cli.ts (commands, help, exit codes) and the modules beside it.
 */
import { hideIpServerNameWarning } from '../../proto/core/tls';
import { runCli } from './cli';
import { processIo } from './io';

// grpc-js sets the TLS server name to the address dialled, an IP address included, which Node
// warns about (DEP0123) on stderr: not a line a person should see among the CLI's own.
hideIpServerNameWarning();

runCli(process.argv.slice(2), processIo(), process.env).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`vnsnap: unexpected error: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
