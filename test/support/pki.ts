/**
 * A throwaway cluster PKI for the tests and demos, made with the product's own certificate tool
 * (coordinator/pki/vnsnap-pki.sh, real openssl): one CA per process in a temp directory
 * (vnsnap-pki-*), removed when the process exits. Certificates are made on first use and then
 * reused: agents by id, coordinators by name (with extra IP SANs), clients by name and role.
 * For the refusal tests it also makes an expired client certificate and a client of a second,
 * foreign CA (never trusted by the cluster).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';

/** The three PEM files one party presents (its certificate and key) and trusts (the CA). */
export interface TlsFiles {
  ca: string;
  cert: string;
  key: string;
}

/** The certificate tool, in the source tree (it is a shell script, not compiled). */
export const PKI_SCRIPT = path.resolve(__dirname, '../../../coordinator/pki/vnsnap-pki.sh');

function tool(dir: string, args: readonly string[]): void {
  execFileSync('bash', [PKI_SCRIPT, '-d', dir, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
}

export class TestPki {
  readonly dir: string;
  private readonly made = new Set<string>();
  private foreignDir: string | undefined;

  constructor(dir?: string) {
    this.dir = dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-pki-'));
    if (!fs.existsSync(path.join(this.dir, 'ca.pem'))) tool(this.dir, ['ca']);
  }

  get ca(): string {
    return path.join(this.dir, 'ca.pem');
  }

  private leaf(base: string, args: readonly string[]): TlsFiles {
    const cert = path.join(this.dir, `${base}.pem`);
    if (!this.made.has(base) && !fs.existsSync(cert)) tool(this.dir, args);
    this.made.add(base);
    return { ca: this.ca, cert, key: path.join(this.dir, `${base}-key.pem`) };
  }

  /** An agent's certificate (CN = id, SAN DNS:id and each ip). */
  agent(id: string, ips: readonly string[] = []): TlsFiles {
    return this.leaf(`agent-${id}`, ['agent', id, ...ips.flatMap((a) => ['--ip', a])]);
  }

  /** A coordinator's server certificate (SANs: name, localhost, 127.0.0.1 and each ip). */
  coordinator(name = 'coordinator', ips: readonly string[] = []): TlsFiles {
    return this.leaf(`coordinator-${name}`, ['coordinator', name, ...ips.flatMap((a) => ['--ip', a])]);
  }

  /** A client certificate with a role (OU). */
  client(name: string, role: 'viewer' | 'operator'): TlsFiles {
    return this.leaf(`client-${name}`, ['client', name, '--role', role]);
  }

  /** An operator certificate of this CA that expired on 2020-01-02. */
  expiredClient(): TlsFiles {
    return this.leaf('client-expired', ['client', 'expired', '--role', 'operator', '--expired']);
  }

  /** An operator certificate of another CA (its own ca.pem is the foreign CA). */
  foreignClient(): TlsFiles {
    if (!this.foreignDir) {
      this.foreignDir = path.join(this.dir, 'foreign');
      fs.mkdirSync(this.foreignDir, { recursive: true });
      tool(this.foreignDir, ['ca']);
      tool(this.foreignDir, ['client', 'mallory', '--role', 'operator']);
    }
    return { ca: path.join(this.foreignDir, 'ca.pem'), cert: path.join(this.foreignDir, 'client-mallory.pem'), key: path.join(this.foreignDir, 'client-mallory-key.pem') };
  }

  /** An agent certificate of the foreign CA. */
  foreignAgent(id: string): TlsFiles {
    const f = this.foreignClient();
    const dir = path.dirname(f.ca);
    if (!fs.existsSync(path.join(dir, `agent-${id}.pem`))) tool(dir, ['agent', id]);
    return { ca: f.ca, cert: path.join(dir, `agent-${id}.pem`), key: path.join(dir, `agent-${id}-key.pem`) };
  }

  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

let shared: TestPki | undefined;

/** The process's PKI (made once, removed at exit). */
export function testPki(): TestPki {
  if (!shared) {
    const p = new TestPki();
    shared = p;
    process.once('exit', () => p.remove());
  }
  return shared;
}

/** grpc-js credentials presenting `files` (read now), for test clients. */
export function sslCredentials(files: TlsFiles): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(fs.readFileSync(files.ca), fs.readFileSync(files.key), fs.readFileSync(files.cert));
}
