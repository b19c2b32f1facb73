/**
 * The control plane's mutual TLS and roles, for real: a coordinator (in-process, TLS on
 * 127.0.0.1 with certificates made by coordinator/pki/vnsnap-pki.sh) called by the real `vnsnap`
 * binary and by raw grpc-js clients presenting viewer, operator, agent, expired and foreign-CA
 * certificates, or none. Asserts exact status codes, CLI lines and exit codes.
 */
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { CoordinatorServer } from '../../coordinator/server';
import { loadVnsnap } from '../../proto/core/grpc';
import { ERROR_CODE_METADATA_KEY } from '../../proto/core/grpc-status';
import { silentLogger } from '../../proto/core/log';
import type { CoordinatorMessage__Output } from '../../proto/gen/vnsnap/v1/CoordinatorMessage';
import { sslCredentials, testPki, type TlsFiles } from '../support/pki';
import { until } from '../support/wait';

const pkg = loadVnsnap();
const CLI = path.resolve(__dirname, '../../coordinator/cli/main.js');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The real CLI, with a clean environment (no default PKI directory, no plaintext). */
function vnsnap(args: readonly string[], home: string, extraEnv: NodeJS.ProcessEnv = {}): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: home, XDG_CONFIG_HOME: path.join(home, '.config') };
  for (const k of ['VNSNAP_COORDINATOR', 'VNSNAP_CA', 'VNSNAP_CERT', 'VNSNAP_KEY', 'VNSNAP_INSECURE_PLAINTEXT']) delete env[k];
  Object.assign(env, extraEnv);
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env }, (err, stdout, stderr) => resolve({ code: err ? Number(err.code ?? 1) : 0, stdout, stderr }));
  });
}

const tlsArgs = (f: TlsFiles): string[] => ['--ca', f.ca, '--cert', f.cert, '--key', f.key];

type Unary = (req: object, md: grpc.Metadata, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: unknown) => void) => void;

function call(address: string, creds: grpc.ChannelCredentials, method: string, req: object = {}): Promise<{ ok: true; res: unknown } | { ok: false; code: number; details: string; vnsnapCode: string | undefined }> {
  const c = new pkg.vnsnap.v1.CoordinatorService(address, creds);
  return new Promise((resolve) => {
    ((c as unknown as Record<string, Unary>)[method] as Unary).call(c, req, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (e, r) => {
      c.close();
      if (e) resolve({ ok: false, code: e.code, details: e.details, vnsnapCode: e.metadata?.get(ERROR_CODE_METADATA_KEY)[0] as string | undefined });
      else resolve({ ok: true, res: r });
    });
  });
}

/** Open AgentService.Session, send Register(agentId), collect what comes back until the stream ends. */
function session(address: string, creds: grpc.ChannelCredentials, agentId: string) {
  const client = new pkg.vnsnap.v1.AgentService(address, creds);
  const s = client.Session();
  const messages: CoordinatorMessage__Output[] = [];
  const ended = new Promise<grpc.ServiceError | null>((resolve) => {
    s.on('data', (m: CoordinatorMessage__Output) => messages.push(m));
    s.on('error', (e: grpc.ServiceError) => resolve(e));
    s.on('end', () => resolve(null));
  });
  ended.catch(() => undefined);
  s.write({ register: { agentId, hostname: `host-${agentId}`, version: 'test', tunnelAddress: '127.0.0.1', tunnelPort: 6081, drivers: ['sim'], running: [] } });
  return {
    messages,
    ended,
    close() {
      s.cancel();
      client.close();
    },
  };
}

