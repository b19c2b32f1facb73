/**
 * Why: a checkpoint copies the catalog's WAL into its database file and fsyncs both; behind
 * heavy disk writeback that takes seconds, so it must not run on the coordinator's event loop
 * (catalog-durability.ts). This worker thread owns a second connection to the catalog and runs
 * `PRAGMA wal_checkpoint(PASSIVE)` when asked: it never blocks the main connection's readers or
 * writer (PASSIVE copies what no reader still needs and leaves the rest for the next one).
 *
 * Messages: in {type: 'checkpoint'}; out {ok: true, busy, log, checkpointed} or {ok: false, error}.
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
    parentPort?.postMessage({ ok: true, ...r });
  } catch (e) {
    parentPort?.postMessage({ ok: false, error: (e as Error).message });
  }
});
