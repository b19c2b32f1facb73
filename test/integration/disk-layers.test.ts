/**
 * Incremental disks without a guest: real qcow2 chains made and written with qemu-img/qemu-io, a
 * real content-addressed store, the QEMU driver's two halves (disk-layers.ts stores a frozen top
 * as layers, disk-chain.ts rebuilds them in a fresh directory). Each "cut" makes an overlay over
 * the current top, which is frozen from then on, as blockdev-snapshot does in a running VM.
 * Checked: the second and third snapshots upload one small layer each and link the rest
 * (storedBytes 0); a restore is the frozen disk byte for byte (qemu-img compare); deleting the
 * earlier snapshots leaves the later one whole; the fall backs to a full image (lower layer gone,
 * chain unknown, chain past MAX_DISK_LAYERS) and the refusals of a damaged snapshot.
 * Everything is under /tmp/vnqm-dl-<pid> and removed in after(), also when a test fails.
 */
import { strict as assert } from 'node:assert';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { DiskArtefact } from '../../agent/drivers/driver';
import { ImageRoots } from '../../agent/drivers/image-root';
import { fileToStore } from '../../agent/drivers/job';
import { orderLayers, restoreDisk } from '../../agent/drivers/qemu/disk-chain';
import { layerPath, MAX_DISK_LAYERS, storeLayers, type StoredLayers } from '../../agent/drivers/qemu/disk-layers';
import { qemuImg } from '../../agent/drivers/qemu/process';
import { checkBackingChain } from '../../agent/drivers/qemu/spec-check';
import type { DiskChainRecord } from '../../agent/vm-state';
import { isVnsnapError } from '../../proto/core/errors';
import { CHUNK_LIST_ATTRIBUTE, type SnapshotStore } from '../../proto/store/snapshot-store';
import { openStore } from '../../proto/store/store-config';
import { storedLayerAttrs } from '../support/layer-attrs';

const MiB = 1024 * 1024;
const img = (args: string[]): Promise<string> => qemuImg('qemu-img', args);

function hasQemuImg(): boolean {
  return spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;
}

