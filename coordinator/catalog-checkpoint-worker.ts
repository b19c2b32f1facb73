/**
 * Why: a checkpoint copies the catalog's WAL into its database file and fsyncs both; behind
 * heavy disk writeback that takes seconds, so it must not run on the coordinator's event loop
 * (catalog-durability.ts). This worker thread owns a second connection to the catalog and runs
 * `PRAGMA wal_checkpoint(PASSIVE)` when asked: it never blocks the main connection's readers or
 * writer (PASSIVE copies what no reader still needs and leaves the rest for the next one).
 *
 * After a complete checkpoint the next write restarts the WAL from its start, and SQLite fsyncs
 * the new WAL header then (synchronous=NORMAL does too): the worker makes that write itself (the
 * database's user_version set to its own value, a one-page transaction that changes nothing),
 * so the restart's fsync is not the next write on the event loop. A write of the main
 * connection landing between the checkpoint and that write would still restart the WAL there
 * (a window of microseconds once per checkpoint).
 *
 * Messages: in {type: 'checkpoint'}; out {ok: true, busy, log, checkpointed, restarted} or
 * {ok: false, error}.
 */
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';

const { file } = workerData as { file: string };
const db = new Database(file);
db.pragma('busy_timeout = 5000');
// The checkpoint's fsyncs (WAL before copying, database after) are this connection's.
db.pragma('synchronous = FULL');
db.pragma('wal_autocheckpoint = 0');

parentPort?.on('message', () => {
  try {
    const [r] = db.pragma('wal_checkpoint(PASSIVE)') as { busy: number; log: number; checkpointed: number }[];
    const restarted = r !== undefined && r.log > 0 && r.log === r.checkpointed;
    if (restarted) db.pragma(`user_version = ${Number(db.pragma('user_version', { simple: true }))}`);
    parentPort?.postMessage({ ok: true, ...r, restarted });
  } catch (e) {
    parentPort?.postMessage({ ok: false, error: (e as Error).message });
  }
});
