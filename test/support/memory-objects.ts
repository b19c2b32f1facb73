/**
 * An ObjectBackend in memory, for the fast unit tests of what is built on the object contract
 * (proto/store/object-backend.ts): the content-addressed store above all. It keeps the contract's
 * key rules, atomic whole-object puts, sorted lists and typed failures, and adds what tests need
 * to look inside and to break things on purpose:
 *   - `room`: total bytes it holds before a put is ERR_STORE_FULL;
 *   - `puts`/`gets`/`heads`/`ranges`: counters of calls (to assert that a chunk was not uploaded twice);
 *   - `failPuts(n, code)`: the next n puts fail with that code (a backend going away mid-upload);
 *   - `failCall(n, code)`: the n-th call from now, of any method, fails once (a crash at any step);
 *   - `clock`: the time put() stamps as modifiedMs (assign a fake clock to step time by hand);
 *   - `corrupt(key)` flips a byte of a stored object; `keys()` lists everything raw.
 * pseudoRandomBytes() makes the deterministic data the store and chunker tests feed it, and
 * failureOf() the "CODE: message" line a store call failed with, for exact assertions.
 * Objects are copied in and out: a caller reusing its buffer changes nothing stored.
 */
import { isVnsnapError, VnsnapError, type ErrorCode } from '../../proto/core/errors';
import { checkObjectKey, checkRange, type ObjectBackend, type ObjectInfo } from '../../proto/store/object-backend';

export class MemoryObjects implements ObjectBackend {
  readonly describe = 'memory';
  private readonly objects = new Map<string, { data: Buffer; modifiedMs: number }>();
  private failing: { n: number; code: ErrorCode } = { n: 0, code: 'ERR_UNAVAILABLE' };
  private failAt: { n: number; code: ErrorCode } = { n: 0, code: 'ERR_UNAVAILABLE' };
  /** The time put() records; tests replace it with a fake clock. */
  clock: () => number = Date.now;
  puts = 0;
  gets = 0;
  heads = 0;
  /** getRange() calls (counted in `gets` too). */
  ranges = 0;

  constructor(readonly room = Infinity) {}

  /** Bytes held. */
  get used(): number {
    let n = 0;
    for (const o of this.objects.values()) n += o.data.length;
    return n;
  }

  /** Count a call; throw when it is the one failCall() chose. */
  private call(what: string): void {
    if (this.failAt.n > 0 && --this.failAt.n === 0) {
      throw new VnsnapError(this.failAt.code, `${this.describe}: ${what} failed (injected ${this.failAt.code})`);
    }
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    checkObjectKey(key, this.describe);
    this.call(`put ${key}`);
    this.puts++;
    if (this.failing.n > 0) {
      this.failing.n--;
      throw new VnsnapError(this.failing.code, `${this.describe}: put ${key} failed (injected ${this.failing.code})`);
    }
    const old = this.objects.get(key)?.data.length ?? 0;
    if (this.used - old + data.length > this.room) throw new VnsnapError('ERR_STORE_FULL', `${this.describe}: no room for ${key}`);
    this.objects.set(key, { data: Buffer.from(data), modifiedMs: this.clock() });
  }

  async get(key: string): Promise<Buffer> {
    checkObjectKey(key, this.describe);
    this.call(`get ${key}`);
    this.gets++;
    const o = this.objects.get(key);
    if (!o) throw new VnsnapError('ERR_NOT_FOUND', `${this.describe}: no object ${key}`);
    return Buffer.from(o.data);
  }

  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    checkObjectKey(key, this.describe);
    checkRange(offset, length, this.describe);
    this.call(`get ${key}`);
    this.gets++;
    this.ranges++;
    const o = this.objects.get(key);
    if (!o) throw new VnsnapError('ERR_NOT_FOUND', `${this.describe}: no object ${key}`);
    return Buffer.from(o.data.subarray(offset, offset + length));
  }

  async head(key: string): Promise<ObjectInfo | null> {
    checkObjectKey(key, this.describe);
    this.call(`head ${key}`);
    this.heads++;
    const o = this.objects.get(key);
    return o ? { key, size: o.data.length, modifiedMs: o.modifiedMs } : null;
  }

  async list(prefix: string): Promise<string[]> {
    this.call(`list ${prefix}`);
    return [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort();
  }

  async listInfo(prefix: string): Promise<ObjectInfo[]> {
    this.call(`list ${prefix}`);
    return this.keys()
      .filter((k) => k.startsWith(prefix))
      .map((key) => {
        const o = this.objects.get(key) as { data: Buffer; modifiedMs: number };
        return { key, size: o.data.length, modifiedMs: o.modifiedMs };
      });
  }

  async delete(key: string): Promise<void> {
    checkObjectKey(key, this.describe);
    this.call(`delete ${key}`);
    this.objects.delete(key);
  }

  /** Every key held, sorted. */
  keys(): string[] {
    return [...this.objects.keys()].sort();
  }

  /** The next `n` puts fail with `code`. */
  failPuts(n: number, code: ErrorCode = 'ERR_UNAVAILABLE'): void {
    this.failing = { n, code };
  }

  /** The `n`-th call from now (1 = the next), of any method, fails once with `code`. */
  failCall(n: number, code: ErrorCode = 'ERR_UNAVAILABLE'): void {
    this.failAt = { n, code };
  }

  /** Flip one byte of a stored object (the middle one). */
  corrupt(key: string): void {
    const b = this.objects.get(key)?.data;
    if (!b || b.length === 0) throw new Error(`corrupt: no object ${key}`);
    const at = b.length >> 1;
    b[at] = (b[at] as number) ^ 0xff;
  }
}

/** Deterministic pseudo-random bytes (xorshift32 from `seed`): test data that chunks like real data. */
export function pseudoRandomBytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed | 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** "CODE: message" of the VnsnapError `p` rejects with, or "resolved". */
export async function failureOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return isVnsnapError(e) ? `${e.code}: ${e.message}` : `not a VnsnapError: ${String(e)}`;
  }
  return 'resolved';
}
