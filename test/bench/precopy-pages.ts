/**
 * Reproducer: do pre-copy images equal their VM's RAM at the cut, page for page, with the paced
 * hold applied by the agent's reads (VNSNAP_QEMU_PACE_BY=reads) and by QEMU's max-bandwidth
 * (`bandwidth`)? Many cuts, no restore: each image's RAM is rebuilt from the stream itself.
 *
 * Two test guests under qemu-driver.test.ts's load stream to each other through a Switch. Each cut
 * snapshots both in pre-copy mode (the modes alternate cut by cut, so both see the same machine);
 * the cut comes `--hold-ms` plus up to `--jitter-ms` after both are ready (held, re-syncing), and
 * at the cut (atPause, the VMs stopped) each VM's RAM is dumped with pmemsave. The memory image
 * is then read from the store and parsed (QEMU 7.2's stream: migration-stream.ts): every copy of
 * every page of the block `pc.ram` is found, the last one is what a restore loads, and it is
 * compared with the dump. For a page that differs the evidence goes into the output directory:
 * both versions of the page, every copy of it in the stream (section and position: START is
 * the first pass, PART the iterations, END the final pass with the VM stopped) and the driver's
 * log line of that cut ("pre-copy hold at the cut"). With `--trace sync` QEMU also logs its dirty
 * bitmap syncs, sections and completion, and with `--trace notdirty` every first guest store to
 * a page after a sync (TCG's notdirty path), into `<out>/<instance>.trace`.
 *
 * Usage: node dist/test/bench/precopy-pages.js [--cuts N] [--modes reads,bandwidth] [--hold-ms 1000] [--jitter-ms 500]
 *        [--store cas|files] [--trace sync|notdirty] [--out DIR] [--json]
 * Prints one line per image and, at the end, images and differing pages per mode. Names
 * everything vnqm (work directory /tmp/vnqm-test-<pid>-pages, removed at exit). Root and QEMU needed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { CutReport, SnapshotJob, VmImage } from '../../agent/drivers/driver';
import { QEMU_TRACE_ENV } from '../../agent/drivers/qemu/cmdline';
import { QemuDriver } from '../../agent/drivers/qemu/driver';
import { QEVM_MAGIC, RAM_FLAG, RAM_FLAG_MASK, SEC, u64 } from '../../agent/drivers/qemu/migration-stream';
import { PACE_BY_ENV } from '../../agent/drivers/qemu/precopy-hold';
import { createLogger } from '../../proto/core/log';
import type { SnapshotStore } from '../../proto/store/local-dir';
import { openStore } from '../../proto/store/store-config';
import { Switch } from '../../switch/switch';
import { buildGuest, ensureQemu, guestImageRoots } from '../guest/qemu-guest';
import { PAIR_NAMES, startGuestPair } from '../support/guest-pair';
import { PAGE } from '../support/ram-diff';
import { sleep } from '../support/wait';
import { usageExit, wholeArg } from './args';
import { VNQM_ROOT_PREFIX } from '../support/vnqm-sweep';

/** The RAM block a pmemsave of [0, RAM) reads (below 4 GiB, the guests here have 256 MiB). */
const MAIN_BLOCK = 'pc.ram';
/** The legacy VGA window: MMIO in a dump, not pc.ram (its pc.ram pages are never seen by pmemsave). */
const VGA_WINDOW: [number, number] = [0xa0000, 0xc0000];

/** One copy of a page in the stream. */
export interface PageCopy {
  /** Offset of the page's data (or of its fill byte) in the stream. */
  at: number;
  /** Index of the RAM section it is in (0 = START). */
  section: number;
  zero: boolean;
}

export interface ParsedRam {
  /** RAM sections in stream order: their type (SEC.START / PART / END). */
  sections: number[];
  blocks: Map<string, number>;
  /** Every copy of every page of `block`, by page number. */
  copies: PageCopy[][];
}

