/**
 * A tap-bpf VM adopted by an agent that cannot run the in-kernel data path
 * (agent/drivers/qemu/adopt.ts, openAdoptedTaps): its TAPs leave the data path (vn_tx removed and
 * checked gone) and are opened as tap-vnet, the twin mode; any other failure is thrown with what
 * was opened closed. Also, for real: leaveDataPath takes the program off a device (a dummy device
 * in a network namespace this test makes, vn_tx attached from the loaded data path) and reads it
 * back gone.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { openAdoptedTaps, type AdoptedTapOps } from '../../agent/drivers/qemu/adopt';
import type { NicMode } from '../../agent/drivers/qemu/cmdline';
import { attachDataPath, leaveDataPath } from '../../agent/bpf-dp/loader';
import { isVnsnapError, VnsnapError } from '../../proto/core/errors';
import { FakePort } from '../../switch/port/porttest/fake-port';
import { dpHarnessHooks } from '../support/bpf-dp-harness';

const NAMES = ['a-0', 'a-1'];
const TAPS = ['vnqmfb00n0', 'vnqmfb00n1'];

/** Fake ops: `refuse(mode, tap)` decides whether opening fails; every call is logged. */
function fakeOps(refuse: (mode: NicMode, tap: string) => Error | undefined, leaveFails = false): { ops: AdoptedTapOps; log: string[]; closed: string[] } {
  const log: string[] = [];
  const closed: string[] = [];
  return {
    log,
    closed,
    ops: {
      open: async (name, tap, mode) => {
        log.push(`open ${tap} ${mode}`);
        const e = refuse(mode, tap);
        if (e) throw e;
        const p = new FakePort(name);
        const close = p.close.bind(p);
        p.close = () => {
          closed.push(`${tap} ${mode}`);
          close();
        };
        return p;
      },
      leave: async (tap) => {
        log.push(`leave ${tap}`);
        if (leaveFails) throw new VnsnapError('ERR_FAILED_PRECONDITION', `${tap}: the in-kernel data path's program could not be taken off it`);
      },
    },
  };
}

const cannotRun = new VnsnapError('ERR_FAILED_PRECONDITION', 'the in-kernel data path (nic tap-bpf) cannot run here: bpftool is not installed');

describe('adoption of a tap-bpf VM where the data path cannot run (QEMU driver)', function () {
  this.timeout(30_000);

  it('keeps the recorded mode where it opens: tap-bpf on the data path, nothing left', async () => {
    const f = fakeOps(() => undefined);
    const r = await openAdoptedTaps(NAMES, TAPS, 'tap-bpf', 'vnsnap-x', f.ops);
    assert.deepEqual([r.nic, r.reason, r.ports.map((p) => p.name), f.log], ['tap-bpf', undefined, NAMES, [`open ${TAPS[0]} tap-bpf`, `open ${TAPS[1]} tap-bpf`]]);
  });

  it('falls back to tap-vnet when the data path cannot run: what opened is closed, every TAP leaves the data path before any opens again', async () => {
    const f = fakeOps((mode, tap) => (mode === 'tap-bpf' && tap === TAPS[1] ? cannotRun : undefined));
    const r = await openAdoptedTaps(NAMES, TAPS, 'tap-bpf', 'vnsnap-x', f.ops);
    assert.deepEqual([r.nic, r.reason, r.ports.map((p) => p.name)], ['tap-vnet', `${cannotRun.message} [ERR_FAILED_PRECONDITION]`, NAMES]);
    assert.deepEqual(f.log, [`open ${TAPS[0]} tap-bpf`, `open ${TAPS[1]} tap-bpf`, `leave ${TAPS[0]}`, `leave ${TAPS[1]}`, `open ${TAPS[0]} tap-vnet`, `open ${TAPS[1]} tap-vnet`]);
    assert.deepEqual(f.closed, [`${TAPS[0]} tap-bpf`]);
  });

  it('does not fall back on any other failure, nor when the program cannot be taken off, nor for another mode', async () => {
    const other = new VnsnapError('ERR_DRIVER', 'in-kernel data path: attaching vn_tx to vnqmfb00n0 failed: busy');
    let f = fakeOps((mode) => (mode === 'tap-bpf' ? other : undefined));
    await assert.rejects(openAdoptedTaps(NAMES, TAPS, 'tap-bpf', 'vnsnap-x', f.ops), (e) => e === other);
    assert.deepEqual(f.log, [`open ${TAPS[0]} tap-bpf`]);
    f = fakeOps((mode) => (mode === 'tap-bpf' ? cannotRun : undefined), true);
    await assert.rejects(openAdoptedTaps(NAMES, TAPS, 'tap-bpf', 'vnsnap-x', f.ops), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === `${TAPS[0]}: the in-kernel data path's program could not be taken off it`);
    assert.deepEqual(f.log, [`open ${TAPS[0]} tap-bpf`, `leave ${TAPS[0]}`]);
    f = fakeOps(() => cannotRun);
    await assert.rejects(openAdoptedTaps(NAMES, TAPS, 'tap-vnet', 'vnsnap-x', f.ops), (e) => e === cannotRun);
    assert.deepEqual(f.log, [`open ${TAPS[0]} tap-vnet`]);
  });

  describe('leaveDataPath on a real device', () => {
    const NS = `vnut-dpleave-${process.pid}`;
    const h = dpHarnessHooks(`vnut-dpleave-${process.pid}`);
    const ip = (...args: string[]): string => execFileSync('ip', args, { encoding: 'utf8' });
    const qdiscs = (): string => execFileSync('ip', ['netns', 'exec', NS, 'tc', 'qdisc', 'show', 'dev', 'd0'], { encoding: 'utf8' });
    before(() => {
      ip('netns', 'add', NS);
      ip('-n', NS, 'link', 'add', 'd0', 'type', 'veth', 'peer', 'name', 'd1');
    });
    after(() => {
      ip('netns', 'del', NS);
    });

    it('removes vn_tx from the device and reads it back gone; again on a device without it, quiet', async () => {
      await attachDataPath(h().dp, 'd0', 'vn_tx', NS);
      assert.match(qdiscs(), /qdisc clsact /);
      await leaveDataPath('d0', NS);
      assert.doesNotMatch(qdiscs(), /clsact/);
      await leaveDataPath('d0', NS);
      assert.doesNotMatch(qdiscs(), /clsact/);
    });
  });
});
