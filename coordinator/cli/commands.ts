/**
 * What each `vnsnap` command does, once commander has parsed it: one function per command,
 * each calling the coordinator through CoordinatorClient and printing either for a person or,
 * with --json, machine-readable output only (the RPC's response message as one proto3 JSON
 * object, or one JSON line per streamed event). Failures are thrown as CliError; cli.ts prints
 * them and picks the exit code.
 */
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { Snapshot__Output } from '../../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotEvent__Output } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import type { Event__Output } from '../../proto/gen/vnsnap/v1/Event';
import { CoordinatorClient } from './client';
import { CliError, EXIT, type ExitCode } from './exit-codes';
import { describeVne, formatMs, renderAgents, renderEvent, renderSnapshot, renderSnapshotList, renderVne, renderVneList, shortEnum } from './format';
import type { CliIo } from './io';
import { follow, makeRenderer, type RenderMode } from './progress';
import { toJson } from './proto-json';
import { inCliTerms } from './wording';
import { renderTimelineSvg } from './timeline-svg';
import { readVneFile } from './vne-file';
import type { CliCredentials } from './credentials';

export interface Ctx {
  io: CliIo;
  json: boolean;
  coordinator: string;
  /** TLS (or, loopback only, plaintext) credentials: credentials.ts. */
  credentials: CliCredentials;
}

function printJson(ctx: Ctx, type: string, message: unknown): void {
  ctx.io.out(JSON.stringify(toJson(type, message), null, 2) + '\n');
}

/** One call to the coordinator, its response printed: as proto3 JSON of `type` with --json, else `human(response)`. */
export function callAndPrint<R>(ctx: Ctx, call: (c: CoordinatorClient) => Promise<R>, type: string, human: (r: R) => string): Promise<ExitCode> {
  return withClient(ctx, async (c) => {
    const r = await call(c);
    if (ctx.json) printJson(ctx, type, r);
    else ctx.io.out(human(r));
    return EXIT.OK;
  });
}

export async function withClient<T>(ctx: Ctx, f: (c: CoordinatorClient) => Promise<T>): Promise<T> {
  const c = new CoordinatorClient(ctx.coordinator, ctx.credentials);
  try {
    return await f(c);
  } finally {
    c.close();
  }
}

export async function vneDefine(ctx: Ctx, file: string, update: boolean): Promise<ExitCode> {
  const vne = readVneFile(file);
  return callAndPrint(ctx, (c) => (update ? c.updateVne(vne) : c.defineVne(vne)), 'vnsnap.v1.Vne', (v) => `${update ? 'updated' : 'defined'} VNE ${describeVne(v)}\n`);
}

export async function vneList(ctx: Ctx): Promise<ExitCode> {
  return callAndPrint(ctx, (c) => c.listVnes(), 'vnsnap.v1.ListVnesResponse', (r) => renderVneList(r.vnes));
}

export async function vneShow(ctx: Ctx, name: string): Promise<ExitCode> {
  return callAndPrint(ctx, (c) => c.getVne(name), 'vnsnap.v1.Vne', renderVne);
}

export async function vneDelete(ctx: Ctx, name: string, withSnapshots: boolean, forgetUnreachableDisks = false): Promise<ExitCode> {
  return callAndPrint(ctx, (c) => c.deleteVne({ name, deleteSnapshots: withSnapshots, forgetUnreachableDisks }), 'vnsnap.v1.DeleteVneResponse', (r) => `deleted VNE ${name}${withSnapshots ? ' and its snapshots' : ''}\n${lines([...(r.discarded ?? []), ...(r.forgotten ?? [])])}`);
}

export async function vneStart(ctx: Ctx, name: string, discardDisks = false): Promise<ExitCode> {
  return callAndPrint(ctx, (c) => c.startVne(name, discardDisks), 'vnsnap.v1.StartVneResponse', (r) => `${r.vne ? `started VNE ${describeVne(r.vne)}\n` : `started VNE ${name}\n`}${lines(r.disks ?? [])}`);
}