describe('security: control plane over mutual TLS', function () {
  this.timeout(60_000);
  const pki = testPki();
  const coord = pki.coordinator('cp');
  const viewer = pki.client('viewer', 'viewer');
  const operator = pki.client('operator', 'operator');
  let server: CoordinatorServer;
  let home: string;
  let address: string;

  before(async () => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-sec-cp-'));
    server = new CoordinatorServer({ config: { listen: '0.0.0.0:0', db: ':memory:', storeDir: path.join(home, 'store'), tls: coord, deadAfterMs: 5000 }, log: silentLogger() });
    await server.start();
    address = `127.0.0.1:${server.address.split(':').pop()}`;
  });
  after(async () => {
    await server?.stop();
    fs.rmSync(home, { recursive: true, force: true });
  });

  describe('who may connect', () => {
    it('an unauthenticated client is refused: plaintext, and TLS without a client certificate', async () => {
      const plain = await call(address, grpc.credentials.createInsecure(), 'listVnes');
      assert.equal(plain.ok, false);
      assert.equal(!plain.ok && plain.code, grpc.status.UNAVAILABLE);
      const anonymous = await call(address, grpc.credentials.createSsl(fs.readFileSync(coord.ca)), 'listVnes');
      assert.equal(anonymous.ok, false);
      assert.equal(!anonymous.ok && anonymous.code, grpc.status.UNAVAILABLE);
      assert.match(!anonymous.ok ? anonymous.details : '', /certificate required|handshake|ECONNRESET|socket/i);
      const r = await vnsnap(['vne', 'list', '--coordinator', address, '--insecure-plaintext'], home);
      assert.equal(r.code, 4);
      assert.match(r.stderr, /^vnsnap: cannot reach the coordinator at 127\.0\.0\.1:\d+: .*\n$/);
    });

    it('the CLI without certificates refuses to dial, naming the ways to give them', async () => {
      const r = await vnsnap(['vne', 'list', '--coordinator', address], home);
      assert.equal(r.code, 2);
      assert.equal(r.stderr, `vnsnap: no client certificate: give --ca, --cert and --key (or VNSNAP_CA, VNSNAP_CERT, VNSNAP_KEY), or put ca.pem, client.pem and client-key.pem in ${home}/.config/vnsnap/pki; --insecure-plaintext only for a loopback coordinator\n`);
      const far = await vnsnap(['vne', 'list', '--coordinator', '10.1.2.3:7443', '--insecure-plaintext'], home);
      assert.equal(far.code, 2);
      assert.equal(far.stderr, 'vnsnap: --insecure-plaintext is allowed only for a loopback coordinator, and 10.1.2.3:7443 is not: use --ca, --cert and --key\n');
    });

    it('the CLI takes its files from VNSNAP_CA, VNSNAP_CERT and VNSNAP_KEY; a flag wins over the environment', async () => {
      const env = { VNSNAP_CA: viewer.ca, VNSNAP_CERT: viewer.cert, VNSNAP_KEY: viewer.key, VNSNAP_COORDINATOR: address };
      const r = await vnsnap(['vne', 'list'], home, env);
      assert.equal(r.stderr, '');
      assert.equal(r.code, 0);
      const d = await vnsnap(['vne', 'delete', 'nothing', '--cert', operator.cert, '--key', operator.key], home, env);
      assert.equal(d.stderr, 'vnsnap: VNE "nothing" does not exist\n');
      assert.equal(d.code, 3);
    });

    it('the CLI finds its files in ~/.config/vnsnap/pki', async () => {
      const dir = path.join(home, '.config', 'vnsnap', 'pki');
      fs.mkdirSync(dir, { recursive: true });
      try {
        fs.copyFileSync(viewer.ca, path.join(dir, 'ca.pem'));
        fs.copyFileSync(viewer.cert, path.join(dir, 'client.pem'));
        fs.copyFileSync(viewer.key, path.join(dir, 'client-key.pem'));
        const r = await vnsnap(['vne', 'list', '--coordinator', address], home);
        assert.equal(r.stderr, '');
        assert.equal(r.code, 0);
      } finally {
        fs.rmSync(path.join(home, '.config'), { recursive: true, force: true });
      }
    });

    it('expired and foreign-CA client certificates are refused by the coordinator', async () => {
      for (const files of [pki.expiredClient(), { ...pki.foreignClient(), ca: coord.ca }]) {
        const r = await call(address, sslCredentials(files), 'listVnes');
        assert.equal(r.ok, false, files.cert);
        assert.equal(!r.ok && r.code, grpc.status.UNAVAILABLE, files.cert);
      }
    });

    it('the CLI says in one line what is wrong with a certificate', async () => {
      const expired = pki.expiredClient();
      const foreign = pki.foreignClient();
      // Trusting both CAs, presenting the foreign one's certificate: the coordinator refuses it.
      const bundle = path.join(home, 'bundle.pem');
      fs.writeFileSync(bundle, Buffer.concat([fs.readFileSync(coord.ca), fs.readFileSync(foreign.ca)]));
      const cases: [string[], string][] = [
        [tlsArgs(expired), `vnsnap: the certificate ${expired.cert} expired on 2020-01-02T00:00:00.000Z: issue a new one\n`],
        [tlsArgs({ ...foreign, ca: coord.ca }), `vnsnap: the certificate ${foreign.cert} is not signed by the CA in ${coord.ca}\n`],
        [tlsArgs(foreign), `vnsnap: the coordinator's certificate is not signed by the CA in ${foreign.ca}: wrong --ca, or not a coordinator of this cluster (coordinator ${address})\n`],
        [tlsArgs({ ...foreign, ca: bundle }), `vnsnap: the coordinator ended the TLS handshake: it does not accept our certificate ${foreign.cert} (not of its CA, expired, or revoked) (coordinator ${address})\n`],
        [tlsArgs({ ...viewer, key: operator.key }), `vnsnap: the private key ${operator.key} does not match the certificate ${viewer.cert}\n`],
        [tlsArgs({ ...viewer, key: path.join(home, 'absent.pem') }), `vnsnap: cannot read the private key ${path.join(home, 'absent.pem')}: no such file\n`],
        [tlsArgs({ ...viewer, cert: viewer.key }), `vnsnap: the certificate ${viewer.key} is not a PEM certificate\n`],
      ];
      for (const [args, line] of cases) {
        const r = await vnsnap(['vne', 'list', '--coordinator', address, ...args], home);
        assert.equal(r.stderr, line);
        assert.equal(r.code, 5, line);
      }
    });

    it('the CLI says when the coordinator certificate does not name the address dialled', async () => {
      const port = server.address.split(':').pop() as string;
      const other = os.networkInterfaces();
      const ip = Object.values(other).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address ?? '127.0.0.2';
      const r = await vnsnap(['vne', 'list', '--coordinator', `${ip}:${port}`, ...tlsArgs(viewer)], home);
      assert.equal(r.stderr, `vnsnap: the coordinator's certificate is not valid for ${ip} (it names 127.0.0.1): dial a name it has, or re-issue it with that --ip/--dns (coordinator ${ip}:${port})\n`);
      assert.equal(r.code, 5);
    });

    it('health and reflection answer any certificate of the CA', async () => {
      for (const who of [viewer, pki.agent('h1')]) {
        const Health = grpc.makeGenericClientConstructor(healthService, 'Health');
        const hc = new Health(address, sslCredentials(who)) as unknown as { Check: (r: object, cb: (e: Error | null, r: { status: string }) => void) => void; close(): void };
        const st = await new Promise<{ status: string }>((res, rej) => hc.Check({ service: 'vnsnap.v1.CoordinatorService' }, (e, r) => (e ? rej(e) : res(r))));
        hc.close();
        assert.equal(st.status, 'SERVING');
      }
    });
  });

  describe('roles', () => {
    const vneFile = (): string => {
      const f = path.join(home, 'blue.json');
      fs.writeFileSync(f, JSON.stringify({ name: 'blue', vni: 100, vms: [{ name: 'vm1', host: 'h1', macs: ['52:54:00:00:00:01'], driver: { sim: { memoryMib: 1 } } }] }));
      return f;
    };

    it('a viewer lists and shows, and cannot define, delete or restore: PERMISSION_DENIED naming the role needed, exit 5', async () => {
      assert.equal((await vnsnap(['vne', 'list', '--coordinator', address, ...tlsArgs(viewer)], home)).code, 0);
      assert.equal((await vnsnap(['agents', '--coordinator', address, ...tlsArgs(viewer)], home)).code, 0);
      const cases: [string[], string][] = [
        [['vne', 'define', vneFile()], 'DefineVne'],
        [['vne', 'delete', 'blue'], 'DeleteVne'],
        [['snapshot', 'delete', 'snap-0001'], 'DeleteSnapshot'],
        [['restore', 'snap-0001'], 'RestoreSnapshot'],
        [['snapshot', 'create', 'blue'], 'CreateSnapshot'],
      ];
      for (const [args, rpc] of cases) {
        const r = await vnsnap([...args, '--coordinator', address, ...tlsArgs(viewer)], home);
        // The CLI names the command, with the RPC the role table names.
        const command = `vnsnap ${args.slice(0, args[0] === 'restore' ? 1 : 2).join(' ')}`;
        assert.equal(r.stderr, `vnsnap: permission denied: ${command} (${rpc}) needs the operator role (certificate "viewer" has the viewer role)\n`, args.join(' '));
        assert.equal(r.code, 5);
      }
      const raw = await call(address, sslCredentials(viewer), 'deleteVne', { name: 'blue' });
      assert.deepEqual(raw, { ok: false, code: grpc.status.PERMISSION_DENIED, details: 'permission denied: DeleteVne needs the operator role (certificate "viewer" has the viewer role)', vnsnapCode: 'ERR_PERMISSION_DENIED' });
      const j = await vnsnap(['vne', 'delete', 'blue', '--json', '--coordinator', address, ...tlsArgs(viewer)], home);
      assert.deepEqual(JSON.parse(j.stderr), { error: { code: 'ERR_PERMISSION_DENIED', message: 'permission denied: vnsnap vne delete (DeleteVne) needs the operator role (certificate "viewer" has the viewer role)', exitCode: 5 } });
    });

    it('an operator defines, deletes and may restore (the restore then fails on its merits)', async () => {
      const d = await vnsnap(['vne', 'define', vneFile(), '--coordinator', address, ...tlsArgs(operator)], home);
      assert.equal(d.stderr, '');
      assert.equal(d.code, 0);
      const r = await vnsnap(['restore', 'snap-0001', '--coordinator', address, ...tlsArgs(operator)], home);
      assert.equal(r.stderr, 'vnsnap: snapshot "snap-0001" does not exist\n');
      assert.equal(r.code, 3);
      const del = await vnsnap(['vne', 'delete', 'blue', '--coordinator', address, ...tlsArgs(operator)], home);
      assert.equal(del.code, 0, del.stderr);
      assert.deepEqual(((await call(address, sslCredentials(viewer), 'listVnes')) as { res: { vnes: unknown[] } }).res.vnes, []);
    });

    it('clients may not open an agent session, agents may not call CoordinatorService', async () => {
      const s = session(address, sslCredentials(operator), 'h1');
      const e = await s.ended;
      s.close();
      assert.equal(e?.code, grpc.status.PERMISSION_DENIED);
      assert.equal(e?.details, 'permission denied: Session needs the agent role (certificate "operator" has the operator role)');
      assert.deepEqual(s.messages, []);
      const r = await call(address, sslCredentials(pki.agent('h1')), 'listVnes');
      assert.deepEqual(r, { ok: false, code: grpc.status.PERMISSION_DENIED, details: 'permission denied: ListVnes needs the viewer role (certificate "h1" has the agent role)', vnsnapCode: 'ERR_PERMISSION_DENIED' });
    });
  });

  describe('agent identity', () => {
    it("an agent with h2's certificate cannot register as h1: PERMISSION_DENIED naming both", async () => {
      const s = session(address, sslCredentials(pki.agent('h2')), 'h1');
      const e = await s.ended;
      s.close();
      assert.equal(e?.code, grpc.status.PERMISSION_DENIED);
      assert.equal(e?.details, 'the certificate of agent "h2" cannot register as agent "h1"');
      assert.deepEqual(s.messages.map((m) => m.refused), ['the certificate of agent "h2" cannot register as agent "h1"']);
      assert.equal(server.registry.isConnected('h1'), false);
    });

    it('a stale session is replaced at once by a new one with the right certificate', async () => {
      const h1 = pki.agent('h1');
      const first = session(address, sslCredentials(h1), 'h1');
      await until('first session welcomed', () => first.messages.some((m) => m.welcome));
      const second = session(address, sslCredentials(h1), 'h1');
      await until('second session welcomed', () => second.messages.some((m) => m.welcome));
      const e = await first.ended;
      assert.equal(e?.code, grpc.status.UNAVAILABLE);
      assert.equal(e?.details, 'replaced by a new session of agent h1');
      assert.equal(server.registry.isConnected('h1'), true);
      assert.equal(second.messages.some((m) => m.refused), false);
      first.close();
      second.close();
      await until('h1 gone', () => !server.registry.isConnected('h1'));
    });

    it("an agent certificate of a foreign CA never gets a session", async () => {
      const foreign = session(address, sslCredentials({ ...pki.foreignAgent('h3'), ca: coord.ca }), 'h3');
      const e = await foreign.ended;
      foreign.close();
      assert.equal(e?.code, grpc.status.UNAVAILABLE);
      assert.deepEqual(foreign.messages, []);
      assert.equal(server.registry.isConnected('h3'), false);
    });
  });
});
