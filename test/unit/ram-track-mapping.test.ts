/**
 * trackedRamMapping (agent/drivers/qemu/ram-track.ts): which range of /proc/PID/maps is the
 * guest RAM to track — the memory-backend-memfd mappings, joined when QEMU's mapping was split
 * into adjacent pieces, refused when they are apart or absent.
 */
import { strict as assert } from 'node:assert';
import { isVnsnapError } from '../../proto/core/errors';
import { blockRuns, trackedRamMapping, trackedRamArgs } from '../../agent/drivers/qemu/ram-track';

const MEMFD = '/memfd:memory-backend-memfd (deleted)';
const line = (a: string, b: string, name: string): string => `${a}-${b} rw-s 00000000 00:01 371                        ${name}`;

describe('trackedRamMapping', () => {
  it('finds the one memfd mapping', () => {
    const maps = [line('55d0c0000000', '55d0c0100000', '/usr/bin/qemu-system-x86_64'), line('7ffa83fff000', '7ffa93fff000', MEMFD), line('7ffa93fff000', '7ffa94000000', '')].join('\n');
    assert.deepEqual(trackedRamMapping(1, maps), { start: 0x7ffa83fff000, length: 0x10000000 });
  });

  it('joins adjacent pieces of it', () => {
    const maps = [line('7ffa83fff000', '7ffa8bfff000', MEMFD), line('7ffa8bfff000', '7ffa93fff000', MEMFD)].join('\n');
    assert.deepEqual(trackedRamMapping(1, maps), { start: 0x7ffa83fff000, length: 0x10000000 });
  });

  it('refuses pieces that are apart, and a process without it', () => {
    const apart = [line('7ffa83fff000', '7ffa8bfff000', MEMFD), line('7ffa8c000000', '7ffa94000000', MEMFD)].join('\n');
    assert.throws(() => trackedRamMapping(7, apart), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'QEMU 7 maps its RAM pc.ram in pieces that are not contiguous');
    assert.throws(() => trackedRamMapping(7, line('7ffa83fff000', '7ffa93fff000', '/memfd:other (deleted)')), (e) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && e.message === 'QEMU 7 has no RAM backend pc.ram as shared memfd: it was not started for write tracking');
  });

  it('gives QEMU a shared memfd backend named pc.ram', () => {
    assert.deepEqual(trackedRamArgs(262144), ['-object', 'memory-backend-memfd,id=pc.ram,size=262144k,share=on', '-machine', 'memory-backend=pc.ram']);
  });
});

describe('blockRuns', () => {
  const runs = (...p: number[]) => ({ pairs: Float64Array.from(p), count: p.length / 2, bytes: p.filter((_, i) => i % 2).reduce((a, b) => a + b, 0) });
  const K = 1024;

  it('widens runs to whole blocks and merges the blocks they share', () => {
    const r = blockRuns(runs(4 * K, 4 * K, 60 * K, 8 * K, 200 * K, 4 * K), 64 * K, 1024 * K);
    assert.deepEqual([...r.pairs], [0, 128 * K, 192 * K, 64 * K]);
    assert.equal(r.count, 2);
    assert.equal(r.bytes, 192 * K);
  });

  it('clips the last block to the RAM and refuses a block size that is not a power of two', () => {
    const r = blockRuns(runs(96 * K, 4 * K), 64 * K, 100 * K);
    assert.deepEqual([...r.pairs], [64 * K, 36 * K]);
    assert.throws(() => blockRuns(runs(), 48 * K, 100 * K), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'));
  });
});
