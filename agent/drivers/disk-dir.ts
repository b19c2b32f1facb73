/**
 * The agent's kept disks: one directory per VM, `<disksDir>/<vne>_<vm>/` (disksDir is
 * `<stateDir>/disks`, on persistent storage, unlike the drivers' instance directories in /run).
 * A driver whose VMs have a writable disk of their own (QEMU's qcow2 overlay chain) creates it
 * there, so that a `vne stop` keeps it and the next start boots from it (docs/qemu.md).
 *
 * Guarantees:
 *  - A kept disk is only deleted by discard() (the coordinator's explicit StopVm.discard_disk,
 *    DiscardDisks); a directory found where a fresh one is wanted (StartVm without kept_disk,
 *    a restore) is never deleted but moved aside to `<disksDir>/.set-aside/<vne>_<vm>-<unix ms>/`
 *    with a warning in the log: the operator decides what to do with it.
 *  - A kept disk is marked by `kept.json` ({top, keptUnixMs}) written atomically (temporary file,
 *    fsync, rename) after the hypervisor stopped: `top` names the chain's top image in the
 *    directory, the one to boot from. A directory without it was not kept cleanly.
 *  - Names are safe path components: `<vne>_<vm>` with anything outside [A-Za-z0-9_.-] replaced
 *    by "_" (VNE and VM names are validated by the coordinator; this is the second line).
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VnsnapError } from '../../proto/core/errors';
import type { Logger } from '../../proto/core/log';

export const SET_ASIDE = '.set-aside';
const MARKER = 'kept.json';

export interface KeptMarker {
  /** Basename of the chain's top image in the directory. */
  top: string;
  keptUnixMs: number;
}

export class DiskDirs {
  constructor(
    readonly root: string,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** `<root>/<vne>_<vm>` (module comment). */
  dirOf(vne: string, vm: string): string {
    const safe = (s: string): string => s.replace(/[^A-Za-z0-9_.-]/g, '_');
    const name = `${safe(vne)}_${safe(vm)}`;
    if (name === '.' || name === '..' || name.startsWith(SET_ASIDE)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `no disk directory for VM ${vm} of VNE ${vne}`);
    return path.join(this.root, name);
  }

  async exists(vne: string, vm: string): Promise<boolean> {
    return (await fsp.stat(this.dirOf(vne, vm)).catch(() => undefined))?.isDirectory() === true;
  }

  /**
   * A fresh, empty directory for the VM's disk. One that exists already is moved aside first
   * (module comment); returns the directory.
   */
  async fresh(vne: string, vm: string): Promise<string> {
    const dir = this.dirOf(vne, vm);
    if (await this.exists(vne, vm)) await this.setAside(vne, vm);
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    return dir;
  }

  /** Move the VM's directory to `.set-aside/<vne>_<vm>-<unix ms>` and log it; returns where it went. */
  async setAside(vne: string, vm: string): Promise<string> {
    const dir = this.dirOf(vne, vm);
    const aside = path.join(this.root, SET_ASIDE, `${path.basename(dir)}-${this.now()}`);
    await fsp.mkdir(path.dirname(aside), { recursive: true, mode: 0o700 });
    await fsp.rename(dir, aside);
    this.log.warn({ vne, vm, dir, movedTo: aside }, 'a disk directory nobody asked to boot from was found: moved aside, not deleted (delete it when it is not needed)');
    return aside;
  }

  /** The kept disk's top image (an absolute path); ERR_NOT_FOUND naming the directory when there is none. */
  async keptTop(vne: string, vm: string): Promise<string> {
    const dir = this.dirOf(vne, vm);
    let m: KeptMarker;
    try {
      m = JSON.parse(await fsp.readFile(path.join(dir, MARKER), 'utf8')) as KeptMarker;
    } catch (e) {
      const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'is gone (or was not kept cleanly)' : `cannot be read (${(e as Error).message})`;
      throw new VnsnapError('ERR_NOT_FOUND', `the kept disk of VM ${vm} (VNE ${vne}) at ${dir} ${why}`);
    }
    if (typeof m.top !== 'string' || m.top === '' || m.top !== path.basename(m.top)) throw new VnsnapError('ERR_NOT_FOUND', `the kept disk of VM ${vm} (VNE ${vne}) at ${dir} has a bad ${MARKER}`);
    const top = path.join(dir, m.top);
    if (!(await fsp.stat(top).catch(() => undefined))?.isFile()) throw new VnsnapError('ERR_NOT_FOUND', `the kept disk of VM ${vm} (VNE ${vne}): ${top} is gone`);
    return top;
  }

  /** Mark the directory kept with `top` as its chain's top (atomically); returns its size in bytes. */
  async markKept(vne: string, vm: string, top: string): Promise<{ dir: string; bytes: number }> {
    const dir = this.dirOf(vne, vm);
    if (path.dirname(top) !== dir) throw new VnsnapError('ERR_INTERNAL', `the disk top ${top} is not in ${dir}`);
    const marker: KeptMarker = { top: path.basename(top), keptUnixMs: this.now() };
    const tmp = path.join(dir, `.${MARKER}.tmp`);
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify(marker));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, path.join(dir, MARKER));
    return { dir, bytes: await dirBytes(dir) };
  }

  /** Delete the VM's directory; returns it if it existed, else undefined. Idempotent. */
  async discard(vne: string, vm: string): Promise<string | undefined> {
    const dir = this.dirOf(vne, vm);
    if (!(await this.exists(vne, vm))) return undefined;
    await fsp.rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    this.log.info({ vne, vm, dir }, 'kept disk discarded');
    return dir;
  }
}

/** Allocated bytes of the regular files directly in `dir` (a disk directory is flat). */
export async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    if (!e.isFile()) continue;
    const st = await fsp.stat(path.join(dir, e.name)).catch(() => undefined);
    if (st) n += st.blocks * 512;
  }
  return n;
}
