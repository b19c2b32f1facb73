/**
 * Python grpcio (the C-core gRPC stack) against a coordinator that requires mutual TLS:
 * test/interop/interop_check.py with grpc.ssl_channel_credentials and an operator's certificate
 * checks health, reflection, DefineVne + StartVne, a CreateSnapshot stream to COMPLETE and the
 * error mapping; two real agents (sim VMs, real switches on loopback UDP) hold the VMs, joined
 * over TLS with their own certificates. Without a certificate Python cannot connect at all.
 * Skipped when Debian's python3-grpcio / python3-grpc-tools are absent.
 */
import { strict as assert } from 'node:assert';
import { execFile, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Agent } from '../../agent/agent';
import { grpcSessionTransportWith } from '../../agent/session';
import { CoordinatorServer } from '../../coordinator/server';
import { silentLogger } from '../../proto/core/log';
import { PemCertificates } from '../../proto/core/tls';
import { SimDriver } from '../sim/driver';
import { testPki, type TlsFiles } from '../support/pki';
import { until } from '../support/wait';

const REPO = path.resolve(__dirname, '../../..');
const CHECK = path.join(REPO, 'test/interop/interop_check.py');
const VNE_FILE = path.join(REPO, 'test/interop/sim-vne.json');

interface Report {
  ok: boolean;
  transport?: string;
  problems: string[];
  health?: Record<string, string>;
  reflection?: { services: string[]; methodsMatchProto: boolean };
  defineVne?: { name: string; state: string };
  createSnapshot?: { final: { state: string } | null } | null;
  errors?: { status: string; vnsnapErrorCode: string | null };
}

function findPython(): string | undefined {
  for (const p of [process.env.VNSNAP_PYTHON, '/usr/bin/python3']) {
    if (p && spawnSync(p, ['-c', 'import grpc, grpc_tools.protoc'], { stdio: 'ignore' }).status === 0) return p;
  }
  return undefined;
}

function check(python: string, args: string[]): Promise<{ code: number; report: Report }> {
  return new Promise((resolve, reject) => {
    execFile(python, [CHECK, ...args], { timeout: 300_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      try {
        resolve({ code: err ? Number(err.code ?? 1) : 0, report: JSON.parse(stdout) as Report });
      } catch {
        reject(new Error(`interop_check.py printed no JSON: ${stdout}\n${stderr}`));
      }
    });
  });
}

describe('security: Python grpcio over mutual TLS (health, reflection, a snapshot)', function () {
  this.timeout(300_000);
  const pki = testPki();
  let python: string | undefined;
  let dir: string;
  let server: CoordinatorServer | undefined;
  const agents: Agent[] = [];
  const tlsArgs = (f: TlsFiles): string[] => ['--ca', f.ca, '--cert', f.cert, '--key', f.key];

  before(async function () {
    python = findPython();
    if (!python) {
      console.log('      (skipped: needs python3-grpcio and python3-grpc-tools)');
      this.skip();
    }
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-sec-py-'));
    const store = path.join(dir, 'store');
    server = new CoordinatorServer({ config: { listen: '127.0.0.1:0', db: ':memory:', storeDir: store, tls: pki.coordinator('py') }, log: silentLogger() });
    await server.start();
    for (const id of ['h1', 'h2']) {
      const certs = new PemCertificates(pki.agent(id));
      const a = new Agent({ id, coordinator: server.address, tunnel: { address: '127.0.0.1', port: 0 }, storeConfig: { kind: 'local', dir: store }, drivers: [new SimDriver()], session: grpcSessionTransportWith(certs.channelCredentials()) });
      agents.push(a);
      await a.start();
    }
    await until('both agents registered over TLS', () => server?.registry.connectedIds().join() === 'h1,h2');
  });

  after(async () => {
    for (const a of agents) await a.stop();
    await server?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('every check passes with an operator certificate: health, reflection, define + start, a COMPLETE snapshot, NOT_FOUND with its code', async () => {
    const { code, report } = await check(python as string, ['--address', server?.address as string, '--define', VNE_FILE, '--timeout', '15', '--snapshot-timeout', '120', ...tlsArgs(pki.client('operator', 'operator'))]);
    assert.deepEqual(report.problems, []);
    assert.equal(code, 0);
    assert.equal(report.transport, 'mutual TLS');
    assert.deepEqual(report.health, { '': 'SERVING', 'vnsnap.v1.CoordinatorService': 'SERVING' });
    assert.ok(report.reflection?.services.includes('vnsnap.v1.CoordinatorService'));
    assert.equal(report.reflection?.methodsMatchProto, true);
    assert.deepEqual(report.defineVne, { name: 'green', state: 'VNE_STATE_RUNNING' });
    assert.equal(report.createSnapshot?.final?.state, 'SNAPSHOT_STATE_COMPLETE');
    assert.deepEqual(report.errors && [report.errors.status, report.errors.vnsnapErrorCode], ['NOT_FOUND', 'ERR_NOT_FOUND']);
  });

  it('without a certificate Python cannot connect', async () => {
    const { code, report } = await check(python as string, ['--address', server?.address as string, '--timeout', '3']);
    assert.equal(code, 1);
    assert.deepEqual(report.problems, [`cannot connect to ${server?.address as string} within 3 s`]);
  });
});
