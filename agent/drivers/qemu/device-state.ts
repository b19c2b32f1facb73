/**
 * A stopped QEMU VM's device state alone, saved into the agent's memory: the last step of a
 * tracked capture's pause (docs/incremental-memory.md). The guest RAM is a shared memfd the agent
 * reads itself, so the migration runs with x-ignore-shared (set by the caller at begin) and
 * carries only the devices and the vCPUs: a few hundred KiB.
 *
 * Why a socket the agent listens on (not a file): nothing of it touches a disk inside the pause,
 * and the bytes are in memory when QEMU reports the migration completed.
 *
 * ignoreSharedRam() sets the capabilities both a tracked save and a tracked load need.
 *
 * Guarantees of saveDeviceState: resolves once QEMU reported MIGRATION completed, the stream
 * ended and QEMU left `finish-migrate` (it emits the completion before that last step and
 * refuses `cont` until it is done: "Migration is not finalized yet"); the VM is still stopped
 * then (`postmigrate`), for the caller to `cont`. A failed or cancelled migration, or a stream
 * that does not end, is ERR_DRIVER / ERR_TIMEOUT naming the VM; the socket is removed either way.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { VnsnapError } from '../../../proto/core/errors';
import type { QmpClient } from './qmp';

/**
 * Every migration capability explicitly: events and x-ignore-shared on, the rest off, so a
 * migration carries the devices and not the shared RAM (a tracked capture's save, and a tracked
 * restore's load). ERR_DRIVER when this QEMU lacks x-ignore-shared.
 */
export async function ignoreSharedRam(q: QmpClient, vm: string): Promise<void> {
  const known = await q.execute<{ capability: string }[]>('query-migrate-capabilities');
  if (!known.some((c) => c.capability === 'x-ignore-shared')) throw new VnsnapError('ERR_DRIVER', `QEMU for ${vm} lacks the migration capability x-ignore-shared`);
  await q.execute('migrate-set-capabilities', { capabilities: known.map((c) => ({ capability: c.capability, state: c.capability === 'events' || c.capability === 'x-ignore-shared' })) });
}

/** The whole save (migrate to the end of finish-migrate) must take less than this. */
const SAVE_TIMEOUT_MS = 30_000;

/** A unix socket that takes one connection and keeps what it sends. */
export class DeviceStateSink {
  private constructor(
    readonly path: string,
    private readonly server: net.Server,
    /** The bytes sent, once the one connection ended. */
    readonly ended: Promise<Buffer>,
  ) {}

  static async listen(sockPath: string): Promise<DeviceStateSink> {
    fs.rmSync(sockPath, { force: true });
    const parts: Buffer[] = [];
    let settle!: { ok: (b: Buffer) => void; fail: (e: Error) => void };
    const ended = new Promise<Buffer>((ok, fail) => (settle = { ok, fail }));
    ended.catch(() => undefined);
    const server = net.createServer((s) => {
      server.close(); // one connection
      s.on('data', (d: Buffer) => parts.push(d));
      s.on('end', () => settle.ok(Buffer.concat(parts)));
      s.on('error', (e) => settle.fail(new VnsnapError('ERR_DRIVER', `device state stream: ${e.message}`)));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(sockPath, () => resolve());
    });
    return new DeviceStateSink(sockPath, server, ended);
  }

  get uri(): string {
    return `unix:${this.path}`;
  }

  close(): void {
    this.server.close();
    fs.rmSync(this.path, { force: true });
  }
}

/** The stopped VM's device state through `sink` (see the module comment). */
export async function saveDeviceState(q: QmpClient, vm: string, sink: DeviceStateSink): Promise<Buffer> {
  const end = q.waitEvent('MIGRATION', (d) => d.status === 'completed' || d.status === 'failed' || d.status === 'cancelled', SAVE_TIMEOUT_MS);
  end.catch(() => undefined);
  const deadline = performance.now() + SAVE_TIMEOUT_MS;
  await q.execute('migrate', { uri: sink.uri });
  const ev = await end;
  if (ev.data.status !== 'completed') {
    const info = await q.execute<{ 'error-desc'?: string }>('query-migrate').catch(() => ({}) as { 'error-desc'?: string });
    throw new VnsnapError('ERR_DRIVER', `saving the device state of ${vm}: migration ${String(ev.data.status)}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
  }
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new VnsnapError('ERR_TIMEOUT', `saving the device state of ${vm}: the stream did not end`)), Math.max(1, deadline - performance.now()))));
  late.catch(() => undefined);
  try {
    const state = await Promise.race([sink.ended, late]);
    // No event marks the end of finish-migrate: ask (usually already over by the stream's end).
    for (;;) {
      const st = await q.execute<{ status: string }>('query-status');
      if (st.status !== 'finish-migrate') break;
      if (performance.now() > deadline) throw new VnsnapError('ERR_TIMEOUT', `saving the device state of ${vm}: QEMU stayed in finish-migrate`);
      await sleep(1);
    }
    return state;
  } finally {
    clearTimeout(timer);
  }
}
