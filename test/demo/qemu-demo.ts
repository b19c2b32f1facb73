/**
 * The demo a new user watches (the README's main command, `sudo ./setup.sh`): a whole virtual
 * networked environment of real VMs snapshotted live and restored as a whole, TCP connections
 * intact.
 *
 *   1. the test guest (docs/guest.md), built once and cached;
 *   2. two hosts (network namespaces), a vnsnap agent on each (QEMU driver) and the coordinator,
 *      every gRPC link mutual TLS with a throwaway cluster CA the demo makes with
 *      coordinator/pki/vnsnap-pki.sh (removed at the end);
 *   3. a VNE of four TCG guests, two per host, with checked TCP streams across and within the
 *      hosts, memory and disk load;
 *   4. a live snapshot (the CLI's progress), the VNE running on; the streams checked;
 *   5. the VMs killed and the VNE restored from the snapshot onto swapped hosts (progress);
 *   6. the verification: every stream continues with no lost, duplicated or corrupt byte and no
 *      reconnect, every disk agrees with its memory;
 *   7. the snapshot's timeline picture (`vnsnap snapshot show ID --timeline FILE.svg`).
 *
 * Everything it creates is removed at the end except the timeline picture. About 2 minutes.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildGuest, ensureQemu, guestImageRoots, type GuestStatus } from '../guest/qemu-guest';
import { Cluster, type CatalogSnapshot } from '../support/cluster';
import { sleep, until } from '../support/wait';
import { allStatuses, checkAfterRestore, E2E_SWAPPED, E2E_VMS, E2E_VNE, intactProblems, destroyE2eCluster, killE2eQemus, streamsUp, writeVneFile } from '../support/qemu-vne';

const CLI = path.resolve(__dirname, '../../coordinator/cli/main.js');
const OUT_DIR = '/var/tmp/vnsnap-demo';

function step(msg: string): void {
  process.stdout.write(`\n== ${msg}\n`);
}

/** Run the vnsnap CLI in the underlay namespace with its output shown as it comes. */
function cliShow(c: Cluster, args: string[]): Promise<number | null> {
  process.stdout.write(`$ vnsnap ${args.join(' ')}\n`);
  return new Promise((resolve, reject) => {
    const p = spawn('ip', ['netns', 'exec', c.topo.ns('ul'), process.execPath, CLI, ...args, '--coordinator', c.coordinatorAddress, ...c.tlsArgs()], { stdio: ['ignore', 'inherit', 'inherit'] });
    p.on('error', reject);
    p.on('close', (code) => resolve(code));
  });
}

