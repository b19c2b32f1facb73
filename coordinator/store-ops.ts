/**
 * The operator's store commands on the coordinator's side: verify a snapshot, the store's
 * stats, and garbage collection (docs/storage.md, "Verify" and "Garbage collection"). They run
 * in the coordinator against the one store it opened (server.ts), never on an agent.
 *
 * Guarantees:
 *   - verify re-reads every byte of every artefact the snapshot's manifest lists, through the
 *     store's read() (a content-addressed store checks each chunk's size and SHA-256 as it
 *     arrives), and checks the artefact's size and SHA-256 against the manifest (a block image's
 *     recorded digest is its chunk list's SHA-256: proto/store/artefact-digest.ts). A damaged,
 *     missing or unreadable artefact is a problem naming it (and the chunk, from the store); a
 *     manifest that is missing or fails its checksum is a problem too. The result (ok, or the
 *     problems) and the time are recorded in the catalog. A failure to reach the store
 *     (ERR_UNAVAILABLE, ...) says nothing about the snapshot: it is thrown and nothing is
 *     recorded. Progress is a VmProgress of phase VERIFY for vm "store", bytes done of total.
 *   - one garbage collection at a time per coordinator: a second request while one runs is
 *     ERR_FAILED_PRECONDITION naming who started the first and when (the store's own locks/gc
 *     keeps collections of other processes apart: cas-gc.ts). A store of whole files has nothing
 *     to collect: refused with ERR_FAILED_PRECONDITION saying that delete frees the space.
 *   - stats on a store of whole files: stored = logical, ratio 1, no chunk count.
 */
import { isVnsnapError, VnsnapError } from '../proto/core/errors';
import type { Clock } from '../proto/core/clock';
import type { Logger } from '../proto/core/log';
import { decodeManifest } from '../proto/artefacts/manifest';
import { readDigest, digestIsChunkList } from '../proto/store/artefact-digest';
import { CasStore } from '../proto/store/cas-store';
import { collectGarbage, DEFAULT_GRACE_MS } from '../proto/store/cas-gc';
import { withGcProgress } from './gc-progress';
import { LocalObjects } from '../proto/store/local-objects';
import { S3Objects } from '../proto/store/s3-objects';
import type { SnapshotStore } from '../proto/store/snapshot-store';
import type { Artefact__Output } from '../proto/gen/vnsnap/v1/Artefact';
import type { GcEvent } from '../proto/gen/vnsnap/v1/GcEvent';
import type { GcResult } from '../proto/gen/vnsnap/v1/GcResult';
import type { Snapshot__Output } from '../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotEvent } from '../proto/gen/vnsnap/v1/SnapshotEvent';
import type { StoreStats } from '../proto/gen/vnsnap/v1/StoreStats';
import type { Catalog } from './catalog';
import type { ManifestStore } from './manifest-store';
import { formatBytes, formatMs } from './cli/format';

export interface StoreOpsOptions {
  catalog: Catalog;
  store: SnapshotStore;
  manifests: ManifestStore;
  clock: Clock;
  log: Logger;
}

/** The failures that say an artefact is damaged or gone (not that the store is unreachable). */
const ARTEFACT_PROBLEMS = ['ERR_CHECKSUM', 'ERR_DATA_LOSS', 'ERR_NOT_FOUND', 'ERR_UNSUPPORTED_VERSION'] as const;

const isArtefactProblem = (e: unknown): e is VnsnapError => ARTEFACT_PROBLEMS.some((c) => isVnsnapError(e, c));

/** The kind of a store, as `store stats` names it: files, local, s3 (another backend: the first word of its description). */
export function storeKind(store: SnapshotStore): string {
  if (!(store instanceof CasStore)) return 'files';
  if (store.backend instanceof LocalObjects) return 'local';
  if (store.backend instanceof S3Objects) return 's3';
  return store.backend.describe.split(' ')[0] ?? 'objects';
}

