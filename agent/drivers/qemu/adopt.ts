/**
 * Adoption of a QEMU VM a previous agent left running (docs/agent-restart.md): the QEMU driver's
 * side of "VMs outlive the agent".
 *
 * What a VM needs to be found again is small, and the driver returns it from persistent() for
 * the agent's state record (QemuSavedState): the instance directory (QMP socket, console,
 * overlays), the NIC mode, the TAP devices, the RAM padding, the disk chain and the tracked
 * memory base. The process itself (pid and start time) is the agent's part of the record; the
 * agent checks it is still that process before it asks for the adoption.
 *
 * Guarantees of adoptQemuVm:
 *  - nothing outside the driver's work directory is ever taken for an instance directory, and
 *    a VM the driver already holds is refused (ERR_ALREADY_EXISTS);
 *  - the monitor is re-opened (QEMU serves one QMP client at a time and accepts the next after
 *    the old agent's connection died); a VM that does not answer is ERR_NOT_FOUND;
 *  - a snapshot the dead agent had in progress is cancelled (migrate_cancel: its stream died
 *    with the agent; the artefacts it left in the store are the coordinator's abort's to
 *    delete), and a VM left paused (by a cut) is resumed with `cont` — `resumed` says so;
 *  - the disk's current top node is read back from QEMU (a cut may have moved it after the
 *    record was written);
 *  - a tracked memory base the record names (present only while it was valid: tracked-job.ts)
 *    is restored as valid, and only the VM's own base path (trackedBasePath) is taken; the driver
 *    drops it again unless the tracker is adopted as it stood (driver.ts adopt());
 *  - TAP NICs come back as new packet sockets on the same TAPs (QEMU kept them open), a tap-vnet
 *    NIC's writes again through the TAP's veth pair (vm-veth.ts: kept from the VM's start, made
 *    if a VM started without one); a tap-bpf NIC back on the data path, or, where this agent
 *    cannot run it, taken off it and opened as tap-vnet (openAdoptedTaps); a stream
 *    NIC (QEMU was the client of the dead agent's socket) does not reconnect: its port listens
 *    again but the VM stays off the network until it is restarted, which is logged.
 */
import { describeError, isVnsnapError, VnsnapError } from '../../../proto/core/errors';
import type { QemuDriverSpec__Output } from '../../../proto/gen/vnsnap/v1/QemuDriverSpec';
import type { Port } from '../../../switch/port/port';
import { StreamPort } from '../../../switch/port/stream-port';
import { parseDiskChain, type DiskChainRecord, type ProcessIdentity } from '../../vm-state';
import type { VmHandle, VmStartContext, VmStartSpec } from '../driver';
import { isTapMode, NIC_MODES, vmFiles, type NicMode } from './cmdline';
import { QemuVm, type MigrationInfo } from './process';
import { leaveDataPath } from '../../bpf-dp/loader';
import { dataPathPrefix } from './tap-bpf';
import { openTapPort } from './vm-veth';
import { trackedBasePath } from './tracked-job';

/** The QEMU driver's part of a VM's state record. */
export interface QemuSavedState {
  dir: string;
  nic: NicMode;
  taps: string[];
  ramPadKib: number;
  snapSerial: number;
  /** The VM's stored disk chain (disk-layers.ts); absent in older records: the next snapshot stores a full image. */
  diskChain?: DiskChainRecord;
  /**
   * The VM's tracked memory base (tracked-job.ts), present only while it is valid: no scan of the
   * tracker ran since it was committed (a job saves the record without it before its first scan).
   * Absent in older records: the next capture is a full one.
   */
  trackedBase?: { path: string };
}

/** What adoption needs of the driver. */
export interface AdoptionParts {
  workDir: string;
  timeoutMs: number;
  has(id: string): boolean;
  add(id: string, vm: QemuVm): void;
}

/** Check the driver's part of a record (throws ERR_INVALID_ARGUMENT naming what is wrong). */
export function parseQemuSavedState(v: unknown, workDir: string): QemuSavedState {
  const bad = (why: string): never => {
    throw new VnsnapError('ERR_INVALID_ARGUMENT', `QEMU state record: ${why}`);
  };
  if (typeof v !== 'object' || v === null) return bad('no driver state');
  const o = v as Record<string, unknown>;
  const dir = o.dir;
  if (typeof dir !== 'string' || !dir.startsWith(`${workDir.replace(/\/+$/, '')}/`) || dir.includes('/../') || dir.endsWith('/..')) return bad(`instance directory ${JSON.stringify(dir)} is not under the work directory ${workDir}`);
  const nic = o.nic;
  if (!(NIC_MODES as readonly unknown[]).includes(nic)) return bad(`nic ${JSON.stringify(nic)} is none of ${NIC_MODES.join(', ')}`);
  const taps = o.taps;
  if (!Array.isArray(taps) || taps.some((t) => typeof t !== 'string' || !/^[A-Za-z0-9_.-]{1,15}$/.test(t))) return bad(`bad TAP names ${JSON.stringify(taps)}`);
  const int = (k: string): number => {
    const x = o[k] ?? 0;
    return typeof x === 'number' && Number.isInteger(x) && x >= 0 ? x : bad(`${k} is not a non-negative integer`);
  };
  const diskChain = parseDiskChain(o.diskChain);
  const trackedBase = o.trackedBase === undefined ? undefined : parseTrackedBase(o.trackedBase, bad);
  return { dir, nic: nic as NicMode, taps: taps as string[], ramPadKib: int('ramPadKib'), snapSerial: int('snapSerial'), ...(diskChain ? { diskChain } : {}), ...(trackedBase ? { trackedBase } : {}) };
}

