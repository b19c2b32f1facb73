/**
 * image-stream.ts over real unix sockets in a temporary directory (named vnis-*, removed after
 * each test): the save side (a sender into a store writer through the bounded buffer), the
 * restore side (a store's chunks into a listening receiver), and streamToFile.
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { feedSocket, holdStoreWrites, holdStreamReads, ReceiverGone, storeWritesHeld, streamToFile, StreamIntoStore } from '../../agent/drivers/image-stream';
import { isVnsnapError, VnsnapError } from '../../proto/core/errors';
import { CasStore } from '../../proto/store/cas-store';
import { batchPool, type PoolSlot } from '../../proto/store/batch-pool';
import type { ArtefactWriter, StoredArtefact, WriteHandover } from '../../proto/store/snapshot-store';
import { MemoryObjects, pseudoRandomBytes as bytes } from '../support/memory-objects';
import { until } from '../support/wait';
import { buildStream, PAGE, pages } from '../support/migration-stream-builder';
import { PageOrder } from '../../agent/drivers/qemu/page-order';

const KiB = 1024;
const MiB = 1024 * KiB;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** A writer whose write() resolves only when the test lets it (one gate per write). */
class GatedWriter implements ArtefactWriter {
  readonly path = 'snapshots/s/vm.mem';
  readonly parts: Buffer[] = [];
  private gates: (() => void)[] = [];
  hold = false;
  failWith: Error | undefined;
  aborted = false;

  get bytes(): number {
    return this.parts.reduce((n, p) => n + p.length, 0);
  }

  get waiting(): number {
    return this.gates.length;
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.failWith) throw this.failWith;
    if (this.hold) await new Promise<void>((r) => this.gates.push(r));
    this.parts.push(Buffer.from(chunk));
  }

  release(): void {
    this.hold = false;
    for (const g of this.gates.splice(0)) g();
  }

  async commit(): Promise<StoredArtefact> {
    const all = Buffer.concat(this.parts);
    return { path: this.path, size: all.length, sha256: sha(all) };
  }

  async abort(): Promise<void> {
    this.aborted = true;
  }
}

/** Send `data` over a unix socket in 64 KiB writes honouring backpressure; resolves when all is written and ended. */
function send(sockPath: string, data: Buffer): { sock: net.Socket; done: Promise<void> } {
  const sock = net.connect(sockPath);
  const done = new Promise<void>((resolve, reject) => {
    sock.on('error', reject);
    sock.once('connect', async () => {
      for (let off = 0; off < data.length; off += 64 * KiB) {
        if (!sock.write(data.subarray(off, off + 64 * KiB))) await new Promise((r) => sock.once('drain', r));
      }
      sock.end(resolve);
    });
  });
  done.catch(() => undefined);
  return { sock, done };
}

async function rejection(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return isVnsnapError(e) ? `${e.code}: ${e.message}` : `untyped: ${(e as Error).message}`;
  }
  return 'resolved';
}

