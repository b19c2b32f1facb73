import { strict as assert } from 'node:assert';
import { formatMac } from '../../switch/bridge/mac';
import { FakeEnv } from '../support/fake-env';
import { makeFrame, vmMac } from '../support/frames';

const MAC = (i: number): number => vmMac(i);

describe('switch: relaying frames of a VM that migrated away (relayMovedMac)', () => {
  it('frames from a tunnel for the moved MAC go on to its new host; without the relay they are dropped and counted', () => {
    // v3 "moved" from b to c. a still routes MAC 3 to b (it has not heard yet).
    const env = new FakeEnv({ switches: { a: ['v1'], b: ['v2'], c: ['v3'] } });
    env.sw('a').configureVne({ name: 'blue', macs: [{ mac: formatMac(MAC(3)), peer: 'b' }] });
    env.sw('b').configureVne({ name: 'blue', macs: [{ mac: formatMac(MAC(3)), peer: 'c' }] });
    const send = (seq: number) => env.port('v1').vm.send(makeFrame({ dst: MAC(3), src: MAC(1), sender: 1, seq, epoch: 0 }));
    send(1);
    env.settle();
    assert.equal(env.port('v3').vm.received.length, 0);
    assert.equal(env.sw('b').stats()['tunnelHairpinDrops'], 1);

    env.sw('b').relayMovedMac('blue', formatMac(MAC(3)), 'c');
    // The coordinator's later ConfigureVne of the same route keeps the relay.
    env.sw('b').configureVne({ name: 'blue', macs: [{ mac: formatMac(MAC(3)), peer: 'c' }] });
    send(2);
    send(3);
    env.settle();
    assert.equal(env.port('v3').vm.received.length, 2);
    assert.equal(env.sw('b').stats()['movedRelayed'], 2);
    assert.equal(env.sw('b').stats()['tunnelHairpinDrops'], 1);

    // A frame from c itself for the moved MAC is never sent back to c.
    env.sw('c').configureVne({ name: 'blue', macs: [{ mac: formatMac(MAC(3)), peer: 'b' }] });
    env.sw('c').removeMac('blue', formatMac(MAC(3)));
    env.sw('c').configureVne({ name: 'blue', macs: [{ mac: formatMac(MAC(3)), peer: 'b' }] });
    env.port('v3').vm.send(makeFrame({ dst: MAC(3), src: MAC(9), sender: 9, seq: 1, epoch: 0 }));
    env.settle();
    assert.equal(env.sw('b').stats()['movedRelayed'], 2);
  });
});
