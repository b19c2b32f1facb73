/**
 * The worker thread of WorkerChunkHasher (chunk-hasher.ts): each writer's stream hashed and cut
 * here with the same InlineChunkHasher a writer uses on its own thread, so the chunks and names
 * are the same byte for byte. Requests are handled in the order they arrive; the chunks go back
 * to the writer's thread without a copy: those inside a push's bytes as views of them (that
 * memory moves back whole), or by offset when those bytes are shared memory (read in place:
 * the SharedArrayBuffers shared before, by key), the others where they own their memory. A failure answers the
 * request with its message (the writer fails the artefact); it never ends the worker.
 */
import { parentPort } from 'node:worker_threads';
import { chunkTransfer, InlineChunkHasher, replyChunks, type HasherReply, type HasherRequest, type SharedBytes } from './chunk-hasher';

const streams = new Map<number, InlineChunkHasher>();
const shared = new Map<number, SharedArrayBuffer>();
const NO_DATA = new Uint8Array(0);

/** A push's bytes: its own, or a view of shared memory shared before. */
function bytesOf(data: Uint8Array | SharedBytes): Uint8Array {
  if (!Array.isArray(data)) return data;
  const [key, offset, length] = data;
  const memory = shared.get(key);
  if (!memory) throw new Error(`no shared memory ${key}`);
  return new Uint8Array(memory, offset, length);
}

function answer(id: number, seq: number, pushed: Uint8Array | SharedBytes, f: (h: InlineChunkHasher, data: Uint8Array) => Omit<Extract<HasherReply, { chunks: unknown[] }>, 'id' | 'seq'>): void {
  const h = streams.get(id);
  let reply: Extract<HasherReply, { chunks: unknown[] }>;
  let data: Uint8Array = NO_DATA;
  try {
    if (!h) throw new Error(`no open stream ${id}`);
    data = bytesOf(pushed);
    const r = f(h, data);
    reply = { id, seq, ...r, chunks: replyChunks(data, r.chunks as Uint8Array[]) };
  } catch (e) {
    streams.delete(id);
    parentPort?.postMessage({ id, seq, error: (e as Error).message } satisfies HasherReply);
    return;
  }
  parentPort?.postMessage(reply, chunkTransfer(data, reply.chunks));
}

parentPort?.on('message', (m: HasherRequest) => {
  if (m.op === 'open') streams.set(m.id, new InlineChunkHasher(m.params, m.engine));
  else if (m.op === 'drop') streams.delete(m.id);
  else if (m.op === 'share') shared.set(m.key, m.memory);
  else if (m.op === 'unshare') shared.delete(m.key);
  else if (m.op === 'push') answer(m.id, m.seq, m.data, (h, data) => h.pushSync(data));
  else {
    answer(m.id, m.seq, NO_DATA, (h) => h.endSync());
    streams.delete(m.id);
  }
});
