import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { contAfterSave, DeviceStateSink, saveDeviceState } from '../../agent/drivers/qemu/device-state';
import type { QmpClient } from '../../agent/drivers/qemu/qmp';
import { isVnsnapError } from '../../proto/core/errors';
import { fakeMonitorPerTest, type FakeMonitor } from '../support/fake-qmp-monitor';
import { until } from '../support/wait';

describe("a tracked VM's device state (device-state.ts; real unix sockets, fake monitor)", () => {
  const ctx = fakeMonitorPerTest('vnsnap-devstate-');
  let mon: FakeMonitor;
  let q: QmpClient;
  let dir = '';
  let sink: DeviceStateSink;
  beforeEach(async () => {
    ({ mon, q } = ctx);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-devsink-'));
    sink = await DeviceStateSink.listen(path.join(dir, 'dev.sock'));
  });
  afterEach(() => {
    sink.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const commands = (n: number): Promise<true> => until(`${n} commands at the monitor`, () => mon.lines.length === n || undefined, { timeoutMs: 5000, everyMs: 2 });
  /** QEMU's side of the stream: connect to the sink, send `bytes`, end. */
  const stream = (bytes: Buffer): Promise<void> =>
    new Promise((resolve, reject) => {
      const c = net.connect(sink.path, () => c.end(bytes, () => resolve()));
      c.on('error', reject);
    });

  it('saveDeviceState writes `migrate` at the call, behind commands written before it, and resolves with the bytes once MIGRATION completed and the stream ended', async () => {
    const stop = q.execute('stop');
    const saved = saveDeviceState(q, 'a', sink);
    let done = false;
    void saved.then(() => (done = true));
    await commands(2);
    assert.deepEqual(
      mon.lines.map((l) => [l.execute, l.arguments]),
      [
        ['stop', undefined],
        ['migrate', { uri: sink.uri }],
      ],
      'no reply was sent',
    );
    mon.reply(mon.idOf('stop'));
    await stop;
    mon.reply(mon.idOf('migrate'));
    await stream(Buffer.from('devices'));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(done, false, 'the stream ended, MIGRATION not yet');
    mon.event('MIGRATION', Date.now() * 1000, { status: 'active' });
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(done, false, 'active is no end');
    mon.event('MIGRATION', Date.now() * 1000, { status: 'completed' });
    assert.deepEqual(await saved, Buffer.from('devices'));
    assert.deepEqual(mon.commands(), ['stop', 'migrate'], 'no status query');
  });

  it('a failed save is ERR_DRIVER with QEMU’s reason', async () => {
    const saved = saveDeviceState(q, 'a', sink);
    saved.catch(() => undefined);
    await commands(1);
    mon.reply(mon.idOf('migrate'));
    mon.event('MIGRATION', Date.now() * 1000, { status: 'failed' });
    await commands(2);
    assert.equal(mon.lines[1]?.execute, 'query-migrate');
    mon.replyWith(mon.idOf('query-migrate'), { status: 'failed', 'error-desc': 'socket closed' });
    await assert.rejects(saved, (e: unknown) => isVnsnapError(e, 'ERR_DRIVER') && /a: migration failed: socket closed$/.test((e as Error).message));
  });

  it('contAfterSave sends `cont` again while QEMU says the save is not finalized; once taken it is done; another refusal is thrown', async () => {
    const cont = contAfterSave(q, 'a');
    await commands(1);
    mon.error(mon.lines[0]?.id ?? '', 'Migration is not finalized yet');
    await commands(2);
    mon.error(mon.lines[1]?.id ?? '', 'Migration is not finalized yet');
    await commands(3);
    mon.reply(mon.lines[2]?.id ?? '');
    await cont;
    assert.deepEqual(mon.commands(), ['cont', 'cont', 'cont']);
    const refused = contAfterSave(q, 'a');
    await commands(4);
    mon.error(mon.lines[3]?.id ?? '', 'Resetting the Virtual Machine is required');
    await assert.rejects(refused, /Resetting the Virtual Machine is required/);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(mon.lines.length, 4, 'not sent again');
  });
});
