/**
 * The credentials of a live migration's TLS (agent/drivers/qemu/migration-tls.ts) on any QEMU
 * monitor, over a scripted QMP peer: what each endpoint gets, in which order, and the PEM files
 * it reads (bench:migrate gives QEMU's own baseline migration exactly this). The real QEMU runs
 * are in test/integration/migrate-tls-qemu.test.ts. Files under a mkdtemp dir prefixed
 * vnsnap-migtls-, removed after each test.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { QmpClient } from '../../agent/drivers/qemu/qmp';
import { addTlsObjects, admittedDns, clearTlsObjects, TLS_AUTHZ, TLS_CREDS } from '../../agent/drivers/qemu/migration-tls';
import { VnsnapError } from '../../proto/core/errors';

class ScriptedQmp {
  readonly sent: [string, Record<string, unknown> | undefined][] = [];
  async execute(cmd: string, args?: Record<string, unknown>): Promise<unknown> {
    this.sent.push([cmd, args]);
    return {};
  }
}

/** The authz-list object QEMU gets: deny, except these subjects. */
const authzList = (allow: [string, 'exact' | 'glob'][]) => ({ 'qom-type': 'authz-list', id: TLS_AUTHZ, policy: 'deny', rules: allow.map(([match, format]) => ({ match, policy: 'allow', format })) });

describe('QEMU migration TLS credentials on any monitor', () => {
  let tmp: string;
  let files: { ca: string; cert: string; key: string };
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-migtls-'));
    files = { ca: path.join(tmp, 'ca.pem'), cert: path.join(tmp, 'agent.pem'), key: path.join(tmp, 'agent-key.pem') };
    fs.writeFileSync(files.ca, 'CA');
    fs.writeFileSync(files.cert, 'CERT');
    fs.writeFileSync(files.key, 'KEY');
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('server without a named source: old objects cleared, the x509 credentials from the copied files, then an authz list of any agent', async () => {
    const q = new ScriptedQmp();
    const dir = path.join(tmp, 'twin', 'tls');
    await addTlsObjects(q as unknown as QmpClient, dir, files, 'server', 'the twin');
    assert.deepEqual(q.sent.map(([c]) => c), ['migrate-set-parameters', 'object-del', 'object-del', 'object-add', 'object-add']);
    assert.deepEqual(q.sent[0]?.[1], { 'tls-creds': '', 'tls-hostname': '', 'tls-authz': '' });
    assert.deepEqual(q.sent[3]?.[1], { 'qom-type': 'tls-creds-x509', id: TLS_CREDS, dir, endpoint: 'server', 'verify-peer': true });
    assert.deepEqual(q.sent[4]?.[1], authzList([['CN=*,OU=agent', 'glob'], ['OU=agent,CN=*', 'glob']]));
    assert.deepEqual(fs.readdirSync(dir).sort(), ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']);
    assert.equal(fs.readFileSync(path.join(dir, 'server-key.pem'), 'utf8'), 'KEY');
    assert.equal(fs.statSync(path.join(dir, 'server-key.pem')).mode & 0o777, 0o600);
  });

  it('server for a named source: the authz list admits exactly that agent\'s subject, nothing else', async () => {
    const q = new ScriptedQmp();
    await addTlsObjects(q as unknown as QmpClient, path.join(tmp, 'dst', 'tls'), files, 'server', 'the migration of blue/a', 'h1');
    assert.deepEqual(q.sent[4]?.[1], authzList([['CN=h1,OU=agent', 'exact'], ['OU=agent,CN=h1', 'exact']]));
    assert.deepEqual(admittedDns('h1.example-2_x').map((r) => r.match), ['CN=h1.example-2_x,OU=agent', 'OU=agent,CN=h1.example-2_x']);
    for (const bad of ['h1,OU=agent', 'h*', 'a=b', 'h 1']) assert.throws(() => admittedDns(bad), (e: unknown) => e instanceof VnsnapError && e.code === 'ERR_INVALID_ARGUMENT');
  });

  it('client: the x509 credentials only, no authz list', async () => {
    const q = new ScriptedQmp();
    const dir = path.join(tmp, 'src-tls');
    await addTlsObjects(q as unknown as QmpClient, dir, files, 'client', 'the source');
    assert.deepEqual(q.sent.map(([c]) => c), ['migrate-set-parameters', 'object-del', 'object-del', 'object-add']);
    assert.equal(q.sent[3]?.[1]?.endpoint, 'client');
    assert.deepEqual(fs.readdirSync(dir).sort(), ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']);
  });

  it('unreadable files: ERR_CONFIG naming what the credentials were for, nothing sent to QEMU', async () => {
    const q = new ScriptedQmp();
    fs.rmSync(files.key);
    await assert.rejects(addTlsObjects(q as unknown as QmpClient, path.join(tmp, 'x'), files, 'client', 'the source on h1'), (e: unknown) => e instanceof VnsnapError && e.code === 'ERR_CONFIG' && /the source on h1/.test(e.message));
    assert.deepEqual(q.sent, []);
  });

  it('QEMU refusing the credentials is ERR_CONFIG naming the file; QEMU gone meanwhile is its own error, not a certificate problem', async () => {
    const failing = (err: Error) => ({ execute: (cmd: string) => (cmd === 'object-add' ? Promise.reject(err) : Promise.resolve({})) }) as unknown as QmpClient;
    await assert.rejects(
      addTlsObjects(failing(new VnsnapError('ERR_DRIVER', 'QMP object-add on blue/a: GenericError: Certificate does not support TLS server usage (purpose)')), path.join(tmp, 'r'), files, 'server', 'the migration of blue/a', 'h1'),
      (e: unknown) => e instanceof VnsnapError && e.code === 'ERR_CONFIG' && e.message.includes(files.cert),
    );
    const gone = new VnsnapError('ERR_DRIVER', 'QMP object-add on blue/a (pid 9): QMP connection to blue/a (pid 9) failed: read ECONNRESET');
    await assert.rejects(addTlsObjects(failing(gone), path.join(tmp, 'g'), files, 'server', 'the migration of blue/a', 'h1'), (e: unknown) => e === gone);
  });

  it('clearTlsObjects never throws when QEMU refuses', async () => {
    const q = { execute: () => Promise.reject(new Error('no such object')) };
    await clearTlsObjects(q as unknown as QmpClient);
  });
});
