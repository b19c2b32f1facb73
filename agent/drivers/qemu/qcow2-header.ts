/**
 * A qcow2 image's header read directly from its file: its virtual size and the backing file it
 * names, what a snapshot asks of its overlays (disk-overlay.ts, disk-layers.ts).
 *
 * Why: those two facts were asked of `qemu-img info` twice per snapshot, a process spawned each
 * time. With snapshots once a second that was ~2.5 ms of the agent's CPU per spawn (fork and
 * exec from a process of some 150 MiB) and ~5 ms of qemu-img's own, on a host whose guests need
 * the cores (docs/performance.md, branch `agentcpu`). The header is one read of its first bytes.
 *
 * Guarantees:
 *   - readQcow2Header gives what `qemu-img info` gives for a qcow2 image (format version 2 or 3):
 *     `virtualSize` its virtual-size; `backing` its backing-filename, resolved against the
 *     image's directory when relative (its full-backing-filename for a file name), or undefined
 *     when the header names none.
 *   - It gives undefined for a file that is no qcow2 image of those versions (another format, a
 *     short or damaged header): the caller asks qemu-img then, which knows every format.
 *   - The image may be open in QEMU meanwhile (the header is read, never locked or written);
 *     a missing or unreadable file rejects with the file system's error.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

/** What a qcow2 header says (module comment). */
export interface Qcow2Header {
  virtualSize: number;
  backing: string | undefined;
}

const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
/** The fixed part of a version 2 header; the name follows within the image's first cluster. */
const HEADER_BYTES = 72;
/** qemu's limit on a backing file name's length (block/qcow2.c). */
const MAX_BACKING_NAME = 1023;
/** Bytes read at once: the header and, in every image qemu-img makes, the backing file's name. */
const FIRST_READ = 4096;

export async function readQcow2Header(file: string): Promise<Qcow2Header | undefined> {
  const fh = await fsp.open(file, 'r');
  try {
    const head = Buffer.alloc(FIRST_READ);
    const { bytesRead } = await fh.read(head, 0, FIRST_READ, 0);
    if (bytesRead < HEADER_BYTES || head.readUInt32BE(0) !== QCOW2_MAGIC) return undefined;
    const version = head.readUInt32BE(4);
    if (version !== 2 && version !== 3) return undefined;
    const nameAt = head.readBigUInt64BE(8);
    const nameLen = head.readUInt32BE(16);
    const size = head.readBigUInt64BE(24);
    if (size > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
    const virtualSize = Number(size);
    if (nameAt === 0n || nameLen === 0) return { virtualSize, backing: undefined };
    if (nameLen > MAX_BACKING_NAME || nameAt > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
    const at = Number(nameAt);
    let name: Buffer;
    if (at + nameLen <= bytesRead) name = head.subarray(at, at + nameLen);
    else {
      name = Buffer.alloc(nameLen);
      if ((await fh.read(name, 0, nameLen, at)).bytesRead !== nameLen) return undefined;
    }
    const backing = name.toString('utf8');
    // A protocol name (json:{...}, nbd:...) is qemu's to resolve; a file name is the image's directory's.
    if (/^[a-z][a-z0-9+.-]*:/i.test(backing) && !backing.startsWith('/')) return undefined;
    return { virtualSize, backing: path.resolve(path.dirname(file), backing) };
  } finally {
    await fh.close();
  }
}
