/**
 * The control plane's TLS rules in the real programs: vnsnap-coordinator and vnsnap-agent refuse
 * to start without TLS off loopback (one line each), an agent process presenting another agent's
 * certificate is refused and says so in its log, and SIGHUP swaps the PEM files (new connections
 * get the new certificate; the live agent session and an event stream go on; a bad file keeps
 * the old ones and logs an error), for the coordinator and the agent.
 */
import { strict as assert } from 'node:assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { loadVnsnap } from '../../proto/core/grpc';
import type { Event__Output } from '../../proto/gen/vnsnap/v1/Event';
import type { ListAgentsResponse__Output } from '../../proto/gen/vnsnap/v1/ListAgentsResponse';
import { waitForJsonLine } from '../support/netns';
import { sslCredentials, testPki, type TlsFiles } from '../support/pki';
import { until } from '../support/wait';

const DIST = path.resolve(__dirname, '../..');
const COORDINATOR = path.join(DIST, 'coordinator/main.js');
const AGENT = path.join(DIST, 'agent/main.js');
const SIM_AGENT = path.join(DIST, 'test/sim/agent-main.js');
const pkg = loadVnsnap();

/** Resolves when a process writes a line matching `re` on stderr (lines seen before count too). */
class StderrLines {
  private text = '';
  private readonly waiters: { re: RegExp; resolve: (line: string) => void }[] = [];

  constructor(child: ChildProcess) {
    child.stderr?.on('data', (d: Buffer) => {
      this.text += d.toString();
      for (const w of [...this.waiters]) this.check(w);
    });
  }

  private check(w: { re: RegExp; resolve: (line: string) => void }): void {
    const line = this.text.split('\n').find((l) => w.re.test(l));
    if (line === undefined) return;
    this.waiters.splice(this.waiters.indexOf(w), 1);
    w.resolve(line);
  }

