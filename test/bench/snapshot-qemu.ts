/**
 * What bench:snapshot measures without vnsnap, on the VNE's own QEMUs (through each VM's second
 * QMP monitor, monitor.sock) and on the store's own filesystem:
 *
 *   baseline   every VM paused (QMP `stop`, all at once), each saved with QEMU (`migrate` to
 *              `exec:cat > FILE`, all at once: the baseline's best case), then all resumed
 *              (`cont`); a VM's pause is stop → cont. Memory only: a disk copy would add to it.
 *   bare_qemu  QEMU's own background snapshot of each VM: `stop` and `migrate` (capability
 *              background-snapshot) written back to back, QEMU resumes the VM itself; the pause
 *              from QEMU's own STOP and RESUME event timestamps, as vnsnap's is. The stream goes
 *              to `unix:SOCK`, a socket this process listens on before the `stop` and writes
 *              into a file, as vnsnap's goes to a socket its agent opened before the cut: no
 *              fork or exec inside the pause (`exec:cat > FILE` put QEMU's fork of a shell and
 *              `cat` into it, so the figure was no floor). All VMs at once per round (as vnsnap
 *              cuts them), the stream awaited before the next round.
 *   qemu_device_state  with tracked memory, on the tracked VMs themselves: the QEMU steps of a
 *              tracked cut alone — `stop` and `migrate` with x-ignore-shared (the devices, no RAM)
 *              written back to back, the stream read by the agent's own sink (device-state.ts:
 *              a thread of its own), `cont` once QEMU completed (contAfterSave, as the agent does) —
 *              all VMs at once per round; the pause from QEMU's STOP / RESUME timestamps. No page
 *              read, no frame drained, but none of vnsnap's scheduling either (QEMU's threads and
 *              this process at the default policy, beside the guests' busy vCPUs): what QEMU's
 *              own steps cost driven plainly, not a floor.
 *   io floor   `dd conv=fsync` of as many bytes as a snapshot stored, into the store's directory:
 *              the disk's price for the bytes, against which a snapshot's wall time is a ratio.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { contAfterSave, DeviceStateSink } from '../../agent/drivers/qemu/device-state';
import { QmpClient, type QmpEvent } from '../../agent/drivers/qemu/qmp';
import { E2E_VMS, instanceDir } from '../support/qemu-vne';
import { sleep } from '../support/wait';

async function monitors(): Promise<QmpClient[]> {
  return Promise.all(
    E2E_VMS.map(async (vm) => {
      const d = instanceDir(vm);
      if (!d) throw new Error(`no running QEMU for ${vm}`);
      return QmpClient.connect(path.join(d, 'monitor.sock'), { name: `${vm} monitor`, timeoutMs: 10_000 });
    }),
  );
}

/** Every capability off but `on` (they persist in QEMU: the last vnsnap job left its own on). */
async function onlyCapabilities(q: QmpClient, on: readonly string[]): Promise<void> {
  const caps = await q.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities');
  await q.execute('migrate-set-capabilities', { capabilities: caps.map((x) => ({ capability: x.capability, state: on.includes(x.capability) })) });
  await q.execute('migrate-set-parameters', { 'max-bandwidth': 8 * 1024 * 1024 * 1024, 'downtime-limit': 300 });
}

async function migrationEnd(q: QmpClient, vm: string): Promise<void> {
  for (;;) {
    const st = await q.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (st.status === 'completed') return;
    if (st.status === 'failed' || st.status === 'cancelled') throw new Error(`migrate of ${vm}: ${st.status} ${st['error-desc'] ?? ''}`);
    await sleep(20); // kept: QEMU has no event for a migration's end without the `events` capability
  }
}

/** The operator's way: stop all, migrate each to a file, cont all. */
export async function baseline(dir: string): Promise<{ pauses: number[]; seconds: number; slowestSingle: number; bytes: number }> {
  const qmps = await monitors();
  try {
    for (const q of qmps) await onlyCapabilities(q, []);
    const files = E2E_VMS.map((vm) => path.join(dir, `baseline-${vm}.img`));
    const t0 = performance.now();
    const stopped = await Promise.all(qmps.map(async (q) => (await q.execute('stop'), performance.now())));
    const saveMs = await Promise.all(
      qmps.map(async (q, i) => {
        const s = performance.now();
        await q.execute('migrate', { uri: `exec:cat > ${files[i] as string}` });
        await migrationEnd(q, E2E_VMS[i] as string);
        return performance.now() - s;
      }),
    );
    // `completed` can come while QEMU is still in finish-migrate, which refuses a `cont` ("not
    // finalized"): sent again until it takes, as the agent does after a save.
    const resumed = await Promise.all(qmps.map(async (q, i) => (await contAfterSave(q, E2E_VMS[i] as string), performance.now())));
    const seconds = (performance.now() - t0) / 1000;
    const bytes = files.reduce((n, f) => n + fs.statSync(f).size, 0);
    for (const f of files) fs.rmSync(f, { force: true });
    return { pauses: stopped.map((s, i) => (resumed[i] as number) - s), seconds, slowestSingle: Math.max(...saveMs) / 1000, bytes };
  } finally {
    for (const q of qmps) q.close();
  }
}

