import { strict as assert } from 'node:assert';
import { EventEmitter } from 'node:events';
import { isVnsnapError } from '../../proto/core/errors';
import type { AgentMessage__Output } from '../../proto/gen/vnsnap/v1/AgentMessage';
import type { CoordinatorMessage } from '../../proto/gen/vnsnap/v1/CoordinatorMessage';
import type { Register__Output } from '../../proto/gen/vnsnap/v1/Register';
import { AgentRegistry, type SessionCall } from '../../coordinator/agent-registry';
import { Catalog } from '../../coordinator/catalog';
import { configureVneFor } from '../../coordinator/vne-config';
import type { Vne__Output } from '../../proto/gen/vnsnap/v1/Vne';
import { ManualClock } from '../../proto/core/clock';
import { flush, log } from './coordinator-fakes';

/** The server side of one Session stream, driven by the test. */
class FakeCall extends EventEmitter {
  readonly written: CoordinatorMessage[] = [];
  ended = false;
  status?: { code: number; details: string };
  constructor() {
    super();
    this.on('error', (e: { code: number; details: string }) => {
      this.status = e;
      this.ended = true;
    });
  }
  write(m: CoordinatorMessage): boolean {
    this.written.push(m);
    return true;
  }
  end(): void {
    this.ended = true;
  }
  getPeer(): string {
    return 'test';
  }
  msg(m: Partial<AgentMessage__Output>): void {
    this.emit('data', m);
  }
  commands() {
    return this.written.filter((w) => w.command).map((w) => w.command);
  }
}

function register(id: string): Partial<AgentMessage__Output> {
  const r: Register__Output = { agentId: id, hostname: `host-${id}`, version: '0.1.0', tunnelAddress: '10.0.0.1', tunnelPort: 6081, drivers: ['sim'], running: [], tls: false, migrating: [], dataPathPort: 0 };
  return { msg: 'register', register: r };
}

function setup() {
  const clock = new ManualClock();
  const catalog = new Catalog(':memory:', { now: () => clock.now() });
  const reg = new AgentRegistry({ catalog, log, coordinatorId: 'c1', clock, heartbeatIntervalMs: 1000, deadAfterMs: 3000, nowUs: () => clock.now() * 1000 });
  const joined: string[] = [];
  const left: string[] = [];
  reg.on('joined', (a) => joined.push(a));
  reg.on('left', (a, why) => left.push(`${a}: ${why}`));
  const connect = (id?: string) => {
    const call = new FakeCall();
    reg.attach(call as unknown as SessionCall);
    if (id) call.msg(register(id));
    return call;
  };
  return { clock, catalog, reg, joined, left, connect };
}