export class StoreOps {
  private gc: { who: string; sinceMs: number } | null = null;

  constructor(private readonly o: StoreOpsOptions) {}

  /** Who runs the garbage collection now, if one runs. */
  get gcRunning(): { who: string; sinceMs: number } | null {
    return this.gc;
  }

  /** The artefacts a COMPLETE snapshot's manifest lists, or the problem with its manifest. */
  private async manifestArtefacts(s: Snapshot__Output): Promise<{ artefacts: Artefact__Output[]; problem?: string }> {
    try {
      const { body } = decodeManifest(await this.o.manifests.read(s.manifestPath), `manifest ${s.manifestPath}`);
      if (body.snapshotId !== s.id) return { artefacts: s.artefacts, problem: `manifest ${s.manifestPath} names snapshot ${body.snapshotId}, not ${s.id}` };
      return { artefacts: body.artefacts };
    } catch (e) {
      if (!isArtefactProblem(e)) throw e;
      // Without its manifest the snapshot cannot be restored; its artefacts are still checked
      // against what the catalog recorded, so the report says what else is wrong.
      return { artefacts: s.artefacts, problem: e.message };
    }
  }

  /**
   * Re-read and check every artefact of snapshot `id`; record and return the result. Events go
   * to sink (progress, one note per problem, the final record).
   */
  async verifySnapshot(id: string, sink: (e: SnapshotEvent) => void): Promise<Snapshot__Output> {
    const { catalog, store, clock } = this.o;
    const s = catalog.getSnapshot(id);
    if (!s) throw new VnsnapError('ERR_NOT_FOUND', `snapshot "${id}" does not exist`);
    if (s.state !== 'SNAPSHOT_STATE_COMPLETE') throw new VnsnapError('ERR_FAILED_PRECONDITION', `snapshot ${id} is ${s.state.replace(/^SNAPSHOT_STATE_/, '').toLowerCase()}: only a complete snapshot can be verified`);
    const t0 = clock.now();
    const emit = (e: Omit<SnapshotEvent, 'snapshotId' | 'timeUnixMs'>): void => sink({ snapshotId: id, timeUnixMs: clock.now(), ...e });
    const { artefacts, problem } = await this.manifestArtefacts(s);
    const problems: string[] = problem ? [problem] : [];
    if (problem) emit({ note: `problem: ${problem}` });
    const total = artefacts.reduce((n, a) => n + Number(a.size), 0);
    emit({ note: `verifying ${artefacts.length} artefacts (${formatBytes(total)}) in the store` });
    let done = 0;
    let shown = -1;
    const progress = (phaseDone: boolean): void => {
      const pct = total > 0 ? Math.floor((done * 100) / total) : 100;
      if (!phaseDone && pct === shown) return;
      shown = pct;
      emit({ vm: { vm: 'store', host: '', phase: 'PHASE_VERIFY', bytesDone: done, bytesTotal: total, fraction: total > 0 ? Math.min(1, done / total) : 1, phaseDone } });
    };
    progress(false);
    for (const a of artefacts) {
      const before = done;
      const p = await this.checkArtefact(store, a, (n) => {
        done += n;
        progress(false);
      });
      done = before + Number(a.size);
      if (p) {
        problems.push(p);
        emit({ note: `problem: ${p}` });
      }
    }
    progress(true);
    const at = clock.now();
    catalog.setVerified(id, at, problems);
    emit({ note: problems.length === 0 ? `verified ${artefacts.length} artefacts (${formatBytes(total)}) in ${formatMs(at - t0)}: ok` : `verified ${artefacts.length} artefacts in ${formatMs(at - t0)}: ${problems.length} problem${problems.length === 1 ? '' : 's'}` });
    this.o.log.info({ snapshot: id, problems }, problems.length === 0 ? 'snapshot verified: ok' : 'snapshot verified: FAILED');
    const rec = catalog.getSnapshot(id) ?? { ...s, verifiedUnixMs: at, verifyProblems: problems };
    emit({ done: rec });
    return rec;
  }

