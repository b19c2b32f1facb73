/**
 * A fake CoordinatorService for the CLI's tests and the interop check: a real grpc-js server
 * (with grpc.health.v1 and server reflection, as the real coordinator has) answering from
 * canned data, with scripted SnapshotEvent streams for CreateSnapshot and RestoreSnapshot.
 *
 * Canned world: agents h1, h2 (connected) and h3 (disconnected); VNE "blue" (3 VMs, RUNNING,
 * two snapshots: snap-0001 COMPLETE, snap-0002 ABORTED); VNE "red" (RUNNING; every snapshot of
 * it aborts: "agent h2 disconnected"). Errors are VnsnapErrors sent through toServiceError, as
 * the real server does. Every request is recorded in `calls`.
 *
 * Run alone it behaves like the real coordinator's main as far as a client can tell:
 *   node dist/test/interop/fake-coordinator.js --listen 127.0.0.1:0
 *   → {"event":"ready","address":"127.0.0.1:PORT"} on stdout, then serves until SIGTERM/SIGINT.
 */
import * as grpc from '@grpc/grpc-js';
import { VnsnapError } from '../../proto/core/errors';
import { toServiceError } from '../../proto/core/grpc-status';
import { COORDINATOR_SERVICE, loadVnsnap } from '../../proto/core/grpc';
import { addHealthAndReflection } from '../../proto/core/grpc-reflection';
import type { Agent } from '../../proto/gen/vnsnap/v1/Agent';
import type { CoordinatorServiceHandlers } from '../../proto/gen/vnsnap/v1/CoordinatorService';
import type { Event } from '../../proto/gen/vnsnap/v1/Event';
import type { Phase } from '../../proto/gen/vnsnap/v1/Phase';
import type { Schedule } from '../../proto/gen/vnsnap/v1/Schedule';
import type { Snapshot } from '../../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotEvent } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import type { VmSnapshot } from '../../proto/gen/vnsnap/v1/VmSnapshot';
import type { Vne } from '../../proto/gen/vnsnap/v1/Vne';

/** 2025-11-23 08:00:00 UTC in µs: every canned instant is relative to it. */
export const T0_US = 1_763_884_800_000_000;
export const T0_MS = T0_US / 1000;

export interface FakeCall {
  method: string;
  request: unknown;
}

export interface FakeOptions {
  /** Delay between scripted stream events (ms). */
  eventDelayMs?: number;
  /** Keep WatchEvents open after the canned events (like the real one) instead of ending it. */
  holdEvents?: boolean;
}

export interface FakeCoordinator {
  address: string;
  calls: FakeCall[];
  vnes: Map<string, Vne>;
  snapshots: Map<string, Snapshot>;
  stop(): Promise<void>;
}

function vm(name: string, host: string, mac: string, memoryMib = 256): NonNullable<Vne['vms']>[number] {
  return { name, host, macs: [mac], driver: { qemu: { memoryMib, cpus: 1, kernel: '/var/lib/vnsnap/vmlinuz', initrd: '/var/lib/vnsnap/initrd.gz' } } };
}

/** A VM's snapshot record: pre-copy, then the cut, pause (with the final copy inside), channel, persist. */
export function cannedVmSnapshot(name: string, host: string, o: { precopyStartUs: number; precopyEndUs: number; cutUs: number; pauseMs: number; channelEndUs: number; persistEndUs: number; channelFrames: number }): VmSnapshot {
  const pauseEnd = o.cutUs + Math.round(o.pauseMs * 1000);
  const p = (phase: Phase, startUnixUs: number, endUnixUs: number): { phase: Phase; startUnixUs: number; endUnixUs: number } => ({ phase, startUnixUs, endUnixUs });
  return {
    name,
    host,
    pauseMs: o.pauseMs,
    cutUnixUs: o.cutUs,
    memoryBytes: 256 * 1024 * 1024,
    diskBytes: 64 * 1024 * 1024,
    channelFrames: o.channelFrames,
    phases: [
      p('PHASE_PRECOPY', o.precopyStartUs, o.precopyEndUs),
      p('PHASE_PAUSE', o.cutUs, pauseEnd),
      p('PHASE_COPY', o.cutUs + 400, pauseEnd - 300),
      p('PHASE_CHANNEL', o.cutUs, o.channelEndUs),
      p('PHASE_PERSIST', o.channelEndUs, o.persistEndUs),
    ],
  };
}

