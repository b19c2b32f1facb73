/**
 * The test guest for real: two QEMU guests under TCG, each with a virtio-net NIC on a TAP and a
 * qcow2 disk, the TAPs joined by a Linux bridge in a network namespace (prefix `vngb`). Both
 * guests stream checkable bytes to each other, dirty memory and append disk records; the host
 * reads their counters over the status port (through the bridge), the serial console log and
 * the virtio-serial channel. Everything (QEMU processes, namespace, temp files) is removed in
 * after(), also when a test fails.
 */
import { strict as assert } from 'node:assert';
import { ChildProcess, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { stopChild, Topology } from '../support/netns';
import {
  buildGuest,
  channelStatus,
  ensureQemu,
  GuestImage,
  guestFiles,
  GuestStatus,
  qemuArgs,
  queryStatus,
  serialStatuses,
} from '../guest/qemu-guest';
import { FatalWait, sleep, until } from '../support/wait';

const SUBNET = '192.168.90';

interface Vm {
  name: string;
  ip: string;
  dir: string;
  disk: string;
  proc?: ChildProcess;
  stderr: string;
  bootMs?: number;
}

describe('guest image: two QEMU guests on a bridge, streams, memory and disk load', function () {
  this.timeout(180_000);
  let image: GuestImage;
  let topo: Topology | undefined;
  let tmp = '';
  const ns = 'vngb-net';
  const vms: Vm[] = [];

  const status = (vm: Vm): GuestStatus => queryStatus(image, ns, `${vm.ip}:7070`);

  before(async function () {
    if (process.getuid?.() !== 0) this.skip();
    this.timeout(25 * 60_000); // a first build downloads the kernel package
    ensureQemu();
    image = buildGuest();
    topo = new Topology('vngb'); // also sweeps leftovers of a crashed run
    topo.addNamespace('net');
    topo.exec('net', 'ip', ['link', 'add', 'br0', 'type', 'bridge']);
    topo.exec('net', 'ip', ['addr', 'add', `${SUBNET}.254/24`, 'dev', 'br0']);
    topo.exec('net', 'ip', ['link', 'set', 'br0', 'up']);
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vngb-'));
    for (const i of [1, 2]) {
      const vm: Vm = { name: `vm${i}`, ip: `${SUBNET}.${i}`, dir: path.join(tmp, `vm${i}`), disk: path.join(tmp, `vm${i}.qcow2`), stderr: '' };
      fs.mkdirSync(vm.dir);
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', vm.disk, '32M']);
      topo.exec('net', 'ip', ['tuntap', 'add', 'dev', `tap${i}`, 'mode', 'tap']);
      topo.exec('net', 'ip', ['link', 'set', `tap${i}`, 'master', 'br0']);
      topo.exec('net', 'ip', ['link', 'set', `tap${i}`, 'up']);
      vms.push(vm);
    }
    const t0 = Date.now();
    for (const [i, vm] of vms.entries()) {
      const peer = vms[1 - i]!;
      const args = qemuArgs({
        image,
        dir: vm.dir,
        tap: `tap${i + 1}`,
        mac: `52:54:00:90:00:0${i + 1}`,
        disk: vm.disk,
        params: {
          name: vm.name,
          ip: `${vm.ip}/24`,
          peers: [`${peer.ip}:7001`],
          memMiB: 32,
          memRateMiB: 8,
          diskRate: 20,
          reportSecs: 2,
        },
      });
      const proc = topo.spawn('net', 'qemu-system-x86_64', args);
      proc.stderr?.on('data', (d: Buffer) => (vm.stderr += d.toString()));
      vm.proc = proc;
    }
    // boot: the status port answers through the bridge
    await Promise.all(
      vms.map(async (vm) => {
        await until(
          `${vm.name} to answer on ${vm.ip}:7070`,
          () => {
            if (vm.proc?.exitCode !== null) throw new FatalWait(`QEMU for ${vm.name} exited (${vm.proc?.exitCode}): ${vm.stderr}`);
            return status(vm);
          },
          { timeoutMs: 120_000, everyMs: 250 },
        );
        vm.bootMs = Date.now() - t0;
      }),
    );
    console.log(`      boot to status port: ${vms.map((v) => `${v.name} ${v.bootMs} ms`).join(', ')}; initrd ${fs.statSync(image.initrd).size} bytes`);
  });

  after(async function () {
    this.timeout(60_000);
    await Promise.all(vms.map((vm) => (vm.proc ? stopChild(vm.proc) : Promise.resolve())));
    if (topo) await topo.destroy();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') {
      for (const vm of vms) {
        const log = fs.existsSync(guestFiles(vm.dir).serialLog) ? fs.readFileSync(guestFiles(vm.dir).serialLog, 'utf8') : '';
        console.log(`--- ${vm.name} serial (tail) ---\n${log.slice(-3000)}\n--- ${vm.name} qemu stderr ---\n${vm.stderr.slice(-2000)}`);
      }
    }
  });

  it('boots both guests onto the network (init reports eth0 up with its address)', () => {
    for (const vm of vms) {
      const log = fs.readFileSync(guestFiles(vm.dir).serialLog, 'utf8');
      assert.match(log, new RegExp(`VNSNAP-NET-UP name=${vm.name} ip=${vm.ip.replace(/\./g, '\\.')}/24`));
      assert.match(log, /VNGUEST-READY/);
      const s = status(vm);
      assert.equal(s.name, vm.name);
      assert.equal(s.ip, `${vm.ip}/24`);
    }
  });

  it('streams flow both ways, every byte checked, with zero errors and no reconnects', async () => {
    const before = vms.map((vm) => status(vm));
    // at least 1 MiB received by each side on a live connection, and still growing
    await until('both receivers to have 1 MiB', () => vms.every((vm) => (status(vm).in[0]?.bytes ?? 0) > 1 << 20), { timeoutMs: 60_000, everyMs: 500 });
    // Kept: two more seconds of streaming over which no error or reconnect may appear.
    await sleep(2000);
    for (const [i, vm] of vms.entries()) {
      const s = status(vm);
      const peer = vms[1 - i]!;
      assert.equal(s.out.length, 1);
      const out = s.out[0]!;
      assert.equal(out.peer, `${peer.ip}:7001`);
      assert.equal(out.connected, true, `${vm.name} sender not connected: ${out.last_error}`);
      assert.equal(out.connects, 1);
      assert.equal(out.reconnects, 0);
      assert.equal(out.errors, 0);
      assert.equal(s.in.length, 1, `${vm.name} receives one stream`);
      const inn = s.in[0]!;
      assert.equal(inn.from, peer.name);
      assert.equal(inn.open, true);
      assert.equal(inn.errors, 0, inn.first_error);
      assert.equal(inn.connections, 1);
      assert.equal(inn.reconnects, 0);
      assert.ok(inn.bytes > (before[i]!.in[0]?.bytes ?? 0), `${vm.name}: receive counter grows`);
      assert.equal(inn.words, Math.floor(inn.conn_bytes / 8), 'every whole word received was checked');
      assert.equal(s.totals.errors, 0);
    }
    const rates = vms.map((vm) => status(vm)).map((s) => `${s.name} rx ${(s.in[0]!.bytes / (s.uptime_ms / 1000) / 1e6).toFixed(1)} MB/s`);
    console.log(`      ${rates.join(', ')}`);
  });

  it('runs the memory load without finding a corrupted page', async () => {
    const a = vms.map((vm) => status(vm));
    const b = await until('pages touched on both', () => {
      const now = vms.map((vm) => status(vm));
      return now.every((s, i) => s.mem.pages_touched > a[i]!.mem.pages_touched) ? now : undefined;
    }, { timeoutMs: 10_000, everyMs: 500 });
    for (const [i, s] of b.entries()) {
      assert.equal(s.mem.enabled, true);
      assert.equal(s.mem.mib, 32);
      assert.ok(s.mem.pages_touched > a[i]!.mem.pages_touched, 'pages are being touched');
      assert.equal(s.mem.errors, 0, s.mem.first_error);
    }
    // 8 MiB/s over 32 MiB: a full pass every ~4 s, once the guest has run a while
    await until('a full memory pass on both', () => vms.every((vm) => status(vm).mem.passes >= 1), { timeoutMs: 30_000, everyMs: 500 });
  });

  it('appends disk records, and the disk always holds exactly the record memory says', async () => {
    const a = vms.map((vm) => status(vm));
    const b = await until('more than 10 new disk records on both', () => {
      const now = vms.map((vm) => status(vm));
      return now.every((s, i) => s.disk.records > a[i]!.disk.records + 10) ? now : undefined;
    }, { timeoutMs: 10_000, everyMs: 500 });
    for (const [i, s] of b.entries()) {
      assert.equal(s.disk.enabled, true, s.disk.first_error);
      assert.equal(s.disk.dev, '/dev/vda');
      assert.equal(s.disk.direct, true);
      assert.equal(s.disk.slots, 8192); // 32 MiB / 4 KiB
      assert.ok(s.disk.records > a[i]!.disk.records + 10, `records grow (${a[i]!.disk.records} -> ${s.disk.records})`);
      assert.equal(s.disk.check_ok, s.disk.checks);
      assert.equal(s.disk.errors, 0, s.disk.first_error);
      assert.equal(s.disk.last_check.disk, s.disk.last_check.mem);
    }
  });

  it('reports status to the host three ways: TCP status port, serial console lines, virtio-serial channel', async () => {
    for (const vm of vms) {
      const files = guestFiles(vm.dir);
      const tcp = status(vm);
      const serial = await until('two VNSTAT lines on the serial console', () => {
        const l = serialStatuses(files.serialLog);
        return l.length >= 2 ? l : undefined;
      }, { timeoutMs: 20_000, everyMs: 500 });
      const last = serial[serial.length - 1]!;
      assert.equal(last.name, vm.name);
      assert.equal(last.nonce, tcp.nonce, 'the same program instance');
      const ch = await channelStatus(files.statusSock, 10_000);
      assert.equal(ch.name, vm.name);
      assert.equal(ch.nonce, tcp.nonce);
      assert.ok(ch.uptime_ms >= tcp.uptime_ms, 'the channel answer is fresh');
      assert.equal(ch.totals.errors, 0);
    }
  });
});
