/**
 * Live migration of one QEMU VM to another host, its local disk included (docs/migration.md):
 * the QEMU half of the agent's MigrateIncoming / MigrateOutgoing / MigrateResume /
 * MigrateCancel (agent/migrate-runner.ts sequences them, the coordinator orders them).
 *
 *   destination  incoming(): the VM's own command line + `-S -incoming defer` (cmdline.ts), a
 *                fresh disk overlay over the spec's base in the VM's disk directory,
 *                `nbd-server-start` on the agent's underlay address and `block-export-add`
 *                (writable) of the disk's node; `migrate-incoming tcp:ADDR:0` (the port QEMU
 *                took is read back from query-migrate's socket-address). Returns the two URIs.
 *                Until resume, the disk file is fdatasync'd every 100 ms (keepFlushed): the
 *                source's VM stop flushes the mirror target inside the downtime, and then
 *                finds little to write.
 *   source       outgoing(): `blockdev-add` an nbd node for the destination's export,
 *                `blockdev-mirror` sync=full copy-mode=write-blocking from the disk's top node
 *                with the VM running: an active mirror, each guest write returns once it is on
 *                both disks, so nothing is left to copy at the pause (QEMU 7.2 cannot switch a
 *                running job to active mode; docs/migration.md says why it is active from the
 *                start). If READY has not come within
 *                throttleAfterMs, the guest's writes are throttled (`block_set_io_throttle`
 *                bps_wr on the VM's disk; seed 004's write throttling) until the migration ends.
 *                Then `migrate` with pause-before-switchover: pre-copy of memory while the
 *                mirror keeps the disk in sync; at MIGRATION pre-switchover QEMU has paused the
 *                VM: the mirror is cancelled-as-ready (`block-job-cancel` of a READY mirror
 *                completes it with the target identical, without pivoting the source onto it;
 *                with the active mirror there is nothing left to copy).
 *                untilPaused() resolves here, the mirror still completing (meanwhile the
 *                coordinator has the destination attach the VM's ports).
 *                finish(): the mirror completed (a failure there is finish's failure: the VM
 *                resumes here), then `migrate-continue` → MIGRATION completed. The VM stays paused; the
 *                caller stops it and deletes its disk.
 *                cancel(): the mirror cancelled, `migrate_cancel`, the nbd node deleted, the
 *                throttle lifted, `cont` if the VM was paused by the migration: it runs on
 *                untouched (its own disk was only read).
 *   destination  resume(): (called as the source is told to finish) MIGRATION completed,
 *                `cont`, the NBD export and server removed,
 *                `announce-self` (RARP for every NIC: switches that learnt the MAC elsewhere
 *                learn it again; vnsnap's switches already have the static route).
 *                cancel(): the caller stops the VM with its disk discarded.
 *
 * Streams: TCP on the underlay; with `tls` (the agents run with certificates) both are mutual
 * TLS with QEMU's tls-creds-x509 (migration-tls.ts), else plain.
 */
import * as net from 'node:net';
import { VnsnapError } from '../../../proto/core/errors';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { MigrationProgress, MigrationTls } from '../driver';
import { addTls, clearTls, removeTlsFiles, TLS_AUTHZ, TLS_CREDS } from './migration-tls';
import type { MigrationInfo, QemuVm } from './process';
import type { QmpEvent } from './qmp';

const EXPORT = 'vnsnap-mig';
const TARGET_NODE = 'vnsnap-mig-target';
const JOB = 'vnsnap-mig-disk';

export interface LiveMigrationOptions {
  /** Throttle the guest's disk writes when the mirror is not READY within this (default 10 s). */
  throttleAfterMs?: number;
  /** The guest's write bandwidth while throttled (default 4 MiB/s). */
  throttleBps?: number;
  /** The VM's downtime QEMU aims for (default 300 ms). */
  downtimeLimitMs?: number;
  /** Give up when the whole migration takes longer (default 600 s). */
  timeoutMs?: number;
  progressMs?: number;
}

/** A free TCP port on `host` (bound and closed at once: QEMU's NBD server takes no port 0 it reports back). */
async function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

const hostPart = (h: string): string => (h.includes(':') ? `[${h}]` : h);

