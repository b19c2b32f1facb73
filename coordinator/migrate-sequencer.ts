/**
 * Live migration of running VMs of a VNE to other hosts (MigrateVne, docs/migration.md): pure
 * sequencing over injected parts (AgentLink, Catalog, Clock), like the snapshot and restore
 * sequencers. The caller (service.ts) holds the VNE's operation lock for the whole migration, so
 * snapshots, restores, starts and stops of the VNE are refused meanwhile, and this excludes them.
 *
 *   plan      the VNE is RUNNING; every VM to move (placement, else `to` for every VM not
 *             there already) exists, and its source and destination agents are connected.
 *   overlay   ConfigureVne to every agent of the old and new placements: the destinations
 *             become peers of the VNE (MAC routes unchanged: the VMs are still at their sources).
 *   per VM, every VM in parallel (each VM's downtime its own):
 *     1. destination MigrateIncoming → the disk and memory URIs;
 *     2. source MigrateOutgoing (progress: PHASE_DISK_SYNC, PHASE_MIGRATE) → the VM is paused
 *        for its switchover, its disk in sync;
 *     3. destination MigrateAttach: ports gated at the VNE's epoch and generation;
 *     4. the switchover: the catalog places the VM on its destination, and in one event-loop turn
 *        source MigrateFinish (its switch routes the VM's MACs to the destination, QEMU sends the
 *        rest, the source VM is stopped), destination MigrateResume (it waits for its QEMU to
 *        have the whole state, then the VM runs and the gates open: the downtime ends without
 *        a round trip through the coordinator) and ConfigureVne with the new MAC routes to
 *        every agent of the VNE;
 *     5. the source's and the destination's Results → its downtime.
 *   A failure in 1–3, or of MigrateFinish (the source then resumed the VM itself; the catalog
 *   and the routes go back to it — unless the source's session ended during it and the
 *   destination resumes the VM: QEMU had delivered everything), sends MigrateCancel to both agents: the VM runs on at its
 *   source, the destination's waiting VM and partial disk are removed; the migration fails with
 *   that error once every VM has finished or failed (the others complete). A failure in 5 leaves
 *   the VM placed on the destination (the catalog says so) and the VNE FAILED with the reason.
 */
import { randomBytes } from 'node:crypto';
import { VnsnapError, isVnsnapError } from '../proto/core/errors';
import type { MigratedVm } from '../proto/gen/vnsnap/v1/MigratedVm';
import type { MigrationResult } from '../proto/gen/vnsnap/v1/MigrationResult';
import type { SnapshotEvent } from '../proto/gen/vnsnap/v1/SnapshotEvent';
import type { VmProgress__Output } from '../proto/gen/vnsnap/v1/VmProgress';
import type { Vne__Output } from '../proto/gen/vnsnap/v1/Vne';
import type { Clock } from '../proto/core/clock';
import type { Logger } from '../proto/core/log';
import { sendOk, type AgentLink } from './agent-link';
import type { Catalog } from './catalog';
import type { EventBus } from './events';
import { configureVneFor, peerEndpoint, placementOf } from './vne-config';

export const DEFAULT_MIGRATE_TIMEOUT_MS = 600_000;

export interface MigrateRequest {
  vne: string;
  /** VM → destination agent. */
  placement?: Record<string, string>;
  /** Every VM not on this agent goes there (placement wins). */
  to?: string;
  timeoutMs?: number;
}

export interface MigrateDeps {
  agents: AgentLink;
  catalog: Catalog;
  clock: Clock;
  log: Logger;
  events?: EventBus;
  newMigrationId?: (vne: string) => string;
  /**
   * Whether the agent runs with certificates (its Register's `tls`; undefined: not connected).
   * Both ends of a move with them: the streams are mutual TLS, the destination admitting only
   * the source's certificate; one end without: refused.
   */
  tlsOf?: (agentId: string) => boolean | undefined;
}

export type MigrateEventSink = (e: SnapshotEvent) => void;

interface Move {
  vm: string;
  from: string;
  to: string;
  /** Both agents run with certificates: the streams are mutual TLS. */
  tls: boolean;
}

export class MigrateSequencer {
  constructor(private readonly d: MigrateDeps) {}