/** A record's tracked base: `{ path }`, the path a store path under tracked-bases/ (trackedBasePath). */
function parseTrackedBase(v: unknown, bad: (why: string) => never): { path: string } {
  const p = typeof v === 'object' && v !== null ? (v as Record<string, unknown>).path : undefined;
  if (typeof p !== 'string' || !/^tracked-bases\/[^/]+\/[^/]+\.mem$/.test(p) || p.split('/').some((s) => s === '..' || s === '.')) return bad(`trackedBase ${JSON.stringify(v)} is not { path: "tracked-bases/<vne>/<vm>.mem" }`);
  return { path: p };
}

const ACTIVE_MIGRATION = new Set(['setup', 'active', 'pre-switchover', 'device', 'postcopy-active', 'postcopy-paused', 'cancelling', 'wait-unplug']);

/** Take over a running QEMU VM (module comment). */
export async function adoptQemuVm(d: AdoptionParts, spec: VmStartSpec, saved: { process?: ProcessIdentity; state: unknown }, ctx: VmStartContext): Promise<VmHandle & { resumed: boolean }> {
  const st = parseQemuSavedState(saved.state, d.workDir);
  const proc = saved.process;
  if (!proc) throw new VnsnapError('ERR_INVALID_ARGUMENT', `QEMU state record of ${spec.id}: no process`);
  if (d.has(spec.id)) throw new VnsnapError('ERR_ALREADY_EXISTS', `QEMU VM ${spec.id} is already held by this driver`);
  // Only the VM's own base path is taken (a record naming another is refused like any bad field).
  const ownBase = trackedBasePath(spec.vne, spec.name);
  if (st.trackedBase && st.trackedBase.path !== ownBase) throw new VnsnapError('ERR_INVALID_ARGUMENT', `QEMU state record of ${spec.id}: trackedBase ${st.trackedBase.path} is not the VM's own (${ownBase})`);
  const q = spec.driver.qemu;
  if (!q) throw new VnsnapError('ERR_INVALID_ARGUMENT', `VM ${spec.name}: the qemu driver needs a qemu driver spec`);
  const files = vmFiles(st.dir);
  const log = ctx.log.child({ driver: 'qemu' });
  let nic = st.nic;
  const ports: Port[] = [];
  if (isTapMode(st.nic)) {
    if (st.taps.length !== ctx.portNames.length) throw new VnsnapError('ERR_INVALID_ARGUMENT', `QEMU state record of ${spec.id}: ${st.taps.length} TAPs for ${ctx.portNames.length} ports`);
    const opened = await openAdoptedTaps(ctx.portNames, st.taps, st.nic, dataPathPrefix(d.workDir));
    ports.push(...opened.ports);
    nic = opened.nic;
    if (nic !== st.nic) log.warn({ vm: spec.id, taps: st.taps, reason: opened.reason }, `adopted a tap-bpf VM this agent cannot carry in the kernel (${opened.reason ?? ''}): its TAPs left the in-kernel data path and run as tap-vnet`);
  }
  const qspec: QemuDriverSpec__Output = { memoryMib: q.memoryMib ?? 0, cpus: q.cpus ?? 0, kernel: q.kernel ?? '', initrd: q.initrd ?? '', append: q.append ?? '', disk: q.disk ?? '', extra: { ...(q.extra ?? {}), nic } };
  const vm = new QemuVm(spec, qspec, files, ports, log);
  vm.taps = [...st.taps];
  vm.ramPadKib = st.ramPadKib;
  vm.snapSerial = st.snapSerial;
  vm.diskChain = st.diskChain;
  // Valid as recorded; the driver keeps it only if the tracker is adopted as it stood (driver.ts adopt()).
  if (st.trackedBase) vm.trackedBase = { path: st.trackedBase.path, valid: true };
  try {
    await vm.attachProcess(proc, d.timeoutMs);
  } catch (e) {
    vm.release();
    throw new VnsnapError('ERR_NOT_FOUND', `QEMU VM ${spec.id} (pid ${proc.pid}) does not answer on ${files.qmpSock}: ${(e as Error).message}`, { cause: e });
  }
  try {
    await cancelDeadSnapshot(vm);
    await readTop(vm);
    await vm.refreshStatus();
    let resumed = false;
    if (vm.status === 'paused') {
      await vm.q().execute('cont');
      await vm.refreshStatus();
      resumed = true;
    }
    if (st.nic === 'stream') {
      for (let i = 0; i < ctx.portNames.length; i++) {
        const p = new StreamPort(ctx.portNames[i] as string, files.netSock(i));
        await p.listen();
        ports.push(p);
      }
      log.warn({ vm: spec.id }, 'adopted a VM with stream NICs: QEMU does not reconnect them, so it stays off the network until it is restarted (nic=tap-vnet and nic=tap survive agent restarts)');
    }
    d.add(spec.id, vm);
    log.info({ pid: vm.pid, dir: files.dir, resumed, top: vm.topNode }, 'QEMU VM adopted');
    return { name: spec.name, ports, resumed };
  } catch (e) {
    for (const p of ports) {
      try {
        p.close();
      } catch {
        /* not open */
      }
    }
    vm.release();
    throw e;
  }
}

