/**
 * Disaster recovery of the catalog (`vnsnap-coordinator --rebuild-catalog`, docs/storage.md
 * "Rebuilding the catalog"): the manifests in the store are the truth. After the coordinator's
 * disk is lost, this reads every manifest in the store (snapshots/<id>/manifest*), checks each
 * (its envelope's checksum and format: proto/artefacts/manifest.ts), and inserts the snapshots
 * and the VNE definitions they carry into a fresh catalog.
 *
 * Guarantees:
 *   - A catalog that already holds snapshots is refused (ERR_FAILED_PRECONDITION saying how many
 *     and which the store would overwrite) unless `force`; with force, the snapshots the store
 *     has replace the catalog's rows of the same id, the others stay.
 *   - A manifest that does not parse, fails its checksum, is of a newer format, or names another
 *     snapshot than its directory is skipped and reported (one line naming it); the others are
 *     inserted. Nothing is written to the store.
 *   - Each VNE comes back DEFINED (nothing runs until it is started or restored) with the
 *     definition of its newest snapshot, its epoch at the highest of its snapshots (the next
 *     snapshot's epoch is higher than every restored one's) and generation likewise; a VNE the
 *     catalog already has is left as it is; a VNE whose VNI another VNE already uses is
 *     reported and its snapshots skipped.
 *   - All inserts are one transaction: the catalog has all of them or none.
 */
import { VnsnapError } from '../proto/core/errors';
import { decodeManifest, MANIFEST_MAX_BYTES } from '../proto/artefacts/manifest';
import type { SnapshotStore } from '../proto/store/snapshot-store';
import type { ManifestBody__Output } from '../proto/gen/vnsnap/v1/ManifestBody';
import type { Vne__Output } from '../proto/gen/vnsnap/v1/Vne';
import type { Catalog } from './catalog';
import { snapshotStorePrefix } from './snapshot-sequencer';
import { placementOf } from './vne-config';

/** snapshots/<id>/manifest.pb (or any manifest* name there): what the sequencer writes. */
const MANIFEST_PATH = /^snapshots\/([^/]+)\/manifest[^/]*$/;

export interface RebuildReport {
  /** Snapshot ids inserted, in the order of their creation. */
  snapshots: string[];
  /** The VNEs of those snapshots. */
  vnes: string[];
  /** The VNEs inserted (a VNE the catalog had already is left as it is). */
  newVnes: string[];
  /** Manifests skipped: path and why. */
  problems: { path: string; problem: string }[];
  /** Snapshot ids the catalog had that were replaced (force). */
  replaced: string[];
}

interface Found {
  path: string;
  body: ManifestBody__Output;
}

/** Read and check every manifest of the store; problems for the ones that fail. */
async function readManifests(store: Pick<SnapshotStore, 'list' | 'get' | 'stat'>): Promise<{ found: Found[]; problems: RebuildReport['problems'] }> {
  const found: Found[] = [];
  const problems: RebuildReport['problems'] = [];
  for (const path of await store.list('snapshots/')) {
    const m = MANIFEST_PATH.exec(path);
    if (!m) continue;
    try {
      const size = await store.stat(path);
      if (size !== null && size > MANIFEST_MAX_BYTES) throw new VnsnapError('ERR_DATA_LOSS', `${path} is ${size} bytes, more than a manifest can be`);
      const { body } = decodeManifest(await store.get(path), path);
      if (body.snapshotId !== m[1]) throw new VnsnapError('ERR_DATA_LOSS', `${path} names snapshot ${body.snapshotId}, not ${m[1]}`);
      if (!body.vne?.name) throw new VnsnapError('ERR_DATA_LOSS', `${path} carries no VNE definition`);
      found.push({ path, body });
    } catch (e) {
      problems.push({ path, problem: (e as Error).message });
    }
  }
  found.sort((a, b) => Number(a.body.createdUnixMs) - Number(b.body.createdUnixMs) || a.body.epoch - b.body.epoch);
  return { found, problems };
}

