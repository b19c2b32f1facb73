/**
 * Frames the kernel refuses one by one when the switch writes a port's batch
 * (switch/native/frame_write.c, switch/port/fd-port.ts), for real, on a veth pair: a frame longer
 * than the device's MTU (EMSGSIZE on a packet socket without GSO) is dropped alone and counted
 * (txRefused, the metric vnsnap_switch_port_tx_refused), the good frames behind it in the same
 * batch arrive; an error of the device (ENETDOWN: the link is down) still ends the batch.
 * Links are named with the prefix `vnwr` and removed in after(), also when a test fails.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { AgentMetrics } from '../../agent/metrics';
import { fakePortPair } from '../../switch/port/porttest/fake-port';
import { PacketPort } from '../../switch/port/fd-port';
import { nativeIo } from '../../switch/native-io';
import { Switch } from '../../switch/switch';
import { makeFrame, parseFrame, vmMac, type TestFrame } from '../support/frames';
import { sh } from '../support/netns';
import { until } from '../support/wait';

const A = 'vnwr0'; // the switch's side
const B = 'vnwr1'; // the "VM" side, read by a second packet port
const MTU = 1500;

function removeLinks(): void {
  for (const l of [A, B]) if (fs.existsSync(`/sys/class/net/${l}`)) sh('ip', ['link', 'del', l], { allowFail: true });
}

describe('packet port: a frame the kernel refuses drops alone, the rest of the batch goes on', function () {
  this.timeout(30_000);
  let writer: PacketPort | undefined;
  let reader: PacketPort | undefined;
  let sw: Switch | undefined;
  /** The test frames read on B, in order. */
  const got: TestFrame[] = [];

  before(() => {
    removeLinks();
    sh('ip', ['link', 'add', A, 'mtu', String(MTU), 'type', 'veth', 'peer', 'name', B, 'mtu', String(MTU)]);
    for (const l of [A, B]) {
      sh('ethtool', ['-K', l, 'tx', 'off', 'tso', 'off', 'gso', 'off', 'gro', 'off']);
      sh('ip', ['link', 'set', l, 'up']);
    }
    reader = new PacketPort('r', B);
    const r = reader.rx;
    reader.open((n) => {
      for (let i = 0; i < n; i++) {
        const off = i * r.slotSize + r.headroom;
        const f = parseFrame(r.slab.subarray(off, off + r.lens[i]!));
        if (f) got.push(f);
      }
    });
  });

  after(() => {
    sw?.stop();
    writer?.close();
    reader?.close();
    removeLinks();
  });

  beforeEach(() => {
    got.length = 0;
  });

  const frame = (seq: number, size = 100): Buffer => makeFrame({ dst: vmMac(9), src: vmMac(1), sender: 1, seq, epoch: 0 }, size);

  it('EMSGSIZE (a frame over the MTU, no GSO) first in a batch: the three good frames behind it arrive, txRefused = 1', async () => {
    writer = new PacketPort('w', A);
    const n = writer.send([frame(0, MTU + 14 + 4 + 100), frame(1), frame(2), frame(3)], 4);
    assert.equal(n, 3);
    assert.equal(writer.txRefused, 1);
    assert.equal(writer.writeErrors, 0);
    await until('the three good frames on the other end', () => got.length >= 3, 5000);
    assert.deepEqual(
      got.map((f) => f.seq),
      [1, 2, 3],
    );
  });

  it('through the switch: the refused frame counts in txRefused and txDrops of the port and in its metric', async () => {
    writer?.close();
    writer = new PacketPort('w', A);
    const s = new Switch({ id: 'wr' });
    sw = s;
    s.configureVne({ name: 'blue', vni: 1 });
    const vm = fakePortPair('v', { batchSize: 8 });
    s.attachPort('blue', vm.port);
    s.attachPort('blue', writer);
    // One batch from the fake VM, flooded to the packet port (unknown destination): the long
    // frame in the middle is refused by the kernel, the others are written around it.
    for (const [seq, size] of [[10, 100], [11, MTU + 100], [12, 100], [13, 100]] as const) vm.vm.send(frame(seq, size));
    assert.equal(vm.vm.pump(), 4);
    await until('the three good frames on the other end', () => got.length >= 3, 5000);
    assert.deepEqual(
      got.map((f) => f.seq),
      [10, 12, 13],
    );
    const st = s.stats().ports['w'];
    assert.equal(st?.txRefused, 1);
    assert.equal(st?.txDrops, 1);
    assert.equal(st?.txFrames, 3);
    const metrics = new AgentMetrics();
    metrics.setStatsSource(() => s.stats());
    const text = await metrics.registry.metrics();
    assert.match(text, /^vnsnap_switch_port_tx_refused\{port="w"\} 1$/m);
    assert.match(text, /^vnsnap_switch_port_tx_refused\{port="v"\} 0$/m);
  });

  it('the addon takes opts.refused only as a Uint32Array of at least one element', () => {
    const io = nativeIo();
    const fd = io.packetOpen(A).fd;
    try {
      const bad = (refused: unknown): string => {
        try {
          io.writeFrames(fd, [frame(30)], 1, { refused: refused as Uint32Array });
          return 'accepted';
        } catch (e) {
          return `${(e as Error).name}: ${(e as Error).message}`;
        }
      };
      assert.equal(bad(new Uint8Array(1)), 'TypeError: writeFrames: opts.refused must be a Uint32Array');
      assert.equal(bad(new Uint32Array(0)), 'RangeError: writeFrames: opts.refused must have at least one element');
      // The count adds to what the array holds (the port reads it back and zeroes it).
      const r = new Uint32Array([5]);
      assert.equal(io.writeFrames(fd, [frame(31, MTU + 100), frame(32)], 2, { refused: r }), 1);
      assert.equal(r[0], 6);
    } finally {
      io.close(fd);
    }
  });

  it('ENETDOWN (the link is down) ends the batch as before: nothing written, one write error, nothing refused', () => {
    writer?.close();
    writer = new PacketPort('w', A);
    sh('ip', ['link', 'set', A, 'down']);
    try {
      assert.equal(writer.send([frame(20), frame(21)], 2), 0);
      assert.equal(writer.writeErrors, 1);
      assert.equal(writer.txRefused, 0);
    } finally {
      sh('ip', ['link', 'set', A, 'up']);
    }
  });
});
