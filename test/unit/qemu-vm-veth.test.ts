/**
 * The names of a tap-vnet VM's veth pair (agent/drivers/qemu/vm-veth.ts) and their cleaning with
 * the TAPs (leftovers.ts): a dead instance's TAP and the switch's end of its pair are deleted
 * (the peer goes with it), an adopted VM's pair stays. The pair itself is made for real by the
 * port compliance suite (test/integration/port-compliance.test.ts).
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cleanQemuLeftovers, tapTag } from '../../agent/drivers/qemu/leftovers';
import { vethNames } from '../../agent/drivers/qemu/vm-veth';
import { isVnsnapError } from '../../proto/core/errors';
import { silentLogger } from '../../proto/core/log';

describe('veth pair of a tap-vnet VM (QEMU driver)', () => {
  it('is named after the TAP: n<i> becomes v<i> (the switch writes) and g<i> (GRO), as short as the TAP', () => {
    assert.deepEqual(vethNames('vnqm0123abcdn0'), { sw: 'vnqm0123abcdv0', gro: 'vnqm0123abcdg0' });
    assert.deepEqual(vethNames('vnqm0123abcdn12'), { sw: 'vnqm0123abcdv12', gro: 'vnqm0123abcdg12' });
    assert.throws(() => vethNames('eth0'), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT') && e.message === 'TAP eth0: not a VM TAP name (<stem>n<index>)');
  });

  it('a dead instance loses its TAP and its pair; an adopted VM keeps both', async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-veth-'));
    try {
      const p = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
      const dead = await new Promise<number>((r) => p.once('exit', () => r(p.pid as number)));
      const gone = path.join(root, `vnqm-blue_a-${dead}-1`);
      const adopted = path.join(root, `vnqm-blue_b-${dead}-2`);
      for (const d of [gone, adopted, path.join(root, 'no-proc')]) fs.mkdirSync(d);
      const t = tapTag(gone);
      const a = tapTag(adopted);
      const deleted: string[] = [];
      const report = await cleanQemuLeftovers({
        workDir: root,
        prefix: 'vnqm',
        adoptedDirs: [adopted],
        otherDirs: [],
        deadDirs: [],
        log: silentLogger(),
        listLinks: () => Promise.resolve([`vnqm${t}n0`, `vnqm${t}v0`, `vnqm${t}g0`, `vnqm${a}n0`, `vnqm${a}v0`, `vnqm${a}g0`]),
        deleteLink: (n) => Promise.resolve(void deleted.push(n)),
        procRoot: path.join(root, 'no-proc'),
      });
      assert.deepEqual(deleted, [`vnqm${t}n0`, `vnqm${t}v0`]);
      assert.deepEqual(report, [`deleted TAP vnqm${t}n0 of a dead instance (${gone})`, `deleted veth pair vnqm${t}v0 of a dead instance (${gone})`, `removed instance directory ${gone} (no VM of this agent)`]);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});
