/**
 * iperf3 inside the test guest, driven over the virtio-serial channel (what bench:vm-net does):
 * two QEMU guests booted with vnsnap.iperf=1 on TAPs in a Linux bridge of one namespace (prefix
 * `vngi`); the host asks guest 1 over its channel to run an iperf3 client against guest 2's
 * server and gets iperf3's -J document back; malformed commands get one-line refusals; status
 * requests still work on the same channel. QEMUs, namespace and files are removed in after(),
 * also when a test fails.
 */
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildGuest, channelIperf, channelStatus, ensureQemu, guestFiles, qemuArgs, type GuestImage } from '../guest/qemu-guest';
import { stopChild, Topology } from '../support/netns';
import { FatalWait, until } from '../support/wait';

const IPS = ['192.168.91.1', '192.168.91.2'];

/** Send raw lines on a channel socket; resolve with the first line `pick` accepts. */
function rawExchange(sock: string, lines: string[], pick: (l: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(sock);
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no matching line on ${sock}; got: ${buf.slice(-500)}`));
    }, 20_000);
    s.on('connect', () => s.write(lines.map((l) => `${l}\n`).join('')));
    s.on('data', (d: Buffer) => {
      buf += d.toString();
      const hit = buf.split('\n').find((l) => pick(l.trim()));
      if (hit !== undefined) {
        clearTimeout(timer);
        s.destroy();
        resolve(hit.trim());
      }
    });
    s.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

describe('guest image: iperf3 between two guests, run over the virtio-serial channel', function () {
  this.timeout(180_000);
  let image: GuestImage;
  let topo: Topology | undefined;
  let tmp = '';
  const procs: ChildProcess[] = [];
  const dirs: string[] = [];
  const sock = (i: number): string => guestFiles(dirs[i] as string).statusSock;

  before(async function () {
    if (process.getuid?.() !== 0) this.skip();
    this.timeout(25 * 60_000); // a first build downloads the kernel package
    ensureQemu();
    image = buildGuest();
    topo = new Topology('vngi');
    topo.addNamespace('net');
    topo.exec('net', 'ip', ['link', 'add', 'br0', 'type', 'bridge']);
    topo.exec('net', 'ip', ['link', 'set', 'br0', 'up']);
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vngi-'));
    for (const i of [0, 1]) {
      const dir = path.join(tmp, `vm${i + 1}`);
      fs.mkdirSync(dir);
      dirs.push(dir);
      topo.exec('net', 'ip', ['tuntap', 'add', 'dev', `tap${i + 1}`, 'mode', 'tap']);
      topo.exec('net', 'ip', ['link', 'set', `tap${i + 1}`, 'master', 'br0', 'up']);
      const args = qemuArgs({ image, dir, tap: `tap${i + 1}`, mac: `52:54:00:91:00:0${i + 1}`, params: { name: `vm${i + 1}`, ip: `${IPS[i]}/24`, mtu: 1400, disk: 'none', iperf: true } });
      procs.push(topo.spawn('net', 'qemu-system-x86_64', args));
    }
    for (const i of [0, 1]) {
      await until(`vm${i + 1} answers on its channel`, () => {
        if (procs[i]?.exitCode !== null) throw new FatalWait(`QEMU of vm${i + 1} exited`);
        return fs.existsSync(sock(i)) ? channelStatus(sock(i), 5000) : undefined;
      }, { timeoutMs: 120_000, everyMs: 250 });
    }
  });

  after(async function () {
    this.timeout(60_000);
    await Promise.all(procs.map((p) => stopChild(p)));
    if (topo) await topo.destroy();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('init starts the iperf3 server when vnsnap.iperf=1 asks', () => {
    for (const d of dirs) assert.match(fs.readFileSync(guestFiles(d).serialLog, 'utf8'), /VNSNAP-IPERF-UP/);
  });

  it('runs an iperf3 client in guest 1 against guest 2 and returns its -J document', async () => {
    const j = (await channelIperf(sock(0), ['-c', IPS[1] as string, '-t', '1', '--connect-timeout', '3000'], 60_000)) as {
      error?: string;
      start?: { connected?: { remote_host?: string }[] };
      end?: { sum_received?: { bytes?: number } };
    };
    assert.equal(j.error, undefined);
    assert.equal(j.start?.connected?.[0]?.remote_host, IPS[1]);
    assert.ok((j.end?.sum_received?.bytes ?? 0) > 0, 'the receiver counted bytes');
  });

  it('answers a run iperf3 itself refuses with its error in the document', async () => {
    const j = (await channelIperf(sock(0), ['-c', '192.168.91.9', '-t', '1', '--connect-timeout', '500'], 60_000)) as { error?: string };
    assert.match(j.error ?? '', /unable to connect/);
  });

  it('refuses a bad id, output that is no JSON and whitespace in an argument', async () => {
    assert.equal(await rawExchange(sock(0), ['iperf3 bad!id -v'], (l) => l.startsWith('IPERF3 ')), 'IPERF3 - !bad request: iperf3 ID ARG... with ID [A-Za-z0-9_-]{1,32}');
    // --version prints text, not JSON (exit status 0: iperf3 ignores -J there)
    assert.equal(await rawExchange(sock(0), ['iperf3 v1 --version'], (l) => l.startsWith('IPERF3 v1 ')), 'IPERF3 v1 !iperf3 printed no JSON (exit status 0)');
    await assert.rejects(channelIperf(sock(0), ['-c', 'a b'], 5000), /argument "a b" is empty or has whitespace/);
  });

  it('still answers status requests on the same channel', async () => {
    const s = await channelStatus(sock(1), 10_000);
    assert.equal(s.name, 'vm2');
  });
});
