/**
 * Mutual TLS for every gRPC link of vnsnap (agent ↔ coordinator, client ↔ coordinator): the
 * PEM files, the grpc-js credentials built on them, the rule for when plaintext is allowed, and
 * who the peer of a call is.
 *
 * Guarantees:
 *  - PemCertificates loads the three files of one party (CA, certificate, key) and checks them
 *    before anything listens or dials: each file readable and PEM, the key matching the
 *    certificate, the certificate signed by the CA and not expired. Every failure is one
 *    ERR_CONFIG line naming the file.
 *  - It is a grpc-js CertificateProvider (experimental.createCertificateProvider*Credentials):
 *    reload() (SIGHUP) re-reads the files; good files replace the served ones for new
 *    connections and handshakes, while existing connections, sessions and streams go on; bad
 *    files leave the old ones in place and reload() says why.
 *  - Servers require a client certificate signed by the CA (no certificate, or one of another
 *    CA, fails the handshake); clients verify the server's certificate and its name.
 *  - Plaintext only when asked for (insecurePlaintext) and only on a loopback address
 *    (checkTransport); otherwise the process refuses to start with one line saying what to do.
 *  - peerIdentity() reads the verified peer certificate of a server call: CN, OUs, DNS and IP
 *    SANs. Roles are decided from it in coordinator/authz.ts.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import * as fs from 'node:fs';
import { isIP } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import type { PeerCertificate } from 'node:tls';
import { configError, rejectUnknownKeys } from './config';

/** The PEM files of one party: the CA it trusts, its certificate, its private key. */
export interface TlsFiles {
  ca: string;
  cert: string;
  key: string;
}

/** How a process talks gRPC: TLS with these files, or (loopback only) plaintext. */
export interface TransportConfig {
  tls?: TlsFiles;
  insecurePlaintext?: boolean;
}

