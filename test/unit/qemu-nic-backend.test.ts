/**
 * The NIC backend of a QEMU VM across snapshot and restore (agent/drivers/qemu/nic-backend.ts):
 * the memory image records the mode it was saved with, the record survives the manifest, and a
 * restore uses that mode or refuses, in one line, a mode with another vnet_hdr.
 */
import { strict as assert } from 'node:assert';
import { decodeManifest, encodeManifest } from '../../proto/artefacts/manifest';
import { isVnsnapError } from '../../proto/core/errors';
import { checkQemuExtra } from '../../proto/specs/qemu-extra';
import type { CutReport, SnapshotJob, VmImage } from '../../agent/drivers/driver';
import { DEFAULT_NIC_MODE, defaultNicMode, NIC_ATTRIBUTE, recordNicMode, restoreNicMode } from '../../agent/drivers/qemu/nic-backend';
import type { NicMode } from '../../agent/drivers/qemu/cmdline';

const image = (nic?: string) => ({ path: 'snapshots/s1/a.mem', size: 1, sha256: 'aa'.repeat(32), ...(nic === undefined ? {} : { attributes: { [NIC_ATTRIBUTE]: nic } }) });

function refusal(requested: NicMode | undefined, fallback: NicMode, nic?: string): string {
  try {
    return `returned ${restoreNicMode('a', requested, fallback, image(nic))}`;
  } catch (e) {
    assert.ok(isVnsnapError(e, 'ERR_FAILED_PRECONDITION'), String(e));
    return e.message;
  }
}