/** How adoptQemuVm opens a TAP, and takes one off the in-kernel data path (tests pass fakes). */
export interface AdoptedTapOps {
  open(name: string, tap: string, nic: NicMode, prefix: string): Promise<Port>;
  leave(tap: string): Promise<void>;
}

/**
 * The adopted VM's TAPs as ports in its recorded mode; a tap-bpf VM whose new agent cannot run
 * the data path (the loader's ERR_FAILED_PRECONDITION: the object not built, bpftool missing)
 * falls back to tap-vnet, its twin (the same QEMU netdev, vnet_hdr=on): every TAP is taken off
 * the data path first (vn_tx removed and checked gone, or the switch would read the TAP's frames
 * and the program would still carry or punt them), then opened again. Any other failure, or one
 * taking vn_tx off, closes what was opened and is thrown (the VM is then not adopted).
 */
export async function openAdoptedTaps(names: readonly string[], taps: readonly string[], nic: NicMode, prefix: string, ops: AdoptedTapOps = { open: openTapPort, leave: leaveDataPath }): Promise<{ ports: Port[]; nic: NicMode; reason?: string }> {
  const openAll = async (mode: NicMode): Promise<Port[]> => {
    const ports: Port[] = [];
    try {
      for (const [i, t] of taps.entries()) ports.push(await ops.open(names[i] as string, t, mode, prefix));
      return ports;
    } catch (e) {
      for (const p of ports) p.close();
      throw e;
    }
  };
  try {
    return { ports: await openAll(nic), nic };
  } catch (e) {
    if (nic !== 'tap-bpf' || !isVnsnapError(e, 'ERR_FAILED_PRECONDITION')) throw e;
    for (const t of taps) await ops.leave(t);
    return { ports: await openAll('tap-vnet'), nic: 'tap-vnet', reason: describeError(e) };
  }
}

/** A migration the dead agent started (a snapshot's stream) cannot finish: cancel it and wait for the end. */
async function cancelDeadSnapshot(vm: QemuVm): Promise<void> {
  const q = vm.q();
  const info = await q.execute<MigrationInfo>('query-migrate');
  if (!info.status || !ACTIVE_MIGRATION.has(info.status)) return;
  vm.log.info({ status: info.status }, 'cancelling the snapshot stream the previous agent left');
  if (info.status !== 'cancelling') await q.execute('migrate_cancel');
  const deadline = Date.now() + 10_000;
  for (;;) {
    const s = (await q.execute<MigrationInfo>('query-migrate')).status;
    if (!s || !ACTIVE_MIGRATION.has(s)) return;
    if (Date.now() > deadline) throw new VnsnapError('ERR_TIMEOUT', `QEMU VM ${vm.spec.id}: the previous agent's snapshot stream did not cancel within 10 s (status ${s})`);
    await new Promise((r) => setTimeout(r, 50)); // QEMU reports the end only to the dead agent's event stream
  }
}

/** The disk's current top node and file, as QEMU has them. */
async function readTop(vm: QemuVm): Promise<void> {
  if (!vm.hasDisk) return;
  const blocks = await vm.q().execute<{ inserted?: { 'node-name'?: string; file?: string } }[]>('query-block');
  const top = blocks.find((b) => b.inserted?.['node-name'])?.inserted;
  if (top?.['node-name']) vm.topNode = top['node-name'];
  if (top?.file) vm.topFile = top.file;
}
