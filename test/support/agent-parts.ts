/**
 * The agent's parts wired as agent.ts wires them, without the session or a tunnel: a real Switch
 * (no peers) over the FakeDriver's FakePorts, a LocalDirStore in a temporary directory and a
 * ManualClock. For unit tests of the snapshot and restore runners.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { CutPriorityOptions } from '../../agent/cut-priority';
import { AgentMetrics } from '../../agent/metrics';
import { RestoreRunner } from '../../agent/restore-runner';
import { SnapshotRunner } from '../../agent/snapshot-runner';
import { LocalDirStore } from '../../proto/store/local-dir';
import { VmTable, type VmRecord } from '../../agent/vms';
import { VneTable } from '../../agent/vne-table';
import { ManualClock } from '../../proto/core/clock';
import { silentLogger } from '../../proto/core/log';
import type { VmProgress } from '../../proto/gen/vnsnap/v1/VmProgress';
import type { VmSpec__Output } from '../../proto/gen/vnsnap/v1/VmSpec';
import { formatMac } from '../../switch/bridge/mac';
import { Switch } from '../../switch/switch';
import { FakeDriver } from './fake-driver';
import { makeFrame, vmMac } from './frames';

export const T0 = 1_800_000_000_000;

/** Let pending promise callbacks and immediates run (the runners' awaits on resolved fakes). */
export const flush = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A test frame from VM i to VM j (MACs vmMac(i), vmMac(j)). */
export function testFrame(from: number, to: number, seq: number): Buffer {
  return makeFrame({ dst: vmMac(to), src: vmMac(from), sender: from, seq, epoch: 0 });
}
export const VNE = 'blue';

/** A VM spec for the fake driver with one vNIC whose MAC is vmMac(i). */
export function fakeVmSpec(name: string, i: number): VmSpec__Output {
  return { name, host: 'h1', macs: [formatMac(vmMac(i))], driver: { kind: 'qemu' } };
}

export class AgentParts {
  readonly clock = new ManualClock(T0);
  readonly sw = new Switch({ id: 'h1', now: () => this.clock.now() });
  readonly driver = new FakeDriver('qemu', () => this.clock.now() * 1000);
  readonly root = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-agent-unit-'));
  readonly store = new LocalDirStore(this.root);
  readonly metrics = new AgentMetrics();
  readonly log = silentLogger();
  readonly vms: VmTable;
  readonly vnes: VneTable;
  readonly snapshots: SnapshotRunner;
  readonly restores: RestoreRunner;
  /** The host's available memory the restore runner sees (bytes). */
  memAvailable = 8 * 1024 ** 3;
  /** Progress the snapshot runner reported, in order. */
  readonly progress: { vm: string; fraction: number; phaseDone: boolean }[] = [];

  /** cutPriority: the background cut's raised priority (default: the nice value only, no realtime policy). */
  constructor(opts: { progressIntervalMs?: number; cutPriority?: CutPriorityOptions; maxCutWaitMs?: number } = {}) {
    const parts = { agentId: 'h1', switch: () => this.sw, store: this.store, clock: this.clock, log: this.log, metrics: this.metrics };
    this.vms = new VmTable({ ...parts, drivers: [this.driver] });
    const vnes = new VneTable(parts);
    this.vnes = vnes;
    this.snapshots = new SnapshotRunner({ ...parts, vms: this.vms, vnes, cutPriority: { realtime: false }, ...opts });
    this.restores = new RestoreRunner({ ...parts, vms: this.vms, vnes, snapshots: this.snapshots, availableMemory: () => Promise.resolve(this.memAvailable) });
  }

  /** Init the store, configure VNE "blue" (VNI 7, no peers) and start the named VMs (MAC i+1) at epoch 0. */
  async init(vmNames: string[]): Promise<this> {
    await this.store.init();
    this.vnes.configure({ vne: VNE, vni: 7, generation: 1, peers: [], macs: [], epoch: 0 });
    for (const [i, name] of vmNames.entries()) await this.vms.start(VNE, fakeVmSpec(name, i + 1), 0, []);
    return this;
  }

  vm(name: string): VmRecord {
    const r = this.vms.get(VNE, name);
    if (!r) throw new Error(`no VM ${name}`);
    return r;
  }

  readonly sink = (p: VmProgress): void => {
    this.progress.push({ vm: p.vm ?? '', fraction: Number(p.fraction ?? 0), phaseDone: p.phaseDone ?? false });
  };

  close(): void {
    this.sw.stop();
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}
