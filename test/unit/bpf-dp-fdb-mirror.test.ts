/**
 * The switch's FDB mirrored into the in-kernel data path (switch/bpf-dp/fdb-mirror.ts), on the
 * real pinned maps of a loaded data path (prefix vnut-bpfmirror-<pid>, removed after): exactly
 * the resolvable entries reach vn_fdb, only changes are written, moved and vanished MACs follow,
 * and once a port's fast path is on the kernel's vn_tx carries its frame (BPF_PROG_TEST_RUN)
 * where before it punted it to the switch.
 */
import { strict as assert } from 'node:assert';
import { enableFastPath, FdbMirror } from '../../switch/bpf-dp/fdb-mirror';
import type { DpDest } from '../../switch/bpf-dp/layout';
import { DataPathMaps } from '../../switch/bpf-dp/maps';
import { Fdb } from '../../switch/bridge/fdb';
import { formatMac, parseMac } from '../../switch/bridge/mac';
import { makeFrame, vmMac } from '../support/frames';
import { dpHarnessHooks, skbCtx } from '../support/bpf-dp-harness';

const PREFIX = `vnut-bpfmirror-${process.pid}`;
const VNI = 4343;
const TC_ACT_REDIRECT = 7;
const PEER = '10.9.1.2';
const OWNERS = new Map<number, DpDest>([[1, { ifindex: 101 }], [2, { ifindex: 102 }], [100, { peer: PEER }]]);
const m = (i: number): string => formatMac(vmMac(i));

describe('in-kernel data path: the switch\'s FDB mirrored into vn_fdb', function () {
  this.timeout(60_000);
  let maps: DataPathMaps;
  const h = dpHarnessHooks(PREFIX, (o) => {
    maps = o.maps;
    maps.setDevices(201, 202);
  });

  it('writes exactly the resolvable entries, then only what changed; drop removes what it wrote', () => {
    const fdb = new Fdb();
    const mirror = new FdbMirror(maps);
    fdb.learn(parseMac(m(1)), 1, 0);
    fdb.learn(parseMac(m(9)), 100, 0);
    fdb.learn(parseMac(m(5)), 7, 0); // a port not on the data path
    const resolve = (o: number): DpDest | undefined => OWNERS.get(o);
    assert.deepEqual(mirror.sync(VNI, fdb, resolve), { set: 2, removed: 0 });
    assert.deepEqual([maps.fdb(VNI, m(1)), maps.fdb(VNI, m(9)), maps.fdb(VNI, m(5))], [{ ifindex: 101 }, { peer: PEER }, undefined]);
    assert.deepEqual(mirror.sync(VNI, fdb, resolve), { set: 0, removed: 0 });

    fdb.learn(parseMac(m(1)), 2, 1); // moved to another port
    fdb.remove(parseMac(m(9)));
    assert.deepEqual(mirror.sync(VNI, fdb, resolve), { set: 1, removed: 1 });
    assert.deepEqual([maps.fdb(VNI, m(1)), maps.fdb(VNI, m(9))], [{ ifindex: 102 }, undefined]);

    assert.equal(mirror.drop(VNI), 1);
    assert.equal(maps.fdb(VNI, m(1)), undefined);
    assert.equal(mirror.drop(VNI), 0);
  });

  it('a port\'s frames are punted until its fast path is on, then carried by the kernel to the mirrored port', () => {
    const fdb = new Fdb();
    fdb.learn(parseMac(m(2)), 2, 0);
    new FdbMirror(maps).sync(VNI, fdb, (o) => OWNERS.get(o));
    maps.setPort(101, { vni: VNI, epoch: 3, puntIfindex: 301, fast: false, generation: 0 });
    maps.setPort(102, { vni: VNI, epoch: 3, puntIfindex: 302, fast: false, generation: 0 });
    enableFastPath(maps, 102, { vni: VNI, epoch: 3, puntIfindex: 302, generation: 0 });
    const frame = makeFrame({ dst: vmMac(2), src: vmMac(1), sender: 1, seq: 1, epoch: 0 }, 200);
    const ctx = skbCtx({ ingressIfindex: 101 });
    const txRun = (): { retval: number; local: number; punt: number } => {
      const before = maps.stats();
      const r = h().run('vn_tx', frame, ctx);
      const after = maps.stats();
      return { retval: r.retval, local: after.txLocal - before.txLocal, punt: after.txPunt - before.txPunt };
    };
    assert.deepEqual(txRun(), { retval: TC_ACT_REDIRECT, local: 0, punt: 1 });
    enableFastPath(maps, 101, { vni: VNI, epoch: 3, puntIfindex: 301, generation: 0 });
    assert.deepEqual(maps.port(101), { vni: VNI, epoch: 3, puntIfindex: 301, fast: true, generation: 0 });
    assert.deepEqual(txRun(), { retval: TC_ACT_REDIRECT, local: 1, punt: 0 });
  });
});