function streamTable(st: Record<string, GuestStatus>): void {
  for (const vm of E2E_VMS) {
    const s = st[vm] as GuestStatus;
    const outs = s.out.map((o) => `→${o.peer.split(':')[0]} ${(o.bytes / 1048576).toFixed(1)} MiB${o.connected ? '' : ' (down)'}`).join(', ');
    console.log(`  ${vm}  errors ${s.totals.errors}  reconnects ${s.totals.reconnects}  disk records ${s.disk.records} (checks ok ${s.disk.check_ok})  sent ${outs}`);
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.error('qemu-demo: run as root (network namespaces, QEMU)');
    process.exit(2);
  }
  const t0 = Date.now();
  step('1. the test guest: Debian cloud kernel + busybox initramfs + vnguest (built once, then cached)');
  ensureQemu();
  const image = buildGuest();
  console.log(`  kernel ${image.kernel}\n  initrd ${image.initrd}`);
  killE2eQemus();

  step('2. two hosts (network namespaces h1, h2) with a vnsnap agent each (QEMU driver), and the coordinator, over mutual TLS');
  const c = new Cluster({ prefix: 'vndemo', hosts: ['h1', 'h2'], drivers: ['qemu'], imageRoots: guestImageRoots(image), heartbeatIntervalMs: 1000, deadAfterMs: 10_000 });
  console.log(`  certificates (cluster CA, coordinator, agents h1 and h2, an operator for the CLI) made with coordinator/pki/vnsnap-pki.sh in ${c.pki.dir}`);
  let ok = false;
  try {
    await c.start();
    console.log(`  the snapshot store, the same for the coordinator and both agents: "store": ${JSON.stringify(c.storage.config)} (content-addressed; docs/storage.md)`);
    await cliShow(c, ['agents']);

    step('3. the VNE: 4 guests (128 MiB, TCG), a,b on h1 and c,d on h2; TCP streams a→c, b→d, d→a across hosts, a→b, c→d within');
    const file = writeVneFile(c.dir, image);
    await c.cliJson(['vne', 'define', file]);
    await cliShow(c, ['vne', 'start', E2E_VNE]);
    process.stdout.write('  waiting for the guests to boot and every stream to run ...\n');
    const first = (await until('every stream up', async () => {
      const st = await allStatuses();
      return streamsUp(st) ? st : undefined;
    }, { timeoutMs: 240_000, everyMs: 2000 })) as Record<string, GuestStatus>;
    await sleep(3000); // the demo's pacing: the streams run a while before the table is shown
    const running = await allStatuses();
    streamTable(running);

    // Background mode: under TCG on QEMU 7.2 a precopy image occasionally lacks pages the devices
    // wrote (1 restore in 5 in one count here; docs/qemu.md), so the demo uses the mode that has never
    // failed a restore. With KVM, `--mode precopy` is VNsnap's own.
    step('4. a live snapshot of the whole VNE (background: each VM is paused for the cut only, its memory copied on write while it runs)');
    if ((await cliShow(c, ['snapshot', 'create', E2E_VNE, '--mode', 'background', '--description', 'demo'])) !== 0) throw new Error('snapshot failed');
    const { snapshots } = await c.cliJson<{ snapshots: CatalogSnapshot[] }>(['snapshot', 'list', '--vne', E2E_VNE]);
    const snap = snapshots[snapshots.length - 1] as CatalogSnapshot;
    await sleep(3000); // the window over which the streams must run on intact
    const after = await allStatuses();
    const live = intactProblems('while running on', running, after);
    console.log(`  the VNE ran on; streams intact: ${live.length === 0 ? 'yes' : `NO\n  ${live.join('\n  ')}`}`);
    console.log(`  per-VM pause: ${snap.vms.map((v) => `${v.name} ${v.pauseMs.toFixed(0)} ms`).join(', ')}`);

    step(`5. kill the VMs and restore ${snap.id} onto swapped hosts (a,b → h2; c,d → h1)`);
    await sleep(2000); // the demo's pacing: the VMs run past the snapshot before it is restored
    const rc = await cliShow(c, ['restore', snap.id, '--stop-running', ...Object.entries(E2E_SWAPPED).flatMap(([vm, h]) => ['--place', `${vm}=${h}`])]);
    if (rc !== 0) throw new Error('restore failed');
    await cliShow(c, ['vne', 'show', E2E_VNE]);

    step('6. verification (vnguest in every guest: each TCP stream byte-checked, disk records against memory)');
    const problems = [...live, ...(await checkAfterRestore('after the restore', first))];
    streamTable(await allStatuses());
    if (problems.length === 0) console.log('  RESULT: every stream continued after the restore with no lost, duplicated or corrupt byte and no reconnect;\n          same guest runs (no reboot); every disk matches its memory. PASS');
    else console.log(`  RESULT: FAIL\n  ${problems.join('\n  ')}`);

    step('7. the snapshot timeline');
    fs.mkdirSync(OUT_DIR, { recursive: true });
    const svg = path.join(OUT_DIR, `${snap.id}.svg`);
    await cliShow(c, ['snapshot', 'show', snap.id, '--timeline', svg]);
    console.log(`\n  open ${svg} in a browser: one row per VM, each phase a bar, the cut instants in black.`);
    ok = problems.length === 0;
  } finally {
    step('cleaning up');
    await destroyE2eCluster(c);
    console.log(`  done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  }
  process.exit(ok ? 0 : 1);
}

main().catch((e: unknown) => {
  console.error(`qemu-demo: ${(e as Error).stack ?? String(e)}`);
  process.exit(1);
});