  /** The VMs that move; throws with nothing touched when the request cannot be carried out. */
  plan(req: MigrateRequest): { vne: Vne__Output; moves: Move[] } {
    const { catalog, agents } = this.d;
    const vne = catalog.getVne(req.vne);
    if (!vne) throw new VnsnapError('ERR_NOT_FOUND', `VNE "${req.vne}" does not exist`);
    if (vne.state !== 'VNE_STATE_RUNNING') throw new VnsnapError('ERR_FAILED_PRECONDITION', `VNE "${vne.name}" is ${vne.state.replace(/^VNE_STATE_/, '').toLowerCase()}: only a running VNE can be migrated`);
    const current = placementOf(vne);
    for (const vm of Object.keys(req.placement ?? {})) {
      if (!(vm in current)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `placement names VM "${vm}", which is not in VNE ${vne.name} (VMs: ${Object.keys(current).join(', ')})`);
    }
    const moves: Move[] = [];
    for (const [vm, from] of Object.entries(current)) {
      const to = req.placement?.[vm] || req.to || '';
      if (!to || to === from) {
        if (req.placement?.[vm] === from) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${vm} already runs on ${from}`);
        continue;
      }
      moves.push({ vm, from, to, tls: false });
    }
    if (moves.length === 0) throw new VnsnapError('ERR_INVALID_ARGUMENT', `nothing to migrate: every VM of ${vne.name} named already runs where asked (${Object.entries(current).map(([v, a]) => `${v} on ${a}`).join(', ')})`);
    for (const m of moves) {
      for (const a of [m.from, m.to]) {
        if (agents.isConnected(a)) continue;
        if (!catalog.getAgent(a)) throw new VnsnapError('ERR_NOT_FOUND', `agent "${a}" (${a === m.to ? 'destination' : 'host'} of VM ${m.vm}) is unknown`);
        throw new VnsnapError('ERR_AGENT_DISCONNECTED', `agent "${a}" (${a === m.to ? 'destination' : 'host'} of VM ${m.vm}) is not connected; nothing was migrated`);
      }
      m.tls = this.tlsBetween(m);
    }
    return { vne, moves };
  }

  /** Both ends with certificates (true) or neither (false); one only: refused, before anything moved. */
  private tlsBetween(m: Move): boolean {
    const from = this.d.tlsOf?.(m.from) ?? false;
    const to = this.d.tlsOf?.(m.to) ?? false;
    if (from === to) return from;
    const [withTls, without] = from ? [m.from, m.to] : [m.to, m.from];
    throw new VnsnapError('ERR_FAILED_PRECONDITION', `agent "${withTls}" runs with certificates and agent "${without}" without: VM ${m.vm}'s disk and memory would cross the underlay in clear; nothing was migrated`);
  }

  async migrate(req: MigrateRequest, sink: MigrateEventSink = () => undefined): Promise<MigrationResult> {
    const { catalog, clock, log } = this.d;
    const { vne, moves } = this.plan(req);
    const id = this.d.newMigrationId?.(vne.name) ?? `migrate-${vne.name}-${randomBytes(3).toString('hex')}`;
    const emit = (e: Omit<SnapshotEvent, 'snapshotId' | 'timeUnixMs'>) => sink({ snapshotId: id, timeUnixMs: clock.now(), ...e });
    const t0 = clock.now();
    const ac = new AbortController();
    const timeoutMs = req.timeoutMs || DEFAULT_MIGRATE_TIMEOUT_MS;
    let timedOut = false;
    const timer = clock.setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, timeoutMs);
    const opts = (onProgress?: (p: VmProgress__Output) => void) => ({ signal: ac.signal, timeoutMs: 0, ...(onProgress ? { onProgress } : {}) });
    this.d.events?.publish({ kind: 'migration.started', vne: vne.name, message: `migration ${id}: ${moves.map((m) => `${m.vm} ${m.from} → ${m.to}`).join(', ')}` });
    log.info({ migration: id, vne: vne.name, moves }, 'migration starting');
    emit({ note: `migrate: ${moves.map((m) => `${m.vm} ${m.from} → ${m.to}`).join(', ')}` });

    // Every agent of the old and new placements is a peer of the VNE while VMs move.
    const hosts = [...new Set([...Object.values(placementOf(vne)), ...moves.map((m) => m.to)])].sort();
    try {
      await Promise.all(hosts.map((a) => sendOk(this.d.agents, a, { configureVne: withPeers(configureVneFor(vne, a, this.d.agents), hosts, a, this.d.agents) }, opts())));
    } catch (e) {
      clock.clearTimeout(timer);
      throw this.wrap(e, id, timedOut, timeoutMs);
    }

    const results = await Promise.allSettled(moves.map((m) => this.one(id, vne, m, hosts, emit, opts)));
    clock.clearTimeout(timer);
    // The overlay of the final placement: hosts left without VMs of the VNE are no longer its peers
    // (a later cut would wait for their markers).
    const final = catalog.getVne(vne.name) ?? vne;
    await Promise.all(
      [...new Set(Object.values(placementOf(final)))].filter((a) => this.d.agents.isConnected(a)).map((a) =>
        sendOk(this.d.agents, a, { configureVne: configureVneFor(final, a, this.d.agents) }, { timeoutMs: 60_000 }).catch((e: Error) => log.warn({ migration: id, agent: a, error: e.message }, 'ConfigureVne after the migration failed')),
      ),
    );
    const done = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failures = results.flatMap((r, i) => (r.status === 'rejected' ? [{ move: moves[i] as Move, error: this.wrap(r.reason, id, timedOut, timeoutMs) }] : []));
    const result: MigrationResult = { migrationId: id, vne: vne.name, vms: done, totalMs: clock.now() - t0 };
    if (failures.length > 0) {
      const first = failures[0]!.error;
      const msg = failures.map((f) => `${f.move.vm}: ${f.error.message}`).join('; ');
      log.warn({ migration: id, vne: vne.name, failures: msg }, 'migration failed');
      this.d.events?.publish({ kind: 'migration.failed', vne: vne.name, message: msg });
      throw new VnsnapError(first.code, `migration ${id} of ${vne.name} failed (${done.length ? `${done.map((v) => v.vm).join(', ')} moved; ` : ''}${msg})`);
    }
    const fmt = done.map((v) => `${v.vm} ${v.fromAgent} → ${v.toAgent} (downtime ${Number(v.downtimeMs ?? 0).toFixed(1)} ms)`).join(', ');
    emit({ note: `migrate: done: ${fmt}` });
    this.d.events?.publish({ kind: 'migration.complete', vne: vne.name, message: `migration ${id}: ${fmt}` });
    log.info({ migration: id, vne: vne.name, vms: done }, 'migration complete');
    emit({ migrated: result });
    return result;
  }

  private async one(id: string, vne0: Vne__Output, m: Move, hosts: readonly string[], emit: (e: Omit<SnapshotEvent, 'snapshotId' | 'timeUnixMs'>) => void, opts: (p?: (p: VmProgress__Output) => void) => { signal: AbortSignal; timeoutMs: number }): Promise<MigratedVm> {
    const { agents, catalog, clock } = this.d;
    const t0 = clock.now();
    const spec = vne0.vms.find((v) => v.name === m.vm);
    if (!spec) throw new VnsnapError('ERR_INTERNAL', `VM ${m.vm} vanished from VNE ${vne0.name}`);
    const ids = { migrationId: id, vne: vne0.name, vm: m.vm };
    let switched = false;
    try {
      const inc = await sendOk(agents, m.to, { migrateIncoming: { ...ids, vm: { ...spec, host: m.to }, vneVms: vne0.vms, tls: m.tls, fromAgent: m.from } }, opts());
      const targets = inc.migrateIncoming;
      if (!targets) throw new VnsnapError('ERR_INTERNAL', `agent ${m.to}: MigrateIncoming returned no URIs`);
      emit({ note: `migrate: ${m.vm}: ${m.to} waits (disk ${targets.diskUri || 'none'}, memory ${targets.memoryUri})` });
      const out = await sendOk(agents, m.from, { migrateOutgoing: { ...ids, diskUri: targets.diskUri, memoryUri: targets.memoryUri, toAgent: m.to, tls: m.tls } }, opts((p) => emit({ vm: { ...p, vm: p.vm || m.vm, host: p.host || m.from } })));
      const paused = Number(out.migrateOutgoing?.pausedUnixUs ?? 0);
      if (out.migrateOutgoing?.throttled) emit({ note: `migrate: ${m.vm}: the guest's disk writes were throttled for the mirror to converge` });
      const vne = catalog.getVne(vne0.name) ?? vne0;
      await sendOk(agents, m.to, { migrateAttach: { ...ids, epoch: vne.epoch, generation: vne.generation } }, opts());

      // 4. The switchover: the catalog first (a coordinator that fails from here finds the VM at its destination).
      const now = catalog.tx(() => {
        const cur = catalog.getVne(vne0.name) ?? vne0;
        const moved = catalog.updateVne(cur.name, { placement: { ...placementOf(cur), [m.vm]: m.to } });
        catalog.disks.forget(cur.name, [m.vm]);
        return moved;
      });
      const finish = sendOk(agents, m.from, { migrateFinish: { ...ids, toAgent: m.to } }, opts());
      // MigrateResume leaves with it: the destination resumes the VM the moment its QEMU has the
      // whole state (which it has only if the source's QEMU completed), not a round trip later.
      const resuming = sendOk(agents, m.to, { migrateResume: ids }, opts());
      resuming.catch(() => undefined);
      const routes = Promise.all(hosts.filter((a) => agents.isConnected(a)).map((a) => sendOk(agents, a, { configureVne: withPeers(configureVneFor(now, a, agents), hosts, a, agents) }, opts())));
      let fin: Awaited<typeof finish> | undefined;
      try {
        fin = await finish;
      } catch (e) {
        // The source's session ended during its switchover: the outcome is unknown. The
        // destination knows: its VM resumes only if QEMU delivered the whole state.
        if (isVnsnapError(e, 'ERR_AGENT_DISCONNECTED') && (await resuming.then(() => true, () => false))) {
          switched = true;
          emit({ note: `migrate: ${m.vm}: ${m.from} went away during the switchover; the VM resumed on ${m.to}` });
          await routes.catch(() => undefined);
          return { vm: m.vm, fromAgent: m.from, toAgent: m.to, downtimeMs: 0, totalMs: clock.now() - t0, diskBytes: Number(out.migrateOutgoing?.diskBytes ?? 0), memoryBytes: 0, forwardedFrames: 0, droppedFrames: 0 };
        }
        // The source resumed the VM (its QEMU keeps a failed migration's source): back to it.
        const back = catalog.tx(() => {
          const cur = catalog.getVne(vne0.name) ?? vne0;
          return catalog.updateVne(cur.name, { placement: { ...placementOf(cur), [m.vm]: m.from } });
        });
        await routes.catch(() => undefined);
        await Promise.all(hosts.filter((a) => agents.isConnected(a)).map((a) => sendOk(agents, a, { configureVne: withPeers(configureVneFor(back, a, agents), hosts, a, agents) }, { timeoutMs: 60_000 }).catch(() => undefined)));
        throw e;
      }
      switched = true;
      const resumed = await resuming;
      await routes;
      const r = resumed.migrateResume;
      if (r?.diskPath) catalog.disks.put({ vne: vne0.name, vm: m.vm, host: m.to, path: r.diskPath, bytes: 0, keptUnixMs: 0 });
      const downtimeMs = paused > 0 && r ? (Number(r.resumedUnixUs) - paused) / 1000 : 0;
      emit({ vm: { vm: m.vm, host: m.to, phase: 'PHASE_SWITCHOVER', pauseMs: downtimeMs, phaseDone: true, fraction: 1 } });
      return {
        vm: m.vm,
        fromAgent: m.from,
        toAgent: m.to,
        downtimeMs,
        totalMs: clock.now() - t0,
        diskBytes: Number(out.migrateOutgoing?.diskBytes ?? 0),
        memoryBytes: Number(fin?.migrateFinish?.memoryBytes ?? 0),
        forwardedFrames: fin?.migrateFinish?.forwardedFrames ?? 0,
        droppedFrames: fin?.migrateFinish?.droppedFrames ?? 0,
      };
    } catch (e) {
      if (!switched) {
        emit({ note: `migrate: ${m.vm}: failed before its switchover (${(e as Error).message}); it runs on at ${m.from}` });
        await Promise.all(
          [m.from, m.to].map((a) => agents.send(a, { migrateCancel: ids }, { timeoutMs: 60_000 }).then(
            (r) => void (r.ok || this.d.log.warn({ migration: id, agent: a, error: r.errorMessage }, 'MigrateCancel failed')),
            (err: Error) => this.d.log.warn({ migration: id, agent: a, error: err.message }, 'MigrateCancel not delivered'),
          )),
        );
      } else {
        const reason = `migration ${id} of VM ${m.vm} failed after its switchover to ${m.to}: ${(e as Error).message}`;
        catalog.updateVne(vne0.name, { state: 'VNE_STATE_FAILED', stateReason: reason });
        emit({ note: `migrate: ${reason}` });
      }
      throw e;
    }
  }

  private wrap(e: unknown, id: string, timedOut: boolean, timeoutMs: number): VnsnapError {
    if (timedOut) return new VnsnapError('ERR_TIMEOUT', `migration ${id} did not finish within ${timeoutMs} ms`);
    if (isVnsnapError(e)) return e;
    return new VnsnapError('ERR_INTERNAL', `migration ${id} failed: ${(e as Error).message}`, { cause: e });
  }
}

/** A ConfigureVne whose peers are every agent of `hosts` but `self` (the MAC routes as given). */
function withPeers<T extends { peers?: unknown[] }>(cfg: T, hosts: readonly string[], self: string, link: Pick<AgentLink, 'endpoint'>): T {
  const peers = hosts
    .filter((h) => h !== self)
    .sort()
    .map((h) => peerEndpoint(h, link));
  return { ...cfg, peers };
}
