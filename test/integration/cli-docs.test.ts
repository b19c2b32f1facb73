/**
 * docs/cli.md stays true: every command example in it (a `$ vnsnap ...` line in a fenced block,
 * followed by the output it prints) is run, in the order of the document, against a live
 * cluster (test/support/cluster.ts: the real coordinator and two sim agents on namespaced hosts,
 * mutual TLS), and what it prints must be what the document shows.
 *
 * The conventions of the document's examples, which this test implements:
 *  - `$ vnsnap ARGS` runs the CLI (with the cluster's --coordinator unless ARGS name one, and
 *    the operator's certificate) in a working directory of the test; the lines up to the next
 *    `$` are its stdout then its stderr. A trailing `# exit N` (on the command or the last
 *    output line) is the exit code it must have (default 0); any other trailing `# ...` after
 *    two spaces is a comment. `| cat` (not a terminal), `| tail -N`, `| head -N` are applied.
 *    `> FILE` writes stdout to FILE instead.
 *  - `$ cat FILE` writes the lines that follow to FILE (so the example files are the ones run).
 *  - `$ echo $?` prints the exit code of the command before.
 *  - `$ vnsnap events ... &` starts a follower in the background; `$ kill -INT %1` ends it and
 *    the lines that follow are what it printed.
 * Compared after normalising what differs from run to run: times and dates, durations, sizes,
 * the hex part of snapshot ids (`green-1-4f0c2a`: VNE and epoch are kept; the ids of the run
 * replace the document's in later commands), the machine's host name (`<hostname>` in the
 * document), runs of spaces (column widths), the order of the `+N.NNNs` progress lines, and
 * how many frames in flight a cut caught (the sim VMs send frames all the time).
 *
 * VNSNAP_CLI_DOCS_PRINT=1 prints every command's real output, to write the document from.
 * The last cases kill the real coordinator in the middle of `snapshot create` and of `restore`.
 */
import { strict as assert } from 'node:assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Cluster } from '../support/cluster';
import { until } from '../support/wait';
import { childOutput } from '../support/child-output';

const REPO = path.resolve(__dirname, '../../..');
const DOC = path.join(REPO, 'docs/cli.md');
const CLI = path.resolve(__dirname, '../../coordinator/cli/main.js');
const PRINT = process.env.VNSNAP_CLI_DOCS_PRINT === '1';

interface Step {
  /** The line after `$ `. */
  command: string;
  /** Expected output lines (comments stripped). */
  output: string[];
  exit: number;
  /** Where in the document (for failure messages). */
  line: number;
}

