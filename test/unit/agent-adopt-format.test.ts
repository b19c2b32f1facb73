/**
 * Records of older formats stay readable by every newer agent: a format-1 record as the agent of
 * that format wrote it (checked in, never regenerated) is parsed field by field, its QEMU part
 * too, and a state directory holding it scans to that record. If a later format changes the
 * record, this fixture must still read (upgraded in memory) — that is the promise of an upgrade
 * across versions (docs/agent-restart.md).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseQemuSavedState } from '../../agent/drivers/qemu/adopt';
import { parseVmState, VmStateDir } from '../../agent/vm-state';

const FIXTURE = path.resolve(__dirname, '../../../test/unit/fixtures/vm-state-format1.json');

const expected = {
  format: 1,
  agent: 'h1',
  vne: 'blue',
  vm: 'web',
  driver: 'qemu',
  spec: {
    name: 'web',
    host: 'h1',
    macs: ['52:54:00:12:34:56'],
    driver: {
      qemu: { memoryMib: 256, cpus: 1, kernel: '/var/lib/vnsnap/images/vmlinuz', initrd: '/var/lib/vnsnap/images/initrd.img', append: 'console=ttyS0', disk: '/var/lib/vnsnap/images/web.qcow2', extra: { accel: 'kvm' } },
      kind: 'qemu',
    },
  },
  process: { pid: 4242, startTime: '123456' },
  epoch: 3,
  generation: 2,
  driverState: { dir: '/run/vnsnap/qemu/vnqm-blue_web-1001-1', nic: 'tap', taps: ['vnqm0a1b2c3dn0'], ramPadKib: 8, snapSerial: 1 },
  writtenUnixMs: 1796400000000,
};

describe('VM state records of format 1 (checked-in fixture)', () => {
  it('parse field by field, the QEMU part too', () => {
    const r = parseVmState(fs.readFileSync(FIXTURE, 'utf8'), FIXTURE);
    assert.deepEqual(r, expected);
    assert.deepEqual(parseQemuSavedState(r.driverState, '/run/vnsnap/qemu'), expected.driverState);
  });

  it('a state directory holding one scans to that record, with nothing unreadable', async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-format1-'));
    try {
      const state = new VmStateDir(root);
      fs.mkdirSync(state.dirOf('blue', 'web'), { recursive: true });
      fs.copyFileSync(FIXTURE, path.join(state.dirOf('blue', 'web'), 'vm.json'));
      assert.deepEqual(await state.scan(), { records: [{ dir: state.dirOf('blue', 'web'), record: expected }], unreadable: [] });
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});