  /** The first line matching `re` (since the last reset). */
  wait(re: RegExp, timeoutMs = 15_000): Promise<string> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no stderr line matching ${re}; got:\n${this.text.slice(-3000)}`)), timeoutMs);
      const w = {
        re,
        resolve: (l: string) => {
          clearTimeout(t);
          resolve(l);
        },
      };
      this.waiters.push(w);
      this.check(w);
    });
  }

  /** Forget what was seen (so the next wait needs a new line). */
  reset(): void {
    this.text = '';
  }
}

/** The serial number of the certificate a TLS server presents to a new connection. */
function servedSerial(port: number, client: TlsFiles): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca: fs.readFileSync(client.ca), cert: fs.readFileSync(client.cert), key: fs.readFileSync(client.key), ALPNProtocols: ['h2'], servername: 'localhost' }, () => {
      const serial = s.getPeerCertificate().serialNumber;
      s.end();
      resolve(serial);
    });
    s.on('error', reject);
  });
}

const serialOf = (file: string): string => new X509Certificate(fs.readFileSync(file)).serialNumber;

describe('security: TLS in the coordinator and agent programs', function () {
  this.timeout(90_000);
  const pki = testPki();
  let dir: string;
  const children: ChildProcess[] = [];

  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-sec-proc-'))));
  after(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function start(file: string, args: string[]): ChildProcess {
    const c = spawn(process.execPath, [file, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(c);
    return c;
  }

  it('without TLS, off loopback, neither program starts: one line saying what to do', () => {
    const coord = (args: string[]) => spawnSync(process.execPath, [COORDINATOR, '--db', ':memory:', '--store-dir', dir, ...args], { encoding: 'utf8' });
    let r = coord(['--listen', '0.0.0.0:0']);
    assert.equal(r.status, 1);
    assert.equal(r.stderr, 'vnsnap-coordinator: no TLS configured: give "tls": {"ca", "cert", "key"} (--tls-ca, --tls-cert, --tls-key), or "insecurePlaintext": true (--insecure-plaintext) for a loopback listen address only [ERR_CONFIG]\n');
    r = coord(['--listen', '0.0.0.0:0', '--insecure-plaintext']);
    assert.equal(r.status, 1);
    assert.equal(r.stderr, 'vnsnap-coordinator: plaintext is allowed only on loopback, and the listen address 0.0.0.0:0 is not: configure "tls" (--tls-ca, --tls-cert, --tls-key) [ERR_CONFIG]\n');
    r = coord(['--listen', '127.0.0.1:0', '--tls-ca', pki.ca]);
    assert.equal(r.status, 1);
    assert.equal(r.stderr, 'vnsnap-coordinator: TLS needs all three files: --tls-ca, --tls-cert and --tls-key (missing: --tls-cert, --tls-key) [ERR_CONFIG]\n');
    const agent = (args: string[]) => spawnSync(process.execPath, [AGENT, '--id', 'h1', '--tunnel', '127.0.0.1:0', '--store', dir, ...args], { encoding: 'utf8' });
    r = agent(['--coordinator', '10.9.9.9:7443']);
    assert.equal(r.status, 2);
    assert.equal(r.stderr, 'vnsnap-agent: no TLS configured: give "tls": {"ca", "cert", "key"} (--tls-ca, --tls-cert, --tls-key), or "insecurePlaintext": true (--insecure-plaintext) for a loopback coordinator only [ERR_CONFIG]\n');
    r = agent(['--coordinator', '10.9.9.9:7443', '--insecure-plaintext']);
    assert.equal(r.status, 2);
    assert.equal(r.stderr, 'vnsnap-agent: plaintext is allowed only on loopback, and the coordinator 10.9.9.9:7443 is not: configure "tls" (--tls-ca, --tls-cert, --tls-key) [ERR_CONFIG]\n');
    const h1 = pki.agent('h1');
    r = agent(['--coordinator', '10.9.9.9:7443', '--tls-ca', h1.ca, '--tls-cert', h1.cert, '--tls-key', pki.agent('h2').key]);
    assert.equal(r.status, 2);
    assert.equal(r.stderr, `vnsnap-agent: the private key ${pki.agent('h2').key} does not match the certificate ${h1.cert} [ERR_CONFIG]\n`);
  });

  it('SIGHUP: new connections get the new files, the live session and streams go on; a bad file keeps the old ones', async () => {
    // The coordinator's files are copies the test replaces; a second coordinator certificate is the "renewed" one.
    const live: TlsFiles = { ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'coordinator.pem'), key: path.join(dir, 'coordinator-key.pem') };
    const first = pki.coordinator('sighup1');
    const renewed = pki.coordinator('sighup2');
    const install = (f: TlsFiles): void => {
      for (const k of ['ca', 'cert', 'key'] as const) fs.copyFileSync(f[k], live[k]);
    };
    install(first);
    const coord = start(COORDINATOR, ['--listen', '127.0.0.1:0', '--db', path.join(dir, 'c.db'), '--store-dir', path.join(dir, 'store'), '--tls-ca', live.ca, '--tls-cert', live.cert, '--tls-key', live.key]);
    const coordLog = new StderrLines(coord);
    const { address } = await waitForJsonLine<{ event: string; address: string }>(coord, (v) => v.event === 'ready');
    const port = Number(address.split(':').pop());
    const viewer = pki.client('viewer', 'viewer');
    const operator = pki.client('operator', 'operator');
    assert.equal(await servedSerial(port, viewer), serialOf(first.cert));

    // A real agent over TLS, and a viewer's event stream.
    const h1 = pki.agent('h1');
    const agentFiles: TlsFiles = { ca: path.join(dir, 'agent-ca.pem'), cert: path.join(dir, 'agent.pem'), key: path.join(dir, 'agent-key.pem') };
    for (const k of ['ca', 'cert', 'key'] as const) fs.copyFileSync(h1[k], agentFiles[k]);
    const agent = start(SIM_AGENT, ['--id', 'h1', '--coordinator', address, '--tunnel', '127.0.0.1:0', '--store', path.join(dir, 'store'), '--log-level', 'info', '--tls-ca', agentFiles.ca, '--tls-cert', agentFiles.cert, '--tls-key', agentFiles.key]);
    const agentLog = new StderrLines(agent);
    await agentLog.wait(/"msg":"session up"/);
    const client = new pkg.vnsnap.v1.CoordinatorService(address, sslCredentials(viewer));
    const events: Event__Output[] = [];
    const watch = client.watchEvents({ vne: '' });
    watch.on('data', (e: Event__Output) => events.push(e));
    watch.on('error', () => undefined);
    await until('the watch stream is open', () => client.getChannel().getConnectivityState(false) === grpc.connectivityState.READY);

    install(renewed);
    coordLog.reset();
    coord.kill('SIGHUP');
    await coordLog.wait(/SIGHUP: TLS files reloaded/);
    assert.equal(await servedSerial(port, viewer), serialOf(renewed.cert));
    // The stream and the session are still there: a change made now reaches the old stream, and nobody left.
    const op = new pkg.vnsnap.v1.CoordinatorService(address, sslCredentials(operator));
    await new Promise<void>((res, rej) =>
      op.defineVne({ vne: { name: 'hup', vni: 7, vms: [{ name: 'vm1', host: 'h1', macs: ['52:54:00:00:00:07'], driver: { sim: { memoryMib: 1 } } }] } }, (e) => (e ? rej(e) : res())),
    );
    await until('the old stream sees the new VNE', () => events.some((e) => e.kind === 'vne.defined' && e.vne === 'hup'));
    assert.deepEqual(events.filter((e) => e.kind.startsWith('agent.')), []);
    const agents = await new Promise<ListAgentsResponse__Output>((res, rej) => client.listAgents({}, (e, r) => (e || !r ? rej(e) : res(r))));
    assert.deepEqual(agents.agents.map((a) => [a.id, a.state]), [['h1', 'AGENT_STATE_CONNECTED']]);

    // A bad file: the previous (renewed) certificate stays, an error is logged, the coordinator goes on.
    fs.writeFileSync(live.key, 'not a key\n');
    coordLog.reset();
    coord.kill('SIGHUP');
    const err = await coordLog.wait(/SIGHUP: TLS files not reloaded/);
    assert.match(err, new RegExp(`"error":"the private key ${live.key} is not a PEM private key"`));
    assert.equal(await servedSerial(port, viewer), serialOf(renewed.cert));

    // The agent: a bad file is logged and the session stays; good files are reloaded.
    fs.writeFileSync(agentFiles.cert, 'garbage\n');
    agentLog.reset();
    agent.kill('SIGHUP');
    assert.match(await agentLog.wait(/SIGHUP: TLS files not reloaded/), /is not a PEM certificate/);
    fs.copyFileSync(h1.cert, agentFiles.cert);
    agent.kill('SIGHUP');
    await agentLog.wait(/SIGHUP: TLS files reloaded/);
    assert.equal(events.filter((e) => e.kind.startsWith('agent.')).length, 0);
    assert.equal(agent.exitCode, null);
    watch.cancel();
    client.close();
    op.close();
  });

  it('SIGHUP re-reads the roles table: a CN set to "none" is refused from its next call on', async () => {
    const c = pki.coordinator('roles');
    const cfg = path.join(dir, 'roles.json');
    const write = (roles: Record<string, string>): void => fs.writeFileSync(cfg, JSON.stringify({ listen: '127.0.0.1:0', db: ':memory:', storeDir: path.join(dir, 'store3'), tls: c, roles }));
    write({ operator: 'viewer' });
    const coord = start(COORDINATOR, ['--config', cfg]);
    const log = new StderrLines(coord);
    const { address } = await waitForJsonLine<{ event: string; address: string }>(coord, (v) => v.event === 'ready');
    const viewer = new pkg.vnsnap.v1.CoordinatorService(address, sslCredentials(pki.client('viewer', 'viewer')));
    const operator = new pkg.vnsnap.v1.CoordinatorService(address, sslCredentials(pki.client('operator', 'operator')));
    const list = (cl: typeof viewer) => new Promise<grpc.ServiceError | null>((res) => cl.listVnes({}, (e) => res(e)));
    const del = (cl: typeof viewer) => new Promise<grpc.ServiceError | null>((res) => cl.deleteVne({ name: 'x' }, (e) => res(e)));
    assert.equal(await list(viewer), null);
    // The table makes the operator certificate a viewer.
    assert.equal((await del(operator))?.details, 'permission denied: DeleteVne needs the operator role (certificate "operator" has the viewer role)');
    write({ viewer: 'none' });
    coord.kill('SIGHUP');
    await log.wait(/SIGHUP: TLS files reloaded/);
    assert.equal((await list(viewer))?.details, 'permission denied: ListVnes needs the viewer role (certificate "viewer" has no vnsnap role)');
    assert.equal((await del(operator))?.code, grpc.status.NOT_FOUND);
    // A bad table changes nothing.
    fs.writeFileSync(cfg, '{"roles": {"viewer": "admin"}}');
    log.reset();
    coord.kill('SIGHUP');
    assert.match(await log.wait(/SIGHUP: TLS files not reloaded/), /roles\.\\"viewer\\" must be one of viewer, operator, agent, none/);
    assert.equal((await list(viewer))?.code, grpc.status.PERMISSION_DENIED);
    viewer.close();
    operator.close();
  });

  it("an agent process presenting another agent's certificate is refused and logs why", async () => {
    const c = pki.coordinator('imp');
    const coord = start(COORDINATOR, ['--listen', '127.0.0.1:0', '--db', ':memory:', '--store-dir', path.join(dir, 'store2'), '--tls-ca', c.ca, '--tls-cert', c.cert, '--tls-key', c.key]);
    const { address } = await waitForJsonLine<{ event: string; address: string }>(coord, (v) => v.event === 'ready');
    const h2 = pki.agent('h2');
    const agent = start(SIM_AGENT, ['--id', 'h1', '--coordinator', address, '--tunnel', '127.0.0.1:0', '--store', path.join(dir, 'store2'), '--tls-ca', h2.ca, '--tls-cert', h2.cert, '--tls-key', h2.key]);
    const log = new StderrLines(agent);
    const line = await log.wait(/coordinator refused the session/);
    assert.match(line, /"reason":"the certificate of agent \\"h2\\" cannot register as agent \\"h1\\""/);
    // A certificate of another CA (the agent trusting both): the handshake fails, and the agent says so at warn level.
    const bundle = path.join(dir, 'bundle.pem');
    fs.writeFileSync(bundle, Buffer.concat([fs.readFileSync(c.ca), fs.readFileSync(pki.foreignAgent('h3').ca)]));
    const foreign = { ...pki.foreignAgent('h3'), ca: bundle };
    const stranger = start(SIM_AGENT, ['--id', 'h3', '--coordinator', address, '--tunnel', '127.0.0.1:0', '--store', path.join(dir, 'store2'), '--tls-ca', foreign.ca, '--tls-cert', foreign.cert, '--tls-key', foreign.key]);
    const warn = await new StderrLines(stranger).wait(/session attempt failed \(retrying/);
    assert.match(warn, /"level":40/);
  });
});
