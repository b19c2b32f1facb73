/**
 * Following a snapshot or restore as it happens, from the coordinator's SnapshotEvent stream.
 *
 * Three renderers, picked by the caller:
 *  - bars (stdout is a terminal): a cli-progress multibar, one bar per VM, created when the VM's
 *    first event arrives; each shows the VM's current phase, its fraction (or bytes done of
 *    total), and details (pre-copy iteration, dirty rate, the pause in ms once known). State
 *    changes and notes are logged above the bars.
 *  - lines (stdout is a pipe or a file): one line per phase change of a VM, per state change of
 *    the operation and per note, stamped with the time since the first event.
 *  - json (--json): every event as one line of proto3 JSON, nothing else.
 * The final record (`done`) is returned to the caller, which prints the summary.
 * cli-progress (16 modules, ~11 ms of CPU) is loaded by the bars alone: a command whose output is
 * a pipe or --json does not load it.
 */
import type * as CliProgress from 'cli-progress';
import type { ClientReadableStream } from '@grpc/grpc-js';
import type { Snapshot__Output } from '../../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotEvent__Output } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import type { VmProgress__Output } from '../../proto/gen/vnsnap/v1/VmProgress';
import { formatBytes, formatMs, shortEnum } from './format';
import type { CliIo } from './io';
import { toJson } from './proto-json';

export type RenderMode = 'bars' | 'lines' | 'json';

export interface Renderer {
  event(e: SnapshotEvent__Output): void;
  /** Called once when the stream ends (either way), before any summary is printed. */
  finish(): void;
}

/** The details of a VM's progress for a person: bytes, iteration, dirty rate, pause. */
export function progressDetail(p: VmProgress__Output): string {
  const parts: string[] = [];
  if (p.bytesTotal > 0) parts.push(`${formatBytes(p.bytesDone)}/${formatBytes(p.bytesTotal)}`);
  else if (p.bytesDone > 0) parts.push(formatBytes(p.bytesDone));
  if (p.iteration > 0) parts.push(`iteration ${p.iteration}`);
  if (p.dirtyRateMibS > 0) parts.push(`dirty ${p.dirtyRateMibS.toFixed(1)} MiB/s`);
  if (p.pauseMs > 0) parts.push(`pause ${formatMs(p.pauseMs)}`);
  return parts.join(', ');
}

/** 0..1 progress within the VM's current phase. */
export function progressFraction(p: VmProgress__Output): number {
  if (p.phaseDone) return 1;
  if (p.fraction > 0) return Math.min(1, p.fraction);
  if (p.bytesTotal > 0) return Math.min(1, p.bytesDone / p.bytesTotal);
  return 0;
}

function vmLabel(p: VmProgress__Output): string {
  return p.host ? `${p.vm}@${p.host}` : p.vm;
}

export class JsonRenderer implements Renderer {
  constructor(private readonly io: CliIo) {}
  event(e: SnapshotEvent__Output): void {
    this.io.out(JSON.stringify(toJson('vnsnap.v1.SnapshotEvent', e)) + '\n');
  }
  finish(): void {}
}

export class LineRenderer implements Renderer {
  private t0: number | undefined;
  private readonly last = new Map<string, string>();

  constructor(private readonly io: CliIo) {}

  private stamp(e: SnapshotEvent__Output): string {
    const t = e.timeUnixMs > 0 ? e.timeUnixMs : this.io.now();
    this.t0 ??= t;
    return `+${((t - this.t0) / 1000).toFixed(3)}s`;
  }

