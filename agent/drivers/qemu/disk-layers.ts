/**
 * Incremental disks, the snapshot side (docs/storage.md "Incremental disks"): which artefacts a
 * QEMU VM's disk becomes in a snapshot.
 *
 * The VM's disk is a qcow2 chain in its disk directory: a base, then one overlay per cut (the
 * overlay made at cut k holds exactly what the guest wrote between cut k and cut k+1, and is
 * frozen by cut k+1). A snapshot stores that chain as layers, `<prefix><vm>.disk.<N>.qcow2`
 * with the attribute {"layer": "N"}: layer 0 a full image without a backing file, each layer
 * above it one frozen overlay as it is on disk (its backing file named in its header is a local
 * path; a restore rewrites it, disk-chain.ts).
 *
 *   incremental  the frozen top's backing file is the `top` of the VM's chain record (the image
 *                the previous snapshot stored as its last layer, or the spec's base not stored
 *                yet): the lower layers are link()ed from the previous snapshot's artefacts (no
 *                byte read or written; a content-addressed store adds nothing), and only the
 *                frozen top is uploaded. A chain whose base is not stored yet uploads the base as
 *                layer 0 (a content-addressed store keeps one copy of it across VMs).
 *   full         anything else, always correct: the frozen top with every layer under it merged
 *                (`qemu-img convert`) is uploaded as layer 0, alone, and the VM's chain starts
 *                again from it. That is: no chain record (a VM adopted from an older record, a
 *                kept disk, an older snapshot restored), a top whose backing is not the
 *                recorded one (a snapshot whose layer was never stored), a base that has a
 *                backing file of its own, a lower layer gone from the store (its snapshot was
 *                deleted: link() says ERR_NOT_FOUND) or not the recorded content, and a chain
 *                that would exceed MAX_DISK_LAYERS.
 * A chain is never stored broken: either every lower layer is linked with its recorded SHA-256,
 * or the layers already linked are deleted and the full image is stored instead.
 */
import * as path from 'node:path';
import { isVnsnapError, VnsnapError } from '../../../proto/core/errors';
import type { SnapshotStore, StoredArtefact } from '../../../proto/store/snapshot-store';
import type { DiskArtefact } from '../driver';
import type { DiskChainRecord } from '../../vm-state';
import { readQcow2Header } from './qcow2-header';

/**
 * The most layers a snapshot's disk has: a chain that would grow past it is stored as one full
 * image instead (a new chain starts from it). It bounds what a restore reads and rebases, and
 * the depth of the qcow2 chain QEMU walks on a read that misses the upper layers.
 */
export const MAX_DISK_LAYERS = 16;

/** The attribute that numbers a disk layer. */
export const LAYER_ATTRIBUTE = 'layer';

/** Store path of layer `n` of VM `vm` in the snapshot at `prefix`. */
export function layerPath(prefix: string, vm: string, n: number): string {
  return `${prefix}${vm}.disk.${n}.qcow2`;
}

export interface LayerJob {
  store: SnapshotStore;
  prefix: string;
  /** The VM's name in its VNE (the artefacts' names). */
  vm: string;
  /** The frozen top at this cut. */
  frozenFile: string;
  /** The VM's chain record before this snapshot (undefined: unknown). */
  chain: DiskChainRecord | undefined;
  /** Where the full image is written before it is uploaded. */
  tmpFile: string;
  qemuImg(args: string[]): Promise<string>;
  /** Upload a local file as the artefact `rel` (streamed; the caller keeps the writer to abort it and the artefact to delete it on abort). */
  upload(file: string, rel: string): Promise<StoredArtefact>;
  /** An artefact this job linked: deleted if the snapshot is aborted. */
  committed(a: StoredArtefact): void;
  aborted(): boolean;
}

export interface StoredLayers {
  disks: DiskArtefact[];
  /** The VM's chain once this snapshot is durable. */
  chain: DiskChainRecord;
  /** How the disk was stored, for the log. */
  how: 'incremental' | 'full';
  why?: string;
}

/**
 * The backing file named in a qcow2 image's header (absolute), or undefined: read from the header
 * itself (qcow2-header.ts), qemu-img asked only about an image that is no qcow2 of its own.
 */
