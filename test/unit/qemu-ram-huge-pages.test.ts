/**
 * Guest RAM back on huge pages before a background cut (agent/drivers/qemu/ram-huge-pages.ts):
 * which mappings of a QEMU are its guest RAM, which are asked for, and the program that asks.
 */
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { collapseGuestRam, collapseProgram, guestRamRanges } from '../../agent/drivers/qemu/ram-huge-pages';

const MiB = 1024 * 1024;

/** One smaps block: header, a few keys, VmFlags. */
function block(range: string, perms: string, file: string, hugeKib: number, flags: string): string {
  return [`${range} ${perms} 00000000 00:00 0 ${file}`.trimEnd(), 'Size:             131080 kB', `AnonHugePages:  ${String(hugeKib).padStart(8)} kB`, `VmFlags: ${flags}`].join('\n');
}

// A QEMU under TCG: its 128 MiB + 8 KiB of guest RAM, TCG's code buffer (hg, executable), the
// heap, a 256 KiB ROM (hg dc but smaller than a huge page), a file mapping.
const SMAPS = [
  block('555ce5be4000-555ce69d7000', 'rw-p', '[heap]', 0, 'rd wr mr mw me ac'),
  block('7fc793e00000-7fc79be02000', 'rw-p', '', 51200, 'rd wr mr mw me dc ac hg mg'),
  block('7fc79c000000-7fc7dbfff000', 'rwxp', '', 45056, 'rd wr ex mr mw me ac hg'),
  block('7fc7e2e00000-7fc7e2e40000', 'rw-p', '', 0, 'rd wr mr mw me dc ac hg mg'),
  block('7fc7e3000000-7fc7e3400000', 'rw-p', '/usr/lib/x.so', 0, 'rd wr mr mw me dc hg'),
  block('7fc7e3600000-7fc7e3a01000', 'rw-p', '', 0, 'rd wr mr mw me ac'),
].join('\n') + '\n';

const log = { lines: [] as string[], debug(_o: object, msg: string) { this.lines.push(msg); } };

describe('ram-huge-pages: guest RAM mapped huge again before a background cut', () => {
  beforeEach(() => (log.lines = []));

  it('guestRamRanges: only anonymous rw-p mappings marked hg and dc, not executable, cut to whole 2 MiB pages', () => {
    assert.deepEqual(guestRamRanges(SMAPS), [{ start: 0x7fc793e00000n, length: 128 * MiB, hugeBytes: 50 * MiB }]);
  });

  it('guestRamRanges: a start not on a huge page is rounded up, an end rounded down', () => {
    const r = guestRamRanges(block('7fc793e01000-7fc79c001000', 'rw-p', '', 0, 'rd wr dc hg') + '\n');
    assert.deepEqual(r, [{ start: 0x7fc794000000n, length: 128 * MiB, hugeBytes: 0 }]);
  });

  it('collapseGuestRam asks the program for the split ranges only, with the pid and START:LENGTH', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-ut-huge-'));
    try {
      const out = path.join(dir, 'args');
      const prog = path.join(dir, 'collapse');
      fs.writeFileSync(prog, `#!/bin/sh\necho "$@" > ${out}\n`, { mode: 0o755 });
      const r = await collapseGuestRam(4242, log, { program: prog, readSmaps: () => Promise.resolve(SMAPS), env: {} });
      assert.equal(fs.readFileSync(out, 'utf8'), `4242 0x7fc793e00000:${128 * MiB}\n`);
      assert.deepEqual([r.ranges, r.bytes], [1, 128 * MiB]);
      assert.deepEqual(log.lines, []);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('collapseGuestRam starts nothing for a VM whose RAM is all huge, when turned off, or without a pid', async () => {
    const allHuge = SMAPS.replace('AnonHugePages:     51200 kB', `AnonHugePages:    ${128 * 1024} kB`);
    const never = 'the program must not run';
    assert.deepEqual(await collapseGuestRam(4242, log, { program: never, readSmaps: () => Promise.resolve(allHuge), env: {} }), { ranges: 0, bytes: 0, ms: 0 });
    assert.deepEqual(await collapseGuestRam(4242, log, { program: never, readSmaps: () => Promise.resolve(SMAPS), env: { VNSNAP_QEMU_RAM_COLLAPSE: '0' } }), { ranges: 0, bytes: 0, ms: 0 });
    assert.deepEqual(await collapseGuestRam(undefined, log, { program: never, env: {} }), { ranges: 0, bytes: 0, ms: 0 });
    assert.deepEqual(log.lines, []);
  });

  it('collapseGuestRam never rejects: a program missing, smaps unreadable or a refusal is a debug line', async () => {
    const smaps = (): Promise<string> => Promise.resolve(SMAPS);
    assert.equal((await collapseGuestRam(4242, log, { program: null, readSmaps: smaps, env: {} })).ranges, 0);
    assert.equal((await collapseGuestRam(4242, log, { program: '/bin/true', readSmaps: () => Promise.reject(new Error('ENOENT')), env: {} })).ranges, 0);
    assert.equal((await collapseGuestRam(4242, log, { program: '/bin/false', readSmaps: smaps, env: {} })).ranges, 1);
    assert.deepEqual(log.lines, [
      'guest RAM not collapsed to huge pages: vnsnap-thp-collapse not built',
      'guest RAM not collapsed to huge pages: smaps not readable',
      'guest RAM not (all) collapsed to huge pages',
    ]);
  });

  it('vnsnap-thp-collapse: bad arguments exit 2; a range without data is not asked for and reported with 0 bytes asked', async () => {
    const prog = collapseProgram();
    assert.ok(prog, 'vnsnap-thp-collapse is built with the native addon (npm run install)');
    const run = (args: string[]): Promise<{ code: number; out: string }> =>
      new Promise((resolve) => execFile(prog, args, (e, out) => resolve({ code: e ? Number(e.code) : 0, out })));
    assert.equal((await run([String(process.pid)])).code, 2);
    assert.equal((await run([String(process.pid), 'nonsense'])).code, 2);
    assert.equal((await run([String(process.pid), `0x1000:${2 * MiB}`])).code, 2);
    // Page 0 of this process is never mapped: nothing in it to collapse, so nothing is asked.
    const r = await run([String(process.pid), `0x0:${2 * MiB}`]);
    assert.equal(r.code, 0);
    assert.match(r.out, /^0x0 2097152 OK \d+\.\d 0\n$/);
  });
});