/** Destination: NBD export of the fresh disk and the incoming listener; the VM is waiting (-incoming defer, -S). */
export async function prepareIncoming(vm: QemuVm, listenAddress: string, tls?: MigrationTls): Promise<{ diskUri: string; memoryUri: string }> {
  const q = vm.q();
  const known = await q.execute<{ capability: string }[]>('query-migrate-capabilities');
  await q.execute('migrate-set-capabilities', { capabilities: known.map((c) => ({ capability: c.capability, state: c.capability === 'events' })) });
  const secure = tls ? { 'tls-creds': TLS_CREDS, 'tls-authz': TLS_AUTHZ } : {};
  if (tls) {
    await addTls(vm, tls, 'server');
    await q.execute('migrate-set-parameters', secure);
  }
  let diskUri = '';
  if (vm.hasDisk) {
    const port = await freePort(listenAddress);
    await q.execute('nbd-server-start', { addr: { type: 'inet', data: { host: listenAddress, port: String(port) } }, ...secure });
    await q.execute('block-export-add', { type: 'nbd', id: EXPORT, 'node-name': vm.topNode, name: EXPORT, writable: true });
    diskUri = `nbd://${hostPart(listenAddress)}:${port}/${EXPORT}`;
    keepFlushed(vm);
  }
  await q.execute('migrate-incoming', { uri: `tcp:${hostPart(listenAddress)}:0` });
  const info = await q.execute<MigrationInfo & { 'socket-address'?: { host?: string; port?: string }[] }>('query-migrate');
  const port = info['socket-address']?.[0]?.port;
  if (!port) throw new VnsnapError('ERR_DRIVER', `QEMU for ${vm.spec.id} did not report its incoming migration port`);
  return { diskUri, memoryUri: `tcp:${hostPart(listenAddress)}:${port}` };
}

