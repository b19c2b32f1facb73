/**
 * vnsnap-thp-collapse (agent/native/thp-collapse.c) on a real process and the running kernel:
 * of a process's anonymous memory, only the 2 MiB pages that hold data of its own become huge
 * pages; those whose small pages are all unpopulated or map the shared zero page (what a QEMU
 * background snapshot leaves of guest RAM the guest never wrote) stay as they are, so that the
 * collapse ahead of a background cut never makes untouched guest RAM resident.
 *
 * The process is a python3 child (setup.sh installs it) mapping 12 MiB of private anonymous
 * memory, 4 KiB pages first (MADV_NOHUGEPAGE), then MADV_HUGEPAGE. Of the 2 MiB pages 0–7 given
 * to the program: 0 and 3 only read (zero page), 1 with one written byte, 2 written whole, 4–7
 * never touched. Needs root and Linux >= 6.1 (MADV_COLLAPSE); skipped on an older kernel. The
 * child is killed in after(), also when a test fails.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { collapseProgram } from '../../agent/drivers/qemu/ram-huge-pages';
import { spawnProc } from '../../agent/drivers/exec';

const HUGE = 2 * 1024 * 1024;

const CHILD = `
import mmap, ctypes, sys
H = ${HUGE}
m = mmap.mmap(-1, 12 * H, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
off = (-addr) % H
m.madvise(mmap.MADV_NOHUGEPAGE)
s = 0
for o in range(off, off + 4 * H, 4096):
    s += m[o]
m[off + H + 100] = 1
m[off + 2 * H:off + 3 * H] = b'\\x07' * H
m.madvise(mmap.MADV_HUGEPAGE)
print(hex(addr + off), flush=True)
sys.stdin.read()
`;

function kernelHasCollapse(): boolean {
  const [major, minor] = os.release().split('.').map((n) => parseInt(n, 10));
  return (major ?? 0) > 6 || ((major ?? 0) === 6 && (minor ?? 0) >= 1);
}

/** AnonHugePages (bytes) of the mapping of `pid` that starts at or contains `base`. */
function anonHuge(pid: number, base: bigint): number {
  for (const block of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) /.exec(block);
    if (!head || BigInt(`0x${head[1]}`) > base || BigInt(`0x${head[2]}`) <= base) continue;
    return Number(/^AnonHugePages:\s+(\d+) kB/m.exec(block)?.[1] ?? NaN) * 1024;
  }
  throw new Error(`no mapping of ${pid} holds 0x${base.toString(16)}`);
}

describe('vnsnap-thp-collapse (real process, running kernel)', function () {
  this.timeout(30_000);
  let child: ChildProcess | undefined;

  after(() => {
    child?.kill('SIGKILL');
  });

  it('collapses the 2 MiB pages with data of the process own, never the zero-page or untouched ones', async function () {
    if (!kernelHasCollapse()) this.skip();
    const program = collapseProgram();
    assert.ok(program, 'vnsnap-thp-collapse is built with the native addon (npm install)');
    child = spawn('python3', ['-c', CHILD], { stdio: ['pipe', 'pipe', 'inherit'] });
    const pid = child.pid as number;
    const base = await new Promise<bigint>((resolve, reject) => {
      let out = '';
      child?.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve(BigInt(out.trim()));
      });
      child?.once('exit', (code) => reject(new Error(`python3 child exited (${code}) before mapping its memory`)));
    });
    // No check of the pages before: khugepaged may already have collapsed pages 1 and 2 on its own
    // (MADV_HUGEPAGE registers the process with it), which changes nothing below.
    const res = await spawnProc(program, [String(pid), `0x${base.toString(16)}:${8 * HUGE}`], { timeoutMs: 10_000 }).exited;
    const fields = res.stdout.trim().split(' ');
    assert.equal(res.code, 0, res.output);
    assert.deepEqual([fields[0], fields[1], fields[2], fields[4]], [`0x${base.toString(16)}`, String(8 * HUGE), 'OK', String(2 * HUGE)]);
    assert.equal(anonHuge(pid, base), 2 * HUGE, 'after: the two 2 MiB pages with data, nothing else');
  });

  it('refuses a range that is not in whole 2 MiB pages', async function () {
    const program = collapseProgram();
    assert.ok(program);
    const res = await spawnProc(program, [String(process.pid), `0x200000:${HUGE + 4096}`]).exited;
    assert.equal(res.code, 2);
    assert.match(res.stderr, /not in whole 2 MiB pages/);
  });
});
