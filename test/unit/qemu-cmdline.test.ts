/**
 * The QEMU command line (agent/drivers/qemu/cmdline.ts): the same arguments for a start and a restore,
 * and the RAM padding that keeps QEMU < 9.0 under TCG off its lossy dirty-bitmap fast path.
 */
import { strict as assert } from 'node:assert';
import { qemuCmdline, qemuVersion, readBackingChain, tcgRamPadKib, traceArgs, vmFiles } from '../../agent/drivers/qemu/cmdline';
import type { QemuDriverSpec__Output } from '../../proto/gen/vnsnap/v1/QemuDriverSpec';

const spec: QemuDriverSpec__Output = { memoryMib: 256, cpus: 1, kernel: '/k', initrd: '/i', append: 'quiet', disk: '/d.qcow2', extra: {} };

function argAfter(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i < 0 ? undefined : args[i + 1];
}

describe('QEMU command line', () => {
  const files = vmFiles('/run/vnqm-x');

  it('gives -m in MiB without padding, in KiB with it', () => {
    assert.equal(argAfter(qemuCmdline({ spec, files, accel: 'kvm', nics: [], disk: false, incoming: false }), '-m'), '256');
    assert.equal(argAfter(qemuCmdline({ spec, files, accel: 'tcg', nics: [], disk: false, incoming: false, ramPadKib: 8 }), '-m'), '262152k');
  });

  it('traces QEMU only with VNSNAP_QEMU_TRACE_DIR: events timestamped into DIR/<instance>.trace', () => {
    assert.deepEqual(traceArgs('/run/vnqm-x', {}), []);
    const args = traceArgs('/run/vnqm-x', { VNSNAP_QEMU_TRACE_DIR: '/srv/trace' });
    assert.deepEqual(args.slice(0, 4), ['-msg', 'timestamp=on', '-D', '/srv/trace/vnqm-x.trace']);
    assert.ok(args.includes('enable=savevm_state_header') && args.includes('enable=monitor_protocol_event_emit') && args.includes('enable=qmp_enter_cont'));
    assert.equal(args.filter((a) => a === '-trace').length, (args.length - 4) / 2);
  });

  it('names QEMU\'s threads on every command line (the pause boost finds the monitor thread by its name)', () => {
    assert.equal(argAfter(qemuCmdline({ spec, files, accel: 'tcg', nics: [], disk: false, incoming: false }), '-name'), 'vnqm-x,debug-threads=on');
  });

  it('pads RAM only for TCG on QEMU before 9.0', () => {
    assert.equal(tcgRamPadKib('tcg', [7, 2]), 8);
    assert.equal(tcgRamPadKib('tcg', [8, 2]), 8);
    assert.equal(tcgRamPadKib('tcg', [9, 0]), 0);
    assert.equal(tcgRamPadKib('kvm', [7, 2]), 0);
  });

  it('the padded size is not a multiple of 64 pages (so QEMU syncs the bitmap page by page)', () => {
    for (const mib of [64, 256, 1024, 4096]) assert.notEqual(((mib * 1024 + tcgRamPadKib('tcg', [7, 2])) * 1024) % (64 * 4096), 0, `${mib} MiB`);
  });

  it('balloon=stats adds a reporting-only virtio-balloon device (no free-page hinting or reporting); without it there is none', () => {
    const args = qemuCmdline({ spec: { ...spec, extra: { balloon: 'stats' } }, files, accel: 'tcg', nics: [], disk: false, incoming: false });
    assert.equal(argAfter(args, '-device'), 'virtio-balloon-pci,id=balloon0');
    assert.ok(!qemuCmdline({ spec, files, accel: 'tcg', nics: [], disk: false, incoming: false }).some((a) => a.includes('balloon')));
  });

  it('gives the disk chain as nodes of its own, every file node with drop-cache off', () => {
    const blockdevs = (args: string[]): string[] => args.flatMap((a, i) => (args[i - 1] === '-blockdev' ? [a] : []));
    const base = { spec, files, accel: 'tcg' as const, nics: [], disk: true, incoming: false, diskFile: '/d/top,1.qcow2' };
    assert.deepEqual(blockdevs(qemuCmdline(base)), ['driver=file,filename=/d/top,,1.qcow2,node-name=file0,drop-cache=off', 'driver=qcow2,file=file0,node-name=disk0']);
    const chained = qemuCmdline({ ...base, backing: [{ file: '/d/mid.qcow2', format: 'qcow2' }, { file: '/b/base.img', format: 'raw' }] });
    assert.deepEqual(blockdevs(chained), [
      'driver=file,filename=/b/base.img,node-name=bfile1,read-only=on,drop-cache=off',
      'driver=raw,file=bfile1,node-name=back1,read-only=on',
      'driver=file,filename=/d/mid.qcow2,node-name=bfile0,read-only=on,drop-cache=off',
      'driver=qcow2,file=bfile0,node-name=back0,read-only=on,backing=back1',
      'driver=file,filename=/d/top,,1.qcow2,node-name=file0,drop-cache=off',
      'driver=qcow2,file=file0,node-name=disk0,backing=back0',
    ]);
    assert.equal(argAfter(chained, '-device'), 'virtio-blk-pci,drive=disk0');
  });

  it('reads the chain under the top from qemu-img, and leaves one it cannot use to QEMU', async () => {
    const info = (images: object[]) => async (): Promise<string> => JSON.stringify(images);
    const top = { filename: '/d/top.qcow2', format: 'qcow2' };
    assert.deepEqual(await readBackingChain('/d/top.qcow2', info([top, { filename: '/d/mid.qcow2', format: 'qcow2' }, { filename: '/b/base.img', format: 'raw' }])), [
      { file: '/d/mid.qcow2', format: 'qcow2' },
      { file: '/b/base.img', format: 'raw' },
    ]);
    assert.deepEqual(await readBackingChain('/d/top.qcow2', info([top])), []);
    assert.equal(await readBackingChain('/d/top.qcow2', info([top, { filename: 'rel.qcow2', format: 'qcow2' }])), undefined);
    assert.equal(await readBackingChain('/d/top.qcow2', info([top, { filename: '/b/raw.img', format: 'raw' }, { filename: '/b/q.qcow2', format: 'qcow2' }])), undefined);
    assert.equal(await readBackingChain('/d/top.qcow2', info([top, { filename: '/b/v.vmdk', format: 'vmdk' }])), undefined);
    assert.equal(await readBackingChain('/d/top.qcow2', () => Promise.reject(new Error('qemu-img: Could not open'))), undefined);
  });

  it('a restore only adds -S -incoming defer', () => {
    const start = qemuCmdline({ spec, files, accel: 'tcg', nics: [{ mode: 'stream', target: '/s', mac: '52:54:00:00:00:01' }], disk: true, incoming: false, ramPadKib: 8 });
    const restore = qemuCmdline({ spec, files, accel: 'tcg', nics: [{ mode: 'stream', target: '/s', mac: '52:54:00:00:00:01' }], disk: true, incoming: true, ramPadKib: 8 });
    assert.deepEqual(restore, [...start, '-S', '-incoming', 'defer']);
  });

  it('gives each NIC mode its netdev: stream socket, TAP with vnet_hdr off, TAP with vnet_hdr on', () => {
    const mac = '52:54:00:00:00:01';
    const netdevs = (['stream', 'tap', 'tap-vnet'] as const).map((mode, i) => {
      const args = qemuCmdline({ spec, files, accel: 'tcg', nics: [{ mode, target: mode === 'stream' ? '/s' : `vnqmt${i}`, mac }], disk: false, incoming: false });
      assert.equal(argAfter(args, '-device'), `virtio-net-pci,netdev=n0,mac=${mac},romfile=`);
      return argAfter(args, '-netdev');
    });
    assert.deepEqual(netdevs, [
      'stream,id=n0,server=off,addr.type=unix,addr.path=/s',
      'tap,id=n0,ifname=vnqmt1,script=no,downscript=no,vnet_hdr=off',
      'tap,id=n0,ifname=vnqmt2,script=no,downscript=no,vnet_hdr=on',
    ]);
  });

  it('reads the version of a QEMU binary, and [0, 0] for a missing one', async () => {
    assert.deepEqual(await qemuVersion('/nonexistent/qemu-system-x86_64'), [0, 0]);
  });
});
