/**
 * A content-addressed store over the memory backend on a fake clock, for the unit tests of the
 * store's writer sessions, garbage collection and packs: sleeps step the clock (and run
 * `onSleep`), the lock refresh timers are ticked by hand, and the memory backend stamps objects
 * with the same clock. `rig({ pack })` makes a store that writes packs.
 */
import { strict as assert } from 'node:assert';
import type { GcOptions } from '../../proto/store/cas-gc';
import { STALE_MS } from '../../proto/store/cas-locks';
import { CasStore, type PackOptions } from '../../proto/store/cas-store';
import { failureOf, MemoryObjects } from './memory-objects';

export const KiB = 1024;
export const MIN = 60_000;
/** Small chunks, so that tests of a few hundred KiB make many. */
export const SMALL = { min: 1 * KiB, avg: 4 * KiB, max: 16 * KiB };

export interface Rig {
  now: number;
  objects: MemoryObjects;
  sleeps: number;
  onSleep: () => Promise<void>;
  refreshers: (() => void)[];
  store: CasStore;
  timing: GcOptions;
  /** Another store over the same backend and clock (another process); `pack` null: one writing chunk objects. */
  another: (pack?: PackOptions | null) => CasStore;
}

/** A memory store on a fake clock: sleeps step the clock (and run `onSleep`), timers are ticked by hand. */
export function rig(o: { pack?: PackOptions } = {}): Rig {
  const objects = new MemoryObjects();
  const r: Rig = {
    now: 1_800_000_000_000,
    objects,
    sleeps: 0,
    onSleep: async (): Promise<void> => undefined,
    refreshers: [] as (() => void)[],
    store: undefined as unknown as CasStore,
    timing: {} as GcOptions,
    another: (pack = o.pack) => new CasStore(objects, { chunker: SMALL, concurrency: 3, locks: r.timing, ...(pack ? { pack } : {}) }),
  };
  objects.clock = () => r.now;
  r.timing = {
    clock: () => r.now,
    sleep: async (ms: number) => {
      r.sleeps++;
      r.now += ms;
      await r.onSleep();
    },
    every: (_ms: number, fn: () => void) => {
      r.refreshers.push(fn);
      return () => r.refreshers.splice(r.refreshers.indexOf(fn), 1);
    },
    pollMs: 1000,
  };
  r.store = r.another();
  return r;
}


/**
 * Fail the backend at call k of a garbage collection, for k = 1, 2, … until a run gets through:
 * each time on a fresh `scene()`, check that the failure is the injected one and that `intact`
 * holds, then run again (once the crashed run's lock is stale) and expect the keys a clean run
 * leaves, `expected`. Returns how many runs failed.
 */
export async function failEveryGcStep(scene: () => Promise<{ r: Rig; opts: GcOptions }>, expected: string[], intact: (r: Rig) => Promise<void>): Promise<number> {
  let steps = 0;
  for (let k = 1; ; k++) {
    const { r, opts } = await scene();
    r.objects.failCall(k);
    const got = await failureOf(r.store.gc(opts));
    if (got === 'resolved') {
      assert.deepEqual(r.objects.keys(), expected);
      return steps;
    }
    steps++;
    assert.match(got, /^ERR_UNAVAILABLE: memory: (list|get|head|put|delete) .+ failed \(injected ERR_UNAVAILABLE\)$/);
    r.objects.failCall(0);
    await intact(r);
    r.now += STALE_MS; // a lock a crashed run left goes stale
    await r.store.gc(opts);
    assert.deepEqual(r.objects.keys(), expected, `after a failure at call ${k}: ${got}`);
  }
}
