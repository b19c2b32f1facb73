/**
 * The agent's in-kernel data path at start (agent/agent.ts): one log line says whether it runs
 * and why not; not required, a data path that cannot run is a fallback (the agent starts, new VMs
 * get tap-vnet), required it fails the start; the decision reaches `dataPathDecided` before the
 * agent runs VMs, and only a running data path is registered (dataPathPort). The data path
 * "cannot run" here because its prefix is refused by the loader before anything is touched, so
 * the test changes nothing on the host.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { Agent, type AgentOptions } from '../../agent/agent';
import { ManualClock } from '../../proto/core/clock';
import { isVnsnapError } from '../../proto/core/errors';
import { T0 } from '../support/agent-parts';
import { FakeSessionTransport } from '../support/fake-session';

const BAD = 'Bad/Prefix';
const REASON = `in-kernel data path prefix "${BAD}": 1-40 lowercase letters, digits and dashes [ERR_INVALID_ARGUMENT]`;

describe('agent: the in-kernel data path at start', () => {
  async function start(dataPath: AgentOptions['dataPath']): Promise<{ decided: boolean[]; port: number | undefined; lines: string[] }> {
    const lines: { level: number; msg: string }[] = [];
    const decided: boolean[] = [];
    const store = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsdps-'));
    const agent = new Agent({
      id: 'h1',
      coordinator: 'c:1',
      tunnel: { address: '127.0.0.1', port: 0, offload: false },
      storeConfig: { kind: 'local', dir: store },
      drivers: [],
      hostname: 'h',
      logger: pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as { level: number; msg: string }) }),
      session: new FakeSessionTransport().factory,
      clock: new ManualClock(T0),
      ...(dataPath ? { dataPath } : {}),
      dataPathDecided: (on) => decided.push(on),
    });
    try {
      await agent.start();
      const port = agent.dataPathPort;
      await agent.stop();
      return { decided, port, lines: lines.filter((l) => l.msg.includes('data path')).map((l) => `${l.level === 40 ? 'warn' : 'info'}: ${l.msg}`) };
    } finally {
      fs.rmSync(store, { recursive: true, force: true });
    }
  }

  it('off (dataPath false, or no QEMU driver): one info line with the reason; new VMs get tap-vnet', async () => {
    assert.deepEqual(await start({ off: 'dataPath: false' }), {
      decided: [false],
      port: undefined,
      lines: ['info: in-kernel data path off (dataPath: false): new VMs whose spec names no nic get tap-vnet'],
    });
  });

  it('not required and it cannot run: the agent starts without it, one warning with the loader\'s reason', async () => {
    assert.deepEqual(await start({ prefix: BAD, vxlanPort: 6082 }), {
      decided: [false],
      port: undefined,
      lines: [`warn: in-kernel data path off, it cannot run here (${REASON}): new VMs whose spec names no nic get tap-vnet`],
    });
  });

  it('required and it cannot run: the start fails with the loader\'s error, nothing decided', async () => {
    await assert.rejects(start({ prefix: BAD, vxlanPort: 6082, required: true }), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'));
  });
});
