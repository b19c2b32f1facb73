/**
 * A restore's memory image into QEMU, streamed from the store: QEMU (started with `-incoming
 * defer`) listens on inc.sock in the instance directory (`migrate-incoming unix:SOCK`), and the
 * artefact's chunks from store.read() — each checked by the store before it is handed out — are
 * written into that socket as QEMU reads them (../image-stream.ts feedSocket). No copy of the
 * image is made on the host, and no whole image is held in the agent's memory.
 *
 * Outcome: resolves at MIGRATION completed (the VM loaded, paused). A store failure
 * (ERR_NOT_FOUND, ERR_CHECKSUM, ERR_DATA_LOSS naming the artefact, ERR_UNAVAILABLE...) is thrown
 * as the store raised it: QEMU then sees a truncated stream and fails its load. QEMU's own
 * failure is ERR_DRIVER with its error-desc and the tail of its stderr. Either way the caller
 * stops QEMU.
 */
import { isVnsnapError, VnsnapError } from '../../../proto/core/errors';
import { feedSocket, ReceiverGone } from '../image-stream';
import type { MigrationInfo, QemuVm } from './process';
import type { QmpEvent } from './qmp';

/** After the last byte, QEMU must report the load's end within this. */
const LOAD_END_MS = 120_000;

export async function loadMemory(vm: QemuVm, artefact: string, source: AsyncIterable<Buffer>): Promise<void> {
  const q = vm.q();
  const id = vm.spec.id;
  const sock = `${vm.files.dir}/inc.sock`;
  let timer: NodeJS.Timeout | undefined;
  let expire: () => void = () => undefined;
  const ended = Promise.race([
    q.waitEvent('MIGRATION', (d) => d.status === 'completed' || d.status === 'failed', 24 * 3600_000),
    new Promise<never>((_, reject) => (expire = () => (timer = setTimeout(() => reject(new VnsnapError('ERR_TIMEOUT', `loading ${artefact} into ${id}: QEMU did not finish within ${LOAD_END_MS / 1000} s of the stream's end`)), LOAD_END_MS)))),
  ]);
  ended.catch(() => undefined);
  const failed = async (why: string, cause?: unknown): Promise<VnsnapError> => {
    const info = await q.execute<MigrationInfo>('query-migrate', undefined, 5000).catch(() => ({}) as MigrationInfo);
    return new VnsnapError('ERR_DRIVER', `loading ${artefact} into ${id} failed: ${info['error-desc'] ?? why} ${vm.stderr()}`.trim(), { cause });
  };
  try {
    await q.execute('migrate-incoming', { uri: `unix:${sock}` });
    try {
      await feedSocket(source, sock, `memory image ${artefact} into ${id}`);
    } catch (e) {
      if (!(e instanceof ReceiverGone)) throw e; // the store's error, as it is
      // QEMU closed its end: its own report says why.
      const ev = await Promise.race([ended, new Promise<undefined>((r) => setTimeout(r, 10_000, undefined))]).catch(() => undefined);
      throw await failed(ev ? String(ev.data.status) : e.message, e);
    }
    expire();
    let ev: QmpEvent;
    try {
      ev = await ended;
    } catch (e) {
      if (isVnsnapError(e, 'ERR_TIMEOUT')) throw e;
      throw await failed((e as Error).message, e);
    }
    if (ev.data.status !== 'completed') throw await failed(String(ev.data.status));
  } finally {
    clearTimeout(timer);
  }
}
