/**
 * The coordinator's event bus: what WatchEvents streams (agents joining and leaving, VNE,
 * snapshot and restore milestones). Synchronous fan-out; a subscriber that throws is dropped.
 */
import type { Event } from '../proto/gen/vnsnap/v1/Event';

export type EventKind =
  | 'agent.joined'
  | 'agent.left'
  | 'vne.defined'
  | 'vne.updated'
  | 'vne.deleted'
  | 'vne.started'
  | 'vne.stopped'
  | 'vne.failed'
  | 'vne.degraded'
  | 'vne.recovered'
  | 'vm.fenced'
  | 'snapshot.state'
  | 'snapshot.complete'
  | 'snapshot.aborted'
  | 'snapshot.deleted'
  | 'restore.started'
  | 'restore.complete'
  | 'restore.failed'
  | 'migration.started'
  | 'migration.complete'
  | 'migration.failed';

export interface CoordinatorEvent {
  kind: EventKind;
  vne?: string;
  snapshotId?: string;
  agent?: string;
  message?: string;
}

export type EventListener = (e: Required<Event>) => void;

export class EventBus {
  private readonly listeners = new Set<EventListener>();

  constructor(private readonly now: () => number = Date.now) {}

  publish(e: CoordinatorEvent): void {
    const ev: Required<Event> = { timeUnixMs: this.now(), kind: e.kind, vne: e.vne ?? '', snapshotId: e.snapshotId ?? '', agent: e.agent ?? '', message: e.message ?? '' };
    for (const l of [...this.listeners]) {
      try {
        l(ev);
      } catch {
        this.listeners.delete(l);
      }
    }
  }

  /** Returns the unsubscribe function. */
  subscribe(l: EventListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  get size(): number {
    return this.listeners.size;
  }
}