export async function backingOf(qemuImg: LayerJob['qemuImg'], file: string): Promise<string | undefined> {
  const header = await readQcow2Header(file);
  if (header) return header.backing;
  const info = JSON.parse(await qemuImg(['info', '-U', '--output=json', file])) as { 'full-backing-filename'?: string; 'backing-filename'?: string };
  const b = info['full-backing-filename'] ?? info['backing-filename'];
  return b ? path.resolve(path.dirname(file), b) : undefined;
}

/** A stored layer: its number added to what the store asked to be kept with it (a content-addressed store's chunk list, which lets a restore check each chunk once instead of the whole layer again). */
function layer(a: StoredArtefact, n: number): DiskArtefact {
  return { ...a, attributes: { ...a.attributes, [LAYER_ATTRIBUTE]: String(n) } };
}

/** Store the frozen disk as layers (module comment). */
export async function storeLayers(j: LayerJob): Promise<StoredLayers> {
  const why = await whyFull(j);
  if (why === undefined) {
    const lower = await linkLower(j);
    if (lower) {
      const n = lower.length;
      const top = await j.upload(j.frozenFile, layerPath(j.prefix, j.vm, n));
      const disks = [...lower, layer(top, n)];
      return { disks, chain: { layers: disks.map(plain), top: j.frozenFile }, how: 'incremental' };
    }
    return full(j, 'a lower layer is gone from the store (its snapshot was deleted) or changed');
  }
  return full(j, why);
}

/** Undefined when the frozen top can be stored as one new layer over the recorded chain, else why not. */
async function whyFull(j: LayerJob): Promise<string | undefined> {
  const c = j.chain;
  if (!c) return 'the chain is not known';
  const backing = await backingOf(j.qemuImg, j.frozenFile);
  if (backing !== path.resolve(c.top)) return 'the frozen top is not over the recorded chain';
  const count = c.layers.length === 0 ? 2 : c.layers.length + 1;
  if (count > MAX_DISK_LAYERS) return `the chain would have ${count} layers (at most ${MAX_DISK_LAYERS})`;
  if (c.layers.length === 0 && (await backingOf(j.qemuImg, c.top)) !== undefined) return 'the base image has a backing file of its own';
  return undefined;
}

/**
 * The layers under the new one: the recorded ones linked into this snapshot, or the base
 * uploaded as layer 0. Undefined (the links made so far deleted) when one is gone or changed.
 */
async function linkLower(j: LayerJob): Promise<DiskArtefact[] | undefined> {
  const c = j.chain as DiskChainRecord;
  if (c.layers.length === 0) {
    const base = await j.upload(c.top, layerPath(j.prefix, j.vm, 0));
    return [layer(base, 0)];
  }
  const out: DiskArtefact[] = [];
  for (const [n, l] of c.layers.entries()) {
    if (j.aborted()) throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
    const to = layerPath(j.prefix, j.vm, n);
    let a: StoredArtefact;
    try {
      a = await j.store.link(l.path, to);
    } catch (e) {
      if (!isVnsnapError(e) || e.code !== 'ERR_NOT_FOUND') throw e;
      await dropLinks(j, out);
      return undefined;
    }
    j.committed(a);
    out.push(layer(a, n));
    if (a.sha256 !== l.sha256 || a.size !== l.size) {
      await dropLinks(j, out);
      return undefined;
    }
  }
  return out;
}

async function dropLinks(j: LayerJob, made: StoredArtefact[]): Promise<void> {
  for (const a of made) await j.store.delete(a.path);
}

/** The whole disk as of the cut, merged into one image without a backing file, as layer 0. */
async function full(j: LayerJob, why: string): Promise<StoredLayers> {
  await j.qemuImg(['convert', '-U', '-O', 'qcow2', j.frozenFile, j.tmpFile]);
  if (j.aborted()) throw new VnsnapError('ERR_SNAPSHOT_ABORTED', 'aborted');
  const a = await j.upload(j.tmpFile, layerPath(j.prefix, j.vm, 0));
  return { disks: [layer(a, 0)], chain: { layers: [plain(a)], top: j.frozenFile }, how: 'full', why };
}

function plain(a: StoredArtefact): { path: string; size: number; sha256: string } {
  return { path: a.path, size: a.size, sha256: a.sha256 };
}
