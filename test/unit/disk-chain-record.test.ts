/**
 * The disk chain record a QEMU VM's state record carries across an agent restart (vm-state.ts,
 * adopt.ts), and the coordinator's ordering of a VM's disk layers (restore-sequencer.ts).
 */
import { strict as assert } from 'node:assert';
import { parseQemuSavedState } from '../../agent/drivers/qemu/adopt';
import { parseDiskChain } from '../../agent/vm-state';
import { orderDiskLayers } from '../../coordinator/restore-sequencer';
import { isVnsnapError } from '../../proto/core/errors';
import type { Artefact__Output } from '../../proto/gen/vnsnap/v1/Artefact';

const chain = { layers: [{ path: 'snapshots/s1/a.disk.0.qcow2', size: 196_608, sha256: 'ab'.repeat(32) }], top: '/var/lib/vnsnap/disks/blue_a/disk0.qcow2' };

describe('disk chain record (agent state) and disk layer order (coordinator)', () => {
  it('a QEMU state record keeps the chain through JSON; an older record or a malformed chain reads as unknown', () => {
    const saved = { dir: '/run/vnsnap/qemu/vnqm-a-1-1', nic: 'stream', taps: [], ramPadKib: 0, snapSerial: 3, diskChain: chain };
    assert.deepEqual(parseQemuSavedState(JSON.parse(JSON.stringify(saved)), '/run/vnsnap/qemu').diskChain, chain);
    const older: Record<string, unknown> = { ...saved };
    delete older.diskChain;
    assert.equal(parseQemuSavedState(older, '/run/vnsnap/qemu').diskChain, undefined);
    assert.equal(parseDiskChain({ ...chain, top: 'relative.qcow2' }), undefined);
    assert.equal(parseDiskChain({ ...chain, layers: [{ ...chain.layers[0], sha256: 'xyz' }] }), undefined);
    assert.equal(parseDiskChain({ ...chain, layers: [{ ...chain.layers[0], size: -1 }] }), undefined);
    assert.equal(parseDiskChain('chain'), undefined);
    assert.deepEqual(parseDiskChain({ layers: [], top: '/images/base.qcow2' }), { layers: [], top: '/images/base.qcow2' });
  });

  it('orders a VM\'s DISK artefacts by their layer; one without it is an older whole disk; gaps and repeats are ERR_DATA_LOSS', () => {
    const a = (path: string, layer?: string): Artefact__Output => ({ path, size: 1, sha256: '', kind: 'ARTEFACT_KIND_DISK', owner: 'a', attributes: layer === undefined ? {} : { layer }, storedBytes: 0 });
    assert.deepEqual(orderDiskLayers('m', 'a', [a('2', '2'), a('0', '0'), a('1', '1')]).map((x) => x.path), ['0', '1', '2']);
    assert.deepEqual(orderDiskLayers('m', 'a', [a('whole')]).map((x) => x.path), ['whole']);
    assert.deepEqual(orderDiskLayers('m', 'a', []), []);
    assert.throws(() => orderDiskLayers('m', 'a', [a('0', '0'), a('2', '2')]), (e) => isVnsnapError(e, 'ERR_DATA_LOSS') && e.message === 'm: the disk layers of VM a are not numbered 0..1 once each ("2" of 2)');
    assert.throws(() => orderDiskLayers('m', 'a', [a('0', '0'), a('x', '0')]), (e) => isVnsnapError(e, 'ERR_DATA_LOSS'));
    assert.throws(() => orderDiskLayers('m', 'a', [a('0', '0'), a('w')]), (e) => isVnsnapError(e, 'ERR_DATA_LOSS') && e.message.endsWith('("" of w)'));
  });
});
