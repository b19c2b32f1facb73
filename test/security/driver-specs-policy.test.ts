/**
 * The pure driver spec policy (proto/specs/): the xl config and disk parsers, the Xen key
 * allow-list, the QEMU extra allow-list and the image path shape, with exact outcomes for the
 * attacks of the trust issue and for the legitimate configurations the product and the tests use.
 */
import { strict as assert } from 'node:assert';
import { VnsnapError } from '../../proto/core/errors';
import { checkImagePath } from '../../proto/specs/image-path';
import { checkQemuExtra } from '../../proto/specs/qemu-extra';
import { checkXenConfig } from '../../proto/specs/xen-config';
import { formatXlConfig, parseXlConfig } from '../../proto/specs/xl-config';
import { formatDiskSpec, parseDiskSpec } from '../../proto/specs/xl-disk';

/** The message of the ERR_INVALID_ARGUMENT `f` throws (fails if it throws anything else or nothing). */
function refusal(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof VnsnapError, String(e));
    assert.equal(e.code, 'ERR_INVALID_ARGUMENT');
    return e.message;
  }
  assert.fail('accepted');
}

describe('driver spec policy: QEMU extra', () => {
  it('accepts every key the product and the tests use, with their values', () => {
    checkQemuExtra('', { accel: 'tcg', machine: 'q35', cpu: 'qemu64', channel: 'org.vnsnap.status', nic: 'tap', monitor: '1' });
    checkQemuExtra('', { accel: 'kvm', machine: 'pc-q35-8.2', cpu: 'Skylake-Server-v4', nic: 'stream', monitor: '0' });
    checkQemuExtra('', { machine: 'pc-i440fx-7.2' });
    checkQemuExtra('', { machine: 'microvm' });
    checkQemuExtra('', {});
  });

  it('refuses option injection through a value', () => {
    assert.equal(refusal(() => checkQemuExtra('VM "a": ', { machine: 'q35,firmware=/etc/shadow' })), 'VM "a": qemu.extra.machine "q35,firmware=/etc/shadow" is invalid: expected q35, pc, microvm, pc-q35-X.Y or pc-i440fx-X.Y');
    assert.equal(refusal(() => checkQemuExtra('', { cpu: 'qemu64,+vmx' })), 'qemu.extra.cpu "qemu64,+vmx" is invalid: expected a CPU model name (letters, digits, "_", "." or "-")');
    assert.equal(refusal(() => checkQemuExtra('', { channel: 'x,id=y' })), 'qemu.extra.channel "x,id=y" is invalid: expected a port name (letters, digits, "_", "." or "-")');
    assert.equal(refusal(() => checkQemuExtra('', { cpu: '-x' })), 'qemu.extra.cpu "-x" is invalid: expected a CPU model name (letters, digits, "_", "." or "-")');
    assert.equal(refusal(() => checkQemuExtra('', { accel: 'kvm:tcg' })), 'qemu.extra.accel "kvm:tcg" is invalid: expected kvm or tcg');
    assert.equal(refusal(() => checkQemuExtra('', { monitor: 'yes' })), 'qemu.extra.monitor "yes" is invalid: expected 0 or 1');
  });

  it('refuses unknown keys instead of ignoring them', () => {
    assert.equal(refusal(() => checkQemuExtra('VM "a": ', { 'rtc-base': 'utc' })), 'VM "a": qemu.extra key "rtc-base" is not allowed (allowed: accel, machine, cpu, channel, nic, monitor, balloon, memory)');
    assert.equal(refusal(() => checkQemuExtra('', { constructor: 'x' })), 'qemu.extra key "constructor" is not allowed (allowed: accel, machine, cpu, channel, nic, monitor, balloon, memory)');
  });
});

