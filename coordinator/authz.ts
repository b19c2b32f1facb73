/**
 * Who may call what on the coordinator: the one table of each RPC's role, the mapping from a
 * client certificate to a role, and the grpc-js server interceptor that enforces both before any
 * handler runs (docs/security.md, "Control plane: TLS, identities and roles").
 *
 * Roles:
 *   viewer    reads: list and show VNEs, agents, snapshots and schedules, watch events, store stats
 *   operator  everything a viewer may, and every change: define, update, delete, start, stop,
 *             snapshot, delete snapshots, restore, set and delete schedules, verify snapshots
 *             (it records the result), collect the store's garbage
 *   agent     AgentService.Session only (and only as the id in its certificate: agent-registry.ts)
 * A certificate's role is the `roles` table of the coordinator's config keyed by the subject CN
 * when the CN is there, else the first subject OU that names a role; no role: every vnsnap RPC is
 * refused. The table's value "none" takes every role from a CN (revoking one certificate
 * without re-issuing the CA; there is no CRL check). The table is re-read on SIGHUP (main.ts). Health and reflection are open to any certificate of the CA (the TLS handshake has
 * already refused the others). An RPC missing from the table is refused (fail closed).
 *
 * A denied call ends with PERMISSION_DENIED (vnsnap code ERR_PERMISSION_DENIED) and a message
 * naming the method, the role it needs and the caller's. Over plaintext (loopback only, by
 * configuration) there is no certificate and every role is granted: the interceptor is not
 * installed.
 */
import * as grpc from '@grpc/grpc-js';
import { VnsnapError } from '../proto/core/errors';
import { AGENT_SERVICE, COORDINATOR_SERVICE } from '../proto/core/grpc';
import { toServiceError } from '../proto/core/grpc-status';
import { identityOf, type PeerIdentity } from '../proto/core/tls';

export type Role = 'viewer' | 'operator' | 'agent';
export const ROLES: readonly Role[] = ['viewer', 'operator', 'agent'];
/** The coordinator config's "roles": subject CN → role, or "none" (no role at all). */
export type RolesTable = Readonly<Record<string, Role | 'none'>>;

/** Each RPC's role: the one place that says who may call what. */
export const RPC_ROLE: Readonly<Record<string, Role>> = {
  [`/${COORDINATOR_SERVICE}/ListVnes`]: 'viewer',
  [`/${COORDINATOR_SERVICE}/GetVne`]: 'viewer',
  [`/${COORDINATOR_SERVICE}/ListAgents`]: 'viewer',
  [`/${COORDINATOR_SERVICE}/ListSnapshots`]: 'viewer',
  [`/${COORDINATOR_SERVICE}/GetSnapshot`]: 'viewer',
  [`/${COORDINATOR_SERVICE}/WatchEvents`]: 'viewer',
  [`/${COORDINATOR_SERVICE}/ListSchedules`]: 'viewer',
  [`/${COORDINATOR_SERVICE}/GetSchedule`]: 'viewer',
  [`/${COORDINATOR_SERVICE}/GetStoreStats`]: 'viewer',
  [`/${COORDINATOR_SERVICE}/DefineVne`]: 'operator',
  [`/${COORDINATOR_SERVICE}/UpdateVne`]: 'operator',
  [`/${COORDINATOR_SERVICE}/DeleteVne`]: 'operator',
  [`/${COORDINATOR_SERVICE}/StartVne`]: 'operator',
  [`/${COORDINATOR_SERVICE}/StopVne`]: 'operator',
  [`/${COORDINATOR_SERVICE}/CreateSnapshot`]: 'operator',
  [`/${COORDINATOR_SERVICE}/DeleteSnapshot`]: 'operator',
  [`/${COORDINATOR_SERVICE}/RestoreSnapshot`]: 'operator',
  [`/${COORDINATOR_SERVICE}/MigrateVne`]: 'operator',
  [`/${COORDINATOR_SERVICE}/SetSchedule`]: 'operator',
  [`/${COORDINATOR_SERVICE}/DeleteSchedule`]: 'operator',
  [`/${COORDINATOR_SERVICE}/VerifySnapshot`]: 'operator',
  [`/${COORDINATOR_SERVICE}/CollectGarbage`]: 'operator',
  [`/${AGENT_SERVICE}/Session`]: 'agent',
};

