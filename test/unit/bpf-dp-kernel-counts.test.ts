/**
 * The in-kernel data path's counts in the markers (switch/bpf-dp/kernel-counts.ts, Markers'
 * kernelCounts): the sums over noted epochs below k are exact, also after older epochs are
 * folded; a switch told to use them sends markers whose count adds what the kernel sent, and
 * checks a peer's marker against what it and the kernel received — so a recording ends at once
 * with nothing lost when the kernel carried frames the switch never saw, and without the kernel's
 * counts the same recording reports them lost. Counts come from a table standing in for vn_counts
 * (the real counters are exercised in bpf-dp-rules and the bpf-dp integration test).
 */
import { strict as assert } from 'node:assert';
import { KernelCounts } from '../../switch/bpf-dp/kernel-counts';
import { ipv4ToNum } from '../../switch/bpf-dp/layout';
import { decode } from '../../switch/tunnel/geneve';
import { FakeEnv } from '../support/fake-env';
import { makeFrame, vmMac } from '../support/frames';

const A = '10.0.0.1';
const B = '10.0.0.2';

/** A vn_counts stand-in: `${peer}/${epoch}/${dir}` → datagrams. */
function table(entries: Record<string, number>): { count(peer: string, epoch: number, dir: 'sent' | 'received'): number } {
  return { count: (peer, epoch, dir) => entries[`${peer}/${epoch}/${dir}`] ?? 0 };
}

describe('in-kernel data path: its counts in the markers', () => {
  it('sums the noted epochs below k, exactly, also after older epochs are folded', () => {
    const k = new KernelCounts(table({ [`${B}/1/sent`]: 3, [`${B}/2/sent`]: 4, [`${B}/3/sent`]: 5, [`${B}/2/received`]: 7, [`${B}/9/sent`]: 100 }));
    for (const e of [1, 2, 3]) k.noteEpoch(e);
    const b = ipv4ToNum(B);
    assert.deepEqual([k.below(b, 1, 'sent'), k.below(b, 3, 'sent'), k.below(b, 4, 'sent'), k.below(b, 4, 'received'), k.below(ipv4ToNum(A), 4, 'sent')], [0, 7, 12, 7, 0]);
    k.forgetBelow(3, [b]);
    k.noteEpoch(1); // below the fold: ignored
    assert.deepEqual([k.below(b, 3, 'sent'), k.below(b, 4, 'sent'), k.below(b, 4, 'received')], [7, 12, 7]);
  });

  const env2 = (): FakeEnv => {
    const env = new FakeEnv({ switches: { a: ['v1'], b: ['v2'] }, recordingGraceMs: 500 });
    env.port('v1').vm.send(makeFrame({ dst: vmMac(2), src: vmMac(1), sender: 1, seq: 1, epoch: 0 }));
    env.port('v2').vm.send(makeFrame({ dst: vmMac(1), src: vmMac(2), sender: 2, seq: 2, epoch: 0 }));
    env.settle();
    return env;
  };

  it('a marker counts what the kernel sent too, and the receiver ends its recording on what it and its kernel received', async () => {
    const env = env2();
    const ka = new KernelCounts(table({ [`${B}/0/sent`]: 5 }));
    const kb = new KernelCounts(table({ [`${A}/0/received`]: 5 }));
    ka.noteEpoch(0);
    kb.noteEpoch(0);
    env.sw('a').useKernelCounts(ka);
    env.sw('b').useKernelCounts(kb);
    await env.sw('a').cutPort('v1', 1);
    const m = env.net.inFlight[0];
    const d = m && (decode(m.data, 0, m.data.length) as { kind: string; epoch: number; count: number } | null);
    assert.deepEqual(d && [d.kind, d.epoch, d.count], ['marker', 1, 1 + 5], 'the switch\'s one frame and the kernel\'s five');
    await env.sw('b').cutPort('v2', 1);
    env.settle();
    const cb = await Promise.race([env.sw('b').channelState('blue', 1), new Promise<never>((_, rej) => setTimeout(() => rej(new Error('recording did not end: kernel counts not in the marker check')), 400))]);
    assert.equal(cb.lostFrames, 0);
  });

  it('without the receiver\'s kernel counts the same frames are reported lost after the grace period', async () => {
    const env = env2();
    const ka = new KernelCounts(table({ [`${B}/0/sent`]: 5 }));
    ka.noteEpoch(0);
    env.sw('a').useKernelCounts(ka);
    await env.sw('a').cutPort('v1', 1);
    await env.sw('b').cutPort('v2', 1);
    env.settle();
    const state = env.sw('b').channelState('blue', 1);
    env.tick(600);
    assert.equal((await state).lostFrames, 5);
  });
});
