import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { persistIdleEnabled, PERSIST_IDLE_ENV } from '../../agent/persist-priority';

const SCHED_OTHER = 0;
const SCHED_IDLE = 5;

/**
 * In a child process (the hashing worker is one per process, and a test must not leave this
 * one's at SCHED_IDLE): lowerPersistPriority(env) before or after the worker started, one stream
 * hashed in the worker and on the caller's thread; the worker's and the main thread's policies.
 */
function inChild(env: Record<string, string>, lowerFirst: boolean): { asked: boolean; worker: number; main: number; same: boolean } {
  const dist = path.join(__dirname, '..', '..');
  const script = `
    const fs = require('node:fs');
    const { lowerPersistPriority } = require(${JSON.stringify(path.join(dist, 'agent/persist-priority.js'))});
    const { hashWorkerPolicy, InlineChunkHasher, WorkerChunkHasher } = require(${JSON.stringify(path.join(dist, 'proto/store/chunk-hasher.js'))});
    const { DEFAULT_CHUNKER } = require(${JSON.stringify(path.join(dist, 'proto/store/chunker.js'))});
    const policy = (stat) => Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[38]);
    (async () => {
      const data = Buffer.alloc(3 << 20);
      for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
      const env = JSON.parse(process.argv[1]);
      let asked = false;
      if (${lowerFirst}) asked = lowerPersistPriority(env);
      const w = new WorkerChunkHasher(DEFAULT_CHUNKER, 'auto');
      const a = await w.push(Buffer.from(data.subarray(0, 1 << 20)));
      if (!${lowerFirst}) asked = lowerPersistPriority(env);
      const b = await w.push(Buffer.from(data.subarray(1 << 20)));
      const c = await w.end();
      const inline = new InlineChunkHasher(DEFAULT_CHUNKER, 'auto');
      const i1 = inline.pushSync(Buffer.from(data));
      const i2 = inline.endSync();
      const same = JSON.stringify([...a.sha256, ...b.sha256, ...c.sha256, c.artefactSha256]) === JSON.stringify([...i1.sha256, ...i2.sha256, i2.artefactSha256]);
      process.stdout.write(JSON.stringify({ asked, worker: hashWorkerPolicy(), main: policy(fs.readFileSync('/proc/thread-self/stat', 'utf8')), same }));
    })().catch((e) => { process.stderr.write(String(e.stack)); process.exit(1); });`;
  return JSON.parse(execFileSync(process.execPath, ['-e', script, JSON.stringify(env)], { encoding: 'utf8', timeout: 60_000 })) as { asked: boolean; worker: number; main: number; same: boolean };
}

describe('persist priority: the store\'s hashing worker at SCHED_IDLE', () => {
  it('is on unless the environment says 0', () => {
    assert.equal(persistIdleEnabled({}), true);
    assert.equal(persistIdleEnabled({ [PERSIST_IDLE_ENV]: '1' }), true);
    assert.equal(persistIdleEnabled({ [PERSIST_IDLE_ENV]: '0' }), false);
  });

  it('a worker started after the call runs SCHED_IDLE, the main thread keeps its policy, the chunks are the same', () => {
    const r = inChild({}, true);
    assert.deepEqual(r, { asked: true, worker: SCHED_IDLE, main: SCHED_OTHER, same: true });
  });

  it('a worker already running goes SCHED_IDLE at the call, before its next request', () => {
    const r = inChild({}, false);
    assert.deepEqual(r, { asked: true, worker: SCHED_IDLE, main: SCHED_OTHER, same: true });
  });

  it(`${PERSIST_IDLE_ENV}=0 leaves the worker at the default policy`, () => {
    const r = inChild({ [PERSIST_IDLE_ENV]: '0' }, true);
    assert.deepEqual(r, { asked: false, worker: SCHED_OTHER, main: SCHED_OTHER, same: true });
  });
});
