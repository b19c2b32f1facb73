/**
 * The `vnsnap` command line: commander definitions (every command with its help and an
 * example), option checking, and the one place where a failure becomes a message on stderr and
 * an exit code (exit-codes.ts). Commands themselves are in commands.ts.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { DEFAULT_COORDINATOR, parseCoordinatorAddress } from './client';
import * as cmd from './commands';
import { CliError, EXIT, type ExitCode } from './exit-codes';
import { resolveCredentials } from './credentials';
import type { CliIo } from './io';
import { addMigrateCommand } from './migrate';
import { addScheduleCommands } from './schedule';
import { addStoreCommands } from './store';

const EXIT_CODES_HELP = `
Exit codes:
  0  ok
  1  the operation failed (e.g. the snapshot aborted, the coordinator refused it)
  2  bad usage or input (unknown option, bad JSON file, invalid VNE)
  3  not found (no such VNE or snapshot)
  4  cannot reach the coordinator
  5  denied: the role of your certificate may not do this, or a certificate is refused
  6  outcome unknown: the connection to the coordinator was lost during a snapshot or restore
     (find out with: vnsnap snapshot list --vne VNE, vnsnap vne show VNE, vnsnap events)
  7  snapshot verify found a missing or corrupt artefact (the snapshot is damaged)
  130 interrupted (Ctrl-C)

Environment:
  VNSNAP_COORDINATOR  the coordinator's host:port when --coordinator is not given
  VNSNAP_CA, VNSNAP_CERT, VNSNAP_KEY  the PEM files when --ca, --cert, --key are not given
                      (default: ca.pem, client.pem, client-key.pem in ~/.config/vnsnap/pki/)
  VNSNAP_INSECURE_PLAINTEXT=1  like --insecure-plaintext`;

interface CommonOpts {
  coordinator: string;
  json?: boolean;
  ca?: string;
  cert?: string;
  key?: string;
  insecurePlaintext?: boolean;
}

function uint32(name: string): (v: string) => number {
  return (v) => {
    if (!/^\d+$/.test(v) || Number(v) > 0xffff_ffff) throw new InvalidArgumentError(`${name} expects a whole number of milliseconds, got "${v}"`);
    return Number(v);
  };
}

function placement(v: string, prev: Record<string, string> | undefined): Record<string, string> {
  const m = /^([^=\s]+)=([^=\s]+)$/.exec(v);
  if (!m) throw new InvalidArgumentError(`--place expects VM=HOST (e.g. --place vm1=h2), got "${v}"`);
  const out = { ...(prev ?? {}) };
  if (out[m[1] as string] !== undefined) throw new InvalidArgumentError(`--place names VM ${m[1]} twice`);
  out[m[1] as string] = m[2] as string;
  return out;
}

/** Commander writes help to stdout, errors to stderr, errors as "vnsnap: ..." like ours. */
function output(io: CliIo): { writeOut(s: string): void; writeErr(s: string): void; outputError(s: string, write: (s: string) => void): void } {
  return {
    writeOut: (s) => io.out(s),
    writeErr: (s) => io.err(s),
    outputError: (s, write) => write(s.replace(/^error: /, 'vnsnap: ')),
  };
}

function example(text: string): string {
  return `\nExample:\n${text.replace(/^/gm, '  ')}\n`;
}

