/**
 * The build stamp of a pinned in-kernel data path (agent/bpf-dp/loader.ts): a load writes this
 * build's stamp and is found current; pins without a stamp (a build before stamps) or with another
 * one are stale; stale pins whose vn_tx no device runs are replaced without asking
 * (agent/bpf-dp/host-dp.ts replaceStale). The refusal while a TAP still runs the old vn_tx is in
 * test/integration/bpf-dp-stamp.test.ts (it needs a device in a namespace). Pins vnut-bpfstamp,
 * removed even when a test fails; no device is touched.
 */
import { strict as assert } from 'node:assert';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { replaceStale } from '../../agent/bpf-dp/host-dp';
import { dataPathStamp, loadDataPath, pinnedDataPath, unloadDataPath, type PinnedDataPath } from '../../agent/bpf-dp/loader';

const PREFIX = 'vnut-bpfstamp';

describe('in-kernel data path: pins stamped with their build', function () {
  this.timeout(60_000);

  after(async () => {
    await unloadDataPath(PREFIX);
  });

  it('a load carries this build\'s stamp and is found current; without a stamp or with another it is stale', async () => {
    const dp = await loadDataPath(PREFIX);
    const stamp = await dataPathStamp();
    assert.match(stamp ?? '', /^[0-9a-f]{16}$/);
    assert.deepEqual(await fsp.readdir(dp.dir), ['maps', 'progs', `stamp-${stamp}`].sort());
    const found = await pinnedDataPath(PREFIX);
    assert.deepEqual([found?.dp.dir, found?.dp.mapsDir, found?.stamp, found?.current], [dp.dir, dp.mapsDir, stamp, true]);
    await fsp.rename(path.join(dp.dir, `stamp-${stamp}`), path.join(dp.dir, 'stamp-00000000000000aa'));
    const other = await pinnedDataPath(PREFIX);
    assert.deepEqual([other?.stamp, other?.current], ['00000000000000aa', false]);
    await fsp.rmdir(path.join(dp.dir, 'stamp-00000000000000aa'));
    const none = await pinnedDataPath(PREFIX);
    assert.deepEqual([none?.stamp, none?.current], [undefined, false]);
  });

  it('replaces stale pins no device runs without asking; a fresh load is current', async () => {
    assert.deepEqual(await replaceStale((await pinnedDataPath(PREFIX)) as PinnedDataPath, async () => new Set()), []);
    assert.equal(await pinnedDataPath(PREFIX), undefined);
    await loadDataPath(PREFIX);
    assert.equal((await pinnedDataPath(PREFIX))?.current, true);
  });
});
