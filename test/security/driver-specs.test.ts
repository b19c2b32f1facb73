/**
 * The attack specs of the trust issue, refused with INVALID_ARGUMENT before any process starts:
 *  - at `vne define`, through the real coordinator over gRPC (in-process server on loopback);
 *  - by the agent's drivers, the coordinator's check bypassed (driver calls, and a real Agent
 *    whose StartVm the coordinator forwards for the paths only the agent can judge).
 * Nothing ran is proven by the process seam: the drivers get a qemu, qemu-img and xl that are
 * scripts appending their arguments to a marker file (qemu-img then runs the real one), and the
 * tests assert no qemu or xl marker, only read-only `qemu-img info` calls, no port opened and no
 * VM directory or config written. A legitimate spec through the same drivers does reach the
 * scripts, so the markers are a working detector.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Agent } from '../../agent/agent';
import type { VmStartSpec } from '../../agent/drivers/driver';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import { XenDriver } from '../../agent/drivers/xen/driver';
import { XlHost } from '../../agent/drivers/xen/xl';
import { CoordinatorServer } from '../../coordinator/server';
import { VnsnapError } from '../../proto/core/errors';
import { loadVnsnap } from '../../proto/core/grpc';
import { ERROR_CODE_METADATA_KEY } from '../../proto/core/grpc-status';
import { silentLogger } from '../../proto/core/log';
import { LocalDirStore } from '../../proto/store/local-dir';
import type { CoordinatorServiceClient } from '../../proto/gen/vnsnap/v1/CoordinatorService';
import type { DriverSpec } from '../../proto/gen/vnsnap/v1/DriverSpec';
import type { Vne } from '../../proto/gen/vnsnap/v1/Vne';
import { fakePortPair } from '../../switch/port/porttest/fake-port';
import { until } from '../support/wait';

const PREFIX = 'vnspec-';
const log = silentLogger();
const ctx = { portNames: ['v/a/0'], log };

function hasQemuImg(): boolean {
  try {
    execFileSync('qemu-img', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The test's directory: an image root with files, symlinks out of it, and marker scripts. */
