/**
 * The cut drives the in-kernel data path's port epochs (switch/bpf-dp/epoch-sync.ts through
 * Switch.useDataPathEpochs), on the real pinned maps of a loaded data path (prefix
 * vnut-bpfepoch-<pid>, removed after): while the VM is paused the port's fast flag is off; when
 * the cut completes the kernel's entry holds the new epoch with the flag back on; a failed cut
 * gives the flag back and the kernel keeps the switch's epoch; a restore's setPortEpoch writes the epoch; an abort
 * advances it; a port not registered is never touched; the epochs are noted for the markers.
 */
import { strict as assert } from 'node:assert';
import { loadDataPath, unloadDataPath } from '../../agent/bpf-dp/loader';
import { DataPathEpochs } from '../../switch/bpf-dp/epoch-sync';
import { KernelCounts } from '../../switch/bpf-dp/kernel-counts';
import { DataPathMaps } from '../../switch/bpf-dp/maps';
import { FakeEnv } from '../support/fake-env';

const PREFIX = `vnut-bpfepoch-${process.pid}`;
const VNI = 4444;
const TAP1 = 111;
const TAP2 = 112;

describe('in-kernel data path: port epochs follow the cut', function () {
  this.timeout(60_000);
  let maps: DataPathMaps;

  before(async () => {
    maps = new DataPathMaps((await loadDataPath(PREFIX)).mapsDir);
  });
  after(async () => {
    maps?.close();
    await unloadDataPath(PREFIX);
  });

  function setup(): { env: FakeEnv; noted: number[] } {
    const env = new FakeEnv({ switches: { a: ['v1', 'v2'] } });
    const noted: number[] = [];
    const epochs = new DataPathEpochs(maps, { noteEpoch: (e) => noted.push(e) } as Pick<KernelCounts, 'noteEpoch'>);
    maps.setPort(TAP1, { vni: VNI, epoch: 0, puntIfindex: 301, fast: true, generation: 0 });
    maps.setPort(TAP2, { vni: VNI, epoch: 0, puntIfindex: 302, fast: true, generation: 0 });
    epochs.register('v1', TAP1, true);
    env.sw('a').useDataPathEpochs(epochs);
    return { env, noted };
  }

  it('fast off while the VM is paused, then the new epoch with fast on; an unregistered port is untouched', async () => {
    const { env, noted } = setup();
    let duringPause: unknown;
    await env.sw('a').cutPort('v1', 1, () => {
      duringPause = maps.port(TAP1);
    });
    assert.deepEqual(duringPause, { vni: VNI, epoch: 0, puntIfindex: 301, fast: false, generation: 0 });
    assert.deepEqual(maps.port(TAP1), { vni: VNI, epoch: 1, puntIfindex: 301, fast: true, generation: 0 });
    assert.deepEqual(maps.port(TAP2), { vni: VNI, epoch: 0, puntIfindex: 302, fast: true, generation: 0 }, 'v2 passed the cut in the switch, but is not on the data path here');
    assert.deepEqual(noted, [1]);
  });

  it("a failed cut un-gates with the flag back and the kernel keeps the switch's epoch; setPortEpoch (restore) and abort write the epoch", async () => {
    const { env } = setup();
    await assert.rejects(env.sw('a').cutPort('v1', 1, () => {
      throw new Error('pause failed');
    }), /pause failed/);
    // The failed port was un-gated, then passed the cut without a pause (cut.ts): the kernel agrees.
    assert.equal(env.sw('a').portEpoch('v1'), 1);
    assert.deepEqual(maps.port(TAP1), { vni: VNI, epoch: 1, puntIfindex: 301, fast: true, generation: 0 });
    env.sw('a').setPortEpoch('v1', 7);
    assert.deepEqual(maps.port(TAP1), { vni: VNI, epoch: 7, puntIfindex: 301, fast: true, generation: 0 });
    env.sw('a').abort('blue', 9);
    assert.equal(maps.port(TAP1)?.epoch, 9);
  });
});
