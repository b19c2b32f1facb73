/**
 * The forwarding database of one VNE: MAC → where frames for it go.
 *
 * An owner is a small integer: a local port id, or a peer switch id (the bridge decides which
 * space an owner belongs to; see forwarding.ts). Learning follows Open vSwitch's mac-learning:
 *  - multicast/broadcast sources are never learned;
 *  - an entry is written only when it is new or has moved; otherwise learning just refreshes
 *    its `seen` tick (one field store on the hot path);
 *  - aging is an incremental scan: each `age()` call looks at a bounded number of entries, so
 *    no timer per entry and no pause proportional to the table size;
 *  - the table has a size cap; when a new MAC arrives at the cap, an entry is evicted from the
 *    owner holding the most entries, so a MAC flood from one port cannot push out the others;
 *  - static entries (programmed by the control plane, MAC → remote switch or local port) are
 *    never aged, evicted or moved by learning;
 *  - `flushOwner` removes every learned entry of a port when it detaches.
 * Ticks are seconds (or any coarse unit) supplied by the caller; no clock is read here.
 */

export interface FdbEntry {
  readonly mac: number;
  owner: number;
  seen: number;
  readonly isStatic: boolean;
  /**
   * A static route to a peer for a VM that migrated there (Switch.relayMovedMac): frames for it
   * that arrive from a tunnel are relayed to that peer instead of dropped by the split horizon.
   */
  relay?: boolean;
}

export interface FdbOptions {
  maxEntries: number;
  /** Entries not seen for this many ticks are removed by age(). */
  agingTicks: number;
  /** How many entries one age() call examines at most. */
  scanPerCall: number;
}

export const DEFAULT_FDB_OPTIONS: FdbOptions = { maxEntries: 8192, agingTicks: 300, scanPerCall: 256 };

export interface FdbCounters {
  learned: number;
  moved: number;
  aged: number;
  evicted: number;
}

export class Fdb {
  private readonly table = new Map<number, FdbEntry>();
  private readonly byOwner = new Map<number, Set<number>>();
  private scan: IterableIterator<FdbEntry> | undefined;
  readonly counters: FdbCounters = { learned: 0, moved: 0, aged: 0, evicted: 0 };
  private readonly opts: FdbOptions;

  constructor(opts: Partial<FdbOptions> = {}) {
    this.opts = { ...DEFAULT_FDB_OPTIONS, ...opts };
  }

  get size(): number {
    return this.table.size;
  }

  lookup(mac: number): FdbEntry | undefined {
    return this.table.get(mac);
  }

  /** Learn that `mac` (a unicast source; callers skip group MACs) was seen behind `owner` at tick `now`. */
  learn(mac: number, owner: number, now: number): void {
    const e = this.table.get(mac);
    if (e !== undefined) {
      if (e.owner !== owner && !e.isStatic) {
        this.ownerSet(e.owner).delete(mac);
        e.owner = owner;
        this.ownerSet(owner).add(mac);
        this.counters.moved++;
      }
      e.seen = now;
      return;
    }
    if (this.table.size >= this.opts.maxEntries && !this.evictOne()) return;
    this.insert({ mac, owner, seen: now, isStatic: false });
    this.counters.learned++;
  }

  /** Program a static entry (replaces any learned or static entry for the MAC; the same static entry stays as it is). */
  setStatic(mac: number, owner: number): void {
    const e = this.table.get(mac);
    if (e && e.isStatic && e.owner === owner) return;
    this.remove(mac);
    this.insert({ mac, owner, seen: 0, isStatic: true });
  }

  remove(mac: number): boolean {
    const e = this.table.get(mac);
    if (!e) return false;
    this.table.delete(mac);
    this.ownerSet(e.owner).delete(mac);
    return true;
  }

  /** Remove the owner's entries (learned only, unless includeStatic). Returns how many. */
  flushOwner(owner: number, includeStatic = false): number {
    const set = this.byOwner.get(owner);
    if (!set) return 0;
    let n = 0;
    for (const mac of [...set]) {
      const e = this.table.get(mac);
      if (e && (includeStatic || !e.isStatic)) {
        this.remove(mac);
        n++;
      }
    }
    return n;
  }

  /** Remove every learned entry (static ones stay). */
  flushLearned(): void {
    for (const e of [...this.table.values()]) if (!e.isStatic) this.remove(e.mac);
  }

  /** Examine up to scanPerCall entries, removing learned ones older than agingTicks. */
  age(now: number): number {
    let removed = 0;
    for (let i = 0; i < this.opts.scanPerCall; i++) {
      if (!this.scan) this.scan = this.table.values();
      const r = this.scan.next();
      if (r.done) {
        this.scan = undefined;
        break;
      }
      const e = r.value;
      if (!e.isStatic && now - e.seen >= this.opts.agingTicks) {
        this.remove(e.mac);
        this.counters.aged++;
        removed++;
      }
    }
    return removed;
  }

  entries(): FdbEntry[] {
    return [...this.table.values()];
  }

  countOf(owner: number): number {
    return this.byOwner.get(owner)?.size ?? 0;
  }

  private insert(e: FdbEntry): void {
    this.table.set(e.mac, e);
    this.ownerSet(e.owner).add(e.mac);
  }

  private ownerSet(owner: number): Set<number> {
    let s = this.byOwner.get(owner);
    if (!s) {
      s = new Set();
      this.byOwner.set(owner, s);
    }
    return s;
  }

  /** Evict one learned entry from the owner with the most entries. */
  private evictOne(): boolean {
    let bestOwner = -1;
    let bestSize = 0;
    for (const [owner, set] of this.byOwner) {
      if (set.size > bestSize) {
        bestSize = set.size;
        bestOwner = owner;
      }
    }
    const set = this.byOwner.get(bestOwner);
    if (!set) return false;
    for (const mac of set) {
      const e = this.table.get(mac);
      if (e && !e.isStatic) {
        this.remove(mac);
        this.counters.evicted++;
        return true;
      }
    }
    return false;
  }
}