/** Destination: wait for the state, stop the export, resume, announce. Returns the resume instant (µs). */
export async function resumeIncoming(vm: QemuVm, timeoutMs: number): Promise<number> {
  const q = vm.q();
  flushers.get(vm)?.();
  // Registered before the query: the destination finishes loading a moment after the source
  // reports completed, and its event must not fall between the two.
  const ended = q.waitEvent('MIGRATION', (d) => d.status === 'completed' || d.status === 'failed' || d.status === 'cancelled', timeoutMs);
  ended.catch(() => undefined);
  const info = await q.execute<MigrationInfo>('query-migrate');
  if (info.status !== 'completed') {
    const ev = await ended;
    if (ev.data.status !== 'completed') throw new VnsnapError('ERR_DRIVER', `incoming migration of ${vm.spec.id} ${String(ev.data.status)}: ${vm.stderr()}`.trim());
  }
  const resumed = q.waitEvent('RESUME', () => true, 10_000);
  resumed.catch(() => undefined);
  const end = Date.now() + 5000;
  for (;;) {
    try {
      await q.execute('cont');
      break;
    } catch (e) {
      if (!/not finalized/.test((e as Error).message) || Date.now() > end) throw e;
      await new Promise((r) => setImmediate(r));
    }
  }
  const ev = await resumed.catch(() => undefined);
  // After cont (outside the downtime): the source deleted its NBD client before the switchover.
  if (vm.hasDisk) {
    await q.execute('block-export-del', { id: EXPORT }).catch(() => undefined);
    await q.execute('nbd-server-stop').catch(() => undefined);
  }
  if (fs.existsSync(path.join(vm.files.dir, 'tls'))) {
    await clearTls(vm);
    removeTlsFiles(vm);
  }
  await q.execute('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 }).catch((e: Error) => vm.log.warn({ err: e.message }, 'announce-self failed'));
  await vm.refreshStatus();
  return ev ? eventUs(ev) : Date.now() * 1000;
}

/** Stops a destination's background flush (keepFlushed), by VM. */
const flushers = new WeakMap<QemuVm, () => void>();

/**
 * Destination: while the mirror writes into the exported disk, write the host's dirty pages of
 * its file out every FLUSH_EVERY_MS. The source's VM stop flushes every block node, the mirror's
 * NBD target included, and that flush (the destination's fdatasync) lies inside the downtime: it
 * then only has the last moments' writes to write out, not everything since the mirror was
 * READY. Ends at resume, or when QEMU exits (a cancel).
 */
function keepFlushed(vm: QemuVm): void {
  let stopped = false;
  let busy = false;
  let timer: NodeJS.Timeout | undefined;
  let fh: fs.promises.FileHandle | undefined;
  const close = (): void => void fh?.close().catch(() => undefined);
  const stop = (): void => {
    stopped = true;
    clearTimeout(timer);
    if (!busy) close();
  };
  const tick = async (): Promise<void> => {
    busy = true;
    try {
      fh ??= await fs.promises.open(vm.topFile, 'r');
      await fh.datasync();
    } catch (e) {
      vm.log.debug({ err: (e as Error).message }, 'background flush of the incoming disk failed');
    }
    busy = false;
    if (stopped) close();
    else timer = setTimeout(() => void tick(), FLUSH_EVERY_MS);
  };
  flushers.set(vm, stop);
  void vm.exitPromise.then(stop);
  timer = setTimeout(() => void tick(), FLUSH_EVERY_MS);
}

const FLUSH_EVERY_MS = 100;

const eventUs = (ev: QmpEvent): number => ev.timestampUs || Date.now() * 1000;

/** Source side of one VM's migration. */
export class OutgoingMigration {
  private readonly o: Required<LiveMigrationOptions>;
  private mirrorStarted = false;
  /** The mirror completing at the switchover (memory() starts it, finish() awaits it). */
  private settling: Promise<void> | undefined;
  private throttled = false;
  private migrateStarted = false;
  private pausedByMigration = false;
  private cancelled = false;
  private diskBytes = 0;
  private throttleTimer: NodeJS.Timeout | undefined;
  private qdev = '';

  constructor(
    private readonly vm: QemuVm,
    private readonly targets: { diskUri: string; memoryUri: string },
    private readonly onProgress: (p: MigrationProgress) => void,
    opts: LiveMigrationOptions = {},
    private readonly tls?: MigrationTls,
  ) {
    this.o = {
      throttleAfterMs: opts.throttleAfterMs ?? 10_000,
      throttleBps: opts.throttleBps ?? 4 * 1024 * 1024,
      downtimeLimitMs: opts.downtimeLimitMs ?? 300,
      timeoutMs: opts.timeoutMs ?? 600_000,
      progressMs: opts.progressMs ?? 250,
    };
  }

  private get q() {
    return this.vm.q();
  }

  /** The TLS options of the nbd client and of the migration (none without TLS). */
  private secure(): Record<string, string> {
    if (!this.tls) return {};
    return { 'tls-creds': TLS_CREDS, ...(this.tls.peer ? { 'tls-hostname': this.tls.peer } : {}) };
  }

  /** Mirror the disk, pre-copy memory; resolves when the VM is paused at the switchover with its disk in sync. */
  async untilPaused(): Promise<{ pausedUnixUs: number; diskBytes: number; throttled: boolean }> {
    if (this.tls) await addTls(this.vm, this.tls, 'client');
    if (this.targets.diskUri && this.vm.hasDisk) await this.mirror();
    return this.memory();
  }

  private async mirror(): Promise<void> {
    const u = new URL(this.targets.diskUri);
    const host = u.hostname.replace(/^\[|\]$/g, '');
    await this.q.execute('blockdev-add', { driver: 'nbd', 'node-name': TARGET_NODE, server: { type: 'inet', host, port: u.port }, export: u.pathname.slice(1), ...this.secure() });
    const ready = this.q.waitEvent('BLOCK_JOB_READY', (d) => d.device === JOB, this.o.timeoutMs);
    const failed = this.q.waitEvent('BLOCK_JOB_COMPLETED', (d) => d.device === JOB, this.o.timeoutMs).then((ev) => {
      throw new VnsnapError('ERR_DRIVER', `the disk mirror of ${this.vm.spec.id} ended before it was in sync: ${String(ev.data.error ?? 'no error given')}`);
    });
    ready.catch(() => undefined);
    failed.catch(() => undefined);
    // Active mode: a guest write returns once it is on both disks, so after the first pass the
    // target never falls behind and the switchover has nothing left to copy.
    await this.q.execute('blockdev-mirror', { 'job-id': JOB, device: this.vm.topNode, target: TARGET_NODE, sync: 'full', 'copy-mode': 'write-blocking', 'auto-finalize': true, 'auto-dismiss': true });
    this.mirrorStarted = true;
    this.throttleTimer = setTimeout(() => void this.throttle(), this.o.throttleAfterMs);
    const poll = setInterval(() => void this.diskProgress(), this.o.progressMs);
    try {
      await Promise.race([ready, failed]);
    } finally {
      clearInterval(poll);
      clearTimeout(this.throttleTimer);
    }
    await this.diskProgress(true);
  }

  private async diskProgress(done = false): Promise<void> {
    const jobs = await this.q.execute<{ device: string; offset: number; len: number }[]>('query-block-jobs').catch(() => []);
    const j = jobs.find((x) => x.device === JOB);
    if (!j) return;
    this.diskBytes = j.len;
    this.onProgress({ phase: 'disk', bytesDone: j.offset, bytesTotal: j.len, iteration: 0, done });
  }

  /** The mirror does not converge: slow the guest's writes (block_set_io_throttle on its disk). */
  private async throttle(): Promise<void> {
    if (this.cancelled) return;
    try {
      this.qdev = await this.diskQdev();
      await this.q.execute('block_set_io_throttle', { id: this.qdev, ...zeroThrottle(), bps_wr: this.o.throttleBps });
      this.throttled = true;
      this.vm.log.info({ bpsWr: this.o.throttleBps }, 'disk mirror not in sync yet: guest writes throttled');
    } catch (e) {
      this.vm.log.warn({ err: (e as Error).message }, 'could not throttle the guest\'s disk writes');
    }
  }

  private async diskQdev(): Promise<string> {
    const blocks = await this.q.execute<{ qdev?: string; inserted?: { 'node-name'?: string } }[]>('query-block');
    const b = blocks.find((x) => x.qdev && x.inserted);
    if (!b?.qdev) throw new VnsnapError('ERR_DRIVER', `no disk device found on ${this.vm.spec.id}`);
    return b.qdev;
  }

  private async unthrottle(): Promise<void> {
    if (!this.throttled) return;
    this.throttled = false;
    await this.q.execute('block_set_io_throttle', { id: this.qdev, ...zeroThrottle() }).catch(() => undefined);
  }

  private async memory(): Promise<{ pausedUnixUs: number; diskBytes: number; throttled: boolean }> {
    const q = this.q;
    const known = await q.execute<{ capability: string }[]>('query-migrate-capabilities');
    const want = new Set(['events', 'pause-before-switchover']);
    await q.execute('migrate-set-capabilities', { capabilities: known.map((c) => ({ capability: c.capability, state: want.has(c.capability) })) });
    await q.execute('migrate-set-parameters', { 'max-bandwidth': 1024 * 1024 * 1024, 'downtime-limit': this.o.downtimeLimitMs, ...this.secure() });
    const pre = q.waitEvent('MIGRATION', (d) => d.status === 'pre-switchover' || d.status === 'failed' || d.status === 'cancelled', this.o.timeoutMs);
    const stopped = q.waitEvent('STOP', () => true, this.o.timeoutMs);
    pre.catch(() => undefined);
    stopped.catch(() => undefined);
    await q.execute('migrate', { uri: this.targets.memoryUri });
    this.migrateStarted = true;
    const poll = setInterval(() => void this.memProgress(), this.o.progressMs);
    let ev: QmpEvent;
    try {
      ev = await pre;
    } finally {
      clearInterval(poll);
    }
    if (ev.data.status !== 'pre-switchover') {
      const info = await q.execute<MigrationInfo>('query-migrate').catch(() => ({}) as MigrationInfo);
      throw new VnsnapError('ERR_DRIVER', `migration of ${this.vm.spec.id} ${String(ev.data.status)}: ${info['error-desc'] ?? ''}`.trim());
    }
    this.pausedByMigration = true;
    const stop = await stopped.catch(() => undefined);
    const pausedUnixUs = stop ? eventUs(stop) : Date.now() * 1000;
    // The VM is paused: its disk no longer changes. The mirror completes while the caller
    // reports the pause and the destination attaches the ports; finish() waits for it.
    if (this.mirrorStarted) {
      this.settling = this.completeMirror(pausedUnixUs);
      this.settling.catch(() => undefined);
    }
    return { pausedUnixUs, diskBytes: this.diskBytes, throttled: this.throttled };
  }

  /**
   * A READY mirror cancelled with the VM paused completes with the target identical (its last
   * step flushes the destination's disk), without moving the source onto it; the nbd node goes.
   */
  private async completeMirror(pausedUnixUs: number): Promise<void> {
    const q = this.q;
    const completed = q.waitEvent('BLOCK_JOB_COMPLETED', (d) => d.device === JOB, 60_000);
    const t0 = Date.now();
    await q.execute('block-job-cancel', { device: JOB });
    const c = await completed;
    this.mirrorStarted = false;
    this.vm.log.info({ ms: Date.now() - t0, sincePauseMs: Date.now() - pausedUnixUs / 1000 }, 'disk mirror completed at the switchover');
    if (c.data.error) throw new VnsnapError('ERR_DRIVER', `the disk mirror of ${this.vm.spec.id} failed at the switchover: ${String(c.data.error)}`);
    await q.execute('blockdev-del', { 'node-name': TARGET_NODE }).catch(() => undefined);
  }

  private async memProgress(): Promise<void> {
    const info = await this.q.execute<MigrationInfo>('query-migrate').catch(() => undefined);
    const ram = info?.ram;
    if (!ram) return;
    this.onProgress({ phase: 'memory', bytesDone: ram.transferred ?? 0, bytesTotal: ram.total ?? 0, iteration: ram['dirty-sync-count'] ?? 0, done: false });
  }

  /** The switchover: let QEMU send the rest; resolves at MIGRATION completed (the VM stays paused here). */
  async finish(): Promise<{ memoryBytes: number; downtimeMs?: number }> {
    const q = this.q;
    // The destination's disk is final before QEMU sends the rest (after which it may run there).
    await this.settling;
    const done = q.waitEvent('MIGRATION', (d) => d.status === 'completed' || d.status === 'failed' || d.status === 'cancelled', this.o.timeoutMs);
    await q.execute('migrate-continue', { state: 'pre-switchover' });
    const ev = await done;
    const info = await q.execute<MigrationInfo>('query-migrate').catch(() => ({}) as MigrationInfo);
    if (ev.data.status !== 'completed') throw new VnsnapError('ERR_DRIVER', `migration of ${this.vm.spec.id} ${String(ev.data.status)} at the switchover: ${info['error-desc'] ?? ''}`.trim());
    this.onProgress({ phase: 'memory', bytesDone: info.ram?.transferred ?? 0, bytesTotal: info.ram?.total ?? 0, iteration: info.ram?.['dirty-sync-count'] ?? 0, done: true });
    return { memoryBytes: info.ram?.transferred ?? 0, ...(info.downtime !== undefined ? { downtimeMs: info.downtime } : {}) };
  }

  /** Undo everything before finish(): the VM runs on here as before. Idempotent. */
  async cancel(): Promise<void> {
    this.cancelled = true;
    clearTimeout(this.throttleTimer);
    const q = this.q;
    await this.settling?.catch(() => undefined);
    if (this.mirrorStarted) {
      const jobs = await q.execute<{ device: string }[]>('query-block-jobs').catch(() => []);
      if (jobs.some((j) => j.device === JOB)) {
        const ended = Promise.race(['BLOCK_JOB_CANCELLED', 'BLOCK_JOB_COMPLETED'].map((ev) => q.waitEvent(ev, (d) => d.device === JOB, 10_000))).catch(() => undefined);
        await q.execute('block-job-cancel', { device: JOB, force: true }).catch(() => undefined);
        await ended;
      }
      this.mirrorStarted = false;
    }
    if (this.migrateStarted) {
      const st = (await q.execute<MigrationInfo>('query-migrate').catch(() => ({}) as MigrationInfo)).status;
      if (st && !['completed', 'failed', 'cancelled', 'none'].includes(st)) {
        const ended = q.waitEvent('MIGRATION', (d) => d.status === 'cancelled' || d.status === 'failed' || d.status === 'completed', 30_000);
        ended.catch(() => undefined);
        await q.execute('migrate_cancel').catch(() => undefined);
        await ended;
      }
    }
    await q.execute('blockdev-del', { 'node-name': TARGET_NODE }).catch(() => undefined);
    if (this.tls) {
      await clearTls(this.vm);
      removeTlsFiles(this.vm);
    }
    await this.unthrottle();
    await this.vm.refreshStatus();
    if (this.vm.status !== 'running') await q.execute('cont');
    await this.vm.refreshStatus();
    this.pausedByMigration = false;
  }

  get paused(): boolean {
    return this.pausedByMigration;
  }
}

function zeroThrottle(): Record<string, number> {
  return { bps: 0, bps_rd: 0, bps_wr: 0, iops: 0, iops_rd: 0, iops_wr: 0 };
}
