/**
 * How `vnsnap` authenticates to the coordinator: which PEM files it presents and trusts, and
 * what a person is told, in one line, when a certificate is the problem.
 *
 * The files, first found wins, each of the three on its own:
 *   --ca / --cert / --key   flags
 *   VNSNAP_CA / VNSNAP_CERT / VNSNAP_KEY
 *   ~/.config/vnsnap/pki/ca.pem, client.pem, client-key.pem ($XDG_CONFIG_HOME/vnsnap/pki when set)
 * They are checked before dialling (readable, PEM, key matching the certificate, certificate
 * signed by the CA, not expired): each failure is its own line naming the file. Without any of
 * them the CLI refuses, unless --insecure-plaintext (VNSNAP_INSECURE_PLAINTEXT=1) is given and
 * the coordinator address is loopback.
 *
 * Handshake failures (grpc-js reports them as UNAVAILABLE with the TLS error in the details)
 * become one line each: the coordinator's certificate expired, not signed by our CA, not valid
 * for the name dialled; or the coordinator refused our certificate (expired, unknown CA).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { isLoopback, loadPems, type TlsFiles } from '../../proto/core/tls';
import { CliError, EXIT } from './exit-codes';

export interface CredentialOptions {
  ca?: string;
  cert?: string;
  key?: string;
  insecurePlaintext?: boolean;
}

/** What the CLI dials with: the credentials, and the files (for messages). */
export interface CliCredentials {
  credentials: grpc.ChannelCredentials;
  files?: TlsFiles;
}

/** The default directory of the CLI's PEM files. */
export function defaultPkiDir(env: NodeJS.ProcessEnv): string {
  return path.join(env.XDG_CONFIG_HOME || path.join(env.HOME || os.homedir(), '.config'), 'vnsnap', 'pki');
}

const DEFAULT_NAMES = { ca: 'ca.pem', cert: 'client.pem', key: 'client-key.pem' } as const;
const FLAG = { ca: '--ca', cert: '--cert', key: '--key' } as const;
const ENV = { ca: 'VNSNAP_CA', cert: 'VNSNAP_CERT', key: 'VNSNAP_KEY' } as const;

/** Pick and check the files (see the header); throws CliError with one line. */
export function resolveCredentials(o: CredentialOptions, env: NodeJS.ProcessEnv, coordinator: string): CliCredentials {
  if (o.insecurePlaintext || env.VNSNAP_INSECURE_PLAINTEXT === '1') {
    if (!isLoopback(coordinator)) throw new CliError(EXIT.USAGE, `--insecure-plaintext is allowed only for a loopback coordinator, and ${coordinator} is not: use --ca, --cert and --key`, 'ERR_CONFIG');
    return { credentials: grpc.credentials.createInsecure() };
  }
  const dir = defaultPkiDir(env);
  const pick = (k: keyof TlsFiles): string | undefined => {
    const given = o[k] ?? env[ENV[k]];
    if (given) return given;
    const d = path.join(dir, DEFAULT_NAMES[k]);
    return fs.existsSync(d) ? d : undefined;
  };
  const found = { ca: pick('ca'), cert: pick('cert'), key: pick('key') };
  const missing = (Object.keys(found) as (keyof TlsFiles)[]).filter((k) => found[k] === undefined);
  if (missing.length === 3) {
    throw new CliError(EXIT.USAGE, `no client certificate: give --ca, --cert and --key (or ${ENV.ca}, ${ENV.cert}, ${ENV.key}), or put ca.pem, client.pem and client-key.pem in ${dir}; --insecure-plaintext only for a loopback coordinator`, 'ERR_CONFIG');
  }
  if (missing.length > 0) throw new CliError(EXIT.USAGE, `TLS needs ${missing.map((k) => `${FLAG[k]} (${ENV[k]})`).join(' and ')} too: no ${missing.map((k) => DEFAULT_NAMES[k]).join(', ')} in ${dir}`, 'ERR_CONFIG');
  const files = found as TlsFiles;
  let pems;
  try {
    pems = loadPems(files);
  } catch (e) {
    throw new CliError(EXIT.DENIED, (e as Error).message, 'ERR_CONFIG');
  }
  return { credentials: grpc.credentials.createSsl(pems.ca, pems.key, pems.cert), files };
}

/**
 * A failed handshake in words, or undefined when `details` (grpc-js' UNAVAILABLE text) is not
 * about TLS. `host` is the name dialled, `files` ours.
 */
export function describeTlsFailure(details: string, host: string, files: TlsFiles | undefined): string | undefined {
  const ca = files ? files.ca : 'the CA file';
  const cert = files ? files.cert : 'our certificate';
  const names = /is not in the cert's (?:list|altnames): (.*?)(?:\.\s|\.?"|\.?$)/m.exec(details);
  if (/does not match certificate's altnames|ERR_TLS_CERT_ALTNAME_INVALID/.test(details)) {
    return `the coordinator's certificate is not valid for ${host} (it names ${(names?.[1] ?? 'other hosts').trim()}): dial a name it has, or re-issue it with that --ip/--dns`;
  }
  if (/certificate has expired|CERT_HAS_EXPIRED/.test(details)) return `the coordinator's certificate has expired: renew it (then SIGHUP the coordinator)`;
  if (/unable to verify the first certificate|unable to get local issuer certificate|self[- ]signed certificate|UNABLE_TO_VERIFY_LEAF_SIGNATURE|certificate signature failure/.test(details)) {
    return `the coordinator's certificate is not signed by the CA in ${ca}: wrong --ca, or not a coordinator of this cluster`;
  }
  if (/alert certificate expired|SSLV3_ALERT_CERTIFICATE_EXPIRED/i.test(details)) return `the coordinator refused our certificate ${cert}: it has expired`;
  if (/alert unknown ca|TLSV1_ALERT_UNKNOWN_CA/i.test(details)) return `the coordinator refused our certificate ${cert}: not signed by the cluster's CA`;
  if (/alert (bad certificate|certificate required|handshake failure)|TLSV13_ALERT_CERTIFICATE_REQUIRED|SSLV3_ALERT_BAD_CERTIFICATE/i.test(details)) return `the coordinator refused our certificate ${cert}`;
  // TLS 1.3: the client has finished its handshake when the server checks its certificate, and
  // grpc-js reports the server's refusal as a bare "Failed to connect", or as the reset of the
  // connection, depending on which the client notices first.
  if (files && /Last error: Failed to connect \(|ECONNRESET|EPIPE/.test(details)) return `the coordinator ended the TLS handshake: it does not accept our certificate ${cert} (not of its CA, expired, or revoked)`;
  if (/wrong version number|packet length too long|WRONG_VERSION_NUMBER/i.test(details)) return 'the coordinator does not speak TLS (plaintext? then --insecure-plaintext on loopback only)';
  return undefined;
}