/**
 * Every copy of the pages of `block` in a pre-copy stream of QEMU 7.2 (no capabilities), up to
 * the end of the RAM part (the first non-RAM section). Throws on anything else.
 */
export function parseRam(s: Buffer, block: string): ParsedRam {
  if (s.readUInt32BE(0) !== QEVM_MAGIC) throw new Error('not a QEMU migration stream');
  let at = 8;
  const sections: number[] = [];
  const blocks = new Map<string, number>();
  let ramId: number | undefined;
  let copies: PageCopy[][] = [];
  let last: string | undefined;
  const need = (v: number | undefined): number => {
    if (v === undefined) throw new Error(`a u64 beyond 2^53 at ${at}`);
    return v;
  };
  for (;;) {
    const t = s[at] as number;
    if (t === SEC.CONFIGURATION) {
      at += 5 + s.readUInt32BE(at + 1);
      // configuration subsections: 0x05 u8 len name u32 version, then the field(s)
      while (s[at] === SEC.SUBSECTION) {
        const len = s[at + 1] as number;
        const name = s.toString('latin1', at + 2, at + 2 + len);
        at += 2 + len + 4;
        if (name === 'configuration/target-page-bits') at += 4;
        else if (name === 'configuration/uuid') at += 16;
        else if (name === 'configuration/capabilities') {
          if (s.readUInt32BE(at) !== 0) throw new Error('migration capabilities in the stream');
          at += 4;
        } else throw new Error(`configuration subsection ${name}`);
      }
      continue;
    }
    if (t === SEC.START) {
      const len = s[at + 5] as number;
      const name = s.toString('latin1', at + 6, at + 6 + len);
      if (name !== 'ram') break;
      ramId = s.readUInt32BE(at + 1);
      at += 6 + len + 8;
      sections.push(t);
      const total = need(u64(s, at)) - RAM_FLAG.MEM_SIZE;
      at += 8;
      let sum = 0;
      while (sum < total) {
        const l = s[at] as number;
        const n = s.toString('latin1', at + 1, at + 1 + l);
        const length = need(u64(s, at + 1 + l));
        blocks.set(n, length);
        if (n === block) copies = Array.from({ length: Math.ceil(length / PAGE) }, () => []);
        sum += length;
        at += 1 + l + 8;
      }
    } else if (t === SEC.PART || t === SEC.END) {
      if (s.readUInt32BE(at + 1) !== ramId) break;
      sections.push(t);
      at += 5;
    } else break;
    // records up to EOS
    for (;;) {
      const v = need(u64(s, at));
      const flags = v & RAM_FLAG_MASK;
      at += 8;
      if (v === RAM_FLAG.EOS) break;
      if (!(flags & RAM_FLAG.CONTINUE)) {
        const l = s[at] as number;
        last = s.toString('latin1', at + 1, at + 1 + l);
        at += 1 + l;
      }
      const kind = flags & ~RAM_FLAG.CONTINUE;
      if (kind !== RAM_FLAG.ZERO && kind !== RAM_FLAG.PAGE) throw new Error(`RAM record flags 0x${flags.toString(16)} at ${at - 8}`);
      if (last === block) copies[(v - flags) / PAGE]?.push({ at, section: sections.length - 1, zero: kind === RAM_FLAG.ZERO });
      at += kind === RAM_FLAG.ZERO ? 1 : PAGE;
    }
    if (s[at] === SEC.FOOTER) at += 5;
  }
  return { sections, blocks, copies };
}

/** The bytes of one copy. */
function copyBytes(s: Buffer, c: PageCopy): Buffer {
  return c.zero ? Buffer.alloc(PAGE, s[c.at] as number) : s.subarray(c.at, c.at + PAGE);
}

