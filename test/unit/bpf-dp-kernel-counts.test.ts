/**
 * The in-kernel data path's counts in the markers (switch/bpf-dp/kernel-counts.ts, Markers'
 * kernelCounts): the sums over a VNI's noted epochs below k are exact, per VNI (two VNEs between
 * the same two hosts never see each other's datagrams), also after older epochs are folded (and
 * their counters removed from the map); a switch told to use them sends markers whose count adds
 * what the kernel sent for that VNE, and checks a peer's marker against what it and the kernel
 * received — so a recording ends at once with nothing lost when the kernel carried frames the
 * switch never saw, and without the kernel's counts the same recording reports them lost. Counts
 * come from a table standing in for vn_counts (the real counters are exercised in bpf-dp-rules
 * and the bpf-dp integration test).
 */
import { strict as assert } from 'node:assert';
import { KernelCounts } from '../../switch/bpf-dp/kernel-counts';
import { ipv4ToNum } from '../../switch/bpf-dp/layout';
import type { CountDir } from '../../switch/bpf-dp/maps';
import { fakePortPair } from '../../switch/port/porttest/fake-port';
import { decode } from '../../switch/tunnel/geneve';
import { FakeEnv } from '../support/fake-env';
import { makeFrame, vmMac } from '../support/frames';

const A = '10.0.0.1';
const B = '10.0.0.2';
const BLUE = 100; // FakeEnv's VNI
const RED = 200;

/** A vn_counts stand-in: `${vni}/${peer}/${epoch}/${dir}` → datagrams; removeCount deletes, as the map does. */
function table(entries: Record<string, number>): { count(vni: number, peer: string, epoch: number, dir: CountDir): number; removeCount(vni: number, peer: string, epoch: number, dir: CountDir): boolean; entries: Record<string, number> } {
  return {
    entries,
    count: (vni, peer, epoch, dir) => entries[`${vni}/${peer}/${epoch}/${dir}`] ?? 0,
    removeCount: (vni, peer, epoch, dir) => delete entries[`${vni}/${peer}/${epoch}/${dir}`],
  };
}