/**
 * A unix socket listening at `sock` that writes the one connection it accepts into `file`;
 * `written` resolves once the sender closed it and every byte is in the file.
 */
async function socketToFile(sock: string, file: string): Promise<{ written: Promise<unknown>; close: () => void }> {
  fs.rmSync(sock, { force: true });
  let resolveConn!: (s: net.Socket) => void;
  const conn = new Promise<net.Socket>((r) => (resolveConn = r));
  const server = net.createServer((s) => {
    server.close(); // one connection
    resolveConn(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(sock, () => resolve());
  });
  const written = conn.then((s) => pipeline(s, fs.createWriteStream(file)));
  written.catch(() => undefined);
  return {
    written,
    close: () => {
      server.close();
      fs.rmSync(sock, { force: true });
    },
  };
}

/** What a round of QEMU's own steps does: QEMU's background snapshot, or a tracked cut's device state with the agent's `cont`. */
type QemuRound = 'bare_qemu' | 'qemu_device_state';

/** The agent's own device-state sink at `sock` (device-state.ts); `written` resolves at its stream's end. */
async function deviceStateReader(sock: string): Promise<{ written: Promise<unknown>; close: () => void }> {
  const sink = await DeviceStateSink.listen(sock);
  return { written: sink.ended, close: () => sink.close() };
}

/** `rounds` bare QEMU background snapshots of every VM (see the module comment); every VM's pause of every round. */
export function bareQemu(dir: string, rounds: number): Promise<number[]> {
  return qemuRounds(dir, rounds, 'bare_qemu');
}

/** `rounds` of a tracked cut's QEMU steps alone on every (tracked) VM (see the module comment); every VM's pause of every round. */
export function qemuDeviceState(dir: string, rounds: number): Promise<number[]> {
  return qemuRounds(dir, rounds, 'qemu_device_state');
}

async function qemuRounds(dir: string, rounds: number, kind: QemuRound): Promise<number[]> {
  const qmps = await monitors();
  const pauses: number[] = [];
  try {
    for (const q of qmps) await onlyCapabilities(q, kind === 'bare_qemu' ? ['events', 'background-snapshot'] : ['events', 'x-ignore-shared']);
    for (let r = 0; r < rounds; r++) {
      const one = await Promise.all(
        qmps.map(async (q, i) => {
          const vm = E2E_VMS[i] as string;
          const file = path.join(dir, `${kind}-${vm}.img`);
          const sock = path.join(dir, `${kind}-${vm}.sock`);
          // Listening before the stop. A tracked cut's device state is read as the agent reads it
          // (device-state.ts: on a thread of its own; a reader on this loop made QEMU's save wait).
          const reader = kind === 'qemu_device_state' ? await deviceStateReader(sock) : await socketToFile(sock, file);
          try {
            const stop = q.waitEvent('STOP', undefined, 30_000);
            const resume = q.waitEvent('RESUME', undefined, 60_000);
            const done = q.waitEvent('MIGRATION', (d) => d.status === 'completed' || d.status === 'failed' || d.status === 'cancelled', 300_000);
            const cmds = [q.execute('stop'), q.execute('migrate', { uri: `unix:${sock}` })];
            await Promise.all(cmds);
            const end = await done;
            if (end.data.status !== 'completed') throw new Error(`${kind === 'bare_qemu' ? 'bare QEMU background snapshot' : 'device state'} of ${vm}: ${String(end.data.status)}`);
            await reader.written;
            // QEMU's background snapshot resumes the VM itself; a tracked cut's save leaves it
            // stopped, resumed as the agent does.
            if (kind === 'qemu_device_state') await contAfterSave(q, vm);
            const [s, e] = (await Promise.all([stop, resume])) as [QmpEvent, QmpEvent];
            return (e.timestampUs - s.timestampUs) / 1000;
          } finally {
            reader.close();
            fs.rmSync(file, { force: true });
          }
        }),
      );
      pauses.push(...one);
    }
    for (const q of qmps) await onlyCapabilities(q, []);
    return pauses;
  } finally {
    for (const q of qmps) q.close();
  }
}

/** Seconds to write and fsync `bytes` (whole MiB, at least 1) into `dir` with dd conv=fsync; the file is removed. */
export function ioFloorSeconds(dir: string, bytes: number): number {
  const file = path.join(dir, 'io-floor.bin');
  const mib = Math.max(1, Math.ceil(bytes / 1048576));
  const t0 = performance.now();
  try {
    execFileSync('dd', ['if=/dev/zero', `of=${file}`, 'bs=1M', `count=${mib}`, 'conv=fsync'], { stdio: 'ignore' });
    return (performance.now() - t0) / 1000;
  } finally {
    fs.rmSync(file, { force: true });
  }
}
