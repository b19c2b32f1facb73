#!/usr/bin/env node
/**
 * The receiving end `xl migrate -s '' DOM RECEIVER` runs (docs/xen.md): xl starts RECEIVER with
 * `sh -c` and talks to it over its stdin/stdout. This program only relays them to the Xen
 * driver's unix socket (argv[2]): the driver sends xl's banner, stores the stream up to the libxl
 * END record and closes the connection without sending "ready", so the sender reports
 * "Migration failed, resuming at sender" and the domain resumes. Backpressure is preserved both
 * ways (pipe()), so a driver that stops reading holds the sender.
 *
 * When the driver closes the connection the relay kills itself (SIGKILL) instead of exiting:
 * xl waits for its receiver to exit before it resumes the domain (xl_migrate.c, failed_resume:
 * migration_child_report, up to 2 s), so a Node teardown here would be part of the VM's pause.
 */
import * as net from 'node:net';

const sock = process.argv[2];
if (!sock) {
  process.stderr.write('usage: xen-relay SOCKET\n');
  process.exit(2);
}
const c = net.connect(sock);
c.on('connect', () => {
  process.stdin.pipe(c);
  c.pipe(process.stdout);
});
c.on('error', (e) => {
  process.stderr.write(`xen-relay: ${e.message}\n`);
  process.exit(1);
});
c.on('close', () => process.kill(process.pid, 'SIGKILL'));
process.stdin.on('error', () => process.exit(0));
process.stdout.on('error', () => process.exit(0));
