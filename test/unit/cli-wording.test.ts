/**
 * The coordinator's messages in the CLI's words (coordinator/cli/wording.ts): every request
 * field a CLI flag sets is named by its flag, tested per field on the message the coordinator
 * really produces (its own validation functions) or, where the message is built inside a
 * sequencer, on the message as the coordinator's source words it (checked to still be there).
 * A sweep over the .proto makes sure no snake_case request field is left without a decision.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { denial } from '../../coordinator/authz';
import { checkLength, checkTimeoutMs, MAX_DESCRIPTION_CHARS, MAX_ID_CHARS, MAX_TIMEOUT_MS } from '../../coordinator/validation';
import { FIELD_FLAGS, inCliTerms, RPC_COMMANDS } from '../../coordinator/cli/wording';

const ROOT = path.resolve(__dirname, '../../..');

function thrown(f: () => void): string {
  try {
    f();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('expected a throw');
}

/** A message template as the coordinator's source has it (so a rewording there fails here). */
function inSource(file: string, text: string): string {
  const src = fs.readFileSync(path.join(ROOT, file), 'utf8');
  assert.ok(src.includes(text), `${file} no longer says "${text}": update the CLI's wording rules and this test`);
  return text;
}

describe('cli wording: flags, not proto fields', () => {
  it('stop_running → --stop-running', () => {
    const m = inSource('coordinator/restore-sequencer.ts', 'is running: stop it first or restore with stop_running to replace its VMs');
    assert.equal(inCliTerms(`VNE "blue" ${m}`), 'VNE "blue" is running: stop it first or restore with --stop-running to replace its VMs');
    // the agent's refusal, forwarded in an abort reason
    assert.equal(inCliTerms('a is running on agent h1 (stop_running not set)'), 'a is running on agent h1 (--stop-running not set)');
  });

  it('delete_snapshots → --with-snapshots', () => {
    const m = inSource('coordinator/service.ts', ': delete them first or pass delete_snapshots');
    assert.equal(inCliTerms(`VNE "blue" has 2 snapshots${m}`), 'VNE "blue" has 2 snapshots: delete them first or pass --with-snapshots');
  });

  it('timeout_ms → --timeout-ms, precopy_deadline_ms → --deadline-ms (the real bounds messages)', () => {
    const big = MAX_TIMEOUT_MS + 1;
    assert.equal(inCliTerms(thrown(() => checkTimeoutMs('timeout_ms', big))), `--timeout-ms ${big} is out of range (0..${MAX_TIMEOUT_MS} ms, about 24.8 days; 0 = the default)`);
    assert.equal(inCliTerms(thrown(() => checkTimeoutMs('precopy_deadline_ms', big))), `--deadline-ms ${big} is out of range (0..${MAX_TIMEOUT_MS} ms, about 24.8 days; 0 = the default)`);
    inSource('coordinator/service.ts', "checkTimeoutMs('precopy_deadline_ms', req.precopyDeadlineMs)");
  });

  it('description → --description, snapshot_id → the snapshot ID (the real length messages)', () => {
    const long = 'x'.repeat(MAX_DESCRIPTION_CHARS + 1);
    assert.equal(inCliTerms(thrown(() => checkLength('description', long, MAX_DESCRIPTION_CHARS))), `--description is ${long.length} characters long; the limit is ${MAX_DESCRIPTION_CHARS}`);
    const id = 'x'.repeat(MAX_ID_CHARS + 1);
    assert.equal(inCliTerms(thrown(() => checkLength('snapshot_id', id, MAX_ID_CHARS))), `the snapshot ID is ${id.length} characters long; the limit is ${MAX_ID_CHARS}`);
    // "description" elsewhere is a word like any other
    assert.equal(inCliTerms('the description of VM a'), 'the description of VM a');
  });

  it('placement → --place where the message is about what --place said', () => {
    const m = inSource('coordinator/restore-sequencer.ts', 'placement names VM "${vm}", which is not in snapshot');
    assert.equal(inCliTerms(m.replace('${vm}', 'zz') + ' snap-0001 (VMs: a, b)'), '--place names VM "zz", which is not in snapshot snap-0001 (VMs: a, b)');
    assert.equal(inCliTerms(thrown(() => checkLength('placement: a VM name', 'v'.repeat(64), 63))), '--place: a VM name is 64 characters long; the limit is 63');
    // where the placement is the VNE's (not necessarily given with --place), it stays
    assert.equal(inCliTerms('agent "h9" (placement of VM c) is not connected; nothing was restored'), 'agent "h9" (placement of VM c) is not connected; nothing was restored');
  });

  it('RPC names → the command (with the RPC, as the role table names it)', () => {
    const m = denial('/vnsnap.v1.CoordinatorService/DeleteVne', { commonName: 'grafana', units: ['viewer'], dnsNames: [], ips: [] }, 'viewer');
    assert.equal(inCliTerms(m as string), 'permission denied: vnsnap vne delete (DeleteVne) needs the operator role (certificate "grafana" has the viewer role)');
    for (const [rpc, command] of Object.entries(RPC_COMMANDS)) assert.equal(inCliTerms(`permission denied: ${rpc} needs the operator role (x)`), `permission denied: ${command} (${rpc}) needs the operator role (x)`);
  });

  it('only whole field names change; file fields and other words stay', () => {
    for (const m of [
      'VM "a": qemu.memory_mib 4294967295 is out of range (16..1048576 MiB)',
      'VM "a": sim driver needs memory_mib > 0',
      'my_timeout_ms_x is odd',
      'no VNE named "stop_running_vne"',
    ]) {
      assert.equal(inCliTerms(m), m);
    }
  });

  it('every snake_case field of a CoordinatorService request has a decision', () => {
    const proto = fs.readFileSync(path.join(ROOT, 'proto/vnsnap/v1/coordinator.proto'), 'utf8');
    const fields = new Set<string>();
    for (const m of proto.matchAll(/^message (\w+Request) \{([^}]*)\}/gm)) {
      for (const f of (m[2] as string).matchAll(/^\s*(?:repeated |optional )?(?:map<[^>]+>|[\w.]+) (\w+) = \d+;/gm)) fields.add(f[1] as string);
    }
    assert.ok(fields.has('stop_running') && fields.has('timeout_ms'), [...fields].join(', '));
    // Fields with no flag: they are CLI arguments (name, vne, id) or the VNE file (vne), which
    // the coordinator's messages name in words of their own ("VNE name", VNE "x").
    const arguments_ = new Set(['name', 'vne', 'id', 'mode']);
    for (const f of fields) assert.ok(f in FIELD_FLAGS || arguments_.has(f), `request field ${f}: map it to its flag in coordinator/cli/wording.ts, or say why not`);
  });
});