export function cannedSnapshot(id: string, vne: string, epoch: number, startUs: number): Snapshot {
  const cut = startUs + 1_802_000;
  const vms = [
    cannedVmSnapshot('vm1', 'h1', { precopyStartUs: startUs, precopyEndUs: startUs + 1_800_000, cutUs: cut, pauseMs: 12.3, channelEndUs: startUs + 1_900_000, persistEndUs: startUs + 2_300_000, channelFrames: 3 }),
    cannedVmSnapshot('vm2', 'h1', { precopyStartUs: startUs, precopyEndUs: startUs + 1_650_000, cutUs: cut + 120, pauseMs: 9.8, channelEndUs: startUs + 1_900_000, persistEndUs: startUs + 2_250_000, channelFrames: 0 }),
    cannedVmSnapshot('vm3', 'h2', { precopyStartUs: startUs + 2_000, precopyEndUs: startUs + 1_790_000, cutUs: cut + 410, pauseMs: 14.1, channelEndUs: startUs + 1_910_000, persistEndUs: startUs + 2_340_000, channelFrames: 2 }),
  ];
  return {
    id,
    vne,
    epoch,
    mode: 'SNAPSHOT_MODE_PRECOPY',
    state: 'SNAPSHOT_STATE_COMPLETE',
    description: 'before upgrade',
    createdUnixMs: Math.floor(startUs / 1000),
    completedUnixMs: Math.floor(startUs / 1000) + 2345,
    vms,
    artefacts: vms.flatMap((v) => [
      { path: `snapshots/${id}/${v.name}.mem`, size: 256 * 1024 * 1024, sha256: 'ab'.repeat(32), kind: 'ARTEFACT_KIND_MEMORY' as const, owner: v.name },
      { path: `snapshots/${id}/${v.name}.qcow2`, size: 64 * 1024 * 1024, sha256: 'cd'.repeat(32), kind: 'ARTEFACT_KIND_DISK' as const, owner: v.name },
    ]),
    manifestPath: `snapshots/${id}/manifest.pb`,
    sizeBytes: 3 * 320 * 1024 * 1024,
    lostFrames: 0,
    generation: 1,
  };
}

function cannedWorld(): { vnes: Map<string, Vne>; snapshots: Map<string, Snapshot>; agents: Agent[] } {
  const vnes = new Map<string, Vne>();
  vnes.set('blue', {
    name: 'blue',
    vni: 100,
    vms: [vm('vm1', 'h1', '52:54:00:00:00:01'), vm('vm2', 'h1', '52:54:00:00:00:02'), vm('vm3', 'h2', '52:54:00:00:00:03')],
    generation: 1,
    epoch: 2,
    state: 'VNE_STATE_RUNNING',
    createdUnixMs: T0_MS - 3_600_000,
    updatedUnixMs: T0_MS - 60_000,
    placement: { vm1: 'h1', vm2: 'h1', vm3: 'h2' },
  });
  vnes.set('red', {
    name: 'red',
    vni: 200,
    vms: [vm('web', 'h1', '52:54:00:00:01:01', 512), vm('db', 'h2', '52:54:00:00:01:02', 1024)],
    generation: 0,
    epoch: 0,
    state: 'VNE_STATE_RUNNING',
    createdUnixMs: T0_MS - 7_200_000,
    updatedUnixMs: T0_MS - 7_200_000,
    placement: { web: 'h1', db: 'h2' },
  });
  const snapshots = new Map<string, Snapshot>();
  snapshots.set('snap-0001', cannedSnapshot('snap-0001', 'blue', 1, T0_US));
  snapshots.set('snap-0002', {
    ...cannedSnapshot('snap-0002', 'blue', 2, T0_US + 600_000_000),
    state: 'SNAPSHOT_STATE_ABORTED',
    error: 'precopy deadline: agent h2 did not answer',
    description: '',
    completedUnixMs: 0,
    artefacts: [],
    manifestPath: '',
    sizeBytes: 0,
  });
  const agents: Agent[] = [
    { id: 'h1', hostname: 'host-1', version: '0.1.0', tunnelAddress: '10.0.0.1', tunnelPort: 6081, state: 'AGENT_STATE_CONNECTED', lastSeenUnixMs: T0_MS, drivers: ['qemu', 'sim'], vms: ['vm1', 'vm2', 'web'], connectedUnixMs: T0_MS - 86_400_000 },
    { id: 'h2', hostname: 'host-2', version: '0.1.0', tunnelAddress: '10.0.0.2', tunnelPort: 6081, state: 'AGENT_STATE_CONNECTED', lastSeenUnixMs: T0_MS, drivers: ['qemu', 'sim'], vms: ['vm3', 'db'], connectedUnixMs: T0_MS - 86_400_000 },
    { id: 'h3', hostname: 'host-3', version: '0.1.0', tunnelAddress: '10.0.0.3', tunnelPort: 6081, state: 'AGENT_STATE_DISCONNECTED', lastSeenUnixMs: T0_MS - 30_000, drivers: ['qemu'], vms: [], connectedUnixMs: 0 },
  ];
  return { vnes, snapshots, agents };
}

