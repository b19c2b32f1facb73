/**
 * What the QEMU driver checks of a spec before it makes a directory, a port or a process: the
 * extra allow-list (proto/specs/qemu-extra.ts), and every image under the agent's image roots
 * (../image-root.ts). The result is the spec with the RESOLVED paths, which is all the driver
 * hands to QEMU and qemu-img afterwards.
 *
 * The disk is a qcow2 base the driver puts an overlay over; QEMU follows the base's backing
 * chain when it opens the overlay, so the chain is checked too: `qemu-img info --backing-chain
 * --output=json -U` on the resolved base (qemu-img reads the images' headers, no guest runs),
 * then the base must be qcow2, every backing file must be a plain absolute path that passes the
 * same root check (no `json:` or protocol filenames), and no image may name an external qcow2
 * data file. A chain that qemu-img cannot read is refused too. A restore checks the chain of the
 * snapshot's disk image the same way (it names the base as its backing file) before QEMU opens it.
 *
 * A kept disk (a VM booting from the chain a stop kept, docs/qemu.md) is checked the same way
 * from its top, with one difference: the layers above the base may be files directly in the VM's
 * own disk directory (`own`), and the chain must end in the spec's (resolved) base image, itself
 * inside the roots, or (a disk restored from a snapshot's layers, disk-chain.ts) in a layer 0 in
 * that directory.
 */
import * as path from 'node:path';
import type { QemuDriverSpec__Output } from '../../../proto/gen/vnsnap/v1/QemuDriverSpec';
import { VnsnapError } from '../../../proto/core/errors';
import { checkQemuExtra } from '../../../proto/specs/qemu-extra';
import type { ImageRoots } from '../image-root';

/** One image of a chain as `qemu-img info --output=json` describes it (the fields read here). */
export interface ImageInfo {
  filename?: string;
  format?: string;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'format-specific'?: { type?: string; data?: { 'data-file'?: string } };
}

/** The spec with kernel, initrd and disk resolved inside the roots; ERR_INVALID_ARGUMENT otherwise. */
export async function checkQemuSpec(name: string, q: QemuDriverSpec__Output, roots: ImageRoots, qemuImg: (args: string[]) => Promise<string>): Promise<QemuDriverSpec__Output> {
  checkQemuExtra(`VM ${name}: `, q.extra);
  const out = { ...q, extra: { ...q.extra } };
  if (q.kernel) out.kernel = await roots.resolve(`VM ${name}: qemu.kernel`, q.kernel);
  if (q.initrd) out.initrd = await roots.resolve(`VM ${name}: qemu.initrd`, q.initrd);
  if (q.disk) {
    out.disk = await roots.resolve(`VM ${name}: qemu.disk`, q.disk);
    await checkBackingChain(`VM ${name}: qemu.disk`, out.disk, roots, qemuImg);
  }
  return out;
}

/**
 * The image chain from `disk` down, top first (`qemu-img info --backing-chain --output=json -U`:
 * headers only, no lock taken, so a running QEMU's images can be read too); throws what qemu-img
 * or the JSON parse threw.
 */
export async function readImageChain(disk: string, qemuImg: (args: string[]) => Promise<string>): Promise<ImageInfo[]> {
  const parsed = JSON.parse(await qemuImg(['info', '--backing-chain', '--output=json', '-U', disk])) as unknown;
  return Array.isArray(parsed) ? (parsed as ImageInfo[]) : [parsed as ImageInfo];
}

/**
 * Refuse a disk whose chain leaves the roots (module comment); the first image itself is not
 * root-checked. `own`: a kept disk's chain (its upper layers in own.dir, its base own.base).
 */
export async function checkBackingChain(field: string, disk: string, roots: ImageRoots, qemuImg: (args: string[]) => Promise<string>, own?: { dir: string; base: string }): Promise<void> {
  let chain: ImageInfo[];
  try {
    chain = await readImageChain(disk, qemuImg);
  } catch (e) {
    throw new VnsnapError('ERR_INVALID_ARGUMENT', `${field} ${JSON.stringify(disk)}: its image chain cannot be read (${(e as Error).message.split('\n')[0]?.slice(0, 200)})`);
  }
  if (chain[0]?.format !== 'qcow2') throw new VnsnapError('ERR_INVALID_ARGUMENT', `${field} ${JSON.stringify(disk)} is a ${chain[0]?.format ?? 'unknown'} image; the disk must be a qcow2 image`);
  for (const [i, img] of chain.entries()) {
    const dataFile = img['format-specific']?.data?.['data-file'];
    if (dataFile !== undefined) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${field}: image ${JSON.stringify(img.filename ?? disk)} names an external data file (${JSON.stringify(dataFile)}), which is not accepted`);
    if (i === 0) continue;
    const file = img.filename ?? '';
    if (!file.startsWith('/')) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${field}: backing file ${JSON.stringify(file.slice(0, 96))} is not a plain absolute path`);
    const last = i === chain.length - 1;
    // A restored chain's base is its layer 0, copied from the store into the VM's own directory.
    if (own && (!last || path.dirname(file) === own.dir)) await roots.resolveOwn(`${field}: backing file`, file, own.dir);
    else {
      const real = await roots.resolve(`${field}: backing file`, file);
      if (own && real !== own.base) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${field}: the chain ends in ${JSON.stringify(real)}, not in the spec's image ${JSON.stringify(own.base)}`);
    }
  }
  if (own && chain.length < 2) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${field} ${JSON.stringify(disk)} has no backing image; a kept disk must lead to the spec's image ${JSON.stringify(own.base)}`);
}