/** The VNE record to insert: the newest snapshot's definition, DEFINED, epoch and generation past every snapshot's. */
function vneOf(list: readonly Found[], now: number): Vne__Output {
  const newest = list[list.length - 1] as Found;
  const def = newest.body.vne as Vne__Output;
  const epoch = Math.max(...list.map((f) => f.body.epoch));
  const generation = Math.max(...list.map((f) => Number(f.body.vne?.generation ?? 0)), 1);
  const v: Vne__Output = { ...def, vmStatus: [], fenced: [], stateReason: '', state: 'VNE_STATE_DEFINED', epoch, generation, createdUnixMs: Number(def.createdUnixMs) || now, updatedUnixMs: now, placement: {} };
  v.placement = placementOf({ ...v, placement: def.placement ?? {} });
  return v;
}

/** Rebuild `catalog` from the manifests in `store` (see the module comment). */
export async function rebuildCatalog(catalog: Catalog, store: Pick<SnapshotStore, 'list' | 'get' | 'stat'>, opts: { force?: boolean; now?: number } = {}): Promise<RebuildReport> {
  const now = opts.now ?? Date.now();
  const { found, problems } = await readManifests(store);
  const have = new Set(catalog.listSnapshots().map((s) => s.id));
  const replaced = found.map((f) => f.body.snapshotId).filter((id) => have.has(id));
  if (have.size > 0 && !opts.force) {
    const over = replaced.length > 0 ? `; the store would overwrite ${replaced.length} of them (${replaced.slice(0, 5).join(', ')}${replaced.length > 5 ? ', ...' : ''})` : '; the store has none of them';
    throw new VnsnapError('ERR_FAILED_PRECONDITION', `the catalog already holds ${have.size} snapshot${have.size === 1 ? '' : 's'}${over}: rebuild into an empty catalog, or pass --force to replace those with what the store's manifests say`);
  }
  const byVne = new Map<string, Found[]>();
  for (const f of found) {
    const name = (f.body.vne as Vne__Output).name;
    byVne.set(name, [...(byVne.get(name) ?? []), f]);
  }
  const report: RebuildReport = { snapshots: [], vnes: [], newVnes: [], problems, replaced };
  catalog.tx(() => {
    for (const [name, list] of byVne) {
      if (!catalog.getVne(name)) {
        const v = vneOf(list, now);
        const clash = catalog.vneByVni(v.vni);
        if (clash) {
          for (const f of list) problems.push({ path: f.path, problem: `VNE ${name} has VNI ${v.vni}, which VNE ${clash.name} of the catalog uses: skipped` });
          continue;
        }
        catalog.insertVne(v);
        report.newVnes.push(name);
      }
      report.vnes.push(name);
      for (const f of list) {
        const b = f.body;
        if (have.has(b.snapshotId)) catalog.deleteSnapshot(b.snapshotId);
        catalog.insertSnapshot({
          id: b.snapshotId,
          vne: name,
          epoch: b.epoch,
          generation: Number(b.vne?.generation ?? 0),
          mode: b.mode,
          description: b.description,
          storePrefix: snapshotStorePrefix(b.snapshotId),
          agents: [...new Set(b.vms.map((vm) => vm.host))].sort(),
          vneDefinition: b.vne as Vne__Output,
          createdUnixMs: Number(b.createdUnixMs),
        });
        catalog.completeSnapshot(b.snapshotId, {
          completedUnixMs: Number(b.completedUnixMs),
          manifestPath: f.path,
          artefacts: b.artefacts,
          vms: b.vms,
          lostFrames: 0,
          sizeBytes: b.artefacts.reduce((n, a) => n + Number(a.size), 0),
        });
        report.snapshots.push(b.snapshotId);
      }
    }
  });
  return report;
}

/** What --rebuild-catalog prints: what it did, then one line per problem. */
export function describeRebuild(r: RebuildReport, where: { db: string; store: string }): string {
  const n = r.snapshots.length;
  const vnes = new Set(r.vnes);
  let out = `rebuilt the catalog ${where.db} from ${where.store}: ${n} snapshot${n === 1 ? '' : 's'} of ${vnes.size} VNE${vnes.size === 1 ? '' : 's'}${vnes.size ? ` (${[...vnes].join(', ')})` : ''}`;
  if (r.replaced.length) out += `, ${r.replaced.length} replaced`;
  out += `; ${r.problems.length} manifest${r.problems.length === 1 ? '' : 's'} with problems\n`;
  for (const p of r.problems) out += `  skipped ${p.path}: ${p.problem}\n`;
  return out;
}
