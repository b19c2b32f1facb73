/**
 * What the tests of tracked memory with real guests share (docs/incremental-memory.md): whether
 * this machine can run it, the guest built before them (skipped where it cannot run), a
 * content-addressed store in a local directory, and a view of one whose block images count the
 * bytes put into them, by artefact path (what a tracked capture read and handed to the store,
 * before deduplication: a full capture puts the whole RAM even where its blocks are equal).
 */
import * as fs from 'node:fs';
import { CasStore } from '../../proto/store/cas-store';
import { LocalObjects } from '../../proto/store/local-objects';
import type { BlockImageOptions, BlockImageWriter, SnapshotStore } from '../../proto/store/snapshot-store';
import { nativeIo } from '../../switch/native-io';
import { buildGuest, ensureQemu, type GuestImage } from '../guest/qemu-guest';

/** Whether this machine can run tracked memory at all (root, Linux 6.7 or later). */
export const trackable = (): boolean => process.getuid?.() === 0 && nativeIo().uffdWriteTrackingAvailable();

/** In a suite's before(): skip where tracked memory cannot run; else QEMU checked, the test guest built, `dir` made. */
export function trackedGuest(ctx: Mocha.Context, dir: string): GuestImage {
  if (!trackable()) ctx.skip();
  ctx.timeout(25 * 60_000);
  ensureQemu();
  const image = buildGuest();
  fs.mkdirSync(dir, { recursive: true });
  return image;
}

export async function casStore(dir: string): Promise<CasStore> {
  const objects = new LocalObjects(dir);
  await objects.init();
  return new CasStore(objects);
}

/** A store whose block images count the bytes put into them (by artefact path). */
export function countingStore(inner: CasStore): { store: SnapshotStore; put: Map<string, number> } {
  const put = new Map<string, number>();
  const store = Object.create(inner) as SnapshotStore;
  store.createBlockImage = async (relPath: string, o: BlockImageOptions): Promise<BlockImageWriter> => {
    const w = await inner.createBlockImage(relPath, o);
    put.set(relPath, 0);
    return {
      path: w.path,
      putBlock: (i, d) => {
        put.set(relPath, (put.get(relPath) ?? 0) + d.length);
        return w.putBlock(i, d);
      },
      putNamedBlock: (i, d, sha) => {
        put.set(relPath, (put.get(relPath) ?? 0) + d.length);
        return w.putNamedBlock(i, d, sha);
      },
      setTail: (d) => w.setTail(d),
      commit: () => w.commit(),
      abort: () => w.abort(),
    };
  };
  return { store, put };
}