export async function vneStop(ctx: Ctx, name: string, discardDisks = false): Promise<ExitCode> {
  return callAndPrint(ctx, (c) => c.stopVne(name, discardDisks), 'vnsnap.v1.StopVneResponse', (r) => `stopped VNE ${name}\n${r.vne?.stateReason ? `${r.vne.stateReason}\n` : ''}${lines(r.disks ?? [])}${lines((r.notes ?? []).map((n) => `note: ${n}`))}`);
}

/** One line each. */
function lines(l: readonly string[]): string {
  return l.map((x) => `${x}\n`).join('');
}

export async function agents(ctx: Ctx): Promise<ExitCode> {
  return callAndPrint(ctx, (c) => c.listAgents(), 'vnsnap.v1.ListAgentsResponse', (r) => renderAgents(r.agents));
}

export async function snapshotList(ctx: Ctx, vne: string): Promise<ExitCode> {
  return callAndPrint(ctx, (c) => c.listSnapshots(vne), 'vnsnap.v1.ListSnapshotsResponse', (r) => renderSnapshotList(r.snapshots));
}

export async function snapshotShow(ctx: Ctx, id: string, timeline: string | undefined): Promise<ExitCode> {
  return withClient(ctx, async (c) => {
    const s = await c.getSnapshot(id);
    if (timeline !== undefined) {
      try {
        fs.writeFileSync(timeline, renderTimelineSvg(s));
      } catch (e) {
        throw new CliError(EXIT.FAILED, `cannot write the timeline to ${timeline}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such directory' : (e as Error).message}`);
      }
    }
    if (ctx.json) printJson(ctx, 'vnsnap.v1.Snapshot', s);
    else {
      ctx.io.out(renderSnapshot(s, { phases: true }));
      if (timeline !== undefined) ctx.io.out(`timeline written to ${timeline}\n`);
    }
    return EXIT.OK;
  });
}

export async function snapshotDelete(ctx: Ctx, id: string): Promise<ExitCode> {
  return callAndPrint(ctx, (c) => c.deleteSnapshot(id), 'vnsnap.v1.DeleteSnapshotResponse', (r) => `deleted snapshot ${id}\n${r.note ? `${r.note}\n` : ''}`);
}

function renderMode(ctx: Ctx): RenderMode {
  return ctx.json ? 'json' : ctx.io.isTTY ? 'bars' : 'lines';
}

/**
 * Follow a snapshot/restore stream to its end with the right renderer; Ctrl-C stops following
 * (exit 130). Returns the final record and the time it took. Once the coordinator has answered
 * (headers or an event), a lost connection means the outcome is unknown: `findIt` says how to
 * find it out (client.ts, toStreamError).
 */
export async function followOperation(
  ctx: Ctx,
  c: CoordinatorClient,
  stream: grpc.ClientReadableStream<SnapshotEvent__Output>,
  what: string,
  findIt: (snapshotId: string) => string,
): Promise<{ done: Snapshot__Output | undefined; snapshotId: string; elapsedMs: number }> {
  const t0 = ctx.io.now();
  let interrupted = false;
  let answered = false;
  let snapshotId = '';
  stream.once('metadata', () => (answered = true));
  stream.on('data', (e: SnapshotEvent__Output) => {
    answered = true;
    if (e.snapshotId) snapshotId = e.snapshotId;
  });
  const off = ctx.io.onInterrupt(() => {
    interrupted = true;
    stream.cancel();
  });
  try {
    const r = await follow(stream, makeRenderer(renderMode(ctx), ctx.io));
    return { ...r, elapsedMs: ctx.io.now() - t0 };
  } catch (e) {
    if (interrupted) {
      throw new CliError(EXIT.INTERRUPTED, `interrupted: stopped following the ${what}; the coordinator decides whether it goes on (check with: ${findIt(snapshotId)})`, 'ERR_CANCELLED');
    }
    throw answered ? c.toStreamError(e, what + (snapshotId && !what.includes(snapshotId) ? ` (${snapshotId})` : ''), findIt(snapshotId)) : c.toCliError(e, what);
  } finally {
    off();
  }
}

