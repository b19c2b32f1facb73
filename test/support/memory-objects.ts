/**
 * An ObjectBackend in memory, for the fast unit tests of what is built on the object contract
 * (proto/store/object-backend.ts): the content-addressed store above all. It keeps the contract's
 * key rules, atomic whole-object puts, sorted lists and typed failures, and adds what tests need
 * to look inside and to break things on purpose:
 *   - `room`: total bytes it holds before a put is ERR_STORE_FULL;
 *   - `puts`/`gets`/`heads`: counters of calls (to assert that a chunk was not uploaded twice);
 *   - `failPuts(n, code)`: the next n puts fail with that code (a backend going away mid-upload);
 *   - `corrupt(key)` flips a byte of a stored object; `keys()` lists everything raw.
 * pseudoRandomBytes() makes the deterministic data the store and chunker tests feed it.
 * Objects are copied in and out: a caller reusing its buffer changes nothing stored.
 */
import { VnsnapError, type ErrorCode } from '../../proto/core/errors';
import { checkObjectKey, type ObjectBackend, type ObjectInfo } from '../../proto/store/object-backend';

export class MemoryObjects implements ObjectBackend {
  readonly describe = 'memory';
  private readonly objects = new Map<string, Buffer>();
  private failing: { n: number; code: ErrorCode } = { n: 0, code: 'ERR_UNAVAILABLE' };
  puts = 0;
  gets = 0;
  heads = 0;

  constructor(readonly room = Infinity) {}

  /** Bytes held. */
  get used(): number {
    let n = 0;
    for (const b of this.objects.values()) n += b.length;
    return n;
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    checkObjectKey(key, this.describe);
    this.puts++;
    if (this.failing.n > 0) {
      this.failing.n--;
      throw new VnsnapError(this.failing.code, `${this.describe}: put ${key} failed (injected ${this.failing.code})`);
    }
    const old = this.objects.get(key)?.length ?? 0;
    if (this.used - old + data.length > this.room) throw new VnsnapError('ERR_STORE_FULL', `${this.describe}: no room for ${key}`);
    this.objects.set(key, Buffer.from(data));
  }

  async get(key: string): Promise<Buffer> {
    checkObjectKey(key, this.describe);
    this.gets++;
    const b = this.objects.get(key);
    if (!b) throw new VnsnapError('ERR_NOT_FOUND', `${this.describe}: no object ${key}`);
    return Buffer.from(b);
  }

  async head(key: string): Promise<ObjectInfo | null> {
    checkObjectKey(key, this.describe);
    this.heads++;
    const b = this.objects.get(key);
    return b ? { key, size: b.length } : null;
  }

  async list(prefix: string): Promise<string[]> {
    return [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort();
  }

  async delete(key: string): Promise<void> {
    checkObjectKey(key, this.describe);
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

  /** Flip one byte of a stored object (the middle one). */
  corrupt(key: string): void {
    const b = this.objects.get(key);
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
