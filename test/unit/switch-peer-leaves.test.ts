/**
 * A peer leaves a VNE (its VMs were restored on this host after it was lost): ConfigureVne's peer
 * list is the whole set, so the switch drops the peer, its routes, and no later cut waits for
 * its markers (found by the lost-host test: every snapshot after such a restore timed out).
 * And a deleted VNE leaves the switch altogether (removeVne), once none of its ports remain.
 */
import { strict as assert } from 'node:assert';
import { isVnsnapError } from '../../proto/core/errors';
import { formatMac } from '../../switch/bridge/mac';
import { fakePortPair } from '../../switch/port/porttest/fake-port';
import { Switch } from '../../switch/switch';
import type { VnePeer } from '../../switch/tables';
import { VneTable } from '../../switch/vnes';
import { FakeUdpNetwork } from '../../switch/tunnel/tunneltest/fake-transport';
import { vmMac } from '../support/frames';

/** Switch h1 with VNE lh (VNI 90): peer h2 (which has vmMac(3)), local port c (vmMac(1)). */
function lhSwitch(): Switch {
  const net = new FakeUdpNetwork();
  const sw = new Switch({ id: 'h1', now: () => 5_000 });
  sw.attachTunnel(net.endpoint(0x0a000001, 6081));
  sw.configureVne({ name: 'lh', vni: 90, peers: [{ name: 'h2', address: '10.0.0.2', port: 6081 }], macs: [{ mac: formatMac(vmMac(3)), peer: 'h2' }] });
  sw.attachPort('lh', fakePortPair('c').port, { mac: formatMac(vmMac(1)) });
  return sw;
}

describe('Switch: a peer that leaves a VNE', () => {
  it('is dropped with its routes when ConfigureVne no longer lists it; a cut then ends without its markers', async () => {
    const sw = lhSwitch();
    try {
      assert.deepEqual(sw.stats().vnes['lh']?.peers, ['h2']);
      assert.equal(sw.stats().vnes['lh']?.fdbSize, 2);
      // A configuration that omits the peer list leaves the peers alone (a generation change only).
      sw.configureVne({ name: 'lh', generation: 1 });
      assert.deepEqual(sw.stats().vnes['lh']?.peers, ['h2']);
      // The VM of h2 now runs here: the new placement names no peer.
      sw.configureVne({ name: 'lh', peers: [], macs: [{ mac: formatMac(vmMac(1)), local: true }] });
      assert.deepEqual(sw.stats().vnes['lh']?.peers, []);
      assert.deepEqual(sw.stats().peers['h2']?.vnes, []);
      assert.equal(sw.stats().vnes['lh']?.fdbSize, 1);
      await sw.cutPorts(['c'], 1);
      const cs = await sw.channelState('lh', 1, 1000);
      assert.equal(cs.epoch, 1);
      assert.equal(cs.lostFrames, 0);
    } finally {
      sw.stop();
    }
  });

  it('that returns under the same generation keeps its frame counts (the other side counted on); under a new one they restart', () => {
    const t = new VneTable({}, (name) => {
      throw new Error(`no port ${name}`);
    }, () => undefined);
    t.configure({ name: 'lh', vni: 90, peers: [{ name: 'h2', address: '10.0.0.2', port: 6081 }] });
    const peerOf = (): VnePeer | undefined => [...t.get('lh').peers.values()][0];
    const first = peerOf() as VnePeer;
    first.sent.inc(0, 7);
    t.configure({ name: 'lh', peers: [] });
    assert.equal(peerOf(), undefined);
    t.configure({ name: 'lh', peers: ['h2'] });
    assert.equal(peerOf(), first);
    assert.equal(peerOf()?.sent.below(1), 7);
    t.configure({ name: 'lh', peers: [] });
    t.configure({ name: 'lh', generation: 2, generationNow: true });
    t.configure({ name: 'lh', peers: ['h2'] });
    assert.notEqual(peerOf(), first);
    assert.equal(peerOf()?.sent.below(1), 0);
  });
});

describe('Switch: removing a VNE (ForgetVne: the VNE was deleted)', () => {
  it('is refused while a port is attached; then fails a waiting recording, forgets the VNE and frees its VNI', async () => {
    const sw = lhSwitch();
    try {
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
