/**
 * The role table of coordinator/authz.ts against the contract: every RPC of proto/ has exactly
 * one role, the mapping from a certificate to a role (OU, the config's roles table, "none"), and
 * who may call what. Pure functions; the real TLS path is in control-plane.test.ts.
 */
import { strict as assert } from 'node:assert';
import { denial, parseRolesTable, roleOf, RPC_ROLE } from '../../coordinator/authz';
import { isVnsnapError } from '../../proto/core/errors';
import { loadVnsnap } from '../../proto/core/grpc';
import type { PeerIdentity } from '../../proto/core/tls';

const id = (commonName: string, units: string[] = []): PeerIdentity => ({ commonName, units, dnsNames: [], ips: [] });

describe('security: the RPC role table', () => {
  it('names every method of CoordinatorService and AgentService, and nothing else', () => {
    const pkg = loadVnsnap();
    const methods = [pkg.vnsnap.v1.CoordinatorService.service, pkg.vnsnap.v1.AgentService.service].flatMap((s) => Object.values(s).map((m) => m.path));
    assert.deepEqual(Object.keys(RPC_ROLE).sort(), methods.sort());
  });

  it('reads the role from the OU, overridden by the roles table; "none" takes it away', () => {
    assert.equal(roleOf(id('alice', ['operator'])), 'operator');
    assert.equal(roleOf(id('bob', ['staff', 'viewer'])), 'viewer');
    assert.equal(roleOf(id('carol', ['coordinator'])), undefined);
    assert.equal(roleOf(id('alice', ['operator']), { alice: 'viewer' }), 'viewer');
    assert.equal(roleOf(id('alice', ['operator']), { alice: 'none' }), undefined);
    assert.equal(roleOf(id('dave'), { dave: 'operator' }), 'operator');
  });

  it('a CN named like an object member ("constructor", "__proto__", "toString") finds no role in the table', () => {
    for (const cn of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
      assert.equal(roleOf(id(cn), {}), undefined, cn);
      assert.equal(roleOf(id(cn, ['viewer']), { alice: 'operator' }), 'viewer', cn);
    }
    const table = parseRolesTable(JSON.parse('{"__proto__": "none", "eve": "viewer"}'), 'config c.json');
    assert.deepEqual(Object.keys(table).sort(), ['__proto__', 'eve']);
    assert.equal(roleOf(id('__proto__', ['operator']), table), undefined);
    assert.equal(roleOf(id('eve'), table), 'viewer');
  });

  it('an operator may do what a viewer may; an agent only its session; health and reflection are open', () => {
    const C = '/vnsnap.v1.CoordinatorService/';
    assert.equal(denial(`${C}ListVnes`, id('o'), 'operator'), undefined);
    assert.equal(denial(`${C}RestoreSnapshot`, id('o'), 'operator'), undefined);
    assert.equal(denial(`${C}ListVnes`, id('v'), 'viewer'), undefined);
    assert.equal(denial(`${C}RestoreSnapshot`, id('v'), 'viewer'), 'permission denied: RestoreSnapshot needs the operator role (certificate "v" has the viewer role)');
    assert.equal(denial(`${C}WatchEvents`, id('h1'), 'agent'), 'permission denied: WatchEvents needs the viewer role (certificate "h1" has the agent role)');
    assert.equal(denial('/vnsnap.v1.AgentService/Session', id('o'), 'operator'), 'permission denied: Session needs the agent role (certificate "o" has the operator role)');
    assert.equal(denial('/vnsnap.v1.AgentService/Session', id('x'), undefined), 'permission denied: Session needs the agent role (certificate "x" has no vnsnap role)');
    assert.equal(denial('/grpc.health.v1.Health/Check', id('x'), undefined), undefined);
    assert.equal(denial('/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', id('x'), undefined), undefined);
    assert.equal(denial('/other.Service/Call', id('o'), 'operator'), '/other.Service/Call is not allowed to anyone (certificate "o" has the operator role)');
  });

  it('the store commands: stats for viewers; verify (it records its result) and gc for operators', () => {
    const C = '/vnsnap.v1.CoordinatorService/';
    assert.equal(RPC_ROLE[`${C}GetStoreStats`], 'viewer');
    assert.equal(RPC_ROLE[`${C}VerifySnapshot`], 'operator');
    assert.equal(RPC_ROLE[`${C}CollectGarbage`], 'operator');
    assert.equal(denial(`${C}GetStoreStats`, id('v'), 'viewer'), undefined);
    assert.equal(denial(`${C}VerifySnapshot`, id('v'), 'viewer'), 'permission denied: VerifySnapshot needs the operator role (certificate "v" has the viewer role)');
    assert.equal(denial(`${C}CollectGarbage`, id('v'), 'viewer'), 'permission denied: CollectGarbage needs the operator role (certificate "v" has the viewer role)');
    assert.equal(denial(`${C}CollectGarbage`, id('h1'), 'agent'), 'permission denied: CollectGarbage needs the operator role (certificate "h1" has the agent role)');
    assert.equal(denial(`${C}VerifySnapshot`, id('o'), 'operator'), undefined);
  });

  it('refuses a roles table with an unknown role, in one line', () => {
    assert.deepEqual({ ...parseRolesTable({ a: 'viewer', b: 'none' }, 'config c.json') }, { a: 'viewer', b: 'none' });
    assert.throws(() => parseRolesTable({ a: 'admin' }, 'config c.json'), (e: unknown) => isVnsnapError(e, 'ERR_CONFIG') && e.message === 'config c.json: roles."a" must be one of viewer, operator, agent, none; got "admin"');
    assert.throws(() => parseRolesTable([], 'config c.json'), (e: unknown) => isVnsnapError(e, 'ERR_CONFIG'));
  });
});