type Step = SnapshotEvent | { wait: number };

/** The scripted events of a snapshot of `vne` (COMPLETE, or ABORTED for "red"). */
export function snapshotScript(id: string, vne: Vne, final: Snapshot, startMs: number): SnapshotEvent[] {
  let t = startMs;
  const ev = (e: Omit<SnapshotEvent, 'snapshotId' | 'timeUnixMs'>, dt = 10): SnapshotEvent => {
    t += dt;
    return { snapshotId: id, timeUnixMs: t, ...e };
  };
  const vms = vne.vms ?? [];
  const hostOf = (n: string): string => vne.placement?.[n] || vms.find((v) => v.name === n)?.host || '';
  const total = 256 * 1024 * 1024;
  const out: SnapshotEvent[] = [ev({ state: 'SNAPSHOT_STATE_PRECOPY' }, 0)];
  for (const [i, frac] of [0.25, 0.6, 0.9].entries()) {
    for (const v of vms) out.push(ev({ vm: { vm: v.name ?? '', host: hostOf(v.name ?? ''), phase: 'PHASE_PRECOPY', fraction: frac, bytesDone: Math.round(total * frac), bytesTotal: total, iteration: i + 1, dirtyRateMibS: 48.5 } }, 200));
  }
  if (final.state === 'SNAPSHOT_STATE_ABORTED') {
    out.push(ev({ note: `aborting: ${final.error}` }, 300));
    out.push(ev({ state: 'SNAPSHOT_STATE_ABORTED' }));
    out.push(ev({ done: final }));
    return out;
  }
  for (const v of vms) out.push(ev({ vm: { vm: v.name ?? '', host: hostOf(v.name ?? ''), phase: 'PHASE_PRECOPY', fraction: 1, bytesDone: total, bytesTotal: total, iteration: 4, dirtyRateMibS: 48.5, phaseDone: true } }, 100));
  out.push(ev({ state: 'SNAPSHOT_STATE_COMMITTING' }));
  for (const s of final.vms ?? []) {
    out.push(ev({ vm: { vm: s.name ?? '', host: s.host ?? '', phase: 'PHASE_PAUSE', fraction: 0 } }, 1));
    out.push(ev({ vm: { vm: s.name ?? '', host: s.host ?? '', phase: 'PHASE_PAUSE', fraction: 1, pauseMs: s.pauseMs ?? 0, phaseDone: true } }, 12));
  }
  out.push(ev({ state: 'SNAPSHOT_STATE_PERSISTING' }));
  for (const s of final.vms ?? []) out.push(ev({ vm: { vm: s.name ?? '', host: s.host ?? '', phase: 'PHASE_PERSIST', fraction: 0.5, bytesDone: 160 * 1024 * 1024, bytesTotal: 320 * 1024 * 1024 } }, 100));
  for (const s of final.vms ?? []) out.push(ev({ vm: { vm: s.name ?? '', host: s.host ?? '', phase: 'PHASE_PERSIST', fraction: 1, bytesDone: 320 * 1024 * 1024, bytesTotal: 320 * 1024 * 1024, phaseDone: true } }, 100));
  out.push(ev({ state: 'SNAPSHOT_STATE_COMPLETE' }));
  out.push(ev({ done: final }));
  return out;
}

