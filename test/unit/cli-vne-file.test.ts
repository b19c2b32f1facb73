import { strict as assert } from 'node:assert';
import { CliError, EXIT } from '../../coordinator/cli/exit-codes';
import { readMessage, toJson } from '../../coordinator/cli/proto-json';
import { parseVneText, readVneFile } from '../../coordinator/cli/vne-file';

const camel = {
  name: 'blue',
  vni: 100,
  vms: [
    { name: 'vm1', host: 'h1', macs: ['52:54:00:00:00:01'], driver: { qemu: { memoryMib: 256, cpus: 1, extra: { 'rtc-base': 'utc' } } } },
    { name: 'vm2', host: 'h2', macs: ['52:54:00:00:00:02'], driver: { sim: { memoryMib: 16, dirtyRateMibS: 4, frameRateHz: 50, peers: ['vm1'] } } },
  ],
};
const snake = {
  name: 'blue',
  vni: '100',
  vms: [
    { name: 'vm1', host: 'h1', macs: ['52:54:00:00:00:01'], driver: { qemu: { memory_mib: 256, cpus: 1, extra: { 'rtc-base': 'utc' } } } },
    { name: 'vm2', host: 'h2', macs: ['52:54:00:00:00:02'], driver: { sim: { memory_mib: 16, dirty_rate_mib_s: 4, frame_rate_hz: 50, peers: ['vm1'] } } },
  ],
};

function problem(text: string): string {
  try {
    parseVneText('blue.json', text);
  } catch (e) {
    assert.ok(e instanceof CliError, String(e));
    assert.equal(e.exitCode, EXIT.USAGE);
    return e.message;
  }
  assert.fail('expected the file to be refused');
}

