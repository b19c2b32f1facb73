/**
 * Reading an artefact before its consumer asks for it, within a byte bound: readAhead(source,
 * bytes) starts pulling `source` at once and keeps up to `bytes` of it (at least one chunk)
 * queued. A restore uses it to read a VM's memory image while the VM's disk layers are still being
 * read and rebuilt (agent/restore-verify.ts), so the two artefacts' reads overlap instead of
 * following each other.
 *
 * Guarantees:
 *   - The consumer receives exactly the source's chunks, in order, then the source's end or its
 *     failure at the position it happened (chunks before a failure are handed out first).
 *   - At most `bytes` (or one chunk, when larger) are held queued; the source is not pulled again
 *     until the consumer takes some.
 *   - One consumer: a second iteration is refused (ERR_STATE). A consumer that stops early ends
 *     the source (its return() is called) once the pull in progress is over.
 *   - A failure of the source is never an unhandled rejection, whether or not anyone consumes.
 *   - A source its store checked whole (checked-read.ts) stays tagged as such.
 */
import { VnsnapError } from '../core/errors';
import { keepClaim } from './checked-read';

export function readAhead(source: AsyncIterable<Buffer>, bytes: number): AsyncIterable<Buffer> {
  const it = source[Symbol.asyncIterator]();
  const queue: Buffer[] = [];
  let queued = 0;
  let ended = false;
  let failure: { e: unknown } | undefined;
  let stopped = false;
  /** Wakes the consumer (a chunk, the end or a failure arrived) or the pump (room was made). */
  let wakeConsumer: (() => void) | undefined;
  let wakePump: (() => void) | undefined;

  const pump = async (): Promise<void> => {
    try {
      while (!stopped) {
        if (queued >= bytes && queue.length > 0) {
          await new Promise<void>((r) => (wakePump = r));
          continue;
        }
        const r = await it.next();
        if (r.done) break;
        queue.push(r.value);
        queued += r.value.length;
        wakeConsumer?.();
      }
    } catch (e) {
      failure = { e };
    }
    ended = true;
    wakeConsumer?.();
    if (stopped) await it.return?.()?.catch(() => undefined);
  };
  const pumping = pump();
  let taken = false;

  return keepClaim(source, {
    [Symbol.asyncIterator](): AsyncIterator<Buffer> {
      if (taken) throw new VnsnapError('ERR_STATE', 'an artefact read ahead can be consumed once');
      taken = true;
      return {
        async next(): Promise<IteratorResult<Buffer>> {
          for (;;) {
            const b = queue.shift();
            if (b) {
              queued -= b.length;
              wakePump?.();
              wakePump = undefined;
              return { value: b, done: false };
            }
            if (ended) {
              if (failure) throw failure.e;
              return { value: undefined, done: true };
            }
            await new Promise<void>((r) => (wakeConsumer = r));
            wakeConsumer = undefined;
          }
        },
        async return(): Promise<IteratorResult<Buffer>> {
          stopped = true;
          queue.length = 0;
          queued = 0;
          wakePump?.();
          await pumping;
          return { value: undefined, done: true };
        },
      };
    },
  });
}