export function restoreScript(s: Snapshot, placement: Record<string, string>, startMs: number): SnapshotEvent[] {
  let t = startMs;
  const ev = (e: Omit<SnapshotEvent, 'snapshotId' | 'timeUnixMs'>, dt = 10): SnapshotEvent => {
    t += dt;
    return { snapshotId: s.id ?? '', timeUnixMs: t, ...e };
  };
  const out: SnapshotEvent[] = [ev({ note: `restore: validating ${(s.artefacts ?? []).length} artefacts` }, 0)];
  for (const phase of ['PHASE_VALIDATE', 'PHASE_LOAD', 'PHASE_RESUME', 'PHASE_INJECT'] as const) {
    for (const v of s.vms ?? []) {
      const host = placement[v.name ?? ''] ?? v.host ?? '';
      out.push(ev({ vm: { vm: v.name ?? '', host, phase, fraction: 1, phaseDone: true, ...(phase === 'PHASE_LOAD' ? { bytesDone: v.memoryBytes, bytesTotal: v.memoryBytes } : {}) } }, phase === 'PHASE_LOAD' ? 400 : 20));
    }
  }
  out.push(ev({ done: s }));
  return out;
}

function fail(code: ConstructorParameters<typeof VnsnapError>[0], message: string): Partial<grpc.ServiceError> {
  return toServiceError(new VnsnapError(code, message));
}

/** Play a script on a server stream, `delayMs` apart, then end it (or stop if cancelled). */
function play(call: grpc.ServerWritableStream<unknown, SnapshotEvent>, steps: readonly Step[], delayMs: number): void {
  let i = 0;
  let cancelled = false;
  call.on('cancelled', () => (cancelled = true));
  const next = (): void => {
    if (cancelled) return;
    const s = steps[i++];
    if (s === undefined) {
      call.end();
      return;
    }
    if ('wait' in s) {
      setTimeout(next, s.wait);
      return;
    }
    call.write(s);
    setTimeout(next, delayMs);
  };
  next();
}

