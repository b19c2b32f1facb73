/**
 * Reading ahead (proto/store/read-ahead.ts) and its use by a restore (agent/restore-verify.ts's
 * verifyingStore): the bound, order, failures, early stop, and that a restore's first read()
 * starts reading the memory images while get() starts nothing.
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { verifyingStore } from '../../agent/restore-verify';
import { readAhead } from '../../proto/store/read-ahead';
import type { SnapshotStore } from '../../proto/store/snapshot-store';
import { until } from '../support/wait';

/** A source of `n` chunks of `size` bytes counting pulls; fails at chunk `failAt` (1-based) when given. */
function counted(n: number, size: number, failAt?: number): { src: AsyncIterable<Buffer>; pulled: () => number; returned: () => boolean } {
  let pulled = 0;
  let returned = false;
  const src: AsyncIterable<Buffer> = {
    [Symbol.asyncIterator]: () => ({
      next: async () => {
        if (pulled === failAt) throw new Error(`source failed at chunk ${failAt}`);
        if (pulled >= n) return { value: undefined, done: true };
        pulled++;
        return { value: Buffer.alloc(size, pulled), done: false };
      },
      return: async () => {
        returned = true;
        return { value: undefined, done: true };
      },
    }),
  };
  return { src, pulled: () => pulled, returned: () => returned };
}

async function all(src: AsyncIterable<Buffer>): Promise<number[]> {
  const out: number[] = [];
  for await (const b of src) out.push(b[0] as number);
  return out;
}

describe('read ahead', () => {
  it('pulls the source at once up to the byte bound, then only as the consumer takes', async () => {
    const s = counted(10, 100);
    const r = readAhead(s.src, 350);
    await until('4 chunks pulled', () => s.pulled() === 4 || undefined, { timeoutMs: 2000, everyMs: 1 });
    for (let k = 0; k < 20; k++) await new Promise((res) => setImmediate(res));
    assert.equal(s.pulled(), 4, 'no more than the bound (350 bytes: the fourth chunk goes past it, a fifth is not pulled)');
    assert.deepEqual(await all(r), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.throws(() => r[Symbol.asyncIterator](), { code: 'ERR_STATE' });
  });

  it("hands out the chunks before a failure, then the source's error", async () => {
    const r = readAhead(counted(10, 100, 3).src, 1000);
    const got: number[] = [];
    await assert.rejects(
      (async () => {
        for await (const b of r) got.push(b[0] as number);
      })(),
      /source failed at chunk 3/,
    );
    assert.deepEqual(got, [1, 2, 3]);
  });

  it('a consumer that stops early ends the source', async () => {
    const s = counted(10, 100);
    for await (const b of readAhead(s.src, 200)) if (b[0] === 2) break;
    assert.equal(s.returned(), true);
    assert.ok(s.pulled() <= 4, `pulled ${s.pulled()}`);
  });
});

describe('verifyingStore reads memory images ahead', () => {
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
  const mem = Buffer.alloc(300, 7);
  const disk = Buffer.alloc(100, 1);

  function fakeStore(): { store: SnapshotStore; reads: string[] } {
    const reads: string[] = [];
    const files = new Map([
      ['s/a.mem', mem],
      ['s/b.mem', mem],
      ['s/a.disk', disk],
    ]);
    const store = {
      read: (p: string): AsyncIterable<Buffer> => {
        reads.push(p);
        return (async function* () {
          const b = files.get(p) as Buffer;
          for (let at = 0; at < b.length; at += 100) yield b.subarray(at, at + 100);
        })();
      },
      get: async (p: string): Promise<Buffer> => files.get(p) as Buffer,
    } as unknown as SnapshotStore;
    return { store, reads };
  }

  it("the first read() (a disk layer) starts every memory image's read; each image is read once, checked; get() starts nothing", async () => {
    const { store, reads } = fakeStore();
    const images = [
      { path: 's/a.mem', size: 300, sha256: sha(mem) },
      { path: 's/b.mem', size: 300, sha256: sha(mem) },
    ];
    const v = verifyingStore(store, images, 150);
    assert.deepEqual(await v.get('s/a.disk'), disk);
    assert.deepEqual(reads, [], 'get starts no read');
    assert.equal((await all(v.read('s/a.disk'))).length, 1);
    assert.deepEqual(reads, ['s/a.mem', 's/b.mem', 's/a.disk'], 'both images started before the disk layer');
    assert.deepEqual(await all(v.read('s/a.mem')), [7, 7, 7]);
    assert.deepEqual(await all(v.read('s/b.mem')), [7, 7, 7]);
    assert.deepEqual(reads, ['s/a.mem', 's/b.mem', 's/a.disk'], 'the images were read once, by the reads started ahead');
    assert.deepEqual(await all(v.read('s/a.mem')), [7, 7, 7], 'a second read of an image reads it again');
    assert.equal(reads.length, 4);
  });

  it('an image read ahead is still checked: a wrong SHA-256 is ERR_CHECKSUM', async () => {
    const { store } = fakeStore();
    const v = verifyingStore(store, [{ path: 's/a.mem', size: 300, sha256: 'f'.repeat(64) }], 150);
    await all(v.read('s/a.disk'));
    await assert.rejects(all(v.read('s/a.mem')), { code: 'ERR_CHECKSUM' });
  });
});
