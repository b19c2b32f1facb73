/**
 * bench:vm-net's snapshot loop as one long-lived client of the coordinator: background snapshots
 * of one VNE, each started at least `--every-ms` after the previous one started and never before
 * the previous one ended and was deleted (so a snapshot that takes longer than the interval is
 * followed at once by the next, never overlapped by it).
 *
 * Why a process of its own rather than the `vnsnap` CLI per call: the loop used to run the CLI
 * twice per snapshot (create, then delete), and each run is a Node process start (~0.25 core-s
 * here); on the bench's 2-CPU machine those starts took 0.2 cores, a tenth of the machine, from
 * the guests whose TCP the bench measures during the snapshots — the harness's cost, not
 * vnsnap's (docs/performance.md, "`snapnet`"). An operator taking a snapshot every second holds
 * one connection, as this does (the coordinator's own scheduler takes at most one a minute).
 *
 *   node snapshot-loop.js --coordinator ADDR --ca F --cert F --key F --vne NAME [--every-ms N]
 *
 * Prints one JSON line per snapshot (SnapshotLoopRecord) on stdout, as each ends. Stops when its
 * stdin closes: the snapshot under way ends (and is deleted), then it exits 0. Run it where the
 * coordinator's address is reachable (bench:vm-net: the underlay namespace, like the CLI).
 */
import { CoordinatorClient } from '../../coordinator/cli/client';
import { resolveCredentials } from '../../coordinator/cli/credentials';
import type { Snapshot__Output } from '../../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotEvent__Output } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import { forEachFlag, usageExit } from './args';

/** One snapshot of the loop, as printed. */
export interface SnapshotLoopRecord {
  id: string;
  /** The final state (SNAPSHOT_STATE_COMPLETE or ..._ABORTED), or "" when the call failed. */
  state: string;
  startUnixMs: number;
  /** When the final record arrived (or the call failed). */
  doneUnixMs: number;
  /** When the delete of a complete snapshot returned (0: not deleted). */
  deletedUnixMs: number;
  pausesMs: number[];
  error: string;
}

const NAME = 'snapshot-loop';
const USAGE = 'usage: node snapshot-loop.js --coordinator ADDR --ca F --cert F --key F --vne NAME [--every-ms N]';

interface Options {
  coordinator: string;
  ca: string;
  cert: string;
  key: string;
  vne: string;
  everyMs: number;
}

function parseArgs(argv: readonly string[]): Options {
  const o: Partial<Options> = { everyMs: 1000 };
  const usage = (msg: string): never => usageExit(NAME, USAGE, msg);
  forEachFlag(argv, usage, (flag, value, arg) => {
    if (flag === '--coordinator') o.coordinator = value();
    else if (flag === '--ca') o.ca = value();
    else if (flag === '--cert') o.cert = value();
    else if (flag === '--key') o.key = value();
    else if (flag === '--vne') o.vne = value();
    else if (flag === '--every-ms') {
      const n = Number(value());
      if (!Number.isInteger(n) || n < 0) usage('--every-ms wants an integer >= 0');
      o.everyMs = n;
    } else usage(`unknown argument ${arg}`);
  });
  for (const k of ['coordinator', 'ca', 'cert', 'key', 'vne'] as const) if (!o[k]) usage(`--${k} is required`);
  return o as Options;
}

/** One background snapshot of `vne`, followed to its final record. */
function takeSnapshot(c: CoordinatorClient, vne: string): Promise<Snapshot__Output> {
  return new Promise((resolve, reject) => {
    let done: Snapshot__Output | undefined;
    const stream = c.createSnapshot({ vne, mode: 'SNAPSHOT_MODE_BACKGROUND', precopyDeadlineMs: 0, timeoutMs: 0, description: 'bench:vm-net loop' });
    stream.on('data', (e: SnapshotEvent__Output) => {
      if (e.done) done = e.done;
    });
    stream.on('error', (e) => reject(c.toCliError(e, `snapshot of VNE ${vne}`)));
    stream.on('end', () => (done ? resolve(done) : reject(new Error(`the snapshot stream of VNE ${vne} ended without its final record`))));
  });
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const c = new CoordinatorClient(o.coordinator, resolveCredentials({ ca: o.ca, cert: o.cert, key: o.key }, process.env, o.coordinator));
  let stopping = false;
  let wake: (() => void) | undefined;
  process.stdin.on('end', () => {
    stopping = true;
    wake?.();
  });
  process.stdin.resume();
  try {
    while (!stopping) {
      const r: SnapshotLoopRecord = { id: '', state: '', startUnixMs: Date.now(), doneUnixMs: 0, deletedUnixMs: 0, pausesMs: [], error: '' };
      try {
        const s = await takeSnapshot(c, o.vne);
        Object.assign(r, { id: s.id, state: s.state, pausesMs: s.vms.map((v) => v.pauseMs), error: s.error ?? '' });
        r.doneUnixMs = Date.now();
        if (s.state === 'SNAPSHOT_STATE_COMPLETE') {
          await c.deleteSnapshot(s.id);
          r.deletedUnixMs = Date.now();
        }
      } catch (e) {
        r.doneUnixMs ||= Date.now();
        r.error = (e as Error).message;
      }
      process.stdout.write(JSON.stringify(r) + '\n');
      const wait = o.everyMs - (Date.now() - r.startUnixMs);
      // kept: the pacing of the loop (one snapshot per interval), ended early by a stop
      if (wait > 0 && !stopping) {
        await new Promise<void>((res) => {
          const t = setTimeout(res, wait);
          wake = () => {
            clearTimeout(t);
            res();
          };
        });
      }
    }
  } finally {
    c.close();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${NAME}: ${(e as Error).message}\n`);
  process.exit(1);
});
