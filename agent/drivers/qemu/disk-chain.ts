/**
 * Incremental disks, the restore side (docs/storage.md "Incremental disks"): a snapshot's disk
 * rebuilt as a qcow2 chain in the VM's own disk directory (../disk-dir.ts), with a new overlay
 * (disk0.qcow2) on top for the restored VM to write.
 *
 * Layers (DISK artefacts with the attribute "layer" = 0..n-1, disk-layers.ts):
 *   - each layer is streamed from the store (read()) to `layer-<N>.qcow2` in the directory, its
 *     size and SHA-256 checked as it streams (ERR_CHECKSUM naming the artefact); a layer whose
 *     manifest entry records its chunk list hands it to read(), so each byte is hashed once
 *     (its chunk's SHA-256, the list bound by the manifest: ../../restore-verify.ts);
 *   - each must be a qcow2 image without an external data file, layer 0 without a backing file;
 *   - from layer 1 up, `qemu-img rebase -u -b <layer N-1> -F qcow2` names the layer below (the
 *     header only: the layer was written over that content);
 *   - the finished chain is read back (`qemu-img info --backing-chain`) and must be exactly these
 *     files, every one inside the VM's directory: nothing outside it is ever opened.
 * The base comes from the store (layer 0), not from the image roots: a host that never had the
 * base image restores the disk. The VM's chain record then names these layers, so its next
 * snapshot links them and stores one new layer.
 *
 * A snapshot written before layers has one DISK artefact without the attribute: a standalone
 * image whose backing file is the spec's base. It is restored as before (frozen.qcow2, its
 * chain checked against the image roots), and the VM has no chain record (its next snapshot
 * stores a full image).
 */
import { expectOf, verifiedRead } from '../../restore-verify';
import { OVERLAY_CREATE_OPTIONS } from './overlay-format';
import { streamToFile } from '../image-stream';
import * as path from 'node:path';
import { VnsnapError } from '../../../proto/core/errors';
import type { SnapshotStore } from '../../../proto/store/snapshot-store';
import type { DiskArtefact } from '../driver';
import type { ImageRoots } from '../image-root';
import type { DiskChainRecord } from '../../vm-state';
import { LAYER_ATTRIBUTE, MAX_DISK_LAYERS } from './disk-layers';
import { checkBackingChain } from './spec-check';

export interface DiskRestore {
  /** The VM's name (messages). */
  vm: string;
  disks: DiskArtefact[];
  store: SnapshotStore;
  /** The VM's disk directory (fresh, empty). */
  dir: string;
  /** The new top overlay to create (the VM's disk0). */
  disk0: string;
  roots: ImageRoots;
  qemuImg(args: string[]): Promise<string>;
}

interface ImageInfo {
  filename?: string;
  format?: string;
  'backing-filename'?: string;
  'format-specific'?: { data?: { 'data-file'?: string } };
}

/** Rebuild the disk (module comment); returns the VM's chain record (undefined for an older whole-disk image). */
export async function restoreDisk(r: DiskRestore): Promise<DiskChainRecord | undefined> {
  if (r.disks.length === 0) throw new VnsnapError('ERR_FAILED_PRECONDITION', `VM ${r.vm} has a disk but the snapshot has no disk image`);
  const layers = orderLayers(r.vm, r.disks);
  if (!layers) {
    await restoreWhole(r, r.disks[0] as DiskArtefact);
    return undefined;
  }
  const files = layers.map((_, n) => path.resolve(r.dir, `layer-${n}.qcow2`));
  for (const [n, a] of layers.entries()) {
    const file = files[n] as string;
    await layerToFile(r.store, a, file);
    const info = JSON.parse(await r.qemuImg(['info', '-f', 'qcow2', '--output=json', file])) as ImageInfo;
    const dataFile = info['format-specific']?.data?.['data-file'];
    if (info.format !== 'qcow2' || dataFile !== undefined) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${r.vm}: disk layer ${a.path} is not a qcow2 image without a data file`);
    if (n === 0 && info['backing-filename']) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${r.vm}: disk layer ${a.path} is layer 0 but names a backing file`);
    if (n > 0) await r.qemuImg(['rebase', '-u', '-f', 'qcow2', '-b', files[n - 1] as string, '-F', 'qcow2', file]);
  }
  const top = files[files.length - 1] as string;
  await checkOwnChain(r, top, files);
  await r.qemuImg(['create', '-q', '-f', 'qcow2', ...OVERLAY_CREATE_OPTIONS, '-b', top, '-F', 'qcow2', r.disk0]);
  return { layers: layers.map((a) => ({ path: a.path, size: a.size, sha256: a.sha256 })), top };
}

