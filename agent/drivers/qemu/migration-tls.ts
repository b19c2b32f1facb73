/**
 * Mutual TLS for a live migration's two streams (docs/migration.md "Encryption"): when the
 * agents run with certificates, the destination's NBD server and migration listener, and the
 * source's NBD client and migration, use QEMU's own `tls-creds-x509` made from the agent's
 * certificate, key and CA, so the disk and memory never cross the underlay in clear.
 *
 *   server (destination)  credentials with endpoint=server, verify-peer: the source must present
 *                         a certificate of the cluster's CA; an `authz-list` lets only this
 *                         migration's source agent through (its exact subject, OU=agent and
 *                         CN=its id, vnsnap-pki.sh): not another agent, an operator or the
 *                         coordinator. The agent certificate needs serverAuth as well as
 *                         clientAuth for this (vnsnap-pki.sh agent issues both).
 *   client (source)       endpoint=client, verify-peer: the destination's certificate must be
 *                         of the CA and name the destination agent (`tls-hostname` = its id,
 *                         the certificate's DNS SAN).
 *
 * QEMU reads credentials from a directory of fixed names, so the PEM files are copied into
 * `tls/` of the VM's instance directory (the key 0600, root-only like the directory); the
 * files are read at each migration, so a renewed certificate is used from the next one on.
 * clearTls() removes the objects and resets the migration parameters: later snapshot cuts of
 * the VM migrate to a local socket, without TLS.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isVnsnapError, VnsnapError } from '../../../proto/core/errors';
import type { TlsFiles } from '../../../proto/core/tls';
import type { MigrationTls } from '../driver';
import type { QemuVm } from './process';
import type { QmpClient } from './qmp';

export const TLS_CREDS = 'vnsnap-mig-tls';
export const TLS_AUTHZ = 'vnsnap-mig-authz';

/**
 * The subject DNs the destination admits (vnsnap-pki.sh: /OU=agent/CN=ID, in either order GnuTLS
 * prints): exactly the source agent's when it is known, else any agent's.
 */
export function admittedDns(source?: string): { match: string; policy: 'allow'; format: 'exact' | 'glob' }[] {
  if (!source) return ['CN=*,OU=agent', 'OU=agent,CN=*'].map((match) => ({ match, policy: 'allow' as const, format: 'glob' as const }));
  if (/[,=+"\\<>;#*?\[\]\s]/.test(source)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `agent id "${source}" cannot be admitted by its certificate's name (it holds a character special in a DN)`);
  return [`CN=${source},OU=agent`, `OU=agent,CN=${source}`].map((match) => ({ match, policy: 'allow' as const, format: 'exact' as const }));
}

/** Add the credentials (and, for the server, the authorisation) to the VM's QEMU. */
export async function addTls(vm: QemuVm, tls: MigrationTls, endpoint: 'server' | 'client'): Promise<void> {
  await addTlsObjects(vm.q(), path.join(vm.files.dir, 'tls'), tls.files, endpoint, `the migration of ${vm.spec.id}`, endpoint === 'server' ? tls.peer : undefined);
}

/**
 * The same credentials on any QEMU monitor `q` (bench:migrate's baseline gives QEMU's own
 * migration exactly vnsnap's encryption with it): the PEM files copied into `dir`, any earlier
 * objects removed, then the `tls-creds-x509` object and, for the server, the `authz-list` that
 * admits only `source`'s agent certificate (any agent's without it).
 */
export async function addTlsObjects(q: QmpClient, dir: string, files: TlsFiles, endpoint: 'server' | 'client', what: string, source?: string): Promise<void> {
  const admitted = endpoint === 'server' ? admittedDns(source) : [];
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  try {
    fs.copyFileSync(files.ca, path.join(dir, 'ca-cert.pem'));
    fs.copyFileSync(files.cert, path.join(dir, `${endpoint}-cert.pem`));
    fs.copyFileSync(files.key, path.join(dir, `${endpoint}-key.pem`));
    fs.chmodSync(path.join(dir, `${endpoint}-key.pem`), 0o600);
  } catch (e) {
    throw new VnsnapError('ERR_CONFIG', `the agent's TLS files for ${what} cannot be read: ${(e as Error).message}`, { cause: e });
  }
  await clearTlsObjects(q);
  try {
    await q.execute('object-add', { 'qom-type': 'tls-creds-x509', id: TLS_CREDS, dir, endpoint, 'verify-peer': true });
  } catch (e) {
    const msg = (e as Error).message;
    // QEMU gone or not answering (killed meanwhile) is not a refusal of the certificate.
    if (isVnsnapError(e, 'ERR_TIMEOUT') || /QMP connection to|connection closed/.test(msg)) throw e;
    const hint = /purpose/i.test(msg) ? ` (the agent certificate ${files.cert} needs extendedKeyUsage serverAuth as well as clientAuth: re-issue it with vnsnap-pki.sh agent)` : '';
    throw new VnsnapError('ERR_CONFIG', `QEMU refused the agent's certificate for ${what}: ${msg}${hint}`, { cause: e });
  }
  if (endpoint === 'server') {
    await q.execute('object-add', { 'qom-type': 'authz-list', id: TLS_AUTHZ, policy: 'deny', rules: admitted });
  }
}

/** Remove the TLS objects and reset the migration's TLS parameters (idempotent, never throws). */
export async function clearTls(vm: QemuVm): Promise<void> {
  await clearTlsObjects(vm.q());
}

/** clearTls() on any QEMU monitor. */
export async function clearTlsObjects(q: QmpClient): Promise<void> {
  await q.execute('migrate-set-parameters', { 'tls-creds': '', 'tls-hostname': '', 'tls-authz': '' }).catch(() => undefined);
  await q.execute('object-del', { id: TLS_AUTHZ }).catch(() => undefined);
  await q.execute('object-del', { id: TLS_CREDS }).catch(() => undefined);
}

/** Remove the copied PEM files (after the migration ended either way). */
export function removeTlsFiles(vm: QemuVm): void {
  fs.rmSync(path.join(vm.files.dir, 'tls'), { recursive: true, force: true });
}
