/**
 * The in-kernel data path wired into running switches, between two namespaced hosts joined by a
 * veth underlay: in each, a switch on a real UDP tunnel with the agent's data path wired in as the
 * agent does it (test/support/bpf-dp-host.ts: wireDataPath, openTapPort for a `nic: 'tap-bpf'`
 * TAP whose character side this test holds as QEMU would), and static routes to the other VM.
 *
 * Asserted exactly: frames between the two VMs are carried in the kernel (vn_tx sent them, vn_rx
 * carried them, counted per peer and epoch on both sides) and neither switch's port read or
 * wrote one; a snapshot cut in the middle — host a cuts first, host b's VM sends to a's before b
 * cuts, a's VM sends to b's in between — records at a exactly the frames b sent before its cut
 * that arrived after a's (punted late by vn_rx, delivered and recorded by a's switch), holds the
 * frames a sent after its cut at b until b's cut (punted early), ends both recordings with
 * nothing lost (the markers carry the kernel's counts), and afterwards the kernel carries again;
 * after host a's process is restarted (an agent restart: the TAP, its veth pair and the VXLAN and
 * punt devices are found and reused, the VM's TAP untouched) the kernel carries both ways again.
 * Everything is named vnbw* (namespaces vnbw-ha, vnbw-hb) and removed even when a test fails.
 */
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { makeFrame, parseFrame, vmMac } from '../support/frames';
import { sh, stopChild, Topology, waitForJsonLine } from '../support/netns';
import { vnetTap } from '../support/vnet-tap';
import { until } from '../support/wait';
import { formatMac } from '../../switch/bridge/mac';

const VNI = 5252;
const IPS = { a: '10.79.0.1', b: '10.79.0.2' };
const TAPS = { a: 'vnbwan0', b: 'vnbwbn0' };
const HOST = path.join(__dirname, '..', 'support', 'bpf-dp-host.js');

interface Stats {
  kernel: { txRemote: number; rxFast: number; txPunt: number; rxPunt: number; errors: number };
  counts: Record<string, number>;
  below1: { sent: number; received: number };
  port: { rxFrames: number; txFrames: number; held: number; recorded: number };
  wiring: { punt: { late: number; early: number; unknown: number } };
  fast: boolean;
}

class Host {
  private next = 0;
  private readonly waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  constructor(readonly child: ChildProcess) {
    readline.createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (l) => {
      let r: { id?: number; ok?: unknown; error?: string };
      try {
        r = JSON.parse(l) as typeof r;
      } catch {
        return;
      }
      const w = r.id === undefined ? undefined : this.waiting.get(r.id);
      if (!w) return;
      this.waiting.delete(r.id as number);
      if (r.error !== undefined) w.reject(new Error(r.error));
      else w.resolve(r.ok);
    });
  }
  call<T>(op: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = ++this.next;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.stdin?.write(`${JSON.stringify({ id, op, ...args })}\n`);
    });
  }
  stats(): Promise<Stats> {
    return this.call<Stats>('stats');
  }
}