/** Pages (numbers) whose last copy in the stream differs from the dump; pages never sent count as zero. */
export function differingPages(s: Buffer, ram: ParsedRam, dump: Buffer): number[] {
  const out: number[] = [];
  const n = Math.min(ram.copies.length, Math.floor(dump.length / PAGE));
  const zero = Buffer.alloc(PAGE);
  for (let p = 0; p < n; p++) {
    if (p * PAGE >= VGA_WINDOW[0] && p * PAGE < VGA_WINDOW[1]) continue;
    const cs = ram.copies[p] as PageCopy[];
    const c = cs[cs.length - 1];
    const img = c ? copyBytes(s, c) : zero;
    if (img.compare(dump, p * PAGE, (p + 1) * PAGE) !== 0) out.push(p);
  }
  return out;
}

const SEC_NAME: Record<number, string> = { [SEC.START]: 'START', [SEC.PART]: 'PART', [SEC.END]: 'END' };

/** What is known of one differing page: its copies, and how the image's last copy differs from the dump. */
function pageHistory(s: Buffer, ram: ParsedRam, dump: Buffer, p: number): Record<string, unknown> {
  const cs = ram.copies[p] as PageCopy[];
  const want = dump.subarray(p * PAGE, (p + 1) * PAGE);
  const last = cs[cs.length - 1];
  const img = last ? copyBytes(s, last) : Buffer.alloc(PAGE);
  let bytes = 0;
  let first = -1;
  for (let i = 0; i < PAGE; i++) {
    if (img[i] !== want[i]) {
      bytes++;
      if (first < 0) first = i;
    }
  }
  return {
    page: `0x${(p * PAGE).toString(16)}`,
    sections: ram.sections.length,
    copies: cs.map((c) => ({ section: c.section, kind: SEC_NAME[ram.sections[c.section] as number], at: c.at, zero: c.zero, equalsDump: copyBytes(s, c).equals(want) })),
    bytesDiffering: bytes,
    firstDifferingByte: first,
    dumpAt: first >= 0 ? want.subarray(first, first + 16).toString('hex') : '',
    imageAt: first >= 0 ? img.subarray(first, first + 16).toString('hex') : '',
  };
}

async function readAll(store: SnapshotStore, rel: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of store.read(rel)) parts.push(Buffer.from(b));
  return Buffer.concat(parts);
}

interface ImageResult {
  cut: number;
  mode: string;
  vm: string;
  pages: number;
  spreadMs: number;
  convergedInRound?: boolean;
}

const USAGE = `usage: node dist/test/bench/precopy-pages.js [--cuts N] [--modes reads,bandwidth] [--hold-ms MS] [--jitter-ms MS]
       [--store cas|files] [--trace sync|notdirty] [--out DIR] [--json] [--help]
  --cuts N        pre-copy cuts of the guest pair (default 20; two images each), modes alternating
  --modes LIST    the holds to alternate, of reads and bandwidth (default reads,bandwidth)
  --hold-ms MS    each cut this long after both VMs are ready (default 1000), plus up to
  --jitter-ms MS  a random part (default 500)
  --store S       cas (default) or files
  --trace T       QEMU trace events into DIR: sync (dirty-bitmap syncs) or notdirty (also TCG's
                  first store to each page after a sync)
  --out DIR       where differing pages, the driver's log and traces go
  --json          stdout is the summary as one JSON object; the lines per image go to stderr
Needs root, qemu-system-x86_64 and the test guest (built if missing).`;