class Bed {
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), PREFIX));
  readonly root = path.join(this.dir, 'images');
  readonly outside = path.join(this.dir, 'outside');
  readonly bin = path.join(this.dir, 'bin');
  readonly marks = path.join(this.dir, 'marks');

  constructor() {
    for (const d of [this.root, this.outside, this.bin, this.marks]) fs.mkdirSync(d);
    fs.writeFileSync(path.join(this.root, 'vmlinuz'), 'kernel');
    fs.writeFileSync(path.join(this.root, 'initrd.img'), 'initrd');
    fs.writeFileSync(path.join(this.root, 'vm.img'), Buffer.alloc(4096));
    fs.writeFileSync(path.join(this.outside, 'secret'), 'host secret');
    fs.symlinkSync(path.join(this.outside, 'secret'), path.join(this.root, 'link-out'));
    fs.symlinkSync(this.outside, path.join(this.root, 'dir-out'));
    fs.mkdirSync(path.join(this.root, 'sub'));
    this.script('qemu', `echo "$*" >> ${this.marks}/qemu`);
    this.script('qemu-img', `echo "$*" >> ${this.marks}/qemu-img\nexec qemu-img "$@"`);
    this.script('xl', `echo "$*" >> ${this.marks}/xl`);
  }

  private script(name: string, body: string): void {
    fs.writeFileSync(path.join(this.bin, name), `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  }

  img(name: string): string {
    return path.join(this.root, name);
  }

  /** What the marker scripts recorded: program → argument lines. */
  ran(): Record<string, string[]> {
    const out: Record<string, string[]> = {};
    for (const f of fs.readdirSync(this.marks)) out[f] = fs.readFileSync(path.join(this.marks, f), 'utf8').trim().split('\n');
    return out;
  }

  clearMarks(): void {
    for (const f of fs.readdirSync(this.marks)) fs.rmSync(path.join(this.marks, f));
  }

  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A rejection with ERR_INVALID_ARGUMENT whose message is `msg` (or matches it). */
async function refused(p: Promise<unknown>, msg: string | RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof VnsnapError, String(e));
    assert.equal(e.code, 'ERR_INVALID_ARGUMENT', e.message);
    if (typeof msg === 'string') assert.equal(e.message, msg);
    else assert.match(e.message, msg);
    return true;
  });
}

const qemuSpec = (q: Record<string, unknown>): VmStartSpec => ({
  id: 'v/a',
  vne: 'v',
  name: 'a',
  macs: ['52:54:00:00:00:01'],
  driver: { kind: 'qemu', qemu: { memoryMib: 64, cpus: 1, kernel: '', initrd: '', append: '', disk: '', extra: {}, ...q } },
});
const xenSpec = (config: string): VmStartSpec => ({ id: 'v/a', vne: 'v', name: 'a', macs: ['00:16:3e:00:00:01'], driver: { kind: 'xen', xen: { config } } });

/** The real toolstack class on the marker xl, without touching the host's bridges. */
class MarkerXlHost extends XlHost {
  override async bridgeUp(): Promise<void> {}
  override async bridgeDown(): Promise<void> {}
}

describe('driver specs: the agent refuses what a VM may not touch, before anything runs', function () {
  this.timeout(60_000);
  let bed: Bed;
  let work: string;
  let qemu: QemuDriver;
  let xen: XenDriver;
  let portsOpened = 0;
  const roots = (): string => bed.root;

  beforeEach(() => {
    bed = new Bed();
    work = path.join(bed.dir, 'work');
    portsOpened = 0;
    qemu = new QemuDriver({ workDir: path.join(work, 'qemu'), qemuBinary: path.join(bed.bin, 'qemu'), qemuImg: path.join(bed.bin, 'qemu-img'), accel: 'tcg', imageRoots: [bed.root], startTimeoutMs: 5000 });
    xen = new XenDriver({
      host: new MarkerXlHost(path.join(bed.bin, 'xl'), path.join(bed.bin, 'xl')),
      workDir: path.join(work, 'xen'),
      imageRoots: [bed.root],
      receiverCommand: (s) => s,
      openPort: (n) => {
        portsOpened++;
        return fakePortPair(n).port;
      },
      log: () => undefined,
    });
  });
  afterEach(async () => {
    await qemu.close();
    await xen.close();
    bed.remove();
  });

  /** Nothing ran: no qemu or xl, qemu-img only to read headers, no port, no VM directory or config. */
  function nothingRan(): void {
    const ran = bed.ran();
    assert.equal(ran.qemu, undefined, `qemu ran: ${ran.qemu?.join(' | ')}`);
    assert.equal(ran.xl, undefined, `xl ran: ${ran.xl?.join(' | ')}`);
    for (const l of ran['qemu-img'] ?? []) assert.match(l, /^info --backing-chain --output=json -U /);
    assert.equal(portsOpened, 0);
    assert.equal(fs.existsSync(work), false, `the driver wrote ${work}`);
  }

  const rootsText = (): string => `images must be regular files under the agent's image roots (${roots()})`;

  it('QEMU kernel=/etc/shadow', async () => {
    await refused(qemu.start(qemuSpec({ kernel: '/etc/shadow' }), ctx), `VM a: qemu.kernel "/etc/shadow" is outside the image roots; ${rootsText()}`);
    nothingRan();
  });

  it('QEMU initrd=/root/.ssh/id_rsa', async () => {
    await refused(qemu.start(qemuSpec({ kernel: bed.img('vmlinuz'), initrd: '/root/.ssh/id_rsa' }), ctx), /^VM a: qemu\.initrd "\/root\/\.ssh\/id_rsa" (is outside the image roots|cannot be resolved \(E[A-Z]+\)); images must be regular files under the agent's image roots/);
    nothingRan();
  });

  it('QEMU extra.machine=q35,firmware=/etc/shadow, and an unknown extra key', async () => {
    await refused(qemu.start(qemuSpec({ kernel: bed.img('vmlinuz'), extra: { machine: 'q35,firmware=/etc/shadow' } }), ctx), 'VM a: qemu.extra.machine "q35,firmware=/etc/shadow" is invalid: expected q35, pc, microvm, pc-q35-X.Y or pc-i440fx-X.Y');
    await refused(qemu.start(qemuSpec({ kernel: bed.img('vmlinuz'), extra: { 'global': 'x' } }), ctx), 'VM a: qemu.extra key "global" is not allowed (allowed: accel, machine, cpu, channel, nic, monitor, balloon, memory)');
    nothingRan();
  });

  it('a symlink inside the root that points outside (file and directory)', async () => {
    const secret = path.join(bed.outside, 'secret');
    await refused(qemu.start(qemuSpec({ kernel: bed.img('link-out') }), ctx), `VM a: qemu.kernel ${JSON.stringify(bed.img('link-out'))} resolves to ${JSON.stringify(secret)}, outside the image roots; ${rootsText()}`);
    await refused(qemu.start(qemuSpec({ kernel: bed.img('vmlinuz'), initrd: bed.img('dir-out/secret') }), ctx), `VM a: qemu.initrd ${JSON.stringify(bed.img('dir-out/secret'))} resolves to ${JSON.stringify(secret)}, outside the image roots; ${rootsText()}`);
    await refused(xen.start(xenSpec(`kernel = "${bed.img('link-out')}"\n`), ctx), `VM a: xen.config kernel ${JSON.stringify(bed.img('link-out'))} resolves to ${JSON.stringify(secret)}, outside the image roots; ${rootsText()}`);
    await refused(xen.start(xenSpec(`disk = [ 'format=raw, vdev=xvda, access=rw, target=${bed.img('dir-out/secret')}' ]\n`), ctx), `VM a: xen.config disk[0] target ${JSON.stringify(bed.img('dir-out/secret'))} resolves to ${JSON.stringify(secret)}, outside the image roots; ${rootsText()}`);
    nothingRan();
  });

  it('".." escapes, a directory and a missing file', async () => {
    const dotdot = `${bed.root}/../outside/secret`;
    await refused(qemu.start(qemuSpec({ kernel: dotdot }), ctx), `VM a: qemu.kernel ${JSON.stringify(dotdot)} is not a normalised path (no '.', '..', '//' or trailing '/')`);
    await refused(xen.start(xenSpec(`ramdisk = "${dotdot}"\n`), ctx), `VM a: xen.config ramdisk ${JSON.stringify(dotdot)} is not a normalised path (no '.', '..', '//' or trailing '/')`);
    await refused(qemu.start(qemuSpec({ kernel: bed.img('sub') }), ctx), `VM a: qemu.kernel ${JSON.stringify(bed.img('sub'))} is not a regular file; ${rootsText()}`);
    await refused(qemu.start(qemuSpec({ kernel: bed.img('none') }), ctx), `VM a: qemu.kernel ${JSON.stringify(bed.img('none'))} cannot be resolved (ENOENT); ${rootsText()}`);
    await refused(qemu.start(qemuSpec({ kernel: bed.root }), ctx), `VM a: qemu.kernel ${JSON.stringify(bed.root)} is outside the image roots; ${rootsText()}`);
    nothingRan();
  });

  it('a qcow2 disk inside the root whose backing file is outside', async function () {
    if (!hasQemuImg()) this.skip();
    const evil = bed.img('evil.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', path.join(bed.outside, 'secret'), '-F', 'raw', evil]);
    await refused(qemu.start(qemuSpec({ disk: evil }), ctx), `VM a: qemu.disk: backing file ${JSON.stringify(path.join(bed.outside, 'secret'))} is outside the image roots; ${rootsText()}`);
    await refused(qemu.start(qemuSpec({ disk: bed.img('vm.img') }), ctx), `VM a: qemu.disk ${JSON.stringify(bed.img('vm.img'))} is a raw image; the disk must be a qcow2 image`);
    nothingRan();
    assert.equal(bed.ran()['qemu-img']?.length, 2);
  });

  it('a QEMU restore whose snapshot disk image names a backing file outside the roots', async function () {
    if (!hasQemuImg()) this.skip();
    const storeDir = path.join(bed.dir, 'store');
    fs.mkdirSync(path.join(storeDir, 's'), { recursive: true });
    fs.writeFileSync(path.join(storeDir, 's', 'a.mem'), 'memory');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', bed.img('base.qcow2'), '1M']);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', path.join(bed.outside, 'secret'), '-F', 'raw', path.join(storeDir, 's', 'a.disk')]);
    const diskBytes = fs.readFileSync(path.join(storeDir, 's', 'a.disk'));
    const image = { memory: { path: 's/a.mem', size: 6, sha256: '' }, disks: [{ path: 's/a.disk', size: diskBytes.length, sha256: createHash('sha256').update(diskBytes).digest('hex') }] };
    await refused(qemu.restore(qemuSpec({ disk: bed.img('base.qcow2') }), image, new LocalDirStore(storeDir), ctx), `VM a: the snapshot's disk image: backing file ${JSON.stringify(path.join(bed.outside, 'secret'))} is outside the image roots; ${rootsText()}`);
    const ran = bed.ran();
    assert.equal(ran.qemu, undefined);
    assert.deepEqual(fs.readdirSync(path.join(work, 'qemu')), [], 'the instance directory is removed');
  });

  it('Xen bootloader="/bin/sh" with bootloader_args, disk script=, device_model_override, kernel=/etc/shadow', async () => {
    await refused(xen.start(xenSpec('type = "pv"\nbootloader = "/bin/sh"\nbootloader_args = [ "-c", "touch /tmp/pwned" ]\n'), ctx), 'VM a: xen.config bootloader is not allowed: it names a program dom0 runs as root');
    await refused(xen.start(xenSpec(`disk = [ '${bed.img('vm.img')},raw,xvda,rw,script=/bin/sh' ]\n`), ctx), /^VM a: xen\.config disk\[0\]: "script" is not allowed \(a program dom0 runs as root\)/);
    await refused(xen.start(xenSpec('device_model_override = "/bin/sh"\n'), ctx), 'VM a: xen.config device_model_override is not allowed: it names the device model binary dom0 runs');
    await refused(xen.start(xenSpec('kernel = "/etc/shadow"\n'), ctx), `VM a: xen.config kernel "/etc/shadow" is outside the image roots; ${rootsText()}`);
    nothingRan();
  });

  it('a Xen restore writes its disk back only under the roots', async () => {
    await refused(xen.restore(xenSpec("disk = [ 'format=raw, vdev=xvda, target=/etc/passwd' ]\n"), { memory: { path: 'x.mem', size: 1, sha256: '' }, disks: [] }, undefined as never, ctx), `VM a: xen.config disk[0] target "/etc/passwd" is outside the image roots; ${rootsText()}`);
    nothingRan();
  });

  it('the detector works: a legitimate spec reaches qemu and xl', async () => {
    await qemu.start(qemuSpec({ kernel: bed.img('vmlinuz'), initrd: bed.img('initrd.img'), extra: { machine: 'q35', cpu: 'qemu64' } }), ctx).catch(() => undefined);
    const q = bed.ran().qemu ?? [];
    assert.ok(q.some((l) => l.includes(`-kernel ${bed.img('vmlinuz')} -initrd ${bed.img('initrd.img')}`)), q.join(' | '));
    await xen.start(xenSpec(`type = "pv"\nkernel = "${bed.img('vmlinuz')}"\nmemory = 128\n`), ctx).catch(() => undefined);
    assert.ok((bed.ran().xl ?? []).some((l) => l.startsWith('create ')), JSON.stringify(bed.ran()));
    const cfg = fs.readdirSync(path.join(work, 'xen')).filter((f) => f.endsWith('.cfg'));
    assert.equal(cfg.length, 1);
    assert.equal(fs.readFileSync(path.join(work, 'xen', cfg[0] as string), 'utf8'), `type = "pv"\nkernel = "${bed.img('vmlinuz')}"\nmemory = 128\nname = "vnsnap-v-a"\nvif = [ 'mac=00:16:3e:00:00:01,bridge=${xenBridge()}' ]\n`);
  });

  function xenBridge(): string {
    const line = fs.readFileSync(path.join(work, 'xen', 'vnsnap-v-a.cfg'), 'utf8');
    return /bridge=(\w+)/.exec(line)?.[1] ?? '?';
  }
});

