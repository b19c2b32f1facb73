/**
 * Image roots: the agent, not the caller, decides which host files a VM may load or write.
 * Every kernel, initrd, ramdisk and disk of a driver spec must lead to a regular file inside one
 * of the directories of the agent's `imageRoots` (default /var/lib/vnsnap/images); anything else
 * is ERR_INVALID_ARGUMENT naming the field and the roots, before the driver spawns or writes
 * anything.
 *
 * How a path is judged: its shape first (absolute, normalised: proto/specs/image-path.ts), then
 * fs.realpath, which follows every symlink of the path and of its parent chain, then the check
 * on the resolved path: inside a root (the roots are resolved the same way, at each check) and a
 * regular file. The driver then uses the RESOLVED path, never the caller's: a symlink swapped
 * after the check changes nothing. What remains is a race inside the roots themselves (replacing
 * a checked file or directory between the check and QEMU's or xl's open), which needs write
 * access to a root: the roots must be writable only by the operator (docs/security.md).
 *
 * A target that may not exist yet (the disk a Xen restore writes back) is judged by its parent
 * directory, resolved the same way, and by the file itself when it exists.
 *
 * The agent's own files: the upper layers of a VM's disk chain (the overlays the driver made
 * over the spec's base image) live in the agent's disk directory for that VM, not in an image
 * root. resolveOwn() admits a regular file directly inside such a directory (resolved the same
 * way), and nothing else; the base at the bottom of the chain must still be inside a root.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VnsnapError } from '../../proto/core/errors';
import { checkImagePath } from '../../proto/specs/image-path';

/** The roots an agent uses when its configuration names none. */
export const DEFAULT_IMAGE_ROOTS: readonly string[] = ['/var/lib/vnsnap/images'];

function errno(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? 'error';
}

export class ImageRoots {
  readonly roots: readonly string[];

  constructor(roots: readonly string[] = DEFAULT_IMAGE_ROOTS) {
    this.roots = [...roots];
  }

  private refuse(field: string, value: string, why: string): VnsnapError {
    return new VnsnapError('ERR_INVALID_ARGUMENT', `${field} ${JSON.stringify(value.length > 96 ? `${value.slice(0, 96)}...` : value)} ${why}; images must be regular files under the agent's image roots (${this.roots.join(', ') || 'none'})`);
  }

  /** The roots as they resolve now (a root that does not exist admits nothing). */
  private async resolvedRoots(): Promise<string[]> {
    const out: string[] = [];
    for (const r of this.roots) {
      try {
        out.push(await fsp.realpath(r));
      } catch {
        /* absent root: admits nothing */
      }
    }
    return out;
  }

  private inside(roots: string[], real: string): boolean {
    return roots.some((r) => {
      const rel = path.relative(r, real);
      return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
    });
  }

  /** The resolved path of an existing image file inside a root; ERR_INVALID_ARGUMENT otherwise. */
  async resolve(field: string, value: string): Promise<string> {
    checkImagePath(field, value);
    let real: string;
    try {
      real = await fsp.realpath(value);
    } catch (e) {
      throw this.refuse(field, value, `cannot be resolved (${errno(e)})`);
    }
    if (!this.inside(await this.resolvedRoots(), real)) throw this.refuse(field, value, real === value ? 'is outside the image roots' : `resolves to ${JSON.stringify(real)}, outside the image roots`);
    const st = await fsp.stat(real).catch(() => undefined);
    if (!st?.isFile()) throw this.refuse(field, value, 'is not a regular file');
    return real;
  }

  /** The resolved path of a regular file directly inside `dir` (the agent's own disk directory); ERR_INVALID_ARGUMENT otherwise. */
  async resolveOwn(field: string, value: string, dir: string): Promise<string> {
    checkImagePath(field, value);
    const real = await fsp.realpath(value).catch(() => undefined);
    const realDir = await fsp.realpath(dir).catch(() => undefined);
    const st = real ? await fsp.stat(real).catch(() => undefined) : undefined;
    if (!real || !realDir || path.dirname(real) !== realDir || !st?.isFile()) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${field} ${JSON.stringify(value.length > 96 ? `${value.slice(0, 96)}...` : value)} is neither the VM's own disk layer (in ${dir}) nor an image under the agent's image roots`);
    return real;
  }

  /**
   * The resolved path of a file to be written inside a root: the file if it exists (then it must
   * be a regular file inside a root), else its resolved parent directory + its name.
   */
  async resolveTarget(field: string, value: string): Promise<string> {
    checkImagePath(field, value);
    try {
      await fsp.lstat(value);
      return await this.resolve(field, value);
    } catch (e) {
      if (e instanceof VnsnapError) throw e;
    }
    let dir: string;
    try {
      dir = await fsp.realpath(path.dirname(value));
    } catch (e) {
      throw this.refuse(field, value, `has no directory to be written in (${errno(e)})`);
    }
    const real = path.join(dir, path.basename(value));
    if (!this.inside(await this.resolvedRoots(), real)) throw this.refuse(field, value, 'is outside the image roots');
    return real;
  }
}
