/**
 * Kept disks end to end with a real QEMU guest, through the `vnsnap` CLI against the real
 * coordinator and agent (test/support/cluster.ts, one namespaced host, `"drivers": ["qemu"]`):
 * the guest writes numbered records to its disk; `vne stop` keeps the disk in the agent's state
 * directory and says where; `vne show` tells it; `restore` of the VNE is refused (exit 1,
 * FAILED_PRECONDITION) while it has kept disks; `vne start` boots from the kept disk and the
 * guest finds its records; `vne stop --discard-disks` and `vne delete` remove the directory.
 * About a minute; on demand with VNSNAP_E2E_QEMU=1 (`npm run test:e2e-qemu`), as root; the
 * faster driver-level test is test/integration/qemu-keep-disks.test.ts (in npm test).
 * VNSNAP_KEEP_DISKS_PRINT=1 prints the CLI's output (docs/cli.md's kept-disk example).
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildGuest, channelStatus, ensureQemu, guestImageRoots, kernelCmdline, type GuestImage, type GuestStatus } from '../guest/qemu-guest';
import { Cluster, type CliResult } from '../support/cluster';
import { instanceDir as vneInstanceDir } from '../support/qemu-vne';
import { until } from '../support/wait';

const ENABLED = process.env.VNSNAP_E2E_QEMU === '1';
const PRINT = process.env.VNSNAP_KEEP_DISKS_PRINT === '1';
const VNE = 'kdq';

/** The running QEMU's instance directory of VM `vm` of the VNE. */
const instanceDir = (vm: string): string | undefined => vneInstanceDir(vm, VNE);

/** Kill the VNE's QEMUs (best effort: the test failed or the agent went first). */
function killQemus(): void {
  for (;;) {
    const dir = instanceDir('a');
    if (!dir) return;
    try {
      process.kill(Number(fs.readFileSync(path.join(dir, 'qemu.pid'), 'utf8').trim()), 'SIGKILL');
    } catch {
      /* gone */
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

(ENABLED ? describe : describe.skip)('end to end with a QEMU guest: vne stop keeps its disk, vne start boots from it, discard and delete remove it', function () {
  this.timeout(10 * 60_000);
  let c!: Cluster;
  let image: GuestImage;

  before(async function () {
    if (process.getuid?.() !== 0) this.skip();
    ensureQemu();
    image = buildGuest();
    killQemus();
    c = new Cluster({ prefix: 'vnkd', hosts: ['h1'], drivers: ['qemu'], imageRoots: guestImageRoots(image) });
    await c.start();
  });

  after(async function () {
    this.timeout(60_000);
    if (!c) return;
    await c.cli(['vne', 'stop', VNE, '--discard-disks'], 30_000).catch(() => undefined);
    await c.cli(['vne', 'delete', VNE, '--with-snapshots', '--forget-unreachable-disks'], 30_000).catch(() => undefined);
    killQemus();
    await c.destroy();
  });

  const run = async (args: string[], code = 0): Promise<string> => {
    const r: CliResult = await c.cli(args);
    if (PRINT) console.log(`$ vnsnap ${args.join(' ')}\n${r.stdout}${r.stderr}`);
    assert.equal(r.code, code, `vnsnap ${args.join(' ')}: ${r.stdout}${r.stderr}`);
    return r.stdout + r.stderr;
  };
  const status = (): Promise<GuestStatus> => {
    const dir = instanceDir('a');
    if (!dir) throw new Error('no running QEMU for a');
    return channelStatus(path.join(dir, 'channel.sock'), 8000);
  };
  const waitStatus = (what: string, ok: (s: GuestStatus) => boolean): Promise<GuestStatus> =>
    until(what, async () => {
      const s = await status();
      return ok(s) ? s : undefined;
    }, { timeoutMs: 120_000, everyMs: 250 });

  it('stop keeps, show tells, restore is refused, start boots from the kept disk; --discard-disks and delete remove it', async () => {
    const base = path.join(c.dir, 'a-base.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '16M']);
    const file = path.join(c.dir, `${VNE}.json`);
    const append = kernelCmdline({ name: 'a', ip: '192.168.87.1/24', diskRate: 50, reportSecs: 5 });
    fs.writeFileSync(file, JSON.stringify({ name: VNE, vni: 3087, vms: [{ name: 'a', host: 'h1', macs: ['52:54:00:87:00:01'], driver: { qemu: { memoryMib: 96, cpus: 1, kernel: image.kernel, initrd: image.initrd, append, disk: base, extra: { channel: 'org.vnsnap.status' } } } }] }));
    await run(['vne', 'define', file]);
    await run(['vne', 'start', VNE]);
    const disk = path.join(c.dir, 'state', 'h1', 'disks', `${VNE}_a`);
    assert.match(await run(['vne', 'show', VNE]), new RegExp(`disks:\\n  a: on h1: ${disk}\\n`));
    await waitStatus('the guest writing disk records', (s) => s.disk.records >= 10);
    const created = await c.cliStream<{ done?: { id: string; state: string } }>(['snapshot', 'create', VNE, '--mode', 'background']).done;
    const snap = created.events[created.events.length - 1];
    assert.equal(snap?.done?.state, 'SNAPSHOT_STATE_COMPLETE', created.stderr);
    const written = (await waitStatus('more records after the snapshot', (s) => s.disk.records >= 30)).disk.records;

    const stopped = await run(['vne', 'stop', VNE]);
    assert.match(stopped, new RegExp(`^stopped VNE ${VNE}\\nkept a on h1: ${disk} \\(\\d+\\.\\d [KMG]iB\\)\\n$`));
    assert.ok(fs.existsSync(path.join(disk, 'kept.json')));
    assert.match(await run(['vne', 'show', VNE]), new RegExp(`disks:\\n  a: kept on h1: ${disk} \\(\\d+\\.\\d [KMG]iB\\)\\n`));

    const refused = await run(['restore', snap?.done?.id as string], 1);
    assert.equal(refused, `vnsnap: VNE "${VNE}" has kept disks (a on h1): the restore starts from the snapshot's disks and would replace them; pass --discard-disks to restore anyway\n`);

    assert.match(await run(['vne', 'start', VNE]), new RegExp(`^started VNE ${VNE} \\(vni 3087, 1 VM on 1 host, RUNNING\\)\\na booted from its kept disk on h1: ${disk} \\(`));
    const back = await waitStatus('the guest booted from its kept disk', (s) => s.disk.checks > 2);
    assert.ok(back.disk.start_record >= written, `the guest found record ${back.disk.start_record} on its disk; ${written} were written before the stop`);
    assert.equal(back.disk.errors, 0, back.disk.first_error);

    assert.equal(await run(['vne', 'stop', VNE, '--discard-disks']), `stopped VNE ${VNE}\ndiscarded a on h1: ${disk}\n`);
    assert.equal(fs.existsSync(disk), false);
    await run(['vne', 'start', VNE]);
    assert.equal((await waitStatus('the fresh guest', (s) => s.disk.checks > 0)).disk.start_record, 0);
    await run(['vne', 'stop', VNE]);
    assert.ok(fs.existsSync(disk));
    assert.match(await run(['vne', 'delete', VNE, '--with-snapshots']), new RegExp(`^deleted VNE ${VNE} and its snapshots\\ndiscarded a on h1: ${disk} \\(`));
    assert.equal(fs.existsSync(disk), false);
  });
});
