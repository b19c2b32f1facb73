/**
 * The switch's FDB mirrored into the in-kernel data path (switch/bpf-dp/fdb-mirror.ts), on the
 * real pinned maps of a loaded data path (prefix vnut-bpfmirror-<pid>, removed after): exactly
 * the resolvable entries reach vn_fdb, only changes are written, moved and vanished MACs follow,
 * and once a port's fast path is on the kernel's vn_tx carries its frame (BPF_PROG_TEST_RUN)
 * where before it punted it to the switch. With the kernel's tunnel (a fake that records each
 * call with vn_fdb's entry at that moment and settles when the test says): a remote MAC reaches
 * vn_fdb only after its kernel FDB entry is made, leaves vn_fdb before its kernel entry moves or
 * goes, and a failed or overtaken kernel write leaves it out.
 */
import { strict as assert } from 'node:assert';
import { enableFastPath, FdbMirror } from '../../switch/bpf-dp/fdb-mirror';
import type { KernelTunnel } from '../../switch/bpf-dp/kernel-tunnel';
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
/** One turn of the event loop: the mirror's continuations of settled kernel writes have run. */
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A kernel tunnel that logs each call with vn_fdb's entry for that MAC at the call, its writes settled by the test. */
class FakeTunnel implements KernelTunnel {
  readonly log: string[] = [];
  readonly pending: { resolve(): void; reject(e: Error): void }[] = [];
  constructor(private readonly maps: () => DataPathMaps) {}
  private at(vni: number, mac: string): string {
    return JSON.stringify(this.maps().fdb(vni, mac) ?? null);
  }
  addVni(): Promise<void> {
    return Promise.resolve();
  }
  removeVni(): Promise<void> {
    return Promise.resolve();
  }
  setFdb(vni: number, mac: string, peer: string): Promise<void> {
    this.log.push(`set ${mac} ${peer} (vn_fdb ${this.at(vni, mac)})`);
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
  }
  removeFdb(vni: number, mac: string): Promise<void> {
    this.log.push(`del ${mac} (vn_fdb ${this.at(vni, mac)})`);
    return Promise.resolve();
  }
  idle(): Promise<void> {
    return Promise.resolve();
  }
}

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

  it('with the kernel tunnel: a remote MAC reaches vn_fdb only after the kernel FDB has it, and leaves vn_fdb before the kernel entry moves or goes', async () => {
    const PEER2 = '10.9.1.3';
    const owners = new Map<number, DpDest>([...OWNERS, [200, { peer: PEER2 }]]);
    const resolve = (o: number): DpDest | undefined => owners.get(o);
    const t = new FakeTunnel(() => maps);
    const fdb = new Fdb();
    const mirror = new FdbMirror(maps, t);
    fdb.learn(parseMac(m(1)), 1, 0);
    fdb.learn(parseMac(m(9)), 100, 0);
    assert.deepEqual(mirror.sync(VNI, fdb, resolve), { set: 2, removed: 0 });
    assert.deepEqual([maps.fdb(VNI, m(1)), maps.fdb(VNI, m(9))], [{ ifindex: 101 }, undefined], 'the local MAC at once, the remote one not before the kernel has it');
    t.pending.shift()?.resolve();
    await turn();
    assert.deepEqual(maps.fdb(VNI, m(9)), { peer: PEER });

    fdb.learn(parseMac(m(9)), 200, 1); // moved to another peer
    assert.deepEqual(mirror.sync(VNI, fdb, resolve), { set: 1, removed: 0 });
    assert.equal(maps.fdb(VNI, m(9)), undefined, 'out of vn_fdb while the kernel entry moves');
    t.pending.shift()?.resolve();
    await turn();
    assert.deepEqual(maps.fdb(VNI, m(9)), { peer: PEER2 });

    fdb.learn(parseMac(m(9)), 2, 2); // moved to a local port
    assert.deepEqual(mirror.sync(VNI, fdb, resolve), { set: 1, removed: 0 });
    assert.deepEqual(maps.fdb(VNI, m(9)), { ifindex: 102 });

    fdb.learn(parseMac(m(8)), 100, 3);
    mirror.sync(VNI, fdb, resolve);
    fdb.remove(parseMac(m(8))); // gone before the kernel's write settled: never reaches vn_fdb
    assert.deepEqual(mirror.sync(VNI, fdb, resolve), { set: 0, removed: 1 });
    t.pending.shift()?.resolve();
    await turn();
    assert.equal(maps.fdb(VNI, m(8)), undefined);

    fdb.learn(parseMac(m(7)), 100, 4);
    mirror.sync(VNI, fdb, resolve);
    t.pending.shift()?.reject(new Error('no such device'));
    await turn();
    assert.equal(maps.fdb(VNI, m(7)), undefined, 'a failed kernel write leaves the MAC punted');
    assert.equal(mirror.kernelErrors, 1);

    fdb.learn(parseMac(m(6)), 100, 5);
    mirror.sync(VNI, fdb, resolve);
    t.pending.shift()?.resolve();
    await turn();
    fdb.remove(parseMac(m(6)));
    mirror.sync(VNI, fdb, resolve);
    assert.deepEqual(t.log, [
      `set ${m(9)} ${PEER} (vn_fdb null)`,
      `set ${m(9)} ${PEER2} (vn_fdb null)`,
      `del ${m(9)} (vn_fdb {"ifindex":102})`,
      `set ${m(8)} ${PEER} (vn_fdb null)`,
      `del ${m(8)} (vn_fdb null)`,
      `set ${m(7)} ${PEER} (vn_fdb null)`,
      `set ${m(6)} ${PEER} (vn_fdb null)`,
      `del ${m(6)} (vn_fdb null)`,
    ]);
    assert.equal(mirror.drop(VNI), 3); // m(1), m(9) (local now), m(7) (wanted, never written)
    assert.deepEqual(t.log.slice(8), [`del ${m(7)} (vn_fdb null)`]);
  });
});