interface Pems {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

function readPem(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    configError(`cannot read the ${what} ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
}

function parseCert(pem: Buffer, file: string, what: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch {
    configError(`the ${what} ${file} is not a PEM certificate`);
  }
}

/** Read and check one party's files (see the header); `now` for the expiry check. */
export function loadPems(files: TlsFiles, now = Date.now()): Pems {
  const ca = readPem(files.ca, 'CA certificate');
  const cert = readPem(files.cert, 'certificate');
  const key = readPem(files.key, 'private key');
  // A CA file may hold several certificates (a bundle, e.g. while a CA is being replaced).
  const blocks = ca.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) configError(`the CA certificate ${files.ca} is not a PEM certificate`);
  const cas = blocks.map((b) => parseCert(Buffer.from(b), files.ca, 'CA certificate'));
  const own = parseCert(cert, files.cert, 'certificate');
  let keyObject;
  try {
    keyObject = createPrivateKey(key);
  } catch {
    configError(`the private key ${files.key} is not a PEM private key`);
  }
  if (!own.checkPrivateKey(keyObject)) configError(`the private key ${files.key} does not match the certificate ${files.cert}`);
  if (!cas.some((c) => own.verify(c.publicKey))) configError(`the certificate ${files.cert} is not signed by the CA in ${files.ca}`);
  if (Date.parse(own.validTo) < now) configError(`the certificate ${files.cert} expired on ${new Date(own.validTo).toISOString()}: issue a new one`);
  if (Date.parse(own.validFrom) > now) configError(`the certificate ${files.cert} is not valid before ${new Date(own.validFrom).toISOString()}`);
  return { ca, cert, key };
}

type CaListener = (u: { caCertificate: Buffer } | null) => void;
type IdentityListener = (u: { certificate: Buffer; privateKey: Buffer } | null) => void;

/** One party's PEM files, served to grpc-js and reloadable (see the header). */
export class PemCertificates implements grpc.experimental.CertificateProvider {
  private pems: Pems;
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();

  constructor(readonly files: TlsFiles) {
    this.pems = loadPems(files);
  }

  /** Re-read the files: on success new connections use them; on failure the old ones stay. */
  reload(): { ok: true } | { ok: false; error: string } {
    try {
      this.pems = loadPems(this.files);
    } catch (e) {
      return { ok: false, error: (e as Error).message };
    }
    for (const l of this.caListeners) l({ caCertificate: this.pems.ca });
    for (const l of this.identityListeners) l({ certificate: this.pems.cert, privateKey: this.pems.key });
    return { ok: true };
  }

  // grpc-js registers its listener before the watcher that applies updates: answer on the next tick.
  addCaCertificateListener(l: CaListener): void {
    this.caListeners.add(l);
    process.nextTick(() => this.caListeners.has(l) && l({ caCertificate: this.pems.ca }));
  }
  removeCaCertificateListener(l: CaListener): void {
    this.caListeners.delete(l);
  }
  addIdentityCertificateListener(l: IdentityListener): void {
    this.identityListeners.add(l);
    process.nextTick(() => this.identityListeners.has(l) && l({ certificate: this.pems.cert, privateKey: this.pems.key }));
  }
  removeIdentityCertificateListener(l: IdentityListener): void {
    this.identityListeners.delete(l);
  }

  /** Server credentials requiring a client certificate of the CA. */
  serverCredentials(): grpc.ServerCredentials {
    return grpc.experimental.createCertificateProviderServerCredentials(this, this, true);
  }

  /** Channel credentials presenting this certificate and verifying the server against the CA. */
  channelCredentials(): grpc.ChannelCredentials {
    return grpc.experimental.createCertificateProviderChannelCredentials(this, this);
  }
}

/** Call `reload` on SIGHUP and log the outcome; returns the function that removes the handler. */
export function reloadOnSighup(reload: () => { ok: true } | { ok: false; error: string }, log: { info(m: string): void; error(o: object, m: string): void }): () => void {
  const onHup = (): void => {
    const r = reload();
    if (r.ok) log.info('SIGHUP: TLS files reloaded; new connections use them');
    else log.error({ error: r.error }, 'SIGHUP: TLS files not reloaded; keeping the previous ones');
  };
  process.on('SIGHUP', onHup);
  return () => process.off('SIGHUP', onHup);
}

/** True for a loopback host (127.0.0.0/8, ::1, localhost) of "host:port" or a bare host. */
export function isLoopback(address: string): boolean {
  const host = address.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1';
}

/**
 * Refuse a transport that is not allowed: no TLS without insecurePlaintext, plaintext off
 * loopback. `what` names the address in the message ("listen address", "coordinator").
 */
export function checkTransport(t: TransportConfig, what: string, address: string): void {
  if (t.tls && t.insecurePlaintext) configError('set either "tls" or "insecurePlaintext", not both');
  if (t.tls) return;
  if (!t.insecurePlaintext) configError(`no TLS configured: give "tls": {"ca", "cert", "key"} (--tls-ca, --tls-cert, --tls-key), or "insecurePlaintext": true (--insecure-plaintext) for a loopback ${what} only`);
  if (!isLoopback(address)) configError(`plaintext is allowed only on loopback, and the ${what} ${address} is not: configure "tls" (--tls-ca, --tls-cert, --tls-key)`);
}

/** Validate a config file's "tls" object (exactly ca, cert, key: file names). */
export function parseTlsFiles(raw: unknown, where: string): TlsFiles {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) configError(`${where}: "tls" must be an object {"ca", "cert", "key"}`);
  const o = raw as Record<string, unknown>;
  rejectUnknownKeys(o, ['ca', 'cert', 'key'], `${where}: tls`);
  for (const k of ['ca', 'cert', 'key']) {
    if (typeof o[k] !== 'string' || o[k] === '') configError(`${where}: tls.${k} must be a file name (all three of ca, cert, key are required)`);
  }
  return { ca: o.ca as string, cert: o.cert as string, key: o.key as string };
}

/** Merge --tls-ca/--tls-cert/--tls-key over a file's "tls"; all three or none in the result. */
export function tlsFromFlags(file: TlsFiles | undefined, flags: Partial<TlsFiles>): TlsFiles | undefined {
  const merged = { ...(file ?? {}), ...Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined)) } as Partial<TlsFiles>;
  const given = (['ca', 'cert', 'key'] as const).filter((k) => merged[k] !== undefined);
  if (given.length === 0) return undefined;
  if (given.length < 3) configError(`TLS needs all three files: --tls-ca, --tls-cert and --tls-key (missing: ${(['ca', 'cert', 'key'] as const).filter((k) => merged[k] === undefined).map((k) => `--tls-${k}`).join(', ')})`);
  return merged as TlsFiles;
}

/** Who is at the other end of a call, from its verified certificate. */
export interface PeerIdentity {
  commonName: string;
  /** The subject's organizational units (vnsnap puts the role there). */
  units: string[];
  dnsNames: string[];
  ips: string[];
}

const list = (v: string | string[] | undefined): string[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

/** The identity in a verified peer certificate (undefined over plaintext). */
export function identityOf(cert: PeerCertificate | undefined): PeerIdentity | undefined {
  if (!cert) return undefined;
  const san = (cert.subjectaltname ?? '').split(/,\s*/).filter(Boolean);
  return {
    commonName: list(cert.subject?.CN)[0] ?? '',
    units: list(cert.subject?.OU),
    dnsNames: san.filter((s) => s.startsWith('DNS:')).map((s) => s.slice(4)),
    ips: san.filter((s) => s.startsWith('IP Address:')).map((s) => s.slice(11)),
  };
}

/** The peer of a server call; undefined when the call came over plaintext. */
export function peerIdentity(call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate } }): PeerIdentity | undefined {
  return identityOf(call.getAuthContext().sslPeerCertificate);
}

/**
 * grpc-js names the address dialled as the TLS server name, an IP address included, which Node
 * reports as deprecation DEP0123 (RFC 6066 forbids IP addresses in SNI) in plain text on stderr,
 * among the programs' own lines. The certificate is still checked against that address (its IP
 * SAN). Drop that one warning; every other warning, deprecations included, is printed as usual.
 */
export function hideIpServerNameWarning(): void {
  const emit = process.emitWarning.bind(process) as (...args: unknown[]) => void;
  process.emitWarning = ((...args: unknown[]) => {
    const [warning, second] = args;
    const code = (warning as { code?: unknown } | undefined)?.code ?? (typeof second === 'object' && second !== null ? (second as { code?: unknown }).code : args[2]);
    if (code === 'DEP0123') return;
    emit(...args);
  }) as typeof process.emitWarning;
}
