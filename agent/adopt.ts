/**
 * On start, before the agent registers: find the VMs a previous agent of this host left running
 * (its state directory, vm-state.ts) and take them over (docs/agent-restart.md).
 *
 * For each record:
 *  - written by another agent id, or for a driver this agent does not run: left alone (logged):
 *    it is not this agent's to adopt or drop;
 *  - its process is gone, or its pid now belongs to another process (start time differs), or
 *    (a VM without a process: a Xen domain) the driver finds it gone (ERR_NOT_FOUND): the
 *    VM died while no agent watched; the record is removed and the VM reported dead (it is not in
 *    Register's `running`, so the coordinator marks it dead);
 *  - alive: the driver re-opens it (VmTable.adoptRunning); a VM found paused is resumed; its
 *    ports wait for the coordinator's ConfigureVne (VmTable.attachAdopted). A live process that
 *    cannot be taken over (its monitor does not answer, its state is not the driver's) is
 *    killed — only while it is still the recorded process — and reported dead, so that the
 *    coordinator never sees it as gone while it still runs.
 *  - unreadable records are removed and reported, and the temporary files of interrupted record
 *    writes removed (after the scan accepted the directory's format);
 *  - the driver states of the records left alone and of the VMs reported dead are collected in
 *    `states`: the drivers' cleaning of leftovers (Agent.start, after this) must not touch what
 *    the former name, and keeps the disk images of the latter (a dead VM's last disk).
 * A record of a newer format than this agent reads stops the whole scan before anything is
 * touched (ERR_UNSUPPORTED_VERSION): the agent refuses to start, with that one line.
 */
import { describeError, isVnsnapError } from '../proto/core/errors';
import type { Logger } from '../proto/core/log';
import { isSameProcess, type VmStateDir, type VmStateRecord } from './vm-state';
import type { HypervisorDriver } from './drivers/driver';
import type { VmTable } from './vms';

export interface AdoptionReport {
  /** "vne/vm" of each VM taken over, and whether it was found paused and resumed. */
  adopted: { vm: string; resumed: boolean }[];
  /** VMs whose process is gone (or could not be taken over and was killed), with the reason. */
  dead: { vm: string; reason: string }[];
  /** Records left alone (another agent's). */
  skipped: { vm: string; reason: string }[];
}

/**
 * What the drivers must know when they clean leftovers: the driver state of every record left
 * alone (never touched), and of every VM reported dead (its disk images are kept).
 */
export interface RecordedStates {
  leftAlone: unknown[];
  dead: unknown[];
}

export async function adoptVms(o: { agentId: string; state: VmStateDir; vms: VmTable; log: Logger; states?: RecordedStates }): Promise<AdoptionReport> {
  const scan = await o.state.scan(); // throws ERR_UNSUPPORTED_VERSION before anything is touched
  const report: AdoptionReport = { adopted: [], dead: [], skipped: [] };
  for (const t of await o.state.removeTemps()) o.log.warn({ file: t }, 'temporary file of an interrupted record write removed');
  for (const u of scan.unreadable) {
    o.log.warn({ dir: u.dir, reason: u.reason }, 'unreadable VM state record removed');
    await o.state.removeDir(u.dir);
  }
  for (const { dir, record: r } of scan.records) {
    const key = `${r.vne}/${r.vm}`;
    if (r.agent !== o.agentId) {
      report.skipped.push({ vm: key, reason: `recorded by agent ${r.agent}` });
      o.states?.leftAlone.push(r.driverState);
      o.log.warn({ vm: key, dir, recordedBy: r.agent }, 'VM state record of another agent id: left alone');
      continue;
    }
    const kind = r.spec.driver?.kind;
    if (!kind || !o.vms.driverKinds.includes(kind)) {
      report.skipped.push({ vm: key, reason: `its driver (${kind ?? 'none'}) is not configured on this agent` });
      o.states?.leftAlone.push(r.driverState);
      o.log.warn({ vm: key, dir, driver: kind }, 'VM state record for a driver this agent does not run: left alone');
      continue;
    }
    if (r.process && !isSameProcess(r.process)) {
      await o.state.removeDir(dir);
      const reason = `its process ${r.process.pid} is gone`;
      report.dead.push({ vm: key, reason });
      o.states?.dead.push(r.driverState);
      o.log.warn({ vm: key, pid: r.process.pid }, 'VM died while the agent was away: reported dead');
      continue;
    }
    try {
      const { resumed } = await o.vms.adoptRunning(r.vne, r.spec, { ...(r.process ? { process: r.process } : {}), state: r.driverState }, { epoch: r.epoch, generation: r.generation });
      report.adopted.push({ vm: key, resumed });
      o.log.info({ vm: key, pid: r.process?.pid, resumed, lastEpoch: r.epoch, lastGeneration: r.generation }, resumed ? 'VM adopted (it was paused for a cut: resumed)' : 'VM adopted');
    } catch (e) {
      // Gone (a domain that no longer exists): dead. Alive but out of reach: killed, then dead.
      const gone = isVnsnapError(e, 'ERR_NOT_FOUND') && !r.process;
      const reason = gone ? `gone: ${describeError(e)}` : `cannot be taken over: ${describeError(e)}`;
      if (!gone) killRecorded(r);
      await o.state.removeDir(dir);
      report.dead.push({ vm: key, reason });
      o.states?.dead.push(r.driverState);
      o.log.error({ vm: key, pid: r.process?.pid, err: describeError(e) }, gone ? 'VM died while the agent was away: reported dead' : 'a VM left by the previous agent cannot be taken over: killed, reported dead');
    }
  }
  return report;
}

/**
 * After the adoption, before registering: each driver removes what dead agents left (stray
 * processes, devices, directories) and keeps what its adopted VMs and `states.leftAlone` use,
 * and the disk images of `states.dead`. A failing
 * driver is logged; it never stops the start.
 */
export async function cleanLeftovers(drivers: readonly HypervisorDriver[], states: RecordedStates, log: Logger): Promise<string[]> {
  const out: string[] = [];
  for (const d of drivers) {
    if (!d.cleanLeftovers) continue;
    try {
      out.push(...(await d.cleanLeftovers({ otherStates: states.leftAlone, deadStates: states.dead })));
    } catch (e) {
      log.warn({ driver: d.kind, err: describeError(e) }, 'cleaning what a dead agent left failed');
    }
  }
  return out;
}

/** SIGKILL the recorded process if it is still that process. */
function killRecorded(r: VmStateRecord): void {
  if (!r.process || !isSameProcess(r.process)) return;
  try {
    process.kill(r.process.pid, 'SIGKILL');
  } catch {
    /* gone meanwhile */
  }
}
