/**
 * npm run bench:xen [-- --json]
 *
 * On the nested-Xen test bed (docs/xen.md): two 128 MiB PV guests under load (16 MiB of memory
 * rewritten at 8 MiB/s, as in the driver smoke run, and checked TCP streams both ways at
 * 256 KiB/s; a guest dirtying faster than the nested dom0 can copy never converges, and then
 * libxc's last pass is as large as a stop-and-copy) behind the vnsnap agent in
 * dom0; a live snapshot (xl migrate capture) then a stop-and-copy one (`xl save -c`), each
 * through the coordinator. Prints the largest per-VM pause and the total time of each, their
 * ratio, and whether every stream stayed intact. With --json: one object
 *   {"pause_ms":{"live":N,"save":N},"total_s":{"live":N,"save":N},"streams_intact":true|false}
 * Needs root; builds the cached test bed if needed. Takes 10+ minutes under TCG.
 */
import { buildTestbed, runDom0Program } from '../xen/testbed';

interface Bench {
  pause_ms: { live: number; save: number };
  total_s: { live: number; save: number };
  streams_intact: boolean;
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const log = (s: string): void => {
    if (!json) console.log(s);
    else process.stderr.write(s + '\n');
  };
  log('xen-bench: building / finding the test bed');
  const dir = await buildTestbed();
  log(`xen-bench: booting Xen under QEMU TCG (${dir})`);
  const { run: r, result: res } = await runDom0Program<{ bench?: Bench; error?: string; steps?: string[]; problems?: string[] }>({ dir, program: 'dom0-e2e', args: ['--bench'], result: 'bench.json', timeoutMs: 45 * 60_000 });
  for (const s of res?.steps ?? []) log(`  ${s}`);
  if (!res?.bench) {
    process.stderr.write(`xen-bench: no result (${res?.error ?? `dom0 script exit ${r.rc}`}); see ${r.exchange}\n`);
    process.exit(1);
  }
  const b = res.bench;
  if (json) {
    console.log(JSON.stringify(b));
  } else {
    console.log(`\n              pause      total`);
    console.log(`live capture  ${b.pause_ms.live.toFixed(1).padStart(8)} ms ${b.total_s.live.toFixed(1).padStart(7)} s`);
    console.log(`xl save -c    ${b.pause_ms.save.toFixed(1).padStart(8)} ms ${b.total_s.save.toFixed(1).padStart(7)} s`);
    console.log(`pause ratio live/save = ${(b.pause_ms.live / b.pause_ms.save).toFixed(3)} (target ≤ 0.2); streams intact: ${b.streams_intact}`);
    if (res.problems?.length) console.log(`problems: ${res.problems.join('; ')}`);
  }
}

void main();