describe('in-kernel data path under running switches (two hosts, tap-bpf ports)', function () {
  this.timeout(120_000);
  let topo: Topology;
  const taps: ReturnType<typeof vnetTap>[] = [];
  const hosts: Record<'a' | 'b', Host> = {} as Record<'a' | 'b', Host>;
  let vm: Record<'a' | 'b', ReturnType<typeof vnetTap>>;

  before(async () => {
    for (const t of Object.values(TAPS)) if (fs.existsSync(`/sys/class/net/${t}`)) sh('ip', ['link', 'del', t], { allowFail: true });
    topo = new Topology('vnbw');
    topo.addNamespace('ha');
    topo.addNamespace('hb');
    topo.veth('ha', 'vnbwu0', 'hb', 'vnbwu1', `${IPS.a}/30`, `${IPS.b}/30`);
    vm = { a: vnetTap(TAPS.a), b: vnetTap(TAPS.b) };
    taps.push(vm.a, vm.b);
    for (const h of ['a', 'b'] as const) {
      sh('ip', ['link', 'set', TAPS[h], 'netns', topo.ns(`h${h}`)]);
      topo.exec(`h${h}`, 'ip', ['link', 'set', TAPS[h], 'up']);
      topo.exec(`h${h}`, 'sysctl', ['-qw', `net.ipv6.conf.${TAPS[h]}.disable_ipv6=1`]);
    }
    for (const h of ['a', 'b'] as const) hosts[h] = await startHost(h);
  });

  /** Host h's process (the agent's switch with its data path), its port attached at `epoch` (default the VNE's). */
  async function startHost(h: 'a' | 'b', epoch?: number): Promise<Host> {
    const o = h === 'a' ? 'b' : 'a';
    const setup = { id: h, ip: IPS[h], peer: { name: o, ip: IPS[o] }, vni: VNI, tap: TAPS[h], mac: formatMac(vmMac(h === 'a' ? 1 : 2)), peerMac: formatMac(vmMac(h === 'a' ? 2 : 1)), prefix: `vnit-bpfwire-${h}`, vxlanPort: 6082, ...(epoch !== undefined ? { epoch } : {}) };
    const child = topo.spawn(`h${h}`, process.execPath, [HOST, JSON.stringify(setup)], { stdio: ['pipe', 'pipe', 'pipe'] });
    const host = new Host(child);
    await waitForJsonLine<{ ready?: boolean }>(child, (v) => v.ready === true, 60_000);
    return host;
  }

  after(async () => {
    await Promise.all(Object.values(hosts).map((h) => stopChild(h.child)));
    for (const t of taps) t.close();
    await topo?.destroy();
  });

  const frame = (from: 1 | 2, seq: number): Buffer => makeFrame({ dst: vmMac(from === 1 ? 2 : 1), src: vmMac(from), sender: from, seq, epoch: 0 }, 300);
  const send = (h: 'a' | 'b', seqs: number[]): Promise<void> => vm[h].vm.write(seqs.map((s) => frame(h === 'a' ? 1 : 2, s)), []);
  const seqsAt = (h: 'a' | 'b'): number[] => vm[h].vm.received().map((g) => parseFrame(g.frame)?.seq ?? -1).filter((s) => s >= 0);
  const range = (a: number, n: number): number[] => Array.from({ length: n }, (_, i) => a + i);

  it('carries frames between the two VMs in the kernel: counted on both sides, never seen by either switch', async () => {
    await until('both ports on the fast path', async () => (await hosts.a.stats()).fast && (await hosts.b.stats()).fast, 10_000);
    await send('a', range(1, 5));
    await send('b', range(101, 5));
    await until('a → b at b\'s VM', () => seqsAt('b').length >= 5, 10_000);
    await until('b → a at a\'s VM', () => seqsAt('a').length >= 5, 10_000);
    assert.deepEqual([seqsAt('a'), seqsAt('b')], [range(101, 5), range(1, 5)]);
    for (const h of ['a', 'b'] as const) {
      const s = await hosts[h].stats();
      assert.deepEqual(
        { txRemote: s.kernel.txRemote, rxFast: s.kernel.rxFast, errors: s.kernel.errors, sent0: s.counts['0/sent'], received0: s.counts['0/received'], portRx: s.port.rxFrames, portTx: s.port.txFrames },
        { txRemote: 5, rxFast: 5, errors: 0, sent0: 5, received0: 5, portRx: 0, portTx: 0 },
        `host ${h}`,
      );
    }
  });

  it('a cut in the middle records exactly the late frames at the host that cut first, holds the early ones, and loses nothing', async () => {
    assert.equal(await hosts.a.call('cut', { k: 1 }), 1);
    await send('b', range(201, 4)); // colour 0, a is at 1: late at a
    await until('b\'s late frames at a\'s VM', () => seqsAt('a').length >= 9, 10_000);
    await send('a', range(301, 3)); // colour 1, b is at 0: early at b
    await until('a\'s early frames held at b', async () => (await hosts.b.stats()).port.held === 3, 10_000);
    assert.deepEqual(seqsAt('b'), range(1, 5), 'not delivered before b\'s cut');
    assert.equal(await hosts.b.call('cut', { k: 1 }), 1);
    await until('the held frames at b\'s VM after its cut', () => seqsAt('b').length >= 8, 10_000);
    assert.deepEqual([seqsAt('a'), seqsAt('b')], [[...range(101, 5), ...range(201, 4)], [...range(1, 5), ...range(301, 3)]]);
    assert.deepEqual(await hosts.a.call('channel', { k: 1 }), { seqs: range(201, 4), lostFrames: 0 });
    assert.deepEqual(await hosts.b.call('channel', { k: 1 }), { seqs: [], lostFrames: 0 });
    const [a, b] = [await hosts.a.stats(), await hosts.b.stats()];
    assert.deepEqual(
      { aLate: a.wiring.punt.late, aRecorded: a.port.recorded, aReceived0: a.below1.received, bSent0: b.below1.sent, aSent1: a.counts['1/sent'], bEarly: b.wiring.punt.early, bReceived1: b.counts['1/received'] },
      { aLate: 4, aRecorded: 4, aReceived0: 5, bSent0: 9, aSent1: 3, bEarly: 3, bReceived1: 0 },
    );
    await send('a', [401]);
    await until('a → b in the kernel again', () => seqsAt('b').includes(401), 10_000);
    const [a2, b2] = [await hosts.a.stats(), await hosts.b.stats()];
    assert.deepEqual([a2.counts['1/sent'], b2.counts['1/received'], a2.fast, b2.fast], [4, 1, true, true]);
  });

  it("an agent restart keeps the port: a new process takes the same TAP, its veth pair and the receiving side's devices, and the kernel carries again without the VM's TAP being touched", async () => {
    await stopChild(hosts.a.child);
    hosts.a = await startHost('a', 1); // adopted at the VNE's epoch
    await until("a's port on the fast path again", async () => (await hosts.a.stats()).fast, 10_000);
    const [a0, b0] = [seqsAt('a').length, seqsAt('b').length];
    const bReceived = (await hosts.b.stats()).counts['1/received'] as number;
    await send('a', [501, 502]);
    await send('b', [601, 602]);
    await until('a → b and b → a after the restart', () => seqsAt('a').length >= a0 + 2 && seqsAt('b').length >= b0 + 2, 10_000);
    assert.deepEqual([seqsAt('a').slice(a0), seqsAt('b').slice(b0)], [[601, 602], [501, 502]]);
    const [a, b] = [await hosts.a.stats(), await hosts.b.stats()];
    assert.deepEqual(
      { aSent1: a.counts['1/sent'], aReceived1: a.counts['1/received'], bReceived1: (b.counts['1/received'] as number) - bReceived, aPortRx: a.port.rxFrames, aPortTx: a.port.txFrames, aErrors: a.kernel.errors },
      { aSent1: 2, aReceived1: 2, bReceived1: 2, aPortRx: 0, aPortTx: 0, aErrors: 0 },
      "carried in the kernel both ways (the new process's counts start at 0), never through a's switch",
    );
  });
});
