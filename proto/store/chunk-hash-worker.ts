/**
 * The worker thread of WorkerChunkHasher (chunk-hasher.ts): each writer's stream hashed and cut
 * here with the same InlineChunkHasher a writer uses on its own thread, so the chunks and names
 * are the same byte for byte. Requests are handled in the order they arrive; the chunks go back
 * to the writer's thread without a copy: those inside a push's bytes as views of them (that
 * memory moves back whole), the others where they own their memory. A failure answers the
 * request with its message (the writer fails the artefact); it never ends the worker.
 */
import { parentPort } from 'node:worker_threads';
import { chunkTransfer, InlineChunkHasher, type HasherReply, type HasherRequest } from './chunk-hasher';

const streams = new Map<number, InlineChunkHasher>();
const NO_DATA = new Uint8Array(0);

function answer(id: number, seq: number, data: Uint8Array, f: (h: InlineChunkHasher) => Omit<Extract<HasherReply, { chunks: Uint8Array[] }>, 'id' | 'seq'>): void {
  const h = streams.get(id);
  let reply: HasherReply;
  try {
    if (!h) throw new Error(`no open stream ${id}`);
    reply = { id, seq, ...f(h) };
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
  else if (m.op === 'push') answer(m.id, m.seq, m.data, (h) => h.pushSync(m.data));
  else {
    answer(m.id, m.seq, NO_DATA, (h) => h.endSync());
    streams.delete(m.id);
  }
});
