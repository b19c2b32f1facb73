/**
 * The veth pair in front of a tap-vnet VM's TAP (agent/drivers/qemu/vm-veth.ts), for real, on a
 * TAP held the way QEMU holds it (the addon's tapOpen with vnetHdr): openTapPort makes the pair
 * and its redirect rule, a second open (an adopting agent) reuses the same pair, a pair that lost
 * its rule is rebuilt, removal is complete and idempotent, and plain `tap` NICs get no pair.
 * What the pair delivers is checked by the port compliance suite (port-compliance.test.ts).
 * Links are named `vncp*2` and removed after each test.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { openTapPort, removeVmVeth } from '../../agent/drivers/qemu/vm-veth';
import { nativeIo } from '../../switch/native-io';
import { sh } from '../support/netns';

const TAP = 'vncpn2';
const SW = 'vncpv2';
const GRO = 'vncpg2';
const exists = (l: string): boolean => fs.existsSync(`/sys/class/net/${l}`);
const ifindex = (l: string): number => Number(fs.readFileSync(`/sys/class/net/${l}/ifindex`, 'utf8'));
const rule = (): string => sh('tc', ['filter', 'show', 'dev', GRO, 'ingress']);

describe('veth pair in front of a tap-vnet TAP (QEMU driver)', function () {
  this.timeout(30_000);
  let held: number | undefined;
  const closers: (() => void)[] = [];

  beforeEach(() => {
    held = nativeIo().tapOpen(TAP, { vnetHdr: true }).fd;
    sh('ip', ['link', 'set', TAP, 'up']);
  });

  afterEach(async () => {
    for (const c of closers.splice(0)) c();
    await removeVmVeth(TAP);
    if (held !== undefined) nativeIo().close(held);
    held = undefined;
  });

  it('openTapPort makes the pair (GRO on the peer, TSO off on the switch end, the TAP MTU, the redirect) and writes through it', async () => {
    const p = await openTapPort('p', TAP, 'tap-vnet');
    closers.push(() => p.close());
    assert.equal(p.writeIfname, SW);
    assert.equal(p.offload, true);
    assert.ok(exists(SW) && exists(GRO));
    assert.match(rule(), new RegExp(`mirred \\(Egress Redirect to device ${TAP}\\)`));
    assert.match(sh('ethtool', ['-k', GRO]), /^generic-receive-offload: on$/m);
    assert.match(sh('ethtool', ['-k', SW]), /^tcp-segmentation-offload: off$/m);
    for (const l of [SW, GRO]) assert.equal(fs.readFileSync(`/sys/class/net/${l}/mtu`, 'utf8'), fs.readFileSync(`/sys/class/net/${TAP}/mtu`, 'utf8'));
  });

  it('a second open (an adopting agent) keeps the pair; one that lost its rule is rebuilt', async () => {
    const p = await openTapPort('p', TAP, 'tap-vnet');
    const before = ifindex(SW);
    p.close();
    const q = await openTapPort('p', TAP, 'tap-vnet');
    closers.push(() => q.close());
    assert.equal(ifindex(SW), before, 'the same pair');
    sh('tc', ['filter', 'del', 'dev', GRO, 'ingress']);
    const r = await openTapPort('p', TAP, 'tap-vnet');
    closers.push(() => r.close());
    assert.notEqual(ifindex(SW), before, 'a new pair');
    assert.match(rule(), new RegExp(`Redirect to device ${TAP}\\)`));
  });

  it('removal deletes both ends and is quiet when they are gone; a plain tap NIC gets no pair', async () => {
    const p = await openTapPort('p', TAP, 'tap-vnet');
    p.close();
    await removeVmVeth(TAP);
    assert.ok(!exists(SW) && !exists(GRO));
    await removeVmVeth(TAP);
    const plain = await openTapPort('p', TAP, 'tap');
    closers.push(() => plain.close());
    assert.equal(plain.writeIfname, undefined);
    assert.equal(plain.offload, false);
    assert.ok(!exists(SW));
  });
});