describe('coordinator agent registry', () => {
  it('answers Register with Welcome and records the agent', () => {
    const { reg, catalog, joined, connect, clock } = setup();
    const call = connect('h1');
    assert.deepEqual(call.written, [{ welcome: { heartbeatIntervalMs: 1000, deadAfterMs: 3000, coordinatorId: 'c1' } }]);
    assert.equal(reg.isConnected('h1'), true);
    assert.deepEqual(reg.endpoint('h1'), { address: '10.0.0.1', port: 6081 });
    assert.deepEqual(joined, ['h1']);
    assert.equal(catalog.getAgent('h1')?.hostname, 'host-h1');
    assert.equal(catalog.getAgent('h1')?.connectedUnixMs, clock.now());
  });

  it("says whether a (re)registering agent's tunnel endpoint changed since it last registered", () => {
    const { reg, connect } = setup();
    const seen: string[] = [];
    reg.on('joined', (a, _running, changed) => seen.push(`${a}:${changed}`));
    connect('h1').emit('end');
    connect('h1').emit('end');
    const moved = register('h1');
    if (moved.register) moved.register.tunnelPort = 6082;
    connect().msg(moved);
    assert.deepEqual(seen, ['h1:true', 'h1:false', 'h1:true']);
    assert.deepEqual(reg.endpoint('h1'), { address: '10.0.0.1', port: 6082 });
  });

  it("gives an agent's data path port with its endpoint, and a changed one (on, off) counts as a changed endpoint", () => {
    const { reg, connect } = setup();
    const seen: string[] = [];
    reg.on('joined', (a, _running, changed) => seen.push(`${a}:${changed}`));
    const withPort = (p: number) => {
      const r = register('h1');
      if (r.register) r.register.dataPathPort = p;
      return r;
    };
    const s1 = connect();
    s1.msg(withPort(6082));
    assert.deepEqual(reg.endpoint('h1'), { address: '10.0.0.1', port: 6081, dataPathPort: 6082 });
    s1.emit('end');
    assert.deepEqual(reg.endpoint('h1'), { address: '10.0.0.1', port: 6081, dataPathPort: 6082 }); // kept while it is away
    const s2 = connect();
    s2.msg(withPort(6082));
    s2.emit('end');
    connect().msg(withPort(0));
    assert.deepEqual(reg.endpoint('h1'), { address: '10.0.0.1', port: 6081 });
    assert.deepEqual(seen, ['h1:true', 'h1:false', 'h1:true']);
  });

  it("a VNE's peer list carries each peer's data path port as it registered it (none: no field)", () => {
    const { reg, connect } = setup();
    const r = register('h2');
    if (r.register) r.register.dataPathPort = 6082;
    connect().msg(r);
    connect('h3');
    const vne = { name: 'v', vni: 9, generation: 1, epoch: 0, placement: {}, vms: ['h1', 'h2', 'h3'].map((h, i) => ({ name: `vm${i}`, host: h, macs: [] })) } as unknown as Vne__Output;
    assert.deepEqual(configureVneFor(vne, 'h1', reg).peers, [
      { agentId: 'h2', address: '10.0.0.1', port: 6081, dataPathPort: 6082 },
      { agentId: 'h3', address: '10.0.0.1', port: 6081 },
    ]);
  });

  it('refuses a second session for a live agent id, and a session that does not start with Register', () => {
    const { connect } = setup();
    connect('h1');
    const dup = connect('h1');
    assert.deepEqual(dup.written, [{ refused: 'agent id "h1" already has a live session' }]);
    assert.equal(dup.ended, true);
    const odd = connect();
    odd.msg({ msg: 'heartbeat', heartbeat: { seq: 1, unixMs: 0 } });
    assert.deepEqual(odd.written, [{ refused: 'the first message of a session must be Register' }]);
    const silent = connect();
    assert.equal(silent.ended, false);
  });

  it('ends a session that sends no Register within dead_after_ms', () => {
    const { connect, clock } = setup();
    const silent = connect();
    clock.advance(3000);
    assert.deepEqual(silent.status, { code: 4, details: 'no Register within 3000 ms' });
  });

  it('commands: numbered, progress routed, Result resolves; heartbeats keep the agent alive', async () => {
    const { reg, connect, clock } = setup();
    const call = connect('h1');
    const progress: string[] = [];
    const p = reg.send('h1', { snapshotCommit: { snapshotId: 's' } }, { onProgress: (v) => progress.push(`${v.vm}@${v.host}:${v.phase}`) });
    const q = reg.send('h1', { stopVm: { vne: 'v', vm: 'a' } });
    // Every command carries the instant it was written; the commit also in its own field (the agent's PHASE_COMMIT starts there).
    const t = clock.now() * 1000;
    assert.deepEqual(call.commands(), [
      { id: 1, sentUnixUs: t, snapshotCommit: { snapshotId: 's', sentUnixUs: t } },
      { id: 2, sentUnixUs: t, stopVm: { vne: 'v', vm: 'a' } },
    ]);
    for (let i = 0; i < 5; i++) {
      clock.advance(2000);
      call.msg({ msg: 'heartbeat', heartbeat: { seq: i, unixMs: 0 } });
    }
    assert.equal(reg.isConnected('h1'), true);
    call.msg({ msg: 'progress', progress: { commandId: 1, vm: { vm: 'a', host: '', phase: 'PHASE_PAUSE', fraction: 0, bytesDone: 0, bytesTotal: 0, iteration: 0, dirtyRateMibS: 0, pauseMs: 0, phaseDone: false } } });
    call.msg({ msg: 'progress', progress: { commandId: 99, vm: null } });
    call.msg({ msg: 'result', result: { commandId: 2, ok: true, errorCode: '', errorMessage: '', commandReceivedUnixUs: 0, sentUnixUs: 0 } });
    call.msg({ msg: 'result', result: { commandId: 1, ok: false, errorCode: 'ERR_DRIVER', errorMessage: 'x', commandReceivedUnixUs: 0, sentUnixUs: 0 } });
    assert.deepEqual(progress, ['a@h1:PHASE_PAUSE']);
    assert.equal((await q).ok, true);
    assert.deepEqual(await p, { commandId: 1, ok: false, errorCode: 'ERR_DRIVER', errorMessage: 'x', commandReceivedUnixUs: 0, sentUnixUs: 0 });
  });

  it('writes heartbeats to the catalog in one batch per heartbeat interval, a disconnect at once', () => {
    const { catalog, connect, clock } = setup();
    const t0 = clock.now();
    const calls = ['h1', 'h2', 'h3'].map((id) => connect(id));
    const touched: string[] = [];
    const touch = catalog.touchAgent.bind(catalog);
    catalog.touchAgent = (id, at) => {
      touched.push(id);
      touch(id, at);
    };
    clock.advance(400);
    for (const c of calls) c.msg({ msg: 'heartbeat', heartbeat: { seq: 1, unixMs: 0 } });
    clock.advance(400);
    for (const c of calls) c.msg({ msg: 'heartbeat', heartbeat: { seq: 2, unixMs: 0 } });
    assert.deepEqual(touched, [], 'nothing written per heartbeat');
    assert.equal(catalog.getAgent('h1')?.lastSeenUnixMs, t0);
    clock.advance(600);
    assert.deepEqual(touched.sort(), ['h1', 'h2', 'h3'], 'one write per agent after the interval');
    assert.equal(catalog.getAgent('h2')?.lastSeenUnixMs, t0 + 800);
    touched.length = 0;
    clock.advance(5000 - 1400);
    assert.deepEqual(touched.sort(), ['h1', 'h2', 'h3'], 'the dead agents are written at their disconnect, nothing else is pending');
    assert.equal(catalog.getAgent('h3')?.lastSeenUnixMs, t0 + 3800);
  });

  it('no heartbeat for dead_after_ms: DISCONNECTED, commands in flight fail with ERR_AGENT_DISCONNECTED, the id may register again', async () => {
    const { reg, connect, clock, left } = setup();
    const call = connect('h1');
    const p = reg.send('h1', { snapshotPersist: { snapshotId: 's' } });
    clock.advance(2999);
    assert.equal(reg.isConnected('h1'), true);
    clock.advance(1);
    assert.equal(reg.isConnected('h1'), false);
    await assert.rejects(p, (e) => isVnsnapError(e, 'ERR_AGENT_DISCONNECTED') && e.message === 'agent h1 disconnected during SnapshotPersist (no heartbeat for 3000 ms)');
    assert.deepEqual(left, ['h1: no heartbeat for 3000 ms']);
    assert.deepEqual(call.status, { code: 14, details: 'no heartbeat for 3000 ms' });
    await assert.rejects(reg.send('h1', { stopVm: { vne: 'v', vm: 'a' } }), (e) => isVnsnapError(e, 'ERR_AGENT_DISCONNECTED') && e.message === 'agent h1 is not connected (StopVm not sent)');
    connect('h1');
    assert.equal(reg.isConnected('h1'), true);
  });

  it('the stream ending fails commands in flight; per-command timeouts and cancellation', async () => {
    const { reg, connect, clock, left } = setup();
    const call = connect('h1');
    const p = reg.send('h1', { snapshotBegin: { snapshotId: 's' } });
    const t = reg.send('h1', { stopVm: { vne: 'v', vm: 'a' } }, { timeoutMs: 500 });
    const ac = new AbortController();
    const c = reg.send('h1', { stopVm: { vne: 'v', vm: 'b' } }, { signal: ac.signal });
    ac.abort();
    await assert.rejects(c, (e) => isVnsnapError(e, 'ERR_CANCELLED'));
    clock.advance(500);
    await assert.rejects(t, (e) => isVnsnapError(e, 'ERR_TIMEOUT') && e.message === 'agent h1: StopVm got no result within 500 ms');
    call.emit('end');
    await assert.rejects(p, (e) => isVnsnapError(e, 'ERR_AGENT_DISCONNECTED') && e.message === 'agent h1 disconnected during SnapshotBegin (session ended by the agent)');
    assert.deepEqual(left, ['h1: session ended by the agent']);
  });

  it("the agent's clock offset from the session's round trips: the smallest-delay sample; none from an older agent's Results; a new session starts afresh", async () => {
    const { reg, connect, clock } = setup();
    let call = connect('h1');
    const result = (commandId: number, rx: number, tx: number) => call.msg({ msg: 'result', result: { commandId, ok: true, errorCode: '', errorMessage: '', commandReceivedUnixUs: rx, sentUnixUs: tx } });
    assert.equal(reg.clockOffset('h1'), undefined);
    const t1 = clock.now() * 1000;
    const a = reg.send('h1', { stopVm: { vne: 'v', vm: 'a' } });
    clock.advance(10);
    // The agent's clock is 250 ms ahead: received 4 ms after t1, answered 2 ms later; read at t1 + 10 ms (δ 8 ms).
    result(1, t1 + 250_000 + 4000, t1 + 250_000 + 6000);
    await a;
    assert.deepEqual(reg.clockOffset('h1'), { offsetUs: 250_000, delayUs: 8000 });
    const t2 = clock.now() * 1000;
    const b = reg.send('h1', { stopVm: { vne: 'v', vm: 'b' } });
    clock.advance(2);
    // A shorter round trip (δ 1 ms) with an asymmetric path: its estimate wins.
    result(2, t2 + 250_000 + 1500, t2 + 250_000 + 2500);
    await b;
    assert.deepEqual(reg.clockOffset('h1'), { offsetUs: 250_000 + 1000, delayUs: 1000 });
    const c = reg.send('h1', { stopVm: { vne: 'v', vm: 'c' } });
    result(3, 0, 0); // an older agent: no sample
    await c;
    assert.deepEqual(reg.clockOffset('h1'), { offsetUs: 251_000, delayUs: 1000 });
    call.emit('end');
    call = connect('h1');
    assert.equal(reg.clockOffset('h1'), undefined);
  });

  it('delivers pending aborts right after Welcome and forgets the acknowledged ones', async () => {
    const { catalog, connect, clock } = setup();
    catalog.addPendingAborts([
      { snapshotId: 's1', agentId: 'h1', vne: 'blue', epoch: 3, storePrefix: 'snapshots/s1/' },
      { snapshotId: 's2', agentId: 'h1', vne: 'red', epoch: 9, storePrefix: 'snapshots/s2/' },
      { snapshotId: 's1', agentId: 'h2', vne: 'blue', epoch: 3, storePrefix: 'snapshots/s1/' },
    ]);
    const call = connect('h1');
    assert.ok(call.written[0]?.welcome);
    assert.deepEqual(call.commands(), [
      { id: 1, sentUnixUs: clock.now() * 1000, snapshotAbort: { snapshotId: 's1', vne: 'blue', epoch: 3, storePrefix: 'snapshots/s1/' } },
      { id: 2, sentUnixUs: clock.now() * 1000, snapshotAbort: { snapshotId: 's2', vne: 'red', epoch: 9, storePrefix: 'snapshots/s2/' } },
    ]);
    call.msg({ msg: 'result', result: { commandId: 1, ok: true, errorCode: '', errorMessage: '', commandReceivedUnixUs: 0, sentUnixUs: 0 } });
    call.msg({ msg: 'result', result: { commandId: 2, ok: false, errorCode: 'ERR_INTERNAL', errorMessage: 'busy', commandReceivedUnixUs: 0, sentUnixUs: 0 } });
    await flush();
    assert.deepEqual(catalog.pendingAborts().map((p) => `${p.agentId}:${p.snapshotId}`), ['h1:s2', 'h2:s1']);
  });
});
