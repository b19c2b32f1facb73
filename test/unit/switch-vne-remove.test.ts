/**
 * A deleted VNE leaves the switch (ForgetVne): refused while a port of it is attached; a
 * recording still waiting for a peer's markers fails; its name and VNI are free again.
 */
import { strict as assert } from 'node:assert';
import { isVnsnapError } from '../../proto/core/errors';
import { formatMac } from '../../switch/bridge/mac';
import { fakePortPair } from '../../switch/port/porttest/fake-port';
import { Switch } from '../../switch/switch';
import { FakeUdpNetwork } from '../../switch/tunnel/tunneltest/fake-transport';
import { vmMac } from '../support/frames';

describe('Switch: removing a VNE', () => {
  it('is refused while a port is attached; then fails a waiting recording, forgets the VNE and frees its VNI', async () => {
    const net = new FakeUdpNetwork();
    const sw = new Switch({ id: 'h1', now: () => 5_000 });
    sw.attachTunnel(net.endpoint(0x0a000001, 6081));
    try {
      sw.configureVne({ name: 'lh', vni: 90, peers: [{ name: 'h2', address: '10.0.0.2', port: 6081 }], macs: [{ mac: formatMac(vmMac(3)), peer: 'h2' }] });
      sw.attachPort('lh', fakePortPair('c').port, { mac: formatMac(vmMac(1)) });
      await sw.cutPorts(['c'], 1);
      // h2 never sends its marker: the recording of epoch 1 waits for it.
      const waiting = sw.channelState('lh', 1, 60_000);
      assert.throws(() => sw.removeVne('lh'), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'VNE lh still has ports here (c): detach them first');
      assert.deepEqual(sw.stats().vnes['lh']?.peers, ['h2']);
      sw.removePort('c');
      assert.equal(sw.removeVne('lh'), true);
      await assert.rejects(waiting, (e) => isVnsnapError(e, 'ERR_SNAPSHOT_ABORTED') && e.message === 'VNE lh was removed');
      assert.equal(sw.stats().vnes['lh'], undefined);
      assert.deepEqual(sw.stats().peers['h2']?.vnes, []);
      assert.equal(sw.vneGeneration('lh'), undefined);
      assert.equal(sw.removeVne('lh'), false, 'unknown: nothing to do');
      sw.configureVne({ name: 'other', vni: 90 });
      assert.equal(sw.stats().vnes['other']?.vni, 90);
    } finally {
      sw.stop();
    }
  });
});
