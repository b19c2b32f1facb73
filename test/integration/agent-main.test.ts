import { strict as assert } from 'node:assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { AGENT_NODE_FLAGS } from '../../agent/node-flags';

const MAIN = path.resolve(__dirname, '../../agent/main.js');
/** The same main with the simulated driver added (test/sim/agent-main.ts). */
const SIM_MAIN = path.resolve(__dirname, '../sim/agent-main.js');

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

describe('vnsnap-agent (main)', function () {
  this.timeout(30_000);
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-main-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a bad configuration is one line on stderr and exit status 2', () => {
    const cfg = path.join(dir, 'bad.json');
    fs.writeFileSync(cfg, JSON.stringify({ id: 'h1', coordinator: '127.0.0.1:1', tunnel: '127.0.0.1:0', store: dir, colour: 'blue' }));
    const r = spawnSync(process.execPath, [MAIN, '--config', cfg], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.equal(r.stderr, 'vnsnap-agent: unknown key "colour" (known: id, coordinator, tunnel, advertise, tunnelOffload, store, metricsPort, metricsAddress, debugVms, logLevel, drivers, imageRoots, tls, insecurePlaintext, stateDir, dataPath) [ERR_CONFIG]\n');
    const r2 = spawnSync(process.execPath, [MAIN, '--id', 'h1', '--coordinator', 'nowhere', '--tunnel', '127.0.0.1:0', '--store', dir], { encoding: 'utf8' });
    assert.equal(r2.status, 2);
    assert.equal(r2.stderr, 'vnsnap-agent: coordinator: expected "host:port", got "nowhere" [ERR_CONFIG]\n');
    const r3 = spawnSync(process.execPath, [MAIN, '--config', path.join(dir, 'missing.json')], { encoding: 'utf8' });
    assert.equal(r3.status, 2);
    assert.match(r3.stderr, /^vnsnap-agent: cannot read .*missing\.json: ENOENT.*\[ERR_CONFIG\]\n$/);
  });

  it('--metrics-address takes an IP address only, refused in one line otherwise', () => {
    const r = spawnSync(process.execPath, [MAIN, '--id', 'h1', '--coordinator', '127.0.0.1:1', '--tunnel', '127.0.0.1:0', '--store', dir, '--metrics-port', '0', '--metrics-address', 'everywhere'], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.equal(r.stderr, 'vnsnap-agent: metricsAddress: expected an IPv4 or IPv6 address, got "everywhere" [ERR_CONFIG]\n');
  });

  /** Start the sim agent with these arguments and resolve with its ready line. */
  async function startAgent(args: string[], nodeFlags: readonly string[] = []): Promise<{ p: ChildProcess; ready: { event: string; id: string; tunnelPort: number; tunnelOffload: boolean; metricsPort: number; drivers: string[] } }> {
    const p = spawn(process.execPath, [...nodeFlags, SIM_MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines = readline.createInterface({ input: p.stdout });
    const first = await new Promise<string>((resolve) => lines.once('line', resolve));
    return { p, ready: JSON.parse(first) as { event: string; id: string; tunnelPort: number; tunnelOffload: boolean; metricsPort: number; drivers: string[] } };
  }

  function stopAgent(p: ChildProcess): Promise<number | null> {
    return new Promise<number | null>((resolve) => {
      p.once('exit', (c) => resolve(c));
      p.kill('SIGTERM');
    });
  }

  it('does not serve /debug/vms unless enabled (404, like any unknown path); /metrics is unchanged', async () => {
    const cfg = path.join(dir, 'nodebug.json');
    fs.writeFileSync(cfg, JSON.stringify({ id: 'h8', coordinator: '127.0.0.1:1', tunnel: '127.0.0.1:0', store: path.join(dir, 'store'), drivers: ['sim'], logLevel: 'warn', metricsPort: 0, insecurePlaintext: true }));
    const { p, ready } = await startAgent(['--config', cfg]);
    try {
      const d = await get(`http://127.0.0.1:${ready.metricsPort}/debug/vms`);
      assert.deepEqual(d, { status: 404, body: 'not found\n' });
      const m = await get(`http://127.0.0.1:${ready.metricsPort}/metrics`);
      assert.equal(m.status, 200);
      assert.match(m.body, /vnsnap_agent_session_connected\{agent="h8"\} 0/);
    } finally {
      assert.equal(await stopAgent(p), 0);
    }
  });

  it('prints one ready line, serves /metrics and (with --debug-vms) /debug/vms, and stops cleanly on SIGTERM (flags override the file)', async () => {
    const cfg = path.join(dir, 'ok.json');
    fs.writeFileSync(cfg, JSON.stringify({ id: 'file-id', coordinator: '127.0.0.1:1', tunnel: '127.0.0.1:0', store: path.join(dir, 'store'), drivers: ['sim'], logLevel: 'warn', insecurePlaintext: true }));
    const { p, ready } = await startAgent(['--config', cfg, '--id', 'h9', '--metrics-port', '0', '--debug-vms']);
    assert.equal(ready.event, 'ready');
    assert.equal(ready.id, 'h9');
    assert.ok(ready.tunnelPort > 0);
    assert.deepEqual(ready.drivers, ['sim']);
    const m = await get(`http://127.0.0.1:${ready.metricsPort}/metrics`);
    assert.equal(m.status, 200);
    assert.match(m.body, /vnsnap_agent_session_connected\{agent="h9"\} 0/);
    assert.match(m.body, /vnsnap_switch_counter\{name="tunnelRx",agent="h9"\} 0/);
    assert.equal((await get(`http://127.0.0.1:${ready.metricsPort}/other`)).status, 404);
    const d = await get(`http://127.0.0.1:${ready.metricsPort}/debug/vms`);
    assert.equal(d.status, 200);
    assert.deepEqual(JSON.parse(d.body), { agent: 'h9', vms: [] });
    assert.equal(await stopAgent(p), 0);
  });

  it("warns, naming them, when started without the agent's Node flags (node-flags.ts), and not when started with them", async () => {
    const cfg = path.join(dir, 'flags.json');
    fs.writeFileSync(cfg, JSON.stringify({ id: 'h6', coordinator: '127.0.0.1:1', tunnel: '127.0.0.1:0', store: path.join(dir, 'store'), drivers: ['sim'], logLevel: 'warn', insecurePlaintext: true }));
    const warnings = async (flags: readonly string[]): Promise<unknown[]> => {
      const { p } = await startAgent(['--config', cfg], flags);
      let err = '';
      p.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
      assert.equal(await stopAgent(p), 0);
      return err.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { level: number; msg: string; missing?: string[] }).filter((l) => l.msg.startsWith('started without the Node flags')).map((l) => [l.level, l.missing]);
    };
    assert.deepEqual(await warnings([]), [[40, ['--single-threaded-gc']]]); // pino's warn
    assert.deepEqual(await warnings(AGENT_NODE_FLAGS), []);
  });

  it('runs the tunnel with UDP GSO/GRO by default on this kernel; --no-tunnel-offload and "tunnelOffload": false turn them off', async () => {
    const cfg = path.join(dir, 'offload.json');
    const base = { id: 'h7', coordinator: '127.0.0.1:1', tunnel: '127.0.0.1:0', store: path.join(dir, 'store'), drivers: ['sim'], logLevel: 'warn', insecurePlaintext: true };
    const run = async (file: Record<string, unknown>, args: string[]): Promise<boolean> => {
      fs.writeFileSync(cfg, JSON.stringify({ ...base, ...file }));
      const { p, ready } = await startAgent(['--config', cfg, ...args]);
      assert.equal(await stopAgent(p), 0);
      return ready.tunnelOffload;
    };
    assert.deepEqual([await run({}, []), await run({}, ['--no-tunnel-offload']), await run({ tunnelOffload: false }, []), await run({ tunnelOffload: false }, ['--tunnel-offload'])], [true, false, false, true]);
  });
});