/** The disk is stored as layers (the attribute "layer"), not as an older whole-disk image. */
export function hasLayers(disks: DiskArtefact[]): boolean {
  return disks.some((d) => d.attributes?.[LAYER_ATTRIBUTE] !== undefined);
}

/** The layers in order, or undefined for one whole-disk artefact; ERR_INVALID_ARGUMENT for anything else. */
export function orderLayers(vm: string, disks: DiskArtefact[]): DiskArtefact[] | undefined {
  const numbered = disks.filter((d) => d.attributes?.[LAYER_ATTRIBUTE] !== undefined);
  if (!hasLayers(disks) && disks.length === 1) return undefined;
  const bad = (why: string): never => {
    throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${vm}: the snapshot's disk layers ${why}`);
  };
  if (numbered.length !== disks.length) bad('mix layers with whole-disk images');
  if (disks.length > MAX_DISK_LAYERS) bad(`are ${disks.length}, more than ${MAX_DISK_LAYERS}`);
  const out: DiskArtefact[] = [];
  for (const d of disks) {
    const v = d.attributes?.[LAYER_ATTRIBUTE] ?? '';
    const n = /^\d{1,3}$/.test(v) ? Number(v) : -1;
    if (n < 0 || n >= disks.length || out[n]) bad(`are not numbered 0..${disks.length - 1} once each (${JSON.stringify(v)} of ${d.path})`);
    out[n] = d;
  }
  return out;
}

/** Stream an artefact into a new file (image-stream.ts), checking its size and SHA-256 against the manifest's as it comes. */
async function layerToFile(store: SnapshotStore, a: DiskArtefact, file: string): Promise<void> {
  await streamToFile(verifiedRead(store.read(a.path, expectOf(a)), a), file);
}

/** The chain read back from its top must be exactly `files` (top first), all in the VM's directory. */
async function checkOwnChain(r: DiskRestore, top: string, files: string[]): Promise<void> {
  const parsed = JSON.parse(await r.qemuImg(['info', '--backing-chain', '--output=json', top])) as unknown;
  const chain = (Array.isArray(parsed) ? parsed : [parsed]) as ImageInfo[];
  const got = chain.map((i) => i.filename ?? '');
  const want = [...files].reverse();
  if (got.length !== want.length || got.some((f, i) => path.resolve(f) !== want[i] || path.dirname(path.resolve(f)) !== path.resolve(r.dir))) {
    throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${r.vm}: the rebuilt disk chain is ${JSON.stringify(got)}, not the snapshot's layers in ${r.dir}`);
  }
}

/** An older snapshot's standalone image over the spec's base (module comment). */
async function restoreWhole(r: DiskRestore, a: DiskArtefact): Promise<void> {
  // A private copy (the artefact may be deleted while the VM runs), then a new overlay over it.
  const frozen = path.resolve(r.dir, 'frozen.qcow2');
  await layerToFile(r.store, a, frozen);
  await checkBackingChain(`VM ${r.vm}: the snapshot's disk image`, frozen, r.roots, (args) => r.qemuImg(args));
  await r.qemuImg(['create', '-q', '-f', 'qcow2', ...OVERLAY_CREATE_OPTIONS, '-b', frozen, '-F', 'qcow2', r.disk0]);
}
