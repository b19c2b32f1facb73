/**
 * bench:agent-restart (issue 12): do the VMs of a host survive SIGKILL + restart of its agent,
 * and how long is their network out?
 *
 * Two namespaced hosts (test/support/cluster.ts, agents with `"drivers": ["qemu"]`), one TCG test
 * guest on each streaming byte-checked TCP to the other at 256 KiB/s (test/support/restart-vne.ts).
 * Each round: SIGKILL h1's agent (or SIGTERM, `--signal TERM`: a stop as `systemctl restart` or an
 * upgrade does it), start it again at once (or after `--down-ms`), wait until both streams move again,
 * then 2 s more in which a later gap would show. The outage is measured from the guests' side:
 * the longest gap in a stream's received bytes (sampled every 100 ms over the status channels).
 *
 *   npm run bench:agent-restart [-- --rounds N] [--signal KILL|TERM] [--down-ms MS] [--json]
 *
 * With --json stdout is exactly one JSON object (progress goes to stderr):
 *   {"vms_survived":true|false,"stream_errors":N,"reconnects":N,
 *    "network_outage_ms":{"median":N,"max":N},"rounds":N,"signal":"SIGKILL"|"SIGTERM","down_ms":N}
 * Root only (namespaces, TAPs, QEMU).
 */
import { buildGuest, ensureQemu, guestImageRoots } from '../guest/qemu-guest';
import { Cluster } from '../support/cluster';
import { RestartVne, streamProblems } from '../support/restart-vne';
import { sleep, until } from '../support/wait';
import { forEachFlag, usageExit } from './args';

const USAGE = 'usage: agent-restart [--rounds N] [--signal KILL|TERM] [--down-ms MS] [--json]';
let rounds = 5;
let json = false;
let signal: 'SIGKILL' | 'SIGTERM' = 'SIGKILL';
let downMs = 0;
const usage = (msg: string): never => usageExit('agent-restart', USAGE, msg);
forEachFlag(process.argv.slice(2), usage, (flag, value) => {
  if (flag === '--json') json = true;
  else if (flag === '--rounds') {
    rounds = Number(value());
    if (!Number.isInteger(rounds) || rounds < 1 || rounds > 100) usage('--rounds must be 1..100');
  } else if (flag === '--signal') {
    const v = value().toUpperCase().replace(/^SIG/, '');
    if (v !== 'KILL' && v !== 'TERM') usage('--signal is KILL or TERM');
    signal = v === 'KILL' ? 'SIGKILL' : 'SIGTERM';
  } else if (flag === '--down-ms') {
    downMs = Number(value());
    if (!Number.isInteger(downMs) || downMs < 0 || downMs > 60_000) usage('--down-ms must be 0..60000');
  } else usage(`unknown argument ${flag}`);
});
const say = (s: string): void => void (json ? process.stderr : process.stdout).write(s + '\n');

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) usage('needs root (namespaces, TAPs, QEMU)');
  ensureQemu();
  const image = buildGuest();
  const vne = new RestartVne('vnarb');
  vne.killQemus();
  const c = new Cluster({ prefix: 'vnarb', hosts: ['h1', 'h2'], drivers: ['qemu'], imageRoots: guestImageRoots(image), heartbeatIntervalMs: 1000, deadAfterMs: 10_000 });
  try {
    await c.start();
    await c.cliJson(['vne', 'define', vne.writeFile(c.dir, image)]);
    await c.cliJson(['vne', 'start', 'vnarb']);
    const first = await until('both streams connected and moving', async () => {
      const st = await vne.statuses().catch(() => undefined);
      return st && vne.streamsUp(st) ? st : undefined;
    }, { timeoutMs: 180_000, everyMs: 2000 });
    say('streams up');
    const pid = vne.qemuOf('a')?.pid;
    let survived = true;
    const outages: number[] = [];
    for (let r = 1; r <= rounds; r++) {
      const before = await vne.statuses();
      const sampler = vne.outageSampler();
      await c.kill('h1', signal);
      if (downMs > 0) await sleep(downMs); // kept: the agent stays down this long (the outage under test)
      await c.startAgent('h1');
      await until('every stream moves again', async () => (streamProblems('', before, await vne.statuses()).length === 0 ? true : undefined), { timeoutMs: 60_000, everyMs: 200 });
      await sleep(2000); // kept: the window after the restart in which a later gap would show
      outages.push(await sampler.stop());
      survived &&= vne.qemuOf('a')?.pid === pid;
      say(`round ${r}: outage ${outages[outages.length - 1]} ms, QEMU pid ${vne.qemuOf('a')?.pid === pid ? 'same' : 'CHANGED'}`);
    }
    const last = await vne.statuses();
    const sorted = [...outages].sort((x, y) => x - y);
    const m = Math.floor(sorted.length / 2);
    const median = sorted.length % 2 ? (sorted[m] as number) : ((sorted[m - 1] as number) + (sorted[m] as number)) / 2;
    const out = {
      vms_survived: survived && Object.values(last).every((s) => s.nonce === first[s.name]?.nonce),
      stream_errors: Object.values(last).reduce((n, s) => n + s.totals.errors, 0),
      reconnects: Object.values(last).reduce((n, s) => n + s.totals.reconnects, 0),
      network_outage_ms: { median, max: sorted[sorted.length - 1] as number },
      rounds,
      signal,
      down_ms: downMs,
    };
    if (json) process.stdout.write(JSON.stringify(out) + '\n');
    else say(JSON.stringify(out, null, 2));
  } finally {
    try {
      await c.cli(['vne', 'stop', 'vnarb'], 30_000);
    } catch {
      /* best effort */
    }
    vne.killQemus();
    await c.destroy();
    vne.killQemus();
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`agent-restart: ${(e as Error).message}\n`);
    process.exit(1);
  },
);
