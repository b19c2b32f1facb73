/**
 * switch/native/ram_read.c readProcessBlocks: a process's memory read in the thread pool with
 * each block's SHA-256. Read from this test's own process by its pid (process_vm_readv on
 * itself): the bytes equal what /proc/self/mem holds at those addresses (the node binary's code,
 * which nothing writes), every digest equals node:crypto's over the bytes left in the buffer —
 * with the SHA extensions and the portable code, at block sizes around SHA-256's 64-byte block
 * and with ranges that do not fall on block boundaries; a read without digests reads alone and
 * sha256Blocks names its blocks afterwards alike; with ownThread the read runs and settles while
 * every pool thread is busy (without it, it waits for one: its timing says when it began) — and a
 * failure rejects with ERR_NATIVE_IO naming the range, a bad argument throws at the call.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { createHash, pbkdf2 } from 'node:crypto';
import * as fs from 'node:fs';
import { nativeIo, type NativeIo } from '../../switch/native-io';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** The largest executable mapping of this process (the node binary's code): [address, length). */
function codeMapping(): { start: number; length: number } {
  let best = { start: 0, length: 0 };
  for (const line of fs.readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    const [range, perms] = line.split(' ');
    if (!range || perms !== 'r-xp') continue;
    const [a, b] = range.split('-').map((h) => Number.parseInt(h, 16)) as [number, number];
    if (b - a > best.length) best = { start: a, length: b - a };
  }
  return best;
}

/** The bytes of this process's memory at the ranges, back to back, through /proc/self/mem. */
function viaProcMem(ranges: number[]): Buffer {
  const fd = fs.openSync('/proc/self/mem', 'r');
  try {
    const parts: Buffer[] = [];
    for (let i = 0; i < ranges.length; i += 2) {
      const b = Buffer.alloc(ranges[i + 1] as number);
      assert.equal(fs.readSync(fd, b, 0, b.length, ranges[i] as number), b.length);
      parts.push(b);
    }
    return Buffer.concat(parts);
  } finally {
    fs.closeSync(fd);
  }
}

async function rejection(p: Promise<unknown>): Promise<{ code?: string; errnoCode?: string; message: string }> {
  try {
    await p;
  } catch (e) {
    return e as { code?: string; errnoCode?: string; message: string };
  }
  assert.fail('resolved');
}