describe('in-kernel data path: its counts in the markers', () => {
  it('sums the noted epochs below k, exactly, also after older epochs are folded and removed from the map', () => {
    const t = table({ [`${BLUE}/${B}/1/sent`]: 3, [`${BLUE}/${B}/2/sent`]: 4, [`${BLUE}/${B}/3/sent`]: 5, [`${BLUE}/${B}/2/received`]: 7, [`${BLUE}/${B}/9/sent`]: 100 });
    const k = new KernelCounts(t);
    for (const e of [1, 2, 3]) k.noteEpoch(e, BLUE);
    const b = ipv4ToNum(B);
    assert.deepEqual([k.below(BLUE, b, 1, 'sent'), k.below(BLUE, b, 3, 'sent'), k.below(BLUE, b, 4, 'sent'), k.below(BLUE, b, 4, 'received'), k.below(BLUE, ipv4ToNum(A), 4, 'sent')], [0, 7, 12, 7, 0]);
    k.forgetBelow(BLUE, 3, [b]);
    k.noteEpoch(1, BLUE); // below the fold: ignored
    assert.deepEqual([k.below(BLUE, b, 3, 'sent'), k.below(BLUE, b, 4, 'sent'), k.below(BLUE, b, 4, 'received')], [7, 12, 7]);
    assert.deepEqual(Object.keys(t.entries).sort(), [`${BLUE}/${B}/3/sent`, `${BLUE}/${B}/9/sent`], 'the folded epochs\' counters are gone from the map');
  });

  it('restart (a new generation): the VNI\'s counters of every noted epoch go from the map, its fold too; notes start over from the ports\' epochs; other VNIs untouched', () => {
    const t = table({ [`${BLUE}/${B}/1/sent`]: 3, [`${BLUE}/${B}/2/sent`]: 4, [`${BLUE}/${B}/2/received`]: 7, [`${RED}/${B}/2/sent`]: 5 });
    const k = new KernelCounts(t);
    const b = ipv4ToNum(B);
    for (const e of [1, 2]) k.noteEpoch(e, BLUE);
    k.noteEpoch(2, RED);
    k.forgetBelow(BLUE, 2, [b]);
    k.restart(BLUE, [b], [1]);
    assert.deepEqual(Object.keys(t.entries).sort(), [`${RED}/${B}/2/sent`]);
    assert.deepEqual([k.below(BLUE, b, 3, 'sent'), k.below(RED, b, 3, 'sent')], [0, 5]);
    t.entries[`${BLUE}/${B}/1/sent`] = 2; // the new generation's epoch 1 (below the old fold: noted again)
    assert.equal(k.below(BLUE, b, 2, 'sent'), 2);
  });

  it('two VNIs between the same two hosts: each sums only its own counters, over its own epochs, and folds on its own', () => {
    // Blue and red both send to B in epoch 4; red's ports also had epoch 6, blue's never did.
    const k = new KernelCounts(table({ [`${BLUE}/${B}/4/sent`]: 10, [`${RED}/${B}/4/sent`]: 3, [`${RED}/${B}/6/sent`]: 2, [`${RED}/${B}/4/received`]: 8 }));
    k.noteEpoch(4, BLUE);
    k.noteEpoch(4, RED);
    k.noteEpoch(6, RED);
    const b = ipv4ToNum(B);
    assert.deepEqual([k.below(BLUE, b, 7, 'sent'), k.below(RED, b, 7, 'sent'), k.below(BLUE, b, 7, 'received'), k.below(RED, b, 7, 'received'), k.below(300, b, 7, 'sent')], [10, 5, 0, 8, 0]);
    k.forgetBelow(RED, 5, [b]);
    assert.deepEqual([k.below(BLUE, b, 7, 'sent'), k.below(RED, b, 7, 'sent'), k.below(BLUE, b, 5, 'sent')], [10, 5, 10], 'red\'s fold leaves blue\'s epoch 4 alone');
  });

  const env2 = (): FakeEnv => {
    const env = new FakeEnv({ switches: { a: ['v1'], b: ['v2'] }, recordingGraceMs: 500 });
    env.port('v1').vm.send(makeFrame({ dst: vmMac(2), src: vmMac(1), sender: 1, seq: 1, epoch: 0 }));
    env.port('v2').vm.send(makeFrame({ dst: vmMac(1), src: vmMac(2), sender: 2, seq: 2, epoch: 0 }));
    env.settle();
    return env;
  };

  /** The marker for `vni` among the datagrams in flight: [epoch, count]. */
  const markerOf = (env: FakeEnv, vni: number): [number, number] | undefined => {
    for (const m of env.net.inFlight) {
      const d = decode(m.data, 0, m.data.length);
      if (d?.kind === 'marker' && d.vni === vni) return [d.epoch, d.count];
    }
    return undefined;
  };

  const ended = <T>(p: Promise<T>, what: string): Promise<T> => Promise.race([p, new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`${what}: recording did not end`)), 400))]);

  it('a marker counts what the kernel sent too, and the receiver ends its recording on what it and its kernel received', async () => {
    const env = env2();
    const ka = new KernelCounts(table({ [`${BLUE}/${B}/0/sent`]: 5 }));
    const kb = new KernelCounts(table({ [`${BLUE}/${A}/0/received`]: 5 }));
    ka.noteEpoch(0, BLUE);
    kb.noteEpoch(0, BLUE);
    env.sw('a').useKernelCounts(ka);
    env.sw('b').useKernelCounts(kb);
    await env.sw('a').cutPort('v1', 1);
    assert.deepEqual(markerOf(env, BLUE), [1, 1 + 5], 'the switch\'s one frame and the kernel\'s five');
    await env.sw('b').cutPort('v2', 1);
    env.settle();
    assert.equal((await ended(env.sw('b').channelState('blue', 1), 'kernel counts not in the marker check')).lostFrames, 0);
  });

  it('two VNEs between the same two hosts: each marker carries only its VNE\'s kernel datagrams, and both recordings end with nothing lost', async () => {
    const env = env2();
    // A second VNE, red, on the same two switches: r1 on a, r2 on b, one frame each way.
    for (const [sw, vm, peer] of [['a', 'r1', { name: 'b', address: B, port: 6081 }], ['b', 'r2', { name: 'a', address: A, port: 6081 }]] as const) {
      env.sw(sw).configureVne({ name: 'red', vni: RED, peers: [peer] });
      const { port } = fakePortPair(vm, { batchSize: 8 });
      env.sw(sw).attachPort('red', port);
      env.ports.set(vm, port);
      env.hostOf.set(vm, sw);
    }
    env.port('r1').vm.send(makeFrame({ dst: vmMac(4), src: vmMac(3), sender: 3, seq: 1, epoch: 0 }));
    env.port('r2').vm.send(makeFrame({ dst: vmMac(3), src: vmMac(4), sender: 4, seq: 1, epoch: 0 }));
    env.settle();
    // The kernel carried 5 blue and 2 red datagrams a → b (per host they are 7: the old key's count).
    const ka = new KernelCounts(table({ [`${BLUE}/${B}/0/sent`]: 5, [`${RED}/${B}/0/sent`]: 2 }));
    const kb = new KernelCounts(table({ [`${BLUE}/${A}/0/received`]: 5, [`${RED}/${A}/0/received`]: 2 }));
    for (const k of [ka, kb]) for (const vni of [BLUE, RED]) k.noteEpoch(0, vni);
    env.sw('a').useKernelCounts(ka);
    env.sw('b').useKernelCounts(kb);
    await env.sw('a').cutPort('v1', 1);
    await env.sw('a').cutPort('r1', 1);
    assert.deepEqual([markerOf(env, BLUE), markerOf(env, RED)], [[1, 1 + 5], [1, 1 + 2]]);
    await env.sw('b').cutPort('v2', 1);
    await env.sw('b').cutPort('r2', 1);
    env.settle();
    const [blue, red] = await Promise.all([ended(env.sw('b').channelState('blue', 1), 'blue'), ended(env.sw('b').channelState('red', 1), 'red')]);
    assert.deepEqual([blue.lostFrames, red.lostFrames], [0, 0]);
  });

  it('without the receiver\'s kernel counts the same frames are reported lost after the grace period', async () => {
    const env = env2();
    const ka = new KernelCounts(table({ [`${BLUE}/${B}/0/sent`]: 5 }));
    ka.noteEpoch(0, BLUE);
    env.sw('a').useKernelCounts(ka);
    await env.sw('a').cutPort('v1', 1);
    await env.sw('b').cutPort('v2', 1);
    env.settle();
    const state = env.sw('b').channelState('blue', 1);
    env.tick(600);
    assert.equal((await state).lostFrames, 5);
  });
});