  event(e: SnapshotEvent__Output): void {
    if (e.state !== undefined) {
      this.io.out(`${this.stamp(e)}  state ${shortEnum(e.state)}\n`);
    } else if (e.note !== undefined) {
      this.io.out(`${this.stamp(e)}  note  ${e.note}\n`);
    } else if (e.vm) {
      const p = e.vm;
      const phase = shortEnum(p.phase);
      const key = `${phase}${p.phaseDone ? ' done' : ''}`;
      if (this.last.get(p.vm) === key) return;
      // A "done" event for a phase never announced still shows the phase once.
      this.last.set(p.vm, key);
      const detail = p.phaseDone ? progressDetail(p) : '';
      this.io.out(`${this.stamp(e)}  ${vmLabel(p)}  ${key}${detail ? ` (${detail})` : ''}\n`);
    }
  }

  finish(): void {}
}

interface BarPayload {
  vm: string;
  phase: string;
  detail: string;
}

export class BarRenderer implements Renderer {
  private readonly multibar: CliProgress.MultiBar;
  private readonly bars = new Map<string, CliProgress.SingleBar>();
  private static readonly TOTAL = 1000;

  constructor(io: CliIo) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const cliProgress = require('cli-progress') as typeof CliProgress;
    this.multibar = new cliProgress.MultiBar(
      {
        format: (_opts, params, payload: BarPayload) => {
          const width = 30;
          const filled = Math.round(params.progress * width);
          const bar = '█'.repeat(filled) + '░'.repeat(width - filled);
          return `${payload.vm} ${bar} ${String(Math.round(params.progress * 100)).padStart(3)}%  ${payload.phase.padEnd(8)} ${payload.detail}`;
        },
        stream: io.barStream,
        hideCursor: true,
        clearOnComplete: false,
        stopOnComplete: false,
        fps: 10,
      },
      cliProgress.Presets.shades_classic,
    );
  }

  private bar(p: VmProgress__Output): CliProgress.SingleBar {
    let b = this.bars.get(p.vm);
    if (!b) {
      b = this.multibar.create(BarRenderer.TOTAL, 0, { vm: vmLabel(p).padEnd(16), phase: '', detail: '' } satisfies BarPayload);
      this.bars.set(p.vm, b);
    }
    return b;
  }

  event(e: SnapshotEvent__Output): void {
    if (e.state !== undefined) this.multibar.log(`state ${shortEnum(e.state)}\n`);
    else if (e.note !== undefined) this.multibar.log(`note  ${e.note}\n`);
    else if (e.vm) {
      const p = e.vm;
      const label = vmLabel(p).padEnd(16);
      this.bar(p).update(Math.round(progressFraction(p) * BarRenderer.TOTAL), {
        vm: label,
        phase: shortEnum(p.phase) + (p.phaseDone ? ' ✓' : ''),
        detail: progressDetail(p),
      } satisfies BarPayload);
    }
  }

  finish(): void {
    this.multibar.stop();
  }
}

export function makeRenderer(mode: RenderMode, io: CliIo): Renderer {
  if (mode === 'json') return new JsonRenderer(io);
  if (mode === 'bars') return new BarRenderer(io);
  return new LineRenderer(io);
}

export interface Followed {
  /** The final record, when the stream delivered one. */
  done: Snapshot__Output | undefined;
  /** The id the events carried. */
  snapshotId: string;
}

/**
 * Feed a stream's events to a renderer until it ends. Resolves when it ends normally; rejects
 * with the stream's error (the caller maps it). `cancel` ends it from our side (Ctrl-C).
 */
export function follow(stream: ClientReadableStream<SnapshotEvent__Output>, renderer: Renderer): Promise<Followed> {
  return new Promise((resolve, reject) => {
    let done: Snapshot__Output | undefined;
    let snapshotId = '';
    let settled = false;
    stream.on('data', (e: SnapshotEvent__Output) => {
      if (e.snapshotId) snapshotId = e.snapshotId;
      if (e.done) done = e.done;
      renderer.event(e);
    });
    stream.on('error', (err) => {
      if (settled) return;
      settled = true;
      renderer.finish();
      reject(err);
    });
    stream.on('end', () => {
      if (settled) return;
      settled = true;
      renderer.finish();
      resolve({ done, snapshotId });
    });
  });
}
