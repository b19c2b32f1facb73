/**
 * The operator's store commands: `vnsnap snapshot verify ID`, `vnsnap store stats` and
 * `vnsnap store gc [--grace DURATION]` — the commander definitions, the calls, and their human
 * output (pure render functions, so tests assert exact text). With --json: the response as one
 * proto3 JSON object (stats), or one JSON line per streamed event (verify, gc).
 *
 * Exit codes: verify exits 7 when it found a problem (the snapshot is damaged: a missing or
 * corrupt artefact or manifest), distinct from 1 (the verify itself could not run); gc and
 * stats as every command (exit-codes.ts).
 */
import type * as grpc from '@grpc/grpc-js';
import { type Command, InvalidArgumentError } from 'commander';
import type { GcEvent__Output } from '../../proto/gen/vnsnap/v1/GcEvent';
import type { GcResult__Output } from '../../proto/gen/vnsnap/v1/GcResult';
import type { StoreStats__Output } from '../../proto/gen/vnsnap/v1/StoreStats';
import { formatInterval, parseInterval } from '../scheduler-interval';
import type { CoordinatorClient } from './client';
import { callAndPrint, followOperation, withClient, type Ctx } from './commands';
import { CliError, EXIT, type ExitCode } from './exit-codes';
import { formatBytes, formatMs, table } from './format';
import { toJson } from './proto-json';

/** --grace: an interval as schedules take it (30s, 15m, 1h), or 0. */
export function parseGrace(v: string): number {
  if (v === '0') return 0;
  const ms = parseInterval(v);
  if (ms === undefined) throw new InvalidArgumentError(`--grace expects a duration such as 0, 30s, 15m or 1h, got "${v}"`);
  return ms;
}

export function renderStoreStats(s: StoreStats__Output): string {
  const chunks = s.kind === 'files' ? '-' : String(s.chunks);
  return table(
    ['FIELD', 'VALUE'],
    [
      ['store', s.store],
      ['stored', formatBytes(Number(s.storedBytes))],
      ['chunks', chunks],
      ['artefacts', String(s.artefacts)],
      ['logical', formatBytes(Number(s.logicalBytes))],
      ['dedup ratio', `${s.dedupRatio.toFixed(2)}`],
    ],
  ).replace(/^FIELD.*\n/, '');
}

export function renderGcResult(r: GcResult__Output): string {
  const n = Number(r.chunksDeleted);
  return `freed ${n} chunk${n === 1 ? '' : 's'} (${formatBytes(Number(r.bytesFreed))}) in ${formatMs(Number(r.elapsedMs))}; kept ${r.chunksKept} (grace ${formatInterval(Number(r.graceMs))})\n`;
}

export async function snapshotVerify(ctx: Ctx, id: string): Promise<ExitCode> {
  return withClient(ctx, async (c) => {
    const { done } = await followOperation(ctx, c, c.verifySnapshot(id), `verify of snapshot ${id}`, () => `vnsnap snapshot show ${id}`);
    if (!done) throw new CliError(EXIT.FAILED, `the coordinator ended the verify of snapshot ${id} without its result; check with: vnsnap snapshot show ${id}`);
    const problems = done.verifyProblems ?? [];
    if (problems.length > 0) {
      const more = problems.length > 1 ? ` (and ${problems.length - 1} more: vnsnap snapshot show ${id})` : '';
      throw new CliError(EXIT.VERIFY_FAILED, `snapshot ${id} FAILED verification: ${problems[0]}${more}`, 'ERR_CHECKSUM');
    }
    if (!ctx.json) ctx.io.out(`\nsnapshot ${id}: ok, ${done.artefacts.length} artefacts (${formatBytes(Number(done.sizeBytes))}) re-read and checked\n`);
    return EXIT.OK;
  });
}

/** Follow a gc stream: notes (or JSON lines) as they come; the result at the end. */
function followGc(ctx: Ctx, c: CoordinatorClient, stream: grpc.ClientReadableStream<GcEvent__Output>): Promise<GcResult__Output | undefined> {
  let interrupted = false;
  const off = ctx.io.onInterrupt(() => {
    interrupted = true;
    stream.cancel();
  });
  return new Promise<GcResult__Output | undefined>((resolve, reject) => {
    let done: GcResult__Output | undefined;
    stream.on('data', (e: GcEvent__Output) => {
      if (e.done) done = e.done;
      if (ctx.json) ctx.io.out(JSON.stringify(toJson('vnsnap.v1.GcEvent', e)) + '\n');
      else if (e.note !== undefined) ctx.io.out(`${e.note}\n`);
    });
    stream.on('error', (e) => {
      if (interrupted) reject(new CliError(EXIT.INTERRUPTED, 'interrupted: stopped following the garbage collection; it goes on in the coordinator', 'ERR_CANCELLED'));
      else reject(c.toCliError(e, 'store gc'));
    });
    stream.on('end', () => resolve(done));
  }).finally(off);
}

export async function storeGc(ctx: Ctx, graceMs: number | undefined): Promise<ExitCode> {
  return withClient(ctx, async (c) => {
    const done = await followGc(ctx, c, c.collectGarbage(graceMs));
    if (!done) throw new CliError(EXIT.FAILED, 'the coordinator ended the garbage collection without its result; run vnsnap store stats to see the store');
    if (!ctx.json) ctx.io.out(renderGcResult(done));
    return EXIT.OK;
  });
}

/** Register `snapshot verify` under `snapshot` and the `store` group. */
export function addStoreCommands(
  snapshot: Command,
  group: (name: string, description: string) => Command,
  leaf: (parent: Command, name: string, description: string) => Command,
  example: (text: string) => string,
  run: (work: (ctx: Ctx) => Promise<ExitCode>, opts: object) => Promise<void>,
): void {
  leaf(snapshot, 'verify', "re-read every chunk of a snapshot's artefacts in the store and check every checksum; the result is kept (snapshot show)")
    .argument('<ID>', 'the snapshot id')
    .addHelpText('after', '\nExits 0 when every artefact is whole, 7 when one is missing or corrupt (each is named).\n' + example('$ vnsnap snapshot verify blue-7-3c9e1f'))
    .action((id: string, o: object) => run((ctx) => snapshotVerify(ctx, id), o));

  const store = group('store', "the snapshot store: what it holds, and freeing what no snapshot needs");
  leaf(store, 'stats', 'show the bytes stored, the chunks, the logical bytes of every artefact and the dedup ratio')
    .addHelpText('after', example('$ vnsnap store stats'))
    .action((o: object) => run((ctx) => callAndPrint(ctx, (c) => c.getStoreStats(), 'vnsnap.v1.StoreStats', renderStoreStats), o));
  leaf(store, 'gc', 'free the chunks no snapshot references any more (after snapshot delete); one at a time')
    .option('--grace <DURATION>', 'keep unreferenced chunks younger than this (a snapshot may be being written): 0, 30s, 15m, 1h (default 1h)', parseGrace)
    .addHelpText('after', example('$ vnsnap store gc --grace 15m'))
    .action((o: { grace?: number }) => run((ctx) => storeGc(ctx, o.grace), o));
}
