/**
 * Running the in-kernel data path's programs (switch/bpf/vnsnap-dp.bpf.c) on test frames with
 * BPF_PROG_TEST_RUN, for the unit tests of its rules: the object `npm install` built, loaded and
 * pinned by the agent's loader under a test prefix, its maps opened with DataPathMaps, its
 * programs opened by their pins. The test runs never reach a device: ifindexes are only names
 * in the maps, and a redirect is seen as its return code (and, for a punt, the header in front).
 *
 * Guarantees: close() closes every fd and removes the pins, also after a failed test; run()
 * returns the program's return code and the frame as the program left it.
 */
import { loadDataPath, unloadDataPath, type DpProgram, type LoadedDataPath } from '../../agent/bpf-dp/loader';
import { DataPathMaps } from '../../switch/bpf-dp/maps';
import { nativeIo } from '../../switch/native-io';

export const TC_ACT_OK = 0;
export const TC_ACT_REDIRECT = 7;

/** A struct __sk_buff for BPF_PROG_TEST_RUN: ingress_ifindex, cb[0..], gso_segs, gso_size. */
export function skbCtx(o: { ingressIfindex?: number; cb?: number[]; gsoSegs?: number; gsoSize?: number }): Buffer {
  const b = Buffer.alloc(192);
  b.writeUInt32LE(o.ingressIfindex ?? 0, 36);
  (o.cb ?? []).forEach((v, i) => b.writeUInt32LE(v >>> 0, 48 + 4 * i));
  b.writeUInt32LE(o.gsoSegs ?? 0, 164);
  b.writeUInt32LE(o.gsoSize ?? 0, 176);
  return b;
}

export interface DpHarness {
  dp: LoadedDataPath;
  maps: DataPathMaps;
  run(prog: DpProgram, data: Buffer, ctx: Buffer): { retval: number; out: Buffer };
  /** The program counters (vn_stats) that `f` changed, by how much. */
  delta(f: () => void): Record<string, number>;
  close(): Promise<void>;
}

export async function openDpHarness(prefix: string): Promise<DpHarness> {
  const io = nativeIo();
  const dp = await loadDataPath(prefix);
  const fds: number[] = [];
  let maps: DataPathMaps | undefined;
  const close = async (): Promise<void> => {
    for (const fd of fds.splice(0)) io.close(fd);
    maps?.close();
    await unloadDataPath(prefix);
  };
  try {
    const m = (maps = new DataPathMaps(dp.mapsDir));
    const progs = new Map<DpProgram, number>();
    for (const p of ['vn_tx', 'vn_rx_test'] as const) {
      const fd = io.bpfObjGet(dp.prog(p));
      fds.push(fd);
      progs.set(p, fd);
    }
    return {
      dp,
      maps: m,
      run: (prog, data, ctx) => {
        const fd = progs.get(prog);
        if (fd === undefined) throw new Error(`program ${prog} not opened`);
        const out = Buffer.alloc(data.length + 64);
        const r = io.bpfProgTestRun(fd, data, ctx, out);
        return { retval: r.retval, out: out.subarray(0, r.size) };
      },
      delta: (f) => {
        const before = m.stats();
        f();
        const after = m.stats();
        return Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - before[k as keyof typeof before]]).filter(([, v]) => v !== 0));
      },
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/**
 * Mocha hooks for a suite that runs the programs: a harness opened under `prefix` before the
 * suite's tests (then `onOpen`, e.g. to set the devices), closed after them even when a test
 * failed. The returned function gives the open harness.
 */
export function dpHarnessHooks(prefix: string, onOpen: (h: DpHarness) => void = () => undefined): () => DpHarness {
  let h: DpHarness | undefined;
  before(async () => {
    h = await openDpHarness(prefix);
    onOpen(h);
  });
  after(async () => {
    await h?.close();
  });
  return () => {
    if (!h) throw new Error('the data path harness is not open');
    return h;
  };
}
