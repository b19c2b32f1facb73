/**
 * Listening on a unix socket path, replacing a stale socket file left by a previous run (but
 * never a regular file someone put there). Used by the stream port and the control socket.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { VnsnapError } from '../../proto/core/errors';

export function listenUnix(path: string, what: string, onConnection: (s: net.Socket) => void): Promise<net.Server> {
  try {
    if (fs.statSync(path).isSocket()) fs.unlinkSync(path);
  } catch {
    /* absent */
  }
  const server = net.createServer(onConnection);
  return new Promise((resolve, reject) => {
    server.once('error', (e) => reject(new VnsnapError('ERR_CONFIG', `${what}: cannot listen on ${path}: ${e.message}`, { cause: e })));
    server.listen(path, () => resolve(server));
  });
}

/** Close the server and remove its socket file (idempotent). */
export function closeUnix(server: net.Server | undefined, path: string): void {
  server?.close();
  try {
    fs.unlinkSync(path);
  } catch {
    /* gone */
  }
}
