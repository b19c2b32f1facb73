/**
 * The disk side of a QEMU snapshot: a qcow2 overlay chain in the VM's disk directory (beside the
 * chain's current top: under the agent's disks directory: it outlives the instance, see ../disk-dir.ts). A kept disk
 * already holds overlays of earlier instances, so a new overlay never reuses an existing name.
 *
 *   prepare()   before the cut: create the next overlay (qemu-img's, or a copy of its first one of
 *               the same size with the backing name replaced: overlay-template.ts; its backing
 *               named but not opened; the top's size read from its header, qcow2-header.ts) and attach it as a node without a backing, so the cut's disk step is one
 *               graph change instead of creating and formatting a file while the VM is paused.
 *   snapshot()  at the cut (VM paused): blockdev-snapshot puts the prepared overlay on top of the
 *               current top, which is frozen from then on: the disk as of the cut.
 *   store(o)    after the resume: the frozen disk into the store as layers (disk-layers.ts:
 *               the frozen top alone over the layers the previous snapshot stored, or a full
 *               image), and the VM's chain record moved on to them.
 *   undo()      abort after the cut: block-commit the overlay back into the frozen image (active
 *               commit) and delete it, so the chain is as before the snapshot; the chain record
 *               goes back to what it was (the frozen image is written again: it is no layer).
 *   drop()      the prepared overlay was not used (abort, failure before the disk step): detach
 *               and delete it.
 * A VM without a disk makes every step a no-op.
 */
import * as fsp from 'node:fs/promises';
import { OVERLAY_CREATE_OPTIONS } from './overlay-format';
import * as path from 'node:path';
import { describeError, VnsnapError } from '../../../proto/core/errors';
import type { Logger } from '../../../proto/core/log';
import type { QemuVm } from './process';
import type { QmpClient } from './qmp';
import type { DiskChainRecord } from '../../vm-state';
import { backingOf, storeLayers, type LayerJob, type StoredLayers } from './disk-layers';
import { readQcow2Header } from './qcow2-header';
import { createOverlay } from './overlay-template';

export class DiskOverlay {
  /** The overlay made and attached (blockdev-add, no backing yet) before the cut, so the pause only links it in. */
  private prepared: { file: string; node: string } | undefined;
  private overlay: { file: string; node: string; frozenNode: string; frozenFile: string } | undefined;
  /** The VM's chain record before store() moved it (undo() puts it back). */
  private chainBefore: DiskChainRecord | undefined;

  constructor(
    private readonly vm: QemuVm,
    private readonly epoch: number,
    private readonly qemuImg: (args: string[]) => Promise<string>,
  ) {}

  private get q(): QmpClient {
    return this.vm.q();
  }

  private get log(): Logger {
    return this.vm.log;
  }

  /** The cut froze a disk image (snapshot() ran and undo() did not). */
  get frozen(): boolean {
    return this.overlay !== undefined;
  }

  async prepare(): Promise<void> {
    const vm = this.vm;
    if (!vm.hasDisk || this.prepared) return;
    const node = `d${this.epoch}s${vm.snapSerial}`;
    // Beside the current top (an adopted VM's files.diskDir is not known from its record).
    const dir = path.dirname(vm.topFile);
    let file = `${dir}/disk-e${this.epoch}-${vm.snapSerial}.qcow2`;
    for (let n = 1; await exists(file); n++) file = `${dir}/disk-e${this.epoch}-${vm.snapSerial}-${n}.qcow2`;
    // The top's size from its header (qcow2-header.ts); qemu-img asked only about another format.
    const size = (await readQcow2Header(vm.topFile))?.virtualSize ?? (JSON.parse(await this.qemuImg(['info', '-U', '--output=json', vm.topFile])) as { 'virtual-size'?: number })['virtual-size'];
    if (!size) throw new VnsnapError('ERR_DRIVER', `QEMU VM ${vm.spec.id}: qemu-img info gave no virtual size for ${vm.topFile}`);
    const backing = path.resolve(vm.topFile);
    // From the template of qemu-img's first overlay of this size (overlay-template.ts): no process per snapshot.
    await createOverlay(file, backing, size, async (f) => void (await this.qemuImg(['create', '-q', '-f', 'qcow2', ...OVERLAY_CREATE_OPTIONS, '-u', '-b', backing, '-F', 'qcow2', f, String(size)])));
    try {
      await this.q.execute('blockdev-add', { driver: 'qcow2', 'node-name': node, file: { driver: 'file', filename: file, 'drop-cache': false }, backing: null });
    } catch (e) {
      await fsp.rm(file, { force: true });
      throw e;
    }
    this.prepared = { file, node };
  }

