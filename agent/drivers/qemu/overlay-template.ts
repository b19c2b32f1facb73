/**
 * A snapshot's next overlay (disk-overlay.ts prepare()) written from a template of qemu-img's
 * own output instead of running `qemu-img create` every time.
 *
 * Why: a VM snapshotted once a second got a new empty overlay every second, one `qemu-img create`
 * each: ~2.5 ms of the agent's CPU for the spawn and ~5.6 ms of qemu-img's, on a host whose
 * guests need the cores (docs/performance.md, branch `agentcpu`). An empty qcow2 overlay of a
 * given virtual size and creation options differs from another only in its backing file's name,
 * which the format keeps at the end of the image's first cluster (its header cluster).
 *
 * Guarantees:
 *   - The first overlay of each virtual size is made by qemu-img (`create(file)`); its bytes
 *     become the template when they have the layout this module relies on (a qcow2 header of
 *     version 2 or 3 whose backing name lies in the first cluster, last: only zeros after it to
 *     the cluster's end; the file at most MAX_TEMPLATE bytes). Otherwise no template is kept and
 *     every overlay of that size is made by qemu-img.
 *   - An overlay made from the template is the template with the backing name and its length
 *     replaced and the rest of the header cluster zero: byte for byte what qemu-img creates with
 *     that name (overlay-template.test.ts compares them). A name that does not fit the cluster,
 *     or is longer than qemu's 1,023 bytes, is made by qemu-img.
 *   - The file is created exclusively (an existing file is never overwritten: ERR from the file
 *     system) and synced before this resolves, as qemu-img's close flushes it; on a failure it
 *     is removed.
 */
import * as fsp from 'node:fs/promises';

/** Templates kept per virtual size (the creation options are the driver's constant ones). */
const templates = new Map<number, Template | null>();
/** The largest template kept (its L1 and refcount tables grow with the virtual size). */
const MAX_TEMPLATE = 4 * 1024 * 1024;
const QCOW2_MAGIC = 0x514649fb;
const MAX_BACKING_NAME = 1023;

interface Template {
  bytes: Buffer;
  /** Where the backing name begins, and the end of the header cluster. */
  nameAt: number;
  clusterEnd: number;
}

/**
 * Create the overlay `file` of `virtualSize` over `backing` (the name its header gets): from the
 * template of that size, or with `create(file)` (qemu-img) when there is none yet or it cannot.
 */
export async function createOverlay(file: string, backing: string, virtualSize: number, create: (file: string) => Promise<void>): Promise<void> {
  const t = templates.get(virtualSize);
  const name = Buffer.from(backing, 'utf8');
  if (!t || name.length > MAX_BACKING_NAME || t.nameAt + name.length > t.clusterEnd) {
    await create(file);
    // The overlay exists now: a failure to read it back only means no template (qemu-img every time).
    if (t === undefined) templates.set(virtualSize, await fsp.readFile(file).then(templateOf, () => null));
    return;
  }
  const bytes = Buffer.from(t.bytes);
  bytes.fill(0, t.nameAt, t.clusterEnd);
  name.copy(bytes, t.nameAt);
  bytes.writeUInt32BE(name.length, 16);
  const fh = await fsp.open(file, 'wx');
  try {
    await fh.writeFile(bytes);
    await fh.datasync();
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fsp.rm(file, { force: true });
    throw e;
  }
  await fh.close();
}

/** The template qemu-img's `bytes` make, or null when they do not have the layout relied on. */
export function templateOf(bytes: Buffer): Template | null {
  if (bytes.length < 72 || bytes.length > MAX_TEMPLATE || bytes.readUInt32BE(0) !== QCOW2_MAGIC) return null;
  const version = bytes.readUInt32BE(4);
  const clusterBits = bytes.readUInt32BE(20);
  if ((version !== 2 && version !== 3) || clusterBits < 9 || clusterBits > 21) return null;
  const clusterEnd = 2 ** clusterBits;
  const nameAt = Number(bytes.readBigUInt64BE(8));
  const nameLen = bytes.readUInt32BE(16);
  if (nameAt === 0 || nameLen === 0 || nameAt + nameLen > clusterEnd || clusterEnd > bytes.length) return null;
  for (let i = nameAt + nameLen; i < clusterEnd; i++) if (bytes[i] !== 0) return null;
  return { bytes, nameAt, clusterEnd };
}

/** Forget every template (tests). */
export function forgetTemplates(): void {
  templates.clear();
}
