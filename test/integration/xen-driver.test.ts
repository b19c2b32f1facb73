/**
 * The Xen driver without Xen: the stream reader on synthetic xl streams, the config rewriting,
 * and the HypervisorDriver compliance suite against a fake toolstack (test/xen/fake-xen-host.ts)
 * that speaks the real stream format and the xl migrate handshake over the driver's receiver
 * socket. The real thing runs in test/integration/xen-e2e.test.ts (nested Xen, on demand).
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { CutReport, VmStartSpec } from '../../agent/drivers/driver';
import { isVnsnapError } from '../../proto/core/errors';
import { chunkKey } from '../../proto/store/cas-index';
import { CasStore } from '../../proto/store/cas-store';
import { LocalDirStore, type ArtefactWriter, type SnapshotStore } from '../../proto/store/local-dir';
import { LocalObjects } from '../../proto/store/local-objects';
import { nativeRelayPath, xenConfig, XenDriver, xenNames } from '../../agent/drivers/xen/driver';
import { XlHost } from '../../agent/drivers/xen/xl';
import { checkXenConfig } from '../../proto/specs/xen-config';
import { LIBXC_REC, LIBXL_REC, scanXenImage, XenStreamParser, XenStreamWriter as W } from '../../agent/drivers/xen/stream';
import { fakePortPair } from '../../switch/port/porttest/fake-port';
import { driverCompliance } from '../support/compliance/driver';
import { sleep, until } from '../support/wait';
import { MemoryObjects } from '../support/memory-objects';
import { FakeXenHost } from '../xen/fake-xen-host';

function stream(passes: number[][]): Buffer {
  const w = new W().add(W.xlHeader('name = "x"\n')).add(W.libxlHeader()).add(W.record(LIBXL_REC.LIBXC_CONTEXT, Buffer.alloc(0))).add(W.libxcHeaders()).add(W.p2mFrames(8));
  for (const p of passes) w.add(W.pageData(p, p.map(() => Buffer.alloc(4096, 7))));
  w.add(W.record(LIBXC_REC.X86_PV_VCPU_BASIC, Buffer.alloc(12))).add(W.record(LIBXC_REC.END, Buffer.alloc(0))).add(W.record(LIBXL_REC.END, Buffer.alloc(0)));
  return w.toBuffer();
}

describe('xen stream reader', () => {
  it('finds the END record, counts pages and passes, byte by byte or whole', () => {
    const s = stream([[0, 1, 2, 3, 4, 5, 6, 7], [2, 5], [5]]);
    const whole = scanXenImage(s);
    assert.equal(whole.pages, 11);
    assert.equal(whole.iteration, 3);
    assert.equal(whole.guestPages, 8);
    assert.equal(whole.config, 'name = "x"\n');
    assert.ok(whole.memoryDone);
    const p = new XenStreamParser();
    const passes: number[] = [];
    p.onPass = (i) => passes.push(i);
    let used = 0;
    for (let i = 0; i < s.length; i += 13) used += p.push(s.subarray(i, i + 13));
    assert.ok(p.done);
    assert.equal(used, s.length);
    assert.deepEqual(passes, [2, 3]);
  });

  it('stops at END: trailing bytes are not part of the stream', () => {
    const s = Buffer.concat([stream([[0, 1]]), Buffer.from('garbage')]);
    const p = new XenStreamParser();
    assert.equal(p.push(s), s.length - 7);
    assert.throws(() => scanXenImage(s), /after the END record/);
  });

  it('refuses what is not an xl stream, and a truncated one', () => {
    assert.throws(() => new XenStreamParser().push(Buffer.alloc(64, 1)), /bad magic/);
    const s = stream([[0, 1]]);
    assert.throws(() => scanXenImage(s.subarray(0, s.length - 8)), /truncated/);
  });
});

describe('xen config', () => {
  it('sets the name and one bridged vif per MAC, keeps the rest, writes the resolved images, finds a file-backed disk', () => {
    const n = xenNames('blue/vm1', 2);
    assert.ok(n.bridges.every((b) => b.length <= 15) && n.veths.every((v) => v.sw.length <= 15 && v.br.length <= 15));
    const checked = checkXenConfig('', 'type = "pv"\nname = "old"\nvif = [\n  "mac=1"\n]\nmemory = 128\nkernel = "/img/k"\ndisk = [ "format=raw, vdev=xvda, access=rw, target=/img/vm1.img" ]\n');
    const { config, disk } = xenConfig(checked, { kernel: '/real/k', disks: ['/real/vm1.img'] }, n.domName, ['00:16:3e:00:00:01', '00:16:3e:00:00:02'], n.bridges);
    assert.match(config, /^type = "pv"$/m);
    assert.match(config, /^memory = 128$/m);
    assert.match(config, /^kernel = "\/real\/k"$/m);
    assert.match(config, /^disk = \[ "format=raw, vdev=xvda, access=rw, target=\/real\/vm1.img" \]$/m);
    assert.doesNotMatch(config, /old|mac=1'/);
    assert.match(config, new RegExp(`name = "${n.domName}"`));
    assert.match(config, new RegExp(`'mac=00:16:3e:00:00:01,bridge=${n.bridges[0]}', 'mac=00:16:3e:00:00:02,bridge=${n.bridges[1]}'`));
    assert.deepEqual(disk, { kind: 'file', path: '/real/vm1.img' });
    assert.equal(xenConfig(checkXenConfig('', "disk = [ '/img/a.iso,,hdc,cdrom' ]"), { disks: ['/real/a.iso'] }, 'x', [], []).disk, undefined);
    assert.deepEqual(xenConfig(checkXenConfig('', "disk = [ 'file:/img/a.img,xvda,w' ]"), { disks: ['/real/a.img'] }, 'x', [], []).disk, { kind: 'file', path: '/real/a.img' });
  });
});

let host: FakeXenHost;
for (const kind of ['cas', 'files'] as const)
driverCompliance(`xen (fake toolstack, ${kind} store)`, async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vnxen-unit-'));
  let store: SnapshotStore;
  if (kind === 'cas') {
    const objects = new LocalObjects(path.join(dir, 'store'));
    await objects.init();
    store = new CasStore(objects);
  } else {
    const files = new LocalDirStore(path.join(dir, 'store'));
    await files.init();
    store = files;
  }
  host = new FakeXenHost({ pages: 96, dirtyPerTick: 2 });
  const driver = new XenDriver({
    host,
    workDir: path.join(dir, 'work'),
    receiverCommand: (sock) => sock,
    openPort: (name) => fakePortPair(name).port,
  });
  return {
    driver,
    store,
    spec: (name: string): VmStartSpec => ({ id: `t/${name}`, vne: 't', name, macs: ['00:16:3e:00:00:01'], driver: { kind: 'xen', xen: { config: 'type = "pv"\nmemory = 128\n' } } }),
    fingerprint: (id: string) => Promise.resolve(host.fingerprint(xenNames(id, 1).domName)),
    cleanup: async () => {
      host.close();
      await fsp.rm(dir, { recursive: true, force: true });
    },
    warmupMs: 30,
  };
});

describe('xen driver (fake toolstack): specifics', () => {
  let dir: string;
  let store: LocalDirStore;
  let fake: FakeXenHost;
  let driver: XenDriver;
  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vnxen-unit-'));
    store = new LocalDirStore(path.join(dir, 'store'));
    await store.init();
    fake = new FakeXenHost({ pages: 2048, dirtyPerTick: 1, batch: 64 });
    driver = new XenDriver({ host: fake, workDir: path.join(dir, 'work'), imageRoots: [dir], receiverCommand: (s) => s, openPort: (n) => fakePortPair(n).port });
  });
  afterEach(async () => {
    await driver.close();
    fake.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });
  const spec = (config: string): VmStartSpec => ({ id: 'v/a', vne: 'v', name: 'a', macs: ['00:16:3e:00:00:0a'], driver: { kind: 'xen', xen: { config } } });
  const ctx = { portNames: ['v/a/0'], log: { info: () => undefined } as never };

  it('holds the capture at ready (the domain runs, the stream waits) until cut()', async () => {
    await driver.start(spec('type="pv"\n'), ctx);
    const job = await driver.snapshot('v/a', { snapshotId: 's', epoch: 1, mode: 'precopy', store, prefix: 'snapshots/s/' });
    await job.ready;
    await sleep(50); // held: the domain keeps running while the stream waits
    const dom = fake.doms.get(xenNames('v/a', 1).domName);
    assert.equal(dom?.state, 'running', 'not suspended while held');
    const report = await job.cut(() => Promise.resolve());
    assert.ok(report.pauseMs >= 0);
    const img = await job.durable();
    assert.equal(scanXenImage(await store.get(img.memory.path)).guestPages, 2048);
  });

  it('caps the domain\'s CPU from the commit, tighter at each pass, and lifts the cap at the suspend request', async () => {
    fake.setDirtyPerTick(100); // passes larger than the socket's buffers: each is parsed before the fake suspends
    await driver.start(spec('type="pv"\n'), ctx);
    const name = xenNames('v/a', 1).domName;
    const job = await driver.snapshot('v/a', { snapshotId: 's', epoch: 1, mode: 'precopy', store, prefix: 'snapshots/s/' });
    await job.ready;
    assert.deepEqual(fake.calls.filter((c) => c.startsWith('cap ')), [], 'no cap before the commit');
    let atPause: string[] = [];
    await job.cut(() => {
      atPause = fake.calls.filter((c) => c.startsWith('cap '));
      return Promise.resolve();
    });
    // The fake sends its passes after the commit: 10 at the commit, halved at each pass, lifted at the resume.
    const caps = fake.calls.filter((c) => c.startsWith('cap ') || c.startsWith('migrate'));
    assert.equal(caps[0], `migrate ${name}`);
    assert.equal(caps[1], `cap ${name} 10`);
    assert.equal(caps[caps.length - 1], `cap ${name} 0`);
    const mid = caps.slice(2, -1).map((c) => Number(c.split(' ')[2]));
    assert.deepEqual(mid.slice(0, 2), [5, 2], `halved per pass, not below 2: ${caps.join(', ')}`);
    assert.ok(mid.slice(2).every((c) => c === 0 || c === 2), caps.join(', '));
    assert.deepEqual(atPause.slice(0, 1), [`cap ${name} 10`]);
    assert.equal(atPause[atPause.length - 1], `cap ${name} 0`, 'lifted at the suspend request, before the suspend');
    assert.equal(caps.filter((c) => c === `cap ${name} 0`).length, 1, 'lifted once');
    await job.durable();
  });

  it('a capture whose xl migrate gives up after the commit: cut() rejects, the cap is lifted, nothing is left unhandled', async () => {
    const failing = new FakeXenHost({ pages: 2048, dirtyPerTick: 100, batch: 64, failSuspendAfterPasses: 2 });
    const d = new XenDriver({ host: failing, workDir: path.join(dir, 'work2'), receiverCommand: (s) => s, openPort: (n) => fakePortPair(n).port, log: () => undefined });
    const unhandled: unknown[] = [];
    const onUnhandled = (r: unknown): void => void unhandled.push(r);
    process.on('unhandledRejection', onUnhandled);
    try {
      await d.start(spec('type="pv"\n'), ctx);
      const job = await d.snapshot('v/a', { snapshotId: 's', epoch: 1, mode: 'precopy', store, prefix: 'snapshots/s/' });
      await job.ready;
      await assert.rejects(job.cut(() => Promise.resolve()), /failed to suspend at sender/);
      await job.abort();
      const name = xenNames('v/a', 1).domName;
      await until('the cap lifted', () => failing.calls.filter((c) => c.startsWith('cap ')).pop() === `cap ${name} 0`, 1000);
      assert.equal(failing.calls.filter((c) => c.startsWith('cap ')).pop(), `cap ${name} 0`, 'the cap is lifted');
      assert.deepEqual(unhandled, []);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await d.close();
      failing.close();
    }
  });

  it('writes nothing to the store from the suspend until xl exits, then the whole stream', async () => {
    const slow = new FakeXenHost({ pages: 2048, dirtyPerTick: 50, batch: 64, resumeMs: 150 });
    const d = new XenDriver({ host: slow, workDir: path.join(dir, 'work3'), receiverCommand: (s) => s, openPort: (n) => fakePortPair(n).port, log: () => undefined });
    const writes: number[] = [];
    const spy: SnapshotStore = Object.create(store) as SnapshotStore;
    spy.create = async (rel: string): Promise<ArtefactWriter> => {
      const w = await store.create(rel);
      return Object.assign(Object.create(w) as ArtefactWriter, {
        write: (c: Uint8Array): Promise<void> => {
          writes.push(performance.timeOrigin * 1000 + performance.now() * 1000);
          return w.write(c);
        },
      });
    };
    try {
      await d.start(spec('type="pv"\n'), ctx);
      const job = await d.snapshot('v/a', { snapshotId: 's', epoch: 1, mode: 'precopy', store: spy, prefix: 'snapshots/s/' });
      await job.ready;
      const report = await job.cut(() => Promise.resolve());
      const img = await job.durable();
      assert.ok(report.pauseMs >= 150, `the pause ends at xl's exit: ${report.pauseMs}`);
      const inPause = writes.filter((t) => t > report.cutUnixUs + 5000 && t < report.resumeUnixUs);
      assert.deepEqual(inPause, [], 'no store write inside the pause');
      assert.ok(writes.some((t) => t >= report.resumeUnixUs), 'the tail is written after the resume');
      const st = scanXenImage(await store.get(img.memory.path));
      assert.equal(st.guestPages, 2048);
      assert.equal(st.phase, 'done', 'the image is complete');
    } finally {
      await d.close();
      slow.close();
    }
  });

  it('two VMs cut together: neither writes to the store while the other is in its pause', async () => {
    const slow = new FakeXenHost({ pages: 2048, dirtyPerTick: 50, batch: 64, resumeMs: 150 });
    const d = new XenDriver({ host: slow, workDir: path.join(dir, 'work4'), receiverCommand: (s) => s, openPort: (n) => fakePortPair(n).port, log: () => undefined });
    const writes: { vm: string; at: number }[] = [];
    const spyStore = (vm: string): SnapshotStore => {
      const spy = Object.create(store) as SnapshotStore;
      spy.create = async (rel: string): Promise<ArtefactWriter> => {
        const w = await store.create(rel);
        return Object.assign(Object.create(w) as ArtefactWriter, {
          write: (c: Uint8Array): Promise<void> => {
            writes.push({ vm, at: performance.timeOrigin * 1000 + performance.now() * 1000 });
            return w.write(c);
          },
        });
      };
      return spy;
    };
    const specOf = (n: string): VmStartSpec => ({ id: `v/${n}`, vne: 'v', name: n, macs: [n === 'a' ? '00:16:3e:00:00:0a' : '00:16:3e:00:00:0b'], driver: { kind: 'xen', xen: { config: 'type="pv"\n' } } });
    try {
      await d.start(specOf('a'), { portNames: ['v/a/0'], log: ctx.log });
      await d.start(specOf('b'), { portNames: ['v/b/0'], log: ctx.log });
      const ja = await d.snapshot('v/a', { snapshotId: 's', epoch: 1, mode: 'precopy', store: spyStore('a'), prefix: 'snapshots/s/' });
      const jb = await d.snapshot('v/b', { snapshotId: 's', epoch: 1, mode: 'precopy', store: spyStore('b'), prefix: 'snapshots/s/' });
      await Promise.all([ja.ready, jb.ready]);
      // The pauses overlap, and b's outlasts a's: a's hook waits until b is suspended, b's hook
      // until a has resumed.
      let aResumed!: () => void;
      const aCutDone = new Promise<void>((res) => (aResumed = res));
      let bCut!: Promise<CutReport>;
      const bSuspended = new Promise<void>((res) => {
        bCut = jb.cut(() => (res(), aCutDone));
      });
      const ra = await ja.cut(() => bSuspended);
      aResumed();
      const rb = await bCut;
      await Promise.all([ja.durable(), jb.durable()]);
      assert.ok(rb.resumeUnixUs > ra.resumeUnixUs, 'b resumed after a');
      const inside = (r: CutReport) => writes.filter((w) => w.at > r.cutUnixUs + 5000 && w.at < r.resumeUnixUs);
      assert.deepEqual(inside(rb), [], "no write (of a or b) inside b's pause");
      assert.deepEqual(inside(ra), [], "no write (of a or b) inside a's pause");
      assert.ok(writes.some((w) => w.vm === 'a' && w.at >= rb.resumeUnixUs), "a's tail waited for b's resume");
    } finally {
      await d.close();
      slow.close();
    }
  });

  it('copies a file-backed disk at the cut and puts it back on restore', async () => {
    const disk = path.join(dir, 'a.img');
    await fsp.writeFile(disk, 'before');
    await driver.start(spec(`type="pv"\ndisk = [ 'format=raw, vdev=xvda, target=${disk}' ]\n`), ctx);
    const job = await driver.snapshot('v/a', { snapshotId: 's', epoch: 1, mode: 'precopy', store, prefix: 'snapshots/s/' });
    await job.ready;
    await job.cut(() => Promise.resolve());
    await fsp.writeFile(disk, 'after the cut');
    const img = await job.durable();
    assert.equal(img.disks.length, 1, 'one whole-disk artefact');
    assert.equal((await store.get((img.disks[0] as { path: string }).path)).toString(), 'before');
    await driver.stop('v/a');
    await driver.restore(spec(`type="pv"\ndisk = [ 'format=raw, vdev=xvda, target=${disk}' ]\n`), img, store, ctx);
    assert.equal(await fsp.readFile(disk, 'utf8'), 'before');
    assert.equal(driver.status('v/a'), 'paused');
  });

  it("restores from a content-addressed store through a temporary file; a corrupt chunk fails with the store's ERR_CHECKSUM before xl restore, no file left", async () => {
    const objects = new MemoryObjects();
    const cas = new CasStore(objects, { chunker: { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 } });
    await driver.start(spec('type="pv"\n'), ctx);
    const job = await driver.snapshot('v/a', { snapshotId: 's', epoch: 1, mode: 'precopy', store: cas, prefix: 'snapshots/s/' });
    await job.ready;
    await job.cut(() => Promise.resolve());
    const img = await job.durable();
    await driver.stop('v/a');
    const idx = await cas.index(img.memory.path);
    const bad = idx?.chunks[Math.floor((idx?.chunks.length ?? 0) / 2)];
    assert.ok(bad && (idx?.chunks.length ?? 0) > 3, 'an image of several chunks');
    const good = await objects.get(chunkKey(bad.sha256));
    objects.corrupt(chunkKey(bad.sha256));
    const restores = (): number => fake.calls.filter((c) => c.startsWith('restore -p')).length;
    let err: unknown;
    await driver.restore(spec('type="pv"\n'), img, cas, ctx).catch((e: unknown) => (err = e));
    assert.ok(isVnsnapError(err, 'ERR_CHECKSUM'), `ERR_CHECKSUM, got ${String(err)}`);
    assert.match(err.message, /^artefact snapshots\/s\/a\.xen: chunk \d+ of \d+ \([0-9a-f]{64}\) is corrupt/);
    assert.equal(restores(), 0, 'xl restore never ran');
    assert.deepEqual((await fsp.readdir(path.join(dir, 'work'))).filter((f) => f.startsWith('.restore-')), [], 'no temporary image left');
    await objects.put(chunkKey(bad.sha256), good);
    await driver.restore(spec('type="pv"\n'), img, cas, ctx);
    assert.equal(restores(), 1);
    assert.equal(driver.status('v/a'), 'paused');
    assert.deepEqual((await fsp.readdir(path.join(dir, 'work'))).filter((f) => f.startsWith('.restore-')), [], 'the temporary image is removed once the domain is up');
  });

  it('refuses a VM without an xl config', async () => {
    await assert.rejects(driver.start(spec(''), ctx), /needs an xl config/);
  });
});

describe('xen-relay (the receiver xl migrate runs)', () => {
  // Both relays, as xl starts them: sh -c RECEIVER, talking over the receiver's stdin and stdout.
  const relays = [
    { name: 'C (vnsnap-xen-relay, the default)', cmd: (sock: string) => `exec '${nativeRelayPath() ?? 'vnsnap-xen-relay not built'}' '${sock}'`, exit: { code: 0, signal: null } },
    { name: 'Node (xen-relay.js, the fallback)', cmd: (sock: string) => `exec '${process.execPath}' '${path.join(__dirname, '..', '..', 'agent', 'drivers', 'xen', 'relay.js')}' '${sock}'`, exit: { code: null, signal: 'SIGKILL' } },
  ];
  let dir: string;
  let sock: string;
  let server: net.Server;
  let conn: Promise<net.Socket>;
  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vnxr-'));
    sock = path.join(dir, 'r.sock');
    server = net.createServer({ allowHalfOpen: true }); // to answer after the relay's half-close
    conn = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    await new Promise<void>((r) => server.listen(sock, r));
  });
  afterEach(async () => {
    server.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });
  const start = (cmd: string): { relay: ReturnType<typeof spawn>; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } => {
    const relay = spawn('sh', ['-c', cmd], { stdio: ['pipe', 'pipe', 'inherit'] });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => relay.on('exit', (code, signal) => r({ code, signal })));
    return { relay, exited };
  };

  it('the C relay is built (npm install builds it with the addon)', () => {
    assert.ok(nativeRelayPath(), 'build/Release/vnsnap-xen-relay missing: run npm install');
  });

  for (const r of relays) {
    it(`${r.name}: relays both ways and exits at once when the driver closes`, async function () {
      this.timeout(20_000);
      const { relay, exited } = start(r.cmd(sock));
      const got: Buffer[] = [];
      const c = await conn;
      c.on('data', (b: Buffer) => got.push(b));
      c.write('banner\n');
      const fromRelay = await new Promise<string>((res) => relay.stdout?.once('data', (b: Buffer) => res(b.toString())));
      assert.equal(fromRelay, 'banner\n');
      relay.stdin?.write('stream bytes');
      await until('the stream bytes relayed', () => Buffer.concat(got).toString() === 'stream bytes', { everyMs: 5 });
      const closedAt = performance.now();
      c.destroy();
      assert.deepEqual(await exited, r.exit);
      assert.ok(performance.now() - closedAt < 5000);
    });
  }

  it('C relay: 32 MiB arrive exactly; a driver that stops reading holds the sender', async function () {
    this.timeout(60_000);
    const { relay, exited } = start(relays[0]!.cmd(sock));
    const c = await conn;
    c.pause();
    const data = randomBytes(32 << 20);
    let written = 0;
    const pump = async (): Promise<void> => {
      for (let off = 0; off < data.length; off += 1 << 20) {
        written = off;
        if (!relay.stdin?.write(data.subarray(off, off + (1 << 20)))) await new Promise((res) => relay.stdin?.once('drain', res));
      }
      written = data.length;
    };
    const done = pump();
    await sleep(500); // time for a sender that is not held to get far
    assert.ok(written < 8 << 20, `held: ${written} bytes taken while the driver did not read`);
    const got: Buffer[] = [];
    let n = 0;
    c.on('data', (b: Buffer) => {
      got.push(b);
      n += b.length;
    });
    c.resume();
    await done;
    await until('all 32 MiB relayed', () => n >= data.length, { timeoutMs: 50_000, everyMs: 10 });
    assert.ok(Buffer.concat(got).equals(data), 'the bytes arrive unchanged and in order');
    // stdin EOF (xl closed its side): the socket is half-closed, the driver can still answer.
    const ended = new Promise<void>((res) => c.once('end', res));
    relay.stdin?.end();
    await ended;
    c.end('bye');
    const bye = await new Promise<string>((res) => relay.stdout?.once('data', (b: Buffer) => res(b.toString())));
    assert.equal(bye, 'bye');
    assert.deepEqual(await exited, { code: 0, signal: null });
  });
});

describe('XlHost.watchSuspend (fake xenstore-watch and xl)', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vnxw-'));
    // `xl list` says the domain runs again: a check that comes too late cannot confirm anything.
    await fsp.writeFile(path.join(dir, 'xl'), '#!/bin/sh\necho "Name ID Mem VCPUs State Time(s)"\necho "d 7 128 1 r----- 1.0"\n', { mode: 0o755 });
  });
  afterEach(() => fsp.rm(dir, { recursive: true, force: true }));

  /** A xenstore-watch that prints the registration line, then one line per delay (seconds). */
  async function watcher(ctlDelays: number[], releaseDelays: number[]): Promise<string> {
    const f = path.join(dir, 'xenstore-watch');
    const lines = (ds: number[]): string => ds.map((d) => `sleep ${d}; echo "$1"`).join('; ');
    await fsp.writeFile(f, `#!/bin/sh\necho "$1"\nif [ "$1" = "@releaseDomain" ]; then ${lines(releaseDelays)}; else ${lines(ctlDelays)}; fi\nexec sleep 30\n`, { mode: 0o755 });
    return f;
  }

  async function suspendedWithin(w: ReturnType<XlHost['watchSuspend']>, ms: number): Promise<number | 'timeout'> {
    await w.established;
    return Promise.race([w.suspended, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), ms))]);
  }

  it('takes the release after the acknowledgement as the suspend', async () => {
    const host = new XlHost(path.join(dir, 'xl'), await watcher([0.1, 0.1], [0.5]));
    const w = host.watchSuspend(7);
    try {
      assert.equal(typeof (await suspendedWithin(w, 10_000)), 'number');
    } finally {
      w.close();
    }
  });

  it('takes a release that reaches us before the acknowledgement (two watch processes, lines out of order)', async () => {
    // request at 0.1 s, release at 0.3 s, acknowledgement line only at 0.9 s; xl list says running.
    const host = new XlHost(path.join(dir, 'xl'), await watcher([0.1, 0.8], [0.3]));
    const w = host.watchSuspend(7);
    const t0 = Date.now() * 1000;
    try {
      const t = await suspendedWithin(w, 10_000);
      assert.notEqual(t, 'timeout', 'the suspend was not lost');
      assert.ok((t as number) - t0 < 850_000, 'dated at the release, not at the late acknowledgement');
    } finally {
      w.close();
    }
  });

  it('ignores a release before the suspend request (another domain)', async () => {
    const host = new XlHost(path.join(dir, 'xl'), await watcher([0.6], [0.1]));
    const w = host.watchSuspend(7);
    try {
      assert.equal(await suspendedWithin(w, 2000), 'timeout');
    } finally {
      w.close();
    }
  });
});