/** Write `len` bytes of `pattern` at `offset` into the top of a chain (qemu-io opens it with its backing). */
function write(file: string, pattern: number, offset: number, len: number): void {
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern} ${offset} ${len}`, file], { stdio: 'ignore' });
}

/** qemu-img compare: the two images show the guest the same bytes. */
function sameDisk(a: string, b: string): boolean {
  return spawnSync('qemu-img', ['compare', '-q', a, b]).status === 0;
}

describe('incremental disks (qcow2 layers in a content-addressed store, real qemu-img)', function () {
  this.timeout(120_000);
  const root = `/tmp/vnqm-dl-${process.pid}`;
  const images = path.join(root, 'images');
  const vmDir = path.join(root, 'vm');
  let store: SnapshotStore;
  let serial = 0;

  before(async function () {
    if (!hasQemuImg()) this.skip();
    fs.rmSync(root, { recursive: true, force: true });
    fs.mkdirSync(images, { recursive: true });
    fs.mkdirSync(vmDir, { recursive: true });
    store = await openStore({ kind: 'local', dir: path.join(root, 'store') });
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  /** A new overlay over `top` (the cut): `top` is frozen from now on; returns the overlay. */
  function cut(top: string): string {
    const next = path.join(vmDir, `disk-${++serial}.qcow2`);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', top, '-F', 'qcow2', next]);
    return next;
  }

  function snapshot(id: string, frozenFile: string, chain: DiskChainRecord | undefined): Promise<StoredLayers> {
    const linked: string[] = [];
    return storeLayers({
      store,
      prefix: `snapshots/${id}/`,
      vm: 'a',
      frozenFile,
      chain,
      tmpFile: path.join(root, `full-${id}.qcow2`),
      qemuImg: img,
      upload: async (file, rel) => fileToStore(file, await store.create(rel)),
      committed: (a) => void linked.push(a.path),
      aborted: () => false,
    });
  }

  /** Restore into a fresh directory; returns its top overlay (disk0). */
  const layerAttrs = (relPath: string, n: number): Promise<Record<string, string>> => storedLayerAttrs(store, relPath, n);

  async function restore(disks: DiskArtefact[], name: string): Promise<{ disk0: string; chain: DiskChainRecord | undefined }> {
    const dir = path.join(root, name);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir);
    const disk0 = path.join(dir, 'disk0.qcow2');
    const chain = await restoreDisk({ vm: 'a', disks, store, dir, disk0, roots: new ImageRoots([images]), qemuImg: img });
    return { disk0, chain };
  }

  it('stores the base and each snapshot\'s new writes once, links the rest, restores byte for byte, and survives deleting the earlier snapshots', async () => {
    const base = path.join(images, 'base.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '64M']);
    write(base, 0x11, 0, 4 * MiB);
    const disk0 = path.join(vmDir, 'disk0.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', disk0]);
    write(disk0, 0x22, 8 * MiB, 256 * 1024);

    // Snapshot 1: the chain's base is not stored yet: base as layer 0, disk0 as layer 1.
    let top = cut(disk0);
    const s1 = await snapshot('s1', disk0, { layers: [], top: base });
    assert.equal(s1.how, 'incremental');
    assert.deepEqual(s1.disks.map((d) => [d.path, d.attributes]), [
      [layerPath('snapshots/s1/', 'a', 0), await layerAttrs(layerPath('snapshots/s1/', 'a', 0), 0)],
      [layerPath('snapshots/s1/', 'a', 1), await layerAttrs(layerPath('snapshots/s1/', 'a', 1), 1)],
    ]);
    assert.deepEqual(s1.chain, { layers: s1.disks.map((d) => ({ path: d.path, size: d.size, sha256: d.sha256 })), top: disk0 });

    // Snapshots 2 and 3: one small new layer each over links.
    const snaps = [s1];
    for (const [i, pattern] of [0x33, 0x44].entries()) {
      write(top, pattern, (16 + i) * MiB, 128 * 1024);
      const frozen = top;
      top = cut(frozen);
      const s = await snapshot(`s${i + 2}`, frozen, (snaps[snaps.length - 1] as StoredLayers).chain);
      assert.equal(s.how, 'incremental');
      assert.equal(s.disks.length, i + 3);
      const lower = s.disks.slice(0, -1);
      const added = s.disks[s.disks.length - 1] as DiskArtefact;
      assert.deepEqual(lower.map((d) => d.storedBytes), lower.map(() => 0), 'the lower layers are links: nothing added');
      assert.deepEqual(lower.map((d) => d.sha256), (snaps[snaps.length - 1] as StoredLayers).disks.map((d) => d.sha256));
      assert.deepEqual(s.disks.map((d) => d.attributes), await Promise.all(s.disks.map((d, n) => layerAttrs(d.path, n))), 'links keep the chunk list too');
      assert.ok((added.storedBytes ?? Infinity) < MiB, `the new layer added ${added.storedBytes} bytes, far below the 64 MiB disk`);
      assert.ok(added.size < 2 * MiB, `the new layer is ${added.size} bytes`);
      snaps.push(s);
    }
    const s3 = snaps[2] as StoredLayers;
    const frozen3 = s3.chain.top;

    const r = await restore(s3.disks, 'restore-1');
    assert.ok(sameDisk(r.disk0, frozen3), 'the restored disk is the disk at the third cut');
    assert.ok(!sameDisk(r.disk0, (snaps[1] as StoredLayers).chain.top), 'and not the disk at the second');
    assert.deepEqual(r.chain, { layers: s3.chain.layers, top: path.join(root, 'restore-1', 'layer-3.qcow2') });
    const chainFiles = (JSON.parse(await img(['info', '--backing-chain', '--output=json', r.disk0])) as { filename: string }[]).map((i) => path.basename(i.filename));
    assert.deepEqual(chainFiles, ['disk0.qcow2', 'layer-3.qcow2', 'layer-2.qcow2', 'layer-1.qcow2', 'layer-0.qcow2']);
    // Kept by a stop, the restored chain passes the kept-disk check: every layer, its base too, in the VM's own directory.
    const roots = new ImageRoots([images]);
    await checkBackingChain('kept', r.disk0, roots, img, { dir: path.join(root, 'restore-1'), base });
    await assert.rejects(checkBackingChain('kept', r.disk0, roots, img, { dir: path.join(root, 'elsewhere'), base }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'));

    await store.deleteByPrefix('snapshots/s1/');
    await store.deleteByPrefix('snapshots/s2/');
    const again = await restore(s3.disks, 'restore-2');
    assert.ok(sameDisk(again.disk0, frozen3), 'snapshot 3 is whole without snapshots 1 and 2');

    // A snapshot over a chain whose lower layers are gone: one full layer 0, nothing else under the prefix.
    const full = await snapshot('s1b', disk0, s1.chain);
    assert.equal(full.how, 'full');
    assert.deepEqual(full.disks.map((d) => d.attributes), [await layerAttrs(layerPath('snapshots/s1b/', 'a', 0), 0)]);
    assert.deepEqual(await store.list('snapshots/s1b/'), [layerPath('snapshots/s1b/', 'a', 0)]);
    const rf = await restore(full.disks, 'restore-3');
    assert.ok(sameDisk(rf.disk0, disk0), 'the full image is the disk at the first cut');
  });

  it(`past ${MAX_DISK_LAYERS} layers (and over an unknown or foreign chain) stores one full image and starts a new chain from it`, async () => {
    const base = path.join(images, 'base2.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '8M']);
    let frozen = path.join(vmDir, 'b0.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', frozen]);
    const unknown = await snapshot('u', frozen, undefined);
    assert.equal(unknown.how, 'full');
    assert.equal(unknown.why, 'the chain is not known');
    const foreign = await snapshot('f', frozen, { layers: [], top: path.join(images, 'other.qcow2') });
    assert.equal(foreign.how, 'full');

    let chain: DiskChainRecord = { layers: [], top: base };
    const counts: string[] = [];
    for (let k = 0; k < MAX_DISK_LAYERS + 1; k++) {
      write(frozen, 0x50 + k, k * 256 * 1024, 4096);
      const next = cut(frozen);
      const s = await snapshot(`m${k}`, frozen, chain);
      counts.push(`${s.how}:${s.disks.length}`);
      chain = s.chain;
      if (k === MAX_DISK_LAYERS - 2) {
        // The chain at its bound restores whole.
        const r = await restore(s.disks, 'restore-max');
        assert.ok(sameDisk(r.disk0, frozen));
      }
      if (k === MAX_DISK_LAYERS - 1) {
        const r = await restore(s.disks, 'restore-after');
        assert.ok(sameDisk(r.disk0, frozen), 'the full image after the bound is the disk at that cut');
      }
      frozen = next;
    }
    const want = Array.from({ length: MAX_DISK_LAYERS - 1 }, (_, k) => `incremental:${k + 2}`);
    assert.deepEqual(counts, [...want, 'full:1', 'incremental:2']);
  });

  it('refuses a layer whose bytes are not the recorded ones, a layer 0 with a backing file, and badly numbered layers', async () => {
    const base = path.join(images, 'base3.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '8M']);
    const d0 = path.join(vmDir, 'c0.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', d0]);
    write(d0, 0x77, 0, 65536);
    cut(d0);
    const s = await snapshot('bad', d0, { layers: [], top: base });
    const [l0, l1] = s.disks as [DiskArtefact, DiskArtefact];
    const forged = { ...l1, attributes: { ...l1.attributes, [CHUNK_LIST_ATTRIBUTE]: 'cd'.repeat(32) } };
    await assert.rejects(restore([l0, forged], 'restore-bad'), (e) => isVnsnapError(e, 'ERR_CHECKSUM') && e.message.includes(l1.path), 'a chunk list other than the manifest\'s is refused');
    // a manifest written before disk layers carried their chunk list: the whole layer's SHA-256 is the check
    await assert.rejects(restore([l0, { ...l1, attributes: { layer: '1' }, sha256: 'ab'.repeat(32) }], 'restore-bad'), (e) => isVnsnapError(e, 'ERR_CHECKSUM') && e.message.startsWith(`${l1.path}: SHA-256 ${l1.sha256}, ${'ab'.repeat(32)} expected`));
    await assert.rejects(restore([{ ...l1, attributes: { layer: '0' } }], 'restore-bad'), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === `VM a: disk layer ${l1.path} is layer 0 but names a backing file`);
    assert.throws(() => orderLayers('a', [l0, { ...l1, attributes: { layer: '2' } }]), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === `VM a: the snapshot's disk layers are not numbered 0..1 once each ("2" of ${l1.path})`);
    assert.throws(() => orderLayers('a', [l0, { ...l1, attributes: {} }]), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === "VM a: the snapshot's disk layers mix layers with whole-disk images");
    assert.deepEqual(orderLayers('a', [l1, l0]), [l0, l1]);
  });

  it('restores a snapshot written before layers (one standalone image over the spec\'s base) the old way', async () => {
    const base = path.join(images, 'base4.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '8M']);
    write(base, 0x12, 0, 65536);
    const standalone = path.join(root, 'standalone.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', standalone]);
    write(standalone, 0x34, MiB, 65536);
    const a = await fileToStore(standalone, await store.create('snapshots/old/a.disk.qcow2'));
    const r = await restore([a], 'restore-old');
    assert.equal(r.chain, undefined, 'no chain record: the next snapshot stores a full image');
    assert.ok(sameDisk(r.disk0, standalone));
    assert.deepEqual(fs.readdirSync(path.join(root, 'restore-old')).sort(), ['disk0.qcow2', 'frozen.qcow2']);
  });
});
