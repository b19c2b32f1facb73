import { strict as assert } from 'node:assert';
import { AgentMetrics } from '../../agent/metrics';
import { CoordinatorSession, type SessionHandlers, type SessionLink } from '../../agent/session';
import { ManualClock } from '../../proto/core/clock';
import { silentLogger } from '../../proto/core/log';
import type { Command__Output } from '../../proto/gen/vnsnap/v1/Command';
import { FakeSessionTransport } from '../support/fake-session';

const T0 = 1_800_000_000_000;

function harness(reconnect?: { initialMs?: number; maxMs?: number }) {
  const clock = new ManualClock(T0);
  const transport = new FakeSessionTransport();
  const metrics = new AgentMetrics();
  const seen: string[] = [];
  const commands: { link: SessionLink; cmd: Command__Output }[] = [];
  const handlers: SessionHandlers = {
    register: () => ({ agentId: 'h1', version: 'test', tunnelPort: 6081, running: [] }),
    command: (link, cmd) => void commands.push({ link, cmd }),
    up: (w) => void seen.push(`up ${w.heartbeatIntervalMs}`),
    down: (wasUp, err) => void seen.push(`down ${wasUp}${err ? ` ${err.message}` : ''}`),
    refused: (reason) => void seen.push(`refused ${reason}`),
  };
  const session = new CoordinatorSession({ coordinator: 'coord:1', transport: transport.factory, clock, log: silentLogger(), metrics, ...(reconnect ? { reconnect } : {}), handlers });
  return { clock, transport, metrics, seen, commands, session };
}

/** Times (ms after T0) at which the transport opened its streams, while the clock runs to `untilMs`. */
function dialTimes(h: ReturnType<typeof harness>, untilMs: number, endEach: (i: number) => void): number[] {
  const times: number[] = [];
  let seenStreams = 0;
  for (let t = 0; t <= untilMs; t++) {
    while (h.transport.streams.length > seenStreams) {
      times.push(h.clock.now() - T0);
      endEach(seenStreams);
      seenStreams++;
    }
    h.clock.advance(1);
  }
  return times;
}

describe('agent session (fake transport, manual clock)', () => {
  it('dials once on start with a Register; no heartbeat before the Welcome', () => {
    const h = harness();
    h.session.start();
    assert.equal(h.transport.streams.length, 1);
    assert.deepEqual(h.transport.builds, [{ coordinator: 'coord:1', reconnect: { initialMs: 500, maxMs: 5000 } }]);
    assert.deepEqual(
      h.transport.last.written.map((m) => Object.keys(m)),
      [['register']],
    );
    h.clock.advance(10_000);
    assert.deepEqual(h.transport.last.heartbeats, []);
    assert.equal(h.session.connected, false);
  });

  it('heartbeats at the Welcome interval, numbered from 1, stamped with the clock; dead_after from the Welcome', () => {
    const h = harness();
    h.session.start();
    h.clock.advance(40);
    h.transport.last.welcome(100, 750);
    assert.equal(h.session.connected, true);
    assert.equal(h.session.deadAfterMs, 750);
    assert.deepEqual(h.seen, ['up 100']);
    const beats = () => h.transport.last.heartbeats;
    h.clock.advance(99);
    assert.deepEqual(beats(), []);
    h.clock.advance(1);
    assert.deepEqual(beats(), [{ seq: 1, unixMs: T0 + 140 }]);
    h.clock.advance(450);
    assert.deepEqual(
      beats().map((b) => [b.seq, b.unixMs - T0]),
      [
        [1, 140],
        [2, 240],
        [3, 340],
        [4, 440],
        [5, 540],
      ],
    );
  });

  it('a Welcome without values means a heartbeat every 1000 ms and dead after 3000 ms', () => {
    const h = harness();
    h.session.start();
    h.transport.last.welcome(0, 0);
    h.clock.advance(2999);
    assert.deepEqual(
      h.transport.last.heartbeats.map((b) => b.seq),
      [1, 2],
    );
    assert.equal(h.session.deadAfterMs, 3000);
  });

  it('retries a failing dial with backoff 500 ms doubling to 5000 ms', async () => {
    const h = harness();
    h.session.start();
    const times = dialTimes(h, 25_000, (i) => h.transport.streams[i]?.end(new Error('connection refused')));
    assert.deepEqual(times, [0, 500, 1500, 3500, 7500, 12500, 17500, 22500]);
    assert.equal((await h.metrics.reconnects.get()).values[0]?.value, 7, 'reconnects counted after the first attempt');
    assert.deepEqual(h.seen.slice(0, 2), ['down false connection refused', 'down false connection refused']);
  });

  it('the backoff starts over after a Welcome; a lost welcomed session is reported once, heartbeats stop', () => {
    const h = harness({ initialMs: 100, maxMs: 400 });
    h.session.start();
    const failing = dialTimes(h, 1000, (i) => {
      if (i < 3) h.transport.streams[i]?.end();
    });
    assert.deepEqual(failing, [0, 100, 300, 700]);
    const s = h.transport.last;
    s.welcome(50);
    h.clock.advance(120);
    assert.equal(s.heartbeats.length, 2);
    s.end(new Error('reset'));
    s.end(); // the transport may report the end twice
    assert.equal(h.session.connected, false);
    assert.deepEqual(h.seen.slice(-2), ['up 50', 'down true reset']);
    h.clock.advance(99);
    assert.equal(h.transport.streams.length, 4);
    h.clock.advance(1);
    assert.equal(h.transport.streams.length, 5, 'reconnected after initialMs again');
    assert.equal(s.heartbeats.length, 2, 'no heartbeat on the lost stream');
  });

  it('a refusal is reported, ends the stream and is retried after the backoff', () => {
    const h = harness();
    h.session.start();
    const first = h.transport.last;
    first.refuse('agent id h1 already has a live session');
    assert.deepEqual(h.seen, ['refused agent id h1 already has a live session', 'down false refused: agent id h1 already has a live session']);
    assert.equal(first.closed, true);
    h.clock.advance(499);
    assert.equal(h.transport.streams.length, 1);
    h.clock.advance(1);
    assert.equal(h.transport.streams.length, 2);
  });

  it('a command is answered on the link it came in on; once that stream is gone the link sends nothing', () => {
    const h = harness();
    h.session.start();
    const first = h.transport.last;
    first.welcome(1000);
    first.command({ id: 7, sentUnixUs: 0, body: 'stopVm', stopVm: { vne: 'v', vm: 'a', discardDisk: false } });
    const c = h.commands[0];
    assert.ok(c);
    assert.equal(c.cmd.id, 7);
    assert.equal(c.link.send({ result: { commandId: 7, ok: true } }), true);
    assert.deepEqual(first.results, [{ commandId: 7, ok: true }]);
    first.end();
    h.clock.advance(500);
    h.transport.last.welcome(1000);
    assert.equal(c.link.send({ result: { commandId: 7, ok: true } }), false);
    assert.equal(first.results.length, 1);
    assert.deepEqual(h.transport.last.results, []);
  });

  it('stop closes the stream and the transport: no down, no reconnect, no heartbeat', () => {
    const h = harness();
    h.session.start();
    const s = h.transport.last;
    s.welcome(100);
    h.session.stop();
    s.end();
    assert.equal(s.closed, true);
    assert.equal(h.transport.closed, true);
    assert.equal(h.session.connected, false);
    h.clock.advance(60_000);
    assert.equal(h.transport.streams.length, 1);
    assert.deepEqual(s.heartbeats, []);
    assert.deepEqual(h.seen, ['up 100']);
    assert.equal(h.clock.pending, 0);
  });
});
