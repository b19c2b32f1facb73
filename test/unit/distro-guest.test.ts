/**
 * The distro guest's host side without booting it: the kernel command line (root arguments
 * before the test guest's line), the VmStartSpec, writeVneFile's distro kind (each VM its own
 * overlay of the cached root, 192 MiB; the test guest's defaults unchanged), and the build
 * script's argument handling and cache lookup (--help, an unknown argument, --print-paths on an
 * empty cache). qemu-img makes real qcow2 files; the script runs for real (it only queries apt).
 */
import { strict as assert } from 'node:assert';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DISTRO_BUILD_SCRIPT, distroCmdline, distroImageRoots, distroSpec, type DistroImage } from '../guest/distro-guest';
import type { GuestImage } from '../guest/qemu-guest';
import { writeVneFile } from '../support/qemu-vne';

const hasQemuImg = spawnSync('sh', ['-c', 'command -v qemu-img'], { stdio: 'ignore' }).status === 0;

interface VneVm {
  name: string;
  driver: { qemu: { memoryMib: number; append: string; disk: string; kernel: string } };
}

describe('distro guest (host side)', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnqd-unit-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const fakeImage = (): DistroImage => {
    const cache = path.join(dir, 'cache');
    fs.mkdirSync(cache);
    const disk = path.join(cache, 'disk.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '64M']);
    return { kind: 'distro', kernel: path.join(cache, 'vmlinuz'), initrd: path.join(cache, 'initrd.img'), disk, tool: path.join(cache, 'vnguest') };
  };
  const backingOf = (f: string): string | undefined => (JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-U', f], { encoding: 'utf8' })) as { 'backing-filename'?: string })['backing-filename'];

  it('the command line is the root arguments, then the test guest line with the vnsnap.* parameters', () => {
    assert.equal(
      distroCmdline({ name: 'a', ip: '192.168.78.1/24', mtu: 1400, peers: ['192.168.78.2:7001'], diskRate: 20 }),
      'root=/dev/vda rw rootfstype=ext4 net.ifnames=0 init_on_free=1 console=ttyS0 quiet panic=-1 vnsnap.name=a vnsnap.ip=192.168.78.1/24 vnsnap.mtu=1400 vnsnap.peers=192.168.78.2:7001 vnsnap.diskrate=20',
    );
  });

  it('a spec boots the kernel and initrd of the cache entry from the VM overlay, 192 MiB, with the status channel', () => {
    const img: DistroImage = { kind: 'distro', kernel: '/c/k/vmlinuz', initrd: '/c/k/initrd.img', disk: '/c/k/disk.qcow2', tool: '/c/k/vnguest' };
    const s = distroSpec(img, 'vnqd', 'b', { disk: '/w/b-root.qcow2', params: { ip: '10.0.0.2/24' }, mac: '52:54:00:78:00:02' });
    assert.deepEqual(s, {
      id: 'vnqd/b',
      vne: 'vnqd',
      name: 'b',
      macs: ['52:54:00:78:00:02'],
      driver: { kind: 'qemu', qemu: { memoryMib: 192, cpus: 1, kernel: '/c/k/vmlinuz', initrd: '/c/k/initrd.img', append: 'root=/dev/vda rw rootfstype=ext4 net.ifnames=0 init_on_free=1 console=ttyS0 quiet panic=-1 vnsnap.name=b vnsnap.ip=10.0.0.2/24', disk: '/w/b-root.qcow2', extra: { channel: 'org.vnsnap.status' } } },
    });
    assert.deepEqual(distroImageRoots(img, '/w'), ['/c/k', '/w']);
  });

  it('writeVneFile with a DistroImage: every VM boots from its own overlay of the cached root, 192 MiB', function () {
    if (!hasQemuImg) this.skip();
    const img = fakeImage();
    const vms = (JSON.parse(fs.readFileSync(writeVneFile(dir, img), 'utf8')) as { vms: VneVm[] }).vms;
    assert.deepEqual(vms.map((v) => v.name), ['a', 'b', 'c', 'd']);
    const disks = new Set(vms.map((v) => v.driver.qemu.disk));
    assert.equal(disks.size, 4, 'one disk per VM');
    for (const v of vms) {
      assert.equal(v.driver.qemu.memoryMib, 192);
      assert.equal(v.driver.qemu.kernel, img.kernel);
      assert.match(v.driver.qemu.append, new RegExp(`^root=/dev/vda rw rootfstype=ext4 net\\.ifnames=0 init_on_free=1 console=ttyS0 quiet panic=-1 vnsnap\\.name=${v.name} `));
      assert.equal(backingOf(v.driver.qemu.disk), img.disk);
    }
  });

  it('writeVneFile with the test guest keeps its defaults: 128 MiB, a blank disk, the test guest line', function () {
    if (!hasQemuImg) this.skip();
    const img: GuestImage = { kernel: '/c/vmlinuz', initrd: '/c/initrd.img', tool: '/c/vnguest' };
    const vms = (JSON.parse(fs.readFileSync(writeVneFile(dir, img), 'utf8')) as { vms: VneVm[] }).vms;
    for (const v of vms) {
      assert.equal(v.driver.qemu.memoryMib, 128);
      assert.match(v.driver.qemu.append, new RegExp(`^console=ttyS0 quiet panic=-1 vnsnap\\.name=${v.name} `));
      assert.equal(backingOf(v.driver.qemu.disk), undefined);
    }
  });

  it('build-distro-guest.sh: --help prints the usage, an unknown argument exits 2, --print-paths on an empty cache exits 3 and prints nothing', function () {
    this.timeout(60_000); // --print-paths asks apt-cache for a dozen versions (seconds)
    const help = spawnSync('bash', [DISTRO_BUILD_SCRIPT, '--help'], { encoding: 'utf8' });
    assert.equal(help.status, 0);
    assert.match(help.stdout, /--print-paths/);
    assert.match(help.stdout, /VNSNAP_DISTRO_DISK=/);
    assert.doesNotMatch(help.stdout, /set -euo/);
    const bad = spawnSync('bash', [DISTRO_BUILD_SCRIPT, '--bogus'], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.equal(bad.stderr.trim(), 'build-distro-guest.sh: unknown argument --bogus');
    const print = spawnSync('bash', [DISTRO_BUILD_SCRIPT, '--print-paths'], { encoding: 'utf8', env: { ...process.env, VNSNAP_CACHE: path.join(dir, 'empty') } });
    assert.equal(print.status, 3, print.stderr);
    assert.equal(print.stdout, '');
  });
});
