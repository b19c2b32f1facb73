/**
 * A restore over a running QEMU VM without touching it until every VM of the VNE has loaded: the
 * new instance is a second QEMU process of the same id, loaded paused beside the running one
 * (-incoming, its memory image and disk layers verified while they stream in), and it takes the
 * id's place only at swap(). docs/operations.md "Restore" and docs/qemu.md "Restore beside a
 * running VM" say what it costs (two copies of the VM's RAM while it loads).
 *
 * The disk directory. A VM's disk lives in `<disksDir>/<vne>_<vm>/` (../disk-dir.ts), and QEMU
 * names its images by path, so the new chain is built there, at the path it keeps: the running
 * instance's directory is first renamed to `<disksDir>/.beside-running/<vne>_<vm>-<unix ms>/`.
 * The running QEMU holds its images open, so it runs on unaware (it creates no file there while
 * a beside load is pending: the driver refuses a snapshot of it). Then:
 *   swap()     the running instance stopped (QMP quit; its ports closed), its moved directory
 *              deleted (a restore replaces a VM's disk, as it always did), the new instance
 *              registered under the id.
 *   discard()  before the swap: the new instance stopped, the directory it built deleted, the
 *              running instance's directory renamed back — its images are where its QEMU
 *              expects them again, and nothing else of it was touched.
 * A load that fails does discard() itself. An agent that dies while a load is pending leaves the
 * running instance's disk in `.beside-running/` (its QEMU still writing it): the operator moves it
 * back (docs/operations.md).
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { describeError, VnsnapError } from '../../../proto/core/errors';
import type { Logger } from '../../../proto/core/log';
import type { SnapshotStore } from '../../../proto/store/snapshot-store';
import type { DiskDirs } from '../disk-dir';
import type { BesideRestore, RestoreImage, VmStartContext, VmStartSpec } from '../driver';
import type { QemuVm } from './process';

/** Where a running instance's disk directory waits while its replacement loads. */
export const BESIDE_RUNNING = '.beside-running';

/** What a QEMU process takes besides the guest's RAM (TCG's translation cache, devices, buffers). */
export const BESIDE_OVERHEAD_BYTES = 96 * 1024 * 1024;

export interface BesideParts {
  disks: DiskDirs;
  /** Restores loaded beside, by id (the driver's; this module adds and removes its own). */
  pending: Map<string, BesideRestore>;
  /** The instance registered under the id, if any. */
  running(id: string): QemuVm | undefined;
  /** Prepare, spawn and load the VM paused; a failure removes what it made (its disk directory too). */
  load(spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<QemuVm>;
  /** Stop QEMU, close its ports, remove its instance directory (its disk directory too when told). */
  cleanup(vm: QemuVm, discardDisk: boolean): Promise<boolean>;
  install(id: string, vm: QemuVm): void;
  remove(id: string): void;
  log: Logger;
  now?: () => number;
}

export async function restoreBeside(p: BesideParts, spec: VmStartSpec, image: RestoreImage, store: SnapshotStore, ctx: VmStartContext): Promise<BesideRestore> {
  if (p.pending.has(spec.id)) throw new VnsnapError('ERR_ALREADY_EXISTS', `QEMU VM ${spec.id} already has a restore loading beside it`);
  const old = p.running(spec.id);
  if (old?.job) throw new VnsnapError('ERR_CUT_IN_PROGRESS', `QEMU VM ${spec.id} has a snapshot in progress: abort it before restoring beside it`);
  const dir = p.disks.dirOf(spec.vne, spec.name);
  const away = path.join(p.disks.root, BESIDE_RUNNING, `${path.basename(dir)}-${(p.now ?? Date.now)()}`);
  const log = ctx.log.child({ driver: 'qemu' });
  let moved = false;
  let state: 'loading' | 'loaded' | 'swapping' | 'swapped' | 'discarded' = 'loading';
  let vm: QemuVm | undefined;

  /** The running instance's directory back where its QEMU opened it (the new one's removed first). */
  const moveBack = async (): Promise<void> => {
    await fsp.rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    if (moved) await fsp.rename(away, dir);
    moved = false;
  };
  const beside: BesideRestore = {
    handle: { name: spec.name, ports: [] },
    async swap() {
      if (state !== 'loaded') throw new VnsnapError('ERR_STATE', `QEMU VM ${spec.id}: the restore beside it is ${state}, not loaded`);
      state = 'swapping';
      const running = p.running(spec.id);
      if (running) {
        p.remove(spec.id);
        await running.job?.abort().catch(() => undefined);
        await p.cleanup(running, false);
      }
      p.install(spec.id, vm as QemuVm);
      p.pending.delete(spec.id);
      state = 'swapped';
      if (moved) {
        await fsp.rm(away, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }).catch((e) => log.warn({ dir: away, err: describeError(e) }, 'the replaced instance\'s disk could not be deleted'));
        moved = false;
      }
      log.info({ pid: vm?.pid, replaced: running?.pid }, 'QEMU VM swapped in: the instance it replaces stopped, its disk discarded');
    },
    async discard() {
      if (state === 'swapped' || state === 'discarded') return;
      const was = state;
      state = 'discarded';
      p.pending.delete(spec.id);
      if (vm && p.running(spec.id) !== vm) await p.cleanup(vm, false);
      if (was === 'swapping' && !p.running(spec.id)) {
        // The swap failed after stopping the running instance: nothing to move back to.
        await fsp.rm(away, { recursive: true, force: true }).catch(() => undefined);
        if (!vm || p.running(spec.id) !== vm) await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
        return;
      }
      await moveBack();
      log.info({ dir }, 'the restore loaded beside was discarded: the running instance and its disk are as they were');
    },
  };
  p.pending.set(spec.id, beside);
  try {
    if (await p.disks.exists(spec.vne, spec.name)) {
      await fsp.mkdir(path.dirname(away), { recursive: true, mode: 0o700 });
      await fsp.rename(dir, away);
      moved = true;
    }
    vm = await p.load(spec, image, store, ctx);
  } catch (e) {
    p.pending.delete(spec.id);
    state = 'discarded';
    await moveBack().catch((err) => log.error({ dir, from: away, err: describeError(err) }, 'the running instance\'s disk directory could not be moved back: move it by hand'));
    throw e;
  }
  if ((state as string) === 'discarded') {
    // Discarded while loading (the VM was stopped meanwhile): what the load made goes too.
    await p.cleanup(vm, false);
    await moveBack();
    throw new VnsnapError('ERR_STATE', `QEMU VM ${spec.id}: the restore beside it was discarded while loading`);
  }
  state = 'loaded';
  beside.handle.ports = vm.ports;
  return beside;
}
