import { strict as assert } from 'node:assert';
import { blockSet, runsOf, split, withLeft } from '../../agent/drivers/qemu/hot-blocks';
import type { WrittenRuns } from '../../agent/drivers/qemu/ram-track';

const BS = 65536;
const runs = (...pairs: number[]): WrittenRuns => ({ pairs: Float64Array.from(pairs), count: pairs.length / 2, bytes: pairs.filter((_, i) => i % 2 === 1).reduce((a, b) => a + b, 0) });
const plain = (r: WrittenRuns): number[][] => {
  const out: number[][] = [];
  for (let i = 0; i < r.count; i++) out.push([(r.pairs[2 * i] as number) / BS, (r.pairs[2 * i + 1] as number) / BS]);
  return out;
};
const bits = (n: number, ...set: number[]): Uint8Array => {
  const b = new Uint8Array(n);
  for (const i of set) b[i] = 1;
  return b;
};

describe('hot blocks left to the stopped round', () => {
  it('blockSet and runsOf turn block-aligned runs into a bitmap and back, merged and cut at the RAM’s end', () => {
    const r = runs(0, 2 * BS, 2 * BS, BS, 5 * BS, BS);
    assert.deepEqual([...blockSet(r, BS, 8)], [1, 1, 1, 0, 0, 1, 0, 0]);
    assert.deepEqual(plain(runsOf(blockSet(r, BS, 8), BS, 8 * BS)), [[0, 3], [5, 1]]);
    const cut = runsOf(bits(3, 2), BS, 2 * BS + 4096);
    assert.deepEqual([...cut.pairs], [2 * BS, 4096]);
    assert.equal(cut.bytes, 4096);
    assert.deepEqual(runsOf(new Uint8Array(4), BS, 4 * BS), { pairs: new Float64Array(0), count: 0, bytes: 0 });
  });

  it('split reads the cold blocks now and records every hot one it leaves out', () => {
    const left = new Uint8Array(8);
    const r = split(runs(0, 4 * BS, 6 * BS, BS), bits(8, 1, 2, 6, 7), left, BS, 8 * BS);
    assert.deepEqual(plain(r), [[0, 1], [3, 1]]);
    assert.equal(r.bytes, 2 * BS);
    assert.deepEqual([...left], [0, 1, 1, 0, 0, 0, 1, 0], 'block 7 was hot but not written: nothing to leave');
    // A second round adds to what is left; nothing written, nothing read.
    assert.deepEqual(plain(split(runs(7 * BS, BS), bits(8, 7), left, BS, 8 * BS)), []);
    assert.deepEqual([...left], [0, 1, 1, 0, 0, 0, 1, 1]);
  });

  it('withLeft makes the stopped round read what it was given and everything left', () => {
    const left = bits(8, 1, 2, 6);
    const r = withLeft(runs(2 * BS, 2 * BS), left, BS, 8 * BS);
    assert.deepEqual(plain(r), [[1, 3], [6, 1]]);
    assert.equal(r.bytes, 4 * BS);
  });
});