describe('image-stream: a memory image between a hypervisor socket and the store', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnis-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** A stream into a store that holds its first write, a sender of `size` bytes, once the buffer is full. */
  async function heldStream(size: number, seed: number, bufferBytes: number, userBuffer = true): Promise<{ w: GatedWriter; st: StreamIntoStore; data: Buffer; s: ReturnType<typeof send> }> {
    const w = new GatedWriter();
    w.hold = true;
    const st = await StreamIntoStore.listen(path.join(dir, 'mig.sock'), w, { bufferBytes, what: 'memory image of vm', userBuffer });
    const data = bytes(size, seed);
    const s = send(st.sockPath, data);
    await until('the buffer fills', () => (st.buffered >= bufferBytes ? true : undefined), { timeoutMs: 10_000, everyMs: 5 });
    return { w, st, data, s };
  }

  for (const userBuffer of [true, false]) {
    const how = userBuffer ? 'read into one reused buffer' : 'read the ordinary way (no user buffer)';
    it(`save (${how}): every byte reaches a CasStore writer in order; the artefact commits with the stream size and SHA-256`, async () => {
      const store = new CasStore(new MemoryObjects(), { chunker: { min: 16 * KiB, avg: 64 * KiB, max: 256 * KiB } });
      const data = bytes(5 * MiB + 123, 7);
      const w = await store.create('snapshots/s/vm.mem');
      const st = await StreamIntoStore.listen(path.join(dir, 'mig.sock'), w, { bufferBytes: 1 * MiB, what: 'memory image of vm', userBuffer });
      try {
        assert.equal(st.uri, `unix:${dir}/mig.sock`);
        await send(st.sockPath, data).done;
        await st.ended;
        const a = await w.commit();
        assert.deepEqual({ size: a.size, sha256: a.sha256 }, { size: data.length, sha256: sha(data) });
        assert.deepEqual(await store.get('snapshots/s/vm.mem'), data);
      } finally {
        await st.close();
      }
      assert.equal(fs.existsSync(path.join(dir, 'mig.sock')), false, 'the socket file is removed');
    });

    it(`save (${how}): a transform rewrites the stream on its way into the writer, its tail written at EOF`, async () => {
      const store = new CasStore(new MemoryObjects());
      const w = await store.create('snapshots/s/vm.mem');
      // Out of order in, address order out (a QEMU background snapshot's pages: qemu/page-order.ts).
      const input = buildStream({ blocks: [['pc.ram', 8 * PAGE]], sections: [[...pages('pc.ram', 0, 2), ...pages('pc.ram', 5, 8), ...pages('pc.ram', 2, 5)]] });
      const want = buildStream({ blocks: [['pc.ram', 8 * PAGE]], sections: [pages('pc.ram', 0, 8)] });
      const transform = new PageOrder();
      const st = await StreamIntoStore.listen(path.join(dir, 'mig.sock'), w, { bufferBytes: 1 * MiB, what: 'memory image of vm', transform, userBuffer });
      try {
        await send(st.sockPath, input).done;
        await st.ended;
        const a = await w.commit();
        assert.deepEqual({ size: a.size, sha256: a.sha256 }, { size: want.length, sha256: sha(want) });
        assert.equal(st.received, input.length);
        assert.deepEqual([transform.stats.held, transform.stats.fallback], [3, undefined]);
      } finally {
        await st.close();
      }
    });
  }

  /** Send `data` through a stream into a worker-hashing CasStore, recording each write's handover and memory. */
  async function handoverRun(data: Buffer): Promise<{ handovers: WriteHandover[]; shared: boolean[] }> {
    const store = new CasStore(new MemoryObjects(), { chunker: { min: 16 * KiB, avg: 64 * KiB, max: 256 * KiB }, hashWorker: true });
    const w = await store.create('snapshots/s/vm.mem');
    const handovers: WriteHandover[] = [];
    const shared: boolean[] = [];
    const write = w.write.bind(w);
    w.write = (chunk: Uint8Array, handover?: WriteHandover) => {
      handovers.push(handover ?? 'copy');
      shared.push(chunk.buffer instanceof SharedArrayBuffer);
      return write(chunk, handover);
    };
    const st = await StreamIntoStore.listen(path.join(dir, 'mig.sock'), w, { bufferBytes: 1 * MiB, what: 'memory image of vm' });
    try {
      await send(st.sockPath, data).done;
      await st.ended;
      const a = await w.commit();
      assert.deepEqual({ size: a.size, sha256: a.sha256 }, { size: data.length, sha256: sha(data) });
      assert.equal(st.buffered, 0);
      assert.ok(st.peakQueued >= 1 * MiB, `the bound was reached (${st.peakQueued})`);
      assert.ok(handovers.length >= 12, `${handovers.length} batches`);
      assert.deepEqual(await store.get('snapshots/s/vm.mem'), data);
    } finally {
      await st.close();
      store.close?.();
    }
    return { handovers, shared };
  }

  it('save: each batch is a slot of the batch pool lent to the writer (the hashing worker reads it in place), given back after its write; the bound still counts it: the sender is paused and resumed to the end', async () => {
    const lentBefore = batchPool().lent;
    const r = await handoverRun(bytes(6 * MiB + 77, 8));
    assert.deepEqual(r.handovers, r.handovers.map(() => 'lent'));
    assert.deepEqual(r.shared, r.shared.map(() => true), 'every batch is in the pool\'s shared memory');
    assert.equal(batchPool().lent, lentBefore, 'every slot is back in the pool');
  });

  it('save: with every slot of the pool out, a batch is memory of its own handed over, the bytes the same', async () => {
    const taken: PoolSlot[] = [];
    for (let s = batchPool().take(1); s; s = batchPool().take(1)) taken.push(s);
    try {
      const r = await handoverRun(bytes(6 * MiB + 5, 9));
      assert.deepEqual(r.handovers, r.handovers.map(() => 'owned'));
      assert.deepEqual(r.shared, r.shared.map(() => false));
    } finally {
      for (const s of taken) batchPool().give(s);
    }
  });

  it('save: a transform that throws fails the stream with ERR_DRIVER naming it', async () => {
    const w = new GatedWriter();
    const transform = { push: (): Buffer[] => { throw new Error('bad record'); }, end: (): Buffer[] => [] };
    const st = await StreamIntoStore.listen(path.join(dir, 'mig.sock'), w, { bufferBytes: 1 * MiB, what: 'memory image of vm', transform });
    try {
      send(st.sockPath, bytes(100 * KiB, 1));
      assert.match(await rejection(st.ended), /^ERR_DRIVER: memory image of vm: rewriting the stream failed after \d+ bytes: bad record$/);
    } finally {
      await st.close();
    }
  });

  for (const userBuffer of [true, false]) {
    it(`save (${userBuffer ? 'one reused read buffer' : 'ordinary reads'}): a slow store holds the sender back only once the buffer is full (bounded memory), then lets it finish`, async () => {
      const bufferBytes = 512 * KiB;
      // The first batch waits in the store; the socket is paused once the buffer holds bufferBytes.
      const { w, st, data, s } = await heldStream(8 * MiB, 3, bufferBytes, userBuffer);
      try {
        const stalledAt = st.received;
        // The sender is held: nothing more than the kernel's socket buffers goes past the pause.
        assert.ok(stalledAt < data.length, `the sender was held back (received ${stalledAt} of ${data.length})`);
        assert.ok(st.peakQueued < bufferBytes + 256 * KiB, `peak ${st.peakQueued} stays near the bound ${bufferBytes}`);
        w.release();
        await s.done;
        await st.ended;
        assert.deepEqual(Buffer.concat(w.parts), data);
        assert.ok(st.peakQueued < bufferBytes + 256 * KiB, `peak ${st.peakQueued} stays near the bound ${bufferBytes}`);
        const p = st.profile;
        assert.ok(p.pausedMs > 0 && p.writeMs >= p.pausedMs / 2 && p.spanMs >= p.pausedMs, `the profile shows the sender held back by the store: ${JSON.stringify(p)}`);
        assert.deepEqual([p.transformMs, p.heldMs], [0, 0], 'no transform, no hold');
      } finally {
        await st.close();
      }
    });
  }

  it('save: unbound() lets a tail through at the sender\'s pace while the store still holds the backlog', async () => {
    const bufferBytes = 512 * KiB;
    const { w, st, data, s } = await heldStream(4 * MiB, 6, bufferBytes);
    try {
      st.unbound();
      await s.done;
      // The whole stream is read although the store has not finished one write.
      await until('every byte read', () => (st.received === data.length ? true : undefined), { timeoutMs: 10_000, everyMs: 5 });
      assert.equal(w.waiting, 1, 'the store still holds its first write');
      assert.ok(st.peakQueued > bufferBytes, `peak ${st.peakQueued}`);
      w.release();
      await st.ended;
      assert.deepEqual(Buffer.concat(w.parts), data);
    } finally {
      await st.close();
    }
  });

  it('save: holdWrites() reads the whole tail with no write into the store; ended waits for releaseWrites(), then every byte is written in order', async () => {
    const bufferBytes = 512 * KiB;
    const { w, st, data, s } = await heldStream(4 * MiB, 8, bufferBytes);
    try {
      st.holdWrites();
      w.release(); // the store is free now: only holdWrites() keeps the queue from it
      await s.done;
      await until('every byte read', () => (st.received === data.length ? true : undefined), { timeoutMs: 10_000, everyMs: 5 });
      const written = w.bytes;
      assert.ok(written <= 512 * KiB, `at most the batch in flight when writes were held reached the store (${written})`);
      assert.ok(st.peakQueued > bufferBytes, `the tail was read past the bound (peak ${st.peakQueued})`);
      let ended = false;
      void st.ended.then(() => (ended = true));
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
      assert.equal(w.bytes, written, 'no write while held');
      assert.equal(ended, false, 'the end waits for the held bytes');
      st.releaseWrites();
      await st.ended;
      assert.deepEqual(Buffer.concat(w.parts), data);
      assert.equal(st.buffered, 0);
      assert.ok(st.profile.heldMs > 0, `the hold is in the profile: ${JSON.stringify(st.profile)}`);
    } finally {
      await st.close();
    }
  });

  it('save: holdStoreWrites() holds every stream of the process, within its bound, until the last hold is released', async () => {
    const bufferBytes = 1 * MiB;
    const ws = [new GatedWriter(), new GatedWriter()];
    const sts = await Promise.all(ws.map((w, i) => StreamIntoStore.listen(path.join(dir, `mig${i}.sock`), w, { bufferBytes, what: `memory image of vm${i}` })));
    const releaseA = holdStoreWrites();
    const releaseB = holdStoreWrites(); // a second VM of the agent paused meanwhile
    try {
      assert.equal(storeWritesHeld(), true);
      const small = bytes(256 * KiB, 11);
      const big = bytes(6 * MiB, 12);
      const s0 = send((sts[0] as StreamIntoStore).sockPath, small);
      const s1 = send((sts[1] as StreamIntoStore).sockPath, big);
      await s0.done;
      await until('both streams read what they may', () => ((sts[0] as StreamIntoStore).received === small.length && (sts[1] as StreamIntoStore).buffered >= bufferBytes ? true : undefined), { timeoutMs: 10_000, everyMs: 5 });
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(ws.map((w) => w.bytes), [0, 0], 'no write into the store while held');
      assert.ok((sts[1] as StreamIntoStore).received < big.length, `the bound holds the big sender back (read ${(sts[1] as StreamIntoStore).received} of ${big.length})`);
      releaseA();
      releaseA(); // idempotent: one release per hold
      assert.equal(storeWritesHeld(), true, 'held until the last hold is released');
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(ws.map((w) => w.bytes), [0, 0]);
      releaseB();
      assert.equal(storeWritesHeld(), false);
      await s1.done;
      await Promise.all(sts.map((st) => st.ended));
      assert.deepEqual(Buffer.concat((ws[0] as GatedWriter).parts), small);
      assert.deepEqual(Buffer.concat((ws[1] as GatedWriter).parts), big);
    } finally {
      releaseA();
      releaseB();
      for (const st of sts) await st.close();
    }
  });

  it('save: holdStreamReads() leaves every stream of the process unread (its sender blocked) until the last hold is released', async () => {
    const w = new GatedWriter();
    const st = await StreamIntoStore.listen(path.join(dir, 'mig.sock'), w, { bufferBytes: 32 * MiB, what: 'memory image of vm' });
    const releaseA = holdStreamReads();
    const releaseB = holdStreamReads(); // a second VM of the agent in its cut meanwhile
    try {
      const data = bytes(8 * MiB, 14);
      const s = send(st.sockPath, data);
      await until('the sender blocked on the unread socket', () => (s.sock.writableLength > 0 ? true : undefined), { timeoutMs: 10_000, everyMs: 5 });
      await new Promise((r) => setImmediate(r));
      assert.equal(st.received, 0, 'nothing read while held');
      releaseA();
      releaseA(); // idempotent: one release per hold
      await new Promise((r) => setImmediate(r));
      assert.equal(st.received, 0, 'held until the last hold is released');
      releaseB();
      await s.done;
      await st.ended;
      assert.deepEqual(Buffer.concat(w.parts), data);
    } finally {
      releaseA();
      releaseB();
      await st.close();
    }
  });

  it('save: closeReads() (a read pacer) keeps the socket unread through the other holds\' ends and unbound(); openReads() reads again; onRead counts each read', async () => {
    const w = new GatedWriter();
    const st = await StreamIntoStore.listen(path.join(dir, 'mig.sock'), w, { bufferBytes: 32 * MiB, what: 'memory image of vm' });
    let counted = 0;
    st.onRead = (n) => (counted += n);
    const release = holdStreamReads();
    try {
      const data = bytes(8 * MiB, 15);
      const s = send(st.sockPath, data);
      await until('the sender blocked on the unread socket', () => (s.sock.writableLength > 0 ? true : undefined), { timeoutMs: 10_000, everyMs: 5 });
      st.closeReads();
      release(); // another hold ends: the caller's own still holds
      st.holdWrites(); // unbound() resumes the socket: not this one
      await new Promise((r) => setImmediate(r));
      assert.equal(st.received, 0, 'nothing read while closed');
      st.releaseWrites();
      st.openReads();
      await s.done;
      await st.ended;
      assert.equal(counted, data.length);
      assert.deepEqual(Buffer.concat(w.parts), data);
    } finally {
      release();
      await st.close();
    }
  });

  it('save: a hold nobody releases ends by itself after its limit, and the next hold holds again', async () => {
    const w = new GatedWriter();
    const st = await StreamIntoStore.listen(path.join(dir, 'mig.sock'), w, { bufferBytes: 1 * MiB, what: 'memory image of vm' });
    const t0 = performance.now();
    const release = holdStoreWrites(200);
    try {
      const data = bytes(300 * KiB, 13);
      await send(st.sockPath, data).done;
      await until('every byte read', () => (st.received === data.length ? true : undefined), { timeoutMs: 10_000, everyMs: 5 });
      assert.equal(w.bytes, 0, 'held');
      await st.ended;
      assert.ok(performance.now() - t0 >= 195, 'written only once the limit passed');
      assert.equal(storeWritesHeld(), false);
      assert.deepEqual(Buffer.concat(w.parts), data);
      release();
      const again = holdStoreWrites();
      assert.equal(storeWritesHeld(), true, 'a new hold after the release holds');
      again();
    } finally {
      release();
      await st.close();
    }
  });

  it('save: discard() (an abort) drops the rest without blocking the sender; ended rejects ERR_SNAPSHOT_ABORTED', async () => {
    const { w, st, data, s } = await heldStream(6 * MiB, 4, 256 * KiB);
    try {
      st.discard();
      await s.done; // the sender ends by itself although the store still holds its first write
      await st.drained(10_000);
      assert.equal(st.received, data.length);
      assert.equal(await rejection(st.ended), 'ERR_SNAPSHOT_ABORTED: memory image of vm: aborted');
      w.release();
      assert.ok(w.bytes <= 4 * MiB, `at most the batch in flight was written (${w.bytes})`);
    } finally {
      await st.close();
    }
  });

  it("save: a store failure rejects ended with the store's error and the sender still drains", async () => {
    const w = new GatedWriter();
    w.failWith = new VnsnapError('ERR_STORE_FULL', 'store full writing snapshots/s/vm.mem');
    const st = await StreamIntoStore.listen(path.join(dir, 'mig.sock'), w, { bufferBytes: 256 * KiB, what: 'memory image of vm' });
    try {
      const data = bytes(3 * MiB, 5);
      const s = send(st.sockPath, data);
      assert.equal(await rejection(st.ended), 'ERR_STORE_FULL: store full writing snapshots/s/vm.mem');
      await s.done;
    } finally {
      await st.close();
    }
  });

  it('save: one connection only (a second is refused); a unix stream closed early is an end: completeness is the hypervisor\'s to report', async () => {
    const st = await StreamIntoStore.listen(path.join(dir, 'mig.sock'), new GatedWriter(), { bufferBytes: 256 * KiB, what: 'memory image of vm' });
    try {
      const first = net.connect(st.sockPath);
      first.on('error', () => undefined);
      await new Promise((r) => first.once('connect', r));
      first.write(bytes(1000, 1));
      await until('bytes arrive', () => (st.received === 1000 ? true : undefined), { timeoutMs: 5000, everyMs: 5 });
      const second = net.connect(st.sockPath);
      second.on('error', () => undefined);
      await new Promise((r) => second.once('close', r)); // refused: closed by the listener
      first.destroy();
      assert.equal(await rejection(st.ended), 'resolved');
      assert.equal(st.received, 1000);
    } finally {
      await st.close();
    }
  });

  /** A receiver that collects what arrives, or closes after `closeAfter` bytes. */
  async function receiver(sockPath: string, closeAfter = Infinity): Promise<{ server: net.Server; got: Promise<{ data: Buffer; ended: boolean }> }> {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(sockPath, r));
    const got = new Promise<{ data: Buffer; ended: boolean }>((resolve) => {
      server.once('connection', (c) => {
        const parts: Buffer[] = [];
        let n = 0;
        c.on('error', () => undefined);
        c.on('data', (b: Buffer) => {
          parts.push(b);
          n += b.length;
          if (n >= closeAfter) {
            c.destroy();
            resolve({ data: Buffer.concat(parts), ended: false });
          }
        });
        c.on('end', () => resolve({ data: Buffer.concat(parts), ended: true }));
        c.on('close', () => resolve({ data: Buffer.concat(parts), ended: false }));
      });
    });
    return { server, got };
  }

  it("restore: a store's artefact is fed into the receiver whole, from store.read()", async () => {
    const store = new CasStore(new MemoryObjects(), { chunker: { min: 16 * KiB, avg: 64 * KiB, max: 256 * KiB } });
    const data = bytes(3 * MiB + 7, 9);
    await store.put('snapshots/s/vm.mem', data);
    const r = await receiver(path.join(dir, 'inc.sock'));
    try {
      assert.equal(await feedSocket(store.read('snapshots/s/vm.mem'), path.join(dir, 'inc.sock'), 'memory image'), data.length);
      const got = await r.got;
      assert.ok(got.ended, 'the receiver sees the end of the stream');
      assert.deepEqual(got.data, data);
    } finally {
      r.server.close();
    }
  });

  it("restore: a corrupt chunk fails the feed with the store's ERR_CHECKSUM, unchanged; the receiver gets only the good chunks before it", async () => {
    const objects = new MemoryObjects();
    const store = new CasStore(objects, { chunker: { min: 16 * KiB, avg: 64 * KiB, max: 256 * KiB } });
    const data = bytes(2 * MiB, 11);
    const a = await store.put('snapshots/s/vm.mem', data);
    const idx = await store.index(a.path);
    const bad = idx?.chunks[3];
    assert.ok(bad);
    objects.corrupt(`chunks/${bad.sha256.slice(0, 2)}/${bad.sha256}`);
    const r = await receiver(path.join(dir, 'inc.sock'));
    try {
      const why = await rejection(feedSocket(store.read(a.path), path.join(dir, 'inc.sock'), 'memory image'));
      assert.match(why, /^ERR_CHECKSUM: artefact snapshots\/s\/vm\.mem: chunk 4 of \d+ \([0-9a-f]{64}\) is corrupt/);
      const got = await r.got;
      const before = (idx?.chunks ?? []).slice(0, 3).reduce((n, c) => n + c.size, 0);
      assert.deepEqual(got.data, data.subarray(0, before));
    } finally {
      r.server.close();
    }
  });

  it('restore: a receiver that closes early is ReceiverGone (ERR_DRIVER), not a hang', async () => {
    const r = await receiver(path.join(dir, 'inc.sock'), 100 * KiB);
    async function* big(): AsyncIterable<Buffer> {
      for (let i = 0; i < 64; i++) yield bytes(256 * KiB, i);
    }
    try {
      let err: unknown;
      await feedSocket(big(), path.join(dir, 'inc.sock'), 'memory image').catch((e: unknown) => (err = e));
      assert.ok(err instanceof ReceiverGone, `ReceiverGone, got ${String(err)}`);
      assert.match((err as Error).message, /^memory image: the receiver closed the stream after \d+ bytes: /);
    } finally {
      r.server.close();
    }
  });

  it('streamToFile writes the chunks in order; a failing source leaves no file', async () => {
    const f = path.join(dir, 'img');
    async function* parts(fail: boolean): AsyncIterable<Buffer> {
      yield Buffer.from('abc');
      yield Buffer.from('def');
      if (fail) throw new VnsnapError('ERR_DATA_LOSS', 'artefact x: chunk 3 of 3 is missing from the store');
    }
    assert.equal(await streamToFile(parts(false), f), 6);
    assert.equal(fs.readFileSync(f, 'utf8'), 'abcdef');
    const g = path.join(dir, 'img2');
    assert.equal(await rejection(streamToFile(parts(true), g)), 'ERR_DATA_LOSS: artefact x: chunk 3 of 3 is missing from the store');
    assert.equal(fs.existsSync(g), false);
  });
});
