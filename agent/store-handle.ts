/**
 * The agent's snapshot store, named by its config and opened when the agent starts.
 *
 * The agent's parts (snapshot and restore runners, command dispatcher) are built in its
 * constructor and keep the store they are given; opening a store is asynchronous (a local
 * directory is created and its layout checked, an S3 bucket is reached: openStore in
 * proto/store/store-config.ts). StoreHandle is what they keep: a SnapshotStore whose every call
 * goes to the store open() opened. Guarantees:
 *   - open() opens the configured store once and checks it can be used now: an S3 bucket that
 *     does not exist (ERR_CONFIG), refused credentials (ERR_PERMISSION_DENIED) or an endpoint
 *     nobody answers (ERR_UNAVAILABLE) fail the agent's start with one line naming the store,
 *     not the first snapshot.
 *   - Before open() every call is ERR_STATE (a rejected promise, never a synchronous throw).
 *   - describe is describeStore() of the config: safe to log (no credentials).
 *   - read() hands out the opened store's read itself, so a read the store checked whole
 *     (proto/store/checked-read.ts) is not hashed again by a restore.
 *   - createBlockImage is the opened store's own, or undefined where it has none (a store of
 *     whole files): a caller sees what the store behind it can do.
 *   - close() closes the opened store (an S3 client's sockets) when the agent stops.
 */
import { VnsnapError } from '../proto/core/errors';
import type { ArtefactWriter, ReadExpect, SnapshotStore, StoredArtefact } from '../proto/store/snapshot-store';
import { checkStoreReachable, describeStore, openStore, type StoreConfig } from '../proto/store/store-config';
import { SESSION_LINGER_MS } from '../proto/store/cas-store';

export class StoreHandle implements SnapshotStore {
  private opened: SnapshotStore | undefined;
  readonly describe: string;

  constructor(readonly config: StoreConfig) {
    this.describe = describeStore(config);
  }

  /** Open the store (once) and check that it answers; the store. */
  async open(): Promise<SnapshotStore> {
    if (!this.opened) {
      // Its writer session outlives a snapshot's writers briefly: the next snapshot's join it (cas-store.ts).
      const s = await openStore(this.config, { sessionLingerMs: SESSION_LINGER_MS });
      await checkStoreReachable(s, this.config);
      this.opened = s;
    }
    return this.opened;
  }

  private get store(): SnapshotStore {
    if (!this.opened) throw new VnsnapError('ERR_STATE', `the snapshot store (${this.describe}) is not open yet: the agent has not started`);
    return this.opened;
  }

  /** The opened store's block images, where it has them (a content-addressed store); undefined otherwise. */
  get createBlockImage(): SnapshotStore['createBlockImage'] {
    return this.opened?.createBlockImage?.bind(this.opened);
  }

  async create(relPath: string): Promise<ArtefactWriter> {
    return this.store.create(relPath);
  }
  async put(relPath: string, data: Uint8Array): Promise<StoredArtefact> {
    return this.store.put(relPath, data);
  }
  async get(relPath: string): Promise<Buffer> {
    return this.store.get(relPath);
  }
  read(relPath: string, expect?: ReadExpect): AsyncIterable<Buffer> {
    if (this.opened) return this.opened.read(relPath, expect); // unwrapped: a checked read stays tagged
    const notOpen = async function* (h: StoreHandle): AsyncGenerator<Buffer> {
      yield* h.store.read(relPath, expect); // ERR_STATE on the first step
    };
    return notOpen(this);
  }
  async link(from: string, to: string): Promise<StoredArtefact> {
    return this.store.link(from, to);
  }
  async stat(relPath: string): Promise<number | null> {
    return this.store.stat(relPath);
  }
  async verify(a: StoredArtefact): Promise<string | null> {
    return this.store.verify(a);
  }
  async list(prefix: string): Promise<string[]> {
    return this.store.list(prefix);
  }
  async delete(relPath: string): Promise<void> {
    return this.store.delete(relPath);
  }
  async deleteByPrefix(prefix: string): Promise<number> {
    return this.store.deleteByPrefix(prefix);
  }
  /** Close the opened store (idempotent); a later call is ERR_STATE like one before open(). */
  close(): void {
    const s = this.opened;
    this.opened = undefined;
    s?.close?.();
  }
}