// ---------------------------------------------------------------- through the coordinator

const pkg = loadVnsnap();

function unary<Req, Res>(client: CoordinatorServiceClient, method: string, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    (client as unknown as Record<string, (r: Req, cb: (e: grpc.ServiceError | null, r?: Res) => void) => void>)[method]!.call(client, req, (e, r) => (e ? reject(e) : resolve(r as Res)));
  });
}

async function grpcRefused(p: Promise<unknown>, details: string | RegExp): Promise<void> {
  await assert.rejects(p, (e: grpc.ServiceError) => {
    assert.equal(e.code, grpc.status.INVALID_ARGUMENT, e.details);
    assert.equal(e.metadata.get(ERROR_CODE_METADATA_KEY)[0], 'ERR_INVALID_ARGUMENT');
    if (typeof details === 'string') assert.equal(e.details, details);
    else assert.match(e.details, details);
    return true;
  });
}

describe('driver specs: refused at `vne define` by the coordinator, and at StartVne by the agent', function () {
  this.timeout(60_000);
  let bed: Bed;
  let server: CoordinatorServer;
  let client: CoordinatorServiceClient;
  let agent: Agent;

  before(async () => {
    bed = new Bed();
    server = new CoordinatorServer({ config: { listen: '127.0.0.1:0', insecurePlaintext: true, db: path.join(bed.dir, 'catalog.db'), storeDir: path.join(bed.dir, 'store'), heartbeatIntervalMs: 300, deadAfterMs: 5000 }, log, version: 'test' });
    await server.start();
    client = new pkg.vnsnap.v1.CoordinatorService(server.address, grpc.credentials.createInsecure());
    const qemu = new QemuDriver({ workDir: path.join(bed.dir, 'work', 'qemu'), qemuBinary: path.join(bed.bin, 'qemu'), qemuImg: path.join(bed.bin, 'qemu-img'), accel: 'tcg', imageRoots: [bed.root] });
    agent = new Agent({ id: 'h1', coordinator: server.address, tunnel: { address: '127.0.0.1', port: 0 }, storeConfig: { kind: 'local', dir: path.join(bed.dir, 'store') }, drivers: [qemu], logger: log });
    await agent.start();
    await until('h1 connected', async () => {
      const r = await unary<object, { agents: { id: string; state: string }[] }>(client, 'ListAgents', {});
      return r.agents.some((a) => a.id === 'h1' && a.state === 'AGENT_STATE_CONNECTED');
    });
  });
  after(async () => {
    await agent?.stop();
    client?.close();
    await server?.stop();
    bed?.remove();
  });

  let vni = 100;
  const vne = (name: string, driver: DriverSpec): Vne => ({ name, vni: vni++, vms: [{ name: 'a', host: 'h1', macs: ['52:54:00:00:00:01'], driver }] });
  const define = (name: string, driver: DriverSpec) => unary(client, 'DefineVne', { vne: vne(name, driver) });
  const q = (over: object): DriverSpec => ({ qemu: { memoryMib: 64, cpus: 1, kernel: bed.img('vmlinuz'), ...over } });

  it('every attack the coordinator can judge is INVALID_ARGUMENT at define (and update), and nothing of it is stored', async () => {
    await grpcRefused(define('m', q({ extra: { machine: 'q35,firmware=/etc/shadow' } })), 'VM "a": qemu.extra.machine "q35,firmware=/etc/shadow" is invalid: expected q35, pc, microvm, pc-q35-X.Y or pc-i440fx-X.Y');
    await grpcRefused(define('u', q({ extra: { 'device': 'x' } })), 'VM "a": qemu.extra key "device" is not allowed (allowed: accel, machine, cpu, channel, nic, monitor, balloon, memory)');
    await grpcRefused(define('d', q({ kernel: `${bed.root}/../../etc/shadow` })), `VM "a": qemu.kernel ${JSON.stringify(`${bed.root}/../../etc/shadow`)} is not a normalised path (no '.', '..', '//' or trailing '/')`);
    await grpcRefused(define('r', q({ initrd: 'id_rsa' })), 'VM "a": qemu.initrd "id_rsa" is not an absolute path');
    await grpcRefused(define('b', { xen: { config: 'type = "pv"\nbootloader = "/bin/sh"\nbootloader_args = [ "-c", "id > /tmp/x" ]\n' } }), 'VM "a": xen.config bootloader is not allowed: it names a program dom0 runs as root');
    await grpcRefused(define('s', { xen: { config: "disk = [ '/var/lib/vnsnap/images/a.img,raw,xvda,rw,script=/bin/sh' ]\n" } }), /^VM "a": xen\.config disk\[0\]: "script" is not allowed \(a program dom0 runs as root\)/);
    await grpcRefused(define('o', { xen: { config: 'device_model_override = "/bin/sh"\n' } }), 'VM "a": xen.config device_model_override is not allowed: it names the device model binary dom0 runs');
    await grpcRefused(define('x', { xen: { config: 'memory = 4294967295\n' } }), 'VM "a": xen.config memory 4294967295 is out of range (16..1048576 MiB)');
    await define('legit', q({ extra: { machine: 'q35', cpu: 'qemu64', channel: 'org.vnsnap.status' } }));
    await grpcRefused(unary(client, 'UpdateVne', { vne: vne('legit', q({ extra: { machine: 'pc,accel=kvm' } })) }), 'VM "a": qemu.extra.machine "pc,accel=kvm" is invalid: expected q35, pc, microvm, pc-q35-X.Y or pc-i440fx-X.Y');
    const listed = await unary<object, { vnes: { name: string; vms: { driver: { qemu: { extra: Record<string, string> } } }[] }[] }>(client, 'ListVnes', {});
    assert.deepEqual(listed.vnes.map((v) => v.name), ['legit']);
    assert.deepEqual(listed.vnes[0]?.vms[0]?.driver.qemu.extra, { machine: 'q35', cpu: 'qemu64', channel: 'org.vnsnap.status' });
    assert.equal(bed.ran().qemu, undefined);
  });

  it('paths only the agent can judge (kernel=/etc/shadow, a symlink out of the root) are INVALID_ARGUMENT at StartVne, and nothing ran', async () => {
    for (const [name, kernel, why] of [
      ['shadow', '/etc/shadow', 'is outside the image roots'],
      ['link', bed.img('link-out'), `resolves to ${JSON.stringify(path.join(bed.outside, 'secret'))}, outside the image roots`],
    ] as const) {
      await define(name, q({ kernel }));
      await grpcRefused(unary(client, 'StartVne', { name }), `agent h1: StartVm failed: VM a: qemu.kernel ${JSON.stringify(kernel)} ${why}; images must be regular files under the agent's image roots (${bed.root}) [ERR_INVALID_ARGUMENT]`);
    }
    assert.deepEqual(bed.ran(), {});
    assert.equal(fs.existsSync(path.join(bed.dir, 'work')), false);
  });
});
