/**
 * UDP GSO/GRO on the agent's tunnel: the `tunnelOffload` config key (and its flags), the start-up
 * probe against this kernel (real sockets on 127.0.0.1), and the agent turning offloads on by
 * default and off with one warning line where the probe says the kernel lacks them.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { Agent } from '../../agent/agent';
import { loadAgentConfig, validateAgentConfig } from '../../agent/config';
import { ManualClock } from '../../proto/core/clock';
import { isVnsnapError } from '../../proto/core/errors';
import { nativeIo, type NativeIo } from '../../switch/native-io';
import { probeUdpOffload } from '../../switch/tunnel/offload-probe';
import { T0 } from '../support/agent-parts';
import { FakeSessionTransport } from '../support/fake-session';

const base = { id: 'h1', coordinator: '127.0.0.1:7443', tunnel: '127.0.0.1:6081', store: '/var/lib/vnsnap/store' };

describe('agent config: tunnelOffload', () => {
  it('is absent unless set (the agent then probes), true or false when set; a flag overrides the file', () => {
    assert.equal(validateAgentConfig({ ...base }).tunnelOffload, undefined);
    assert.equal(validateAgentConfig({ ...base, tunnelOffload: true }).tunnelOffload, true);
    assert.equal(validateAgentConfig({ ...base, tunnelOffload: false }).tunnelOffload, false);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsfcfg-'));
    try {
      const f = path.join(dir, 'agent.json');
      fs.writeFileSync(f, JSON.stringify({ ...base, tunnelOffload: true, insecurePlaintext: true }));
      assert.equal(loadAgentConfig(f, { tunnelOffload: false }).tunnelOffload, false);
      assert.equal(loadAgentConfig(f, { tunnelOffload: undefined }).tunnelOffload, true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses anything but a boolean, naming the field', () => {
    assert.throws(
      () => validateAgentConfig({ ...base, tunnelOffload: 'on' }),
      (e) => isVnsnapError(e, 'ERR_CONFIG') && e.message === 'tunnelOffload: expected true or false, got "on"',
    );
  });
});

/** The real addon, with udpOpen changed by `tweak` (to make this kernel look like one without offloads). */
function tweaked(tweak: (io: NativeIo, s: { fd: number; port: number; gro?: boolean }) => { fd: number; port: number; gro?: boolean }): NativeIo {
  const io = nativeIo();
  return { ...io, udpOpen: (ip: string, port: number, o?: { gro?: boolean }) => tweak(io, io.udpOpen(ip, port, o)) };
}

describe('tunnel offload probe', () => {
  it('finds UDP_GRO and UDP_SEGMENT on this kernel', () => {
    assert.deepEqual(probeUdpOffload(), { ok: true });
  });

  it('says which one is missing when the kernel refuses it', () => {
    // SO_NO_CHECK makes the kernel refuse UDP_SEGMENT on that socket.
    const noGso = tweaked((io, s) => (io.udpSetNoCheck?.(s.fd, true), s));
    assert.deepEqual(probeUdpOffload(noGso), { ok: false, why: 'the kernel refused UDP_SEGMENT' });
    const noGro = tweaked((_io, s) => ({ ...s, gro: false }));
    assert.deepEqual(probeUdpOffload(noGro), { ok: false, why: 'the kernel refused UDP_GRO' });
  });
});

describe('agent: tunnel offloads', () => {
  async function startAgent(offload: boolean | undefined, probe?: () => { ok: true } | { ok: false; why: string }): Promise<{ on: boolean; warnings: string[] }> {
    const lines: { level: number; msg: string }[] = [];
    const store = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsfag-'));
    const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as { level: number; msg: string }) });
    const agent = new Agent({
      id: 'h1',
      coordinator: 'c:1',
      tunnel: { address: '127.0.0.1', port: 0, ...(offload !== undefined ? { offload } : {}) },
      storeConfig: { kind: 'local', dir: store },
      drivers: [],
      hostname: 'h',
      logger,
      session: new FakeSessionTransport().factory,
      clock: new ManualClock(T0),
      ...(probe ? { probeUdpOffload: probe } : {}),
    });
    try {
      await agent.start();
      const on = agent.tunnelOffloaded;
      await agent.stop();
      return { on, warnings: lines.filter((l) => l.level === 40).map((l) => l.msg) };
    } finally {
      fs.rmSync(store, { recursive: true, force: true });
    }
  }

  it('are on by default on this kernel, off when configured off (without probing)', async () => {
    assert.deepEqual(await startAgent(undefined), { on: true, warnings: [] });
    assert.deepEqual(await startAgent(true), { on: true, warnings: [] });
    assert.deepEqual(await startAgent(false, () => assert.fail('probed although configured off')), { on: false, warnings: [] });
  });

  it('fall back to off with one warning line when the kernel lacks them', async () => {
    const r = await startAgent(undefined, () => ({ ok: false, why: 'the kernel refused UDP_SEGMENT' }));
    assert.deepEqual(r, { on: false, warnings: ['tunnel offloads off: the kernel refused UDP_SEGMENT; the tunnel sends and receives one datagram at a time'] });
  });
});