describe('driver spec policy: image path shape', () => {
  it('accepts absolute normalised paths', () => {
    checkImagePath('k', '/var/lib/vnsnap/images/vmlinuz');
    checkImagePath('k', '/a b/c,d');
  });

  it('refuses relative, unnormalised and control-character paths', () => {
    assert.equal(refusal(() => checkImagePath('qemu.kernel', 'vmlinuz')), 'qemu.kernel "vmlinuz" is not an absolute path');
    assert.equal(refusal(() => checkImagePath('qemu.kernel', '/var/lib/vnsnap/images/../../../etc/shadow')), `qemu.kernel "/var/lib/vnsnap/images/../../../etc/shadow" is not a normalised path (no '.', '..', '//' or trailing '/')`);
    assert.equal(refusal(() => checkImagePath('k', '/a/./b')), `k "/a/./b" is not a normalised path (no '.', '..', '//' or trailing '/')`);
    assert.equal(refusal(() => checkImagePath('k', '/a//b')), `k "/a//b" is not a normalised path (no '.', '..', '//' or trailing '/')`);
    assert.equal(refusal(() => checkImagePath('k', '/a/')), `k "/a/" is not a normalised path (no '.', '..', '//' or trailing '/')`);
    assert.equal(refusal(() => checkImagePath('k', '/a\nb')), 'k "/a\\nb" contains control characters');
  });
});

describe('driver spec policy: the xl config reader', () => {
  it('reads strings, numbers, lists over lines, comments and ";" separators', () => {
    const text = '# a guest\ntype = "pv"   # PV\nmemory=0x80; vcpus = 2\ndisk = [\n  \'/img/a.img,raw,xvda,rw\', # first\n  "format=raw, vdev=xvdb, target=/img/b.img",\n]\nextra = \'say "hi"\'\n';
    assert.deepEqual(parseXlConfig(text), [
      { key: 'type', value: { kind: 'string', value: 'pv' }, line: 2 },
      { key: 'memory', value: { kind: 'number', text: '0x80' }, line: 3 },
      { key: 'vcpus', value: { kind: 'number', text: '2' }, line: 3 },
      { key: 'disk', value: { kind: 'list', items: [{ kind: 'string', value: '/img/a.img,raw,xvda,rw' }, { kind: 'string', value: 'format=raw, vdev=xvdb, target=/img/b.img' }] }, line: 4 },
      { key: 'extra', value: { kind: 'string', value: 'say "hi"' }, line: 8 },
    ]);
  });

  it('writes what it read (read(write(c)) = c)', () => {
    const c = parseXlConfig('a = "x"\nb = 5\nc = [ "p", \'q"r\' ]\nd = []\n');
    assert.deepEqual(parseXlConfig(formatXlConfig(c)).map(({ key, value }) => ({ key, value })), c.map(({ key, value }) => ({ key, value })));
    assert.equal(formatXlConfig(c), 'a = "x"\nb = 5\nc = [ "p", \'q"r\' ]\nd = [  ]\n');
  });

  it('refuses what it cannot be sure of, naming the line', () => {
    assert.equal(refusal(() => parseXlConfig('a = "x\\"y"')), 'xen.config line 1: backslash escapes in strings are not accepted');
    assert.equal(refusal(() => parseXlConfig('a = 1\nb = "open\n')), 'xen.config line 2: a string is not closed on its line');
    assert.equal(refusal(() => parseXlConfig('a = 1\na = 2\n')), 'xen.config line 2: "a" is set twice (also on line 1)');
    assert.equal(refusal(() => parseXlConfig('disk += [ "x" ]')), 'xen.config line 1: "disk +=" (list append) is not accepted: give the whole value once');
    assert.equal(refusal(() => parseXlConfig('a = b')), 'xen.config line 1: expected a string, a number or a list, found "b"');
    assert.equal(refusal(() => parseXlConfig('a = 1 2')), 'xen.config line 1: unexpected "2" after the value of "a"');
    assert.equal(refusal(() => parseXlConfig('a = [ "x" "y" ]')), `xen.config line 1: expected ',' or ']' in a list, found "\\""`);
  });
});