describe('cli: VNE definition files', () => {
  it('accepts camelCase and snake_case (and numbers as strings) to the same request', () => {
    const a = parseVneText('a.json', JSON.stringify(camel));
    const b = parseVneText('b.json', JSON.stringify(snake));
    assert.deepEqual(b, a);
    assert.deepEqual(a.vms?.[1]?.driver?.sim, { memoryMib: 16, dirtyRateMibS: 4, frameRateHz: 50, peers: ['vm1'] });
    // Map keys are data, never renamed.
    assert.deepEqual(a.vms?.[0]?.driver?.qemu?.extra, { 'rtc-base': 'utc' });
  });

  it('accepts a DefineVneRequest wrapper and what `vne show --json` prints', () => {
    assert.deepEqual(parseVneText('w.json', JSON.stringify({ vne: camel })), parseVneText('c.json', JSON.stringify(camel)));
    const shown = toJson('vnsnap.v1.Vne', { ...camel, generation: 2, epoch: 5, state: 'VNE_STATE_RUNNING', createdUnixMs: 1, updatedUnixMs: 2, placement: { vm1: 'h1' } });
    assert.equal(parseVneText('s.json', JSON.stringify(shown)).epoch, 5);
  });

  it('names the file, the place and the problem for text that is not JSON', () => {
    assert.equal(problem('{\n  "name": "blue",\n  "vni": 100,\n}\n'), 'blue.json: not valid JSON: Expected double-quoted property name at line 4 column 1');
    assert.equal(problem('{"name": "blue"'), "blue.json: not valid JSON: Expected ',' or '}' after property value at line 1 column 16");
    assert.equal(problem(''), 'blue.json: not valid JSON: unexpected end of input (the file is empty)');
  });

  it('refuses unknown fields (with a suggestion), wrong types and bad enum names, with their path', () => {
    assert.match(problem(JSON.stringify({ ...camel, vnii: 3 })), /^blue\.json: vnii: unknown field of Vne \(did you mean "vni"\?\); known fields: name, vni, vms,/);
    assert.match(problem(JSON.stringify({ name: 'b', vms: [{ name: 'x', host: 'h', driver: { qemu: { memory_mb: 1 } } }] })), /^blue\.json: vms\[0\]\.driver\.qemu\.memory_mb: unknown field of QemuDriverSpec/);
    assert.match(problem(JSON.stringify({ name: 'b', vms: [{ name: 'x', host: 'h', driver: { qemu: { memoryMb: 1 } } }] })), /\(did you mean "memoryMib"\?\)/);
    assert.equal(problem(JSON.stringify({ ...camel, vni: 'lots' })), 'blue.json: vni: expected a non-negative integer, got "lots"');
    assert.equal(problem(JSON.stringify({ ...camel, vni: -1 })), 'blue.json: vni: -1 is out of range for a non-negative integer (0..4294967295)');
    assert.equal(problem(JSON.stringify({ ...camel, vms: {} })), 'blue.json: vms: expected a list, got an object');
    assert.match(problem(JSON.stringify({ ...camel, state: 'UP' })), /^blue\.json: state: expected one of VNE_STATE_DEFINED, VNE_STATE_RUNNING, .*got "UP"$/);
    assert.equal(problem(JSON.stringify({ ...camel, vni: 1, VNI: 2 })), 'blue.json: VNI: unknown field of Vne (did you mean "vni"?); known fields: name, vni, vms, generation, epoch, state, createdUnixMs, updatedUnixMs, placement, vmStatus, fenced, stateReason');
    assert.equal(problem(JSON.stringify({ name: 'b', createdUnixMs: 1, created_unix_ms: 2 })), 'blue.json: created_unix_ms: given twice (also as "createdUnixMs")');
  });

  it('checks what a VNE must satisfy: names, hosts, one driver, unicast unique MACs, peers', () => {
    const vm = (over: object): object => ({ name: 'vm1', host: 'h1', macs: ['52:54:00:00:00:01'], driver: { sim: {} }, ...over });
    assert.equal(problem(JSON.stringify({ vni: 1, vms: [vm({})] })), 'blue.json: name: a VNE needs a name');
    assert.equal(problem(JSON.stringify({ name: 'b', vni: 16_777_216, vms: [vm({})] })), 'blue.json: vni: 16777216 does not fit in 24 bits (at most 16777215)');
    assert.equal(problem(JSON.stringify({ name: 'b', vms: [vm({ macs: ['52:54:00:zz:00:01'] })] })), 'blue.json: vms[0].macs[0]: "52:54:00:zz:00:01" is not a MAC address (like 52:54:00:12:34:56)');
    assert.equal(problem(JSON.stringify({ name: 'b', vms: [vm({ macs: ['01:00:5e:00:00:01'] })] })), 'blue.json: vms[0].macs[0]: 01:00:5e:00:00:01 is a multicast address; a vNIC needs a unicast one');
    assert.equal(problem(JSON.stringify({ name: 'b', vms: [vm({}), vm({ name: 'vm2' })] })), 'blue.json: vms[1].macs[0]: 52:54:00:00:00:01 is also used by vms[0] (vm1)');
    assert.equal(problem(JSON.stringify({ name: 'b', vms: [vm({}), vm({ macs: [] })] })), 'blue.json: vms[1].name: "vm1" is also the name of vms[0]');
    assert.equal(problem(JSON.stringify({ name: 'b', vms: [vm({ host: '' })] })), 'blue.json: vms[0].host: every VM needs the agent id of its host');
    assert.equal(problem(JSON.stringify({ name: 'b', vms: [vm({ driver: {} })] })), 'blue.json: vms[0].driver: give one of sim, qemu or xen');
    assert.equal(problem(JSON.stringify({ name: 'b', vms: [vm({ driver: { sim: {}, xen: {} } })] })), 'blue.json: vms[0].driver: only one of sim, qemu, xen may be set, got sim and xen');
    assert.equal(problem(JSON.stringify({ name: 'b', vms: [vm({ driver: { sim: { peers: ['nope'] } } })] })), 'blue.json: vms[0].driver.sim.peers[0]: "nope" is not a VM of this VNE');
    assert.equal(
      problem(JSON.stringify({ name: 'b', vms: [vm({ host: '', driver: {} })] })),
      'blue.json: 2 problems: vms[0].host: every VM needs the agent id of its host; vms[0].driver: give one of sim, qemu or xen',
    );
  });

  it('says when the file is missing', () => {
    assert.throws(() => readVneFile('/nonexistent/blue.json'), (e) => e instanceof CliError && e.exitCode === EXIT.USAGE && e.message === '/nonexistent/blue.json: no such file');
  });

  it('proto JSON out is plain: no synthetic oneof names, enums by name', () => {
    const r = readMessage('vnsnap.v1.SnapshotEvent', { snapshot_id: 's', vm: { vm: 'a', phase: 'PHASE_PAUSE', pause_ms: 1.5 } });
    assert.deepEqual(r, { snapshotId: 's', vm: { vm: 'a', phase: 'PHASE_PAUSE', pauseMs: 1.5 } });
    assert.deepEqual(toJson('vnsnap.v1.SnapshotEvent', { snapshotId: 's', timeUnixMs: 3, note: 'hi', event: 'note' }), { snapshotId: 's', timeUnixMs: 3, note: 'hi' });
  });
});
