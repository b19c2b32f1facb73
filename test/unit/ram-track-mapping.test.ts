/**
 * trackedRamMapping (agent/drivers/qemu/ram-track.ts): which range of /proc/PID/maps is the
 * guest RAM to track — the memory-backend-memfd mappings, joined when QEMU's mapping was split
 * into adjacent pieces, refused when they are apart or absent.
 */
import { strict as assert } from 'node:assert';
import { isVnsnapError } from '../../proto/core/errors';
import { trackedRamMapping, trackedRamArgs } from '../../agent/drivers/qemu/ram-track';

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
