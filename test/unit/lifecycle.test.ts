import { strict as assert } from 'node:assert';
import { startAll, stopAll, type Startable } from '../../proto/core/lifecycle';

function part(name: string, log: string[], fail: { start?: boolean; stop?: boolean } = {}): Startable {
  return {
    async start() {
      log.push(`start ${name}`);
      if (fail.start) throw new Error(`${name} cannot start`);
    },
    stop() {
      log.push(`stop ${name}`);
      if (fail.stop) throw new Error(`${name} cannot stop`);
    },
  };
}

describe('lifecycle: startAll / stopAll', () => {
  it('starts in order and stops in reverse', async () => {
    const log: string[] = [];
    const parts = [part('a', log), part('b', log), part('c', log)];
    await startAll(parts);
    await stopAll(parts);
    assert.deepEqual(log, ['start a', 'start b', 'start c', 'stop c', 'stop b', 'stop a']);
  });

  it('a failed start stops what had started, in reverse, and rethrows', async () => {
    const log: string[] = [];
    await assert.rejects(startAll([part('a', log), part('b', log), part('c', log, { start: true }), part('d', log)]), /^Error: c cannot start$/);
    assert.deepEqual(log, ['start a', 'start b', 'start c', 'stop b', 'stop a']);
  });

  it('stopAll asks every part to stop even when one throws, and rethrows the first failure', async () => {
    const log: string[] = [];
    await assert.rejects(stopAll([part('a', log, { stop: true }), part('b', log), part('c', log, { stop: true })]), /^Error: c cannot stop$/);
    assert.deepEqual(log, ['stop c', 'stop b', 'stop a']);
  });
});
