/**
 * An object backend that records every call it passes on to another one (operation and key or
 * prefix), for the tests and the bench that count what a writer session asks of its store. It has
 * putUnsynced()/sync() exactly when the backend it wraps has them (a local directory's deferred
 * syncs), so a writer over it does what it does over that backend.
 */
import type { ObjectBackend, ObjectInfo } from '../../proto/store/object-backend';

export class CountingObjects implements ObjectBackend {
  /** "op key" for each call, in the order they were made. */
  readonly calls: string[] = [];

  readonly putUnsynced?: (key: string, data: Uint8Array) => Promise<void>;
  readonly sync?: (keys: readonly string[]) => Promise<void>;

  constructor(readonly inner: ObjectBackend) {
    const { putUnsynced, sync } = inner;
    if (putUnsynced && sync) {
      this.putUnsynced = (key, data) => this.note('putUnsynced', key, putUnsynced.call(inner, key, data));
      this.sync = (keys) => this.note('sync', keys.join(','), sync.call(inner, keys));
    }
  }

  get describe(): string {
    return this.inner.describe;
  }

  /** Calls since `from` (an earlier calls.length) whose op is one of `ops` (all when omitted). */
  since(from: number, ...ops: string[]): string[] {
    return this.calls.slice(from).filter((c) => ops.length === 0 || ops.includes(c.slice(0, c.indexOf(' '))));
  }

  private note<T>(op: string, key: string, p: Promise<T>): Promise<T> {
    this.calls.push(`${op} ${key}`);
    return p;
  }

  put(key: string, data: Uint8Array): Promise<void> {
    return this.note('put', key, this.inner.put(key, data));
  }
  get(key: string): Promise<Buffer> {
    return this.note('get', key, this.inner.get(key));
  }
  getRange(key: string, offset: number, length: number): Promise<Buffer> {
    return this.note('getRange', key, this.inner.getRange(key, offset, length));
  }
  head(key: string): Promise<ObjectInfo | null> {
    return this.note('head', key, this.inner.head(key));
  }
  list(prefix: string): Promise<string[]> {
    return this.note('list', prefix, this.inner.list(prefix));
  }
  listInfo(prefix: string): Promise<ObjectInfo[]> {
    return this.note('listInfo', prefix, this.inner.listInfo(prefix));
  }
  delete(key: string): Promise<void> {
    return this.note('delete', key, this.inner.delete(key));
  }
  close(): void {
    this.inner.close?.();
  }
}