  /** Read one artefact whole; the problem with it (one line naming it), or null. */
  private async checkArtefact(store: SnapshotStore, a: Artefact__Output, read: (bytes: number) => void): Promise<string | null> {
    let size: number;
    let sum: string;
    try {
      // Its digest as the manifest records it: a block image's is its chunk list's SHA-256.
      ({ size, sha256: sum } = await readDigest(store, a, read));
    } catch (e) {
      if (!isArtefactProblem(e)) throw e;
      const m = e.message;
      return m.includes(a.path) ? m : `artefact ${a.path}: ${m}`;
    }
    if (size !== Number(a.size)) return `artefact ${a.path}: ${size} bytes in the store, the manifest says ${a.size}`;
    if (sum !== a.sha256.toLowerCase()) return `artefact ${a.path}: ${digestIsChunkList(a) ? 'chunk list SHA-256' : 'SHA-256'} ${sum} in the store, the manifest says ${a.sha256}`;
    return null;
  }

  /** What the store holds (`vnsnap store stats`). */
  async stats(describe: string): Promise<StoreStats> {
    const { store } = this.o;
    if (store instanceof CasStore) {
      const st = await store.stats();
      return { kind: storeKind(store), store: describe, storedBytes: st.storedBytes, chunks: st.chunks, artefacts: st.artefacts, logicalBytes: st.logicalBytes, dedupRatio: st.dedupRatio };
    }
    let bytes = 0;
    const paths = await store.list('');
    for (const p of paths) bytes += (await store.stat(p)) ?? 0;
    return { kind: 'files', store: describe, storedBytes: bytes, chunks: 0, artefacts: paths.length, logicalBytes: bytes, dedupRatio: 1 };
  }

  /**
   * Free the chunks no artefact names (`vnsnap store gc`), one collection at a time; `who` says
   * who asked (named to a second caller). Notes go to sink; resolves with the result.
   */
  async collectGarbage(graceMs: number | undefined, who: string, sink: (e: GcEvent) => void, describe: string): Promise<GcResult> {
    const { store, clock } = this.o;
    if (!(store instanceof CasStore)) {
      throw new VnsnapError('ERR_FAILED_PRECONDITION', 'the store keeps every artefact as a whole file (layout "files"): there is nothing to collect (deleting a snapshot frees its space at once)');
    }
    if (this.gc) throw new VnsnapError('ERR_FAILED_PRECONDITION', `a garbage collection is already running (started by ${this.gc.who} at ${new Date(this.gc.sinceMs).toISOString()}); try again when it is done`);
    const grace = graceMs ?? DEFAULT_GRACE_MS;
    const t0 = clock.now();
    this.gc = { who, sinceMs: t0 };
    try {
      sink({ timeUnixMs: t0, note: `collecting garbage in ${describe}: chunks no snapshot names and older than ${formatMs(grace)} are freed` });
      // CasStore.gc over a view of its backend that reports progress (gc-progress.ts).
      const r = await collectGarbage(withGcProgress(store.backend, (note) => sink({ timeUnixMs: clock.now(), note })), { graceMs: grace });
      const elapsedMs = clock.now() - t0;
      this.o.log.info({ by: who, ...r, graceMs: grace }, 'garbage collection done');
      const result: GcResult = { chunksDeleted: r.chunksDeleted, bytesFreed: r.bytesFreed, chunksKept: r.chunksKept, indexes: r.indexes, graceMs: grace, elapsedMs };
      sink({ timeUnixMs: clock.now(), done: result });
      return result;
    } finally {
      this.gc = null;
    }
  }

  /** What `snapshot delete` tells the operator about the space. */
  deleteNote(): string {
    return this.o.store instanceof CasStore ? 'its chunks no other snapshot shares are freed by the next `vnsnap store gc`' : '';
  }
}