export interface CreateOptions {
  mode: 'precopy' | 'background';
  deadlineMs: number | undefined;
  timeoutMs: number | undefined;
  description: string | undefined;
}

export async function snapshotCreate(ctx: Ctx, vne: string, o: CreateOptions): Promise<ExitCode> {
  return withClient(ctx, async (c) => {
    const stream = c.createSnapshot({
      vne,
      mode: o.mode === 'background' ? 'SNAPSHOT_MODE_BACKGROUND' : 'SNAPSHOT_MODE_PRECOPY',
      precopyDeadlineMs: o.deadlineMs ?? 0,
      timeoutMs: o.timeoutMs ?? 0,
      description: o.description ?? '',
    });
    const { done, snapshotId, elapsedMs } = await followOperation(ctx, c, stream, `snapshot of VNE ${vne}`, () => `vnsnap snapshot list --vne ${vne}, or vnsnap events --vne ${vne}`);
    if (!done) {
      throw new CliError(EXIT.FAILED, `the coordinator ended the snapshot stream${snapshotId ? ` of ${snapshotId}` : ''} without its final record; check with: vnsnap snapshot list --vne ${vne}`);
    }
    if (!ctx.json) ctx.io.out('\n' + renderSnapshot(done, { totalMsFallback: elapsedMs }));
    if (done.state !== 'SNAPSHOT_STATE_COMPLETE') {
      throw new CliError(EXIT.FAILED, `snapshot ${done.id} of VNE ${done.vne} ${shortEnum(done.state).toLowerCase()}${done.error ? `: ${inCliTerms(done.error)}` : ''}`, 'ERR_SNAPSHOT_ABORTED');
    }
    return EXIT.OK;
  });
}

export interface RestoreOptions {
  placement: Record<string, string>;
  stopRunning: boolean;
  timeoutMs: number | undefined;
  /** Host for every VM of an unreachable host (their old instances are fenced). */
  placeLost?: string;
  /** Delete the VNE's kept disks (a VNE with kept disks is refused otherwise). */
  discardDisks?: boolean;
}

export async function restore(ctx: Ctx, id: string, o: RestoreOptions): Promise<ExitCode> {
  return withClient(ctx, async (c) => {
    const stream = c.restoreSnapshot({ snapshotId: id, placement: o.placement, stopRunning: o.stopRunning, timeoutMs: o.timeoutMs ?? 0, ...(o.placeLost ? { placeLost: o.placeLost } : {}), ...(o.discardDisks ? { discardDisks: true } : {}) });
    const { done, elapsedMs } = await followOperation(ctx, c, stream, `restore of snapshot ${id}`, () => `vnsnap snapshot show ${id} (its VNE), then vnsnap vne show VNE; or vnsnap events`);
    if (ctx.json) return EXIT.OK;
    if (!done) {
      ctx.io.out(`\nrestored snapshot ${id} in ${formatMs(elapsedMs)}\n`);
      return EXIT.OK;
    }
    ctx.io.out(`\nrestored snapshot ${done.id} of VNE ${done.vne} (epoch ${done.epoch}, ${done.vms.length} VMs) in ${formatMs(elapsedMs)}\n`);
    try {
      const v = await c.getVne(done.vne);
      ctx.io.out(renderVne(v));
    } catch {
      // The restore succeeded; the VNE's new placement is a nicety.
    }
    return EXIT.OK;
  });
}

export async function events(ctx: Ctx, vne: string): Promise<ExitCode> {
  return withClient(ctx, async (c) => {
    const stream = c.watchEvents(vne);
    let interrupted = false;
    const off = ctx.io.onInterrupt(() => {
      interrupted = true;
      stream.cancel();
    });
    try {
      await new Promise<void>((resolve, reject) => {
        stream.on('data', (e: Event__Output) => {
          ctx.io.out(ctx.json ? JSON.stringify(toJson('vnsnap.v1.Event', e)) + '\n' : renderEvent(e));
        });
        stream.on('error', (e) => (interrupted ? resolve() : reject(c.toCliError(e, 'watch events'))));
        stream.on('end', () => resolve());
      });
    } finally {
      off();
    }
    return EXIT.OK;
  });
}
