/**
 * What an agent does with pins of another build (agent/bpf-dp/host-dp.ts replaceStale; the stamp
 * itself: test/unit/bpf-dp-stamp.test.ts): stale pins whose vn_tx still runs on a TAP the caller
 * does not re-attach are refused (ERR_UNSUPPORTED_VERSION, one line naming the TAP) and left as
 * they were; once every such TAP
 * is one the caller re-attaches they are unloaded, and a new load is current, with programs of
 * its own. Pins vnit-bpfstamp; a veth pair in namespace vnbs-h (no traffic; this kernel has no
 * dummy devices); all removed even when a test fails.
 */
import { strict as assert } from 'node:assert';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { replaceStale } from '../../agent/bpf-dp/host-dp';
import { attachDataPath, dataPathStamp, devicesRunning, loadDataPath, pinnedDataPath, unloadDataPath, type PinnedDataPath } from '../../agent/bpf-dp/loader';
import { isVnsnapError } from '../../proto/core/errors';
import { sh, Topology } from '../support/netns';

const PREFIX = 'vnit-bpfstamp';
const DEV = 'vnbsd0';

const progId = (p: string): number => (JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', p])) as { id: number }).id;

describe('in-kernel data path: pins stamped with their build; pins of another build replaced only when no TAP is left on them', function () {
  this.timeout(60_000);
  let topo: Topology | undefined;
  let ns = '';

  before(() => {
    topo = new Topology('vnbs');
    ns = topo.addNamespace('h');
    topo.exec('h', 'ip', ['link', 'add', DEV, 'type', 'veth', 'peer', 'name', 'vnbsd1']);
    topo.exec('h', 'ip', ['link', 'set', DEV, 'up']);
  });

  after(async () => {
    await topo?.destroy();
    await unloadDataPath(PREFIX);
  });

  it('refuses stale pins whose vn_tx a TAP still runs that the caller does not re-attach, and leaves them; replaces them when it does', async () => {
    const dp = await loadDataPath(PREFIX);
    await fsp.rmdir(path.join(dp.dir, `stamp-${await dataPathStamp()}`)); // as a build before stamps left it
    const stale = (await pinnedDataPath(PREFIX)) as PinnedDataPath;
    assert.equal(stale.current, false);
    const oldTx = progId(stale.dp.prog('vn_tx'));
    await attachDataPath(stale.dp, DEV, 'vn_tx', ns);
    assert.deepEqual(await devicesRunning(stale.dp.prog('vn_tx'), ns), [DEV]);
    await assert.rejects(
      replaceStale(stale, async () => new Set(['vnbsd9']), ns),
      (e) =>
        isVnsnapError(e, 'ERR_UNSUPPORTED_VERSION') &&
        e.message === `in-kernel data path ${PREFIX}: the pins under /sys/fs/bpf/${PREFIX} are of another build (stamp none) and ${DEV} still run their vn_tx without a VM this agent adopts; stop those VMs (or run the agent of the build that pinned it) before starting this one`,
    );
    assert.equal(progId(stale.dp.prog('vn_tx')), oldTx, 'the refused pins are left as they were');
    assert.deepEqual(await replaceStale(stale, async () => new Set([DEV]), ns), [DEV]);
    assert.equal(await pinnedDataPath(PREFIX), undefined);
    const fresh = await loadDataPath(PREFIX);
    assert.equal((await pinnedDataPath(PREFIX))?.current, true);
    assert.notEqual(progId(fresh.prog('vn_tx')), oldTx);
    // The TAP runs the old program until its adopter attaches the new one.
    assert.deepEqual(await devicesRunning(fresh.prog('vn_tx'), ns), []);
    await attachDataPath(fresh, DEV, 'vn_tx', ns);
    assert.deepEqual(await devicesRunning(fresh.prog('vn_tx'), ns), [DEV]);
  });
});