  async drop(): Promise<void> {
    const pr = this.prepared;
    if (!pr) return;
    this.prepared = undefined;
    if (!this.vm.exited) await this.q.execute('blockdev-del', { 'node-name': pr.node }).catch((e) => this.log.warn({ err: describeError(e), node: pr.node }, 'could not detach the unused overlay'));
    await fsp.rm(pr.file, { force: true });
  }

  async snapshot(): Promise<void> {
    const vm = this.vm;
    const pr = this.prepared;
    if (!vm.hasDisk || !pr) return;
    const top = { node: vm.topNode, file: vm.topFile };
    await this.q.execute('blockdev-snapshot', { node: top.node, overlay: pr.node });
    this.prepared = undefined;
    this.overlay = { file: pr.file, node: pr.node, frozenNode: top.node, frozenFile: top.file };
    vm.topNode = pr.node;
    vm.topFile = pr.file;
  }

  /**
   * Store the frozen disk as layers (disk-layers.ts) and move the VM's chain record on to them.
   * A VM without a record whose frozen top lies directly on the spec's base (booted fresh from
   * it) has the chain "base not stored yet".
   */
  async store(o: Omit<LayerJob, 'frozenFile' | 'chain' | 'qemuImg'>): Promise<StoredLayers> {
    const ov = this.overlay;
    if (!ov) throw new VnsnapError('ERR_STATE', `QEMU VM ${this.vm.spec.id}: no frozen disk`);
    const vm = this.vm;
    let chain = vm.diskChain;
    const base = path.resolve(vm.qspec.disk);
    if (!chain && (await backingOf(this.qemuImg, ov.frozenFile)) === base) chain = { layers: [], top: base };
    const r = await storeLayers({ ...o, frozenFile: ov.frozenFile, chain, qemuImg: this.qemuImg });
    this.chainBefore = vm.diskChain;
    vm.diskChain = r.chain;
    return r;
  }

  async undo(): Promise<void> {
    const ov = this.overlay;
    const vm = this.vm;
    if (!ov || vm.exited) return;
    this.overlay = undefined;
    try {
      const jobId = `vnqm-commit-${ov.node}`;
      const readyEv = this.q.waitEvent('BLOCK_JOB_READY', (d) => d.device === jobId, 60_000);
      await this.q.execute('block-commit', { 'job-id': jobId, device: ov.node, 'auto-dismiss': true });
      await readyEv;
      const doneEv = this.q.waitEvent('BLOCK_JOB_COMPLETED', (d) => d.device === jobId, 60_000);
      await this.q.execute('job-complete', { id: jobId });
      const done = await doneEv;
      if (done.data.error) throw new Error(String(done.data.error));
      vm.topNode = ov.frozenNode;
      vm.topFile = ov.frozenFile;
      if (vm.diskChain?.top === ov.frozenFile) vm.diskChain = this.chainBefore;
      // The commit took the overlay out of the device's graph, but the node prepare() added stays
      // (with the frozen node as its backing) until deleted: the next snapshot's blockdev-snapshot
      // would find the frozen node busy ("node is used as backing hd").
      await this.q.execute('blockdev-del', { 'node-name': ov.node });
      await fsp.rm(ov.file, { force: true });
    } catch (e) {
      this.log.warn({ err: describeError(e), overlay: ov.file }, 'could not merge the snapshot overlay back; it stays in the chain');
    }
  }
}

async function exists(file: string): Promise<boolean> {
  return (await fsp.stat(file).catch(() => undefined)) !== undefined;
}