/** Exit 2 with `precopy-pages: <msg>` and the usage. */
function usage(msg: string): never {
  usageExit('precopy-pages', USAGE, msg);
}

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
    options: {
      cuts: { type: 'string', default: '20' },
      modes: { type: 'string', default: 'reads,bandwidth' },
      store: { type: 'string', default: 'cas' },
      trace: { type: 'string' },
      out: { type: 'string', default: `/var/tmp/vnqm-precopy-pages-${process.pid}` },
      'hold-ms': { type: 'string', default: '1000' },
      'jitter-ms': { type: 'string', default: '500' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  } catch (e) {
    usage((e as Error).message);
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  /** A line of the report: stdout, or stderr under --json (stdout is then the one summary object). */
  const say = (line: string): void => {
    (values.json ? process.stderr : process.stdout).write(`${line}\n`);
  };
  const cuts = wholeArg('--cuts', String(values.cuts), 1, usage);
  const holdMs = wholeArg('--hold-ms', String(values['hold-ms']), 0, usage);
  const jitterMs = wholeArg('--jitter-ms', String(values['jitter-ms']), 0, usage);
  const modes = String(values.modes).split(',');
  for (const m of modes) if (m !== 'reads' && m !== 'bandwidth') usage(`--modes: expected reads and/or bandwidth, got ${JSON.stringify(m)}`);
  if (values.store !== 'cas' && values.store !== 'files') usage(`--store: expected cas or files, got ${JSON.stringify(values.store)}`);
  if (values.trace !== undefined && values.trace !== 'sync' && values.trace !== 'notdirty') usage(`--trace: expected sync or notdirty, got ${JSON.stringify(values.trace)}`);
  const out = String(values.out);
  fs.mkdirSync(out, { recursive: true });
  if (values.trace !== undefined) process.env[QEMU_TRACE_ENV] = out;
  ensureQemu();
  const image = buildGuest();
  const root = `${VNQM_ROOT_PREFIX}${process.pid}-pages`;
  fs.mkdirSync(root, { recursive: true });
  const store = await openStore({ kind: values.store === 'files' ? 'files' : 'local', dir: path.join(root, 'store') });
  const logFd = fs.openSync(path.join(out, 'driver.log'), 'a');
  const log = createLogger('vnqm-pages', { level: 'info', destination: logFd });
  const driver = new QemuDriver({ workDir: path.join(root, 'w'), imageRoots: guestImageRoots(image, root) });
  const sw = new Switch({ id: 'vnqm' });
  const results: ImageResult[] = [];
  let closing = false;
  const cleanup = async (): Promise<void> => {
    if (closing) return;
    closing = true;
    await driver.close().catch(() => undefined);
    sw.stop();
    fs.rmSync(root, { recursive: true, force: true });
  };
  // A signal ends the run after the cut under way (its jobs finish, then the summary); a second one at once.
  let stopping = false;
  const onSignal = (): void => {
    if (stopping) void cleanup().then(() => process.exit(130));
    stopping = true;
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const t0 = new Date();
  try {
    sw.configureVne({ name: 'vnqm', vni: 77 });
    sw.start();
    await startGuestPair({ driver, sw, image, root, vne: 'vnqm', net: 77, rateKiB: 2048, log });
    if (values.trace !== undefined) {
      const events = ['migration_bitmap_sync_start', 'migration_bitmap_sync_end', 'migrate_pending', 'migration_completion_vm_stop', 'migration_thread_low_pending'];
      if (values.trace === 'notdirty') events.push('memory_notdirty_write_access', 'memory_notdirty_set_dirty');
      for (const n of PAIR_NAMES) for (const name of events) await driver.execute(`vnqm/${n}`, 'trace-event-set-state', { name, enable: true });
    }
    for (let k = 1; k <= cuts && !stopping; k++) {
      const mode = modes[(k - 1) % modes.length] as string;
      process.env[PACE_BY_ENV] = mode;
      const prefix = `snapshots/${k}/`;
      const jobs: SnapshotJob[] = [];
      for (const n of PAIR_NAMES) jobs.push(await driver.snapshot(`vnqm/${n}`, { snapshotId: `pages-${k}`, epoch: k, mode: 'precopy', store, prefix }));
      const dumps = new Map<string, string>();
      let imgs: VmImage[];
      let reports: CutReport[];
      try {
        await Promise.all(jobs.map((j) => j.ready));
        // Held as in qemu-driver.test.ts (its status samples take about a second), so the hold re-syncs before the cut.
        await sleep(holdMs + Math.random() * jitterMs);
        reports = await Promise.all(
          jobs.map(async (j, i) => {
            const n = PAIR_NAMES[i] as string;
            const rep = await sw.cutPorts([`vnqm/${n}/0`], k, (pass) =>
              j.cut(async () => {
                await pass();
                const f = path.join(root, `cut-${n}.bin`);
                await driver.pmemsave(`vnqm/${n}`, f);
                dumps.set(n, f);
              }),
            );
            return rep as CutReport;
          }),
        );
        imgs = await Promise.all(jobs.map((j) => j.durable()));
      } catch (e) {
        await Promise.allSettled(jobs.map((j) => j.abort()));
        throw e;
      }
      await sw.channelState('vnqm', k, 10_000).catch(() => undefined);
      const spread = (Math.max(...reports.map((r) => r.cutUnixUs)) - Math.min(...reports.map((r) => r.cutUnixUs))) / 1000;
      for (const [i, n] of PAIR_NAMES.entries()) {
        const img = imgs[i] as VmImage;
        const s = await readAll(store, img.memory.path);
        const dumpFile = dumps.get(n) as string;
        const dump = fs.readFileSync(dumpFile);
        const ram = parseRam(s, MAIN_BLOCK);
        const diff = differingPages(s, ram, dump);
        if (k === 1 && i === 0) say(`RAM blocks (pages; * = a multiple of 64 pages, QEMU 7.2's word-at-a-time dirty sync): ${[...ram.blocks].map(([b, len]) => `${b} ${len / PAGE}${(len / PAGE) % 64 === 0 ? '*' : ''}`).join(', ')}`);
        results.push({ cut: k, mode, vm: n, pages: diff.length, spreadMs: spread });
        const line = `cut ${k} ${mode} ${n}: ${diff.length} page(s) differ, ${ram.sections.length} RAM sections, spread ${spread.toFixed(1)} ms, pause ${(reports[i] as CutReport).pauseMs.toFixed(1)} ms${diff.length ? `: ${diff.slice(0, 8).map((p) => `0x${(p * PAGE).toString(16)}`).join(' ')}` : ''}`;
        say(line);
        if (diff.length) {
          const ev = path.join(out, `cut${k}-${n}`);
          fs.mkdirSync(ev, { recursive: true });
          const hist = diff.slice(0, 16).map((p) => pageHistory(s, ram, dump, p));
          fs.writeFileSync(path.join(ev, 'pages.json'), JSON.stringify({ cut: k, mode, vm: n, utc: new Date().toISOString(), blocks: Object.fromEntries(ram.blocks), pages: diff.length, history: hist }, null, 1));
          for (const p of diff.slice(0, 16)) {
            fs.writeFileSync(path.join(ev, `dump-0x${(p * PAGE).toString(16)}.bin`), dump.subarray(p * PAGE, (p + 1) * PAGE));
            const cs = ram.copies[p] as PageCopy[];
            cs.forEach((c, j) => fs.writeFileSync(path.join(ev, `image-0x${(p * PAGE).toString(16)}-copy${j}-sec${c.section}.bin`), copyBytes(s, c)));
          }
          say(`  evidence: ${ev}\n${JSON.stringify(hist[0])}`);
        }
        fs.rmSync(dumpFile);
      }
      await store.deleteByPrefix(prefix);
    }
  } finally {
    await cleanup();
    store.close?.();
  }
  const byMode = modes.map((m) => {
    const r = results.filter((x) => x.mode === m);
    return { mode: m, images: r.length, failing: r.filter((x) => x.pages > 0).length, pages: r.reduce((a, x) => a + x.pages, 0) };
  });
  const summary = { from: t0.toISOString(), to: new Date().toISOString(), store: values.store, byMode };
  console.log(values.json ? JSON.stringify(summary) : byMode.map((m) => `${m.mode}: ${m.images} images, ${m.failing} differing, ${m.pages} page(s)`).join('\n'));
}

if (require.main === module) {
  main().then(
    () => process.exit(0),
    (e: unknown) => {
      console.error(`precopy-pages: ${e instanceof Error ? e.message : String(e)}`);
      if (process.env.VNSNAP_DEBUG) console.error(e);
      process.exit(1);
    },
  );
}