describe('driver spec policy: xl disk specifications', () => {
  const base = { flags: [], other: [] };
  it('reads the positional, named, flag and deprecated forms of xl-disk-configuration(5)', () => {
    assert.deepEqual(parseDiskSpec('d', '/img/a.img,,xvda'), { ...base, target: '/img/a.img', vdev: 'xvda' });
    assert.deepEqual(parseDiskSpec('d', '/img/a.img,raw,xvda,rw'), { ...base, target: '/img/a.img', format: 'raw', vdev: 'xvda', access: 'rw' });
    assert.deepEqual(parseDiskSpec('d', 'format=raw, vdev=xvda, access=rw, target=/img/a,b.img'), { ...base, target: '/img/a,b.img', format: 'raw', vdev: 'xvda', access: 'rw' });
    assert.deepEqual(parseDiskSpec('d', '/img/x.iso,,hdc,cdrom'), { ...base, target: '/img/x.iso', vdev: 'hdc', devtype: 'cdrom' });
    assert.deepEqual(parseDiskSpec('d', 'file:/img/a.img,xvda,w'), { ...base, target: '/img/a.img', format: 'raw', vdev: 'xvda', access: 'w' });
    assert.deepEqual(parseDiskSpec('d', 'tap:aio:/img/a.img,xvda,w'), { ...base, target: '/img/a.img', format: 'raw', backendtype: 'tap', vdev: 'xvda', access: 'w' });
    assert.deepEqual(parseDiskSpec('d', '/img/a.img,raw,xvda,rw,discard,script=/bin/sh'), { flags: ['discard'], other: ['script=/bin/sh'], target: '/img/a.img', format: 'raw', vdev: 'xvda', access: 'rw' });
  });

  it('writes the canonical form, target last, which reads back the same', () => {
    const d = parseDiskSpec('d', 'file:/img/a.img,xvda,w');
    assert.equal(formatDiskSpec(d), 'format=raw, vdev=xvda, access=w, target=/img/a.img');
    assert.deepEqual(parseDiskSpec('d', formatDiskSpec(d)), d);
  });

  it('refuses unknown target prefixes (xl would run block-<prefix>) and parameters given twice', () => {
    assert.equal(refusal(() => parseDiskSpec('xen.config disk[0]', 'drbd:/img/a.img,xvda,w')), 'xen.config disk[0]: target prefix "drbd:" is not accepted (xl would run the block script it names)');
    assert.equal(refusal(() => parseDiskSpec('d', 'vdev=xvda,xvdb')), 'd: target "xvdb" is not an absolute path');
    assert.equal(refusal(() => parseDiskSpec('d', '/img/a.img,raw,xvda,rw,vdev=xvdb')), 'd: vdev is given twice');
  });
});

