/**
 * A stopped QEMU VM's device state alone, saved into the agent's memory: the last step of a
 * tracked capture's pause (docs/incremental-memory.md). The guest RAM is a shared memfd the agent
 * reads itself, so the migration runs with x-ignore-shared (set by the caller at begin) and
 * carries only the devices and the vCPUs: a few hundred KiB.
 *
 * Why a socket the agent listens on (not a file): nothing of it touches a disk inside the pause,
 * and the bytes are in memory when QEMU reports the migration completed. Why read on a thread of
 * its own (the addon's unixSinkListen, at one FIFO level above the agents' cut windows where
 * permitted) and not on the event loop: the device state (~0.6 MiB) is more than the socket's
 * send buffer, so QEMU's save waits for its reader, and read on the loop it waited inside the
 * pause for a loop busy with the switch's drain, the stopped round's read and the agent's other
 * VM: 13 ms (median) from the devices' save to its end in QEMU's traces, against 1-2 ms with a
 * reader of its own (docs/performance.md, branch `devstate`).
 *
 * ignoreSharedRam() sets the capabilities both a tracked save and a tracked load need.
 *
 * Guarantees of saveDeviceState: `migrate` is written at the call; it resolves once QEMU
 * reported MIGRATION completed and the stream ended; the VM is still stopped then
 * (`finish-migrate` or `postmigrate`), for the caller to resume with contAfterSave(), which
 * waits out `finish-migrate` (QEMU emits the completion before that last step and refuses `cont`
 * until it is done: "Migration is not finalized yet"). A failed or cancelled migration, or a
 * stream that does not end, is ERR_DRIVER / ERR_TIMEOUT naming the VM; the socket is removed
 * either way.
 */
import * as fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { describeError, VnsnapError } from '../../../proto/core/errors';
import { nativeIo, type NativeIo, type UnixSinkHandle } from '../../../switch/native-io';
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

/** A unix socket that takes one connection and keeps what it sends, read on a thread of its own (the module comment). */
export class DeviceStateSink {
  private constructor(
    readonly path: string,
    private readonly handle: UnixSinkHandle,
    private readonly io: NativeIo,
    /** The bytes sent, once the one connection ended. */
    readonly ended: Promise<Buffer>,
  ) {}

  /** Listening at `sockPath` on return; `fifoPriority` (1-99) for its reader thread where permitted. */
  static listen(sockPath: string, opts: { fifoPriority?: number } = {}, io: NativeIo = nativeIo()): Promise<DeviceStateSink> {
    try {
      const [handle, bytes] = io.unixSinkListen(sockPath, opts.fifoPriority ? { fifoPriority: opts.fifoPriority } : {});
      const ended = bytes.catch((e: unknown) => {
        throw new VnsnapError('ERR_DRIVER', `device state stream: ${describeError(e)}`);
      });
      ended.catch(() => undefined);
      return Promise.resolve(new DeviceStateSink(sockPath, handle, io, ended));
    } catch (e) {
      return Promise.reject(new VnsnapError('ERR_DRIVER', `device state socket ${sockPath}: ${describeError(e)}`));
    }
  }

  get uri(): string {
    return `unix:${this.path}`;
  }

  close(): void {
    this.io.unixSinkClose(this.handle);
    fs.rmSync(this.path, { force: true });
  }
}

/**
 * The stopped VM's device state through `sink`: `migrate` is written at the call (before any
 * await: a caller may write it right behind its `stop`, QEMU runs a monitor's commands in order,
 * so the save begins once the VM is stopped; it does not resume the VM). Resolves with the bytes
 * once QEMU reported MIGRATION completed and the stream ended; QEMU may still be in
 * finish-migrate then (contAfterSave()).
 */
export async function saveDeviceState(q: QmpClient, vm: string, sink: DeviceStateSink): Promise<Buffer> {
  const end = q.waitEvent('MIGRATION', (d) => d.status === 'completed' || d.status === 'failed' || d.status === 'cancelled', SAVE_TIMEOUT_MS);
  end.catch(() => undefined);
  const deadline = performance.now() + SAVE_TIMEOUT_MS;
  const migrated = q.execute('migrate', { uri: sink.uri });
  migrated.catch(() => undefined);
  await migrated;
  const ev = await end;
  if (ev.data.status !== 'completed') {
    const info = await q.execute<{ 'error-desc'?: string }>('query-migrate').catch(() => ({}) as { 'error-desc'?: string });
    throw new VnsnapError('ERR_DRIVER', `saving the device state of ${vm}: migration ${String(ev.data.status)}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
  }
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new VnsnapError('ERR_TIMEOUT', `saving the device state of ${vm}: the stream did not end`)), Math.max(1, deadline - performance.now()))));
  late.catch(() => undefined);
  try {
    return await Promise.race([sink.ended, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `cont` after saveDeviceState(): QEMU refuses it while the save is still in finish-migrate
 * ("Migration is not finalized yet"; no event marks that step's end), so it is sent again 1 ms
 * later until QEMU takes it — one round trip when the save is over, as it usually is by the
 * stream's end (a `query-status` before it was a round trip more in every pause). Other
 * refusals are thrown; ERR_TIMEOUT after SAVE_TIMEOUT_MS.
 */
export async function contAfterSave(q: QmpClient, vm: string): Promise<void> {
  const deadline = performance.now() + SAVE_TIMEOUT_MS;
  for (;;) {
    try {
      await q.execute('cont');
      return;
    } catch (e) {
      if (!/not finalized/i.test(describeError(e))) throw e;
      if (performance.now() > deadline) throw new VnsnapError('ERR_TIMEOUT', `resuming ${vm} after saving its device state: QEMU stayed in finish-migrate`);
    }
    await sleep(1);
  }
}