describe('readProcessBlocks: a process\'s memory and its blocks\' SHA-256s off the event loop', function () {
  this.timeout(30_000);
  let io: NativeIo;
  let code: { start: number; length: number };
  before(() => {
    io = nativeIo();
    code = codeMapping();
    assert.ok(code.length >= 4 << 20, 'a code mapping of some MiB');
  });

  for (const portable of [false, true]) {
    const how = portable ? 'the portable code' : 'the default hash (SHA extensions where present)';
    it(`reads the ranges back to back and names each block as node:crypto does: ${how}`, async function () {
      const s = code.start + 4096 + 17; // not page-aligned: any address
      for (const block of [1, 55, 56, 63, 64, 65, 119, 120, 128, 4096, 65536]) {
        // Three ranges whose lengths are not multiples of the block, together a whole number of blocks.
        const n = block === 1 ? 300 : Math.ceil(200_000 / block) + 1;
        const total = n * block;
        const a = Math.floor(total / 3) + 1;
        const b = Math.floor(total / 5) + 3;
        const ranges = [s, a, s + 2 * total, b, s + 5 * total, total - a - b];
        const buf = Buffer.alloc(total + 8, 0xee);
        const digests = Buffer.alloc(32 * n + 32, 0xee);
        const got = await io.readProcessBlocks(process.pid, Float64Array.from(ranges), 3, buf, 8, block, digests, { portable });
        assert.equal(got, total);
        assert.ok(buf.subarray(8).equals(viaProcMem(ranges)), `block ${block}: the bytes`);
        assert.ok(buf.subarray(0, 8).equals(Buffer.alloc(8, 0xee)), 'nothing before the offset');
        for (let i = 0; i < n; i++) {
          assert.equal(digests.toString('hex', 32 * i, 32 * i + 32), sha(buf.subarray(8 + i * block, 8 + (i + 1) * block)), `block size ${block}, block ${i}`);
        }
        assert.ok(digests.subarray(32 * n).equals(Buffer.alloc(32, 0xee)), 'no digest past the last block');
      }
    });
  }

  it('names 64 KiB blocks alike with both codes, over a run of 8 MiB read in pieces', async function () {
    const block = 64 * 1024;
    const ranges = Float64Array.of(code.start, 8 << 20);
    const buf = Buffer.alloc(8 << 20);
    const fast = Buffer.alloc(32 * 128);
    const slow = Buffer.alloc(32 * 128);
    await io.readProcessBlocks(process.pid, ranges, 1, buf, 0, block, fast);
    await io.readProcessBlocks(process.pid, ranges, 1, buf, 0, block, slow, { portable: true });
    assert.ok(fast.equals(slow));
    for (let i = 0; i < 128; i += 37) assert.equal(fast.toString('hex', 32 * i, 32 * i + 32), sha(buf.subarray(i * block, (i + 1) * block)));
  });

  it('leaves the event loop free while it reads and hashes: an immediate runs before it settles', async function () {
    const block = 64 * 1024;
    const length = Math.floor(code.length / block) * block; // the whole code mapping, hashed by the slower code
    let settled = false;
    const read = io.readProcessBlocks(process.pid, Float64Array.of(code.start, length), 1, Buffer.alloc(length), 0, block, Buffer.alloc((32 * length) / block), { portable: true });
    void read.then(() => (settled = true));
    await new Promise(setImmediate);
    assert.equal(settled, false, 'still reading when the loop ran on');
    assert.equal(await read, length);
  });

  it('runs at SCHED_FIFO when asked (where permitted) and puts the pool thread\'s policy back after it', async function () {
    /** This process's threads at SCHED_FIFO (policy 1: /proc/self/task/TID/stat, field 41). */
    const fifoThreads = (): number =>
      fs.readdirSync('/proc/self/task').filter((t) => {
        try {
          const stat = fs.readFileSync(`/proc/self/task/${t}/stat`, 'utf8');
          return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[38] === '1';
        } catch {
          return false; // the thread ended meanwhile
        }
      }).length;
    const block = 64 * 1024;
    const length = Math.floor(code.length / block) * block;
    const read = (fifoPriority: number): Promise<number> => io.readProcessBlocks(process.pid, Float64Array.of(code.start, length), 1, Buffer.alloc(length), 0, block, Buffer.alloc((32 * length) / block), { portable: true, fifoPriority });
    assert.equal(fifoThreads(), 0, 'no thread at SCHED_FIFO before');
    // The loop samples while the pool reads; on a loaded host a read may end before the loop runs
    // again, so a few reads are sampled until one is seen (never more than the one pool thread).
    let seen = 0;
    for (let attempt = 0; attempt < 10 && seen === 0; attempt++) {
      let settled = false;
      const r = read(5).then((n) => ((settled = true), n));
      while (!settled) {
        seen = Math.max(seen, fifoThreads());
        await new Promise(setImmediate);
      }
      assert.equal(await r, length);
      assert.equal(fifoThreads(), 0, 'none after');
      if (process.getuid?.() !== 0) break;
    }
    if (process.getuid?.() === 0) assert.equal(seen, 1, 'the pool thread at SCHED_FIFO while it read');
    for (const bad of [0, 100, 1.5]) assert.throws(() => read(bad), /readProcessBlocks: opts.fifoPriority/);
  });

  it('reads alone without digests, and sha256Blocks names the blocks afterwards as a hashing read does', async function () {
    const block = 64 * 1024;
    const ranges = Float64Array.of(code.start + 4096, 2 << 20);
    const buf = Buffer.alloc(2 << 20);
    const named = Buffer.alloc(32 * 32);
    await io.readProcessBlocks(process.pid, ranges, 1, buf, 0, block, named);
    const plain = Buffer.alloc(2 << 20);
    assert.equal(await io.readProcessBlocks(process.pid, ranges, 1, plain, 0, block, null), 2 << 20);
    assert.ok(plain.equals(buf));
    for (const portable of [false, true]) {
      const later = Buffer.alloc(32 * 32);
      assert.equal(await io.sha256Blocks(plain, block, later, { portable }), 2 << 20);
      assert.ok(later.equals(named), `sha256Blocks (portable: ${portable})`);
    }
    assert.throws(() => io.sha256Blocks(plain.subarray(1), block, Buffer.alloc(1024)), /sha256Blocks: 2097151 bytes are not a whole number of 65536-byte blocks/);
    assert.throws(() => io.sha256Blocks(plain, block, Buffer.alloc(1023)), /sha256Blocks: digests holds 1023 bytes, 32 blocks need 1024/);
  });

  it('reads nothing for no ranges', async function () {
    assert.equal(await io.readProcessBlocks(process.pid, new Float64Array(0), 0, Buffer.alloc(0), 0, 64, Buffer.alloc(0)), 0);
  });

  it('rejects a range not mapped with ERR_NATIVE_IO naming it: refused at once (EFAULT), or copied short', async function () {
    const refused = await rejection(io.readProcessBlocks(process.pid, Float64Array.of(4096, 4096), 1, Buffer.alloc(4096), 0, 4096, Buffer.alloc(32)));
    assert.equal(refused.code, 'ERR_NATIVE_IO');
    assert.equal(refused.errnoCode, 'EFAULT');
    assert.match(refused.message, new RegExp(`^readProcessBlocks\\(${process.pid}, range 0\\): process_vm_readv: `));
    const short = await rejection(io.readProcessBlocks(process.pid, Float64Array.of(code.start, 4096, 4096, 4096), 2, Buffer.alloc(8192), 0, 4096, Buffer.alloc(64)));
    assert.equal(short.code, 'ERR_NATIVE_IO');
    assert.equal(short.message, `readProcessBlocks(${process.pid}, range 1): process_vm_readv copied 4096 of 8192 bytes (a range not mapped)`);
  });

  it('rejects a process that is gone with ERR_NATIVE_IO (ESRCH)', async function () {
    const gone = spawnSync('true').pid as number; // exited and reaped
    const e = await rejection(io.readProcessBlocks(gone, Float64Array.of(code.start, 64), 1, Buffer.alloc(64), 0, 64, Buffer.alloc(32)));
    assert.equal(e.code, 'ERR_NATIVE_IO');
    assert.equal(e.errnoCode, 'ESRCH');
  });

  it('throws at the call for arguments it cannot take, with ERR_INVALID_ARGUMENT', function () {
    const r = Float64Array.of(code.start, 128);
    const cases: [() => unknown, RegExp][] = [
      [() => io.readProcessBlocks(process.pid, r, 1, Buffer.alloc(100), 0, 64, Buffer.alloc(64)), /128 bytes do not fit in the buffer's 100 from offset 0/],
      [() => io.readProcessBlocks(process.pid, r, 1, Buffer.alloc(128), 0, 48, Buffer.alloc(96)), /128 bytes are not a whole number of 48-byte blocks/],
      [() => io.readProcessBlocks(process.pid, r, 1, Buffer.alloc(128), 0, 64, Buffer.alloc(63)), /digests holds 63 bytes, 2 blocks need 64/],
      [() => io.readProcessBlocks(process.pid, r, 2, Buffer.alloc(128), 0, 64, Buffer.alloc(64)), /count/],
      [() => io.readProcessBlocks(process.pid, Float64Array.of(-1, 64), 1, Buffer.alloc(64), 0, 64, Buffer.alloc(32)), /range 0 is not an address and a length/],
      [() => io.readProcessBlocks(process.pid, Float64Array.of(code.start + 0.5, 64), 1, Buffer.alloc(64), 0, 64, Buffer.alloc(32)), /range 0 is not an address and a length/],
      [() => io.readProcessBlocks(process.pid, r, 1, Buffer.alloc(128), 0, 0, Buffer.alloc(64)), /blockSize/],
      [() => io.readProcessBlocks(process.pid, r, 1, 'x'.repeat(128) as unknown as Buffer, 0, 64, Buffer.alloc(64)), /buf must be a Buffer/],
      [() => io.readProcessBlocks(process.pid, [code.start, 128] as unknown as Float64Array, 1, Buffer.alloc(128), 0, 64, Buffer.alloc(64)), /ranges must be a Float64Array/],
    ];
    for (const [call, message] of cases) {
      assert.throws(call, (e: unknown) => {
        assert.equal((e as { code?: string }).code, 'ERR_INVALID_ARGUMENT');
        assert.match((e as Error).message, message);
        return true;
      });
    }
  });
  it('ownThread: reads on a thread of its own while the pool is busy; timing says when it was submitted, began and ended', async function () {
    const block = 64 * 1024;
    const ranges = Float64Array.of(code.start, 8 * block);
    const want = viaProcMem([code.start, 8 * block]);
    // Every pool thread (at most UV_THREADPOOL_SIZE, default 4; 8 here are more than that) busy for a while.
    let poolDone = 0;
    let firstPoolEnd = 0;
    const iterations = 150_000;
    const busy = Array.from({ length: 8 }, () => new Promise<void>((resolve, reject) => pbkdf2('p', 's', iterations, 32, 'sha256', (e) => (e ? reject(e) : (poolDone++, (firstPoolEnd ||= Date.now() * 1000), resolve())))));
    const own = new Float64Array(3);
    const buf = Buffer.alloc(8 * block);
    const digests = Buffer.alloc(8 * 32);
    const before = Date.now() * 1000;
    assert.equal(await io.readProcessBlocks(process.pid, ranges, 1, buf, 0, block, digests, { ownThread: true, timing: own }), 8 * block);
    assert.equal(poolDone, 0, 'settled before any of the pool\'s work ended');
    assert.ok(buf.equals(want));
    for (let i = 0; i < 8; i++) assert.equal(digests.toString('hex', 32 * i, 32 * i + 32), sha(want.subarray(i * block, (i + 1) * block)));
    const [submitted, begun, ended] = [...own] as [number, number, number];
    assert.ok(submitted >= before - 5000 && submitted <= begun && begun <= ended && ended <= Date.now() * 1000 + 5000, `timing ${[...own].join(' ')}`);
    // Without it the read queues behind the pool's work: it begins only once a thread is free.
    const pooled = new Float64Array(3);
    await io.readProcessBlocks(process.pid, ranges, 1, Buffer.alloc(8 * block), 0, block, null, { timing: pooled });
    assert.ok(firstPoolEnd > 0 && (pooled[1] as number) >= firstPoolEnd - 2000, `began ${pooled[1]} µs, the pool's first work ended ${firstPoolEnd}`);
    await Promise.all(busy);
    assert.throws(() => io.readProcessBlocks(process.pid, ranges, 1, buf, 0, block, null, { timing: new Float64Array(2) }), /opts.timing holds 2 values/);
    assert.throws(() => io.readProcessBlocks(process.pid, ranges, 1, buf, 0, block, null, { timing: [0, 0, 0] as unknown as Float64Array }), /opts.timing must be a Float64Array/);
  });
});