describe('driver spec policy: the Xen allow-list', () => {
  const legit = [
    'type = "pv"',
    'kernel = "/var/lib/vnsnap/images/vmlinuz"',
    'ramdisk = "/var/lib/vnsnap/images/initrd.img"',
    'extra = "console=hvc0 quiet panic=-1 vnsnap.name=vm1"',
    'memory = 128',
    'vcpus = 1',
    'on_crash = "preserve"',
    "disk = [ 'format=raw, vdev=xvda, access=rw, target=/var/lib/vnsnap/images/vm1.img' ]",
    'name = "ignored"',
    "vif = [ 'mac=00:16:3e:00:00:01' ]",
    '',
  ].join('\n');

  it('accepts the test bed guest config, dropping name and vif', () => {
    const c = checkXenConfig('', legit);
    assert.deepEqual(c.entries.map((e) => e.key), ['type', 'kernel', 'ramdisk', 'extra', 'memory', 'vcpus', 'on_crash', 'disk']);
    assert.equal(c.kernel, '/var/lib/vnsnap/images/vmlinuz');
    assert.equal(c.ramdisk, '/var/lib/vnsnap/images/initrd.img');
    assert.deepEqual(c.disks, [{ target: '/var/lib/vnsnap/images/vm1.img', format: 'raw', vdev: 'xvda', access: 'rw', flags: [], other: [] }]);
    assert.deepEqual(checkXenConfig('', 'type = "pvh"\nmaxmem = 256\nmaxvcpus = 4\ncmdline = "root=/dev/xvda"\non_reboot = "destroy"\n').entries.length, 5);
  });

  it('refuses the attack configs with a reason', () => {
    assert.equal(refusal(() => checkXenConfig('VM "a": ', 'type = "pv"\nbootloader = "/bin/sh"\nbootloader_args = [ "-c", "touch /tmp/pwned" ]\n')), 'VM "a": xen.config bootloader is not allowed: it names a program dom0 runs as root');
    assert.equal(refusal(() => checkXenConfig('', 'bootloader_args = [ "-c", "id" ]\n')), 'xen.config bootloader_args is not allowed: it is the argument list of a program dom0 runs as root');
    assert.equal(refusal(() => checkXenConfig('', 'device_model_override = "/bin/sh"\n')), 'xen.config device_model_override is not allowed: it names the device model binary dom0 runs');
    assert.equal(refusal(() => checkXenConfig('', 'device_model_args = [ "-x" ]\n')), 'xen.config device_model_args is not allowed: it passes arguments to the device model dom0 runs');
    assert.equal(refusal(() => checkXenConfig('', 'init_seclabel = "x"\n')), 'xen.config init_seclabel is not allowed: it sets an XSM label');
    assert.equal(refusal(() => checkXenConfig('', "disk = [ '/img/a.img,raw,xvda,rw,script=/bin/sh' ]\n")), 'xen.config disk[0]: "script" is not allowed (a program dom0 runs as root) (allowed: target, format, vdev, access, devtype, backendtype, cdrom, direct-io-safe, discard, no-discard, trusted, untrusted)');
    assert.equal(refusal(() => checkXenConfig('', "disk = [ 'format=raw, vdev=xvda, backend=dom1, target=/img/a.img' ]\n")), 'xen.config disk[0]: "backend" is not allowed (another domain would serve the disk) (allowed: target, format, vdev, access, devtype, backendtype, cdrom, direct-io-safe, discard, no-discard, trusted, untrusted)');
    assert.equal(refusal(() => checkXenConfig('', "disk = [ 'qcow2:/img/a.qcow2,xvda,w' ]\n")), 'xen.config disk[0]: format "qcow2" is not allowed (only raw: other formats name backing files the agent does not check)');
    assert.equal(refusal(() => checkXenConfig('', "disk = [ '/img/../etc/shadow,raw,xvda,r' ]\n")), `xen.config disk[0] target "/img/../etc/shadow" is not a normalised path (no '.', '..', '//' or trailing '/')`);
    assert.equal(refusal(() => checkXenConfig('', 'type = "hvm"\n')), 'xen.config type "hvm" is not allowed (allowed: pv, pvh)');
    assert.equal(refusal(() => checkXenConfig('', 'kernel = "vmlinuz"\n')), 'xen.config kernel "vmlinuz" is not an absolute path');
  });

  it('refuses every key outside the allow-list, and numbers out of bounds', () => {
    assert.equal(refusal(() => checkXenConfig('', 'nestedhvm = 1\n')), 'xen.config nestedhvm is not allowed (allowed: name, vif, type, kernel, ramdisk, cmdline, extra, root, memory, maxmem, vcpus, maxvcpus, disk, uuid, on_poweroff, on_reboot, on_watchdog, on_crash, on_soft_reset)');
    assert.equal(refusal(() => checkXenConfig('', 'memory = 4294967295\n')), 'xen.config memory 4294967295 is out of range (16..1048576 MiB)');
    assert.equal(refusal(() => checkXenConfig('', 'memory = "128"\n')), 'xen.config memory "128" is out of range (16..1048576 MiB)');
    assert.equal(refusal(() => checkXenConfig('', 'vcpus = 0\n')), 'xen.config vcpus 0 is out of range (1..256)');
    assert.equal(refusal(() => checkXenConfig('', 'maxvcpus = 257\n')), 'xen.config maxvcpus 257 is out of range (1..256)');
    assert.equal(refusal(() => checkXenConfig('', 'on_crash = "coredump-destroy"\n')), 'xen.config on_crash "coredump-destroy" is not allowed (allowed: destroy, restart, rename-restart, preserve, soft-reset)');
    assert.equal(refusal(() => checkXenConfig('', 'kernel = [ "/a" ]\n')), 'xen.config kernel must be a string');
  });
});