/** Build the program. `run` receives each command's work and reports its exit code. */
export function buildProgram(io: CliIo, env: NodeJS.ProcessEnv, run: (work: (ctx: cmd.Ctx) => Promise<ExitCode>, opts: CommonOpts) => Promise<void>): Command {
  const defaultAddress = env.VNSNAP_COORDINATOR || DEFAULT_COORDINATOR;
  const program = new Command('vnsnap');
  program
    .description('Operate vnsnap: define virtual networked environments (VNEs), take live consistent snapshots of them, restore them.\nA client of the coordinator\'s gRPC API (vnsnap.v1.CoordinatorService).')
    .usage('<command> [options]')
    .exitOverride()
    .configureOutput(output(io))
    .showHelpAfterError('(add --help for usage)')
    .addHelpText('after', EXIT_CODES_HELP + '\n' + example('$ vnsnap vne define blue.json && vnsnap vne start blue\n$ vnsnap snapshot create blue --description "before upgrade"\n$ vnsnap restore blue-7-3c9e1f --stop-running'));

  // Every leaf command takes the connection and output options.
  const leaf = (parent: Command, name: string, description: string): Command =>
    parent
      .command(name)
      .description(description)
      .exitOverride()
      .configureOutput(output(io))
      .showHelpAfterError('(add --help for usage)')
      .option('--coordinator <host:port>', 'the coordinator to talk to (env VNSNAP_COORDINATOR)', defaultAddress)
      .option('--json', 'machine-readable output only: one JSON object, or JSON lines for streams')
      .option('--ca <file>', 'CA certificate (PEM) the coordinator must be signed by (env VNSNAP_CA)')
      .option('--cert <file>', 'your client certificate (PEM; its OU is your role) (env VNSNAP_CERT)')
      .option('--key <file>', 'your private key (PEM) (env VNSNAP_KEY)')
      .option('--insecure-plaintext', 'no TLS: only for a coordinator on loopback (env VNSNAP_INSECURE_PLAINTEXT=1)');

  const vne = program.command('vne').description('define, inspect, start, stop and delete VNEs').usage('<command> [options]').exitOverride().configureOutput(output(io));

  leaf(vne, 'define', 'define a new VNE from a JSON file (a vnsnap.v1.Vne in proto3 JSON; camelCase or snake_case names)')
    .argument('<FILE.json>', 'the VNE definition')
    .addHelpText(
      'after',
      example(
        '$ cat blue.json\n{"name": "blue", "vni": 100, "vms": [\n  {"name": "vm1", "host": "h1", "macs": ["52:54:00:00:00:01"], "driver": {"qemu": {"memory_mib": 256}}},\n  {"name": "vm2", "host": "h2", "macs": ["52:54:00:00:00:02"], "driver": {"qemu": {"memory_mib": 256}}}]}\n$ vnsnap vne define blue.json\ndefined VNE blue (vni 100, 2 VMs on 2 hosts, DEFINED)',
      ),
    )
    .action((file: string, o: CommonOpts) => run((ctx) => cmd.vneDefine(ctx, file, false), o));

  leaf(vne, 'update', "replace a VNE's definition (VMs, hosts, MACs, drivers) from a JSON file; refused while the VNE runs")
    .argument('<FILE.json>', 'the new definition; its name says which VNE')
    .addHelpText('after', example('$ vnsnap vne show blue --json > blue.json   # edit it, then:\n$ vnsnap vne update blue.json\nupdated VNE blue (vni 100, 3 VMs on 2 hosts, DEFINED)'))
    .action((file: string, o: CommonOpts) => run((ctx) => cmd.vneDefine(ctx, file, true), o));

  leaf(vne, 'list', 'list the VNEs the coordinator knows')
    .addHelpText('after', example('$ vnsnap vne list\nNAME  VNI  STATE    VMS  HOSTS  EPOCH  GEN\nblue  100  RUNNING  2    h1,h2  3      1'))
    .action((o: CommonOpts) => run((ctx) => cmd.vneList(ctx), o));

  leaf(vne, 'show', "show a VNE: state, epoch, generation, and each VM's host, driver and MACs")
    .argument('<NAME>', 'the VNE')
    .addHelpText('after', example('$ vnsnap vne show blue'))
    .action((name: string, o: CommonOpts) => run((ctx) => cmd.vneShow(ctx, name), o));

  leaf(vne, 'delete', "delete a VNE and its kept disks (refused while it has snapshots, unless --with-snapshots)")
    .argument('<NAME>', 'the VNE')
    .option('--with-snapshots', "also delete the VNE's snapshots (their artefacts and catalog entries)")
    .option('--forget-unreachable-disks', 'forget the kept disks on hosts that are not connected (their directories stay there); without it such a host makes the delete refused')
    .addHelpText('after', example('$ vnsnap vne delete blue --with-snapshots\ndeleted VNE blue and its snapshots'))
    .action((name: string, o: CommonOpts & { withSnapshots?: boolean; forgetUnreachableDisks?: boolean }) => run((ctx) => cmd.vneDelete(ctx, name, o.withSnapshots === true, o.forgetUnreachableDisks === true), o));

  leaf(vne, 'start', "start a VNE's VMs on their hosts and connect them through the overlay; a VM whose disk a stop kept boots from it, on the host that kept it")
    .argument('<NAME>', 'the VNE')
    .option('--discard-disks', 'delete the kept disks first and boot every VM fresh from its spec (a kept disk on an unreachable host is forgotten)')
    .addHelpText('after', example('$ vnsnap vne start blue\nstarted VNE blue (vni 100, 2 VMs on 2 hosts, RUNNING)'))
    .action((name: string, o: CommonOpts & { discardDisks?: boolean }) => run((ctx) => cmd.vneStart(ctx, name, o.discardDisks === true), o));

  leaf(vne, 'stop', "stop a VNE's running VMs; each VM's disk is kept on its host (vne start boots from it)")
    .argument('<NAME>', 'the VNE')
    .option('--discard-disks', "delete the VMs' disks instead of keeping them (also the kept disks of a stopped VNE); the output names what was thrown away")
    .addHelpText('after', example('$ vnsnap vne stop blue\nstopped VNE blue'))
    .action((name: string, o: CommonOpts & { discardDisks?: boolean }) => run((ctx) => cmd.vneStop(ctx, name, o.discardDisks === true), o));

  const snapshot = program.command('snapshot').description('take, list, inspect and delete snapshots').usage('<command> [options]').exitOverride().configureOutput(output(io));

  leaf(snapshot, 'create', 'take a live, consistent snapshot of a running VNE, with progress per VM')
    .argument('<VNE>', 'the VNE to snapshot')
    .addOption(new Option('--mode <mode>', 'precopy: live pre-copy, the cut at the final pause; background: copy-on-write, the cut at the start').choices(['precopy', 'background']).default('precopy'))
    .option('--deadline-ms <N>', 'commit when every VM is ready or after this long in pre-copy (coordinator default 30000)', uint32('--deadline-ms'))
    .option('--timeout-ms <N>', 'abort unless the whole snapshot completes within this (coordinator default 300000)', uint32('--timeout-ms'))
    .option('--description <TEXT>', 'a note kept with the snapshot')
    .addHelpText(
      'after',
      '\nA terminal shows one progress bar per VM; a pipe gets one line per phase change.\nExits 0 when the snapshot is COMPLETE, 1 when it ABORTED (the VMs keep running either way).\n' +
        example('$ vnsnap snapshot create blue --mode precopy --description "before upgrade"'),
    )
    .action((vneName: string, o: CommonOpts & { mode: 'precopy' | 'background'; deadlineMs?: number; timeoutMs?: number; description?: string }) =>
      run((ctx) => cmd.snapshotCreate(ctx, vneName, { mode: o.mode, deadlineMs: o.deadlineMs, timeoutMs: o.timeoutMs, description: o.description }), o),
    );

  leaf(snapshot, 'list', "list snapshots (all of them, or one VNE's)")
    .option('--vne <NAME>', "only this VNE's snapshots")
    .addHelpText('after', example('$ vnsnap snapshot list --vne blue'))
    .action((o: CommonOpts & { vne?: string }) => run((ctx) => cmd.snapshotList(ctx, o.vne ?? ''), o));

  leaf(snapshot, 'show', 'show a snapshot: state, per-VM pause, cut offsets, phases; optionally draw its timeline')
    .argument('<ID>', 'the snapshot id')
    .option('--timeline <FILE.svg>', "write an SVG timeline of every VM's phases and the commit skew")
    .addHelpText('after', example('$ vnsnap snapshot show blue-7-3c9e1f --timeline blue-7.svg'))
    .action((id: string, o: CommonOpts & { timeline?: string }) => run((ctx) => cmd.snapshotShow(ctx, id, o.timeline), o));

  leaf(snapshot, 'delete', "delete a snapshot (its artefacts and catalog entry); in a content-addressed store its space comes back at the next store gc")
    .argument('<ID>', 'the snapshot id')
    .addHelpText('after', example('$ vnsnap snapshot delete blue-7-3c9e1f\ndeleted snapshot blue-7-3c9e1f'))
    .action((id: string, o: CommonOpts) => run((ctx) => cmd.snapshotDelete(ctx, id), o));

  leaf(program, 'restore', 'restore a snapshot: every VM, its disk and the frames in flight at the cut; on the same hosts or a new placement')
    .argument('<ID>', 'the snapshot id')
    .option('--place <VM=HOST>', 'run VM on agent HOST instead of where it was snapshotted (repeatable)', placement)
    .option('--stop-running', "stop the VNE's running VMs first (otherwise restoring a running VNE is refused)")
    .option('--discard-disks', "allowed to delete the VNE's kept disks (a vne stop kept them): the restore starts from the snapshot's disks, so without it a VNE with kept disks is refused")
    .option('--place-lost <HOST>', 'run every VM of an unreachable host on agent HOST; their old instances are fenced (stopped if that host returns)')
    .option('--timeout-ms <N>', 'give up unless the restore completes within this', uint32('--timeout-ms'))
    .addHelpText('after', example('$ vnsnap restore blue-7-3c9e1f --stop-running --place vm2=h3\n$ vnsnap restore blue-7-3c9e1f --stop-running --place-lost h1'))
    .action((id: string, o: CommonOpts & { place?: Record<string, string>; placeLost?: string; stopRunning?: boolean; discardDisks?: boolean; timeoutMs?: number }) =>
      run((ctx) => cmd.restore(ctx, id, { placement: o.place ?? {}, stopRunning: o.stopRunning === true, timeoutMs: o.timeoutMs, ...(o.placeLost ? { placeLost: o.placeLost } : {}), ...(o.discardDisks ? { discardDisks: true } : {}) }), o),
    );

  addMigrateCommand(program, leaf, example, placement, uint32, (work, o) => run(work, o as CommonOpts));

  addStoreCommands(
    snapshot,
    (name, description) => program.command(name).description(description).usage('<command> [options]').exitOverride().configureOutput(output(io)),
    leaf,
    example,
    (work, o) => run(work, o as CommonOpts),
  );

  addScheduleCommands(
    (name, description) => program.command(name).description(description).usage('<command> [options]').exitOverride().configureOutput(output(io)),
    leaf,
    example,
    (work, o) => run(work, o as CommonOpts),
  );

  leaf(program, 'agents', 'list the agents (one per host) and whether they are connected')
    .addHelpText('after', example('$ vnsnap agents'))
    .action((o: CommonOpts) => run((ctx) => cmd.agents(ctx), o));

  leaf(program, 'events', 'follow everything that happens (agents joining and leaving, snapshot and restore phases) until Ctrl-C')
    .option('--vne <NAME>', "only this VNE's events")
    .addHelpText('after', example('$ vnsnap events --vne blue --json | jq .kind'))
    .action((o: CommonOpts & { vne?: string }) => run((ctx) => cmd.events(ctx, o.vne ?? ''), o));

  return program;
}

