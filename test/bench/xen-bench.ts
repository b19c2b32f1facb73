/**
 * npm run bench:xen [-- --json] [--vms 1|2] [--rounds N]
 *
 * On the nested-Xen test bed (docs/xen.md): a 128 MiB PV guest under load (16 MiB of memory
 * rewritten at 8 MiB/s, as in the driver smoke run, and checked TCP streams both ways at
 * 256 KiB/s; a guest dirtying faster than the nested dom0 can copy never converges, and then
 * libxc's last pass is as large as a stop-and-copy) on a VNE behind the vnsnap agent in dom0;
 * a live snapshot (xl migrate capture) then a stop-and-copy one (`xl save -c`), each through
 * the coordinator. By default the guest is alone on the VNE and the other end of its streams is
 * a vnguest in a dom0 network namespace bridged to its vif; with --vms 2 both ends are guests of
 * the VNE and are captured at once (in a dom0 of 2 TCG vCPUs the two captures compete).
 * --dom0-weight W sets dom0's scheduler weight for both modes (default: Xen's, as the guest's).
 * --rounds N (default 3) live and stop-and-copy snapshots alternate; printed are the medians over
 * the rounds of the largest per-VM pause and of the total time, their ratio, and whether every
 * stream stayed intact through all of them. With --json: one object
 *   {"pause_ms":{"live":N,"save":N},"total_s":{"live":N,"save":N},"streams_intact":true|false}
 * Needs root; builds the cached test bed if needed. Takes 10+ minutes under TCG.
 */
import { parseArgs } from 'node:util';
import { buildTestbed, runDom0Program } from '../xen/testbed';

const HELP = `usage: npm run bench:xen -- [--json] [--vms 1|2] [--rounds N]
  Live capture (xl migrate to vnsnap's receiver) vs stop-and-copy (xl save -c) of a 128 MiB PV
  guest under load, on the nested-Xen test bed (built and cached on first use; needs root).
  --vms 1|2    guests on the VNE, captured at once (default 1: the streams' other end is in dom0)
  --rounds N   live + save snapshots to take; medians are printed (default 3)
  --dom0-weight W  set dom0's scheduler weight for the run (default 0: left at Xen's 256, the
               guest's; docs/xen.md advises 1024)
  --json       one JSON object on stdout: {"pause_ms":{"live","save"},"total_s":{..},"streams_intact"}`;

interface Bench {
  pause_ms: { live: number; save: number };
  total_s: { live: number; save: number };
  streams_intact: boolean;
}

async function main(): Promise<void> {
  let values: { help?: boolean; json?: boolean; vms: string; rounds: string; 'dom0-weight': string };
  try {
    ({ values } = parseArgs({
      options: { help: { type: 'boolean', short: 'h' }, json: { type: 'boolean' }, vms: { type: 'string', default: '1' }, rounds: { type: 'string', default: '3' }, 'dom0-weight': { type: 'string', default: '0' } },
    }));
  } catch (e) {
    process.stderr.write(`xen-bench: ${(e as Error).message}\n${HELP}\n`);
    process.exit(2);
  }
  if (values.help) {
    console.log(HELP);
    return;
  }
  const json = values.json === true;
  const { vms, rounds, 'dom0-weight': weight } = values;
  const bad = vms !== '1' && vms !== '2' ? `--vms takes 1 or 2 (guests captured at once), not "${vms}"` : !/^[1-9]\d*$/.test(rounds) ? `--rounds takes a whole number ≥ 1, not "${rounds}"` : !/^\d+$/.test(weight) ? `--dom0-weight takes a whole number, not "${weight}"` : '';
  if (bad) {
    process.stderr.write(`xen-bench: ${bad}\n${HELP}\n`);
    process.exit(2);
  }
  const log = (s: string): void => {
    if (!json) console.log(s);
    else process.stderr.write(s + '\n');
  };
  log('xen-bench: building / finding the test bed');
  const dir = await buildTestbed();
  log(`xen-bench: booting Xen under QEMU TCG (${dir})`);
  const { run: r, result: res } = await runDom0Program<{ bench?: Bench; error?: string; steps?: string[]; problems?: string[] }>({ dir, program: 'dom0-e2e', args: ['--bench', '--vms', vms, '--rounds', rounds, '--dom0-weight', weight], result: 'bench.json', timeoutMs: 45 * 60_000 });
  for (const s of res?.steps ?? []) log(`  ${s}`);
  if (!res?.bench) {
    process.stderr.write(`xen-bench: no result (${res?.error ?? `dom0 script exit ${r.rc}`}); see ${r.exchange}\n`);
    process.exit(1);
  }
  const b = res.bench;
  if (json) {
    console.log(JSON.stringify(b));
  } else {
    console.log(`\n${vms} guest(s), dom0 weight ${weight === '0' ? 'unchanged' : weight}, median of ${rounds} rounds`);
    console.log(`                          pause      total`);
    console.log(`live capture            ${b.pause_ms.live.toFixed(1).padStart(8)} ms ${b.total_s.live.toFixed(1).padStart(7)} s`);
    console.log(`xl save -c              ${b.pause_ms.save.toFixed(1).padStart(8)} ms ${b.total_s.save.toFixed(1).padStart(7)} s`);
    console.log(`pause ratio live/save = ${(b.pause_ms.live / b.pause_ms.save).toFixed(3)} (target ≤ 0.2); streams intact: ${b.streams_intact}`);
    if (res.problems?.length) console.log(`problems: ${res.problems.join('; ')}`);
  }
}

void main();