describe('QEMU NIC backend across snapshot and restore', () => {
  it('a VM spec may name every mode (the extra allow-list), and nothing else', () => {
    for (const nic of ['stream', 'tap', 'tap-vnet', 'tap-bpf']) checkQemuExtra('', { nic });
    assert.throws(() => checkQemuExtra('', { nic: 'vhost-user' }), /^VnsnapError: qemu\.extra\.nic "vhost-user" is invalid: expected stream, tap, tap-vnet or tap-bpf$/);
  });

  it('a restore uses the mode the image was saved with, whatever the driver default', () => {
    assert.equal(restoreNicMode('a', undefined, 'stream', image('tap-vnet')), 'tap-vnet');
    assert.equal(restoreNicMode('a', undefined, 'tap-vnet', image('tap')), 'tap');
    assert.equal(restoreNicMode('a', undefined, 'tap', image('stream')), 'stream');
  });

  it('new VMs default to tap-bpf where the data path runs, tap-vnet elsewhere; old images restore as before the default changed', () => {
    assert.equal(DEFAULT_NIC_MODE, 'tap-bpf');
    assert.equal(defaultNicMode(true), 'tap-bpf');
    assert.equal(defaultNicMode(false), 'tap-vnet');
    // Recorded tap or stream, no mode in the spec: the recorded mode, not the new default.
    assert.equal(restoreNicMode('a', undefined, DEFAULT_NIC_MODE, image('tap')), 'tap');
    assert.equal(restoreNicMode('a', undefined, DEFAULT_NIC_MODE, image('stream')), 'stream');
    // No record (saved with vnet_hdr=off when the default was tap): tap, as before.
    assert.equal(restoreNicMode('a', undefined, DEFAULT_NIC_MODE, image()), restoreNicMode('a', undefined, 'tap', image()));
    assert.equal(restoreNicMode('a', undefined, DEFAULT_NIC_MODE, image()), 'tap');
    assert.equal(restoreNicMode('a', undefined, 'tap-vnet', image()), 'tap');
  });

  it('honours a mode the spec names when its vnet_hdr matches (stream and tap are interchangeable)', () => {
    assert.equal(restoreNicMode('a', 'stream', 'tap', image('tap')), 'stream');
    assert.equal(restoreNicMode('a', 'tap', 'tap', image('stream')), 'tap');
    assert.equal(restoreNicMode('a', 'tap-vnet', 'stream', image('tap-vnet')), 'tap-vnet');
  });

  it('tap-bpf is tap-vnet\'s twin (vnet_hdr=on): each restores onto the other, never onto tap or stream', () => {
    // No mode in the spec: the agent's choice between the twins (tap-bpf where its data path runs).
    assert.equal(restoreNicMode('a', undefined, 'tap-vnet', image('tap-bpf')), 'tap-vnet');
    assert.equal(restoreNicMode('a', undefined, 'tap-bpf', image('tap-vnet')), 'tap-bpf');
    assert.equal(restoreNicMode('a', undefined, 'tap-bpf', image('tap-bpf')), 'tap-bpf');
    assert.equal(restoreNicMode('a', undefined, 'tap', image('tap-bpf')), 'tap-bpf');
    assert.equal(restoreNicMode('a', 'tap-vnet', 'tap-vnet', image('tap-bpf')), 'tap-vnet');
    assert.equal(restoreNicMode('a', 'tap-bpf', 'tap-vnet', image('tap-vnet')), 'tap-bpf');
    assert.equal(refusal('tap', 'tap', 'tap-bpf'), 'VM a: the snapshot was saved with NIC backend tap-bpf (vnet_hdr=on) and cannot be restored onto nic=tap (vnet_hdr=off); restore it with nic=tap-vnet');
    assert.equal(refusal('tap-bpf', 'tap', 'stream'), 'VM a: the snapshot was saved with NIC backend stream (vnet_hdr=off) and cannot be restored onto nic=tap-bpf (vnet_hdr=on); restore it with nic=stream or tap');
  });

  it('an image without a record (older snapshots) was saved with vnet_hdr=off', () => {
    assert.equal(restoreNicMode('a', undefined, 'stream', image()), 'stream');
    assert.equal(restoreNicMode('a', undefined, 'tap-vnet', image()), 'tap');
    assert.equal(refusal('tap-vnet', 'tap'), 'VM a: the snapshot was saved with NIC backend stream or tap (no record: vnet_hdr=off) and cannot be restored onto nic=tap-vnet (vnet_hdr=on); restore it with nic=stream or tap');
  });

  it('refuses a vnet_hdr mismatch either way, and an unknown recorded mode, in one line', () => {
    assert.equal(refusal('tap', 'tap', 'tap-vnet'), 'VM a: the snapshot was saved with NIC backend tap-vnet (vnet_hdr=on) and cannot be restored onto nic=tap (vnet_hdr=off); restore it with nic=tap-vnet');
    assert.equal(refusal('stream', 'tap', 'tap-vnet'), 'VM a: the snapshot was saved with NIC backend tap-vnet (vnet_hdr=on) and cannot be restored onto nic=stream (vnet_hdr=off); restore it with nic=tap-vnet');
    assert.equal(refusal('tap-vnet', 'tap', 'stream'), 'VM a: the snapshot was saved with NIC backend stream (vnet_hdr=off) and cannot be restored onto nic=tap-vnet (vnet_hdr=on); restore it with nic=stream or tap');
    assert.equal(refusal(undefined, 'tap', 'vhost-user'), 'VM a: the snapshot\'s memory image snapshots/s1/a.mem was saved with NIC backend "vhost-user", which this agent does not know (stream, tap, tap-vnet, tap-bpf)');
  });

  it('a snapshot job records its mode on the memory image and delegates everything else', async () => {
    const calls: string[] = [];
    const report: CutReport = { pauseMs: 1, cutUnixUs: 2, resumeUnixUs: 3, phases: [] };
    const inner: SnapshotJob = {
      vm: 'a',
      mode: 'background',
      ready: Promise.resolve(),
      cut: (f) => (calls.push('cut'), f().then(() => report)),
      durable: () => (calls.push('durable'), Promise.resolve<VmImage>({ memory: image(), disks: [{ path: 'snapshots/s1/a.qcow2', size: 2, sha256: 'bb'.repeat(32) }] })),
      abort: () => (calls.push('abort'), Promise.resolve()),
    };
    const job = recordNicMode(inner, 'tap-vnet');
    assert.equal(job.vm, 'a');
    assert.equal(job.mode, 'background');
    assert.equal(job.ready, inner.ready);
    assert.equal(await job.cut(() => Promise.resolve()), report);
    assert.deepEqual(await job.durable(), { memory: image('tap-vnet'), disks: [{ path: 'snapshots/s1/a.qcow2', size: 2, sha256: 'bb'.repeat(32) }] });
    await job.abort();
    assert.deepEqual(calls, ['cut', 'durable', 'abort']);
    assert.equal(job.approachCut, undefined, 'a job without approachCut: none');
    const approaching = recordNicMode({ ...inner, approachCut: (at) => void calls.push(`approach ${at.stopAtUs}`) }, 'tap');
    approaching.approachCut?.({ stopAtUs: 42 });
    assert.equal(calls.at(-1), 'approach 42', 'one with it: delegated');
  });

  it('the record goes through the manifest (the artefact attributes)', () => {
    const body = { snapshotId: 's1', artefacts: [{ ...image('tap-vnet'), kind: 'ARTEFACT_KIND_MEMORY', owner: 'a' }, { ...image(), path: 'snapshots/s1/b.mem', kind: 'ARTEFACT_KIND_MEMORY', owner: 'b' }] };
    const back = decodeManifest(encodeManifest(body as never)).body.artefacts;
    assert.deepEqual(back.map((a) => a.attributes), [{ nic: 'tap-vnet' }, {}]);
  });
});