/** The `$ ` steps of every fenced block of the document. */
export function parseSteps(md: string): Step[] {
  const steps: Step[] = [];
  let inBlock = false;
  let cur: Step | undefined;
  md.split('\n').forEach((raw, i) => {
    if (/^```/.test(raw)) {
      inBlock = !inBlock;
      cur = undefined;
      return;
    }
    if (!inBlock) return;
    const exitMark = /\s+# exit (\d+)\s*$/.exec(raw);
    const line = raw.replace(/\s+# exit \d+\s*$/, '').replace(/ {2,}# .*$/, '');
    if (line.startsWith('$ ')) {
      cur = { command: line.slice(2).trim(), output: [], exit: exitMark ? Number(exitMark[1]) : 0, line: i + 1 };
      steps.push(cur);
    } else if (cur) {
      cur.output.push(line);
      if (exitMark) cur.exit = Number(exitMark[1]);
    }
  });
  return steps;
}

const ID = /\b([a-z][a-z0-9-]*?)-(\d+)-([0-9a-f]{6})\b/g;

function normalise(text: string): string[] {
  const host = os.hostname();
  const lines = text
    .replace(/\r/g, '')
    .split('\n')
    .map((l) =>
      l
        .replace(new RegExp(`(?<=\\S {2,})${host.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?= {2,})`, 'g'), '<hostname>')
        .replace(/\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?Z/g, '<time>')
        .replace(/\+\d+\.\d{3}s\b/g, '+<t>')
        .replace(/\d+(\.\d+)? (ms|s)\b/g, '<dur>')
        .replace(/\d+(\.\d+)? (B|KiB|MiB|GiB|TiB)\b/g, '<size>')
        .replace(/iteration \d+/g, 'iteration <n>')
        .replace(ID, '$1-$2-<id>')
        .replace(/"(timeUnixMs|createdUnixMs|completedUnixMs|updatedUnixMs)":\d+/g, '"$1":<ms>')
        .replace(/\s{2,}/g, '  ')
        // Frames in flight at the cut: the sim VMs send 20 frames a second, so how many the cut
        // catches is timing (0 or 1 in practice): the count in the VM rows, the totals line and
        // the restore note.
        .replace(/^( *\S+  \S+  <dur>  \+<dur>  (?:<size>|-)  (?:<size>|-)  )\d+\b/, '$1<n>')
        .replace(/channel frames \d+/g, 'channel frames <n>')
        .replace(/\d+ recorded frames injected/g, '<n> recorded frames injected')
        .trimEnd(),
    );
  while (lines.length && lines[lines.length - 1] === '') lines.pop();
  // Progress lines (one per phase change) arrive in an order that depends on timing.
  const progress = lines.filter((l) => l.startsWith('+<t>')).sort();
  let k = 0;
  return lines.map((l) => (l.startsWith('+<t>') ? (progress[k++] as string) : l));
}

/** Snapshot ids of the document → the ids of this run, learned by comparing outputs. */
function learnIds(expected: string, actual: string, ids: Map<string, string>): void {
  const e = [...expected.matchAll(ID)].map((m) => m[0]);
  const a = [...actual.matchAll(ID)].map((m) => m[0]);
  e.forEach((id, i) => {
    const real = a[i];
    if (real !== undefined && !ids.has(id)) ids.set(id, real);
  });
}

function splitArgs(s: string): string[] {
  const out: string[] = [];
  for (const m of s.matchAll(/"([^"]*)"|'([^']*)'|(\S+)/g)) out.push(m[1] ?? m[2] ?? (m[3] as string));
  return out;
}

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

describe('docs/cli.md: every command example, run against a live cluster', function () {
  this.timeout(180_000);
  const c = new Cluster({ prefix: 'vncd', hosts: ['h1', 'h2'], subnet: '10.0.0' });
  let cwd: string;

  before(async function () {
    this.timeout(60_000);
    await c.start();
    cwd = path.join(c.dir, 'work');
    fs.mkdirSync(cwd);
  });
  after(async function () {
    this.timeout(60_000);
    await c.destroy();
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(c.logTail(20));
  });

  function spawnCli(args: readonly string[]): ChildProcess {
    // The cluster's address and the operator's files, for what the example does not give itself.
    const defaults = ['--coordinator', c.coordinatorAddress, ...c.tlsArgs()];
    const own: string[] = [];
    for (let i = 0; i < defaults.length; i += 2) if (!args.includes(defaults[i] as string)) own.push(defaults[i] as string, defaults[i + 1] as string);
    return spawn('ip', ['netns', 'exec', c.topo.ns('ul'), process.execPath, CLI, ...args, ...own], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  }

  const collect = (child: ChildProcess): Promise<Ran> => childOutput(child);


  /** Established TCP connections to the coordinator's port (to know a follower has connected). */
  function coordinatorConnections(): number {
    const r = spawnSync('ip', ['netns', 'exec', c.topo.ns('ul'), 'ss', '-Htn', 'state', 'established', '( sport = :7443 )'], { encoding: 'utf8' });
    return r.stdout.split('\n').filter((l) => l.trim()).length;
  }

  it('prints what the document says, example by example', async () => {
    const steps = parseSteps(fs.readFileSync(DOC, 'utf8'));
    assert.ok(steps.length > 20, `only ${steps.length} examples found in docs/cli.md`);
    const ids = new Map<string, string>();
    let lastCode = 0;
    let background: { child: ChildProcess; done: Promise<Ran> } | undefined;
    const failures: string[] = [];
    for (const step of steps) {
      let command = step.command;
      for (const [doc, real] of ids) command = command.split(doc).join(real);
      const where = `docs/cli.md:${step.line}: $ ${step.command}`;
      let ran: Ran;
      if (command.startsWith('cat ')) {
        fs.writeFileSync(path.join(cwd, command.slice(4).trim()), step.output.join('\n') + '\n');
        continue;
      } else if (command === 'echo $?') {
        ran = { code: 0, stdout: `${lastCode}\n`, stderr: '' };
      } else if (/^vnsnap events\b.*&$/.test(command)) {
        const before = coordinatorConnections();
        const child = spawnCli(splitArgs(command.replace(/&$/, '')).slice(1));
        background = { child, done: collect(child) };
        await until('the events follower connected', () => coordinatorConnections() > before, { timeoutMs: 20_000 });
        continue;
      } else if (command === 'kill -INT %1') {
        assert.ok(background, `${where}: no follower in the background`);
        background.child.kill('SIGINT');
        ran = await background.done;
        background = undefined;
      } else {
        assert.match(command, /^vnsnap /, `${where}: the test does not know how to run this`);
        const [cli, ...pipes] = command.split(' | ');
        let redirect: string | undefined;
        let args = splitArgs((cli as string).replace(/\s+>\s*(\S+)$/, (_, f: string) => ((redirect = f), ''))).slice(1);
        args = args.filter((a) => a !== '');
        ran = await collect(spawnCli(args));
        for (const p of pipes) {
          const m = /^(tail|head) -(\d+)$/.exec(p.trim());
          if (p.trim() === 'cat') continue;
          assert.ok(m, `${where}: unknown pipe "${p}"`);
          const lines = ran.stdout.replace(/\n$/, '').split('\n');
          ran.stdout = (m[1] === 'tail' ? lines.slice(-Number(m[2])) : lines.slice(0, Number(m[2]))).join('\n') + '\n';
        }
        if (redirect !== undefined) {
          fs.writeFileSync(path.join(cwd, redirect), ran.stdout);
          ran.stdout = '';
        }
      }
      lastCode = ran.code ?? -1;
      const actual = ran.stdout + ran.stderr;
      if (PRINT) console.log(`--- ${where} (exit ${ran.code})\n${actual}`);
      learnIds(step.output.join('\n'), actual, ids);
      const want = normalise(step.output.join('\n'));
      const got = normalise(actual);
      // `$ echo $?` right after a command shows (and so checks) its exit code.
      const echoed = steps[steps.indexOf(step) + 1]?.command === 'echo $?';
      if (ran.code !== step.exit && !echoed) failures.push(`${where}: exit ${ran.code}, the document says ${step.exit}\n${actual}`);
      else if (JSON.stringify(want) !== JSON.stringify(got)) {
        failures.push(`${where}: prints\n${got.join('\n')}\nthe document shows\n${want.join('\n')}`);
      }
    }
    if (background) background.child.kill('SIGKILL');
    assert.deepEqual(failures, []);
  });

  it('a coordinator killed in the middle of `snapshot create`: exit 6, outcome unknown; snapshot list then tells it', async () => {
    const f = path.join(cwd, 'slow.json');
    fs.writeFileSync(
      f,
      JSON.stringify({
        name: 'slow',
        vni: 4343,
        vms: [
          { name: 'a', host: 'h1', macs: ['52:54:00:43:00:01'], driver: { sim: { memory_mib: 64, dirty_rate_mib_s: 8, frame_rate_hz: 10, peers: ['b'] } } },
          { name: 'b', host: 'h2', macs: ['52:54:00:43:00:02'], driver: { sim: { memory_mib: 64, dirty_rate_mib_s: 8, frame_rate_hz: 10, peers: ['a'] } } },
        ],
      }),
    );
    assert.equal((await c.cli(['vne', 'define', f])).code, 0);
    assert.equal((await c.cli(['vne', 'start', 'slow'])).code, 0);
    let killed: Promise<void> | undefined;
    const r = await c.cliStream<{ snapshotId?: string }>(['snapshot', 'create', 'slow'], () => {
      killed ??= c.kill('coordinator');
    }).done;
    await killed;
    assert.equal(r.code, 6, r.stderr);
    const id = r.events[0]?.snapshotId ?? '';
    assert.match(id, /^slow-1-[0-9a-f]{6}$/);
    const e = (JSON.parse(r.stderr) as { error: { code: string; message: string; exitCode: number } }).error;
    assert.deepEqual({ code: e.code, exitCode: e.exitCode }, { code: 'ERR_UNAVAILABLE', exitCode: 6 });
    assert.match(
      e.message,
      new RegExp(`^lost the connection to the coordinator at ${c.coordinatorAddress.replace(/\./g, '\\.')} \\(.+\\) during the snapshot of VNE slow \\(${id}\\): its outcome is unknown; find it with: vnsnap snapshot list --vne slow, or vnsnap events --vne slow$`),
    );
    // What the message points at tells the outcome once the coordinator is back.
    await c.startCoordinator();
    await c.waitConnected(c.hosts);
    const list = await c.cliJson<{ snapshots: { id: string; state: string }[] }>(['snapshot', 'list', '--vne', 'slow']);
    assert.deepEqual(
      list.snapshots.map((s) => [s.id, s.state]),
      [[id, 'SNAPSHOT_STATE_ABORTED']],
    );
  });

  it('a coordinator killed in the middle of `restore`: exit 6, outcome unknown, and what to run to find it', async () => {
    const snap = await c.cliStream<{ done?: { id: string; state: string } }>(['snapshot', 'create', 'slow']).done;
    assert.equal(snap.code, 0, snap.stderr);
    const id = snap.events[snap.events.length - 1]?.done?.id ?? '';
    // h1 frozen: the restore cannot finish before the coordinator is killed at its first event.
    await c.kill('h1', 'SIGSTOP');
    try {
      let killed: Promise<void> | undefined;
      const r = await c.cliStream(['restore', id, '--stop-running'], () => {
        killed ??= c.kill('coordinator');
      }).done;
      await killed;
      assert.equal(r.code, 6, r.stderr);
      const e = (JSON.parse(r.stderr) as { error: { code: string; message: string; exitCode: number } }).error;
      assert.deepEqual({ code: e.code, exitCode: e.exitCode }, { code: 'ERR_UNAVAILABLE', exitCode: 6 });
      assert.match(
        e.message,
        new RegExp(`^lost the connection to the coordinator at ${c.coordinatorAddress.replace(/\./g, '\\.')} \\(.+\\) during the restore of snapshot ${id}: its outcome is unknown; find it with: vnsnap snapshot show ${id} \\(its VNE\\), then vnsnap vne show VNE; or vnsnap events$`),
      );
    } finally {
      await c.kill('h1', 'SIGCONT');
    }
    await c.startCoordinator();
    await c.waitConnected(c.hosts);
    // The commands the message names answer.
    const shown = await c.cliJson<{ vne: string }>(['snapshot', 'show', id]);
    assert.equal(shown.vne, 'slow');
    assert.equal((await c.cli(['vne', 'show', 'slow'])).code, 0);
  });
});