export async function startFakeCoordinator(address = '127.0.0.1:0', opts: FakeOptions = {}): Promise<FakeCoordinator> {
  const delay = opts.eventDelayMs ?? 0;
  const { vnes, snapshots, agents } = cannedWorld();
  const calls: FakeCall[] = [];
  let nextSnap = 3;
  const rec = (method: string, request: unknown): void => {
    calls.push({ method, request });
  };
  const knownAgents = new Set(agents.map((a) => a.id));

  const checkHosts = (v: Vne): Partial<grpc.ServiceError> | undefined => {
    for (const [i, m] of (v.vms ?? []).entries()) {
      if (!knownAgents.has(m.host ?? '')) return fail('ERR_INVALID_ARGUMENT', `vms[${i}].host: no agent "${m.host}" is known (agents: ${[...knownAgents].join(', ')})`);
    }
    return undefined;
  };

  const schedules = new Map<string, Schedule>();
  const handlers: CoordinatorServiceHandlers = {
    SetSchedule(call, cb) {
      rec('SetSchedule', call.request);
      const r = call.request;
      if (!vnes.has(r.vne)) return cb(fail('ERR_NOT_FOUND', `VNE "${r.vne}" does not exist`));
      const s: Schedule = { ...r, nextDueUnixMs: T0_MS + Number(r.everyMs), createdUnixMs: T0_MS };
      schedules.set(r.vne, s);
      cb(null, s);
    },
    ListSchedules(call, cb) {
      rec('ListSchedules', call.request);
      cb(null, { schedules: [...schedules.values()] });
    },
    GetSchedule(call, cb) {
      rec('GetSchedule', call.request);
      const s = schedules.get(call.request.vne);
      if (!s) return cb(fail('ERR_NOT_FOUND', `VNE "${call.request.vne}" has no schedule`));
      cb(null, s);
    },
    DeleteSchedule(call, cb) {
      rec('DeleteSchedule', call.request);
      if (!schedules.delete(call.request.vne)) return cb(fail('ERR_NOT_FOUND', `VNE "${call.request.vne}" has no schedule`));
      cb(null, {});
    },
    DefineVne(call, cb) {
      rec('DefineVne', call.request);
      const v = call.request.vne;
      if (!v) return cb(fail('ERR_INVALID_ARGUMENT', 'vne is required'));
      if (vnes.has(v.name)) return cb(fail('ERR_ALREADY_EXISTS', `VNE ${v.name} already exists (update it with UpdateVne)`));
      const bad = checkHosts(v);
      if (bad) return cb(bad);
      const stored: Vne = { ...v, generation: 0, epoch: 0, state: 'VNE_STATE_DEFINED', createdUnixMs: T0_MS, updatedUnixMs: T0_MS, placement: {} };
      vnes.set(v.name, stored);
      cb(null, stored);
    },
    UpdateVne(call, cb) {
      rec('UpdateVne', call.request);
      const v = call.request.vne;
      const old = v && vnes.get(v.name);
      if (!v || !old) return cb(fail('ERR_VNE_UNKNOWN', `no VNE named "${v?.name ?? ''}"`));
      const bad = checkHosts(v);
      if (bad) return cb(bad);
      const stored: Vne = { ...old, vni: v.vni, vms: v.vms, updatedUnixMs: T0_MS };
      vnes.set(v.name, stored);
      cb(null, stored);
    },
    DeleteVne(call, cb) {
      rec('DeleteVne', call.request);
      const { name, deleteSnapshots } = call.request;
      if (!vnes.has(name)) return cb(fail('ERR_VNE_UNKNOWN', `no VNE named "${name}"`));
      const its = [...snapshots.values()].filter((s) => s.vne === name);
      if (its.length > 0 && !deleteSnapshots) return cb(fail('ERR_FAILED_PRECONDITION', `VNE ${name} has ${its.length} snapshots: delete them first or pass delete_snapshots`));
      for (const s of its) snapshots.delete(s.id ?? '');
      vnes.delete(name);
      cb(null, {});
    },
    ListVnes(call, cb) {
      rec('ListVnes', call.request);
      cb(null, { vnes: [...vnes.values()] });
    },
    GetVne(call, cb) {
      rec('GetVne', call.request);
      const v = vnes.get(call.request.name);
      if (!v) return cb(fail('ERR_VNE_UNKNOWN', `no VNE named "${call.request.name}"`));
      cb(null, v);
    },
    StartVne(call, cb) {
      rec('StartVne', call.request);
      const v = vnes.get(call.request.name);
      if (!v) return cb(fail('ERR_VNE_UNKNOWN', `no VNE named "${call.request.name}"`));
      v.state = 'VNE_STATE_RUNNING';
      v.placement = Object.fromEntries((v.vms ?? []).map((m) => [m.name ?? '', m.host ?? '']));
      cb(null, { vne: v });
    },
    StopVne(call, cb) {
      rec('StopVne', call.request);
      const v = vnes.get(call.request.name);
      if (!v) return cb(fail('ERR_VNE_UNKNOWN', `no VNE named "${call.request.name}"`));
      v.state = 'VNE_STATE_DEFINED';
      v.placement = {};
      cb(null, {});
    },
    ListAgents(call, cb) {
      rec('ListAgents', call.request);
      cb(null, { agents });
    },
    CreateSnapshot(call) {
      rec('CreateSnapshot', call.request);
      const v = vnes.get(call.request.vne);
      if (!v) {
        call.emit('error', fail('ERR_VNE_UNKNOWN', `no VNE named "${call.request.vne}"`));
        return;
      }
      if (v.state !== 'VNE_STATE_RUNNING') {
        call.emit('error', fail('ERR_FAILED_PRECONDITION', `VNE ${v.name} is not running (state ${v.state}): start it first`));
        return;
      }
      const id = `snap-${String(nextSnap++).padStart(4, '0')}`;
      const epoch = (v.epoch ?? 0) + 1;
      v.epoch = epoch;
      let final: Snapshot = { ...cannedSnapshot(id, v.name ?? '', epoch, T0_US + 3_600_000_000), description: call.request.description, mode: call.request.mode === 'SNAPSHOT_MODE_BACKGROUND' ? 'SNAPSHOT_MODE_BACKGROUND' : 'SNAPSHOT_MODE_PRECOPY' };
      if (v.name === 'red') {
        final = { ...final, state: 'SNAPSHOT_STATE_ABORTED', error: 'agent h2 disconnected', vms: [], artefacts: [], manifestPath: '', sizeBytes: 0, completedUnixMs: 0 };
      } else {
        final = { ...final, vms: (final.vms ?? []).filter((s) => (v.vms ?? []).some((m) => m.name === s.name)) };
        if ((final.vms ?? []).length === 0) final.vms = (v.vms ?? []).map((m, i) => ({ ...(cannedSnapshot(id, '', epoch, T0_US).vms?.[i % 3] as VmSnapshot), name: m.name, host: m.host }));
        final.artefacts = (final.vms ?? []).flatMap((s) => [
          { path: `snapshots/${id}/${s.name}.mem`, size: 256 * 1024 * 1024, sha256: 'ab'.repeat(32), kind: 'ARTEFACT_KIND_MEMORY' as const, owner: s.name },
          { path: `snapshots/${id}/${s.name}.qcow2`, size: 64 * 1024 * 1024, sha256: 'cd'.repeat(32), kind: 'ARTEFACT_KIND_DISK' as const, owner: s.name },
        ]);
        final.sizeBytes = (final.artefacts ?? []).reduce((n, a) => n + Number(a.size ?? 0), 0);
      }
      snapshots.set(id, final);
      play(call, snapshotScript(id, v, final, T0_MS + 3_600_000), delay);
    },
    ListSnapshots(call, cb) {
      rec('ListSnapshots', call.request);
      cb(null, { snapshots: [...snapshots.values()].filter((s) => !call.request.vne || s.vne === call.request.vne) });
    },
    GetSnapshot(call, cb) {
      rec('GetSnapshot', call.request);
      const s = snapshots.get(call.request.id);
      if (!s) return cb(fail('ERR_NOT_FOUND', `no snapshot "${call.request.id}"`));
      cb(null, s);
    },
    DeleteSnapshot(call, cb) {
      rec('DeleteSnapshot', call.request);
      if (!snapshots.delete(call.request.id)) return cb(fail('ERR_NOT_FOUND', `no snapshot "${call.request.id}"`));
      cb(null, {});
    },
    VerifySnapshot(call) {
      rec('VerifySnapshot', call.request);
      call.emit('error', fail('ERR_FAILED_PRECONDITION', 'this coordinator has no store'));
    },
    GetStoreStats(call, cb) {
      rec('GetStoreStats', call.request);
      cb(fail('ERR_FAILED_PRECONDITION', 'this coordinator has no store'));
    },
    CollectGarbage(call) {
      rec('CollectGarbage', call.request);
      call.emit('error', fail('ERR_FAILED_PRECONDITION', 'this coordinator has no store'));
    },
    MigrateVne(call) {
      rec('MigrateVne', call.request);
      const v = vnes.get(call.request.vne);
      if (!v) return void call.emit('error', fail('ERR_NOT_FOUND', `VNE "${call.request.vne}" does not exist`));
      const moves = Object.entries(call.request.placement);
      if (moves.length === 0 || v.name !== 'blue') return void call.emit('error', fail('ERR_FAILED_PRECONDITION', 'the fake coordinator migrates VMs of blue named with a placement only'));
      const id = 'migrate-blue-0a0b0c';
      const t = T0_MS + 7_200_000;
      const steps: Step[] = [{ snapshotId: id, timeUnixMs: t, note: `migrate: ${moves.map(([vm, to]) => `${vm} ${v.placement?.[vm] ?? '?'} → ${to}`).join(', ')}` }];
      for (const [vm, to] of moves) {
        const from = v.placement?.[vm] ?? '';
        steps.push({ snapshotId: id, timeUnixMs: t + 400, vm: { vm, host: from, phase: 'PHASE_DISK_SYNC', bytesDone: 32 * 1024 * 1024, bytesTotal: 32 * 1024 * 1024, fraction: 1, phaseDone: true } });
        steps.push({ snapshotId: id, timeUnixMs: t + 1900, vm: { vm, host: from, phase: 'PHASE_MIGRATE', bytesDone: 140 * 1024 * 1024, bytesTotal: 128 * 1024 * 1024, iteration: 3, phaseDone: true } });
        steps.push({ snapshotId: id, timeUnixMs: t + 2000, vm: { vm, host: to, phase: 'PHASE_SWITCHOVER', pauseMs: 41.5, fraction: 1, phaseDone: true } });
      }
      const vms = moves.map(([vm, to]) => ({ vm, fromAgent: v.placement?.[vm] ?? '', toAgent: to, downtimeMs: 41.5, totalMs: 2000, diskBytes: 32 * 1024 * 1024, memoryBytes: 140 * 1024 * 1024, forwardedFrames: 3, droppedFrames: 0 }));
      steps.push({ snapshotId: id, timeUnixMs: t + 2001, migrated: { migrationId: id, vne: 'blue', vms, totalMs: 2001 } });
      play(call, steps, delay);
    },
    RestoreSnapshot(call) {
      rec('RestoreSnapshot', call.request);
      const s = snapshots.get(call.request.snapshotId);
      if (!s) {
        call.emit('error', fail('ERR_NOT_FOUND', `no snapshot "${call.request.snapshotId}"`));
        return;
      }
      if (s.state !== 'SNAPSHOT_STATE_COMPLETE') {
        call.emit('error', fail('ERR_FAILED_PRECONDITION', `snapshot ${s.id} is ${s.state}: only a COMPLETE snapshot can be restored`));
        return;
      }
      const v = vnes.get(s.vne ?? '');
      if (v?.state === 'VNE_STATE_RUNNING' && !call.request.stopRunning) {
        call.emit('error', fail('ERR_FAILED_PRECONDITION', `VNE ${s.vne} is running: pass stop_running to replace it`));
        return;
      }
      for (const [vmName, host] of Object.entries(call.request.placement)) {
        if (!knownAgents.has(host)) {
          call.emit('error', fail('ERR_INVALID_ARGUMENT', `placement: no agent "${host}" for VM ${vmName}`));
          return;
        }
      }
      if (v) {
        v.state = 'VNE_STATE_RUNNING';
        v.generation = (v.generation ?? 0) + 1;
        v.epoch = s.epoch;
        v.placement = Object.fromEntries((s.vms ?? []).map((m) => [m.name ?? '', call.request.placement[m.name ?? ''] ?? m.host ?? '']));
      }
      play(call, restoreScript(s, call.request.placement, T0_MS + 7_200_000), delay);
    },
    WatchEvents(call) {
      rec('WatchEvents', call.request);
      const all: Event[] = [
        { timeUnixMs: T0_MS, kind: 'agent.connected', agent: 'h1', message: 'agent h1 (host-1) connected' },
        { timeUnixMs: T0_MS + 1000, kind: 'snapshot.state', vne: 'blue', snapshotId: 'snap-0001', message: 'PRECOPY' },
        { timeUnixMs: T0_MS + 3345, kind: 'snapshot.state', vne: 'blue', snapshotId: 'snap-0001', message: 'COMPLETE' },
        { timeUnixMs: T0_MS + 4000, kind: 'snapshot.state', vne: 'red', snapshotId: 'snap-0009', message: 'ABORTED: agent h2 disconnected' },
      ];
      for (const e of all.filter((x) => !call.request.vne || x.vne === call.request.vne)) call.write(e);
      if (!opts.holdEvents) call.end();
    },
  };

  const server = new grpc.Server();
  server.addService(loadVnsnap().vnsnap.v1.CoordinatorService.service, handlers);
  addHealthAndReflection(server, [COORDINATOR_SERVICE]);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  const host = address.slice(0, address.lastIndexOf(':'));
  return {
    address: `${host}:${port}`,
    calls,
    vnes,
    snapshots,
    stop: async () => server.forceShutdown(),
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const i = args.indexOf('--listen');
  const listen = i >= 0 ? (args[i + 1] ?? '127.0.0.1:0') : '127.0.0.1:0';
  const d = args.indexOf('--event-delay-ms');
  const fake = await startFakeCoordinator(listen, { eventDelayMs: d >= 0 ? Number(args[d + 1]) : 0, holdEvents: args.includes('--hold-events') });
  process.stdout.write(JSON.stringify({ event: 'ready', address: fake.address }) + '\n');
  const stop = (): void => {
    void fake.stop().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (require.main === module) void main();
