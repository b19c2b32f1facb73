/**
 * Human output: aligned tables and one-line summaries of VNEs, agents, snapshots and events.
 * Pure functions from messages to text (no I/O), so tests can assert exact output.
 */
import { isTracePhase } from './cut-trace';
import type { Agent__Output } from '../../proto/gen/vnsnap/v1/Agent';
import type { DriverSpec__Output } from '../../proto/gen/vnsnap/v1/DriverSpec';
import type { Event__Output } from '../../proto/gen/vnsnap/v1/Event';
import type { Snapshot__Output } from '../../proto/gen/vnsnap/v1/Snapshot';
import type { Vne__Output } from '../../proto/gen/vnsnap/v1/Vne';
import type { VmStatus__Output } from '../../proto/gen/vnsnap/v1/VmStatus';

/** Columns separated by two spaces, padded to the widest cell; trailing spaces trimmed. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n') + '\n';
}

function indent(text: string): string {
  return text
    .trimEnd()
    .split('\n')
    .map((l) => `  ${l}`)
    .join('\n') + '\n';
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

/** Milliseconds for a person: "0.41 ms", "12.3 ms", "2.345 s". */
export function formatMs(ms: number): string {
  if (ms >= 1000) return `${(ms / 1000).toFixed(3)} s`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(2)} ms`;
}

export function formatTime(unixMs: number): string {
  if (!unixMs) return '-';
  return new Date(unixMs).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

/** VNE_STATE_RUNNING → RUNNING, SNAPSHOT_MODE_PRECOPY → PRECOPY, PHASE_PAUSE → PAUSE. */
export function shortEnum(v: string): string {
  for (const prefix of ['VNE_STATE_', 'SNAPSHOT_STATE_', 'SNAPSHOT_MODE_', 'AGENT_STATE_', 'PHASE_', 'ARTEFACT_KIND_']) {
    if (v.startsWith(prefix)) return v.slice(prefix.length);
  }
  return v;
}

export function driverSummary(d: DriverSpec__Output | null | undefined): string {
  if (d?.qemu) return `qemu ${d.qemu.memoryMib} MiB${d.qemu.cpus ? `, ${d.qemu.cpus} cpu` : ''}`;
  if (d?.sim) return `sim ${d.sim.memoryMib} MiB`;
  if (d?.xen) return 'xen';
  return '-';
}

export function renderVneList(vnes: readonly Vne__Output[]): string {
  if (vnes.length === 0) return 'no VNEs defined (define one with: vnsnap vne define FILE.json)\n';
  const hosts = (v: Vne__Output): string => [...new Set(v.vms.map((vm) => v.placement[vm.name] || vm.host))].sort().join(',');
  return table(
    ['NAME', 'VNI', 'STATE', 'VMS', 'HOSTS', 'EPOCH', 'GEN'],
    vnes.map((v) => [v.name, String(v.vni), shortEnum(v.state), String(v.vms.length), hosts(v), String(v.epoch), String(v.generation)]),
  );
}

export function renderVne(v: Vne__Output): string {
  const head =
    `VNE ${v.name}: ${shortEnum(v.state)}, vni ${v.vni}, epoch ${v.epoch}, generation ${v.generation}\n` +
    `created ${formatTime(v.createdUnixMs)}, updated ${formatTime(v.updatedUnixMs)}\n` +
    (v.stateReason ? `reason: ${v.stateReason}\n` : '');
  if (v.vms.length === 0) return head + 'no VMs\n';
  const fenced = (v.fenced ?? []).map((f) => `fenced: ${f.vm} on ${f.agent} (generation ${f.generation}, ${f.stopped ? 'stopped' : 'not stopped yet: stopped when the host returns'})\n`).join('');
  const status = new Map((v.vmStatus ?? []).map((s) => [s.vm, s]));
  if (status.size === 0) {
    return (
      head +
      '\n' +
      table(
        ['VM', 'HOST', 'RUNS ON', 'DRIVER', 'MACS'],
        v.vms.map((vm) => [vm.name, vm.host, v.placement[vm.name] || '-', driverSummary(vm.driver), vm.macs.join(',') || '-']),
      ) +
      fenced
    );
  }
  // Per VM: where it runs, whether its host is reachable, and what the coordinator knows of it.
  return (
    head +
    '\n' +
    table(
      ['VM', 'HOST', 'RUNS ON', 'REACHABLE', 'VM STATE', 'DRIVER', 'MACS'],
      v.vms.map((vm) => {
        const s = status.get(vm.name);
        return [vm.name, vm.host, s?.host || v.placement[vm.name] || '-', s ? (s.hostReachable ? 'yes' : 'no') : '-', s ? s.state.replace(/^VM_RUN_STATE_/, '') : '-', driverSummary(vm.driver), vm.macs.join(',') || '-'];
      }),
    ) +
    disks(v.vms.map((vm) => status.get(vm.name)).filter((s) => s !== undefined)) +
    fenced
  );
}

/** Where a VM's disk lives, for people: "kept on h1: PATH (12.3 MiB)", "from its spec's image", "on h1: PATH". */
export function diskWhere(s: VmStatus__Output): string {
  if (s.diskSource === 'DISK_SOURCE_KEPT') return `kept on ${s.diskHost}: ${s.diskPath} (${formatBytes(s.diskBytes)})`;
  if (s.diskSource === 'DISK_SOURCE_INSTANCE') return `on ${s.diskHost}${s.diskPath ? `: ${s.diskPath}` : ''}`;
  return "from its spec's image";
}

/**
 * The "disks:" block of `vne show`: every VM's line, when some VM of the VNE has a disk of its
 * own (kept, or a running one with its path); nothing for VNEs whose VMs have none (simulated
 * VMs, Xen guests, which write into their spec's image) or from a coordinator that does not
 * report disks.
 */
function disks(status: readonly VmStatus__Output[]): string {
  if (!status.some((s) => s.diskSource === 'DISK_SOURCE_KEPT' || (s.diskSource === 'DISK_SOURCE_INSTANCE' && s.diskPath))) return '';
  return 'disks:\n' + status.map((s) => `  ${s.vm}: ${diskWhere(s)}\n`).join('');
}

export function describeVne(v: Vne__Output): string {
  const hosts = new Set(v.vms.map((vm) => vm.host));
  return `${v.name} (vni ${v.vni}, ${v.vms.length} VM${v.vms.length === 1 ? '' : 's'} on ${hosts.size} host${hosts.size === 1 ? '' : 's'}, ${shortEnum(v.state)})`;
}

export function renderAgents(agents: readonly Agent__Output[]): string {
  if (agents.length === 0) return 'no agents have registered with this coordinator\n';
  return table(
    ['AGENT', 'HOSTNAME', 'STATE', 'TUNNEL', 'DRIVERS', 'VMS', 'LAST SEEN'],
    agents.map((a) => [
      a.id,
      a.hostname,
      shortEnum(a.state),
      a.tunnelAddress ? `${a.tunnelAddress}:${a.tunnelPort}` : '-',
      a.drivers.join(',') || '-',
      a.vms.join(',') || '-',
      formatTime(a.lastSeenUnixMs),
    ]),
  );
}

/** The spread of cut instants across the VMs (µs), or undefined with fewer than one cut. */
export function commitSkewUs(s: Snapshot__Output): number | undefined {
  const cuts = s.vms.map((vm) => vm.cutUnixUs).filter((c) => c > 0);
  if (cuts.length === 0) return undefined;
  return Math.max(...cuts) - Math.min(...cuts);
}

export function maxPauseMs(s: Snapshot__Output): number {
  return s.vms.reduce((m, vm) => Math.max(m, vm.pauseMs), 0);
}

export function channelFrames(s: Snapshot__Output): number {
  return s.vms.reduce((n, vm) => n + vm.channelFrames, 0);
}

/** The bytes a snapshot added to the store, for people ("-" when not known). */
export function addedBytes(s: Pick<Snapshot__Output, 'storedBytes' | 'storedBytesKnown'>): string {
  return s.storedBytesKnown ? formatBytes(Number(s.storedBytes)) : '-';
}

export function renderSnapshotList(snaps: readonly Snapshot__Output[]): string {
  if (snaps.length === 0) return 'no snapshots\n';
  return table(
    ['ID', 'VNE', 'EPOCH', 'MODE', 'STATE', 'CREATED', 'MAX PAUSE', 'SIZE', 'ADDED', 'DESCRIPTION'],
    snaps.map((s) => [
      s.id,
      s.vne,
      String(s.epoch),
      shortEnum(s.mode),
      shortEnum(s.state),
      formatTime(s.createdUnixMs),
      s.vms.length ? formatMs(maxPauseMs(s)) : '-',
      s.sizeBytes ? formatBytes(s.sizeBytes) : '-',
      addedBytes(s),
      s.description,
    ]),
  );
}

function phaseDurations(vm: Snapshot__Output['vms'][number]): string {
  return (
    vm.phases
      .filter((p) => p.endUnixUs >= p.startUnixUs && p.startUnixUs > 0 && !isTracePhase(p.phase))
      .map((p) => `${shortEnum(p.phase).toLowerCase()} ${formatMs((p.endUnixUs - p.startUnixUs) / 1000)}`)
      .join(', ') || '-'
  );
}

/** Total time of a snapshot from its record, when both ends are known. */
export function totalMs(s: Snapshot__Output): number | undefined {
  return s.createdUnixMs > 0 && s.completedUnixMs >= s.createdUnixMs ? s.completedUnixMs - s.createdUnixMs : undefined;
}

/**
 * The summary printed after `snapshot create` and by `snapshot show`: state, epoch, per-VM
 * pause and cut offset, total time, commit skew, channel and lost frames.
 */
export function renderSnapshot(s: Snapshot__Output, opts: { totalMsFallback?: number; phases?: boolean } = {}): string {
  const skew = commitSkewUs(s);
  const total = totalMs(s) ?? opts.totalMsFallback;
  const minCut = Math.min(...s.vms.map((vm) => vm.cutUnixUs).filter((c) => c > 0));
  let out = `snapshot ${s.id} of VNE ${s.vne}: ${shortEnum(s.state)}${s.error ? ` (${s.error})` : ''}\n`;
  const facts = [`epoch ${s.epoch}`, `mode ${shortEnum(s.mode)}`, `${s.vms.length} VM${s.vms.length === 1 ? '' : 's'}`];
  if (total !== undefined) facts.push(`total ${formatMs(total)}`);
  if (skew !== undefined) facts.push(`commit skew ${formatMs(skew / 1000)}`);
  if (s.vms.length) facts.push(`max pause ${formatMs(maxPauseMs(s))}`);
  out += `  ${facts.join(', ')}\n`;
  out += `  created ${formatTime(s.createdUnixMs)}, completed ${formatTime(s.completedUnixMs)}${s.description ? `, "${s.description}"` : ''}\n`;
  if (s.vms.length) {
    const header = ['VM', 'HOST', 'PAUSE', 'CUT', 'MEMORY', 'DISK', 'CHANNEL FRAMES'];
    if (opts.phases) header.push('PHASES');
    const rows = s.vms.map((vm) => {
      const r = [
        vm.name,
        vm.host,
        formatMs(vm.pauseMs),
        vm.cutUnixUs > 0 ? `+${formatMs((vm.cutUnixUs - minCut) / 1000)}` : '-',
        vm.memoryBytes ? formatBytes(vm.memoryBytes) : '-',
        vm.diskBytes ? formatBytes(vm.diskBytes) : '-',
        String(vm.channelFrames),
      ];
      if (opts.phases) r.push(phaseDurations(vm));
      return r;
    });
    out += '\n' + indent(table(header, rows)) + '\n';
  }
  out += `  channel frames ${channelFrames(s)}, lost frames ${s.lostFrames}`;
  if (s.sizeBytes) out += `, size ${formatBytes(s.sizeBytes)}`;
  if (s.storedBytesKnown) out += `, added ${formatBytes(Number(s.storedBytes))} to the store`;
  if (s.artefacts.length) out += `, ${s.artefacts.length} artefacts`;
  out += '\n';
  if (s.manifestPath) out += `  manifest ${s.manifestPath}\n`;
  out += verifiedLine(s);
  return out;
}

/** The "verified:" line of `snapshot show` (nothing for a snapshot never verified). */
export function verifiedLine(s: Pick<Snapshot__Output, 'verifiedUnixMs' | 'verifyProblems'>): string {
  const at = Number(s.verifiedUnixMs ?? 0);
  if (!at) return '';
  const problems = s.verifyProblems ?? [];
  if (problems.length === 0) return `  verified: ok at ${formatTime(at)}\n`;
  return `  verified: FAILED at ${formatTime(at)}: ${problems[0]}\n` + problems.slice(1).map((p) => `    also: ${p}\n`).join('');
}

export function renderEvent(e: Event__Output): string {
  const who = [e.vne && `vne=${e.vne}`, e.snapshotId && `snapshot=${e.snapshotId}`, e.agent && `agent=${e.agent}`].filter(Boolean).join(' ');
  const t = e.timeUnixMs ? new Date(e.timeUnixMs).toISOString() : '-';
  return [t, e.kind, who, e.message].filter((x) => x !== '').join('  ') + '\n';
}