/** Services any certificate of the CA may call. */
const OPEN_SERVICES = ['/grpc.health.v1.Health/', '/grpc.reflection.v1.ServerReflection/', '/grpc.reflection.v1alpha.ServerReflection/'];

/** The roles a role grants (operator includes viewer; agent is apart). */
const GRANTS: Readonly<Record<Role, readonly Role[]>> = { viewer: ['viewer'], operator: ['operator', 'viewer'], agent: ['agent'] };

/** The role of a certificate: the roles table by CN, else its first OU naming a role. */
export function roleOf(id: PeerIdentity, table: RolesTable = {}): Role | undefined {
  // Own keys only: a CN such as "constructor" or "__proto__" must not find Object's members.
  const byName = Object.hasOwn(table, id.commonName) ? table[id.commonName] : undefined;
  if (byName) return byName === 'none' ? undefined : byName;
  return id.units.find((u): u is Role => (ROLES as readonly string[]).includes(u));
}

/** Why `role` may not call `method`, or undefined when it may. */
export function denial(method: string, id: PeerIdentity, role: Role | undefined): string | undefined {
  if (OPEN_SERVICES.some((s) => method.startsWith(s))) return undefined;
  const needed = RPC_ROLE[method];
  const who = `certificate "${id.commonName}" has ${role ? `the ${role} role` : 'no vnsnap role'}`;
  if (!needed) return `${method} is not allowed to anyone (${who})`;
  if (role && GRANTS[role].includes(needed)) return undefined;
  return `permission denied: ${method.replace(/^.*\//, '')} needs the ${needed} role (${who})`;
}

/**
 * The interceptor refusing every call its caller's role does not allow (installed with TLS);
 * `table` is asked at each call, so a new roles table (SIGHUP) applies to the next call.
 */
export function authzInterceptor(table: () => RolesTable): grpc.ServerInterceptor {
  return (method, call) => {
    const listener = new grpc.ServerListenerBuilder()
      .withOnReceiveMetadata((md, next) => {
        const id = identityOf(call.getAuthContext().sslPeerCertificate);
        const why = id ? denial(method.path, id, roleOf(id, table())) : `${method.path} needs a client certificate`;
        if (why === undefined) {
          next(md);
          return;
        }
        const err = toServiceError(new VnsnapError(id ? 'ERR_PERMISSION_DENIED' : 'ERR_UNAUTHENTICATED', why));
        call.sendStatus({ code: err.code, details: err.details, metadata: err.metadata });
      })
      .build();
    return new grpc.ServerInterceptingCall(call, new grpc.ResponderBuilder().withStart((next) => next(listener)).build());
  };
}

/** Validate the config's "roles" table: CN → role. */
export function parseRolesTable(raw: unknown, where: string): Record<string, Role | 'none'> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new VnsnapError('ERR_CONFIG', `${where}: "roles" must be an object {"CN": "viewer" | "operator" | "agent" | "none"}`);
  // No prototype: a "__proto__" key is a CN like any other, not the object's prototype.
  const out = Object.create(null) as Record<string, Role | 'none'>;
  for (const [cn, r] of Object.entries(raw as Record<string, unknown>)) {
    if (typeof r !== 'string' || ![...ROLES, 'none'].includes(r)) throw new VnsnapError('ERR_CONFIG', `${where}: roles."${cn}" must be one of ${ROLES.join(', ')}, none; got ${JSON.stringify(r)}`);
    out[cn] = r as Role | 'none';
  }
  return out;
}