function reportError(io: CliIo, json: boolean, e: CliError): void {
  if (json) io.err(JSON.stringify({ error: { code: e.code ?? null, message: e.message, exitCode: e.exitCode } }) + '\n');
  else io.err(`vnsnap: ${e.message}\n`);
}

/** Run the CLI on `argv` (without node and the script); resolves to the exit code. */
export async function runCli(argv: readonly string[], io: CliIo, env: NodeJS.ProcessEnv): Promise<number> {
  let code: number = EXIT.OK;
  const program = buildProgram(io, env, async (work, opts) => {
    const json = opts.json === true;
    try {
      const coordinator = parseCoordinatorAddress(opts.coordinator);
      const credentials = resolveCredentials(opts, env, coordinator);
      code = await work({ io, json, coordinator, credentials });
    } catch (e) {
      const ce = e instanceof CliError ? e : new CliError(EXIT.FAILED, `unexpected error: ${e instanceof Error ? e.message : String(e)}`);
      if (!(e instanceof CliError) && env.VNSNAP_DEBUG) io.err(`${(e as Error).stack ?? String(e)}\n`);
      reportError(io, json, ce);
      code = ce.exitCode;
    }
  });
  if (argv.length === 0) {
    io.err(program.helpInformation());
    return EXIT.USAGE;
  }
  try {
    await program.parseAsync([...argv], { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version are successes; everything else commander rejects is bad usage.
      return e.code === 'commander.helpDisplayed' || e.code === 'commander.version' ? EXIT.OK : EXIT.USAGE;
    }
    throw e;
  }
  return code;
}
